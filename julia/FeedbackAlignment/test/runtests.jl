# Test suite of FeedbackAlignment. Standard library only; runs on Julia 1.5 and later:
#   julia --startup-file=no --project=julia/FeedbackAlignment julia/FeedbackAlignment/test/runtests.jl

using FeedbackAlignment
using FeedbackAlignment: CABI
using LinearAlgebra
using Random   # test data only; the package has its own generator
using Test

const FAL = FeedbackAlignment
# FA_TEST_SKIP=threads,contract leaves out parts a caller runs elsewhere (pyjlfa's pytest runs
# threads.jl under `julia -t 2` and checks the model-file contract from both languages).
const SKIP = split(get(ENV, "FA_TEST_SKIP", ""), ',')

# --- helpers ------------------------------------------------------------------------------

# Copy every W and b of `src` into `dst` (feedback matrices are left alone).
function copy_params!(dst::Network, src::Network)
    for (d, s) in zip(dst.layers, src.layers)
        d.W .= s.W
        d.b .= s.b
    end
    return dst
end

allfinite(net::Network) = all(d -> all(isfinite, d.W) && all(isfinite, d.b), net.layers)

# Pre-activations of every layer, computed here independently of the package's forward pass.
function preactivations(net::Network, X)
    As, h = Matrix{Float64}[], X
    for (l, d) in enumerate(net.layers)
        A = d.W * h .+ d.b
        push!(As, A)
        h = FAL.activation(d.spec).(A)
    end
    return As
end

# Gaussian blobs: `n` points in 2-D around `centres` (one column per class), labels 1..K.
function blobs(rng, n, centres; spread=0.5)
    K = size(centres, 2)
    y = [mod1(j, K) for j in 1:n]
    X = centres[:, y] .+ spread .* randn(rng, 2, n)
    return X, y
end

# C ABI helpers: call the entry points as Julia functions with raw pointers, as a C host would.
# A dense network is an input shape and one `Dense(...)` line per layer, as a host sends it.
function cabi_new(sizes, activation, rule, loss; dtype=1, seed=0, feedback_seed=seed)
    h = Ref{Int64}(-1)
    input = Int64[sizes[1]]
    L = length(sizes) - 1
    chain = join(["Dense($(sizes[l]) => $(sizes[l+1])$(l < L ? ", " * activation : ""))" for l in 1:L], "\n")
    spec = "rule=$rule\nloss=$loss\nseed=$seed\nfeedback_seed=$feedback_seed"
    given, given_dims = fill(C_NULL, L), zeros(Int64, 5L)   # no host-supplied feedback arrays
    status = GC.@preserve h input chain spec given given_dims begin
        CABI.fa_new(Base.unsafe_convert(Ptr{Int64}, h), Cint(dtype), Int64(1), pointer(input),
                    Base.unsafe_convert(Cstring, chain), Base.unsafe_convert(Cstring, spec),
                    pointer(given), pointer(given_dims))
    end
    return status, h[]
end

# X is Julia's (d, n) matrix = C's (n, d); `out` receives the result in place.
cabi_forward(h, X, out, kind) = GC.@preserve X out CABI.fa_forward(
    Int64(h), Ptr{Cvoid}(pointer(X)), Int64(size(X, 2)), Int64(size(X, 1)), Ptr{Cvoid}(pointer(out)), Cint(kind))

cabi_message() = unsafe_string(CABI.fa_error_message())

@testset "FeedbackAlignment" begin

# --- 1. backprop is the true gradient ---------------------------------------------------------

