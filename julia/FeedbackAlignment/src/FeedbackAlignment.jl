"""
    FeedbackAlignment

Dense networks trained without (or with) backpropagation: backprop (`BP`), feedback alignment
(`FA`, Lillicrap et al. 2016), direct feedback alignment (`DFA`, Nøkland 2016), sign symmetry
(`uSF`, `frSF`, `brSF`), Kolen-Pollack and weight mirrors (Akrout et al. 2019), `DRTP`, `sDFA`
and `Shallow`. Observations are columns; functions ending in `!` fill preallocated buffers.
Standard library only, Julia 1.5+.

```julia
net = Network([784, 256, 256, 10]; activation=tanh, rule=FA(), seed=0)
history = learn!(net, X, y; epochs=10, batchsize=64, optimizer=SGD(0.05))
evaluate(net, Xtest, ytest)
```
"""
module FeedbackAlignment

using LinearAlgebra

export Network, Dense, LearningRule, BP, FA, DFA, uSF, frSF, brSF, KolenPollack, WeightMirror,
    DRTP, sDFA, Shallow, Loss, CrossEntropy, MSE, Optimiser, SGD, Adam, AdamW, Schedule, Constant,
    StepDecay, Cosine, Initialiser, GlorotUniform, GlorotNormal, HeUniform, HeNormal, LeCunUniform,
    LeCunNormal, Uniform, Normal, Orthogonal, Sparse, SignConcordant, Zeros, Given, SplitMix64,
    DivergenceError, sigmoid, relu, leakyrelu, learn!, train_epoch!, step!, gradients, gradients!,
    predict, predict_proba, outputs, evaluate, feedback_shape
export save, load, ModelFileError
export alignment, AlignmentTracker, teacher_task

include("rng.jl")
include("activations.jl")
include("losses.jl")
include("init.jl")
include("rules.jl")
include("network.jl")
include("optimisers.jl")
include("train.jl")
include("spec.jl")
include("io.jl")
include("diagnostics.jl")
include("experiments.jl")
include("cabi.jl")
include("precompile.jl")

end # module
