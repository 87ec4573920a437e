"""
    Activation(σ)

An activation function as a layer of its own, H = σ.(x); in a `Chain` the function alone stands for
it (`Chain(Conv((3, 3), 1 => 8), BatchNorm(8), relu)`). Backward it multiplies the error by σ'.
"""
struct Activation{F} <: Layer
    σ::F
    Activation(σ) = new{typeof(check_activation(σ))}(σ)
end
LAYERS["Activation"] = Activation   # a layer line names it by the function alone: "relu"

output_shape(::Activation, s::Dims) = s
elementwise(::Activation) = true
layer_activation(l::Activation) = l.σ
layer_text(l::Activation) = activation_name(l.σ)
forward!(l::Activation, n, b, x, mode) = activate!(b.H, x, l.σ)

function carry!(dx::Array{T}, l::Activation, n, b, x::Array{T}, exact::Bool, acc::Bool) where {T}
    D, H, σ = b.D, b.H, l.σ
    if acc
        @inbounds @simd for k in eachindex(dx, D)
            dx[k] += D[k] * deriv(σ, x[k], H[k])
        end
    else
        @inbounds @simd for k in eachindex(dx, D)
            dx[k] = D[k] * deriv(σ, x[k], H[k])
        end
    end
    return dx
end
