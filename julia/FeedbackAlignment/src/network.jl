"""
One layer's buffers for a batch of `m` observations, each with the batch as its last dimension.
Buffers a layer does not need are empty; with an identity activation `H` is `A` itself.
"""
mutable struct Buffers{T,N}
    m::Int
    A::Array{T,N}          # pre-activations (layers with parameters)
    H::Array{T,N}          # outputs f(A)
    D::Array{T,N}          # error at the output; layers with parameters turn it into dL/dA in place
    mask::Array{T,N}       # dropout: 0 or 1/(1-p)
    dropped::Array{T,N}    # H .* mask, what the next layer reads while dropout is on
    argmax::Array{Int32,N} # max pooling: where each window's maximum was
end

"The network's own per-batch buffers: the gathered batch, its labels or targets, and DRTP/sDFA's signal S."
mutable struct InputBuffers{T,N}
    m::Int
    X::Array{T,N}
    labels::Vector{Int}
    targets::Matrix{T}
    S::Matrix{T}
end

# The first m observations of a buffer, sharing its memory (an empty buffer stays empty).
lead(A::Array{T,N}, m) where {T,N} = isempty(A) ? A : unsafe_wrap(Array, pointer(A), (Base.front(size(A))..., m))
lead(v::Vector, m) = isempty(v) ? v : unsafe_wrap(Array, pointer(v), m)
cut(b::Buffers{T,N}, m) where {T,N} =
    Buffers{T,N}(m, lead(b.A, m), b.H === b.A ? lead(b.A, m) : lead(b.H, m), lead(b.D, m), lead(b.mask, m),
                 lead(b.dropped, m), lead(b.argmax, m))
cut(b::InputBuffers{T,N}, m) where {T,N} =
    InputBuffers{T,N}(m, lead(b.X, m), lead(b.labels, m), lead(b.targets, m), lead(b.S, m))

"""
Buffers at full capacity and their cuts to smaller batches (an epoch's last batch, a training batch
after a larger evaluation chunk). Julia 1.5 allocates a wrapper whenever a view reaches BLAS, so
cuts are arrays of their own, made once per batch size and kept (at most `MAX_CUTS`).
"""
mutable struct Sized{B}
    full::B
    cuts::Vector{B}
end
const MAX_CUTS = 4
Sized(full) = Sized(full, typeof(full)[])

@inline function at(s::Sized, m::Integer)
    m == s.full.m && return s.full
    for c in s.cuts
        c.m == m && return c
    end
    return cut!(s, Int(m))
end

# The cuts share the buffers' memory; `s` holds both, so the memory lives as long as they do.
@noinline function cut!(s::Sized, m::Int)
    1 <= m <= s.full.m || throw(ArgumentError("a batch of $m observations does not fit the buffers (capacity $(s.full.m))"))
    c = cut(s.full, m)
    length(s.cuts) >= MAX_CUTS && pop!(s.cuts)
    pushfirst!(s.cuts, c)
    return c
end

"Weight mirror's buffers: noise inputs, their outputs, and for a conv layer its scratch and a kernel-sized product."
struct Mirror{T,NI,N,WT}
    x::Array{T,NI}
    y::Array{T,N}
    scratch::Vector{T}
    product::WT
    bias::Vector{T}
end

"""
    LayerState

A layer inside a network: its settings (`spec`), parameters `W`, `b` and feedback `B` (plain arrays,
`nothing` where the layer or rule has none), their gradients, the optimiser's state for each, and the
layer's buffers. `net.layers[k].W` is layer k's weight array.
"""
mutable struct LayerState{T,S<:Layer,NI,N,WT,BiasT,BT,MT,FI<:Union{Initialiser,Nothing}}
    spec::S
    index::Int
    insize::Dims               # one observation's shape at the input
    outsize::Dims
    W::WT
    b::BiasT
    B::BT
    dW::WT
    db::BiasT
    dB::Union{BT,Nothing}      # Kolen-Pollack: B's gradient (dWᵀ, or dW itself for a kernel)
    sW::Vector{WT}             # optimiser state: per array, the slots (velocity; Adam's two moments)
    sb::Vector{BiasT}
    sB::Vector{BT}
    feedback_init::FI          # B's initialiser (brSF redraws with it), or nothing
    dropout::Float64
    carries::Bool              # whether the rule needs this layer's error carried back to its input
    buffers::Sized{Buffers{T,N}}
    scratch::Vector{T}         # conv: the im2col columns of the batch and a product buffer
    mirror::MT
