# ResNet-20 (biotorch's small ResNet, 1 input channel) on Fashion-MNIST padded to 32 x 32, from Julia
# alone: batch norm, skip connections and option-A shortcuts, trained by a rule without backprop.
#
#     julia --startup-file=no examples/resnet20.jl [--rule FA] [--epochs 1] [--train 20000] [--lr 0.1]
push!(LOAD_PATH, joinpath(@__DIR__, "..", "julia"))
using FeedbackAlignment

include(joinpath(@__DIR__, "fashion_mnist_data.jl"))   # fashion_images, option

# A basic block: two 3x3 convs with batch norm; the first of a stage that widens halves the image,
# and its shortcut (PadShortcut, He et al.'s option A) keeps every second pixel and pads channels.
function block(cin, cout)
    stride = cin == cout ? 1 : 2
    main = Chain(Conv((3, 3), cin => cout; stride=stride, pad=1, bias=false), BatchNorm(cout), relu,
                 Conv((3, 3), cout => cout; pad=1, bias=false), BatchNorm(cout))
    return cin == cout ? SkipConnection(main, +) : Parallel(+, main, PadShortcut(cin => cout))
end
stage(cin, cout) = (block(cin, cout), relu, block(cout, cout), relu, block(cout, cout), relu)
resnet20 = Chain(Conv((3, 3), 1 => 16; pad=1, bias=false), BatchNorm(16), relu,
                 stage(16, 16)..., stage(16, 32)..., stage(32, 64)...,
                 GlobalMeanPool(), Flatten(), Dense(64 => 10))

rule = FeedbackAlignment.interpret(lowercase(option("rule", "FA")), "rule")
epochs, lr, ntrain = option("epochs", 1), option("lr", 0.1), option("train", 20000)
Xtr, ytr = fashion_images("train"; pad=2)
Xte, yte = fashion_images("t10k"; pad=2)
Xtr, ytr = Xtr[:, :, :, 1:ntrain], ytr[1:ntrain]

net = Network(resnet20; input=(32, 32, 1), rule=rule, seed=0)
for epoch in 1:epochs
    seconds = @elapsed h = learn!(net, Xtr, ytr; epochs=1, batchsize=128,
                                  optimizer=SGD(lr; momentum=0.9, weight_decay=1e-4), validation=(Xte, yte))
    println("epoch $epoch: train loss $(round(h[end].loss, digits=4)), test accuracy ",
            "$(round(h[end].val_accuracy, digits=4)) ($(round(seconds, digits=1)) s)")
end