# For every activation and both losses, BP's (dW, db) match central finite differences of the
# batch-mean loss reported by `evaluate`, so backward! is the exact derivative of forward!.
@testset "BP gradients match finite differences" begin
    sizes = [5, 4, 3, 3]
    for act in (tanh, sigmoid, relu, leakyrelu, identity), loss in (CrossEntropy(), MSE())
        # Draw data until no pre-activation is within 1e-3 of relu's kink (a 1e-6 nudge of one
        # weight then cannot cross it); assert it so the premise is checked, not assumed.
        local net, X, Y
        for trial in 1:100
            rng = MersenneTwister(trial)
            net = Network(sizes; activation=act, rule=BP(), loss=loss, seed=trial, T=Float64)
            for d in net.layers
                d.b .= 0.3 .* randn(rng, length(d.b))
            end
            X = randn(rng, 5, 7)
            Y = loss isa CrossEntropy ? rand(rng, 1:3, 7) : randn(rng, 3, 7)
            hidden = preactivations(net, X)[1:end-1]
            all(A -> minimum(abs, A) > 1e-3, hidden) && any(A -> any(<(0), A), hidden) && break
        end
        hidden = preactivations(net, X)[1:end-1]
        @test all(A -> minimum(abs, A) > 1e-3, hidden)
        @test any(A -> any(<(0), A), hidden)   # relu's zero-derivative branch is exercised

        g = gradients(net, X, Y)
        analytic, numeric = Float64[], Float64[]
        h = 1e-6
        for (l, d) in enumerate(net.layers), (P, G) in ((d.W, g[l][1]), (d.b, g[l][2]))
            for i in eachindex(P)
                p0 = P[i]
                P[i] = p0 + h; fplus = evaluate(net, X, Y).loss
                P[i] = p0 - h; fminus = evaluate(net, X, Y).loss
                P[i] = p0
                push!(analytic, G[i])
                push!(numeric, (fplus - fminus) / 2h)
            end
        end
        relerr = norm(analytic - numeric) / max(norm(analytic), norm(numeric))
        @test relerr < 1e-6
        # the gradient is not trivially zero
        @test norm(analytic) > 1e-3
    end
end

# --- 2. FA with B = Wᵀ is backprop -------------------------------------------------------------

# FA differs from BP only in carrying errors through B instead of Wᵀ: with B_l = W_lᵀ the two
# rules give the same updates. A random B must give a different first-layer update.
@testset "FA with B = Wᵀ equals BP" begin
    rng = MersenneTwister(11)
    sizes = [6, 5, 4, 3]
    X, y = randn(rng, 6, 9), rand(rng, 1:3, 9)
    fa = Network(sizes; rule=FA(), seed=3, T=Float64)
    bp = copy_params!(Network(sizes; rule=BP(), seed=99, T=Float64), fa)
    @test fa.layers[1].B === nothing
    @test all(l -> size(fa.layers[l].B) == size(transpose(fa.layers[l].W)), 2:3)
    @test all(d -> d.B === nothing, bp.layers)

    gfa_random = gradients(fa, X, y)
    for l in 2:length(fa.layers)
        fa.layers[l].B .= transpose(fa.layers[l].W)
    end
    gfa, gbp = gradients(fa, X, y), gradients(bp, X, y)
    # Same arithmetic up to BLAS's choice of kernel for Wᵀ (transposed operand) versus B (a
    # stored copy), which may differ in the last bit: hence rtol = 1e-12, not ==.
    for l in 1:3
        @test gfa[l][1] ≈ gbp[l][1] rtol=1e-12
        @test gfa[l][2] ≈ gbp[l][2] rtol=1e-12
    end
    # control: with its random B, FA's hidden updates are not BP's
    @test !isapprox(gfa_random[1][1], gbp[1][1]; rtol=0.1)
    @test gfa_random[3][1] == gbp[3][1]   # the output layer always learns from the true error
end

# --- 3. DFA ------------------------------------------------------------------------------------