end

Base.eltype(::LayerState{T}) where {T} = T
window(st::LayerState) = window(st.spec)

function Base.show(io::IO, st::LayerState{T}) where {T}
    print(io, "LayerState{$T}(", layer_text(st.spec), ", ", join(st.insize, "x"), " => ", join(st.outsize, "x"))
    for (name, A) in (("W", st.W), ("B", st.B))
        A === nothing || print(io, ", ", name, " ", join(size(A), "x"))
    end
    print(io, ")")
end

mutable struct Network{T<:AbstractFloat,NX,R<:LearningRule,L<:Loss,S<:Tuple,I<:Dims}
    chain::Chain
    insize::I                        # one observation's shape
    layers::S                        # the LayerStates: a tuple, so every pass over them compiles to static calls
    rule::R
    loss::L
    seed::UInt64
    feedback_seed::UInt64
    rng::SplitMix64                  # shuffling, dropout, brSF's redraws, mirror noise
    optkind::Symbol                  # the optimiser whose state the layers hold (:none, :sgd, :adam)
    optsteps::Int                    # updates since that state was created (Adam's bias correction)
    epochs::Int                      # epochs trained so far
    init::Initialiser                # forward weights' initialiser
    inputs::Sized{InputBuffers{T,NX}}
    order::Vector{Int}               # epoch permutation
    dropping::Bool                   # whether the last forward pass applied dropout
    with_dropout::Bool               # whether any layer has a dropout probability
    m::Int                           # observations in the last forward pass
    seen::Vector{Array{T}}           # per layer, the input it read in the last forward pass
end

"""
    Network(chain; input, rule=FA(), loss=CrossEntropy(), seed=0, feedback_seed=seed,
            init=GlorotUniform(), feedback=GlorotUniform(), dropout=0.0, T=Float32)

A network of the layers in `chain` for observations of shape `input` (an image's (width, height,
channels), or the number of features; a chain that starts with `Dense` can leave it out). The last
layer must be `Dense` with no activation: softmax lives in the loss. Forward weights come from `init`
with `seed`, feedback arrays from `feedback` with `feedback_seed`, each from its own `SplitMix64`
stream. `feedback` may be a vector with one entry per layer; `Given(A)` uses an array you supply as B
itself. `dropout` is a probability for every layer with parameters but the last, or a vector with one
per layer but the last (0 for pooling and flatten). uSF ignores `feedback` and uses scale·sign(W).

    Network(sizes; activation=tanh, kwargs...)

The dense shorthand: `Network([784, 256, 10]; activation=tanh)` is
`Network(Chain(Dense(784 => 256, tanh), Dense(256 => 10)); input=784)`.

`max_params` refuses a chain with more weights than that before anything is allocated (readers of
untrusted model files pass the number of values the file holds).
"""
function Network(chain::Chain; input=nothing, rule::LearningRule=FA(), loss::Loss=CrossEntropy(),
                 seed::Integer=0, feedback_seed::Integer=seed, init::Initialiser=GlorotUniform(),
                 feedback=GlorotUniform(), dropout=0.0, T::Type{<:AbstractFloat}=Float32,
                 max_params::Integer=typemax(Int))
    T in (Float32, Float64) || throw(ArgumentError("T must be Float32 or Float64, got $T"))
    seed >= 0 && feedback_seed >= 0 || throw(ArgumentError("seeds must be non-negative"))
    needs_classes(rule) && !(loss isa CrossEntropy) &&
        throw(ArgumentError("$(typeof(rule).name.name) projects one-hot class targets: it needs the cross-entropy loss, not $(typeof(loss).name.name)"))
    L = length(chain)
    L >= 1 || throw(ArgumentError("a network needs at least one layer"))
    insize = input_shape(input, chain)
    shapes = layer_shapes(chain, insize)
    last = chain[L]
    last isa Dense && last.σ === identity ||
        throw(ArgumentError("the last layer must be Dense with no activation (softmax lives in the loss), got $(layer_text(last))"))
    # Model files bound what a chain read from them may allocate: no more weights than the file holds.
    nparams = sum(l -> has_params(l) ? prod(big.(param_shape(l))) : big(0), chain.layers)
    nparams <= max_params || throw(ArgumentError("the chain has $nparams weights, more than the $max_params allowed here"))
    feedbacks = per_layer(feedback, L, "feedback")
    dropouts = layer_dropout(dropout, chain)
    params = findall(has_params, collect(chain.layers))
    nout = last.out
    wrng, brng = stream(seed, 1), stream(feedback_seed, 2)
    layers = LayerState{T}[]
    for (l, spec) in enumerate(chain.layers)
        W = has_params(spec) ? init!(Array{T}(undef, param_shape(spec)), init, wrng, fans(spec)...) : nothing
        shape = feedback_shape(rule, spec, shapes[l+1], l == params[1], l == params[end], nout)
        shape === nothing && feedbacks[l] isa Union{Given,GivenPointer} &&
            throw(ArgumentError("feedback[$l] is an array, but under $(nameof(typeof(rule)))() layer $l ($(layer_text(spec))) has no feedback array"))
        shape !== nothing && feedbacks[l] === nothing &&
            throw(ArgumentError("feedback[$l] is nothing, but under $(nameof(typeof(rule)))() layer $l ($(layer_text(spec))) has a feedback array"))
        B = shape === nothing ? nothing : feedback_array(T, shape, rule, spec, feedbacks[l], brng, init, W)
        carries = carries_back(rule) && any(<(l), params)
        push!(layers, LayerState{T}(spec, l, shapes[l], shapes[l+1], W, B, shape === nothing ? nothing : feedbacks[l],
                                     dropouts[l], carries, rule))
    end
    NX = length(insize) + 1
    inputs = Sized(InputBuffers{T,NX}(0, Array{T,NX}(undef, insize..., 0), Int[], Matrix{T}(undef, nout, 0),
                                      Matrix{T}(undef, nout, 0)))
    stack = Tuple(layers)
    return Network{T,NX,typeof(rule),typeof(loss),typeof(stack),typeof(insize)}(
        chain, insize, stack, rule, loss, UInt64(seed), UInt64(feedback_seed), stream(seed, 3), :none, 0, 0,
        init, inputs, Int[], false, any(>(0), dropouts), 0, Array{T}[Array{T,length(s)+1}(undef, s..., 0) for s in shapes[1:L]])
