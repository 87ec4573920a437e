"""
A learning rule decides which error signal each hidden layer receives. Adding one means adding a
type, its `feedback_shape` and its `hidden_error!` method.
"""
abstract type LearningRule end

"Backpropagation: errors travel back through the transposed forward weights Wᵀ."
struct BP <: LearningRule end

"Feedback alignment (Lillicrap et al. 2016): Wᵀ replaced by a fixed random B of the same shape."
struct FA <: LearningRule end

"Direct feedback alignment (Nøkland 2016): each hidden layer gets the output error through its own fixed random B."
struct DFA <: LearningRule end

const RULES = Dict{String,LearningRule}("bp" => BP(), "fa" => FA(), "dfa" => DFA())

"""
    feedback_shape(rule, sizes, l)

Size of layer `l`'s feedback matrix B (Julia's column-major shape) for a network with layer widths
`sizes`, or `nothing` when the rule gives that layer none. Layer `l` maps sizes[l] -> sizes[l+1].
"""
feedback_shape(::BP, sizes, l) = nothing
# FA: layer l's B carries the error from its output back to its input: the shape of W_lᵀ.
# The first layer's input is the data, so it needs none.
feedback_shape(::FA, sizes, l) = l == 1 ? nothing : (sizes[l], sizes[l+1])
# DFA: hidden layer l receives the output error e through B_l. The output layer learns from e.
feedback_shape(::DFA, sizes, l) = l == length(sizes) - 1 ? nothing : (sizes[l+1], sizes[end])

"""
    hidden_error!(D, rule, net, l, m)

Write into `D` the error signal that hidden layer `l` receives (before the activation derivative)
for a batch of `m` observations; `net.ws.D[l+1]` and the output error `net.ws.D[end]` are filled.
"""
hidden_error!(D, ::BP, net, l, m) = gemm!(D, 'T', net.layers[l+1].W, 'N', delta(net.ws, l + 1, m))
hidden_error!(D, ::FA, net, l, m) = gemm!(D, 'N', net.layers[l+1].B, 'N', delta(net.ws, l + 1, m))
hidden_error!(D, ::DFA, net, l, m) = gemm!(D, 'N', net.layers[l].B, 'N', delta(net.ws, length(net.layers), m))
