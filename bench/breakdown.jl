# Where a training step's time goes, inside Julia (no Python, no boundary):
#
#     julia --startup-file=no bench/breakdown.jl [batch ...]
#
# For 784-256-256-10 tanh, float32, each rule: the whole `step!`, the same matrix products alone
# through the package's `gemm!` on the same buffers (Julia's OpenBLAS), and the rest. With
# NUMPY_OPENBLAS naming NumPy's bundled OpenBLAS (scipy-openblas, ILP64, `scipy_` prefix and `64_`
# suffix), the same products also through it, in this process. Rounds are interleaved and the
# best of each counts, so the shares hold on a noisy machine.
push!(LOAD_PATH, joinpath(@__DIR__, "..", "julia"))
using FeedbackAlignment, LinearAlgebra, Libdl
const FA_ = FeedbackAlignment

# Every matrix product of one step, with the buffers the step uses.
function products(net, Xb)
    ws, m, L = net.ws, size(Xb, 2), length(net.layers)
    ops = Any[]
    h = Xb
    for l in 1:L
        push!(ops, (FA_.preact(ws, l, m), 'N', net.layers[l].W, 'N', h))
        l < L && (h = FA_.hidden(ws, l, m))
    end
    for l in L-1:-1:1
        D = FA_.delta(ws, l, m)
        net.rule isa BP && push!(ops, (D, 'T', net.layers[l+1].W, 'N', FA_.delta(ws, l + 1, m)))
        net.rule isa FA && push!(ops, (D, 'N', net.layers[l+1].B, 'N', FA_.delta(ws, l + 1, m)))
        net.rule isa DFA && push!(ops, (D, 'N', net.layers[l].B, 'N', FA_.delta(ws, L, m)))
    end
    for l in 1:L
        push!(ops, (net.grads[l][1], 'N', FA_.delta(ws, l, m), 'T', l == 1 ? Xb : FA_.hidden(ws, l - 1, m)))
    end
    return ops
end

gemms!(ops) = foreach(op -> FA_.gemm!(op...), ops)

const NUMPY_BLAS = get(ENV, "NUMPY_OPENBLAS", "")
const SGEMM = isempty(NUMPY_BLAS) ? C_NULL : Libdl.dlsym(Libdl.dlopen(NUMPY_BLAS), :scipy_sgemm_64_)
isempty(NUMPY_BLAS) || ccall(Libdl.dlsym(Libdl.dlopen(NUMPY_BLAS), :scipy_openblas_set_num_threads64_), Cvoid, (Cint,),
                             ccall((:openblas_get_num_threads64_, Base.libblas_name), Cint, ()))

# C = op(A) * op(B) through NumPy's sgemm (Fortran interface, 64-bit integers).
function numpy_sgemm!(C::Matrix{Float32}, tA::Char, A::Matrix{Float32}, tB::Char, B::Matrix{Float32})
    k = tA == 'N' ? size(A, 2) : size(A, 1)
    ccall(SGEMM, Cvoid, (Ref{UInt8}, Ref{UInt8}, Ref{Int64}, Ref{Int64}, Ref{Int64}, Ref{Float32}, Ptr{Float32}, Ref{Int64},
                         Ptr{Float32}, Ref{Int64}, Ref{Float32}, Ptr{Float32}, Ref{Int64}, Clong, Clong),
          tA, tB, size(C, 1), size(C, 2), k, 1f0, A, max(1, stride(A, 2)), B, max(1, stride(B, 2)), 0f0, C, max(1, stride(C, 2)), 1, 1)
end
numpy_gemms!(ops) = foreach(op -> numpy_sgemm!(op...), ops)

function best(f, reps, rounds)
    t = Inf
    for _ in 1:rounds
        t = min(t, @elapsed(for _ in 1:reps; f(); end) / reps)
    end
    return t
end

batches = isempty(ARGS) ? [32, 128, 512] : parse.(Int, ARGS)
println("Julia $(VERSION), $(BLAS.openblas_get_config()), BLAS threads $(ccall((:openblas_get_num_threads64_, Base.libblas_name), Cint, ()))")
println(rpad("rule", 5), lpad("batch", 6), lpad("step! us", 10), lpad("GEMMs us", 10), lpad("rest us", 9), lpad("step/GEMMs", 11),
        isempty(NUMPY_BLAS) ? "" : lpad("NumPy's BLAS: GEMMs us", 24) * lpad("Julia's/NumPy's", 16))
for m in batches, rule in (BP(), FA(), DFA())
    net = Network([784, 256, 256, 10]; rule=rule, T=Float32)
    X = rand(Float32, 784, m)
    y = FA_.ZeroBasedLabels(rand(0:9, m))
    opt = SGD(0.001)
    step!(net, X, y, opt)
    ops = products(net, X)
    gemms!(ops)
    reps = max(3, 4096 ÷ m)
    ts, tg, tn = Inf, Inf, Inf
    isempty(NUMPY_BLAS) || numpy_gemms!(ops)
    for _ in 1:5   # interleaved
        ts = min(ts, best(() -> step!(net, X, y, opt), reps, 1))
        tg = min(tg, best(() -> gemms!(ops), reps, 1))
        isempty(NUMPY_BLAS) || (tn = min(tn, best(() -> numpy_gemms!(ops), reps, 1)))
    end
    println(rpad(typeof(rule).name.name, 5), lpad(m, 6), lpad(round(ts * 1e6, digits=1), 10),
            lpad(round(tg * 1e6, digits=1), 10), lpad(round((ts - tg) * 1e6, digits=1), 9), lpad(round(ts / tg, digits=2), 11),
            isempty(NUMPY_BLAS) ? "" : lpad(round(tn * 1e6, digits=1), 24) * lpad(round(tg / tn, digits=2), 16))
end