# DFA sends the output error e straight to every hidden layer through B_l (n_l x n_out). With
# one hidden layer and B_1 = W_2ᵀ that is exactly backprop; deeper, with random B, it is not,
# and each hidden layer's delta is (B_l * e) .* f'(a_l).
@testset "DFA" begin
    rng = MersenneTwister(12)
    X, y = randn(rng, 4, 10), rand(rng, 1:3, 10)

    dfa = Network([4, 5, 3]; rule=DFA(), seed=5, T=Float64)
    @test size(dfa.layers[1].B) == (5, 3)
    @test dfa.layers[2].B === nothing
    bp = copy_params!(Network([4, 5, 3]; rule=BP(), T=Float64), dfa)
    dfa.layers[1].B .= transpose(dfa.layers[2].W)
    gd, gb = gradients(dfa, X, y), gradients(bp, X, y)
    for l in 1:2   # rtol as in the FA testset
        @test gd[l][1] ≈ gb[l][1] rtol=1e-12
        @test gd[l][2] ≈ gb[l][2] rtol=1e-12
    end

    deep = Network([4, 5, 5, 3]; rule=DFA(), seed=6, T=Float64)
    @test size(deep.layers[1].B) == (5, 3) && size(deep.layers[2].B) == (5, 3)
    bpdeep = copy_params!(Network([4, 5, 5, 3]; rule=BP(), T=Float64), deep)
    gd, gb = gradients(deep, X, y), gradients(bpdeep, X, y)
    @test gd[3][1] ≈ gb[3][1]                          # output layer: true gradient
    @test !isapprox(gd[1][1], gb[1][1]; rtol=0.1)      # first hidden layer: not BP's

    # the DFA update by hand
    A1, A2, Z = preactivations(deep, X)
    P = exp.(Z .- maximum(Z; dims=1)); P ./= sum(P; dims=1)
    E = (P .- (1:3 .== permutedims(y))) ./ length(y)
    D1 = (deep.layers[1].B * E) .* (1 .- tanh.(A1) .^ 2)
    D2 = (deep.layers[2].B * E) .* (1 .- tanh.(A2) .^ 2)
    @test gd[1][1] ≈ D1 * X'
    @test gd[1][2] ≈ vec(sum(D1; dims=2))
    @test gd[2][1] ≈ D2 * tanh.(A1)'
end

# --- 4. training learns ------------------------------------------------------------------------

# Each rule drives the loss well down and classifies separable blobs; FA also fits a regression.
@testset "training reduces the loss" begin
    rng = MersenneTwister(13)
    centres = [0.0 -2.0 2.0; 2.0 -1.0 -1.0]
    X, y = blobs(rng, 200, centres)
    for rule in (BP(), FA(), DFA())
        net = Network([2, 16, 3]; rule=rule, seed=1, T=Float64)
        before = evaluate(net, X, y)
        history = learn!(net, X, y; epochs=30, batchsize=16, optimizer=SGD(0.05, 0.9))
        after = evaluate(net, X, y)
        @test length(history) == 30 && history[end].epoch == 30 && net.epochs == 30
        @test history[end].loss < history[1].loss
        @test after.loss < 0.2 * before.loss
        @test after.accuracy >= 0.95
        @test count(predict(net, X) .== y) / length(y) == after.accuracy
    end

    # regression: t = [sin(x1) + x2/2; x1*x2/4], MSE, FA
    Xr = 2 .* rand(rng, 2, 200) .- 1
    Yr = vcat(sin.(Xr[1:1, :]) .+ Xr[2:2, :] ./ 2, Xr[1:1, :] .* Xr[2:2, :] ./ 4)
    net = Network([2, 16, 2]; rule=FA(), loss=MSE(), seed=2, T=Float64)
    before = evaluate(net, Xr, Yr)
    history = learn!(net, Xr, Yr; epochs=60, batchsize=16, optimizer=SGD(0.05, 0.9),
                     validation=(Xr, Yr))
    after = evaluate(net, Xr, Yr)
    @test isnan(after.accuracy)
    @test after.loss < 0.1 * before.loss
    @test history[end].val_loss ≈ after.loss
    @test size(predict(net, Xr)) == size(Yr)
end

# --- 5. Float32 --------------------------------------------------------------------------------

# Float32 networks start from the Float64 draws rounded once, compute the same function (to
# Float32 precision, tanh_fast included) and train, predict and evaluate end to end.
@testset "Float32 end to end" begin
    rng = MersenneTwister(14)
    centres = [0.0 -2.0 2.0; 2.0 -1.0 -1.0]
    X64, y = blobs(rng, 200, centres)
    X32 = Float32.(X64)
    net32 = Network([2, 16, 8, 3]; seed=4, T=Float32)
    net64 = Network([2, 16, 8, 3]; seed=4, T=Float64)
    @test eltype(net32) === Float32
    for (a, b) in zip(net32.layers, net64.layers)
        @test a.W == Float32.(b.W)
        @test a.B === nothing ? b.B === nothing : a.B == Float32.(b.B)
    end
    Z32, Z64 = outputs(net32, X32), outputs(net64, X64)
    @test eltype(Z32) === Float32
    @test maximum(abs.(Z32 .- Z64)) < 1e-5
    @test predict(net32, X32) == predict(net64, X64)
    @test abs(evaluate(net32, X32, y).loss - evaluate(net64, X64, y).loss) < 1e-5

    before = evaluate(net32, X32, y).loss
    history = learn!(net32, X64, y; epochs=20, batchsize=16, optimizer=SGD(0.05, 0.9))  # X converted
    @test all(h -> isfinite(h.loss), history)
    P = predict_proba(net32, X32)
    @test eltype(P) === Float32 && size(P) == (3, 200)
    @test all(p -> 0 <= p <= 1, P)
    @test all(s -> abs(s - 1) < 1e-5, sum(P; dims=1))      # each observation's probabilities
    labels = predict(net32, X32)
    @test eltype(labels) <: Integer && all(in(1:3), labels)
    @test labels == [argmax(P[:, j]) for j in 1:200]
    r = evaluate(net32, X32, y)
    @test isfinite(r.loss) && r.loss < 0.5 * before
    @test r.accuracy >= 0.95
