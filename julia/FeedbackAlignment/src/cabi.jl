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
using ..FeedbackAlignment: ACTIVATIONS, LOSSES, REGISTRIES, DivergenceError, Interrupted, ZeroBasedLabels,
    CrossEntropy, Given, outsize, insize, outputs!, predict_proba!, predict_labels!, gradients!,
    train_epoch!, step!, evaluate, interpret, build, feedback_shape

const HANDLES = Dict{Int64,Network}()
const LAST_HANDLE = Ref{Int64}(0)
const ERROR_MESSAGE = Ref{String}("")
const ANSWER = Ref{String}("")          # text answers; valid until the next fa_describe

function guarded(f)
    ERROR_MESSAGE[] = ""   # so a host whose own Ctrl-C handler cut the call short can tell "interrupted" apart
    try
        f()
        return Cint(0)
    catch e
        ERROR_MESSAGE[] = sprint(showerror, e)
        return e isa DivergenceError ? Cint(2) : e isa Interrupted ? Cint(3) : Cint(1)
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
    return [build(e, "initialiser", text) for e in expr.args]
end

eval_literals(e::Expr) = e.head == :vect && all(x -> x isa Real, e.args) ? collect(e.args) :
    throw(ArgumentError("expected a number or a vector of numbers, got $e"))

named(table, what, name::Cstring) = named(table, what, unsafe_string(name))
function named(table, what, s::AbstractString)
    haskey(table, s) || throw(ArgumentError("unknown $what \"$s\"; expected one of $(join(sort!(collect(keys(table))), ", "))"))
    return table[s]
end

matrix(::Type{T}, p::Ptr{Cvoid}, rows, cols) where {T} = unsafe_wrap(Array, Ptr{T}(p), (Int(rows), Int(cols)))
inputs(net::Network{T}, p, n, d) where {T} = matrix(T, p, d, n)
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
    fa_new(out, dtype, nsizes, sizes, spec, given)

