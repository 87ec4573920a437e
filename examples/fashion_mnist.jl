# Train feedback alignment on Fashion-MNIST from Julia alone (no Python):
#
#     julia --startup-file=no examples/fashion_mnist.jl [epochs] [data folder]
#
# Reads the IDX files of Debian's dataset-fashion-mnist package (decompressed with `gzip -dc`).
push!(LOAD_PATH, joinpath(@__DIR__, "..", "julia"))
using FeedbackAlignment

"An MNIST-format IDX file of unsigned bytes, as an array with the last dimension first (Julia's order)."
function read_idx(path)
    bytes = read(endswith(path, ".gz") ? `gzip -dc $path` : path)
    bytes[3] == 0x08 || error("$path: only unsigned-byte IDX files are supported here")
    ndims = Int(bytes[4])
    dims = [Int(ntoh(reinterpret(UInt32, bytes[5+4k:8+4k])[1])) for k in 0:ndims-1]
    return reshape(bytes[5+4ndims:end], reverse(dims)...)
end

function fashion(dir, split)
    images = read_idx(joinpath(dir, "$split-images-idx3-ubyte.gz"))
    labels = read_idx(joinpath(dir, "$split-labels-idx1-ubyte.gz"))
    X = reshape(Float32.(images) ./ 255f0, 784, :)      # features x observations
    return X, Int.(labels) .+ 1                          # Julia class labels are 1..10
end

epochs = length(ARGS) >= 1 ? parse(Int, ARGS[1]) : 3
dir = length(ARGS) >= 2 ? ARGS[2] : get(ENV, "PYJLFA_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")
Xtr, ytr = fashion(dir, "train")
Xte, yte = fashion(dir, "t10k")

net = Network([784, 256, 256, 10]; activation=tanh, rule=FA(), seed=0)
history = learn!(net, Xtr, ytr; epochs=epochs, batchsize=64, optimizer=SGD(0.05), validation=(Xte, yte))
for h in history
    println("epoch $(Int(h.epoch)): train loss $(round(h.loss, digits=4)), test accuracy $(round(h.val_accuracy, digits=4))")
end
println("final test accuracy: ", round(evaluate(net, Xte, yte).accuracy, digits=4))
