# A network is a tree of nodes built from its chain: a node per layer holding what the layer
# declares (parameters, their gradients and optimiser slots, state, the rule's feedback array,
# per-batch buffers and scratch), and container nodes for chains and skip connections. Passes walk
# the tree by recursion over tuples, so every call is resolved at compile time.

"How a forward pass treats batch norm and dropout: `EVAL` (running statistics, no dropout: predictions),
`BATCH` (the batch's statistics, no dropout, nothing updated: `gradients`), `TRAIN` (the batch's
statistics, running statistics updated, dropout on: training steps)."
@enum Mode EVAL BATCH TRAIN

"""
A node's arrays for a batch of `m` observations, each with the batch as its last dimension: `H` (its
output), `D` (the error at its output) and whatever its layer declares in `buffers` (e.g. `A`, a
weight layer's pre-activations), plus `mask` and `dropped` for dropout. `b.H` reads an array.
"""
struct Buffers{NT<:NamedTuple}
    m::Int
    arrays::NT
end
Base.getproperty(b::Buffers, s::Symbol) = s === :m ? getfield(b, :m) : getfield(getfield(b, :arrays), s)
"A weight layer's pre-activations: `A`, or `H` itself when it has no activation."
preactivations(b::Buffers) = haskey(getfield(b, :arrays), :A) ? b.A : b.H

# The first m observations of a buffer, sharing its memory (an empty buffer stays empty).
lead(A::Array{T,N}, m) where {T,N} = isempty(A) ? A : unsafe_wrap(Array, pointer(A), (Base.front(size(A))..., m))
lead(v::Vector, m) = isempty(v) ? v : unsafe_wrap(Array, pointer(v), m)
cut(b::Buffers, m) = Buffers(m, map(a -> lead(a, m), getfield(b, :arrays)))

"The network's own per-batch buffers: the gathered batch, its labels or targets, and DRTP/sDFA's signal S."
mutable struct InputBuffers{T,N}
    m::Int
    X::Array{T,N}
    labels::Vector{Int}
    targets::Matrix{T}
    S::Matrix{T}
end
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
    Node

