"""
    Dense{T}

A fully connected layer: `W` (n_out x n_in, so y = W*x + b), `b`, and the fixed feedback matrix `B`
where the rule gives this layer one (`nothing` otherwise).
"""
struct Dense{T}
    W::Matrix{T}
    b::Vector{T}
    B::Union{Matrix{T},Nothing}
end

"""
The first `m` columns of each workspace buffer as arrays of their own, sharing the buffers'
memory. Julia 1.5 allocates a wrapper whenever a view reaches BLAS or leaves an inlined function,
so a step through `view`s is never allocation-free; these are made once per batch size.
"""
struct Columns{T}
    m::Int
    A::Vector{Matrix{T}}
    H::Vector{Matrix{T}}
    D::Vector{Matrix{T}}
    mask::Vector{Matrix{T}}
    dropped::Vector{Matrix{T}}
    X::Matrix{T}
    labels::Vector{Int}
    targets::Matrix{T}
    S::Matrix{T}
end

"""
Preallocated per-batch buffers, grown to the largest batch seen. A smaller batch uses the buffers'
first columns through a `Columns`, made the first time that batch size comes (an epoch's last,
shorter batch; a training batch after a larger evaluation chunk) and kept, so steps allocate none.
"""
mutable struct Workspace{T}
    capacity::Int
    full::Columns{T}       # the buffers themselves: A pre-activations per layer (the last one is
                           # the output), H activations f(A), D error signals (D[end] = dL/dZ),
                           # dropout masks (0 or 1/(1-p)) and dropped activations per hidden layer,
                           # the gathered batch X with its labels or targets, S the output-space
                           # signal of DRTP / sDFA
    cuts::Vector{Columns{T}}   # the smaller batch sizes seen, most recent first (at most MAX_CUTS)
    order::Vector{Int}     # epoch permutation
    dropping::Bool         # whether the last forward pass applied dropout
end

const MAX_CUTS = 4

function Workspace{T}(sizes, m) where {T}
    widths = sizes[2:end]
    buffers(ws=widths) = [Matrix{T}(undef, w, m) for w in ws]
    full = Columns{T}(m, buffers(), buffers(), buffers(), buffers(widths[1:end-1]), buffers(widths[1:end-1]),
                      Matrix{T}(undef, sizes[1], m), Vector{Int}(undef, m), Matrix{T}(undef, sizes[end], m),
                      Matrix{T}(undef, sizes[end], m))
    return Workspace{T}(m, full, Columns{T}[], Int[], false)
end

"The workspace's buffers cut to their first `m` columns (m ≤ capacity)."
@inline function columns(ws::Workspace, m::Integer)
    m == ws.capacity && return ws.full
    for c in ws.cuts
        c.m == m && return c
    end
    return cut!(ws, Int(m))
end

# The wrappers share the buffers' memory; the workspace holds both, so the memory lives as long as
# they do.
@noinline function cut!(ws::Workspace{T}, m::Int) where {T}
    1 <= m <= ws.capacity || throw(ArgumentError("a batch of $m observations does not fit the workspace (capacity $(ws.capacity))"))
    c = ws.full
    lead(M::Matrix) = unsafe_wrap(Array, pointer(M), (size(M, 1), m))
    lead(v::Vector) = unsafe_wrap(Array, pointer(v), m)
    cut = Columns{T}(m, lead.(c.A), lead.(c.H), lead.(c.D), lead.(c.mask), lead.(c.dropped),
                     lead(c.X), lead(c.labels), lead(c.targets), lead(c.S))
    length(ws.cuts) >= MAX_CUTS && pop!(ws.cuts)
    pushfirst!(ws.cuts, cut)
    return cut
end

mutable struct Network{T<:AbstractFloat,F,R<:LearningRule,L<:Loss}
    layers::Vector{Dense{T}}
    activation::F
    rule::R
    loss::L
    seed::UInt64
    feedback_seed::UInt64
    rng::SplitMix64                          # shuffling
    grads::Vector{Tuple{Matrix{T},Vector{T}}}
    ws::Workspace{T}
    optstate::Any                            # created by the first update, see optimisers.jl
    epochs::Int                              # epochs trained so far
    init::Initialiser                        # forward weights' initialiser
    feedback_init::Vector{Any}               # per layer: B's initialiser, or nothing
    dropout::Vector{Float64}                 # per hidden layer: probability of dropping a unit
end

