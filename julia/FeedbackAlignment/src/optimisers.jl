# Optimisers are immutable hyperparameter values; their state (velocities, moments) is kept on the
# network between calls while the optimiser's type stays the same, so momentum carries over from
# one `step!`/`learn!` call to the next. All share: `weight_decay` (L2, added to the gradient),
# `decoupled_weight_decay` (AdamW-style, w -= lr·λ·w apart from the gradient step), both on
# weights (and on B for Kolen-Pollack), not biases; `layer_lr` (a learning-rate multiplier per
# layer); `schedule` (a learning-rate schedule over epochs).

"""
An optimiser: `SGD`, `Adam` or `AdamW`, an immutable value of hyperparameters. Its state (velocities,
moments) is kept on the network while the optimiser's type stays the same.
"""
abstract type Optimiser end
"A learning-rate schedule over epochs: `Constant()`, `StepDecay(every, gamma)` or `Cosine(epochs, min_factor)`."
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
"""
    AdamW(lr = 0.001; decoupled_weight_decay = 0.01, kwargs...)

Adam with decoupled weight decay (Loshchilov & Hutter 2019): an `Adam` whose
`decoupled_weight_decay` defaults to 0.01; the other keywords are `Adam`'s.
"""
AdamW(lr::Real; decoupled_weight_decay::Real=0.01, kw...) = Adam(lr; decoupled_weight_decay=decoupled_weight_decay, kw...)
AdamW(; lr::Real=0.001, kw...) = AdamW(lr; kw...)

const OPTIMISERS = Dict{String,Any}("sgd" => SGD, "adam" => Adam, "adamw" => AdamW)
const SCHEDULES = Dict{String,Any}("constant" => Constant, "step_decay" => StepDecay, "cosine" => Cosine)   # files' names too

"The learning rate for layer `l` in the epoch after `epochs` completed ones."
function layer_rate(opt::Optimiser, l, epochs)
    opt.layer_lr === nothing || length(opt.layer_lr) >= l ||
        throw(ArgumentError("layer_lr has $(length(opt.layer_lr)) entries; the network has more layers"))
    return opt.lr * lr_factor(opt.schedule, epochs) * (opt.layer_lr === nothing ? 1.0 : opt.layer_lr[l])
end

# Optimiser state lives in each layer, one set of slots per trainable array (W, b, and B under
# Kolen-Pollack): the velocity for SGD, the two moments for Adam, each shaped like its array.
state_kind(::SGD) = :sgd
state_kind(::Adam) = :adam
const STATE_SLOT_NAMES = Dict(:sgd => ["velocity"], :adam => ["first_moment", "second_moment"])   # as files name them

"The layers' state for `opt`: kept while the optimiser's kind stays the same, else new zeros."
function optimiser_state!(net::Network, opt::Optimiser)
    kind = state_kind(opt)
    net.optkind === kind && return net
    new_state!(net, kind)
    return net
end

function new_state!(net::Network, kind::Symbol)
    n = kind === :none ? 0 : length(STATE_SLOT_NAMES[kind])
    foreach_layer(st -> fresh_slots!(st, n, learns_feedback(net.rule) && st.B !== nothing), net.layers)
    net.optkind, net.optsteps = kind, 0
    return net
end

function fresh_slots!(st::Node, n, with_B)
    foreach_layer(empty!, values(st.slots))
    empty!(st.sB)
    for _ in 1:n
        foreach_pair((s, p) -> push!(s, zero(p)), values(st.slots), values(st.params))
        with_B && push!(st.sB, zero(st.B))
    end
end
@inline foreach_pair(f::F, a::Tuple{}, b::Tuple{}) where {F} = nothing
@inline foreach_pair(f::F, a::Tuple, b::Tuple) where {F} = (f(first(a), first(b)); foreach_pair(f, Base.tail(a), Base.tail(b)))

"""
    update!(net, opt)

Apply one optimiser step to every layer that learns, from the gradients in the layers. Every new
value is computed and checked before any is written: an update that would make a parameter (or
the optimiser's state) NaN or Inf throws a `DivergenceError` naming the layer, and leaves the
network as it was.
"""
function update!(net::Network, opt::Optimiser)
    optimiser_state!(net, opt)
    if !all_layers(st -> update_layer!(st, opt, net, false), net.layers)
        bad = findfirst(st -> !update_layer!(st, opt, net, false), net.layers)
        throw(DivergenceError(NaN, 0, 0, bad, first_bad(net.layers[bad], opt, net)))
    end
    net.optsteps += 1
    foreach_layer(st -> update_layer!(st, opt, net, true), net.layers)
    after_update!(net.rule, net)
    return net
end

# write = false: would every new value be finite? write = true: store them.
function update_layer!(st::Node{T}, opt::Optimiser, net::Network, write::Bool) where {T}
    (isempty(st.params) || !learns(net.rule, st, net)) && return true
    lr, t = T(layer_rate(opt, st.index, net.epochs)), net.optsteps + !write
    ok = update_params!(opt, values(st.params), values(st.grads), values(st.slots), st.decays, lr, t, write)
    if !isempty(st.sB)     # Kolen-Pollack: B gets W's update (transposed for a dense layer)
        ok &= kernel!(opt, st.B, st.dB, st.sB, lr, true, t, write)
    end
    return ok
end