end

function Network(sizes::AbstractVector{<:Integer}; activation=tanh, dropout=0.0, kwargs...)
    length(sizes) >= 2 || throw(ArgumentError("a network needs at least an input and an output size, got $sizes"))
    all(>(0), sizes) || throw(ArgumentError("layer sizes must be positive, got $sizes"))
    L = length(sizes) - 1
    chain = Chain(Tuple(Dense(sizes[l] => sizes[l+1], l < L ? activation : identity) for l in 1:L))
    return Network(chain; input=(Int(sizes[1]),), dropout=dropout, kwargs...)
end

function input_shape(input, chain)
    if input === nothing
        chain[1] isa Dense || throw(ArgumentError("give the input shape: input=(width, height, channels) for images"))
        return (chain[1].in,)
    end
    s = input isa Integer ? (Int(input),) : input isa Tuple && all(x -> x isa Integer, input) ? Int.(input) :
        throw(ArgumentError("input must be a number of features or a tuple (width, height, channels), got $(repr(input))"))
    length(s) in (1, 3) && all(>(0), s) ||
        throw(ArgumentError("input must be a positive number of features or a positive (width, height, channels), got $s"))
    return s
end

"Each layer's input shape and, last, the chain's output shape; errors name the layer."
function layer_shapes(chain::Chain, insize::Dims)
    shapes = Dims[insize]
    for (l, spec) in enumerate(chain.layers)
        s = try
            output_shape(spec, shapes[end])
        catch e
            e isa ArgumentError || rethrow()
            throw(ArgumentError("layer $l, $(e.msg)"))
        end
        push!(shapes, s)
    end
    return shapes
end

function per_layer(x, n, name)
    x isa AbstractVector || return fill(x, n)
    length(x) == n || throw(ArgumentError("$name has $(length(x)) entries; expected one per layer ($n)"))
    return collect(x)
end

# Dropout per layer (the last one has none): a number applies to every layer with parameters.
function layer_dropout(dropout, chain::Chain)
    L = length(chain)
    ps = dropout isa AbstractVector ? Float64.(dropout) :
         Float64[l < L && has_params(chain[l]) ? Float64(dropout) : 0.0 for l in 1:L-1]
    length(ps) == L - 1 || throw(ArgumentError("dropout has $(length(ps)) entries; expected one per layer but the last ($(L - 1))"))
    all(p -> 0 <= p < 1, ps) || throw(ArgumentError("dropout probabilities must be in [0, 1), got $ps"))
    for (l, p) in enumerate(ps)
        p > 0 && !has_params(chain[l]) &&
            throw(ArgumentError("dropout[$l] is $p, but layer $l ($(layer_text(chain[l]))) has no parameters; dropout follows a Dense or Conv layer"))
    end
    return push!(ps, 0.0)
