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

The mean over each window, per channel.
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
    @eval LAYERS[$(string(P))] = $P
end

const PoolLayer = Union{MaxPool,MeanPool}
window(l::PoolLayer) = Window(l.k, l.stride, (0, 0))
output_shape(l::PoolLayer, s::Dims) = (image_input(l, s); (window_fit(l, window(l), s)..., s[3]))
layer_text(l::PoolLayer) = "$(nameof(typeof(l)))($(l.k)$(l.stride == l.k ? "" : "; stride=$(l.stride)"))"
buffers(::MaxPool, outsize) = (argmax = (Int32, outsize),)   # where each window's maximum was

forward!(l::MaxPool, n, b, x, mode) = maxpool_forward!(b.H, b.argmax, x, window(l))
forward!(l::MeanPool, n, b, x, mode) = meanpool_forward!(b.H, x, window(l))
carry!(dx, l::MaxPool, n, b, x, exact::Bool, acc::Bool) = maxpool_backward!(dx, b.D, b.argmax, window(l), acc)
carry!(dx, l::MeanPool, n, b, x, exact::Bool, acc::Bool) = meanpool_backward!(dx, b.D, window(l), acc)

"""
    GlobalMeanPool()

The mean of each channel over the whole image: (width, height, channels) to (1, 1, channels), as
PyTorch's `AdaptiveAvgPool2d(1)`.
"""
struct GlobalMeanPool <: Layer end
LAYERS["GlobalMeanPool"] = GlobalMeanPool
output_shape(l::GlobalMeanPool, s::Dims) = (image_input(l, s); (1, 1, s[3]))
layer_text(::GlobalMeanPool) = "GlobalMeanPool()"

function forward!(::GlobalMeanPool, n, b, x::Array{T,4}, mode) where {T}
    P = size(x, 1) * size(x, 2)
    H = b.H
    @inbounds for j in 1:size(x, 3) * size(x, 4)
        s = zero(T)
        @simd for p in 1:P
            s += x[(j - 1) * P + p]
        end
        H[j] = s / P
    end
end

function carry!(dx::Array{T,4}, ::GlobalMeanPool, n, b, x, exact::Bool, acc::Bool) where {T}
    P = size(dx, 1) * size(dx, 2)
    D = b.D
    @inbounds for j in 1:size(dx, 3) * size(dx, 4)
        g = D[j] / P
        if acc
            @simd for p in 1:P
                dx[(j - 1) * P + p] += g
            end
        else
            @simd for p in 1:P
                dx[(j - 1) * P + p] = g
            end
        end
    end
end
