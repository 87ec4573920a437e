# LeNet-5 on Fashion-MNIST (images zero-padded to 32 x 32) from Julia alone:
#
#     julia --startup-file=no examples/lenet.jl [--rule FA] [--epochs 1] [--lr 0.01]
#
# The protocol of biotorch's LeNet table: SGD with momentum 0.9 and weight decay 1e-3, batch 64.
push!(LOAD_PATH, joinpath(@__DIR__, "..", "julia"))
using FeedbackAlignment

include(joinpath(@__DIR__, "fashion_mnist_data.jl"))   # fashion_images, option

rule = FeedbackAlignment.interpret(lowercase(option("rule", "FA")), "rule")
epochs, lr = option("epochs", 1), option("lr", 0.01)
Xtr, ytr = fashion_images("train"; pad=2)
Xte, yte = fashion_images("t10k"; pad=2)

lenet = Chain(Conv((5, 5), 1 => 6, relu), MaxPool((2, 2)), Conv((5, 5), 6 => 16, relu), MaxPool((2, 2)),
              Conv((5, 5), 16 => 120, relu), Flatten(), Dense(120 => 84, relu), Dense(84 => 10))
net = Network(lenet; input=(32, 32, 1), rule=rule, seed=0)
println(net)
for epoch in 1:epochs
    seconds = @elapsed h = learn!(net, Xtr, ytr; epochs=1, batchsize=64,
                                  optimizer=SGD(lr; momentum=0.9, weight_decay=1e-3), validation=(Xte, yte))
    println("epoch $epoch: train loss $(round(h[end].loss, digits=4)), test accuracy ",
            "$(round(h[end].val_accuracy, digits=4)) ($(round(seconds, digits=1)) s)")
end
