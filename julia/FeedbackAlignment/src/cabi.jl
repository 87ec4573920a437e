"""
The flat C ABI that Python (or any C caller) drives: entry points that take raw pointers, sizes and
network handles, made with `@cfunction` and looked up by name through `fa_lookup`. Julia exceptions
never cross it: each entry returns a status (0 ok, 1 error, 2 training diverged, 3 interrupted) and the message is
read with `fa_error_message`. Arrays are wrapped in place, never copied: a C-ordered (n, d) array
is Julia's (d, n) matrix. The handle table is the package's one piece of global state.
"""
module CABI

using LinearAlgebra
using ..FeedbackAlignment
using ..FeedbackAlignment: listed_nodes, node_arrays, ACTIVATIONS, LOSSES, REGISTRIES, DivergenceError, Interrupted, ZeroBasedLabels,
    CrossEntropy, Given, GivenPointer, outsize, nfeatures, outputs!, predict_proba!, predict_labels!, gradients!,
    train_epoch!, step!, evaluate, interpret, build, layer_text, has_params, Layer, activation, activation_name,
    layer_activation

const HANDLES = Dict{Int64,Network}()
const LAST_HANDLE = Ref{Int64}(0)
const ERROR_MESSAGE = Ref{String}("")
const ANSWER = Ref{String}("")          # text answers; valid until the next fa_describe

# Status codes: 0 ok, 1 any other error, 2 training diverged, 3 interrupted (SIGINT, between
# batches), 4 bad arguments (the host raises its own kind of value error for those).
function guarded(f)
    ERROR_MESSAGE[] = ""   # so a host whose own Ctrl-C handler cut the call short can tell "interrupted" apart
    try
        f()
        return Cint(0)
    catch e
        ERROR_MESSAGE[] = sprint(showerror, e)
        return e isa DivergenceError ? Cint(2) : e isa Interrupted ? Cint(3) :
               e isa Union{ArgumentError,DimensionMismatch} ? Cint(4) : Cint(1)
    end
end

# Between batches, peek at socket `fd` for SIGINT (see interrupt.jl); -1 stops watching.
fa_watch_interrupts(fd::Cint)::Cint = guarded(() -> FeedbackAlignment.watch_interrupts!(fd))

network(h::Int64) = get(() -> throw(ArgumentError("no network with handle $h (it was freed, or never created)")),
                        HANDLES, h)

# One initialiser for every layer, or a vector literal of them.
function initialisers(text, n)
    expr = Meta.parse(text)
    expr isa Expr && expr.head == :vect || return fill(interpret(text, "initialiser"), n)
    length(expr.args) == n || throw(ArgumentError("feedback lists $(length(expr.args)) initialisers; the network has $n layers"))
    return [e === :nothing ? nothing : build(e, "initialiser", text) for e in expr.args]
end

eval_literals(e::Expr) = e.head == :vect && all(x -> x isa Real, e.args) ? collect(e.args) :
    throw(ArgumentError("expected a number or a vector of numbers, got $e"))

named(table, what, name::Cstring) = named(table, what, unsafe_string(name))
function named(table, what, s::AbstractString)
    haskey(table, s) || throw(ArgumentError("unknown $what \"$s\"; expected one of $(join(sort!(collect(keys(table))), ", "))"))
    return table[s]
end

matrix(::Type{T}, p::Ptr{Cvoid}, rows, cols) where {T} = unsafe_wrap(Array, Ptr{T}(p), (Int(rows), Int(cols)))
# A host's C-ordered (n, features...) batch is Julia's (features..., n) array: the same memory.
function inputs(net::Network{T}, p, n, d) where {T}
    d == nfeatures(net) || throw(DimensionMismatch(length(net.insize) == 1 ?
        "X has $d features (rows), the network expects $(nfeatures(net))" :
        "X has $d values per observation, the network expects $(nfeatures(net)) ($(join(net.insize, " x ")))"))
    return unsafe_wrap(Array, Ptr{T}(p), (net.insize..., Int(n)))
end
targets(net::Network{T}, p, n) where {T} =
    net.loss isa CrossEntropy ? ZeroBasedLabels(unsafe_wrap(Array, Ptr{Int64}(p), Int(n))) : matrix(T, p, outsize(net), n)
