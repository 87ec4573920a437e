"""
    BatchNorm(channels; momentum = 0.1, eps = 1e-5)

Batch normalisation (Ioffe & Szegedy 2015) with PyTorch's conventions, per channel of images
(statistics over width, height and observations) or per feature of vectors (over observations):
y = γ (x - μ) / sqrt(σ² + eps) + β. In training, μ and σ² are the batch's mean and biased variance,
and the running statistics move towards them (running = (1 - momentum) running + momentum batch,
the unbiased variance); in evaluation the running statistics are used. γ starts at 1, β at 0,
neither is weight-decayed; the running mean starts at 0 and the running variance at 1. Under every
learning rule the error passes through exactly (it has no feedback array).
"""
struct BatchNorm <: Layer
    channels::Int
    momentum::Float64
    eps::Float64
    function BatchNorm(channels::Integer; momentum::Real=0.1, eps::Real=1e-5)
        channels >= 1 || throw(ArgumentError("BatchNorm needs a positive number of channels, got $channels"))
        0 <= momentum <= 1 || throw(ArgumentError("BatchNorm momentum must be in [0, 1], got $momentum"))
        eps > 0 || throw(ArgumentError("BatchNorm eps must be positive, got $eps"))
        return new(channels, momentum, eps)
    end
end
LAYERS["BatchNorm"] = BatchNorm

function output_shape(l::BatchNorm, s::Dims)
    length(s) in (1, 3) || throw(ArgumentError("$(layer_text(l)) expects vectors or images, but receives $(shape_text(s))"))
    s[end] == l.channels || throw(ArgumentError("$(layer_text(l)) expects $(l.channels) " *
                                               (length(s) == 1 ? "features" : "channels") * ", but receives $(s[end])"))
    return s
end
elementwise(::BatchNorm) = true
min_batch(::BatchNorm, insize) = length(insize) == 1 || insize[1] * insize[2] == 1 ? 2 : 1
parameters(l::BatchNorm, insize) = (gamma = Param((l.channels,), :ones, false), beta = Param((l.channels,), :zeros, false))
states(l::BatchNorm, insize) = (running_mean = Param((l.channels,), :zeros, false), running_var = Param((l.channels,), :ones, false))
layer_text(l::BatchNorm) = "BatchNorm($(l.channels)" * (l.momentum == 0.1 ? "" : "; momentum=$(l.momentum)") *
                           (l.eps == 1e-5 ? "" : (l.momentum == 0.1 ? "; " : ", ") * "eps=$(l.eps)") * ")"
# The mean and 1/sqrt(σ² + eps) the last forward pass normalised with, and whether they were the batch's.
scratch(l::BatchNorm, ::Type{T}, insize, outsize, m) where {T} =
    (mean = zeros(T, l.channels), invstd = zeros(T, l.channels), batch_stats = Ref(false))

# An array as (values per channel within an observation) x channels x observations.
bn_view(x::Array{T,N}) where {T,N} = (N == 2 ? 1 : size(x, 1) * size(x, 2), size(x, N - 1), size(x, N))

function forward!(l::BatchNorm, n, b, x::Array{T}, mode) where {T}
    P, C, m = bn_view(x)
    μ, invstd = n.scratch.mean, n.scratch.invstd
    batch = mode != EVAL
    n.scratch.batch_stats[] = batch
    if batch
        count = P * m
        count > 1 || throw(ArgumentError("layer $(n.path), $(layer_text(l)) needs more than one value per channel " *
                                         "in training, but the batch gives $count (batch size $m)"))
        @inbounds for c in 1:C
            s = 0.0
            for j in 1:m
                off = ((j - 1) * C + c - 1) * P
                @simd for p in 1:P
                    s += Float64(x[off + p])
                end
            end
            mean = s / count
            v = 0.0
            for j in 1:m
                off = ((j - 1) * C + c - 1) * P
                @simd for p in 1:P
                    d = Float64(x[off + p]) - mean
                    v += d * d
                end
            end
            var = v / count               # biased: the normalisation uses it
            μ[c], invstd[c] = T(mean), T(1 / sqrt(var + l.eps))
            if mode == TRAIN
                rm, rv = n.state.running_mean, n.state.running_var
                rm[c] = T((1 - l.momentum) * rm[c] + l.momentum * mean)
                rv[c] = T((1 - l.momentum) * rv[c] + l.momentum * var * count / (count - 1))
            end
        end
    else
        @inbounds for c in 1:C
            μ[c] = n.state.running_mean[c]
            invstd[c] = T(1 / sqrt(Float64(n.state.running_var[c]) + l.eps))
        end
    end
    γ, β, H = n.params.gamma, n.params.beta, b.H
    @inbounds for j in 1:m, c in 1:C
        off, scale, shift = ((j - 1) * C + c - 1) * P, γ[c] * invstd[c], β[c] - γ[c] * invstd[c] * μ[c]
        @simd for p in 1:P
            H[off + p] = muladd(scale, x[off + p], shift)
        end
    end
end

# dβ = Σ D and dγ = Σ D x̂ per channel (x̂ the normalised input), in Float64 sums.
function parameter_gradients!(l::BatchNorm, n, b, x::Array{T}) where {T}
    P, C, m = bn_view(x)
    μ, invstd, D = n.scratch.mean, n.scratch.invstd, b.D
    @inbounds for c in 1:C
        sd, sdx = 0.0, 0.0
        for j in 1:m
            off = ((j - 1) * C + c - 1) * P
            @simd for p in 1:P
                d = Float64(D[off + p])
                sd += d
                sdx += d * (Float64(x[off + p]) - μ[c])
            end
        end
        n.grads.beta[c] = T(sd)
        n.grads.gamma[c] = T(sdx * invstd[c])
    end
end

# With batch statistics, dx = γ/σ (D - mean(D) - x̂ mean(D x̂)) (the statistics depend on x); with
# running statistics, dx = γ/σ D. The means come from the sums `parameter_gradients!` left in the gradients.
function carry!(dx::Array{T}, l::BatchNorm, n, b, x::Array{T}, exact::Bool, acc::Bool) where {T}
    P, C, m = bn_view(x)
    μ, invstd, D, γ = n.scratch.mean, n.scratch.invstd, b.D, n.params.gamma
    batch = n.scratch.batch_stats[]
    @inbounds for c in 1:C
        k = γ[c] * invstd[c]
        mean_d = batch ? n.grads.beta[c] / (P * m) : zero(T)
        mean_dx = batch ? n.grads.gamma[c] / (P * m) : zero(T)     # mean(D x̂)
        for j in 1:m
            off = ((j - 1) * C + c - 1) * P
            if acc
                @simd for p in 1:P
                    dx[off + p] += k * (D[off + p] - mean_d - (x[off + p] - μ[c]) * invstd[c] * mean_dx)
                end
            else
                @simd for p in 1:P
                    dx[off + p] = k * (D[off + p] - mean_d - (x[off + p] - μ[c]) * invstd[c] * mean_dx)
                end
            end
        end
    end
    return dx
end