end

# --- 5b. inputs that are not plain matrices --------------------------------------------------------

# Any AbstractMatrix of features x observations is accepted (the docstrings promise no more):
# a strided view with a non-unit row step and a lazy transpose give the same results as a copy.
@testset "non-contiguous inputs" begin
    rng = MersenneTwister(17)
    big, y = randn(rng, 8, 12), rand(rng, 1:3, 12)
    ok(f) = try f() catch e; e end   # the result, or the exception thrown instead
    for X in (view(big, 1:2:8, :), transpose(randn(rng, 12, 4)))
        Xc = Matrix(X)
        net = Network([4, 5, 3]; seed=1, T=Float64)
        # ≈, not ==: BLAS may round a transposed operand's products differently
        Z = ok(() -> outputs(net, X))
        @test Z isa Matrix && Z ≈ outputs(net, Xc)
        r, rc = ok(() -> evaluate(net, X, y)), evaluate(net, Xc, y)
        @test r isa NamedTuple && r.loss ≈ rc.loss && r.accuracy == rc.accuracy
        g, gc = ok(() -> gradients(net, X, y)), gradients(net, Xc, y)
        @test g isa Vector && all(l -> g[l][1] ≈ gc[l][1] && g[l][2] ≈ gc[l][2], 1:2)
        a, b = deepcopy(net), deepcopy(net)
        h = ok(() -> learn!(a, X, y; epochs=2, batchsize=5, shuffle=false))
        learn!(b, Xc, y; epochs=2, batchsize=5, shuffle=false)
        @test h isa Vector && all(i -> a.layers[i].W ≈ b.layers[i].W, 1:2)
    end
end

# --- 6. generator and seeding -------------------------------------------------------------------

# SplitMix64 reproduces the published reference stream; the helpers built on it behave; seeds
# fix the weights, and the feedback seed only moves B.
@testset "SplitMix64 and seeds" begin
    r = SplitMix64(0)
    @test [FAL.next!(r) for _ in 1:4] ==
          [0xe220a8397b1dcdaf, 0x6e789e6aa1b965f4, 0x06c45d188009454f, 0xf88bb8a8724c81ec]

    r = SplitMix64(42)
    u = [FAL.uniform(r) for _ in 1:10_000]
    @test all(x -> 0 <= x < 1, u)
    @test abs(sum(u) / length(u) - 0.5) < 0.02
    @test length(unique(u)) == length(u)

    v = FAL.shuffle!(SplitMix64(7), collect(1:50))
    @test sort(v) == 1:50
    @test v != 1:50
    @test FAL.shuffle!(SplitMix64(7), collect(1:50)) == v     # deterministic
    # ... and uniform: each of the 6 orders of 1:3 about 1/6 of the time (sd ≈ 29 of 1000)
    r = SplitMix64(3)
    counts = Dict{Vector{Int},Int}()
    for _ in 1:6000
        p = FAL.shuffle!(r, [1, 2, 3])
        counts[p] = get(counts, p, 0) + 1
    end
    @test length(counts) == 6 && all(c -> abs(c - 1000) < 150, values(counts))

    sizes = [3, 6, 5, 2]
    for rule in (FA(), DFA())
        a = Network(sizes; rule=rule, seed=7, T=Float64)
        b = Network(sizes; rule=rule, seed=7, T=Float64)
        c = Network(sizes; rule=rule, seed=7, feedback_seed=8, T=Float64)
        d = Network(sizes; rule=rule, seed=9, feedback_seed=7, T=Float64)
        @test all(i -> a.layers[i].W == b.layers[i].W && a.layers[i].B == b.layers[i].B, 1:3)
        @test all(i -> a.layers[i].W == c.layers[i].W, 1:3)           # W untouched by feedback_seed
        withB = findall(dl -> dl.B !== nothing, a.layers)
        @test !isempty(withB)
        @test all(i -> a.layers[i].B != c.layers[i].B, withB)         # ...which moves every B
        @test all(i -> a.layers[i].W != d.layers[i].W, 1:3)           # seed moves W
        @test all(i -> a.layers[i].B == d.layers[i].B, withB)         # but not B
    end

    # Glorot draws are taken in memory order from the seed's forward-weight stream
    net = Network([3, 4]; seed=5, T=Float64)
    s = FAL.stream(5, 1)
    limit = sqrt(6 / (3 + 4))
    @test vec(net.layers[1].W) == [(2 * FAL.uniform(s) - 1) * limit for _ in 1:12]