A layer inside a network: its settings (`layer`), its path in the chain (`"3.main.0"`, positions
from 0 as model files name them), its parameters, their gradients and optimiser slots (named as the
layer declares them), its state, the rule's feedback array `B` (`nothing` where the layer has none),
and its buffers. `net.layers` lists the leaf nodes depth-first; `node.W`, `node.b` read a weight
layer's arrays (`nothing` where absent).
"""
mutable struct Node{T,L<:Layer,NI,N,P<:NamedTuple,SL<:NamedTuple,S<:NamedTuple,BU<:NamedTuple,SC,FB,M,DC<:Tuple,FI<:Union{Initialiser,Nothing}}
    layer::L
    path::String
    index::Int                 # position among the network's leaves (depth-first), from 1
    insize::Dims               # one observation's shape at the input
    outsize::Dims
    params::P
    grads::P
    slots::SL                  # optimiser state: per parameter, its slots (velocity; Adam's two moments)
    decays::DC                 # per parameter, whether weight decay applies
    state::S
    B::FB
    dB::Union{FB,Nothing}      # Kolen-Pollack: B's gradient (dWᵀ, or dW itself for a kernel)
    sB::Vector{FB}
    feedback_init::FI          # B's initialiser (brSF redraws with it), or nothing
    dropout::Float64
    min_batch::Int             # the fewest observations a training batch may have (batch norm: 2)
    upstream::Bool             # a layer with parameters lies between the network's input and this one
    inblock::Bool              # inside a skip connection
    block_upstream::Bool       # ... and a layer with parameters lies between the block's input and this one
    inject::Union{Nothing,Matrix{T}}   # a direct feedback point: the B whose projection enters here
    buffers::Sized{Buffers{BU}}
    scratch::SC
    mirror::M
end

"A chain inside the network (the network's own chain too): its children's nodes, in order."
struct ChainNode{L<:Chain,C<:Tuple}
    layer::L
    path::String
    children::C
end

"A skip connection: its paths' nodes (`shortcut` nothing for the identity) and the sum's buffers."
mutable struct SkipNode{T,L<:Layer,N,MN,SN}
    layer::L
    path::String
    insize::Dims
    outsize::Dims
    main::MN
    shortcut::SN
    B::Union{Nothing,Matrix{T}}        # a direct feedback point at the block (DFA-style rules, feedback_points=:block)
    feedback_init::Union{Initialiser,Nothing}
    upstream::Bool
    inblock::Bool
    block_upstream::Bool
    inject::Union{Nothing,Matrix{T}}
    buffers::Sized{Buffers{NamedTuple{(:H, :D),Tuple{Array{T,N},Array{T,N}}}}}
end

function Base.getproperty(n::Node, s::Symbol)
    s === :W && return get(getfield(n, :params), :W, nothing)
    s === :b && return get(getfield(n, :params), :b, nothing)
    s === :dW && return get(getfield(n, :grads), :W, nothing)
    s === :db && return get(getfield(n, :grads), :b, nothing)
    s === :spec && return getfield(n, :layer)
    return getfield(n, s)
end

Base.eltype(::Node{T}) where {T} = T
Base.eltype(::SkipNode{T}) where {T} = T
window(n::Node) = window(n.layer)

function Base.show(io::IO, n::Node{T}) where {T}
    print(io, "Node{$T}(", n.path, ": ", layer_text(n.layer), ", ", join(n.insize, "x"), " => ", join(n.outsize, "x"))
    for (name, A) in pairs(n.params)
        print(io, ", ", name, " ", join(size(A), "x"))
    end
    n.B === nothing || print(io, ", B ", join(size(n.B), "x"))
    print(io, ")")
end

# Per-batch buffers: H and D, what the layer declares, and dropout's mask and dropped output.
function batch_buffers(::Type{T}, l::Layer, outsize, dropout, m) where {T}
    arr(s::Dims) = Array{T}(undef, s..., m)
    arr(s::Tuple{Type,Dims}) = Array{s[1]}(undef, s[2]..., m)
    extra = map(arr, buffers(l, outsize))
    drop = dropout > 0 ? (mask = arr(outsize), dropped = arr(outsize)) : NamedTuple()
    return Buffers(m, merge((H = arr(outsize), D = arr(outsize)), extra, drop))
end
skip_buffers(::Type{T}, outsize, m) where {T} =
    Buffers(m, (H = Array{T}(undef, outsize..., m), D = Array{T}(undef, outsize..., m)))

# --- building the tree -------------------------------------------------------------------------

"What building a network's nodes carries along, in the order the nodes are made (depth first)."
mutable struct Build{T,R<:LearningRule}
    rule::R
    init::Initialiser
    feedbacks::Vector{Any}     # per leaf: an initialiser, a given array, or nothing
    dropouts::Vector{Float64}  # per leaf
    wrng::SplitMix64           # forward weights, drawn layer by layer
    brng::SplitMix64           # feedback arrays, likewise
    nout::Int
    nleaves::Int
    leaves::Vector{Any}
    upstream::Bool
    inblock::Bool
    block_upstream::Bool
end

# Errors about a layer say where it is: "layer 3.main.0, ..."
function located(f, path)
    try
        return f()
    catch e
        e isa Union{ArgumentError,DimensionMismatch} || rethrow()
        throw(typeof(e)(startswith(e.msg, "layer ") ? e.msg : "layer $path, $(e.msg)"))
    end
end

"Leaves of a layer (itself for a layer that is not a container)."
leaf_layers(l::Layer) = Any[l]
leaf_layers(c::Chain) = reduce(vcat, map(leaf_layers, collect(c.layers)); init=Any[])
leaf_layers(s::SkipConnection) = vcat(leaf_layers(s.main), s.shortcut === nothing ? Any[] : leaf_layers(s.shortcut))
"The paths of `leaf_layers(l)` when `l` sits at `path` (as the nodes will have them)."
leaf_paths(l::Layer, path) = [path]
leaf_paths(c::Chain, path) = reduce(vcat, [leaf_paths(x, child_path(path, k - 1)) for (k, x) in enumerate(c.layers)]; init=String[])
leaf_paths(s::SkipConnection, path) = vcat(leaf_paths(s.main, child_path(path, "main")),
                                          s.shortcut === nothing ? String[] : leaf_paths(s.shortcut, child_path(path, "shortcut")))
child_path(path, k) = isempty(path) ? string(k) : "$path.$k"

function build_node(c::Chain, insize::Dims, path, b::Build)
    children = Any[]
    s = insize
    for (k, layer) in enumerate(c.layers)
        node = build_node(layer, s, child_path(path, k - 1), b)
        push!(children, node)
        s = node.outsize
    end
    mark_points!(children, b.rule)
    return ChainNode(c, path, Tuple(children))
end

Base.getproperty(c::ChainNode, s::Symbol) = s === :outsize ? last(getfield(c, :children)).outsize :
                                            s === :insize ? first(getfield(c, :children)).insize : getfield(c, s)

function build_node(l::SkipConnection, insize::Dims, path, b::Build{T}) where {T}
    upstream, inblock, block_upstream = b.upstream, b.inblock, b.block_upstream
    # Both paths start from the block's input; inside, a block that is not within another starts
    # its own region for `block_upstream`.
    b.inblock, b.block_upstream = true, inblock && block_upstream
    main = build_node(l.main, insize, child_path(path, "main"), b)
    b.upstream, b.block_upstream = upstream, inblock && block_upstream
    shortcut = l.shortcut === nothing ? nothing :
               build_node(located(() -> fitted(l.shortcut, insize, main.outsize), path), insize, child_path(path, "shortcut"), b)
    want = shortcut === nothing ? insize : shortcut.outsize
    main.outsize == want || throw(ArgumentError("layer $path, $(layer_text(l)): its main path gives $(shape_text(main.outsize)) " *
                                                "but its shortcut gives $(shape_text(want)); they must agree to be added"))
    trained = any(has_params, leaf_layers(l))
    b.upstream, b.inblock, b.block_upstream = upstream || trained, inblock, inblock && (block_upstream || trained)
    shape = feedback_shape(b.rule, l, main.outsize, upstream, false, inblock, b.nout)
    init = b.feedbacks[1] isa Initialiser ? b.feedbacks[1] : GlorotUniform()
    B = shape === nothing ? nothing : init!(Array{T}(undef, shape...), init, b.brng, feedback_fans(l, shape)...)
    N = length(main.outsize) + 1
    return SkipNode{T,typeof(l),N,typeof(main),typeof(shortcut)}(
        l, path, insize, main.outsize, main, shortcut, B, shape === nothing ? nothing : init,
        upstream, inblock, block_upstream, nothing, Sized(skip_buffers(T, main.outsize, 0)))
end

# A leaf: its arrays as the layer declares them, W drawn before B, as layers come.
function build_node(l::Layer, insize::Dims, path, b::Build{T}) where {T}
    outsize = located(() -> output_shape(l, insize), path)
    index = length(b.leaves) + 1
    is_last = index == b.nleaves
    decl = parameters(l, insize)
    params = map(p -> new_param(T, p, l, b), decl)
    W = get(params, :W, nothing)
    rule, feedback = b.rule, b.feedbacks[index]
    shape = feedback_shape(rule, l, outsize, b.upstream, is_last, b.inblock, b.nout)
    shape === nothing && feedback isa Union{Given,GivenPointer} &&
        throw(ArgumentError("the feedback given for layer $path is an array, but under $(nameof(typeof(rule)))() layer $path ($(layer_text(l))) has no feedback array"))
    shape !== nothing && feedback === nothing &&
        throw(ArgumentError("the feedback given for layer $path is nothing, but under $(nameof(typeof(rule)))() layer $path ($(layer_text(l))) has a feedback array"))
    B = shape === nothing ? nothing : located(() -> feedback_array(T, shape, rule, l, feedback, b.brng, b.init, W), path)
    grads = map(similar, params)
    # Kolen-Pollack's B gradient: a dense B gets dWᵀ (its own buffer), a kernel-shaped B dW itself.
    dB = learns_feedback(rule) && B !== nothing ? (transposed_feedback(l) ? similar(B) : grads.W) : nothing
    state = map(p -> new_param(T, p, l, b), states(l, insize))
    dropout = b.dropouts[index]
    mirror = rule isa WeightMirror && B !== nothing ? mirror_buffers(l, T, insize, outsize, rule.batchsize, W) : nothing
    decays = Tuple(p.decays for p in decl)
    SC = typeof(scratch(l, T, insize, outsize, 0))
    bufs = Sized(batch_buffers(T, l, outsize, dropout, 0))
    slots = map(p -> typeof(p)[], params)
    finit = shape === nothing ? nothing : feedback
    node = Node{T,typeof(l),length(insize)+1,length(outsize)+1,typeof(params),typeof(slots),typeof(state),
                typeof(getfield(bufs.full, :arrays)),SC,typeof(B),typeof(mirror),typeof(decays),typeof(finit)}(
        l, path, index, insize, outsize, params, grads, slots, decays, state, B, dB, typeof(B)[],
        finit, dropout, min_batch(l, insize), b.upstream, b.inblock, b.block_upstream, nothing,
        bufs, scratch(l, T, insize, outsize, 0), mirror)
    push!(b.leaves, node)
    if !isempty(decl)
        b.upstream = true
        b.inblock && (b.block_upstream = true)
    end
    return node
end

function new_param(::Type{T}, p::Param, l, b::Build) where {T}
    A = Array{T}(undef, p.shape...)
    p.init === :weight ? init!(A, b.init, b.wrng, fans(l)...) :
    p.init === :zeros ? fill!(A, zero(T)) :
    p.init === :ones ? fill!(A, one(T)) : throw(ArgumentError("unknown parameter start $(p.init)"))
    return A
end

# A direct feedback point closes each run of a chain: a layer that takes one (`feedback_head`) and the
# elementwise layers right after it (activation, batch norm); the run's last node receives the projection.
function mark_points!(children, rule)
    k = 1
    while k <= length(children)
        head = children[k]
        j = k
        if head isa Union{Node,SkipNode} && feedback_head(rule, head)
            while j < length(children) && children[j+1] isa Node && elementwise(children[j+1].layer)
                j += 1
            end
            children[j].inject = head.B
        end
        k = j + 1
    end
end
feedback_head(rule, n) = rule isa DFAStyle && n.B !== nothing

function feedback_array(::Type{T}, shape, rule, l, feedback, rng, init, W) where {T}
    if rule isa uSF   # scale · sign(W): magnitudes are the scale, signs follow W (refresh_signs!)
        scale = rule.scale === nothing ? init_std(init, fans(l)...) : rule.scale
        B = fill(T(scale), shape)
        follow_signs!(B, W, l)
        return B
    end
    feedback isa Initialiser || throw(ArgumentError("feedback must be an initialiser, got $(repr(feedback))"))
    if feedback isa GivenPointer   # a row-major host's array: its shape is Julia's, reversed
        feedback.dims == shape || throw(DimensionMismatch("$(layer_text(l)) has a B of shape $(reverse(shape)) under " *
                                                          "$(nameof(typeof(rule)))(), but the given feedback array has shape $(reverse(feedback.dims))"))
        feedback = Given(unsafe_wrap(Array, feedback.p, shape))
    end
    if feedback isa Given
        rule isa brSF && throw(ArgumentError("brSF redraws B every batch; it cannot use a given array"))
        size(feedback.M) == shape || throw(DimensionMismatch("the given feedback array has size $(shape_text(size(feedback.M))); $(layer_text(l))'s B needs $(shape_text(shape))"))
        eltype(feedback.M) == T || throw(ArgumentError("the given feedback array has element type $(eltype(feedback.M)), the network uses $T"))
        B = feedback.M
    else
        B = init!(Array{T}(undef, shape...), feedback, rng, feedback_fans(l, shape)...,
                  rule isa FAStyle ? like_feedback(l, W) : W)   # W oriented like B
    end
    rule isa SignSymmetric && follow_signs!(B, W, l)
    return B
end

# B's fans: a matrix carries its columns to its rows; a kernel-shaped B carries cout channels back to cin.
feedback_fans(l, shape::NTuple{2,Int}) = (shape[2], shape[1])
feedback_fans(l, shape::NTuple{4,Int}) = reverse(fans(l))

# --- the network ---------------------------------------------------------------------------------

mutable struct Network{T<:AbstractFloat,NX,R<:LearningRule,L<:Loss,RT<:ChainNode,S<:Tuple,I<:Dims}
    chain::Chain
    insize::I                        # one observation's shape
    root::RT                         # the chain's nodes
    layers::S                        # the leaf nodes, depth-first
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
    training::Bool                   # the mode `forward!` and `gradients` use (`trainmode!`, `testmode!`)
    m::Int                           # observations in the last forward pass
    seen::Vector{Array{T}}           # per leaf, the input it read in the last forward pass
    optimizer::Any                   # what `learn!` continues with: the last one it used, or a loaded file's
end

"""
    Network(chain; input, rule=FA(), loss=CrossEntropy(), seed=0, feedback_seed=seed,
            init=GlorotUniform(), feedback=GlorotUniform(), dropout=0.0, T=Float32)

