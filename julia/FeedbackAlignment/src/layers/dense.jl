"""
    Dense(in => out, σ = identity; bias = true)

A fully connected layer: y = σ.(W x .+ b), W of size out x in (without `b` when `bias = false`).
"""
struct Dense{F} <: Layer
    in::Int
    out::Int
    σ::F
    bias::Bool
end
function Dense(io::Pair{<:Integer,<:Integer}, σ=identity; bias::Bool=true)
    first(io) >= 1 && last(io) >= 1 || throw(ArgumentError("Dense needs positive sizes, got $(first(io)) => $(last(io))"))
    return Dense{typeof(check_activation(σ))}(first(io), last(io), σ, bias)
end
LAYERS["Dense"] = Dense

function output_shape(l::Dense, s::Dims)
    s == (l.in,) && return (l.out,)
    length(s) == 1 && throw(ArgumentError("$(layer_text(l)) expects $(l.in) inputs, but receives $(s[1])"))
    throw(ArgumentError("$(layer_text(l)) expects a vector of $(l.in) inputs, but receives an image of size $(shape_text(s)); put Flatten() before it" *
                        (prod(s) == l.in ? "" : " (it would give $(prod(s)) inputs)")))
end

weight_layer(::Dense) = true
activation(l::Dense) = l.σ
param_shape(l::Dense) = (l.out, l.in)
"Fan-in and fan-out of W, as PyTorch counts them (a kernel: cin·kw·kh and cout·kw·kh)."
fans(l::Dense) = (l.in, l.out)
parameters(l::Dense, insize) = l.bias ? (W = Param(param_shape(l), :weight, true), b = Param((l.out,), :zeros, false)) :
                                        (W = Param(param_shape(l), :weight, true),)
# The pre-activations, kept for the activation's derivative (with no activation they are H itself).
buffers(l::Dense, outsize) = l.σ === identity ? NamedTuple() : (A = outsize,)

layer_text(l::Dense) = "Dense($(l.in) => $(l.out)$(activation_suffix(l.σ))$(l.bias ? "" : "; bias=false"))"

function forward!(l::Dense, n, b, x, mode)
    A = preactivations(b)
    gemm!(A, 'N', n.params.W, 'N', x)
    haskey(n.params, :b) ? bias_activate!(b.H, A, n.params.b, l.σ) : activate!(b.H, A, l.σ)
end

function parameter_gradients!(l::Dense, n, b, x)
    times_deriv!(b.D, l.σ, preactivations(b), b.H)
    gemm!(n.grads.W, 'N', b.D, 'T', x)
    haskey(n.grads, :b) && rowsums!(n.grads.b, b.D)
end

# Backprop carries the error through Wᵀ; a dense B has Wᵀ's shape and takes its place.
carry!(dx, l::Dense, n, b, x, exact::Bool, acc::Bool) =
    exact ? gemm!(dx, 'T', n.params.W, 'N', b.D, true, acc) : gemm!(dx, 'N', n.B, 'N', b.D, true, acc)

# The FA family's feedback in W's place: B has Wᵀ's shape, so it is drawn and sign-matched against Wᵀ.
stand_in_shape(l::Dense) = (l.in, l.out)
like_feedback(::Dense, W) = permutedims(W)
transposed_feedback(::Dense) = true
"B ← |B| ∘ sign(Wᵀ) (a zero weight counts as positive)."
function follow_signs!(B::Matrix, W::Matrix, ::Dense)
    @inbounds for j in axes(B, 2), i in axes(B, 1)
        B[i, j] = copysign(B[i, j], W[j, i])
    end
    return B
end
# Weight mirror's noise inputs and their outputs.
mirror_buffers(l::Dense, ::Type{T}, insize, outsize, mb, W) where {T} =
    Mirror{T,2,2,Nothing}(Array{T}(undef, insize..., mb), Array{T}(undef, outsize..., mb), T[], nothing, T[])
"Whether the layer is a plain matrix product, so products of the W of such layers give the linear map through them."
linear_map(::Dense) = true