end

function feedback_array(::Type{T}, shape, rule, spec, feedback, rng, init, W) where {T}
    if rule isa uSF   # scale · sign(W): magnitudes are the scale, signs follow W (refresh_signs!)
        scale = rule.scale === nothing ? init_std(init, fans(spec)...) : rule.scale
        B = fill(T(scale), shape)
        follow_signs!(B, W, spec)
        return B
    end
    feedback isa Initialiser || throw(ArgumentError("feedback must be an initialiser, got $(repr(feedback))"))
    if feedback isa GivenPointer   # a row-major host's array: its shape is Julia's, reversed
        feedback.dims == shape || throw(DimensionMismatch("the given feedback array has shape $(reverse(feedback.dims)); " *
                                                          "$(nameof(typeof(rule)))() gives $(layer_text(spec)) a B of shape $(reverse(shape))"))
        feedback = Given(unsafe_wrap(Array, feedback.p, shape))
    end
    if feedback isa Given
        rule isa brSF && throw(ArgumentError("brSF redraws B every batch; it cannot use a given array"))
        size(feedback.M) == shape || throw(DimensionMismatch("the given feedback array has size $(size(feedback.M)); $(layer_text(spec))'s B needs $shape"))
        eltype(feedback.M) == T || throw(ArgumentError("the given feedback array has element type $(eltype(feedback.M)), the network uses $T"))
        B = feedback.M
    else
        B = init!(Array{T}(undef, shape...), feedback, rng, feedback_fans(spec, shape)...,
                  rule isa FAStyle && spec isa Dense ? permutedims(W) : W)   # W oriented like B
    end
    rule isa SignSymmetric && follow_signs!(B, W, spec)
    return B
end

# B's fans: a matrix carries its columns to its rows; a kernel-shaped B carries cout channels back to cin.
feedback_fans(spec, shape::NTuple{2,Int}) = (shape[2], shape[1])
feedback_fans(spec::Conv, shape::NTuple{4,Int}) = reverse(fans(spec))

"B ← |B| ∘ sign(Wᵀ) for a dense layer, |B| ∘ sign(W) for a conv layer (a zero weight counts as positive)."
function follow_signs!(B::Matrix, W::Matrix, ::Dense)
    @inbounds for j in axes(B, 2), i in axes(B, 1)
        B[i, j] = copysign(B[i, j], W[j, i])
    end
    return B
end
function follow_signs!(B::Array, W::Array, ::Conv)
    @inbounds @simd for k in eachindex(B, W)
        B[k] = copysign(B[k], W[k])
    end
    return B
end

function LayerState{T}(spec::Layer, index, insize, outsize, W, B, feedback_init, dropout, carries, rule) where {T}
    NI, N = length(insize) + 1, length(outsize) + 1
    b = has_params(spec) ? zeros(T, bias_length(spec)) : nothing
    dW = W === nothing ? nothing : similar(W)
    # Kolen-Pollack's B gradient: a dense B gets dWᵀ (its own buffer), a kernel-shaped B dW itself.
    dB = learns_feedback(rule) && B !== nothing ? (spec isa Conv ? dW : similar(B)) : nothing
    mirror = rule isa WeightMirror && B !== nothing ? Mirror{T}(spec, insize, outsize, rule.batchsize, W) : nothing
    WT, BiasT, BT = typeof(W), typeof(b), typeof(B)
    st = LayerState{T,typeof(spec),NI,N,WT,BiasT,BT,typeof(mirror),typeof(feedback_init)}(
        spec, index, insize, outsize, W, b, B, dW, b === nothing ? nothing : similar(b), dB, WT[], BiasT[], BT[],
        feedback_init, dropout, carries, Sized(buffers(T, spec, outsize, dropout, 0)), T[], mirror)
    return st
end

function Mirror{T}(spec::Layer, insize, outsize, mb, W) where {T}
    x = Array{T}(undef, insize..., mb)
    y = Array{T}(undef, (spec isa Conv ? output_shape(spec, insize) : outsize)..., mb)
    scratch = spec isa Conv ? Vector{T}(undef, conv_scratch_length(window(spec), insize[1:2], insize[3], spec.cout, mb)) : T[]
    product = spec isa Conv ? similar(W) : nothing
    return Mirror{T,ndims(x),ndims(y),typeof(product)}(x, y, scratch, product, Vector{T}(undef, size(W)[end]))