A network of the layers in `chain` for observations of shape `input` (an image's (width, height,
channels), or the number of features; a chain that starts with `Dense` can leave it out). The last
layer must be `Dense` with no activation: softmax lives in the loss. Chains nest, and skip
connections (`SkipConnection`, `Parallel`) hold chains of their own. Forward weights come from `init`
with `seed`, feedback arrays from `feedback` with `feedback_seed`, each from its own `SplitMix64`
stream, layer by layer in the order the layers are written. `feedback` may be a vector with one entry
per layer (leaves, depth first); `Given(A)` uses an array you supply as B itself. `dropout` is a
probability for every layer with parameters but the last, or a vector with one per layer but the last
(0 for the others). uSF ignores `feedback` and uses scale·sign(W).

    Network(sizes; activation=tanh, kwargs...)

The dense shorthand: `Network([784, 256, 10]; activation=tanh)` is
`Network(Chain(Dense(784 => 256, tanh), Dense(256 => 10)); input=784)`.

`max_params` refuses a chain with more parameters than that before anything is allocated (readers of
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
    length(chain) >= 1 || throw(ArgumentError("a network needs at least one layer"))
    insize = input_shape(input, chain)
    last = chain[length(chain)]
    last isa Dense && last.σ === identity ||
        throw(ArgumentError("the last layer must be Dense (Python: Linear) with no activation (softmax lives in the " *
                            "loss), got layer $(length(chain) - 1), $(layer_text(last))"))
    leaves = leaf_layers(chain)
    paths = leaf_paths(chain, "")
    # Model files bound what a chain read from them may allocate: no more values than the file holds.
    nparams = big(0)
    for l in leaves, p in values(parameters(l, ()))
        nparams += prod(big.(p.shape))
    end
    nparams <= max_params || throw(ArgumentError("the chain has $nparams parameters, more than the $max_params allowed here"))
    L = length(leaves)
    b = Build{T,typeof(rule)}(rule, init, per_layer(feedback, L, "feedback"), layer_dropout(dropout, leaves, paths),
                              stream(seed, 1), stream(feedback_seed, 2), last.out, L, Any[], false, false, false)
    root = build_node(chain, insize, "", b)
    NX = length(insize) + 1
    nout = last.out
    inputs = Sized(InputBuffers{T,NX}(0, Array{T,NX}(undef, insize..., 0), Int[], Matrix{T}(undef, nout, 0),
                                      Matrix{T}(undef, nout, 0)))
    flat = Tuple(b.leaves)
    return Network{T,NX,typeof(rule),typeof(loss),typeof(root),typeof(flat),typeof(insize)}(
        chain, insize, root, flat, rule, loss, UInt64(seed), UInt64(feedback_seed), stream(seed, 3), :none, 0, 0,
        init, inputs, Int[], false, any(>(0), b.dropouts), true, 0, Array{T}[Array{T,length(n.insize)+1}(undef, n.insize..., 0) for n in flat],
        nothing)
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
        throw(ArgumentError("input must be a positive number of features or a positive $(image_dims_text()), got $(shape_text(s))"))
    return s
end

function per_layer(x, n, name)
    x isa AbstractVector || return Any[x for _ in 1:n]
    length(x) == n || throw(ArgumentError("$name has $(length(x)) entries; expected one per layer ($n)"))
    return collect(Any, x)
end

# Dropout per leaf (the last one has none): a number applies to every layer with parameters.
function layer_dropout(dropout, leaves, paths)
    L = length(leaves)
    ps = dropout isa AbstractVector ? Float64.(dropout) :
         Float64[weight_layer(leaves[l]) ? Float64(dropout) : 0.0 for l in 1:L-1]
    length(ps) == L - 1 || throw(ArgumentError("dropout has $(length(ps)) entries; expected one per layer but the last ($(L - 1))"))
    all(p -> 0 <= p < 1, ps) || throw(ArgumentError("dropout probabilities must be in [0, 1), got $ps"))
    for (l, p) in enumerate(ps)
        p > 0 && !weight_layer(leaves[l]) &&
            throw(ArgumentError("a dropout rate of $p is given after layer $(paths[l]), $(layer_text(leaves[l])), which " *
                                "has no parameters; dropout follows a Dense or Conv layer"))
    end
    return push!(ps, 0.0)
end

Base.eltype(::Network{T}) where {T} = T
insize(net::Network) = net.insize
outsize(net::Network) = last(net.layers).layer.out   # the last layer is Dense
nfeatures(net::Network) = prod(net.insize)
"Layer widths of a dense network (its input, then each layer's output size)."
sizes(net::Network) = [prod(net.insize); [prod(st.outsize) for st in net.layers]]

function Base.show(io::IO, net::Network{T}) where {T}
    print(io, "Network{$T}(", net.chain, "; input=", length(net.insize) == 1 ? net.insize[1] : net.insize,
          ", rule=", net.rule, ", loss=", typeof(net.loss).name.name, "())")
end

"""
    trainmode!(net) / testmode!(net)

The mode that `forward!` and `gradients` use (Flux's names): training mode (the default) normalises
batch norm layers with the batch's statistics; test mode with their running statistics. Training
(`step!`, `learn!`) always trains, and predictions (`predict`, `evaluate`, `outputs`) always use the
running statistics, whatever the mode.
"""
trainmode!(net::Network) = (net.training = true; net)
"""
    testmode!(net)

Put `net` in test mode: `gradients` (and `forward!`) then normalise batch norm layers with their
running statistics. Training still trains; see `trainmode!`.
"""
testmode!(net::Network) = (net.training = false; net)

# Every node, containers before their children (PyTorch's named_modules order).
foreach_node(f::F, n::Node) where {F} = f(n)
foreach_node(f::F, c::ChainNode) where {F} = (f(c); foreach_layer(n -> foreach_node(f, n), c.children))
function foreach_node(f::F, s::SkipNode) where {F}
    f(s)
    foreach_node(f, s.main)
    s.shortcut === nothing || foreach_node(f, s.shortcut)
end
"Every node of the network as (path, node) pairs, depth first, containers before their children."
function named_nodes(net::Network)
    out = Pair{String,Any}[]
    foreach_node(n -> push!(out, n.path => n), net.root)
    return out
end

"The nodes hosts and model files see: every layer and container but the network's own chain, depth first."
listed_nodes(net::Network) = [n for (p, n) in named_nodes(net) if !isempty(p)]

"A node's named arrays: its parameters, its state, and its feedback array (files and hosts name them so)."
function node_arrays(n)
    out = Pair{String,Array}[]
    n isa ChainNode && return out
    if n isa Node
        append!(out, [string(k) => v for (k, v) in pairs(n.params)])
        append!(out, [string(k) => v for (k, v) in pairs(n.state)])
    end
    n.B === nothing || push!(out, "B" => n.B)
    return out
end

"Make every buffer hold at least `m` observations (growing them drops the old cuts)."
function workspace!(net::Network{T,NX}, m::Integer) where {T,NX}
    net.inputs.full.m >= m && return net
    nout = outsize(net)
    net.inputs = Sized(InputBuffers{T,NX}(m, Array{T,NX}(undef, net.insize..., m), Vector{Int}(undef, m),
                                          Matrix{T}(undef, nout, m), Matrix{T}(undef, nout, m)))
    foreach_node(n -> grow!(n, m), net.root)
    return net
end

function grow!(n::Node{T}, m) where {T}
    n.buffers = Sized(batch_buffers(T, n.layer, n.outsize, n.dropout, m))
    n.scratch = scratch(n.layer, T, n.insize, n.outsize, m)
    return n
end
grow!(s::SkipNode{T}, m) where {T} = (s.buffers = Sized(skip_buffers(T, s.outsize, m)); s)
grow!(c::ChainNode, m) = c

capacity(net::Network) = net.inputs.full.m
batch(net::Network, m) = at(net.inputs, m)
buffers(n::Union{Node,SkipNode}, m::Integer) = at(n.buffers, m)
"The error buffer at a node's output (a chain's: its last child's)."
error_of(n::Union{Node,SkipNode}, m) = buffers(n, m).D
error_of(c::ChainNode, m) = error_of(last(c.children), m)
"The network's outputs (logits for classification) from the last forward pass."
network_output(net::Network, m) = buffers(last(net.layers), m).H
"The output error dL/dZ buffer."
output_error(net::Network, m) = buffers(last(net.layers), m).D

# Passes over a tuple of nodes, written as recursion so that each call is resolved at compile time
# (a loop over a heterogeneous tuple dispatches at run time and boxes what it passes).
@inline foreach_layer(f::F, t::Tuple{}) where {F} = nothing
@inline foreach_layer(f::F, t::Tuple) where {F} = (f(first(t)); foreach_layer(f, Base.tail(t)))
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

# --- forward ---------------------------------------------------------------------------------------

"""
    forward!(net, X, mode = EVAL) -> Z

Network outputs for the batch `X` (observations last, at most the buffers' capacity), left in the
buffers with every layer's outputs for the backward pass. `mode`: `EVAL` (running statistics, no
dropout), `BATCH` (batch statistics, nothing updated) or `TRAIN` (batch statistics, running
statistics updated, dropout on: inverted, kept units scaled by 1/(1-p)).
"""
function forward!(net::Network{T}, X::Array{T}, mode::Mode=EVAL) where {T}
    net.m = size(X, ndims(X))
    net.dropping = mode == TRAIN && net.with_dropout
    forward!(net.root, X, net, mode)
    return network_output(net, net.m)
end
forward!(net::Network{T}, X::Array{T}, training::Bool) where {T} = forward!(net, X, training ? TRAIN : BATCH)

function forward!(n::Node{T,L,NI}, x::Array{T,NI}, net::Network, mode::Mode) where {T,L,NI}
    net.seen[n.index] = x
    b = buffers(n, net.m)
    forward!(n.layer, n, b, x, mode, net.rng)
    dropping = net.dropping && n.dropout > 0
    dropping && drop!(b.dropped, b.mask, b.H, n.dropout, net.rng)
    return dropping ? b.dropped : b.H
end
forward!(c::ChainNode, x, net::Network, mode::Mode) = forward_chain!(c.children, x, net, mode)
# Recursion over the children (not a closure, which a chain nested in a block would allocate).
forward_chain!(t::Tuple{}, x, net, mode) = x
forward_chain!(t::Tuple, x, net, mode) = forward_chain!(Base.tail(t), forward!(first(t), x, net, mode), net, mode)
function forward!(s::SkipNode{T,L,N}, x::Array{T,N}, net::Network, mode::Mode) where {T,L,N}
    y = forward!(s.main, x, net, mode)
    z = s.shortcut === nothing ? x : forward!(s.shortcut, x, net, mode)
    H = buffers(s, net.m).H
    @inbounds @simd for k in eachindex(H, y, z)
        H[k] = y[k] + z[k]
    end
    return H
end

# --- backward --------------------------------------------------------------------------------------

"""
    backward!(net, rule = net.rule)

After `forward!` and with the output error in `output_error(net, m)`, fill each layer's gradients
(and Kolen-Pollack's `dB`) with the update `rule` gives it: the update applied is p -= lr * dp.
Nodes are visited from the last. A node that an error reaches (the output error, an error carried
back by the node after it, or a projection where the rule has a direct feedback point) computes its
gradients from it and, where the rule needs it, carries it back to its input (exactly, or with B in
W's place); where two paths meet, the errors they carry back add up. A layer that no error reaches
gets zero gradients. (Diagnostics pass `BP()` to compare a rule's updates with the true gradient on
the same forward pass.)
"""
function backward!(net::Network, rule::LearningRule=net.rule)
    backward!(net.root, nothing, false, true, rule, net)
    return net
end

# Each returns whether it wrote the error at its input into dx (added to it when `acc`).
function backward!(n::Node{T,L,NI}, dx, acc::Bool, live::Bool, rule::LearningRule, net::Network) where {T,L,NI}
    b = buffers(n, net.m)
    if point(rule, n)
        project!(b.D, n.inject, signal(rule, net, net.m))
        live = true
    end
    if !live
        zero_gradients!(n)
        return false
    end
    net.dropping && n.dropout > 0 && (b.D .*= b.mask)
    x = net.seen[n.index]::Array{T,NI}
    parameter_gradients!(n.layer, n, b, x)
    n.dB === nothing || n.dB === n.grads.W || transpose!(n.dB, n.grads.W)
    dx === nothing && return false
    carries(rule, n) || return false
    carry!(dx, n.layer, n, b, x, exact(rule, n), acc)
    return true
end

backward!(c::ChainNode, dx, acc::Bool, live::Bool, rule::LearningRule, net::Network) =
    backward_chain!(c.children, dx, acc, live, rule, net)
backward_chain!(t::Tuple{Any}, dx, acc::Bool, live::Bool, rule, net) = backward!(first(t), dx, acc, live, rule, net)
function backward_chain!(t::Tuple, dx, acc::Bool, live::Bool, rule, net)
    front = Base.front(t)
    wrote = backward!(last(t), error_of(last(front), net.m), false, live, rule, net)
    return backward_chain!(front, dx, acc, wrote, rule, net)
end

function backward!(s::SkipNode, dx, acc::Bool, live::Bool, rule::LearningRule, net::Network)
    m = net.m
    b = buffers(s, m)
    if point(rule, s)
        project!(b.D, s.inject, signal(rule, net, m))
        live = true
    end
    live && copyto!(error_of(s.main, m), b.D)
    wrote = backward!(s.main, dx, acc, live, rule, net)
    if s.shortcut === nothing
        if live && dx !== nothing && carries(rule, s)
            add_or_copy!(dx, b.D, acc | wrote)
            wrote = true
        end
    else
        live && copyto!(error_of(s.shortcut, m), b.D)
        wrote |= backward!(s.shortcut, dx, acc | wrote, live, rule, net)
    end
    return wrote
end

zero_gradients!(n::Node) = (foreach_layer(g -> fill!(g, 0), values(n.grads)); n.dB === nothing || fill!(n.dB, 0); nothing)

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

gradient_mode(net::Network) = net.training ? BATCH : EVAL

"""
Forward, loss and backward on one batch (m ≤ capacity); returns (summed loss, number correct).
`mode` as for `forward!`: `TRAIN` for a training step; `gradients` uses the network's mode (batch
statistics in training mode, running ones in test mode) and never dropout, so it changes nothing.
"""
function loss_and_grads!(net::Network{T}, X::Array{T}, Y, mode::Mode=gradient_mode(net)) where {T}
    m = size(X, ndims(X))
    Z = forward!(net, X, mode)
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
    length(grads) == length(net.layers) || throw(DimensionMismatch("need one entry per layer"))
    for (g, st) in zip(grads, net.layers)
        isempty(st.params) && continue
        length(g) == length(st.params) && all(size(a) == size(p) for (a, p) in zip(g, values(st.params))) ||
            throw(DimensionMismatch("the gradient buffers of layer $(st.path) must have the shapes of its parameters ($(join(keys(st.params), ", ")))"))
    end
    loss = compute_gradients!(net, X, Y)
    for (g, st) in zip(grads, net.layers)
        isempty(st.params) && continue
        foreach(copyto!, g, values(st.grads))
    end
    return loss
end

"The rule's gradients for the batch (X, Y), left in the layers (`st.grads`); returns the mean loss."
function compute_gradients!(net::Network, X, Y)
    X = as_input(net, X)
    check_inputs(net, X)
    check_targets(net.loss, Y, outsize(net), size(X, ndims(X)))
    workspace!(net, size(X, ndims(X)))
    total, _ = loss_and_grads!(net, X, Y)
    return total / size(X, ndims(X))
end

"""
Each layer's gradients under the network's rule for the batch (X, Y), in new arrays: per leaf, a
tuple in the order its layer declares its parameters ((dW, db) for Dense and Conv, (dgamma, dbeta)
for BatchNorm), `nothing` for layers without parameters.
"""
function gradients(net::Network, X, Y)
    g = [isempty(st.params) ? nothing : map(similar, Tuple(values(st.params))) for st in net.layers]
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
"""
    outputs(net, X)

The network's outputs (logits under cross-entropy) for every observation (column) of `X`, in a new
`n_outputs x n` matrix; batch norm uses its running statistics and dropout is off.
"""
outputs(net::Network{T}, X) where {T} = outputs!(Matrix{T}(undef, outsize(net), nobs(X)), net, X)
nobs(X::AbstractArray) = size(X, ndims(X))

"Class probabilities (softmax of the outputs) for every observation of X."
function predict_proba!(P::AbstractMatrix, net::Network, X)
    net.loss isa CrossEntropy || throw(ArgumentError("predict_proba needs the cross-entropy loss; this network uses $(typeof(net.loss).name.name)"))
    each_output_chunk((Z, cols) -> softmax!(view(P, :, cols), Z), net, as_input(net, X))
    return P
end
"""
    predict_proba(net, X)

Class probabilities (the softmax of the outputs) for every observation of `X`, as an
`n_classes x n` matrix; cross-entropy networks only.
"""
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
    throw(DimensionMismatch("a vector input needs a network of vector inputs; this one takes $(shape_text(net.insize)) images"))
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

function activate!(H::Array{T}, A::Array{T}, f::F) where {T,F}
    @inbounds @simd for k in eachindex(H, A)
        H[k] = activate(f, A[k])
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

