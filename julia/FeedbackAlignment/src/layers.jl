# Layers are small immutable settings (Flux's vocabulary, no Flux dependency): what a layer computes,
# never its arrays. A network keeps each layer's parameters, gradients and buffers apart, in a
# `LayerState` (network.jl), so hosts can hold plain arrays of them without copies.
#
# Array layouts: observations are the last dimension. Images are W x H x C x N (the memory of NumPy's
# C-ordered N x C x H x W); a conv kernel is kw x kh x Cin x Cout (PyTorch's (Cout, Cin, kh, kw)).
# Window sizes, strides and paddings are given in the arrays' dimension order: (width, height).

"A layer of a `Chain`: its settings. Adding a layer type means adding a type and its methods."
abstract type Layer end

"""
    Dense(in => out, σ = identity)

A fully connected layer: y = σ.(W x .+ b), W of size out x in.
"""
struct Dense{F} <: Layer
    in::Int
    out::Int
    σ::F
end
function Dense(io::Pair{<:Integer,<:Integer}, σ=identity)
    first(io) >= 1 && last(io) >= 1 || throw(ArgumentError("Dense needs positive sizes, got $(first(io)) => $(last(io))"))
    return Dense{typeof(check_activation(σ))}(first(io), last(io), σ)
end

"""
    Conv((kw, kh), cin => cout, σ = identity; stride = 1, pad = 0)

A 2-D convolution (cross-correlation, as PyTorch's `Conv2d`) with zero padding: kernel W of size
kw x kh x cin x cout, one bias per output channel. `stride` and `pad` are a number or a tuple
(along width, along height).
"""
struct Conv{F} <: Layer
    k::NTuple{2,Int}
    cin::Int
    cout::Int
    σ::F
    stride::NTuple{2,Int}
    pad::NTuple{2,Int}
end
function Conv(k, ch::Pair{<:Integer,<:Integer}, σ=identity; stride=1, pad=0)
    k, stride, pad = pair2(k, "kernel size"), pair2(stride, "stride"), pair2(pad, "pad")
    all(>=(1), k) || throw(ArgumentError("Conv kernel size must be positive, got $k"))
    first(ch) >= 1 && last(ch) >= 1 || throw(ArgumentError("Conv needs positive channel counts, got $(first(ch)) => $(last(ch))"))
    all(>=(1), stride) || throw(ArgumentError("Conv stride must be at least 1, got $stride"))
    all(>=(0), pad) || throw(ArgumentError("Conv pad must be non-negative, got $pad"))
    return Conv{typeof(check_activation(σ))}(k, first(ch), last(ch), σ, stride, pad)
end

"""
    MaxPool((kw, kh); stride = (kw, kh))

The maximum over each window, per channel. Backward, the error goes to each window's arg-max; of
equal maxima the first in memory order (along width first, then height) takes it.
"""
struct MaxPool <: Layer
    k::NTuple{2,Int}
    stride::NTuple{2,Int}
end

"""
    MeanPool((kw, kh); stride = (kw, kh))

The mean over each window, per channel. `MeanPool` over the whole image is global average pooling.
"""
struct MeanPool <: Layer
    k::NTuple{2,Int}
    stride::NTuple{2,Int}
end

for P in (:MaxPool, :MeanPool)
    @eval function $P(k; stride=k)
        k, stride = pair2(k, "window size"), pair2(stride, "stride")
        all(>=(1), k) || throw(ArgumentError($(string(P)) * " window size must be positive, got $k"))
        all(>=(1), stride) || throw(ArgumentError($(string(P)) * " stride must be at least 1, got $stride"))
        return $P(k, stride)
    end
end

"Flatten(): W x H x C x N images to (W·H·C) x N columns, the same memory order."
struct Flatten <: Layer end

const PoolLayer = Union{MaxPool,MeanPool}
const ParamLayer = Union{Dense,Conv}

pair2(x::Integer, what) = (Int(x), Int(x))
pair2(x::Tuple{Integer,Integer}, what) = (Int(x[1]), Int(x[2]))
pair2(x, what) = throw(ArgumentError("$what must be an integer or a pair of integers, got $(repr(x))"))

function check_activation(σ)
    σ in values(ACTIVATIONS) ||
        throw(ArgumentError("unknown activation $σ; expected one of $(join(sort!(collect(keys(ACTIVATIONS))), ", "))"))
    return σ
end