# Parsed optimiser specs by text: a host sends the same spec with every `fa_step`, and parsing it
# (Meta.parse) costs ~0.5 ms, more than a small training step. Optimisers are immutable values.
const PARSED_OPTIMISERS = Dict{String,Any}()
function optimiser(spec::Cstring)
    text = unsafe_string(spec)
    opt = get(PARSED_OPTIMISERS, text, nothing)
    opt === nothing || return opt
    length(PARSED_OPTIMISERS) >= 64 && empty!(PARSED_OPTIMISERS)   # a bound, for hosts that vary it
    return PARSED_OPTIMISERS[text] = interpret(text, "optimizer")
end

"""
    fa_new(out, dtype, ninput, input, chain, spec, given, given_dims)

`input[1:ninput]` is one observation's shape in Julia's order; `chain` has one layer per line, as a
Julia call (`Conv((5, 5), 1 => 6, relu)`, read by `interpret`, never evaluated). `spec` holds
`key=value` lines: loss (a name), rule, init (see `interpret`), feedback (one initialiser, or a vector
with one per layer), dropout (a number or a vector, one per layer but the last), seed, feedback_seed.
`given` is NULL, or has one entry per layer (leaves, depth first): `given[l]`, when not NULL, is a host array used as layer l's B itself, whose dimensions (Julia's
order) are `given_dims[5l-4]` (how many) and `given_dims[5l-3:5l]`; it must have the shape the rule
gives that B.
"""
function fa_new(out::Ptr{Int64}, dtype::Cint, ninput::Int64, input::Ptr{Int64}, chain::Cstring, spec::Cstring,
                given::Ptr{Ptr{Cvoid}}, given_dims::Ptr{Int64})::Cint
    guarded() do
        T = dtype == 0 ? Float32 : dtype == 1 ? Float64 : throw(ArgumentError("unknown dtype code $dtype"))
        shape = Tuple(copy(unsafe_wrap(Array, input, Int(ninput))))
        layers = Layer[]
        for (l, line) in enumerate(split(unsafe_string(chain), '\n'; keepempty=false))
            layer = try
                interpret(line, "layer")
            catch e
                e isa Union{ArgumentError,MethodError} || rethrow()
                throw(ArgumentError("layer $(l - 1), \"$line\": " * (e isa ArgumentError ? e.msg : "wrong arguments for $(e.f)")))
            end
            push!(layers, layer)
        end
        opts = Dict{String,String}()
        for line in split(unsafe_string(spec), '\n'; keepempty=false)
            key, value = split(line, '='; limit=2)
            opts[strip(key)] = strip(value)
        end
        L = length(FeedbackAlignment.leaf_layers(Chain(Tuple(layers))))   # per-layer settings: one per leaf
        rule = interpret(get(opts, "rule", "fa"), "rule")
        feedback = Any[f for f in initialisers(get(opts, "feedback", "glorot_uniform"), L)]
        for l in 1:L
            given == C_NULL && break   # no host arrays as B
            p = unsafe_load(given, l)
            p == C_NULL && continue
            n = unsafe_load(given_dims, 5l - 4)
            feedback[l] = GivenPointer(T, p, Tuple(unsafe_load(given_dims, 5l - 4 + k) for k in 1:n))
        end
        dropout = Meta.parse(get(opts, "dropout", "0.0"))
        net = Network(Chain(Tuple(layers)); input=shape, T=T, rule=rule, feedback=feedback,
                      seed=parse(UInt64, get(opts, "seed", "0")),
                      feedback_seed=parse(UInt64, get(opts, "feedback_seed", get(opts, "seed", "0"))),
                      loss=named(LOSSES, "loss", get(opts, "loss", "cross_entropy")),
                      init=interpret(get(opts, "init", "glorot_uniform"), "initialiser"),
                      dropout=dropout isa Expr ? Float64.(eval_literals(dropout)) : Float64(dropout),
                      max_params=parse(Int, get(opts, "max_params", string(typemax(Int)))))
        h = LAST_HANDLE[] += 1
        HANDLES[h] = net
        unsafe_store!(out, h)
    end
end

node_activation(n) = n isa FeedbackAlignment.Node ? activation_name(layer_activation(n.layer)) : "identity"

