"Flatten(): W x H x C x N images to (W·H·C) x N columns, the same memory order."
struct Flatten <: Layer end
LAYERS["Flatten"] = Flatten
output_shape(::Flatten, s::Dims) = (prod(s),)
layer_text(::Flatten) = "Flatten()"
forward!(::Flatten, n, b, x, mode) = copyto!(b.H, x)
carry!(dx, ::Flatten, n, b, x, exact::Bool, acc::Bool) = add_or_copy!(dx, b.D, acc)

# dx .= D or dx .+= D, element by element in memory order (the shapes may differ).
function add_or_copy!(dx::Array{T}, D::Array{T}, acc::Bool) where {T}
    length(dx) == length(D) || throw(DimensionMismatch("error buffers of $(length(dx)) and $(length(D)) values"))
    acc || return copyto!(dx, D)
    @inbounds @simd for k in eachindex(dx, D)
        dx[k] += D[k]
    end
    return dx
end
