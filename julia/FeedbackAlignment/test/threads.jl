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
    end
end

# Train with the kernels on 1 and on all threads (the BLAS keeps its count, so only the kernels
# differ), splitting even these small arrays (MIN_WORK tiny): the parameters must be bit-identical,
# since each element is computed as in the serial loop; the reported loss, summed per part, to rounding.
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
                FAL.KERNEL_THREADS[] = threads
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
                @test (T, rule, opt, act, same(single, two)) == (T, rule, opt, act, true)
                @test same(two, again) && isequal(h2, h3)                         # same threads: bit-identical
                @test all(k -> isapprox(h1[k].loss, h2[k].loss; rtol=1e-12), 1:2)
                @test all(k -> h1[k].accuracy === h2[k].accuracy, 1:2)
                @test p1 == p2 && q1 == q2
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
        FAL.KERNEL_THREADS[] = 1
        step_bytes(net, X, y, opt); step_bytes(net, X, y, opt)
        @test step_bytes(net, X, y, opt) == 0
        if Threads.nthreads() >= 2
            FAL.KERNEL_THREADS[] = Threads.nthreads()
            step_bytes(net, X, y, opt); step_bytes(net, X, y, opt)
            bytes = step_bytes(net, X, y, opt)
            @info "784-256-256-10 FA step, batch 512, $(Threads.nthreads()) threads: $bytes bytes allocated"
            @test 0 < bytes <= 32_000
        end
    end
end
