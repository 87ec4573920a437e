# Train feedback alignment on Fashion-MNIST from Julia alone (no Python):
#
#     julia --startup-file=no examples/fashion_mnist.jl [epochs] [data folder]
#
# Reads the IDX files of Debian's dataset-fashion-mnist package (decompressed with `gzip -dc`).
push!(LOAD_PATH, joinpath(@__DIR__, "..", "julia"))
using FeedbackAlignment

include(joinpath(@__DIR__, "fashion_mnist_data.jl"))   # read_idx, fashion

epochs = length(ARGS) >= 1 ? parse(Int, ARGS[1]) : 3
dir = length(ARGS) >= 2 ? ARGS[2] : get(ENV, "PYJLFA_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")
Xtr, ytr = fashion("train"; dir=dir)
Xte, yte = fashion("t10k"; dir=dir)

net = Network([784, 256, 256, 10]; activation=tanh, rule=FA(), seed=0)
history = learn!(net, Xtr, ytr; epochs=epochs, batchsize=64, optimizer=SGD(0.05), validation=(Xte, yte))
for h in history
    println("epoch $(Int(h.epoch)): train loss $(round(h.loss, digits=4)), test accuracy $(round(h.val_accuracy, digits=4))")
end
println("final test accuracy: ", round(evaluate(net, Xte, yte).accuracy, digits=4))