end

# The buffers a layer needs for m observations.
function buffers(::Type{T}, spec::Layer, outsize, dropout, m) where {T}
    N = length(outsize) + 1
    full = Array{T,N}(undef, outsize..., m)
    none = Array{T,N}(undef, ntuple(_ -> 0, N))
    A = has_params(spec) ? full : none
    H = has_params(spec) && activation(spec) === identity ? A : Array{T,N}(undef, outsize..., m)
    dropping = dropout > 0
    return Buffers{T,N}(m, A, H, Array{T,N}(undef, outsize..., m), dropping ? similar(full) : none,
                        dropping ? similar(full) : none,
                        spec isa MaxPool ? Array{Int32,N}(undef, outsize..., m) : Array{Int32,N}(undef, ntuple(_ -> 0, N)))
end

Base.eltype(::Network{T}) where {T} = T
insize(net::Network) = net.insize
outsize(net::Network) = last(net.layers).spec.out   # the last layer is Dense
nfeatures(net::Network) = prod(net.insize)
"Layer widths of a dense network (its input, then each layer's output size)."
sizes(net::Network) = [prod(net.insize); [prod(st.outsize) for st in net.layers]]

function Base.show(io::IO, net::Network{T}) where {T}
    print(io, "Network{$T}(", net.chain, "; input=", length(net.insize) == 1 ? net.insize[1] : net.insize,
          ", rule=", net.rule, ", loss=", typeof(net.loss).name.name, "())")
end

"Make every buffer hold at least `m` observations (growing them drops the old cuts)."
function workspace!(net::Network{T,NX}, m::Integer) where {T,NX}
    net.inputs.full.m >= m && return net
    nout = outsize(net)
    net.inputs = Sized(InputBuffers{T,NX}(m, Array{T,NX}(undef, net.insize..., m), Vector{Int}(undef, m),
                                          Matrix{T}(undef, nout, m), Matrix{T}(undef, nout, m)))
    foreach_layer(st -> grow!(st, m), net.layers)
    return net
end

function grow!(st::LayerState{T}, m) where {T}
    st.buffers = Sized(buffers(T, st.spec, st.outsize, st.dropout, m))
    st.spec isa Conv && (st.scratch = Vector{T}(undef, conv_scratch_length(window(st), st.insize[1:2], st.insize[3], st.spec.cout, m)))
    return st
end

capacity(net::Network) = net.inputs.full.m
batch(net::Network, m) = at(net.inputs, m)
buffers(st::LayerState, m) = at(st.buffers, m)
"The network's outputs (logits for classification) from the last forward pass."
network_output(net::Network, m) = buffers(last(net.layers), m).H
"The output error dL/dZ buffer."
output_error(net::Network, m) = buffers(last(net.layers), m).D

# Passes over the layers, written as recursion over the tuple so that each call is resolved at
# compile time (a loop over a heterogeneous tuple, or over a vector of layers, dispatches at run
# time and boxes what it passes).
@inline foreach_layer(f::F, t::Tuple{}) where {F} = nothing
@inline foreach_layer(f::F, t::Tuple) where {F} = (f(first(t)); foreach_layer(f, Base.tail(t)))
"Calls f(st, prev) from the last layer to the first; `prev` is the layer before st (nothing for the first)."
@inline backward_pairs(f::F, prev, t::Tuple{}) where {F} = nothing
@inline backward_pairs(f::F, prev, t::Tuple) where {F} = (backward_pairs(f, first(t), Base.tail(t)); f(first(t), prev))
@inline fold_layers(f::F, x, t::Tuple{}) where {F} = x
@inline fold_layers(f::F, x, t::Tuple) where {F} = fold_layers(f, f(first(t), x), Base.tail(t))
"Whether f(st) holds for every layer (a conjunction evaluated for all of them)."
@inline all_layers(f::F, t::Tuple{}) where {F} = true
@inline all_layers(f::F, t::Tuple) where {F} = f(first(t)) & all_layers(f, Base.tail(t))

"Observations' shape check; an error names what was expected."
function check_inputs(net::Network, X::AbstractArray)
    want = net.insize
    got = size(X)
    ndims(X) == length(want) + 1 && Base.front(got) == want ||
        throw(DimensionMismatch("X has size $got; the network expects $(join(want, " x ")) x observations" *
                                (length(want) == 1 ? " (features as rows)" : " (width x height x channels x observations)")))
    size(X, ndims(X)) >= 1 || throw(ArgumentError("X has no observations"))