update_params!(opt, ::Tuple{}, ::Tuple{}, ::Tuple{}, ::Tuple{}, lr, t, write) = true
@inline update_params!(opt, ps::Tuple, gs::Tuple, ss::Tuple, ds::Tuple, lr, t, write) =
    kernel!(opt, first(ps), first(gs), first(ss), lr, first(ds), t, write) &
    update_params!(opt, Base.tail(ps), Base.tail(gs), Base.tail(ss), Base.tail(ds), lr, t, write)

function first_bad(st::Node{T}, opt, net) where {T}
    lr, t = T(layer_rate(opt, st.index, net.epochs)), net.optsteps + 1
    for (k, name) in enumerate(keys(st.params))
        kernel!(opt, st.params[k], st.grads[k], st.slots[k], lr, st.decays[k], t, false) || return string(name)
    end
    return "B"
end

# The kernels loop over memory with @simd, which vectorises (a CartesianIndices loop did not: 490 µs
# instead of 26 µs for a 256x784 update), split over elements (threads.jl). Checking computes the
# same new values without storing them and keeps the largest of their exponent bits, which are all
# ones exactly for Inf and NaN: an integer maximum vectorises, while the float sum of p - p used before
# made the check 10x slower than the update it guarded (164 µs against 17 µs, 784 x 256, Float32).
function kernel!(opt::Optimiser, P::Array{T}, G::Array{T}, slots, lr::T, decays::Bool, t, write::Bool) where {T}
    length(G) == length(P) && all(S -> length(S) == length(P), slots) ||
        throw(DimensionMismatch("optimizer arrays do not match the parameters"))
    p, ks = nparts(NS_UPDATE * length(P)), 1:length(P)
    return p == 1 ? kernel_part!(ks, opt, P, G, slots, lr, decays, t, write) :
                    threaded_reduce(k -> kernel_part!(k, opt, P, G, slots, lr, decays, t, write), &, true, ks, p)
end

exponent_bits(x::Float32) = reinterpret(UInt32, x) & 0x7f800000
exponent_bits(x::Float64) = reinterpret(UInt64, x) & 0x7ff0000000000000
exponent_bits(x::AbstractFloat) = UInt8(!isfinite(x))
exponent_bits(x, y) = max(exponent_bits(x), exponent_bits(y))
exponent_bits(x, y, z) = max(exponent_bits(x, y), exponent_bits(z))
all_finite(e, ::Type{T}) where {T} = e != exponent_bits(T(Inf))

# One parameter's new value (and new state), as both the check and the write compute it.
@inline sgd(p, g, lr, wd, dd) = p - lr * (g + wd * p + dd * p)
@inline function sgd_momentum(p, g, v, lr, mu, wd, dd, nesterov)
    g += wd * p
    v = mu * v + g
    return p - lr * (ifelse(nesterov, g + mu * v, v) + dd * p), v
end
@inline function adam(p, g, m, v, lr, b1, b2, eps, wd, dd, c1, c2)
    g += wd * p
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return p - lr * ((m / c1) / (root(v / c2) + eps) + dd * p), m, v
end
# A square root without `sqrt`'s domain check (v is never negative; a NaN fails the check), which kept
# Adam's loops from vectorising.
root(x::Union{Float32,Float64}) = Base.Math.sqrt_llvm(x)
root(x) = sqrt(x)

function kernel_part!(ks, opt::SGD, P::Array{T}, G::Array{T}, slots, lr::T, decays::Bool, t, write::Bool) where {T}
    mu, wd = T(opt.momentum), T(decays ? opt.weight_decay : 0.0)
    dd = T(decays ? opt.decoupled_weight_decay : 0.0)
    nesterov = opt.nesterov
    e = exponent_bits(zero(T))
    if iszero(mu) && write
        @inbounds @simd for k in ks
            P[k] = sgd(P[k], G[k], lr, wd, dd)
        end
    elseif iszero(mu)
        @inbounds @simd for k in ks
            e = max(e, exponent_bits(sgd(P[k], G[k], lr, wd, dd)))
        end
    elseif write
        V = slots[1]
        @inbounds @simd for k in ks
            P[k], V[k] = sgd_momentum(P[k], G[k], V[k], lr, mu, wd, dd, nesterov)
        end
    else
        V = slots[1]
        @inbounds @simd for k in ks
            e = max(e, exponent_bits(sgd_momentum(P[k], G[k], V[k], lr, mu, wd, dd, nesterov)...))
        end
    end
    return all_finite(e, T)
end

function kernel_part!(ks, opt::Adam, P::Array{T}, G::Array{T}, slots, lr::T, decays::Bool, t, write::Bool) where {T}
    M, V = slots[1], slots[2]
    b1, b2, eps = T(opt.beta1), T(opt.beta2), T(opt.eps)
    wd, dd = T(decays ? opt.weight_decay : 0.0), T(decays ? opt.decoupled_weight_decay : 0.0)
    c1, c2 = T(1 - opt.beta1^t), T(1 - opt.beta2^t)
    e = exponent_bits(zero(T))
    if write
        @inbounds @simd for k in ks
            P[k], M[k], V[k] = adam(P[k], G[k], M[k], V[k], lr, b1, b2, eps, wd, dd, c1, c2)
        end
    else
        @inbounds @simd for k in ks
            e = max(e, exponent_bits(adam(P[k], G[k], M[k], V[k], lr, b1, b2, eps, wd, dd, c1, c2)...))
        end
    end
    return all_finite(e, T)
end
