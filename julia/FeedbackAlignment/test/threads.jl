# Threads (threads.jl): the element-wise kernels split over Julia's threads compute what one thread
# computes, and a step allocates nothing with one thread. Included from runtests.jl; the threaded
# paths run when Julia has two threads or more (tests/test_threads.py runs this file under `julia -t 2`).

# Restore the thread settings a testset changes (set_threads! also sets Julia's BLAS threads).
function with_thread_settings(f)
    saved, blas = (FAL.KERNEL_THREADS[], FAL.MIN_WORK[]), tryparse(Int, FAL.CABI.openblas_threads())
    try
        f()
    finally
        FAL.KERNEL_THREADS[], FAL.MIN_WORK[] = saved
        blas === nothing || BLAS.set_num_threads(blas)
    end
end

@testset "threads: partition and settings" begin
    for n in 0:13, p in 1:4
        parts = [FAL.part(1:n, i, p) for i in 1:p]
        @test reduce(vcat, collect.(parts)) == collect(1:n)            # in order, each element once
        @test maximum(length, parts) - minimum(length, parts) <= 1
    end
    @test FAL.part(5:9, 2, 2) == 8:9
    with_thread_settings() do
        @test_throws ArgumentError set_threads!(0)
        err = try set_threads!(Threads.nthreads() + 1) catch e; e end
        @test err isa ArgumentError && occursin("Julia started with $(Threads.nthreads()) thread", err.msg)
        @test set_threads!(1) == 1 && FAL.kernel_threads() == 1
        @test FAL.nparts(10^9) == 1                       # one thread: never split
        FAL.KERNEL_THREADS[] = typemax(Int)
        @test FAL.kernel_threads() == Threads.nthreads()
        FAL.MIN_WORK[] = 100
        @test FAL.nparts(99.5) == 1                       # too little work to split
        @test FAL.nparts(1e9) == Threads.nthreads()
        @test FAL.nparts(250) == min(2, Threads.nthreads())
        @test FAL.blas_threads() == 1                     # set_threads! made the BLAS serial
        BLAS.set_num_threads(2)                           # a BLAS with threads of its own: one pool at a time
        @test FAL.blas_threads() == 2 && FAL.nparts(1e9) == 1
    end
end

# Products split over Julia's threads (blocks along C's longer side, edges on multiples of 16) against
# a product computed in Float64 by plain loops, for every transpose, alpha and beta, blocks with a tail,
# C a part of a larger array, and more threads than blocks.
@testset "threads: products split over threads" begin
    with_thread_settings() do
        set_threads!(Threads.nthreads())
        FAL.MIN_WORK[] = 0.001
        rng = MersenneTwister(23)
        naive(tA, A, tB, B) = [sum(Float64((tA == 'N' ? A[i, l] : A[l, i])) * Float64((tB == 'N' ? B[l, j] : B[j, l]))
                                   for l in 1:(tA == 'N' ? size(A, 2) : size(A, 1)))
                               for i in 1:(tA == 'N' ? size(A, 1) : size(A, 2)), j in 1:(tB == 'N' ? size(B, 2) : size(B, 1))]
        for T in (Float32, Float64), (m, n, k) in ((37, 5, 9), (5, 37, 9), (16, 16, 3), (50, 70, 33), (3, 2, 4)),
                tA in ('N', 'T'), tB in ('N', 'T'), (alpha, beta) in ((1, 0), (T(0.5), T(2)))
            A = randn(rng, T, tA == 'N' ? (m, k) : (k, m))
            B = randn(rng, T, tB == 'N' ? (k, n) : (n, k))
            big = randn(rng, T, m + 3, n + 2)
            C = view(big, 2:m+1, 2:n+1)                   # leading dimension m + 3, not m
            want = alpha .* naive(tA, A, tB, B) .+ beta .* Float64.(C)
            outside = copy(big); outside[2:m+1, 2:n+1] .= 0
            FAL.gemm!(C, tA, A, tB, B, alpha, beta)
            tol = T == Float32 ? 1e-4 : 1e-12
            @test (T, m, n, k, tA, tB, alpha, maximum(abs, C .- want) <= tol * (1 + maximum(abs, want))) ==
                  (T, m, n, k, tA, tB, alpha, true)
            big[2:m+1, 2:n+1] .= 0
            @test big == outside                          # nothing written outside C
        end
        @test FAL.nparts(FAL.NS_MULADD * 50 * 70 * 33) == Threads.nthreads()   # these were split
    end