end

# --- 7. the Float32 tanh fast path --------------------------------------------------------------

# tanh_fast tracks tanh to a few ulp, is odd, passes tiny inputs through, and saturates at ±1
# exactly where Float32's tanh does (so saturated units get f' = 0, as with tanh).
@testset "tanh_fast" begin
    xs = collect(range(-10f0, 10f0; length=400_001))
    ref = [Float32(tanh(Float64(x))) for x in xs]
    got = FAL.tanh_fast.(xs)
    @test maximum(abs.(Float64.(got) .- tanh.(Float64.(xs)))) < 1e-6
    @test maximum(abs.(got .- ref) ./ eps.(max.(abs.(ref), floatmin(Float32)))) <= 5
    @test all(x -> FAL.tanh_fast(-x) == -FAL.tanh_fast(x), xs)
    @test FAL.tanh_fast(0f0) === 0f0
    @test FAL.tanh_fast(1f-5) === 1f-5
    for x in (9.5f0, 10f0, 20f0, 1f4, Inf32)
        @test tanh(x) == 1f0 == Float32(tanh(Float64(x)))   # tanh rounds to 1 here ...
        @test FAL.tanh_fast(x) === 1f0                      # ... and so must the fast path
        @test FAL.tanh_fast(-x) === -1f0
    end
    # the Float32 network's tanh is this fast path
    net = Network([1, 1, 1]; T=Float32, rule=BP())
    net.layers[1].W .= 1; net.layers[2].W .= 1
    @test vec(outputs(net, reshape(xs[1:1000:end], 1, :))) == FAL.tanh_fast.(xs[1:1000:end])
end

# --- 8. errors and the optimiser ----------------------------------------------------------------