end

"""
    forward!(net, X, training = false) -> Z

Network outputs for the batch `X` (observations last, at most the buffers' capacity), left in the
buffers with every layer's pre-activations and outputs for the backward pass. With `training`, layers
with a dropout probability apply it (inverted: kept units are scaled by 1/(1-p)).
"""
function forward!(net::Network{T}, X::Array{T}, training::Bool=false) where {T}
    net.m = size(X, ndims(X))
    net.dropping = training && net.with_dropout
    fold_layers((st, x) -> forward_layer!(st, x, net), X, net.layers)
    return network_output(net, net.m)
end

function forward_layer!(st::LayerState{T,S,NI}, x::Array{T,NI}, net::Network) where {T,S,NI}
    net.seen[st.index] = x
    b = buffers(st, net.m)
    forward_kernel!(st, st.spec, b, x)
    dropping = net.dropping && st.dropout > 0
    dropping && drop!(b.dropped, b.mask, b.H, st.dropout, net.rng)
    return dropping ? b.dropped : b.H
end

function forward_kernel!(st, spec::Dense, b, x)
    gemm!(b.A, 'N', st.W, 'N', x)
    bias_activate!(b.H, b.A, st.b, spec.σ)
end
function forward_kernel!(st, spec::Conv, b, x)
    conv_forward!(b.A, b.H, spec.σ, x, st.W, st.b, st.scratch, window(spec))   # bias and activation fused
end
forward_kernel!(st, spec::MaxPool, b, x) = maxpool_forward!(b.H, b.argmax, x, window(spec))
forward_kernel!(st, spec::MeanPool, b, x) = meanpool_forward!(b.H, x, window(spec))
forward_kernel!(st, ::Flatten, b, x) = copyto!(b.H, x)

# A .+= b and H = f.(A) in one pass over memory, split over observations (threads.jl). (`f::F`
# makes Julia specialise on the activation, which it otherwise skips for functions only passed on.)
function bias_activate!(H::Matrix{T}, A::Matrix{T}, b::Vector{T}, f::F) where {T,F}
    p, cols = nparts(NS_ACTIVATE * length(A)), 1:size(A, 2)
    p == 1 ? bias_activate_part!(cols, H, A, b, f) : threaded_parts(c -> bias_activate_part!(c, H, A, b, f), cols, p)
    return H
end

function bias_activate_part!(cols, H::Matrix{T}, A::Matrix{T}, b::Vector{T}, f::F) where {T,F}
    @inbounds for j in cols
        @simd for i in axes(A, 1)
            a = A[i, j] + b[i]
            A[i, j] = a
            H[i, j] = activate(f, a)
        end
    end
end

# Inverted dropout: M = 0 with probability p, else 1/(1-p); Hd = H .* M.
function drop!(Hd::Array{T}, M::Array{T}, H::Array{T}, p::Float64, rng::SplitMix64) where {T}
    keep = T(1 / (1 - p))
    @inbounds for k in eachindex(M, H, Hd)
        M[k] = ifelse(uniform(rng) < p, zero(T), keep)
        Hd[k] = H[k] * M[k]
    end
end

# D .*= f'(A) given the activations H = f(A), split over elements.
function times_deriv!(D::Array{T}, f::F, A::Array{T}, H::Array{T}) where {T,F}
    f === identity && return D
    size(D) == size(A) == size(H) || throw(DimensionMismatch("times_deriv!: sizes $(size(D)), $(size(A)), $(size(H))"))
    p, ks = nparts(NS_DERIV * length(D)), 1:length(D)
    p == 1 ? times_deriv_part!(ks, D, f, A, H) : threaded_parts(k -> times_deriv_part!(k, D, f, A, H), ks, p)
    return D
end

function times_deriv_part!(ks, D::Array{T}, f::F, A::Array{T}, H::Array{T}) where {T,F}
    @inbounds @simd for k in ks
        D[k] *= deriv(f, A[k], H[k])
    end
end

"""
    backward!(net, rule = net.rule)

After `forward!` and with the output error in `output_error(net, m)`, fill each layer's `dW`, `db`
(and Kolen-Pollack's `dB`) with the update `rule` gives it: the update applied is W -= lr * dW.
Layers are visited from the last: each takes its error signal from the rule (the error the next
layer carried back, or a projection of the output), turns it into dL/dA, computes its gradients, and
carries the error back to its input where the rule needs that. (Diagnostics pass `BP()` to compare a
rule's updates with the true gradient on the same forward pass.)
"""
function backward!(net::Network, rule::LearningRule=net.rule)
    backward_pairs((st, prev) -> backward_layer!(st, prev, net, rule), nothing, net.layers)
    return net