"""
    fa_nodes(h) -> text

One line per node (every layer and container but the network's own chain, containers before their
children), tab-separated: its path (`3.main.0`), its layer's kind (the type's name), the call that
builds it, its activation's name, its input and output shapes, and its arrays as `name:dims` joined
by `;` (parameters, state, then B). Shapes are Julia's order, comma-separated. Hosts take every
shape and name from here. Valid until the next call.
"""
function fa_nodes(h::Int64)::Ptr{UInt8}
    text = try
        lines = String[]
        for n in listed_nodes(network(h))
            arrays = join(["$name:$(join(size(A), ","))" for (name, A) in node_arrays(n)], ";")
            kind = string(nameof(typeof(n.layer)))
            push!(lines, join((n.path, kind, layer_text(n.layer), node_activation(n), join(n.insize, ","),
                               join(n.outsize, ","), arrays), '\t'))
        end
        join(lines, '\n')
    catch e
        ERROR_MESSAGE[] = sprint(showerror, e)
        ""
    end
    ANSWER[] = text
    return pointer(ANSWER[])
end

"""
    fa_array(h, node, name, ptr, dims)

Address and Julia dimensions (`dims[1]` = how many, then the sizes; room for 4) of node `node`'s array `name` (1-based, in `fa_nodes`
order): a parameter (`W`, `gamma`, ...), state (`running_mean`, ...), `B`, or a parameter's gradient
from the last `fa_gradients` (`dW`, `dgamma`, ...); NULL if the node has none of that name.
"""
function fa_array(h::Int64, node::Int64, name::Cstring, ptr::Ptr{Ptr{Cvoid}}, dims::Ptr{Int64})::Cint
    guarded() do
        nodes = listed_nodes(network(h))
        1 <= node <= length(nodes) || throw(ArgumentError("no node $node; the network has $(length(nodes))"))
        n, key = nodes[node], unsafe_string(name)
        A = nothing
        for (k, v) in node_arrays(n)
            k == key && (A = v)
        end
        if A === nothing && n isa FeedbackAlignment.Node && startswith(key, "d")
            A = get(n.grads, Symbol(key[2:end]), nothing)
        end
        store_array!(ptr, dims, A)
    end
end

fa_free(h::Int64)::Cint = guarded(() -> (network(h); delete!(HANDLES, h)))

fa_live_handles()::Int64 = length(HANDLES)

function store_array!(ptr, dims, A)
    unsafe_store!(ptr, A === nothing ? C_NULL : Ptr{Cvoid}(pointer(A)))
    unsafe_store!(dims, A === nothing ? 0 : ndims(A), 1)
    A === nothing || for (k, n) in enumerate(size(A))
        unsafe_store!(dims, n, k + 1)
    end
end

# kind 0: outputs (n, k); 1: class probabilities (n, k); 2: 0-based class labels (n,) as Int64.
function fa_forward(h::Int64, X::Ptr{Cvoid}, n::Int64, d::Int64, out::Ptr{Cvoid}, kind::Cint)::Cint
    guarded() do
        net = network(h)
        T, Xm = eltype(net), inputs(net, X, n, d)
        kind == 0 ? outputs!(matrix(T, out, outsize(net), n), net, Xm) :
        kind == 1 ? predict_proba!(matrix(T, out, outsize(net), n), net, Xm) :
        kind == 2 ? predict_labels!(unsafe_wrap(Array, Ptr{Int64}(out), Int(n)), net, Xm; offset=-1) :
        throw(ArgumentError("unknown output kind $kind"))
    end
end

function fa_evaluate(h::Int64, X::Ptr{Cvoid}, n::Int64, d::Int64, Y::Ptr{Cvoid}, out::Ptr{Float64})::Cint
    guarded() do
        net = network(h)
        r = evaluate(net, inputs(net, X, n, d), targets(net, Y, n))
        unsafe_store!(out, r.loss, 1)
        unsafe_store!(out, r.accuracy, 2)
    end
end

# The gradients the rule gives every layer for the batch, left in the network: the host reads each
# through `fa_array` (`dW`, `db`, `dgamma`, ...).
function fa_gradients(h::Int64, X::Ptr{Cvoid}, n::Int64, d::Int64, Y::Ptr{Cvoid}, loss::Ptr{Float64})::Cint
    guarded() do
        net = network(h)
        unsafe_store!(loss, FeedbackAlignment.compute_gradients!(net, inputs(net, X, n, d), targets(net, Y, n)))
    end
