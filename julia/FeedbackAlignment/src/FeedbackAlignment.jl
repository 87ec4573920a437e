"""
    FeedbackAlignment

Dense networks trained without (or with) backpropagation: backprop (`BP`), feedback alignment
(`FA`, Lillicrap et al. 2016) and direct feedback alignment (`DFA`, Nøkland 2016). Observations
are columns; functions ending in `!` fill preallocated buffers. Standard library only, Julia 1.5+.

```julia
net = Network([784, 256, 256, 10]; activation=tanh, rule=FA(), seed=0)
history = learn!(net, X, y; epochs=10, batchsize=64, optimizer=SGD(0.05))
evaluate(net, Xtest, ytest)
```
"""
module FeedbackAlignment

using LinearAlgebra

export Network, Dense, BP, FA, DFA, LearningRule, CrossEntropy, MSE, Loss, SGD, Optimiser,
    GlorotUniform, SplitMix64, DivergenceError, sigmoid, relu, leakyrelu,
    learn!, train_epoch!, step!, gradients, gradients!, predict, predict_proba, outputs, evaluate,
    feedback_shape
export alignment, AlignmentTracker, teacher_task

include("rng.jl")
include("activations.jl")
include("losses.jl")
include("init.jl")
include("rules.jl")
include("network.jl")
include("optimisers.jl")
include("train.jl")
include("diagnostics.jl")
include("experiments.jl")
include("cabi.jl")
include("precompile.jl")

end # module
