# Where a training step's time goes, inside Julia (no Python, no boundary), at 1 and at all of
# Julia's threads:
#
#     julia --startup-file=no -t 2 bench/breakdown.jl [batch ...]
#
# For 784-256-256-10 tanh, Float32, BP/FA/DFA: the whole `step!`, its forward-loss-backward
# (`loss_and_grads!`) and its update (`update!`), and the same matrix products alone through the
# package's `gemm!` on the step's own buffers. The step cycles through 32 batches (the products
# alone see one), as training does. With NUMPY_OPENBLAS naming NumPy's bundled OpenBLAS
# (scipy-openblas, ILP64: numpy.libs/libscipy_openblas64_*.so) the products go through it, as they
# do when Python hosts the engine; otherwise through Julia's own (set OPENBLAS_CORETYPE=SkylakeX on
# CPUs Julia 1.5's OpenBLAS does not know). Rounds are interleaved and the best of each counts.
push!(LOAD_PATH, joinpath(@__DIR__, "..", "julia"))
using FeedbackAlignment, LinearAlgebra, Libdl, Random
const FAL = FeedbackAlignment

const NUMPY_BLAS = get(ENV, "NUMPY_OPENBLAS", "")
if !isempty(NUMPY_BLAS)
    lib = Libdl.dlopen(NUMPY_BLAS)
    FAL.use_external_blas!(Libdl.dlsym(lib, :scipy_sgemm_64_), Libdl.dlsym(lib, :scipy_dgemm_64_),
                           Libdl.dlsym(lib, :scipy_openblas_get_num_threads64_))
    ccall(Libdl.dlsym(lib, :scipy_openblas_set_num_threads64_), Cvoid, (Cint,), 1)   # as set_threads does
end

# Every matrix product of one step, on the step's buffers, for a dense chain.
function products(net, X, m)
    L = length(net.layers)
    b(l) = FAL.buffers(net.layers[l], m)
    input(l) = l == 1 ? X : b(l - 1).H
    ops = Any[(b(l).A, 'N', net.layers[l].W, 'N', input(l)) for l in 1:L]
    for l in L-1:-1:1
        net.rule isa BP && push!(ops, (b(l).D, 'T', net.layers[l+1].W, 'N', b(l + 1).D))
        net.rule isa FA && push!(ops, (b(l).D, 'N', net.layers[l+1].B, 'N', b(l + 1).D))
        net.rule isa DFA && push!(ops, (b(l).D, 'N', net.layers[l].B, 'N', b(L).D))
    end
    append!(ops, [(net.layers[l].dW, 'N', b(l).D, 'T', input(l)) for l in 1:L])
    return ops
end

function best(f, reps, rounds=1)
    t = Inf
    for _ in 1:rounds
        t = min(t, @elapsed(for _ in 1:reps; f(); end) / reps)
    end
    return t
end

us(t) = lpad(round(t * 1e6, digits=1), 9)
batches = isempty(ARGS) ? [32, 128, 512] : parse.(Int, ARGS)
nt = Threads.nthreads()
println("Julia $(VERSION), $nt thread(s); products through ", isempty(NUMPY_BLAS) ? "Julia's OpenBLAS" : "NumPy's OpenBLAS ($(basename(NUMPY_BLAS)))",
        "; µs per call, best of 7 interleaved rounds")
println(rpad("rule", 5), lpad("batch", 6), lpad("threads", 8), lpad("step!", 9), lpad("fwd+bwd", 9), lpad("update", 9),
        lpad("products", 9), lpad("rest", 9), lpad("step/products", 14))
rng = MersenneTwister(1)
for m in batches, rule in (BP(), FA(), DFA())
    net = Network([784, 256, 256, 10]; rule=rule, T=Float32, seed=0)
    Xs, ys = [rand(rng, Float32, 784, m) for _ in 1:32], [rand(rng, 1:10, m) for _ in 1:32]
    opt = SGD(0.01)
    k = Ref(0)
    next() = (k[] = mod1(k[] + 1, 32))
    step!(net, Xs[1], ys[1], opt)
    ops = products(net, Xs[1], m)
    reps = max(3, 4096 ÷ m)
    counts = unique([1, nt])
    t = Dict{Tuple{Symbol,Int},Float64}()
    for _ in 1:7, threads in counts
        set_threads!(threads)
        for (name, f) in ((:step, () -> (i = next(); step!(net, Xs[i], ys[i], opt))),
                          (:grads, () -> (i = next(); FAL.loss_and_grads!(net, Xs[i], ys[i], true))),
                          (:update, () -> FAL.update!(net, opt)),
                          (:products, () -> foreach(op -> FAL.gemm!(op...), ops)))
            f()
            t[(name, threads)] = min(get(t, (name, threads), Inf), best(f, reps))
        end
    end
    for threads in counts
        s, p = t[(:step, threads)], t[(:products, threads)]
        println(rpad(nameof(typeof(rule)), 5), lpad(m, 6), lpad(threads, 8), us(s), us(t[(:grads, threads)]),
                us(t[(:update, threads)]), us(p), us(s - p), lpad(round(s / p, digits=2), 14))
    end
end
set_threads!(1)
