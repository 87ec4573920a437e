# The element-wise kernels on one thread and split over Julia's threads, in one process.
#
#     julia --startup-file=no -t 2 bench/threads.jl [rounds]
#
# 1. Where splitting pays (MIN_WORK and the per-element costs in src/threads.jl): each threaded kernel
#    at sizes from 1k to 256k elements, serial and split in two, trials interleaved, best of `rounds`.
# 2. A training step of 784-256-256-10 (Float32, tanh, SGD) per rule and batch size on 1 and on all
#    threads (products split into blocks and kernels alike; Julia's BLAS serial, as set_threads!
#    leaves it). Set OPENBLAS_CORETYPE=SkylakeX where Julia 1.5's OpenBLAS does not know the CPU.
# Times are best-of-N per-call seconds; the machine is shared, so compare within a row.
push!(LOAD_PATH, joinpath(@__DIR__, "..", "julia"))
using FeedbackAlignment, LinearAlgebra, Random
const FAL = FeedbackAlignment

rounds = isempty(ARGS) ? 20 : parse(Int, ARGS[1])
BLAS.set_num_threads(1)   # one pool: nothing is split while the BLAS has threads of its own
Threads.nthreads() >= 2 || error("run with julia -t 2 (or more)")
nt = Threads.nthreads()

function best(f, reps)
    f()
    t = Inf
    for _ in 1:reps
        t = min(t, @elapsed f())
    end
    return t
end

# Interleave the variants round by round (a burst of load hits both), keep each one's best.
function compare(variants::Vector{Pair{String,Any}}, rounds, reps)
    times = fill(Inf, length(variants))
    for _ in 1:rounds, (k, (_, setup)) in enumerate(variants)
        f = setup()
        times[k] = min(times[k], best(f, reps))
    end
    return times
end

with_threads(n, f) = () -> (FAL.KERNEL_THREADS[] = n; f)

println("Julia $(VERSION), $(nt) threads; BLAS: $(FAL.CABI.blas_config()), $(FAL.CABI.openblas_threads()) threads")
function kernels_table(rounds, nt)
    println("\n1. kernels, serial vs split over $nt threads (MIN_WORK tiny while measuring); µs per call, best of $rounds")
    println(rpad("kernel", 26), lpad("elements", 10), lpad("serial", 10), lpad("split", 10), lpad("speed-up", 10))
    saved = FAL.MIN_WORK[]
    FAL.MIN_WORK[] = 0.001
    rng = MersenneTwister(1)
    for n in (1024, 4096, 16384, 32768, 65536, 131072, 262144)
        rows = 256
        m = max(1, n ÷ rows)
        A, H, D = randn(rng, Float32, rows, m), zeros(Float32, rows, m), randn(rng, Float32, rows, m)
        b, db = randn(rng, Float32, rows), zeros(Float32, rows)
        P, G, V = randn(rng, Float32, n), randn(rng, Float32, n), [zeros(Float32, n)]
        Z, E, y = randn(rng, Float32, 10, n ÷ 10), zeros(Float32, 10, n ÷ 10), rand(rng, 1:10, n ÷ 10)
        opt = SGD(0.01, 0.9)
        kernels = [("bias_activate! (tanh)", () -> FAL.bias_activate!(H, A, b, tanh)),
                   ("times_deriv! (tanh)", () -> FAL.times_deriv!(D, tanh, A, H)),
                   ("SGD momentum update", () -> FAL.kernel!(opt, P, G, V, 0.01f0, true, 1, true)),
                   ("softmax cross-entropy", () -> FAL.loss_and_error!(E, CrossEntropy(), Z, y))]
        for (name, f) in kernels
            t1, t2 = compare(Pair{String,Any}["1" => with_threads(1, f), "$nt" => with_threads(nt, f)], rounds, 20)
            println(rpad(name, 26), lpad(n, 10), lpad(round(t1 * 1e6, digits=1), 10), lpad(round(t2 * 1e6, digits=1), 10),
                    lpad(round(t1 / t2, digits=2), 10))
        end
    end
    FAL.MIN_WORK[] = saved
end
kernels_table(rounds, nt)

step_bytes(net, X, y, opt) = @allocated step!(net, X, y, opt)

function steps_table(rounds, nt)
    rng = MersenneTwister(2)
    println("\n2. training step, 784-256-256-10 Float32 tanh SGD, serial BLAS; ms per step, best of $rounds")
    println(rpad("rule", 6), lpad("batch", 6), lpad("1 thread", 12), lpad("$nt threads", 12), lpad("speed-up", 10),
            lpad("bytes/step $(nt)T", 18))
    for rule in (BP(), FA(), DFA()), m in (32, 128, 512)
        net = Network([784, 256, 256, 10]; rule=rule, T=Float32, seed=0)
        X, y = rand(rng, Float32, 784, m), rand(rng, 1:10, m)
        opt = SGD(0.01)
        f = () -> step!(net, X, y, opt)
        t1, t2 = compare(Pair{String,Any}["1" => with_threads(1, f), "$nt" => with_threads(nt, f)], rounds, 10)
        FAL.KERNEL_THREADS[] = nt
        bytes = step_bytes(net, X, y, opt)
        println(rpad(nameof(typeof(rule)), 6), lpad(m, 6), lpad(round(t1 * 1e3, digits=3), 12), lpad(round(t2 * 1e3, digits=3), 12),
                lpad(round(t1 / t2, digits=2), 10), lpad(bytes, 18))
    end
end
steps_table(rounds, nt)
