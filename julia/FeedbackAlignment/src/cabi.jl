"""
The flat C ABI that Python (or any C caller) drives: entry points that take raw pointers, sizes and
network handles, made with `@cfunction` and looked up by name through `fa_lookup`. Julia exceptions
never cross it: each entry returns a status (0 ok, 1 error, 2 training diverged) and the message is
read with `fa_error_message`. Arrays are wrapped in place, never copied: a C-ordered (n, d) array
is Julia's (d, n) matrix. The handle table is the package's one piece of global state.
"""
module CABI

using LinearAlgebra
using ..FeedbackAlignment
using ..FeedbackAlignment: ACTIVATIONS, RULES, LOSSES, OPTIMISERS, DivergenceError, ZeroBasedLabels,
    CrossEntropy, outsize, insize, outputs!, predict_proba!, predict_labels!, gradients!,
    train_epoch!, step!, evaluate

const HANDLES = Dict{Int64,Network}()
const LAST_HANDLE = Ref{Int64}(0)
const ERROR_MESSAGE = Ref{String}("")
const ANSWER = Ref{String}("")          # text answers; valid until the next fa_describe

function guarded(f)
    try
        f()
        return Cint(0)
    catch e
        ERROR_MESSAGE[] = sprint(showerror, e)
        return e isa DivergenceError ? Cint(2) : Cint(1)
    end
end

network(h::Int64) = get(() -> throw(ArgumentError("no network with handle $h (it was freed, or never created)")),
                        HANDLES, h)

function named(table, what, name::Cstring)
    s = unsafe_string(name)
    haskey(table, s) || throw(ArgumentError("unknown $what \"$s\"; expected one of $(join(sort!(collect(keys(table))), ", "))"))
    return table[s]
end

matrix(::Type{T}, p::Ptr{Cvoid}, rows, cols) where {T} = unsafe_wrap(Array, Ptr{T}(p), (Int(rows), Int(cols)))
inputs(net::Network{T}, p, n, d) where {T} = matrix(T, p, d, n)
targets(net::Network{T}, p, n) where {T} =
    net.loss isa CrossEntropy ? ZeroBasedLabels(unsafe_wrap(Array, Ptr{Int64}(p), Int(n))) : matrix(T, p, outsize(net), n)
optimiser(name, hyper::Ptr{Float64}, nhyper) = named(OPTIMISERS, "optimizer", name)(unsafe_wrap(Array, hyper, Int(nhyper)))

function fa_new(out::Ptr{Int64}, dtype::Cint, nsizes::Int64, sizes::Ptr{Int64}, activation::Cstring,
                rule::Cstring, loss::Cstring, seed::UInt64, feedback_seed::UInt64)::Cint
    guarded() do
        T = dtype == 0 ? Float32 : dtype == 1 ? Float64 : throw(ArgumentError("unknown dtype code $dtype"))
        net = Network(copy(unsafe_wrap(Array, sizes, Int(nsizes))); T=T, seed=seed, feedback_seed=feedback_seed,
                      activation=named(ACTIVATIONS, "activation", activation),
                      rule=named(RULES, "rule", rule), loss=named(LOSSES, "loss", loss))
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
                 hyper::Ptr{Float64}, nhyper::Int64, loss::Ptr{Float64})::Cint
    guarded() do
        net = network(h)
        unsafe_store!(loss, step!(net, inputs(net, X, n, d), targets(net, Y, n), optimiser(opt, hyper, nhyper)))
    end
end

# One epoch; out receives (mean loss, accuracy, epochs trained so far).
function fa_train_epoch(h::Int64, X::Ptr{Cvoid}, n::Int64, d::Int64, Y::Ptr{Cvoid}, batchsize::Int64,
                        shuffle::Cint, opt::Cstring, hyper::Ptr{Float64}, nhyper::Int64, out::Ptr{Float64})::Cint
    guarded() do
        net = network(h)
        r = train_epoch!(net, inputs(net, X, n, d), targets(net, Y, n), optimiser(opt, hyper, nhyper);
                         batchsize=batchsize, shuffle=shuffle != 0, observe=tracker_of(net))
        unsafe_store!(out, r.loss, 1)
        unsafe_store!(out, r.accuracy, 2)
        unsafe_store!(out, net.epochs, 3)
    end
end

fa_error_message()::Ptr{UInt8} = pointer(ERROR_MESSAGE[])

# "runtime": key=value lines about Julia and its BLAS; "activation", "rule", "loss", "optimizer":
# the names the engine accepts, comma-separated.
function fa_describe(what::Cstring)::Ptr{UInt8}
    w = unsafe_string(what)
    ANSWER[] = w == "runtime" ? runtime_description() :
               w == "activation" ? join(sort!(collect(keys(ACTIVATIONS))), ",") :
               w == "rule" ? join(sort!(collect(keys(RULES))), ",") :
               w == "loss" ? join(sort!(collect(keys(LOSSES))), ",") :
               w == "optimizer" ? join(sort!(collect(keys(OPTIMISERS))), ",") : ""
    return pointer(ANSWER[])
end

function runtime_description()
    lines = ["julia_version=$VERSION", "julia_bindir=$(Sys.BINDIR)", "julia_threads=$(Threads.nthreads())",
             "blas=$(blas_config())", "blas_threads=$(openblas_threads())",
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
        "fa_new" => @cfunction(fa_new, Cint, (Ptr{Int64}, Cint, Int64, Ptr{Int64}, Cstring, Cstring, Cstring, UInt64, UInt64)),
        "fa_free" => @cfunction(fa_free, Cint, (Int64,)),
        "fa_live_handles" => @cfunction(fa_live_handles, Int64, ()),
        "fa_param" => @cfunction(fa_param, Cint, (Int64, Int64, Cint, Ptr{Ptr{Cvoid}}, Ptr{Int64})),
        "fa_forward" => @cfunction(fa_forward, Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Cint)),
        "fa_evaluate" => @cfunction(fa_evaluate, Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Ptr{Float64})),
        "fa_gradients" => @cfunction(fa_gradients, Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Ptr{Ptr{Cvoid}}, Ptr{Ptr{Cvoid}}, Ptr{Float64})),
        "fa_step" => @cfunction(fa_step, Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Cstring, Ptr{Float64}, Int64, Ptr{Float64})),
        "fa_train_epoch" => @cfunction(fa_train_epoch, Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Int64, Cint, Cstring, Ptr{Float64}, Int64, Ptr{Float64})),
        "fa_error_message" => @cfunction(fa_error_message, Ptr{UInt8}, ()),
        "fa_describe" => @cfunction(fa_describe, Ptr{UInt8}, (Cstring,)),
        "fa_lookup" => @cfunction(fa_lookup, Ptr{Cvoid}, (Cstring,)),
    ))
    merge!(ENTRY_POINTS, diagnostics_entry_points())
end

end # module CABI
