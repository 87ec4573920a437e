"""
    Conv((kw, kh), cin => cout, σ = identity; stride = 1, pad = 0, bias = true)

A 2-D convolution (cross-correlation, as PyTorch's `Conv2d`) with zero padding: kernel W of size
kw x kh x cin x cout, one bias per output channel (none with `bias = false`). `stride` and `pad`
are a number or a tuple (along width, along height). The kernels are in conv.jl.
"""
struct Conv{F} <: Layer
    k::NTuple{2,Int}
    cin::Int
    cout::Int
    σ::F
    stride::NTuple{2,Int}
    pad::NTuple{2,Int}
    bias::Bool
end
function Conv(k, ch::Pair{<:Integer,<:Integer}, σ=identity; stride=1, pad=0, bias::Bool=true)
    k, stride, pad = pair2(k, "kernel size"), pair2(stride, "stride"), pair2(pad, "pad")
    all(>=(1), k) || throw(ArgumentError("Conv kernel size must be positive, got $k"))
    first(ch) >= 1 && last(ch) >= 1 || throw(ArgumentError("Conv needs positive channel counts, got $(first(ch)) => $(last(ch))"))
    all(>=(1), stride) || throw(ArgumentError("Conv stride must be at least 1, got $stride"))
    all(>=(0), pad) || throw(ArgumentError("Conv pad must be non-negative, got $pad"))
    return Conv{typeof(check_activation(σ))}(k, first(ch), last(ch), σ, stride, pad, bias)
end
LAYERS["Conv"] = Conv

window(l::Conv) = Window(l.k, l.stride, l.pad)
weight_layer(::Conv) = true
activation(l::Conv) = l.σ
param_shape(l::Conv) = (l.k..., l.cin, l.cout)
fans(l::Conv) = (l.cin * prod(l.k), l.cout * prod(l.k))
parameters(l::Conv, insize) = l.bias ? (W = Param(param_shape(l), :weight, true), b = Param((l.cout,), :zeros, false)) :
                                       (W = Param(param_shape(l), :weight, true),)
buffers(l::Conv, outsize) = l.σ === identity ? NamedTuple() : (A = outsize,)

function output_shape(l::Conv, s::Dims)
    image_input(l, s)
    s[3] == l.cin || throw(ArgumentError("$(layer_text(l)) expects $(l.cin) input channels, but receives $(s[3])"))
    return (window_fit(l, window(l), s)..., l.cout)
end

# The output's width and height for a window layer, or an error naming the layer.
function window_fit(l::Layer, w::Window, s::Dims)
    padded = (s[1] + 2w.pad[1], s[2] + 2w.pad[2])
    all(padded .>= w.k) || throw(ArgumentError("$(layer_text(l)) has a window of $(shape_text(w.k)), larger than its " *
                                               (any(>(0), w.pad) ? "padded " : "") * "input of $(shape_text(padded))"))
    return window_output(w, s[1:2])
end

function layer_text(l::Conv)
    kw = (l.stride == (1, 1) ? "" : "stride=$(l.stride)", l.pad == (0, 0) ? "" : "pad=$(l.pad)", l.bias ? "" : "bias=false")
    kw = join(filter(!isempty, collect(kw)), ", ")
    return "Conv($(l.k), $(l.cin) => $(l.cout)$(activation_suffix(l.σ))$(isempty(kw) ? "" : "; " * kw))"
end

# The im2col columns of a batch and a product buffer (conv.jl), and for a layer without bias the
# zeros the kernels add and the bias gradient they compute.
function scratch(l::Conv, ::Type{T}, insize, outsize, m) where {T}
    cols = Vector{T}(undef, conv_scratch_length(window(l), insize[1:2], insize[3], l.cout, m))
    return l.bias ? (cols = cols,) : (cols = cols, zero_bias = zeros(T, l.cout), unused_db = zeros(T, l.cout))
end

bias_of(n) = haskey(n.params, :b) ? n.params.b : n.scratch.zero_bias
bias_grad_of(n) = haskey(n.grads, :b) ? n.grads.b : n.scratch.unused_db

forward!(l::Conv, n, b, x, mode) =   # bias and activation fused into the product's pass
    conv_forward!(preactivations(b), b.H, l.σ, x, n.params.W, bias_of(n), n.scratch.cols, window(l))

function parameter_gradients!(l::Conv, n, b, x)
    times_deriv!(b.D, l.σ, preactivations(b), b.H)
    conv_filter_grad!(n.grads.W, bias_grad_of(n), x, b.D, n.scratch.cols, window(l))
end

# A conv B has the kernel's shape and takes W's place in the transposed convolution.
carry!(dx, l::Conv, n, b, x, exact::Bool, acc::Bool) =
    conv_data_grad!(dx, b.D, exact ? n.params.W : n.B, n.scratch.cols, window(l), 0, acc)

# The FA family's feedback in W's place: a kernel-shaped B, drawn and sign-matched against W.
stand_in_shape(l::Conv) = param_shape(l)
like_feedback(::Conv, W) = W
transposed_feedback(::Conv) = false
"B ← |B| ∘ sign(W) (a zero weight counts as positive)."
function follow_signs!(B::Array, W::Array, ::Conv)
    @inbounds @simd for k in eachindex(B, W)
        B[k] = copysign(B[k], W[k])
    end
    return B
end
# Weight mirror's noise inputs, their outputs, the kernels' scratch and a kernel-sized product.
function mirror_buffers(l::Conv, ::Type{T}, insize, outsize, mb, W) where {T}
    scratch = Vector{T}(undef, conv_scratch_length(window(l), insize[1:2], insize[3], l.cout, mb))
    return Mirror{T,4,4,typeof(W)}(Array{T}(undef, insize..., mb), Array{T}(undef, outsize..., mb), scratch,
                                   similar(W), Vector{T}(undef, l.cout))
end