end

# The gradient of the mean loss over (X, Y) with respect to X, into out (X's shape): through = 0
# the weights, 1 the rule's feedback (see `input_gradient!`).
function fa_input_gradient(h::Int64, X::Ptr{Cvoid}, n::Int64, d::Int64, Y::Ptr{Cvoid}, through::Cint, out::Ptr{Cvoid})::Cint
    guarded() do
        net = network(h)
        Xm = inputs(net, X, n, d)
        FeedbackAlignment.input_gradient!(inputs(net, out, n, d), net, Xm, targets(net, Y, n); through=through_name(through))
    end
end
through_name(code) = code == 0 ? :weights : code == 1 ? :feedback : throw(ArgumentError("unknown through code $code"))

# One attack on (X, y) at eps, the adversarial inputs into out (X's shape): attack 0 FGSM, 1 PGD
# (steps, step_size, restarts, seed, through), 2 Square (queries, p_init, seed; used: each sample's
# predictions, n Int64). Pixels stay in [lo, hi].
function fa_attack(h::Int64, attack::Cint, X::Ptr{Cvoid}, n::Int64, d::Int64, Y::Ptr{Cvoid}, eps::Float64, lo::Float64,
                   hi::Float64, through::Cint, steps::Int64, step_size::Float64, restarts::Int64, queries::Int64,
                   p_init::Float64, seed::UInt64, out::Ptr{Cvoid}, used::Ptr{Int64})::Cint
    guarded() do
        net = network(h)
        Xm, Xadv, y = inputs(net, X, n, d), inputs(net, out, n, d), targets(net, Y, n)
        FeedbackAlignment.check_attack(net, Xm, y, eps, (lo, hi))
        attack == 0 ? FeedbackAlignment.fgsm!(Xadv, net, Xm, y, eps; through=through_name(through), bounds=(lo, hi)) :
        attack == 1 ? FeedbackAlignment.pgd!(Xadv, net, Xm, y, eps; steps=steps, step_size=step_size, restarts=restarts,
                                             seed=seed, through=through_name(through), bounds=(lo, hi)) :
        attack == 2 ? FeedbackAlignment.square!(Xadv, unsafe_wrap(Array, used, Int(n)), (Z, Xb) -> outputs!(Z, net, Xb),
                                                net.insize, outsize(net), Xm, y, eps; queries=queries, p_init=p_init,
                                                seed=seed, bounds=(lo, hi)) :
        throw(ArgumentError("unknown attack code $attack"))
    end
end

# A Python host reads shapes in NumPy's order (channels, height, width): error messages follow.
fa_conventions(python::Cint)::Cint = guarded(() -> (FeedbackAlignment.PYTHON_ORDER[] = python != 0))

# The mode `fa_gradients` uses: 1 training (batch statistics), 0 evaluation (running statistics).
fa_set_mode(h::Int64, training::Cint)::Cint = guarded(() -> (network(h).training = training != 0))

function fa_step(h::Int64, X::Ptr{Cvoid}, n::Int64, d::Int64, Y::Ptr{Cvoid}, opt::Cstring,
                 loss::Ptr{Float64})::Cint
    guarded() do
        net = network(h)
        unsafe_store!(loss, step!(net, inputs(net, X, n, d), targets(net, Y, n), optimiser(opt)))
    end
end

# One epoch; out receives (mean loss, accuracy, epochs trained so far).
function fa_train_epoch(h::Int64, X::Ptr{Cvoid}, n::Int64, d::Int64, Y::Ptr{Cvoid}, batchsize::Int64,
                        shuffle::Cint, opt::Cstring, out::Ptr{Float64})::Cint
    guarded() do
        net = network(h)
        r = train_epoch!(net, inputs(net, X, n, d), targets(net, Y, n), optimiser(opt);
                         batchsize=batchsize, shuffle=shuffle != 0, observe=tracker_of(net))
        unsafe_store!(out, r.loss, 1)
        unsafe_store!(out, r.accuracy, 2)
        unsafe_store!(out, net.epochs, 3)
    end
end