"""
    Network(sizes; activation=tanh, rule=FA(), loss=CrossEntropy(), seed=0, feedback_seed=seed,
            init=GlorotUniform(), feedback=GlorotUniform(), dropout=0.0, T=Float32)

A dense network with layer widths `sizes` (inputs first). Hidden layers apply `activation`; the
output layer is linear (softmax lives in the loss). Forward weights come from `init` with `seed`,
feedback matrices from `feedback` with `feedback_seed`, each from its own `SplitMix64` stream.
`feedback` (and `dropout`) may also be a vector with one entry per layer (per hidden layer);
`Given(M)` uses a matrix you supply as B itself. uSF ignores `feedback` and uses
scale·sign(W)ᵀ.
"""
function Network(sizes::AbstractVector{<:Integer}; activation=tanh, rule::LearningRule=FA(),
                 loss::Loss=CrossEntropy(), seed::Integer=0, feedback_seed::Integer=seed,
                 init::Initialiser=GlorotUniform(), feedback=GlorotUniform(), dropout=0.0,
                 T::Type{<:AbstractFloat}=Float32)
    length(sizes) >= 2 || throw(ArgumentError("a network needs at least an input and an output size, got $sizes"))
    all(>(0), sizes) || throw(ArgumentError("layer sizes must be positive, got $sizes"))
    T in (Float32, Float64) || throw(ArgumentError("T must be Float32 or Float64, got $T"))
    seed >= 0 && feedback_seed >= 0 || throw(ArgumentError("seeds must be non-negative"))
    needs_classes(rule) && !(loss isa CrossEntropy) &&
        throw(ArgumentError("$(typeof(rule).name.name) projects one-hot class targets: it needs the cross-entropy loss, not $(typeof(loss).name.name)"))
    sizes = collect(Int, sizes)
    L = length(sizes) - 1
    feedbacks = per_layer(feedback, L, "feedback")
    dropouts = Float64.(per_layer(dropout, L - 1, "dropout"))
    all(p -> 0 <= p < 1, dropouts) || throw(ArgumentError("dropout probabilities must be in [0, 1), got $dropouts"))
    wrng, brng = stream(seed, 1), stream(feedback_seed, 2)
    layers = Dense{T}[]
    for l in 1:L
        n_in, n_out = sizes[l], sizes[l+1]
        W = init!(Matrix{T}(undef, n_out, n_in), init, wrng, n_in, n_out)
        shape = feedback_shape(rule, sizes, l)
        B = shape === nothing ? nothing : feedback_matrix(T, shape, rule, feedbacks[l], brng, init, W)
        push!(layers, Dense{T}(W, zeros(T, n_out), B))
    end
    grads = [(similar(d.W), similar(d.b)) for d in layers]
    inits = Any[feedback_shape(rule, sizes, l) === nothing ? nothing : feedbacks[l] for l in 1:L]
    return Network{T,typeof(activation),typeof(rule),typeof(loss)}(
        layers, activation, rule, loss, UInt64(seed), UInt64(feedback_seed), stream(seed, 3),
        grads, Workspace{T}(sizes, 0), nothing, 0, init, inits, dropouts)
end

function per_layer(x, n, name)
    x isa AbstractVector || return fill(x, n)
    length(x) == n || throw(ArgumentError("$name has $(length(x)) entries; expected one per layer ($n)"))
    return collect(x)
end

function feedback_matrix(::Type{T}, shape, rule, feedback, rng, init, W) where {T}
    if rule isa uSF   # scale · sign(W)ᵀ: magnitudes are the scale, signs follow W (refresh_signs!)
        scale = rule.scale === nothing ? init_std(init, size(W, 2), size(W, 1)) : rule.scale
        return copysign.(fill(T(scale), shape), transpose(W))
    end
    feedback isa Initialiser || throw(ArgumentError("feedback must be an initialiser, got $(repr(feedback))"))
    if feedback isa Given
        rule isa brSF && throw(ArgumentError("brSF redraws B every batch; it cannot use a given matrix"))
        size(feedback.M) == shape || throw(DimensionMismatch("the given feedback matrix has size $(size(feedback.M)); this layer's B needs $shape"))
        eltype(feedback.M) == T || throw(ArgumentError("the given feedback matrix has element type $(eltype(feedback.M)), the network uses $T"))
        B = feedback.M
    else
        B = init!(Matrix{T}(undef, shape...), feedback, rng, shape[2], shape[1], W)
    end
    rule isa SignSymmetric && (B .= copysign.(B, transpose(W)))
    return B
end

Base.eltype(::Network{T}) where {T} = T
insize(net::Network) = size(net.layers[1].W, 2)
outsize(net::Network) = size(net.layers[end].W, 1)
sizes(net::Network) = [insize(net); [size(d.W, 1) for d in net.layers]]

function Base.show(io::IO, net::Network{T}) where {T}
    print(io, "Network{$T}(", join(sizes(net), "-"), ", ", net.activation, ", ", net.rule, ", ",
          typeof(net.loss).name.name, "())")
end

function workspace!(net::Network{T}, m::Integer) where {T}
    net.ws.capacity < m && (net.ws = Workspace{T}(sizes(net), m))
    return net.ws
