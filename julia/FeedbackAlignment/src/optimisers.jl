# Optimisers are immutable hyperparameter values; their state (velocities, moments) is kept on the
# network between calls while the optimiser's type stays the same, so momentum carries over from
# one `step!`/`learn!` call to the next. All share: `weight_decay` (L2, added to the gradient),
# `decoupled_weight_decay` (AdamW-style, w -= lr·λ·w apart from the gradient step), both on
# weights (and on B for Kolen-Pollack), not biases; `layer_lr` (a learning-rate multiplier per
# layer); `schedule` (a learning-rate schedule over epochs).

abstract type Optimiser end
abstract type Schedule end

"Constant learning rate."
struct Constant <: Schedule end
lr_factor(::Constant, epoch) = 1.0

"""
    StepDecay(every, gamma = 0.1)

Multiply the learning rate by `gamma` every `every` epochs.
"""
struct StepDecay <: Schedule
    every::Int
    gamma::Float64
    function StepDecay(every::Integer, gamma::Real=0.1)
        every >= 1 || throw(ArgumentError("StepDecay every must be at least 1 epoch, got $every"))
        gamma > 0 || throw(ArgumentError("StepDecay gamma must be positive, got $gamma"))
        return new(every, gamma)
    end
end
StepDecay(; every::Integer, gamma::Real=0.1) = StepDecay(every, gamma)
lr_factor(s::StepDecay, epoch) = s.gamma^(epoch ÷ s.every)

"""
    Cosine(epochs, min_factor = 0.0)

Cosine annealing (Loshchilov & Hutter 2017) from the full rate to `min_factor` times it over
`epochs` epochs, then constant.
"""
struct Cosine <: Schedule
    epochs::Int
    min_factor::Float64
    function Cosine(epochs::Integer, min_factor::Real=0.0)
        epochs >= 1 || throw(ArgumentError("Cosine epochs must be at least 1, got $epochs"))
        0 <= min_factor <= 1 || throw(ArgumentError("Cosine min_factor must be in [0, 1], got $min_factor"))
        return new(epochs, min_factor)
    end
end
Cosine(; epochs::Integer, min_factor::Real=0.0) = Cosine(epochs, min_factor)
lr_factor(s::Cosine, epoch) = s.min_factor + (1 - s.min_factor) * (1 + cos(π * min(epoch, s.epochs) / s.epochs)) / 2

function check_common(name, lr, weight_decay, decoupled, layer_lr)
    lr > 0 && isfinite(lr) || throw(ArgumentError("$name learning rate must be a positive finite number, got $lr"))
    weight_decay >= 0 || throw(ArgumentError("$name weight_decay must be non-negative, got $weight_decay"))
    decoupled >= 0 || throw(ArgumentError("$name decoupled_weight_decay must be non-negative, got $decoupled"))
    layer_lr === nothing || all(x -> x >= 0, layer_lr) || throw(ArgumentError("$name layer_lr multipliers must be non-negative"))
end

"""
    SGD(lr; momentum = 0.0, nesterov = false, weight_decay = 0.0, decoupled_weight_decay = 0.0,
        layer_lr = nothing, schedule = Constant())

Stochastic gradient descent with momentum in PyTorch's form: g = dW + weight_decay·W,
v = momentum·v + g, step = v (Nesterov: g + momentum·v), W -= lr·(step + decoupled_weight_decay·W).
"""
struct SGD{S<:Schedule} <: Optimiser
    lr::Float64
    momentum::Float64
    nesterov::Bool
    weight_decay::Float64
    decoupled_weight_decay::Float64
    layer_lr::Union{Vector{Float64},Nothing}
    schedule::S
end
function SGD(lr::Real; momentum::Real=0.0, nesterov::Bool=false, weight_decay::Real=0.0,
             decoupled_weight_decay::Real=0.0, layer_lr=nothing, schedule::Schedule=Constant())
    check_common("SGD", lr, weight_decay, decoupled_weight_decay, layer_lr)
    0 <= momentum < 1 || throw(ArgumentError("SGD momentum must be in [0, 1), got $momentum"))
    nesterov && momentum == 0 && throw(ArgumentError("SGD nesterov needs a momentum > 0"))
    return SGD(Float64(lr), Float64(momentum), nesterov, Float64(weight_decay), Float64(decoupled_weight_decay),
               layer_lr === nothing ? nothing : Float64.(collect(layer_lr)), schedule)
end
SGD(lr::Real, momentum::Real; kw...) = SGD(lr; momentum=momentum, kw...)
SGD(; lr::Real=0.01, kw...) = SGD(lr; kw...)

"""
    Adam(lr = 0.001; beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0,
         decoupled_weight_decay = 0.0, layer_lr = nothing, schedule = Constant())

Adam (Kingma & Ba 2015) with bias correction; with `decoupled_weight_decay` it is AdamW
(Loshchilov & Hutter 2019). `AdamW(lr; decoupled_weight_decay = 0.01, ...)` is the same type.
"""
struct Adam{S<:Schedule} <: Optimiser
    lr::Float64
    beta1::Float64
    beta2::Float64
    eps::Float64
    weight_decay::Float64
    decoupled_weight_decay::Float64
    layer_lr::Union{Vector{Float64},Nothing}
    schedule::S
end
function Adam(lr::Real; beta1::Real=0.9, beta2::Real=0.999, eps::Real=1e-8, weight_decay::Real=0.0,
              decoupled_weight_decay::Real=0.0, layer_lr=nothing, schedule::Schedule=Constant())
    check_common("Adam", lr, weight_decay, decoupled_weight_decay, layer_lr)
    0 <= beta1 < 1 && 0 <= beta2 < 1 || throw(ArgumentError("Adam betas must be in [0, 1), got ($beta1, $beta2)"))
    eps > 0 || throw(ArgumentError("Adam eps must be positive, got $eps"))
    return Adam(Float64(lr), Float64(beta1), Float64(beta2), Float64(eps), Float64(weight_decay),
                Float64(decoupled_weight_decay), layer_lr === nothing ? nothing : Float64.(collect(layer_lr)), schedule)
