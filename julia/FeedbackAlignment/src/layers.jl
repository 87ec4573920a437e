# Layers are small immutable settings (Flux's vocabulary, no Flux dependency): what a layer computes,
# never its arrays. Each layer type lives in one file under layers/ with its methods of the protocol
# below; the network (network.jl) builds a node per layer from what the layer declares and walks the
# nodes, so no other file names a layer type.
#
# Array layouts: observations are the last dimension. Images are W x H x C x N (the memory of NumPy's
# C-ordered N x C x H x W); a conv kernel is kw x kh x Cin x Cout (PyTorch's (Cout, Cin, kh, kw)).
# Window sizes, strides and paddings are given in the arrays' dimension order: (width, height).

"""
A layer of a `Chain`: its settings. Adding a layer type means adding a type and its methods of the
layer protocol in one file (see layers.jl):

- `output_shape(layer, insize)`: one observation's shape after the layer, or an `ArgumentError`
  saying what the layer expected;
- `parameters(layer, insize)`: the arrays it trains, a `NamedTuple` of `Param`s (shape, how they
  start, whether weight decay applies); `states(layer, insize)`: arrays it keeps and saves but does
  not train (batch norm's running statistics);
- `buffers(layer, outsize)`: per-batch arrays it keeps between its forward and backward pass besides
  its output `H` and the error at its output `D` (a `NamedTuple` of element types and shapes of one
  observation); `scratch(layer, T, insize, outsize, m)`: batch-size-dependent work space;
- `forward!(layer, node, b, x, mode[, rng])`: fill `b.H` from the input `x` (`mode`: `TRAIN`, `BATCH` or
  `EVAL`, see network.jl);
- `parameter_gradients!(layer, node, b, x)`: turn `b.D` into the error its parameters need (in place) and
  fill `node.grads`; `carry!(dx, layer, node, b, x, exact, acc)`: the error at the input, written
  (`acc = false`) or added (`acc = true`) into `dx`; weight layers use W when `exact`, else the
  node's feedback array `B`;
- `weight_layer(layer)`: whether it holds a W that a rule's feedback stands in for (Dense, Conv);
  `elementwise(layer)`: whether it acts value by value on its input's shape and so extends a
  direct feedback point (activations, batch norm);
- `layer_text(layer)`: the call that builds it, as a Julia user writes it (model files store it).
"""
abstract type Layer end

"One trained array a layer declares: its shape, how it starts (`:weight` from the network's
initialiser, `:zeros`, `:ones`) and whether weight decay applies to it."
struct Param
    shape::Dims
    init::Symbol
    decays::Bool
end

# The protocol's defaults: a layer without parameters, state, extra buffers or scratch.
parameters(::Layer, insize) = NamedTuple()
states(::Layer, insize) = NamedTuple()
buffers(::Layer, outsize) = NamedTuple()
scratch(::Layer, T, insize, outsize, m) = nothing
parameter_gradients!(::Layer, node, b, x) = nothing
# A layer that draws random numbers (Dropout) takes the network's generator as a sixth argument.
forward!(l::Layer, node, b, x, mode, rng) = forward!(l, node, b, x, mode)
weight_layer(::Layer) = false
elementwise(::Layer) = false
linear_map(::Layer) = false
"The fewest observations a training batch may have for this layer."
min_batch(::Layer, insize) = 1
"Whether the layer is a block (a skip connection), where direct rules may place a feedback point."
is_block(::Layer) = false
"The activation fused into a weight layer (Flux's σ), `identity` for every other layer."
activation(::Layer) = identity
"The activation a layer applies: a weight layer's fused σ, or an activation layer's own."
layer_activation(l::Layer) = activation(l)
"Whether the layer trains anything."
has_params(l::Layer) = !isempty(parameters(l, ()))

pair2(x::Integer, what) = (Int(x), Int(x))
pair2(x::Tuple{Integer,Integer}, what) = (Int(x[1]), Int(x[2]))
pair2(x, what) = throw(ArgumentError("$what must be an integer or a pair of integers, got $(repr(x))"))

function check_activation(σ)
    σ in values(ACTIVATIONS) ||
        throw(ArgumentError("unknown activation $σ; expected one of $(join(sort!(collect(keys(ACTIVATIONS))), ", "))"))
    return σ
end
activation_suffix(σ) = σ === identity ? "" : ", " * activation_name(σ)
"The activation's name in Julia (`leakyrelu`; Python also accepts `leaky_relu`)."
activation_name(σ) = first(k for (k, v) in ACTIVATIONS if v === σ && k != "leaky_relu")

# Shapes in error messages: Julia's order, or reversed, NumPy's order for the same memory, once a
# Python host has asked for it (`fa_conventions`): its users read (channels, height, width).
const PYTHON_ORDER = Ref(false)
shape_text(s::Tuple) = string(PYTHON_ORDER[] ? reverse(s) : s)
image_dims_text() = PYTHON_ORDER[] ? "(channels, height, width)" : "(width, height, channels)"

# An image layer's input check, shared by the layers that take images.
function image_input(l::Layer, s::Dims)
    length(s) == 3 || throw(ArgumentError("$(layer_text(l)) expects images $(image_dims_text()), but receives a vector of $(s[1])"))
    return s
end

"""
    Chain(layers...)

Layers applied in order, e.g. `Chain(Conv((5, 5), 1 => 6, relu), MaxPool((2, 2)), Flatten(), Dense(864 => 10))`.
An activation function given as a layer (`Chain(Conv((3, 3), 1 => 8), BatchNorm(8), relu)`) is an
`Activation` layer; a `Chain` may hold chains and skip connections.
"""
struct Chain{L<:Tuple} <: Layer
    layers::L
end
Chain(layers...) = Chain(map(as_layer, layers))
as_layer(l::Layer) = l
as_layer(f::Function) = Activation(f)
as_layer(x) = throw(ArgumentError("$(repr(x)) is not a layer; expected a layer (Dense, Conv, ...) or an activation function"))
Base.length(c::Chain) = length(c.layers)
Base.getindex(c::Chain, i) = c.layers[i]
Base.iterate(c::Chain, s...) = iterate(c.layers, s...)
Base.lastindex(c::Chain) = length(c.layers)
layer_text(c::Chain) = "Chain(" * join(map(layer_text, c.layers), ", ") * ")"

"Registry of the layer calls hosts and model files may name (each layer file adds its own)."
const LAYERS = Dict{String,Any}("Chain" => Chain)

Base.show(io::IO, l::Layer) = print(io, layer_text(l))

include("layers/dense.jl")
include("layers/conv.jl")
include("layers/pool.jl")
include("layers/flatten.jl")
include("layers/dropout.jl")
include("layers/activation.jl")
include("layers/batchnorm.jl")
include("layers/skip.jl")