end

delta(ws::Workspace, l, m) = columns(ws, m).D[l]
preact(ws::Workspace, l, m) = columns(ws, m).A[l]
hidden(ws::Workspace, l, m) = columns(ws, m).H[l]
# What layer l+1 reads: the activations, after dropout when the last forward pass applied it.
layer_output(ws::Workspace, l, m) = ws.dropping ? columns(ws, m).dropped[l] : hidden(ws, l, m)

function check_inputs(net::Network, X::AbstractMatrix)
    size(X, 1) == insize(net) ||
        throw(DimensionMismatch("X has $(size(X, 1)) features (rows), the network expects $(insize(net))"))
    size(X, 2) >= 1 || throw(ArgumentError("X has no observations (columns)"))
end

"""
    forward!(net, X, training = false) -> Z

Network outputs for the batch `X` (features x m, m ≤ workspace capacity), in the workspace; the
pre-activations and activations stay there for the backward pass. With `training`, hidden layers
apply dropout (inverted: kept units are scaled by 1/(1-p)) with masks from the network's generator.
"""
function forward!(net::Network{T}, X::AbstractMatrix{T}, training::Bool=false) where {T}
    ws, m, f = net.ws, size(X, 2), net.activation
    ws.dropping = training && any(>(0), net.dropout)
    h = X
    for (l, layer) in enumerate(net.layers)
        A = preact(ws, l, m)
        gemm!(A, 'N', layer.W, 'N', h)
        if l < length(net.layers)
            H = hidden(ws, l, m)
            bias_activate!(H, A, layer.b, f)
            ws.dropping && drop!(columns(ws, m).dropped[l], columns(ws, m).mask[l], H, net.dropout[l], net.rng)
            h = layer_output(ws, l, m)
        else
            A .+= layer.b
        end
    end
    return preact(ws, length(net.layers), m)
end

# A .+= b and H = f.(A) in one pass over memory. (`f::F` makes Julia specialise on the
# activation, which it otherwise skips for functions that are only passed on.)
function bias_activate!(H::AbstractMatrix{T}, A::AbstractMatrix{T}, b::Vector{T}, f::F) where {T,F}
    @inbounds for j in axes(A, 2)
        @simd for i in axes(A, 1)
            a = A[i, j] + b[i]
            A[i, j] = a
            H[i, j] = activate(f, a)
        end
    end
end

# Inverted dropout: M = 0 with probability p, else 1/(1-p); Hd = H .* M.
function drop!(Hd::AbstractMatrix{T}, M::AbstractMatrix{T}, H::AbstractMatrix{T}, p::Float64, rng::SplitMix64) where {T}
    keep = T(1 / (1 - p))
    @inbounds for k in eachindex(M, H, Hd)
        M[k] = ifelse(uniform(rng) < p, zero(T), keep)
        Hd[k] = H[k] * M[k]
    end
end

# D .*= f'(A) given the activations H = f(A).
function times_deriv!(D::AbstractMatrix{T}, f::F, A::AbstractMatrix{T}, H::AbstractMatrix{T}) where {T,F}
    @inbounds for j in axes(D, 2)
        @simd for i in axes(D, 1)
            D[i, j] *= deriv(f, A[i, j], H[i, j])
        end
    end
end

"""
    backward!(grads, net, X, rule = net.rule)

After `forward!` and with the output error in `net.ws.D[end]`, fill `grads` with each layer's
(dW, db) under `rule`: the update the rule applies is W -= lr * dW. (Diagnostics pass `BP()` to
compare a rule's updates with the true gradient on the same forward pass.)
"""
function backward!(grads, net::Network{T}, X::AbstractMatrix{T}, rule::LearningRule=net.rule) where {T}
    ws, m, L = net.ws, size(X, 2), length(net.layers)
    for l in L-1:-1:1
        D = delta(ws, l, m)
        hidden_error!(D, rule, net, l, m)
        times_deriv!(D, net.activation, preact(ws, l, m), hidden(ws, l, m))
        ws.dropping && (D .*= columns(ws, m).mask[l])
    end
    for l in 1:L
        dW, db = grads[l]
        D = delta(ws, l, m)
        gemm!(dW, 'N', D, 'T', l == 1 ? X : layer_output(ws, l - 1, m))
        rowsums!(db, D)
    end
    return grads
end

# db = sum of D's columns (a loop: Julia 1.5's `sum!` allocates).
function rowsums!(db::AbstractVector{T}, D::AbstractMatrix{T}) where {T}
    fill!(db, zero(T))
    @inbounds for j in axes(D, 2)
        @simd for i in axes(D, 1)
            db[i] += D[i, j]
        end
    end
    return db
end