"""
    Chain(layers...)

Layers applied in order, e.g. `Chain(Conv((5, 5), 1 => 6, relu), MaxPool((2, 2)), Flatten(), Dense(864 => 10))`.
"""
struct Chain{L<:Tuple}
    layers::L
end
Chain(layers::Layer...) = Chain(layers)
Base.length(c::Chain) = length(c.layers)
Base.getindex(c::Chain, i) = c.layers[i]
Base.iterate(c::Chain, s...) = iterate(c.layers, s...)

activation(l::ParamLayer) = l.σ
activation(::Layer) = identity
has_params(::Layer) = false
has_params(::ParamLayer) = true

window(l::Conv) = Window(l.k, l.stride, l.pad)
window(l::PoolLayer) = Window(l.k, l.stride, (0, 0))

"Shape of W (Julia's order), or `nothing` for a layer without parameters."
param_shape(l::Dense) = (l.out, l.in)
param_shape(l::Conv) = (l.k..., l.cin, l.cout)
param_shape(::Layer) = nothing
bias_length(l::Dense) = l.out
bias_length(l::Conv) = l.cout

"Fan-in and fan-out of W, as PyTorch counts them (a kernel: cin·kw·kh and cout·kw·kh)."
fans(l::Dense) = (l.in, l.out)
fans(l::Conv) = (l.cin * prod(l.k), l.cout * prod(l.k))

"""
    output_shape(layer, insize) -> outsize

The shape of one observation after `layer` (observations excluded), or an ArgumentError that says
what the layer expected.
"""
function output_shape(l::Dense, s::Dims)
    s == (l.in,) && return (l.out,)
    length(s) == 1 && throw(ArgumentError("$(layer_text(l)) expects $(l.in) inputs, but receives $(s[1])"))
    throw(ArgumentError("$(layer_text(l)) expects a vector of $(l.in) inputs, but receives an image of size $s; put Flatten() before it" *
                        (prod(s) == l.in ? "" : " (it would give $(prod(s)) inputs)")))
end

function output_shape(l::Union{Conv,PoolLayer}, s::Dims)
    length(s) == 3 || throw(ArgumentError("$(layer_text(l)) expects images (width, height, channels), but receives a vector of $(s[1])"))
    l isa Conv && s[3] != l.cin &&
        throw(ArgumentError("$(layer_text(l)) expects $(l.cin) input channels, but receives $(s[3])"))
    w = window(l)
    padded = (s[1] + 2w.pad[1], s[2] + 2w.pad[2])
    all(padded .>= w.k) || throw(ArgumentError("$(layer_text(l)) has a window of $(w.k), larger than its " *
                                               (l isa Conv && any(>(0), w.pad) ? "padded " : "") * "input of $padded"))
    return (window_output(w, s[1:2])..., l isa Conv ? l.cout : s[3])
end

output_shape(::Flatten, s::Dims) = (prod(s),)

"The call that builds `l`, as a Julia user writes it (hosts send the same text; model files store it)."
layer_text(l::Dense) = "Dense($(l.in) => $(l.out)$(activation_suffix(l.σ)))"
function layer_text(l::Conv)
    kw = (l.stride == (1, 1) ? "" : "stride=$(l.stride)", l.pad == (0, 0) ? "" : "pad=$(l.pad)")
    kw = join(filter(!isempty, collect(kw)), ", ")
    return "Conv($(l.k), $(l.cin) => $(l.cout)$(activation_suffix(l.σ))$(isempty(kw) ? "" : "; " * kw))"
end
layer_text(l::PoolLayer) = "$(nameof(typeof(l)))($(l.k)$(l.stride == l.k ? "" : "; stride=$(l.stride)"))"
layer_text(::Flatten) = "Flatten()"
activation_suffix(σ) = σ === identity ? "" : ", " * activation_name(σ)
"The activation's name in Julia (`leakyrelu`; Python also accepts `leaky_relu`)."
activation_name(σ) = first(k for (k, v) in ACTIVATIONS if v === σ && k != "leaky_relu")

Base.show(io::IO, l::Layer) = print(io, layer_text(l))
Base.show(io::IO, c::Chain) = print(io, "Chain(", join(map(layer_text, c.layers), ", "), ")")

const LAYERS = Dict{String,Any}("Dense" => Dense, "Conv" => Conv, "MaxPool" => MaxPool,
                                "MeanPool" => MeanPool, "Flatten" => Flatten)