@testset "errors, divergence and momentum" begin
    rng = MersenneTwister(15)
    net = Network([4, 5, 3]; T=Float64)
    X, y = randn(rng, 4, 10), rand(rng, 1:3, 10)
    Xbad = randn(rng, 5, 10)

    # inputs with the wrong number of features
    @test_throws DimensionMismatch predict(net, Xbad)
    @test_throws DimensionMismatch outputs(net, Xbad)
    @test_throws DimensionMismatch evaluate(net, Xbad, y)
    @test_throws DimensionMismatch gradients(net, Xbad, y)
    @test_throws DimensionMismatch learn!(net, Xbad, y)
    @test_throws DimensionMismatch step!(net, Xbad, y, SGD(0.1))

    # labels outside 1:K
    for bad in (0, 4, -1)
        ybad = copy(y); ybad[3] = bad
        @test_throws ArgumentError learn!(net, X, ybad)
        @test_throws ArgumentError evaluate(net, X, ybad)
        @test_throws ArgumentError gradients(net, X, ybad)
    end
    @test_throws DimensionMismatch evaluate(net, X, y[1:9])

    # divergence: a huge learning rate on MSE/relu. The error names the epoch and batch; the
    # parameters are finite and are exactly those after the batches before the failing one.
    Xr, Yr = randn(rng, 3, 64), randn(rng, 2, 64)
    mk() = Network([3, 8, 2]; activation=relu, loss=MSE(), rule=BP(), seed=1, T=Float64)
    net = mk()
    err = try
        learn!(net, Xr, Yr; epochs=20, batchsize=8, optimizer=SGD(1e3), shuffle=false)
        nothing
    catch e
        e
    end
    @test err isa DivergenceError
    if err isa DivergenceError
        @test !isfinite(err.loss)
        @test err.epoch >= 1 && err.batch >= 1
        msg = sprint(showerror, err)
        @test occursin("epoch $(err.epoch)", msg) && occursin("batch $(err.batch)", msg)
        @test allfinite(net)
        # replay the successful batches one `step!` at a time
        ref = mk()
        nb = cld(64, 8)
        for k in 1:((err.epoch - 1) * nb + err.batch - 1)
            cols = (mod1(k, nb) - 1) * 8 + 1 : mod1(k, nb) * 8
            step!(ref, Xr[:, cols], Yr[:, cols], SGD(1e3))
        end
        @test all(i -> net.layers[i].W == ref.layers[i].W && net.layers[i].b == ref.layers[i].b, 1:2)
    end
    # a lone step! on the failing batch reports epoch 0 and leaves the parameters alone
    frozen = deepcopy(net)
    b = err isa DivergenceError ? err.batch : 1
    cols = (b - 1) * 8 + 1 : b * 8
    e0 = try step!(net, Xr[:, cols], Yr[:, cols], SGD(1e3)); nothing catch e; e end
    @test e0 isa DivergenceError && e0.epoch == 0
    @test all(i -> net.layers[i].W == frozen.layers[i].W, 1:2)

    # momentum carries across step! calls: v1 = g1, W1 = W0 - lr v1; v2 = 0.9 v1 + g2, ...
    net = Network([4, 6, 3]; rule=FA(), seed=2, T=Float64)
    hand = deepcopy(net)
    X1, y1, X2, y2 = randn(rng, 4, 8), rand(rng, 1:3, 8), randn(rng, 4, 8), rand(rng, 1:3, 8)
    lr, mu = 0.1, 0.9
    step!(net, X1, y1, SGD(lr, mu))
    step!(net, X2, y2, SGD(lr, mu))
    g1 = gradients(hand, X1, y1)
    v = [(copy(dW), copy(db)) for (dW, db) in g1]
    for (d, (vW, vb)) in zip(hand.layers, v)
        d.W .-= lr .* vW; d.b .-= lr .* vb
    end
    g2 = gradients(hand, X2, y2)
    for (d, (vW, vb), (dW, db)) in zip(hand.layers, v, g2)
        d.W .-= lr .* (mu .* vW .+ dW); d.b .-= lr .* (mu .* vb .+ db)
    end
    for (a, b) in zip(net.layers, hand.layers)
        @test a.W ≈ b.W rtol=1e-12
        @test a.b ≈ b.b rtol=1e-12
    end

    @test_throws ArgumentError SGD(0.0)
    @test_throws ArgumentError SGD(0.1, 1.0)
end

# --- 9. the C ABI -------------------------------------------------------------------------------

