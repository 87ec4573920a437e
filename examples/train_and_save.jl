# Train a feedback-alignment network on Fashion-MNIST in Julia alone and save it for Python:
#
#     julia --startup-file=no examples/train_and_save.jl [--epochs 2] [--train-samples 60000] [--out fashion_fa_jl.safetensors]
#
# The file holds the parameters, the fixed feedback matrices, the momentum velocities and the state
# of the shuffling generator; examples/load_finetune.py opens it with `pyjlfa.load`, evaluates it
# and trains it further.
push!(LOAD_PATH, joinpath(@__DIR__, "..", "julia"))
using FeedbackAlignment
include(joinpath(@__DIR__, "fashion_mnist_data.jl"))

epochs, samples, out = option("epochs", 2), option("train-samples", 60000), option("out", "fashion_fa_jl.safetensors")
Xtr, ytr = fashion("train")
Xte, yte = fashion("t10k")
Xtr, ytr = Xtr[:, 1:samples], ytr[1:samples]

optimizer = SGD(0.05, 0.9)
net = Network([784, 128, 10]; activation=tanh, rule=FA(), seed=0)
learn!(net, Xtr, ytr; epochs=epochs, batchsize=64, optimizer=optimizer)
result = evaluate(net, Xte, yte)
println("trained $(net.epochs) epochs on $(size(Xtr, 2)) images: test loss $(result.loss), test accuracy $(result.accuracy)")
save(out, net; include_optimizer=true, optimizer=optimizer)
println("saved $out")