# Training state that model files carry: epochs trained so far, the network generator's state and
# the optimiser's update count (Adam's bias correction).
function fa_state_get(h::Int64, epochs::Ptr{Int64}, rng::Ptr{UInt64}, steps::Ptr{Int64})::Cint
    guarded() do
        net = network(h)
        unsafe_store!(epochs, net.epochs)
        unsafe_store!(rng, net.rng.state)
        unsafe_store!(steps, net.optsteps)
    end
end

function fa_state_set(h::Int64, epochs::Int64, rng::UInt64, steps::Int64)::Cint
    guarded() do
        epochs >= 0 && steps >= 0 || throw(ArgumentError("epochs and steps must be non-negative, got $epochs and $steps"))
        net = network(h)
        net.epochs = epochs
        net.rng.state = rng
        net.optsteps = steps
    end
end

# Address and dimensions (as fa_array) of optimiser `optimizer`'s state array `slot` (0-based) for
# array `name` (W, b, gamma, ..., or B under Kolen-Pollack) of node `node` (fa_nodes order, from 1);
# NULL if the network holds no such state. With create != 0 the network without such a state first
# gets a zero one (replacing any other), for a host to fill in place.
function fa_optstate(h::Int64, optimizer::Cstring, create::Cint, slot::Int64, node::Int64, name::Cstring,
                     ptr::Ptr{Ptr{Cvoid}}, dims::Ptr{Int64})::Cint
    guarded() do
        A = FeedbackAlignment.optimiser_buffer(network(h), unsafe_string(optimizer), create != 0, slot + 1, node, unsafe_string(name))
        store_array!(ptr, dims, A)
    end
end

fa_error_message()::Ptr{UInt8} = pointer(ERROR_MESSAGE[])

# Matrix products through the host's BLAS: ILP64 Fortran sgemm and dgemm (both NULL: Julia's own),
# and its `int get_num_threads(void)` (NULL if it has none).
fa_set_blas(sgemm::Ptr{Cvoid}, dgemm::Ptr{Cvoid}, threads::Ptr{Cvoid})::Cint =
    guarded(() -> FeedbackAlignment.use_external_blas!(sgemm, dgemm, threads))

# Threads from now on: n of Julia's threads for products and kernels, Julia's own BLAS serial (the
# host makes a BLAS it handed over with fa_set_blas serial itself).
fa_set_threads(n::Cint)::Cint = guarded(() -> FeedbackAlignment.set_threads!(n))

# "runtime": key=value lines about Julia and its BLAS; "schema": the engine's schema as JSON (rules,
# optimizers, schedules, initialisers, activations, losses, layers: names, parameters, defaults, bounds;
# see schema.jl); "activation", "loss", "rule", "initialiser", "optimizer", "schedule", "layer": the
# names the engine accepts, comma-separated.
function fa_describe(what::Cstring)::Ptr{UInt8}
    w = unsafe_string(what)
    table = w == "activation" ? ACTIVATIONS : w == "loss" ? LOSSES : get(REGISTRIES, w, nothing)
    ANSWER[] = w == "runtime" ? runtime_description() : w == "signatures" ? signature_text() :
               w == "schema" ? schema_answer() :
               table === nothing ? "" : join(sort!(collect(keys(table))), ",")
    return pointer(ANSWER[])
end

# No exception may cross the ABI: a failure answers "" and leaves the message for fa_error_message.
function schema_answer()
    try
        return FeedbackAlignment.schema_text()
    catch e
        ERROR_MESSAGE[] = sprint(showerror, e)
        return ""
    end
end

function runtime_description()
    lines = ["julia_version=$VERSION", "julia_bindir=$(Sys.BINDIR)", "julia_threads=$(Threads.nthreads())",
             "kernel_threads=$(FeedbackAlignment.kernel_threads())",
             "kernel_min_work=$(FeedbackAlignment.MIN_WORK[])",
             "blas=$(blas_config())", "blas_threads=$(openblas_threads())",
             "gemm_threads_seen=$(FeedbackAlignment.blas_threads())",   # of the BLAS the products use, as the engine reads it
             "gemm=$(FeedbackAlignment.EXTERNAL_SGEMM[] == C_NULL ? "julia" : "external")",
             "package_path=$(dirname(dirname(pathof(FeedbackAlignment))))"]
    return join(lines, "\n")
end