`spec` holds `key=value` lines: activation, loss (names), rule, init (see `interpret`), feedback
(one initialiser, or a vector of them, one per layer), dropout (a number or a vector), seed,
feedback_seed. `given[l]`, when not NULL, is a host matrix used as layer l's B itself.
"""
function fa_new(out::Ptr{Int64}, dtype::Cint, nsizes::Int64, sizes::Ptr{Int64}, spec::Cstring,
                given::Ptr{Ptr{Cvoid}})::Cint
    guarded() do
        T = dtype == 0 ? Float32 : dtype == 1 ? Float64 : throw(ArgumentError("unknown dtype code $dtype"))
        widths = copy(unsafe_wrap(Array, sizes, Int(nsizes)))
        opts = Dict{String,String}()
        for line in split(unsafe_string(spec), '\n'; keepempty=false)
            key, value = split(line, '='; limit=2)
            opts[strip(key)] = strip(value)
        end
        rule = interpret(get(opts, "rule", "fa"), "rule")
        feedback = Any[f for f in initialisers(get(opts, "feedback", "glorot_uniform"), length(widths) - 1)]
        for l in eachindex(feedback)
            p = unsafe_load(given, l)
            shape = feedback_shape(rule, widths, l)
            p == C_NULL || shape === nothing || (feedback[l] = Given(unsafe_wrap(Array, Ptr{T}(p), shape)))
        end
        dropout = Meta.parse(get(opts, "dropout", "0.0"))
        net = Network(widths; T=T, rule=rule, feedback=feedback,
                      seed=parse(UInt64, get(opts, "seed", "0")),
                      feedback_seed=parse(UInt64, get(opts, "feedback_seed", get(opts, "seed", "0"))),
                      activation=named(ACTIVATIONS, "activation", get(opts, "activation", "tanh")),
                      loss=named(LOSSES, "loss", get(opts, "loss", "cross_entropy")),
                      init=interpret(get(opts, "init", "glorot_uniform"), "initialiser"),
                      dropout=dropout isa Expr ? Float64.(eval_literals(dropout)) : Float64(dropout))
        h = LAST_HANDLE[] += 1
        HANDLES[h] = net
        unsafe_store!(out, h)
    end
end

fa_free(h::Int64)::Cint = guarded(() -> (network(h); delete!(HANDLES, h)))

fa_live_handles()::Int64 = length(HANDLES)

# Address and Julia dimensions of layer `layer`'s W (which = 0), b (1) or B (2; NULL if none).
function fa_param(h::Int64, layer::Int64, which::Cint, ptr::Ptr{Ptr{Cvoid}}, dims::Ptr{Int64})::Cint
    guarded() do
        d = network(h).layers[layer]
        A = which == 0 ? d.W : which == 1 ? d.b : which == 2 ? d.B : throw(ArgumentError("which must be 0, 1 or 2"))
        unsafe_store!(ptr, A === nothing ? C_NULL : Ptr{Cvoid}(pointer(A)))
        unsafe_store!(dims, A === nothing ? 0 : size(A, 1), 1)
        unsafe_store!(dims, A === nothing ? 0 : size(A, 2), 2)
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

# Writes each layer's (dW, db) into the caller's buffers (addresses in dW[l], db[l]).
function fa_gradients(h::Int64, X::Ptr{Cvoid}, n::Int64, d::Int64, Y::Ptr{Cvoid},
                      dW::Ptr{Ptr{Cvoid}}, db::Ptr{Ptr{Cvoid}}, loss::Ptr{Float64})::Cint
    guarded() do
        net = network(h)
        T = eltype(net)
        grads = [(matrix(T, unsafe_load(dW, l), size(layer.W)...),
                  unsafe_wrap(Array, Ptr{T}(unsafe_load(db, l)), length(layer.b)))
                 for (l, layer) in enumerate(net.layers)]
        unsafe_store!(loss, gradients!(grads, net, inputs(net, X, n, d), targets(net, Y, n)))
    end
end

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

# Training state that model files carry: epochs trained so far and the network generator's state.
function fa_state_get(h::Int64, epochs::Ptr{Int64}, rng::Ptr{UInt64})::Cint
    guarded() do
        net = network(h)
        unsafe_store!(epochs, net.epochs)
        unsafe_store!(rng, net.rng.state)
    end
end

function fa_state_set(h::Int64, epochs::Int64, rng::UInt64)::Cint
    guarded() do
        epochs >= 0 || throw(ArgumentError("epochs must be non-negative, got $epochs"))
        net = network(h)
        net.epochs = epochs
        net.rng.state = rng
    end
end

# Address and Julia dimensions of optimiser `optimizer`'s state array `slot` (0-based) for layer
# `layer`'s W (which = 0) or b (1); NULL if the network holds no such state. With create != 0 the
# network without such a state first gets a zero one (replacing any other), for a host to fill in place.
function fa_optstate(h::Int64, optimizer::Cstring, create::Cint, slot::Int64, layer::Int64, which::Cint,
                     ptr::Ptr{Ptr{Cvoid}}, dims::Ptr{Int64})::Cint
    guarded() do
        A = FeedbackAlignment.optimiser_buffer(network(h), unsafe_string(optimizer), create != 0, slot + 1, layer, which + 1)
        unsafe_store!(ptr, A === nothing ? C_NULL : Ptr{Cvoid}(pointer(A)))
        unsafe_store!(dims, A === nothing ? 0 : size(A, 1), 1)
        unsafe_store!(dims, A === nothing ? 0 : size(A, 2), 2)
    end
end

fa_error_message()::Ptr{UInt8} = pointer(ERROR_MESSAGE[])

# Matrix products through the host's BLAS: ILP64 Fortran sgemm and dgemm (both NULL: Julia's own).
fa_set_blas(sgemm::Ptr{Cvoid}, dgemm::Ptr{Cvoid})::Cint =
    guarded(() -> FeedbackAlignment.use_external_blas!(sgemm, dgemm))

# "runtime": key=value lines about Julia and its BLAS; "activation", "loss", "rule", "initialiser",
# "optimizer", "schedule": the names the engine accepts, comma-separated.
function fa_describe(what::Cstring)::Ptr{UInt8}
    w = unsafe_string(what)
    table = w == "activation" ? ACTIVATIONS : w == "loss" ? LOSSES : get(REGISTRIES, w, nothing)
    ANSWER[] = w == "runtime" ? runtime_description() :
               table === nothing ? "" : join(sort!(collect(keys(table))), ",")
    return pointer(ANSWER[])
end

function runtime_description()
    lines = ["julia_version=$VERSION", "julia_bindir=$(Sys.BINDIR)", "julia_threads=$(Threads.nthreads())",
             "blas=$(blas_config())", "blas_threads=$(openblas_threads())",
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

function __init__()
    # @cfunction pointers are made at load time, never cached in a precompiled image.
    merge!(ENTRY_POINTS, Dict(
        "fa_new" => @cfunction(fa_new, Cint, (Ptr{Int64}, Cint, Int64, Ptr{Int64}, Cstring, Ptr{Ptr{Cvoid}})),
        "fa_free" => @cfunction(fa_free, Cint, (Int64,)),
        "fa_live_handles" => @cfunction(fa_live_handles, Int64, ()),
        "fa_param" => @cfunction(fa_param, Cint, (Int64, Int64, Cint, Ptr{Ptr{Cvoid}}, Ptr{Int64})),
        "fa_forward" => @cfunction(fa_forward, Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Cint)),
        "fa_evaluate" => @cfunction(fa_evaluate, Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Ptr{Float64})),
        "fa_gradients" => @cfunction(fa_gradients, Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Ptr{Ptr{Cvoid}}, Ptr{Ptr{Cvoid}}, Ptr{Float64})),
        "fa_step" => @cfunction(fa_step, Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Cstring, Ptr{Float64})),
        "fa_train_epoch" => @cfunction(fa_train_epoch, Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Int64, Cint, Cstring, Ptr{Float64})),
        "fa_state_get" => @cfunction(fa_state_get, Cint, (Int64, Ptr{Int64}, Ptr{UInt64})),
        "fa_state_set" => @cfunction(fa_state_set, Cint, (Int64, Int64, UInt64)),
        "fa_optstate" => @cfunction(fa_optstate, Cint, (Int64, Cstring, Cint, Int64, Int64, Cint, Ptr{Ptr{Cvoid}}, Ptr{Int64})),
        "fa_error_message" => @cfunction(fa_error_message, Ptr{UInt8}, ()),
        "fa_set_blas" => @cfunction(fa_set_blas, Cint, (Ptr{Cvoid}, Ptr{Cvoid})),
        "fa_describe" => @cfunction(fa_describe, Ptr{UInt8}, (Cstring,)),
        "fa_lookup" => @cfunction(fa_lookup, Ptr{Cvoid}, (Cstring,)),
        "fa_watch_interrupts" => @cfunction(fa_watch_interrupts, Cint, (Cint,)),
    ))
    merge!(ENTRY_POINTS, diagnostics_entry_points())
end

end # module CABI