@testset "C ABI" begin
    # status codes: 0 ok, 1 other errors, 2 diverged, 4 bad arguments (ArgumentError, DimensionMismatch)
    rng = MersenneTwister(16)
    X = randn(rng, 4, 7)
    live = CABI.fa_live_handles()

    status, h = cabi_new([4, 6, 3], "tanh", "dfa", "cross_entropy"; seed=3, feedback_seed=4)
    @test status == 0 && h > 0
    @test CABI.fa_live_handles() == live + 1
    net = Network([4, 6, 3]; activation=tanh, rule=DFA(), seed=3, feedback_seed=4, T=Float64)
    Z, P, labels = zeros(3, 7), zeros(3, 7), fill(Int64(-7), 7)
    @test cabi_forward(h, X, Z, 0) == 0
    @test cabi_forward(h, X, P, 1) == 0
    @test cabi_forward(h, X, labels, 2) == 0
    @test Z == outputs(net, X)
    @test P == predict_proba(net, X)
    @test labels == predict(net, X) .- 1                 # 0-based across the ABI
    @test cabi_forward(h, X, Z, 9) == 4 && occursin("kind 9", cabi_message())
    # Julia describes every layer (path, kind, call, activation, input, output, its arrays' names and
    # shapes); hosts compute none
    @test split(unsafe_string(CABI.fa_nodes(h)), '\n') ==
          ["0\tDense\tDense(4 => 6, tanh)\ttanh\t4\t6\tW:6,4;b:6;B:6,3", "1\tDense\tDense(6 => 3)\tidentity\t6\t3\tW:3,6;b:3"]
    ptr, dims = Ref{Ptr{Cvoid}}(C_NULL), fill(Int64(-1), 5)
    @test GC.@preserve(ptr, dims, CABI.fa_array(h, Int64(1), Base.unsafe_convert(Cstring, "B"), Base.unsafe_convert(Ptr{Ptr{Cvoid}}, ptr), pointer(dims))) == 0
    @test ptr[] == pointer(CABI.HANDLES[h].layers[1].B) && dims[1:3] == [2, 6, 3]   # ndims, then sizes
    @test GC.@preserve(ptr, dims, CABI.fa_array(h, Int64(2), Base.unsafe_convert(Cstring, "B"), Base.unsafe_convert(Ptr{Ptr{Cvoid}}, ptr), pointer(dims))) == 0
    @test ptr[] == C_NULL && dims[1] == 0                                           # the last layer has no B

    # Float32 handle
    status, h32 = cabi_new([4, 6, 3], "relu", "bp", "mse"; dtype=0, seed=5)
    @test status == 0
    X32, Z32 = Float32.(X), zeros(Float32, 3, 7)
    @test cabi_forward(h32, X32, Z32, 0) == 0
    @test Z32 == outputs(Network([4, 6, 3]; activation=relu, rule=BP(), loss=MSE(), seed=5), X32)
    @test CABI.fa_free(h32) == 0

    # freed and unknown handles
    @test CABI.fa_free(h) == 0
    @test CABI.fa_live_handles() == live
    @test cabi_forward(h, X, Z, 0) == 4
    @test occursin("handle $h", cabi_message())
    @test CABI.fa_free(h) == 4
    @test occursin("handle $h", cabi_message())
    @test CABI.fa_free(Int64(987654321)) == 4
    @test occursin("handle 987654321", cabi_message())

    # unknown names are rejected with the list of accepted ones
    status, _ = cabi_new([4, 3], "tanh", "backprop", "cross_entropy")
    @test status == 4
    msg = cabi_message()
    @test occursin("\"backprop\"", msg)
    @test !isempty(FAL.RULES) && all(name -> occursin(name, msg), keys(FAL.RULES))
    @test occursin("bp", msg) && occursin("dfa", msg)
    status, _ = cabi_new([4, 5, 3], "swish", "fa", "cross_entropy")   # the hidden layer's activation
    msg = cabi_message()
    @test status == 4 && occursin("swish", msg)
    @test all(name -> occursin(name, msg), keys(FAL.ACTIVATIONS))
    status, _ = cabi_new([4, 3], "tanh", "fa", "cross_entropy"; dtype=7)
    @test status == 4 && occursin("dtype", cabi_message())
    @test CABI.fa_live_handles() == live

    # every entry point can be found by name, and only those
    @test issubset(["fa_new", "fa_free", "fa_forward", "fa_lookup", "fa_error_message"],
                   collect(keys(CABI.ENTRY_POINTS)))
    for (name, fptr) in CABI.ENTRY_POINTS
        found = GC.@preserve name CABI.fa_lookup(Base.unsafe_convert(Cstring, name))
        @test found == fptr && found != C_NULL
    end
    unknown = "fa_no_such_entry"
    @test GC.@preserve(unknown, CABI.fa_lookup(Base.unsafe_convert(Cstring, unknown))) == C_NULL
    # ... and through a real C call into the @cfunction pointer, as the host does
    lookup = Ptr{Cvoid}(CABI.lookup_address())
    @test ccall(lookup, Ptr{Cvoid}, (Cstring,), "fa_forward") == CABI.ENTRY_POINTS["fa_forward"]
    @test ccall(lookup, Ptr{Cvoid}, (Cstring,), unknown) == C_NULL
end

include("rules.jl")
include("schema.jl")
include("io.jl")
include("diagnostics.jl")
include("interrupt.jl")
"speed" in SKIP || include("speed.jl")
"threads" in SKIP || include("threads.jl")
include("conv.jl")
include("chains.jl")
include("residual.jl")
include("robustness.jl")

end # FeedbackAlignment
"contract" in SKIP || include("contract.jl")
"docs" in SKIP || include("docs.jl")