end

# Train on 1 and on all threads, splitting even these small arrays (MIN_WORK tiny): the parameters
# must be bit-identical for the same thread count, and agree to rounding across counts (each kernel's
# element is computed as in the serial loop; a product's block may take other BLAS kernels); the
# reported loss, summed per part, to rounding.
@testset "threads: kernels give one thread's results" begin
    if Threads.nthreads() < 2
        @info "Julia has one thread: the threaded kernels are tested under `julia -t 2` (tests/test_threads.py)"
    else
        with_thread_settings() do
            FAL.MIN_WORK[] = 0.001   # split even 4 x 25 outputs (their work is some nanoseconds)
            rng = MersenneTwister(21)
            X64, y = randn(rng, 20, 100), rand(rng, 1:4, 100)
            Yr = randn(rng, 4, 100)
            function trained(threads, T, rule, opt, act, loss)
                set_threads!(threads)
                net = Network([20, 16, 12, 4]; activation=act, rule=rule, loss=loss, T=T, seed=1)
                history = learn!(net, T.(X64), loss isa MSE ? T.(Yr) : y; epochs=2, batchsize=25, optimizer=opt)
                return net, history, predict(net, T.(X64)), loss isa MSE ? nothing : predict_proba(net, T.(X64))
            end
            for T in (Float32, Float64), rule in (BP(), FA(), DFA()), opt in (SGD(0.05), SGD(0.05, 0.9), Adam(1e-3)),
                    (act, loss) in ((tanh, CrossEntropy()), (relu, MSE()))
                single, h1, p1, q1 = trained(1, T, rule, opt, act, loss)
                two, h2, p2, q2 = trained(Threads.nthreads(), T, rule, opt, act, loss)
                again, h3, _, _ = trained(Threads.nthreads(), T, rule, opt, act, loss)
                same(a, b) = all(l -> a.layers[l].W == b.layers[l].W && a.layers[l].b == b.layers[l].b, 1:3)
                rtol = T == Float64 ? 1e-12 : 1e-4
                close(a, b) = all(l -> isapprox(a.layers[l].W, b.layers[l].W; rtol=rtol) &&
                                       isapprox(a.layers[l].b, b.layers[l].b; rtol=rtol), 1:3)
                @test (T, rule, opt, act, close(single, two)) == (T, rule, opt, act, true)
                @test same(two, again) && isequal(h2, h3)                         # same threads: bit-identical
                @test all(k -> isapprox(h1[k].loss, h2[k].loss; rtol=rtol), 1:2)
                @test isapprox(p1, p2; rtol=rtol) && (q1 === nothing || isapprox(q1, q2; rtol=rtol))
            end
        end
    end
end

# One thread: nothing allocated per step (speed.jl asserts it for the default settings too). More
# threads: Julia 1.5's @threads allocates per call; the bytes are reported and bounded.
step_bytes(net, X, y, opt) = @allocated step!(net, X, y, opt)   # a function barrier: net's type is known inside

@testset "threads: allocations per step" begin
    with_thread_settings() do
        net = Network([784, 256, 256, 10]; rule=FA(), T=Float32, seed=1)
        rng = MersenneTwister(22)
        X, y = randn(rng, Float32, 784, 512), rand(rng, 1:10, 512)
        opt = SGD(0.01)
        set_threads!(1)
        step_bytes(net, X, y, opt); step_bytes(net, X, y, opt)
        @test step_bytes(net, X, y, opt) == 0
        if Threads.nthreads() >= 2
            set_threads!(Threads.nthreads())
            step_bytes(net, X, y, opt); step_bytes(net, X, y, opt)
            bytes = step_bytes(net, X, y, opt)
            @info "784-256-256-10 FA step, batch 512, $(Threads.nthreads()) threads: $bytes bytes allocated"
            @test 0 < bytes <= 32_000
        end
    end
end
