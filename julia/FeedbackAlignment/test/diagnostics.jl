# Alignment diagnostics, the tracking hook and the teacher-student experiments (included by runtests.jl,
# whose helpers `preactivations` and `copy_params!` it uses).

# Two rules defined here, outside the package, to show that diagnostics work for rules they have
# never heard of: a scaled FA (same directions as FA) and one that sends hidden layers nothing.
# HalfFA carries errors back as FA does (its B in W's place); the test gives it half of FA's B, so
# the error it carries is halved at every layer it passes.
struct HalfFA <: LearningRule end
FAL.feedback_shape(::HalfFA, args...) = FAL.feedback_shape(FA(), args...)
FAL.carries(::HalfFA, n) = n.upstream
FAL.exact(::HalfFA) = false
FAL.feedback_target(::HalfFA, net::Network, l) = FAL.feedback_target(FA(), net, l)
struct OutputOnly <: LearningRule end   # carries nothing back: the default of a rule

degrees(a, b) = acosd(clamp(dot(a, b) / (norm(a) * norm(b)), -1, 1))

@testset "alignment diagnostics" begin
    rng = MersenneTwister(21)
    sizes = [6, 5, 4, 3]
    X, y = randn(rng, 6, 9), rand(rng, 1:3, 9)

    # FA by hand: deltas, updates, W-vs-B, e^T W B e per sample
    fa = Network(sizes; rule=FA(), seed=3, T=Float64)
    A1, A2, Z = preactivations(fa, X)
    P = exp.(Z .- maximum(Z; dims=1)); P ./= sum(P; dims=1)
    E = (P .- (1:3 .== permutedims(y))) ./ length(y)
    d = 1 .- tanh.(A2) .^ 2, 1 .- tanh.(A1) .^ 2
    W, B = [l.W for l in fa.layers], [l.B for l in fa.layers]
    bp2 = (W[3]' * E) .* d[1];  fa2 = (B[3] * E) .* d[1]
    bp1 = (W[2]' * bp2) .* d[2]; fa1 = (B[2] * fa2) .* d[2]
    a = alignment(fa, X, y)
    @test [r.role for r in a] == [:feedback, :feedback, :output]
    @test a[1].delta_angle ≈ degrees(fa1, bp1) rtol=1e-10
    @test a[2].delta_angle ≈ degrees(fa2, bp2) rtol=1e-10
    @test a[1].update_angle ≈ degrees(fa1 * X', bp1 * X') rtol=1e-10
    @test a[2].update_angle ≈ degrees(fa2 * tanh.(A1)', bp2 * tanh.(A1)') rtol=1e-10
    @test a[3].feedback_angle ≈ degrees(B[3], W[3]') rtol=1e-10
    @test a[2].alignment_product ≈ sum(bp2 .* fa2) * length(y) rtol=1e-10
    # for the last hidden layer, that is e_j^T W_3 D_j^2 B_3 e_j averaged over samples (e_j = m E[:, j])
    m = length(y)
    @test a[2].alignment_product ≈ sum(m^2 * E[:, j]' * W[3] * Diagonal(d[1][:, j] .^ 2) * B[3] * E[:, j] for j in 1:m) / m rtol=1e-10
    @test isnan(a[3].delta_angle) && isnan(a[1].feedback_angle)
    @test all(isnan, (a[3].update_angle, a[3].alignment_product))

    # DFA: B_l against the downstream product
    dfa = Network(sizes; rule=DFA(), seed=3, T=Float64)
    b = alignment(dfa, X, y)
    @test b[1].feedback_angle ≈ degrees(dfa.layers[1].B, (dfa.layers[3].W * dfa.layers[2].W)') rtol=1e-10
    @test b[2].feedback_angle ≈ degrees(dfa.layers[2].B, dfa.layers[3].W') rtol=1e-10
    @test b[2].weight_feedback_ratio ≈ norm(dfa.layers[3].W) / norm(dfa.layers[2].B)

    # with B = Wᵀ, FA is backprop: every angle 0 (to rounding)
    for l in 2:3
        fa.layers[l].B .= transpose(fa.layers[l].W)
    end
    c = alignment(fa, X, y)
    @test all(r -> r.delta_angle < 1e-6 && r.update_angle < 1e-6, c[1:2])
    @test c[3].feedback_angle < 1e-6 && c[2].alignment_product > 0

    # a rule from outside the package: same directions as FA, half the size
    half = copy_params!(Network(sizes; rule=HalfFA(), seed=3, T=Float64), fa)
    for l in 2:3
        half.layers[l].B .= B[l] ./ 2
        fa.layers[l].B .= B[l]
    end
    h, f = alignment(half, X, y), alignment(fa, X, y)
    @test [r.role for r in h] == [:feedback, :feedback, :output]
    @test h[1].delta_angle ≈ f[1].delta_angle rtol=1e-10
    @test h[2].feedback_angle ≈ f[2].feedback_angle rtol=1e-10          # through its feedback_target
    @test h[1].update_bp_ratio ≈ f[1].update_bp_ratio / 4 rtol=1e-10    # 1/2 per layer it passes
    @test h[2].alignment_product ≈ f[2].alignment_product / 2 rtol=1e-10

    # a rule that gives hidden layers nothing, and backprop itself
    o = alignment(Network(sizes; rule=OutputOnly(), seed=3, T=Float64), X, y)
    @test [r.role for r in o] == [:no_signal, :no_signal, :output]
    @test all(r -> isnan(r.delta_angle) && isnan(r.update_angle), o)
    p = alignment(Network(sizes; rule=BP(), seed=3, T=Float64), X, y)
    @test [r.role for r in p] == [:backprop, :backprop, :output]
    @test all(r -> r.update_bp_ratio == 1, p)

    # Float32: finite and, for B = Wᵀ, still close to 0 (the sums are Float64)
    f32 = Network(sizes; rule=FA(), seed=3, T=Float32)
    for l in 2:3
        f32.layers[l].B .= transpose(f32.layers[l].W)
    end
    @test all(r -> r.update_angle < 1e-2, alignment(f32, X, y)[1:2])
end

@testset "tracking alignment while training" begin
    rng = MersenneTwister(22)
    X, y = randn(rng, 5, 50), rand(rng, 1:3, 50)
    tracked, plain = (Network([5, 7, 3]; rule=DFA(), seed=1, T=Float64) for _ in 1:2)
    tracker = AlignmentTracker(tracked, 4)
    h1 = learn!(tracked, X, y; epochs=2, batchsize=8, observe=tracker)
    h2 = learn!(plain, X, y; epochs=2, batchsize=8)
    @test [r.loss for r in h1] == [r.loss for r in h2]          # observing changes nothing
    @test tracked.layers[1].W == plain.layers[1].W
    @test length(tracker.records) == length(0:4:13)            # 7 batches per epoch, 14 in all
    @test [r[3] for r in tracker.records] == collect(0:4:13)
    @test [(r[1], r[2]) for r in tracker.records] == [(1, 1), (1, 5), (2, 2), (2, 6)]
    @test length(tracker.records[1]) == 3 + length(FAL.ALIGNMENT_FIELDS) * 2
    @test_throws ArgumentError AlignmentTracker(tracked, 0)
end

@testset "teacher-student experiments" begin
    r = FAL.gaussian!(zeros(100_000), SplitMix64(5))
    @test abs(sum(r) / length(r)) < 0.02 && abs(sum(abs2, r) / length(r) - 1) < 0.02
    u = FAL.uniform!(zeros(10_000), SplitMix64(6), 0.5)
    @test all(x -> -0.5 <= x < 0.5, u) && maximum(u) > 0.49

    lin = teacher_task("linear"; rule="fa", steps=1000, record_every=250)
    @test lin.step == [0, 250, 500, 750, 1000]
    @test lin.lr == 0.001
    @test lin.error[1] > 0.9 && lin.error[end] < 0.2
    @test lin.alignment[2, 1, 1] > 75 && lin.alignment[2, 1, end] < 45   # Δh_FA ∠ Δh_BP falls well below 90°
    shallow = teacher_task("linear"; rule="shallow", steps=1000, record_every=500)
    @test shallow.lr == 10.0 && 0.25 < shallow.error[end] < 0.6
    @test shallow.alignment[1, 1, end] == findfirst(==(:no_signal), FAL.ALIGNMENT_ROLES) - 1
    @test_throws ArgumentError teacher_task("linear"; rule="no_such_rule", steps=10)
    @test_throws ArgumentError teacher_task("quadratic"; steps=10)
end