end

function backward_layer!(st::LayerState{T,S,NI}, prev, net::Network{T}, rule::LearningRule) where {T,S,NI}
    m, last = net.m, st.index == length(net.layers)
    b = buffers(st, m)
    if has_params(st.spec)
        last || hidden_signal!(b.D, rule, st, net)
        if !last
            times_deriv!(b.D, activation(st.spec), b.A, b.H)
            net.dropping && st.dropout > 0 && (b.D .*= b.mask)
        end
        gradient_kernel!(st, st.spec, b, net.seen[st.index]::Array{T,NI})
    end
    if prev !== nothing && (rule === net.rule ? st.carries : carries_back(rule) && any_params_before(net, st.index))
        carry_back!(buffers(prev, m).D, rule, st, st.spec, b)
    end
end

any_params_before(net, l) = any(k -> has_params(net.layers[k].spec), 1:l-1)

function gradient_kernel!(st, ::Dense, b, x)
    gemm!(st.dW, 'N', b.D, 'T', x)
    rowsums!(st.db, b.D)
    st.dB === nothing || st.dB === st.dW || transpose!(st.dB, st.dW)
end
gradient_kernel!(st, spec::Conv, b, x) = conv_filter_grad!(st.dW, st.db, x, b.D, st.scratch, window(spec))

# The error reaching a layer's input. Layers with parameters carry it back through W (backprop) or
# through B in W's place (the FA family: a dense B has Wᵀ's shape, a conv B the kernel's); pooling
# and flatten carry it back exactly.
carry_back!(dx, ::BP, st, ::Dense, b) = gemm!(dx, 'T', st.W, 'N', b.D)
carry_back!(dx, ::FAStyle, st, ::Dense, b) = gemm!(dx, 'N', st.B, 'N', b.D)
carry_back!(dx, rule::Union{BP,FAStyle}, st, spec::Conv, b) =
    conv_data_grad!(dx, b.D, rule isa BP ? st.W : st.B, st.scratch, window(spec))
carry_back!(dx, rule, st, spec::MaxPool, b) = maxpool_backward!(dx, b.D, b.argmax, window(spec))
carry_back!(dx, rule, st, spec::MeanPool, b) = meanpool_backward!(dx, b.D, window(spec))
carry_back!(dx, rule, st, ::Flatten, b) = copyto!(dx, b.D)

# db = sum of D's columns (a loop: Julia 1.5's `sum!` allocates). Serial: split over rows (so that
# each sum keeps its order) it ran 2x slower on two threads (bench/threads.jl).
function rowsums!(db::Vector{T}, D::Matrix{T}) where {T}
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
function loss_and_grads!(net::Network{T}, X::Array{T}, Y, training::Bool=false) where {T}
    m = size(X, ndims(X))
    Z = forward!(net, X, training)
    total, correct = loss_and_error!(output_error(net, m), net.loss, Z, Y)
    prepare_signal!(net.rule, net, Y, m)
    backward!(net)
    return total, correct
end

"The data as the network's element type and a dense Array (converted once, with its cost, otherwise as it is)."
function as_input(net::Network{T}, X) where {T}
    X isa Array{T} && return X
    X isa AbstractArray && eltype(X) <: Real ||
        throw(ArgumentError("X must be an array of real numbers (observations last), got $(typeof(X))"))
    return convert(Array{T}, X)
end

"""
    gradients!(grads, net, X, Y) -> loss

Fill `grads` (a vector with, per layer, a tuple (dW, db) shaped like (W, b), or `nothing` for layers
without parameters) with the update each layer would receive under the network's rule for the batch
(X, Y); the parameters do not change.
"""
function gradients!(grads, net::Network{T}, X, Y) where {T}
    X = as_input(net, X)
    check_inputs(net, X)
    check_targets(net.loss, Y, outsize(net), size(X, ndims(X)))
    length(grads) == length(net.layers) || throw(DimensionMismatch("need one (dW, db) per layer"))
    for (g, st) in zip(grads, net.layers)
        st.W === nothing && continue
        size(g[1]) == size(st.W) && size(g[2]) == size(st.b) ||
            throw(DimensionMismatch("gradient buffers must have the shapes of (W, b)"))
    end
    workspace!(net, size(X, ndims(X)))
    total, _ = loss_and_grads!(net, X, Y)
    for (g, st) in zip(grads, net.layers)
        st.W === nothing && continue
        copyto!(g[1], st.dW)
        copyto!(g[2], st.db)
    end
    return total / size(X, ndims(X))
