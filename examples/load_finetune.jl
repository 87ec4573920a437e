# Load a model file written by Python (or Julia), evaluate it, fine-tune it and save it again:
#
#     julia --startup-file=no examples/load_finetune.jl MODEL [--epochs 1] [--train-samples 60000] [--out finetuned_jl.safetensors]
#
# examples/train_and_save.py writes such a file from Python. The loaded network carries the
# optimizer (`net.optimizer`: its hyperparameters, weight decay included, and its momentum velocities)
# and the shuffling state, so `learn!` continues exactly where Python stopped, as Python's `fit` would.
push!(LOAD_PATH, joinpath(@__DIR__, "..", "julia"))
using FeedbackAlignment
include(joinpath(@__DIR__, "fashion_mnist_data.jl"))

isempty(ARGS) && error("usage: julia examples/load_finetune.jl MODEL [--epochs N] [--train-samples N] [--out PATH]")
path = ARGS[1]
epochs, samples, out = option("epochs", 1), option("train-samples", 60000), option("out", "finetuned_jl.safetensors")

meta = read_metadata(path)
println("$path: written by $(meta["created_by"]), $(meta["rule"]) $(meta["chain"]) $(meta["dtype"])")
net = load(path)
T = eltype(net)
Xtr, ytr = fashion("train", T)
Xte, yte = fashion("t10k", T)
Xtr, ytr = Xtr[:, 1:samples], ytr[1:samples]
result = evaluate(net, Xte, yte)
println("loaded after $(net.epochs) epochs: test loss $(result.loss), test accuracy $(result.accuracy)")

# The optimizer the file records (load gives it back as net.optimizer), else SGD with momentum.
optimizer = something(net.optimizer, SGD(0.05; momentum=0.9))
println("optimizer: $optimizer")
learn!(net, Xtr, ytr; epochs=epochs, batchsize=64, optimizer=optimizer)
result = evaluate(net, Xte, yte)
println("fine-tuned to $(net.epochs) epochs: test loss $(result.loss), test accuracy $(result.accuracy)")
save(out, net; include_optimizer=true)   # with net.optimizer, the one learn! used
println("saved $out")