# Julia 1.5 and 1.6 expose OpenBLAS directly (ILP64 symbols carry a 64_ suffix); 1.7+ reports
# through libblastrampoline's BLAS.get_config / get_num_threads.
function openblas_threads()
    isdefined(BLAS, :get_num_threads) && return string(BLAS.get_num_threads())
    try
        return string(ccall((:openblas_get_num_threads64_, Base.libblas_name), Cint, ()))
    catch
        return "unknown"
    end
end

blas_config() = isdefined(BLAS, :get_config) ? replace(string(BLAS.get_config()), '\n' => ' ') :
                                               strip(BLAS.openblas_get_config())

include("cabi_diagnostics.jl")

const ENTRY_POINTS = Dict{String,Ptr{Cvoid}}()

fa_lookup(name::Cstring)::Ptr{Cvoid} = get(ENTRY_POINTS, unsafe_string(name), C_NULL)

"Address of `fa_lookup`, the one pointer a host needs to find every other entry point."
lookup_address() = UInt(ENTRY_POINTS["fa_lookup"])

# Every entry point: name, return type, argument types. Hosts check their own declarations against
# the kinds published from this table (`fa_describe("signatures")`), so a mismatch is an error at
# start-up, never a crash.
const SIGNATURES = [
    (:fa_new, Cint, (Ptr{Int64}, Cint, Int64, Ptr{Int64}, Cstring, Cstring, Ptr{Ptr{Cvoid}}, Ptr{Int64})),
    (:fa_free, Cint, (Int64,)),
    (:fa_live_handles, Int64, ()),
    (:fa_nodes, Ptr{UInt8}, (Int64,)),
    (:fa_array, Cint, (Int64, Int64, Cstring, Ptr{Ptr{Cvoid}}, Ptr{Int64})),
    (:fa_forward, Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Cint)),
    (:fa_evaluate, Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Ptr{Float64})),
    (:fa_gradients, Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Ptr{Float64})),
    (:fa_set_mode, Cint, (Int64, Cint)),
    (:fa_conventions, Cint, (Cint,)),
    (:fa_input_gradient, Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Cint, Ptr{Cvoid})),
    (:fa_attack, Cint, (Int64, Cint, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Float64, Float64, Float64, Cint, Int64, Float64,
                        Int64, Int64, Float64, UInt64, Ptr{Cvoid}, Ptr{Int64})),
    (:fa_step, Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Cstring, Ptr{Float64})),
    (:fa_train_epoch, Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Int64, Cint, Cstring, Ptr{Float64})),
    (:fa_state_get, Cint, (Int64, Ptr{Int64}, Ptr{UInt64}, Ptr{Int64})),
    (:fa_state_set, Cint, (Int64, Int64, UInt64, Int64)),
    (:fa_optstate, Cint, (Int64, Cstring, Cint, Int64, Int64, Cstring, Ptr{Ptr{Cvoid}}, Ptr{Int64})),
    (:fa_error_message, Ptr{UInt8}, ()),
    (:fa_set_blas, Cint, (Ptr{Cvoid}, Ptr{Cvoid}, Ptr{Cvoid})),
    (:fa_set_threads, Cint, (Cint,)),
    (:fa_describe, Ptr{UInt8}, (Cstring,)),
    (:fa_lookup, Ptr{Cvoid}, (Cstring,)),
    (:fa_watch_interrupts, Cint, (Cint,)),
    DIAGNOSTICS_SIGNATURES...,
]

# The ABI kind of a type: what a host must pass (pointers of any type are alike).
abi_kind(::Type{<:Union{Ptr,Cstring}}) = "ptr"
abi_kind(::Type{T}) where {T} = lowercase(string(nameof(T)))   # int32, int64, uint64, float64
signature_text() = join(["$name=$(abi_kind(R)):$(join(map(abi_kind, args), ","))" for (name, R, args) in SIGNATURES], "\n")

function __init__()
    # @cfunction pointers are made at load time, never cached in a precompiled image. (Making them all
    # in one compiled function saved ~0.3 s of start-up, but with it the mirror noise's `gaussian`
    # allocated 32 bytes per call and the allocation tests failed: back to one @eval each.)
    for (name, R, args) in SIGNATURES
        ENTRY_POINTS[string(name)] = @eval @cfunction($name, $R, ($(args...),))
    end
end

end # module CABI