end

"Each layer's (dW, db) under the network's rule for the batch (X, Y), in new arrays (`nothing` for layers without parameters)."
function gradients(net::Network, X, Y)
    g = [st.W === nothing ? nothing : (similar(st.W), similar(st.b)) for st in net.layers]
    gradients!(g, net, X, Y)
    return g
end

# Run the forward pass over X in chunks of whole observations, calling visit(Z, columns) for each.
# A chunk is X's own memory (observations are the last dimension), wrapped, not copied.
function each_output_chunk(visit, net::Network{T}, X::Array{T}) where {T}
    check_inputs(net, X)
    n = size(X, ndims(X))
    chunk = max(capacity(net), min(n, 1024))
    workspace!(net, chunk)
    per = length(X) ÷ n
    GC.@preserve X for start in 1:chunk:n
        throw_if_interrupted()   # Ctrl-C from the host
        cols = start:min(start + chunk - 1, n)
        Xc = length(cols) == n ? X : unsafe_wrap(Array, pointer(X, (start - 1) * per + 1), (Base.front(size(X))..., length(cols)))
        visit(forward!(net, Xc), cols)
    end
end

"Network outputs (logits for classification) for every observation of X."
function outputs!(out::AbstractMatrix, net::Network, X)
    each_output_chunk((Z, cols) -> copyto!(view(out, :, cols), Z), net, as_input(net, X))
    return out
end
outputs(net::Network{T}, X) where {T} = outputs!(Matrix{T}(undef, outsize(net), nobs(X)), net, X)
nobs(X::AbstractArray) = size(X, ndims(X))

"Class probabilities (softmax of the outputs) for every observation of X."
function predict_proba!(P::AbstractMatrix, net::Network, X)
    net.loss isa CrossEntropy || throw(ArgumentError("predict_proba needs the cross-entropy loss; this network uses $(typeof(net.loss).name.name)"))
    each_output_chunk((Z, cols) -> softmax!(view(P, :, cols), Z), net, as_input(net, X))
    return P
end
predict_proba(net::Network{T}, X) where {T} = predict_proba!(Matrix{T}(undef, outsize(net), nobs(X)), net, X)

"Predicted class labels 1..K (argmax of the outputs) for every observation of X, shifted by `offset`."
function predict_labels!(y::AbstractVector, net::Network, X; offset::Integer=0)
    net.loss isa CrossEntropy || throw(ArgumentError("class labels need the cross-entropy loss; this network uses $(typeof(net.loss).name.name)"))
    each_output_chunk(net, as_input(net, X)) do Z, cols
        for (j, c) in enumerate(cols)
            y[c] = argmax(view(Z, :, j)) + offset
        end
    end
    return y
end

"""
    predict(net, X)

Class labels 1..K for a classifier (cross-entropy loss), the outputs for a regressor. A single
observation (a vector for a dense network) gives a single label or output vector.
"""
predict(net::Network, X::AbstractVector) = length(net.insize) == 1 ? predict(net, reshape(X, :, 1))[1] :
    throw(DimensionMismatch("a vector input needs a network of vector inputs; this one takes $(net.insize) images"))
predict(net::Network, X) = predict(net.loss, net, X)
predict(::CrossEntropy, net, X) = predict_labels!(Vector{Int}(undef, nobs(X)), net, X)
predict(::Loss, net, X) = outputs(net, X)

"""
    evaluate(net, X, Y) -> (loss = ..., accuracy = ...)

Mean loss over all observations and, for a classifier, the fraction classified correctly (NaN for
a regressor).
"""
function evaluate(net::Network{T}, X, Y) where {T}
    X = as_input(net, X)
    check_targets(net.loss, Y, outsize(net), nobs(X))
    total, correct = 0.0, 0
    each_output_chunk(net, X) do Z, cols
        E = output_error(net, length(cols))
        t, c = loss_and_error!(E, net.loss, Z, targetview(Y, cols))
        total += t
        correct += c
    end
    n = nobs(X)
    return (loss = total / n, accuracy = net.loss isa CrossEntropy ? correct / n : NaN)
end

targetview(y::AbstractVector, cols) = view(y, cols)
targetview(Y::AbstractMatrix, cols) = view(Y, :, cols)