"""
Forward, loss and backward on one batch (m ≤ capacity); returns (summed loss, number correct).
`training` turns dropout on (`gradients` leaves it off, so it is deterministic).
"""
function loss_and_grads!(grads, net::Network{T}, X::AbstractMatrix{T}, Y, training::Bool=false) where {T}
    m = size(X, 2)
    Z = forward!(net, X, training)
    total, correct = loss_and_error!(delta(net.ws, length(net.layers), m), net.loss, Z, Y)
    prepare_signal!(net.rule, net, Y, m)
    backward!(grads, net, X)
    return total, correct
end

"""
    gradients!(grads, net, X, Y) -> loss

Fill `grads` (a vector of (dW, db) per layer, shaped like (W, b)) with the update each layer would
receive under the network's rule for the batch (X, Y); the parameters do not change.
"""
function gradients!(grads, net::Network{T}, X::AbstractMatrix{T}, Y) where {T}
    check_inputs(net, X)
    check_targets(net.loss, Y, outsize(net), size(X, 2))
    length(grads) == length(net.layers) || throw(DimensionMismatch("need one (dW, db) per layer"))
    for (g, d) in zip(grads, net.layers)
        size(g[1]) == size(d.W) && size(g[2]) == size(d.b) ||
            throw(DimensionMismatch("gradient buffers must have the shapes of (W, b)"))
    end
    workspace!(net, size(X, 2))
    total, _ = loss_and_grads!(grads, net, X, Y)
    return total / size(X, 2)
end

"Each layer's (dW, db) under the network's rule for the batch (X, Y), in new arrays."
gradients(net::Network, X, Y) = (g = [(similar(d.W), similar(d.b)) for d in net.layers]; gradients!(g, net, X, Y); g)

# Run the forward pass over X in chunks, calling visit(Z, columns) for each.
function each_output_chunk(visit, net::Network{T}, X::AbstractMatrix{T}) where {T}
    check_inputs(net, X)
    n = size(X, 2)
    chunk = max(net.ws.capacity, min(n, 1024))
    workspace!(net, chunk)
    for start in 1:chunk:n
        throw_if_interrupted()   # Ctrl-C from the host
        cols = start:min(start + chunk - 1, n)
        visit(forward!(net, view(X, :, cols)), cols)
    end
end

"Network outputs (logits for classification) for every column of X."
function outputs!(out::AbstractMatrix, net::Network, X::AbstractMatrix)
    each_output_chunk((Z, cols) -> copyto!(view(out, :, cols), Z), net, X)
    return out
end
outputs(net::Network{T}, X) where {T} = outputs!(Matrix{T}(undef, outsize(net), size(X, 2)), net, X)

"Class probabilities (softmax of the outputs) for every column of X."
function predict_proba!(P::AbstractMatrix, net::Network{T,F,R,CrossEntropy}, X::AbstractMatrix) where {T,F,R}
    each_output_chunk((Z, cols) -> softmax!(view(P, :, cols), Z), net, X)
    return P
end
predict_proba(net::Network{T}, X) where {T} = predict_proba!(Matrix{T}(undef, outsize(net), size(X, 2)), net, X)

"Predicted class labels 1..K (argmax of the outputs) for every column of X, shifted by `offset`."
function predict_labels!(y::AbstractVector, net::Network{T,F,R,CrossEntropy}, X::AbstractMatrix;
                         offset::Integer=0) where {T,F,R}
    each_output_chunk(net, X) do Z, cols
        for (j, c) in enumerate(cols)
            y[c] = argmax(view(Z, :, j)) + offset
        end
    end
    return y
end

"""
    predict(net, X)

Class labels 1..K for a classifier (cross-entropy loss), the outputs for a regressor.
"""
predict(net::Network, X) = predict(net.loss, net, X)
predict(::CrossEntropy, net, X) = predict_labels!(Vector{Int}(undef, size(X, 2)), net, X)
predict(::Loss, net, X) = outputs(net, X)

"""
    evaluate(net, X, Y) -> (loss = ..., accuracy = ...)

Mean loss over all observations and, for a classifier, the fraction classified correctly (NaN for
a regressor).
"""
function evaluate(net::Network{T}, X::AbstractMatrix{T}, Y) where {T}
    check_targets(net.loss, Y, outsize(net), size(X, 2))
    total, correct = 0.0, 0
    each_output_chunk(net, X) do Z, cols
        E = delta(net.ws, length(net.layers), length(cols))
        t, c = loss_and_error!(E, net.loss, Z, targetview(Y, cols))
        total += t
        correct += c
    end
    n = size(X, 2)
    return (loss = total / n, accuracy = net.loss isa CrossEntropy ? correct / n : NaN)
end

targetview(y::AbstractVector, cols) = view(y, cols)
targetview(Y::AbstractMatrix, cols) = view(Y, :, cols)