end
Adam(; lr::Real=0.001, kw...) = Adam(lr; kw...)
AdamW(lr::Real; decoupled_weight_decay::Real=0.01, kw...) = Adam(lr; decoupled_weight_decay=decoupled_weight_decay, kw...)
AdamW(; lr::Real=0.001, kw...) = AdamW(lr; kw...)

const OPTIMISERS = Dict{String,Any}("sgd" => SGD, "adam" => Adam, "adamw" => AdamW)
const SCHEDULES = Dict{String,Any}("constant" => Constant, "step" => StepDecay, "cosine" => Cosine)

"The learning rate for layer `l` in the epoch after `epochs` completed ones."
function layer_rate(opt::Optimiser, l, epochs)
    opt.layer_lr === nothing || length(opt.layer_lr) >= l ||
        throw(ArgumentError("layer_lr has $(length(opt.layer_lr)) entries; the network has more layers"))
    return opt.lr * lr_factor(opt.schedule, epochs) * (opt.layer_lr === nothing ? 1.0 : opt.layer_lr[l])
end

# One state slot per trainable array: W, b (and B under Kolen-Pollack), per layer.
struct OptState{T}
    kind::Any                    # the optimiser's type, without its schedule parameter
    slots::Vector{Vector{Array{T}}}   # per layer, per array: the state arrays (1 for SGD, 2 for Adam)
    t::Base.RefValue{Int}        # update count (Adam's bias correction)
end

nslots(::SGD) = 1
nslots(::Adam) = 2
kind(opt::Optimiser) = typeof(opt).name.wrapper

function optimiser_state!(net::Network{T}, opt::Optimiser) where {T}
    s = net.optstate
    s isa OptState{T} && s.kind === kind(opt) && return s
    slots = [Array{T}[zero(A) for A in trainable(net, d) for _ in 1:nslots(opt)] for d in net.layers]
    state = OptState{T}(kind(opt), slots, Ref(0))
    net.optstate = state
    return state
end

trainable(net::Network, d::Dense) = learns_feedback(net.rule) && d.B !== nothing ? (d.W, d.b, d.B) : (d.W, d.b)

function update!(net::Network{T}, opt::Optimiser, grads) where {T}
    state = optimiser_state!(net, opt)
    state.t[] += 1
    L = length(net.layers)
    for (l, d) in enumerate(net.layers)
        learns(net.rule, l, L) || continue
        lr = T(layer_rate(opt, l, net.epochs))
        dW, db = grads[l]
        slots = state.slots[l]
        apply!(opt, d.W, dW, slots, 0, lr, true, state.t[])
        apply!(opt, d.b, db, slots, 1, lr, false, state.t[])
        if learns_feedback(net.rule) && d.B !== nothing   # Kolen-Pollack: B gets Wᵀ's update
            apply!(opt, d.B, transpose(dW), slots, 2, lr, true, state.t[])
        end
    end
    after_update!(net.rule, net)
    return net
end

# `slots` holds a layer's state arrays, `nslots` per trainable array: W's (which = 0), b's (1),
# B's (2). They are of mixed dimension, so each is asserted to P's type: without that every element
# access in `apply!` is a dynamic call (21 MB allocated per momentum step of a 784-256-256-10 network).
# The kernels loop over columns with a @simd inner loop, which vectorises (a CartesianIndices loop
# did not: 490 µs instead of 26 µs for a 256x784 update). G may be a Transpose (Kolen-Pollack's B)
# and P a vector (P[i, 1] is its i-th element).
function apply!(opt::SGD, P::Array{T,N}, G::AbstractArray, slots, which, lr::T, decays::Bool, t) where {T,N}
    V = slots[which+1]::Array{T,N}
    mu, wd = T(opt.momentum), T(decays ? opt.weight_decay : 0.0)
    dd = T(decays ? opt.decoupled_weight_decay : 0.0)
    if iszero(mu)
        @inbounds for j in axes(P, 2)
            @simd for i in axes(P, 1)
                P[i, j] -= lr * (G[i, j] + wd * P[i, j] + dd * P[i, j])
            end
        end
    else
        nesterov = opt.nesterov
        @inbounds for j in axes(P, 2)
            @simd for i in axes(P, 1)
                g = G[i, j] + wd * P[i, j]
                v = mu * V[i, j] + g
                V[i, j] = v
                P[i, j] -= lr * (ifelse(nesterov, g + mu * v, v) + dd * P[i, j])
            end
        end
    end
end

function apply!(opt::Adam, P::Array{T,N}, G::AbstractArray, slots, which, lr::T, decays::Bool, t) where {T,N}
    M, V = slots[2which+1]::Array{T,N}, slots[2which+2]::Array{T,N}
    b1, b2, eps = T(opt.beta1), T(opt.beta2), T(opt.eps)
    wd, dd = T(decays ? opt.weight_decay : 0.0), T(decays ? opt.decoupled_weight_decay : 0.0)
    c1, c2 = T(1 - opt.beta1^t), T(1 - opt.beta2^t)
    @inbounds for j in axes(P, 2)
        @simd for i in axes(P, 1)
            g = G[i, j] + wd * P[i, j]
            m = b1 * M[i, j] + (1 - b1) * g
            v = b2 * V[i, j] + (1 - b2) * g * g
            M[i, j], V[i, j] = m, v
            P[i, j] -= lr * ((m / c1) / (sqrt(v / c2) + eps) + dd * P[i, j])
        end
    end
end
