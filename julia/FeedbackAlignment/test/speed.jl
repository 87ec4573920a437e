# Tests of the speed work: the Float64 tanh, matrix products through an external BLAS, steps that
# allocate nothing, and the workspace's column cuts. Included from runtests.jl.

# Float64 tanh from expm1: within a few ulp of tanh (checked in BigFloat), odd, exact at 0, ±1 far out.
@testset "tanh_fast (Float64)" begin
    xs = [range(-25, 25, length=20001); 10.0 .^ (-20:0.25:1.5); -(10.0 .^ (-20:0.25:1.5))]
    exact = [Float64(tanh(big(x))) for x in xs]
    ulps = [abs(FAL.tanh_fast(x) - e) / eps(max(abs(e), floatmin(Float64))) for (x, e) in zip(xs, exact)]
    @test maximum(ulps) <= 3
    @test FAL.tanh_fast(0.0) === 0.0 && FAL.tanh_fast(-0.0) === -0.0
    @test FAL.tanh_fast(Inf) == 1.0 && FAL.tanh_fast(-Inf) == -1.0 && isnan(FAL.tanh_fast(NaN))
    @test all(x -> FAL.tanh_fast(-x) == -FAL.tanh_fast(x), xs)
    @test FAL.activate(tanh, 0.3) === FAL.tanh_fast(0.3)
end

# An external ILP64 gemm (here Julia's own OpenBLAS entered through its Fortran symbol, the
# interface NumPy's scipy-openblas has) gives what BLAS.gemm! gives, for every transpose, alpha and beta.
@testset "external BLAS" begin
    sym(name) = @eval cglobal(($(QuoteNode(name)), $(Base.libblas_name)))
    sgemm, dgemm = sym(:sgemm_64_), sym(:dgemm_64_)
    rng = MersenneTwister(3)
    try
        FAL.use_external_blas!(sgemm, dgemm)
        for T in (Float32, Float64), tA in ('N', 'T'), tB in ('N', 'T')
            A = tA == 'N' ? randn(rng, T, 5, 7) : randn(rng, T, 7, 5)
            B = tB == 'N' ? randn(rng, T, 7, 3) : randn(rng, T, 3, 7)
            C0 = randn(rng, T, 5, 3)
            C = copy(C0)
            FAL.gemm!(C, tA, A, tB, B, 2, 0.5)
            @test C ≈ 2 * (tA == 'N' ? A : transpose(A)) * (tB == 'N' ? B : transpose(B)) + 0.5 * C0
        end
        # a column view of a larger matrix: leading dimension is the parent's
        P, A = randn(rng, 6, 10), randn(rng, 4, 6)
        C = zeros(4, 3)
        FAL.gemm!(C, 'N', A, 'N', view(P, :, 2:4))
        @test C ≈ A * P[:, 2:4]
        @test_throws DimensionMismatch FAL.gemm!(zeros(4, 3), 'N', zeros(5, 7), 'N', zeros(7, 3))
        net = Network([6, 5, 4, 3]; rule=FA(), T=Float64, seed=2)
        X, y = randn(rng, 6, 9), rand(rng, 1:3, 9)
        external = gradients(net, X, y)
        FAL.use_external_blas!(C_NULL, C_NULL)
        own = gradients(net, X, y)
        @test all(e[1] ≈ o[1] && e[2] ≈ o[2] for (e, o) in zip(external, own))
        @test_throws ArgumentError FAL.use_external_blas!(sgemm, C_NULL)
    finally
        FAL.use_external_blas!(C_NULL, C_NULL)
    end
end

# After a warm-up, a training step and an epoch allocate nothing, for the rules and optimisers
# whose state is plain arrays (Julia's allocation counter; not a timing).
@testset "no allocations in the steady state" begin
    epoch_allocs(net, X, y, opt) = @allocated train_epoch!(net, X, y, opt; batchsize=32)
    step_allocs(net, X, y, opt) = @allocated step!(net, X, y, opt)
    rng = MersenneTwister(5)
    for T in (Float32, Float64), rule in (BP(), FA(), DFA(), KolenPollack(), DRTP()),
            opt in (SGD(0.01), SGD(0.01, 0.9), Adam(1e-3))
        net = Network([20, 16, 12, 4]; rule=rule, T=T, seed=1)
        X, y = randn(rng, T, 20, 100), rand(rng, 1:4, 100)    # 100 = 3 batches of 32 and one of 4
        Xb, yb = X[:, 1:32], y[1:32]
        for _ in 1:2
            step_allocs(net, Xb, yb, opt); epoch_allocs(net, X, y, opt)
        end
        @test (T, rule, opt, step_allocs(net, Xb, yb, opt)) == (T, rule, opt, 0)
        @test (T, rule, opt, epoch_allocs(net, X, y, opt)) == (T, rule, opt, 0)
    end
end

# A batch smaller than the workspace works in the buffers' first columns, and gives what a network
# whose workspace has exactly that size gives.
@testset "workspace column cuts" begin
    rng = MersenneTwister(6)
    X, y = randn(rng, 8, 50), rand(rng, 1:3, 50)
    a = Network([8, 6, 3]; rule=FA(), T=Float64, seed=3)
    FAL.workspace!(a, 50)
    for m in (7, 13, 7, 50, 1, 2, 3, 4, 5)       # more sizes than the workspace keeps cuts for
        fresh = Network([8, 6, 3]; rule=FA(), T=Float64, seed=3)      # its workspace is exactly m wide
        @test gradients(a, X[:, 1:m], y[1:m]) == gradients(fresh, X[:, 1:m], y[1:m])
    end
    # every Sized set of buffers (the network's inputs, each layer's) keeps MAX_CUTS cuts, each a
    # prefix of its full buffers' memory
    @test all(st -> [c.m for c in st.buffers.cuts] == [5, 4, 3, 2], a.layers)   # the newest MAX_CUTS
    @test FAL.MAX_CUTS == 4
    b3 = FAL.batch(a, 3)                         # the network's own batch buffers are cut alike
    @test b3.m == 3 && size(b3.X) == (8, 3) && pointer(b3.X) == pointer(a.inputs.full.X) && FAL.batch(a, 3) === b3
    for st in a.layers, c in st.buffers.cuts
        @test pointer(FAL.preactivations(c)) == pointer(FAL.preactivations(st.buffers.full)) && pointer(c.H) == pointer(st.buffers.full.H)
        @test pointer(c.D) == pointer(st.buffers.full.D) && size(c.D) == (st.outsize..., c.m)
    end
end
