"""
    Dropout(p)

Inverted dropout (Srivastava et al. 2014, as PyTorch's `Dropout`): in training each value is zeroed
with probability `p` and the kept ones are scaled by 1/(1-p), from the network's generator; in
evaluation (and for `gradients`) it passes its input on unchanged. Backward, the error is multiplied
by the same mask. `0 <= p < 1`.
"""
struct Dropout <: Layer
    p::Float64
    function Dropout(p::Real)
        0 <= p < 1 || throw(ArgumentError("Dropout probability must be in [0, 1), got $p"))
        return new(p)
    end
end
LAYERS["Dropout"] = Dropout

output_shape(::Dropout, s::Dims) = s
elementwise(::Dropout) = true
layer_text(l::Dropout) = "Dropout($(l.p))"
buffers(::Dropout, outsize) = (mask = outsize,)
# Whether the last forward pass dropped (training), so that the backward pass applies the mask.
scratch(::Dropout, T, insize, outsize, m) = (dropped = Ref(false),)

function forward!(l::Dropout, n, b, x::Array{T}, mode, rng) where {T}
    dropping = mode == TRAIN && l.p > 0
    n.scratch.dropped[] = dropping
    dropping ? drop!(b.H, b.mask, x, l.p, rng) : copyto!(b.H, x)
    return b.H
end

function carry!(dx::Array{T}, ::Dropout, n, b, x::Array{T}, exact::Bool, acc::Bool) where {T}
    n.scratch.dropped[] || return add_or_copy!(dx, b.D, acc)
    D, M = b.D, b.mask
    if acc
        @inbounds @simd for k in eachindex(dx, D, M)
            dx[k] += D[k] * M[k]
        end
    else
        @inbounds @simd for k in eachindex(dx, D, M)
            dx[k] = D[k] * M[k]
        end
    end
    return dx
end
