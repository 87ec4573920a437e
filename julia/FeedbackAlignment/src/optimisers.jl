abstract type Optimiser end

"""
    SGD(lr, momentum = 0.0)

Stochastic gradient descent with heavy-ball momentum in PyTorch's form: v = momentum*v + dW,
W -= lr*v (with momentum 0, plain W -= lr*dW).
"""
struct SGD <: Optimiser
    lr::Float64
    momentum::Float64
    function SGD(lr::Real, momentum::Real=0.0)
        lr > 0 && isfinite(lr) || throw(ArgumentError("SGD learning rate must be a positive finite number, got $lr"))
        0 <= momentum < 1 || throw(ArgumentError("SGD momentum must be in [0, 1), got $momentum"))
        return new(lr, momentum)
    end
end

const OPTIMISERS = Dict{String,Any}("sgd" => hyper -> SGD(hyper...))

"Velocity per parameter array, created at the first update with momentum."
struct SGDState{T}
    velocity::Vector{Tuple{Matrix{T},Vector{T}}}
end

# An optimiser's state is kept on the network between calls while the optimiser's type stays the
# same, so momentum carries over from one `step!`/`learn!` call to the next.
function optimiser_state!(net::Network{T}, ::SGD) where {T}
    net.optstate isa SGDState{T} ||
        (net.optstate = SGDState{T}([(zero(d.W), zero(d.b)) for d in net.layers]))
    return net.optstate
end

function update!(net::Network{T}, opt::SGD, grads) where {T}
    lr, mu = T(opt.lr), T(opt.momentum)
    if iszero(mu)
        for (d, (dW, db)) in zip(net.layers, grads)
            descend!(d.W, dW, lr)
            descend!(d.b, db, lr)
        end
    else
        state = optimiser_state!(net, opt)
        for (d, (dW, db), (vW, vb)) in zip(net.layers, grads, state.velocity)
            momentum_descend!(d.W, vW, dW, lr, mu)
            momentum_descend!(d.b, vb, db, lr, mu)
        end
    end
    return net
end

function descend!(P::AbstractArray{T}, G::AbstractArray{T}, lr::T) where {T}
    @inbounds @simd for i in eachindex(P, G)
        P[i] -= lr * G[i]
    end
end

function momentum_descend!(P::AbstractArray{T}, V::AbstractArray{T}, G::AbstractArray{T}, lr::T, mu::T) where {T}
    @inbounds @simd for i in eachindex(P, V, G)
        V[i] = mu * V[i] + G[i]
        P[i] -= lr * V[i]
    end
end
