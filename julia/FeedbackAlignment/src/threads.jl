# Work on Julia's threads.
#
# One pool of threads at a time. Two pools on the same cores (Julia's threads for the element-wise
# work and the BLAS's own for the products) made a 2-thread step 4-14x slower than a 1-thread one
# here: each pool's idle threads spin for milliseconds after their work, so three busy threads
# shared two cores (bench/results_threads.txt at 3196b88). So with `set_threads!(n)` the BLAS is
# serial and the package splits its products over Julia's threads itself (`split_gemm!`, blas.jl);
# whenever the BLAS has more than one thread (a host or user set it so) everything here stays
# serial and the BLAS's threads alone speed up the products.
#
# The rest of a step (bias and activation, the activation's derivative, softmax and loss, optimiser
# updates) is split into a fixed number of contiguous parts, one per thread, when there is enough of
# it to pay for the threads: Julia 1.5's `@threads` cost 2-6.5 µs and 1.6 KB per call while the
# other threads were awake (~50 µs when one must be woken, and a scheduler tick, 4 ms, on a machine
# whose cores are busy). Each part computes its elements exactly as the serial loop does, so the
# kernels never change a result; only a reported loss, added part by part, may differ in its last
# bits (and a split product by the BLAS's rounding, blas.jl). (Bias gradients stay serial: split
# over rows so that each sum keeps its order, they ran 2x slower, bench/threads.jl.)

const KERNEL_THREADS = Ref(typemax(Int))   # the kernels use at most this many of Julia's threads
# Work is counted in nanoseconds of one thread's time, estimated per element from serial timings
# (bench/threads.jl, Float32, AMD EPYC): a part must hold at least MIN_WORK of it. With the 2-6.5 µs
# a call costs, two parts start to win from about 8 µs of serial work and clearly (1.4-2x) from 15.
const MIN_WORK = Ref(8000.0)
const NS_ACTIVATE = 0.4    # bias add and tanh_fast, per element
const NS_DERIV = 0.08      # times the activation's derivative
const NS_UPDATE = 0.15     # an SGD (momentum) update; Adam's costs more, so it splits no later
const NS_SOFTMAX = 8.0     # softmax and cross-entropy (an exp and a log per element; not vectorised)
const NS_MULADD = 0.016    # a Float32 GEMM multiply-add (Float64: twice), OpenBLAS SkylakeX kernels

"""
    set_threads!(n) -> n

Use `n` of Julia's threads from now on, for the matrix products (split into blocks, each a serial
BLAS call) and the element-wise kernels alike; Julia's BLAS is made serial (one pool of threads,
see above). Julia's thread count is fixed when it starts (`julia -t n`, or `JULIA_NUM_THREADS`);
`n` may not exceed it. Results do not depend on `n` beyond the BLAS's rounding. (A host that hands
over its own BLAS, `use_external_blas!`, makes that one serial too.)
"""
function set_threads!(n::Integer)
    n >= 1 || throw(ArgumentError("threads must be a positive integer, got $n"))
    n <= Threads.nthreads() ||
        throw(ArgumentError("threads is $n, but Julia started with $(Threads.nthreads()) thread(s); start it with `julia -t $n` (or JULIA_NUM_THREADS=$n)"))
    KERNEL_THREADS[] = n
    BLAS.set_num_threads(1)
    return Int(n)
end

"How many of Julia's threads the kernels and products use (while the BLAS is serial, `nparts`)."
kernel_threads() = min(KERNEL_THREADS[], Threads.nthreads())

"""
Into how many parts `work` (estimated serial nanoseconds) is split: 1 with one thread, too little
work, or a BLAS with threads of its own.
"""
@inline function nparts(work::Real)
    t = kernel_threads()
    t == 1 && return 1
    blas_threads() == 1 || return 1
    return clamp(unsafe_trunc(Int, work / MIN_WORK[]), 1, t)
end

"Part `i` of `p` contiguous, nearly equal parts of `r`, in order."
@inline function part(r::UnitRange{Int}, i::Int, p::Int)
    q, extra = divrem(length(r), p)
    lo = first(r) + (i - 1) * q + min(i - 1, extra)
    return lo:(lo + q - 1 + (i <= extra))
end

# Kernels call these only when nparts(work) > 1, with a closure made in that branch: a closure that
# holds numbers and is passed to a function not inlined is allocated (32-112 bytes per call in Julia
# 1.5), so the serial path calls the kernel's part function directly and allocates nothing.

"Call `f(part)` for each of `p` parts of the range `r`, on Julia's threads."
@noinline function threaded_parts(f::F, r::UnitRange{Int}, p::Int) where {F}
    Threads.@threads for i in 1:p
        f(part(r, i, p))
    end
    return nothing
end

"`f` of each of `p` parts of `r` on Julia's threads, combined with `op` from `init` in part order."
@noinline function threaded_reduce(f::F, op::O, init::R, r::UnitRange{Int}, p::Int) where {F,O,R}
    results = Vector{R}(undef, p)
    Threads.@threads for i in 1:p
        results[i] = f(part(r, i, p))
    end
    acc = init
    for x in results
        acc = op(acc, x)
    end
    return acc
end
