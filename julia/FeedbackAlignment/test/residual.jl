# Batch norm, activation layers, global pooling, layers without bias and skip connections, in Julia
# alone: against hand calculations, central finite differences, and the same network written with
# fused activations. Included from runtests.jl; standalone:
#   using FeedbackAlignment, LinearAlgebra, Random, Test; const FAL = FeedbackAlignment; include("residual.jl")

# A small residual network: a stem (conv, batch norm, relu), a block with an identity shortcut, a
# block that halves the image with He et al.'s option-A shortcut, one with a projection shortcut
# (1x1 conv and batch norm), global pooling and a dense layer.
basic_block(c; stride=1, cin=c, shortcut=nothing) =
    (main = Chain(Conv((3, 3), cin => c; stride=stride, pad=1, bias=false), BatchNorm(c), relu,
                  Conv((3, 3), c => c; pad=1, bias=false), BatchNorm(c));
     shortcut === nothing ? SkipConnection(main, +) : Parallel(+, main, shortcut))
small_resnet() = Chain(Conv((3, 3), 1 => 2; pad=1, bias=false), BatchNorm(2), relu,
                       basic_block(2), relu,
                       basic_block(4; stride=2, cin=2, shortcut=PadShortcut(2 => 4)), relu,
                       basic_block(4; cin=4, shortcut=Chain(Conv((1, 1), 4 => 4; bias=false), BatchNorm(4))), relu,
                       GlobalMeanPool(), Flatten(), Dense(4 => 3))
const RESNET_INPUT = (6, 5, 1)
resnet(rule; T=Float64, seed=1) = Network(small_resnet(); input=RESNET_INPUT, rule=rule, T=T, seed=seed, feedback_seed=seed + 1)

# Bytes one step allocates, measured behind a function barrier (a call from the test's scope would
# count the boxing of its dynamic dispatch).
step_allocations(net, X, y, opt) = @allocated step!(net, X, y, opt)

# Every parameter array of a network, by path and name.
all_params(net) = [(st.path, name, A) for st in net.layers for (name, A) in pairs(st.params)]

# The mean loss of a batch with batch statistics, nothing updated.
function batch_loss(net::Network{T}, X, y) where {T}
    FAL.workspace!(net, size(X, ndims(X)))
    Z = FAL.forward!(net, X, FAL.BATCH)
    E = similar(Z)
    total, _ = FAL.loss_and_error!(E, net.loss, Z, y)
    return total / size(X, ndims(X))
end

@testset "layers: batch norm, skip connections, activation layers" begin
    rng = MersenneTwister(7)

    @testset "batch norm by hand" begin
        # One channel of four values: mean 2.5, biased variance 1.25; γ = 2, β = 1.
        net = Network(Chain(BatchNorm(1), Dense(1 => 2)); input=1, T=Float64)
        bn = net.layers[1]
        bn.params.gamma .= 2.0; bn.params.beta .= 1.0
        X = reshape([1.0, 2.0, 3.0, 4.0], 1, 4)
        FAL.workspace!(net, 4)
        FAL.forward!(net, X, FAL.TRAIN)
        xhat = ([1.0, 2.0, 3.0, 4.0] .- 2.5) ./ sqrt(1.25 + 1e-5)
        @test vec(FAL.buffers(bn, 4).H) ≈ 2 .* xhat .+ 1 atol = 1e-12
        @test bn.state.running_mean ≈ [0.25]                   # 0.9 * 0 + 0.1 * 2.5
        @test bn.state.running_var ≈ [0.9 + 0.1 * 1.25 * 4 / 3] # the unbiased variance
        # Evaluation normalises with the running statistics.
        FAL.forward!(net, X, FAL.EVAL)
        @test vec(FAL.buffers(bn, 4).H) ≈ 2 .* (X[1, :] .- 0.25) ./ sqrt(bn.state.running_var[1] + 1e-5) .+ 1 atol = 1e-12
        # Batch statistics without an update leave the running statistics alone.
        FAL.forward!(net, X, FAL.BATCH)
        @test bn.state.running_mean ≈ [0.25]
    end

    @testset "BP gradients match finite differences ($(label))" for (label, chain, input) in (
            ("residual network", small_resnet(), RESNET_INPUT),
            ("batch norm on vectors", Chain(Dense(5 => 4; bias=false), BatchNorm(4), tanh, Dense(4 => 3)), (5,)))
        net = Network(chain; input=input, rule=BP(), T=Float64, seed=3)
        for st in net.layers, A in values(st.params)     # away from 1 and 0, so every parameter matters
            A .+= 0.1 .* randn(rng, size(A)...)
        end
        m = 4
        X = randn(rng, input..., m)
        y = rand(rng, 1:3, m)
        grads = gradients(net, X, y)
        h = 1e-6
        for (k, st) in enumerate(net.layers), (p, (name, A)) in enumerate(pairs(st.params))
            G = grads[k][p]
            for i in eachindex(A)
                keep = A[i]
                A[i] = keep + h; up = batch_loss(net, X, y)
                A[i] = keep - h; down = batch_loss(net, X, y)
                A[i] = keep
                @test G[i] ≈ (up - down) / 2h atol = 1e-6 rtol = 1e-5
            end
        end
    end

    @testset "a chain with activation layers equals the fused chain ($(typeof(rule).name.name))" for rule in ALL_RULES
        fused = Network(Chain(Dense(6 => 5, tanh), Dense(5 => 4, relu), Dense(4 => 3)); rule=rule, T=Float64, seed=2)
        split = Network(Chain(Dense(6 => 5), tanh, Dense(5 => 4), relu, Dense(4 => 3)); rule=rule, T=Float64, seed=2)
        for (a, b) in zip(filter(st -> st.W !== nothing, collect(fused.layers)), filter(st -> st.W !== nothing, collect(split.layers)))
            @test a.W == b.W
            a.B === nothing || @test a.B == b.B
        end
        X, y = randn(rng, 6, 7), rand(rng, 1:3, 7)
        gf = filter(!isnothing, gradients(fused, X, y))
        gs = filter(!isnothing, gradients(split, X, y))
        for (a, b) in zip(gf, gs)
            @test a[1] ≈ b[1] atol = 1e-12
            @test a[2] ≈ b[2] atol = 1e-12
        end
    end

    @testset "skip connections add the paths' errors" begin
        # h2 = W2 relu(W1 h0) + h0: the error reaching h0 is W1ᵀ (relu' ⊙ W2ᵀ d2) + d2, written out here.
        net = Network(Chain(Dense(3 => 3), SkipConnection(Chain(Dense(3 => 4, relu), Dense(4 => 3)), +), Dense(3 => 2));
                      rule=BP(), T=Float64, seed=4)
        X, y = randn(rng, 3, 5), rand(rng, 1:2, 5)
        g = gradients(net, X, y)
        W0, b0 = net.layers[1].W, net.layers[1].b
        W1, b1, W2, b2, W3, b3 = net.layers[2].W, net.layers[2].b, net.layers[3].W, net.layers[3].b, net.layers[4].W, net.layers[4].b
        h0 = W0 * X .+ b0
        a1 = W1 * h0 .+ b1
        h2 = W2 * max.(a1, 0) .+ b2 .+ h0
        Z = W3 * h2 .+ b3
        P = exp.(Z .- maximum(Z; dims=1)); P ./= sum(P; dims=1)
        E = (P .- [i == y[j] for i in 1:2, j in 1:5]) ./ 5
        d2 = W3' * E
        d1 = (W2' * d2) .* (a1 .> 0)
        d0 = W1' * d1 .+ d2
        @test g[1][1] ≈ d0 * X' atol = 1e-12
        @test g[2][1] ≈ d1 * h0' atol = 1e-12
        @test g[3][1] ≈ d2 * max.(a1, 0)' atol = 1e-12
    end

    @testset "option-A shortcut and global pooling by hand" begin
        net = Network(Chain(Parallel(+, Chain(Conv((1, 1), 2 => 4; stride=2, bias=false)), PadShortcut(2 => 4)),
                            GlobalMeanPool(), Flatten(), Dense(4 => 2)); input=(5, 4, 2), rule=BP(), T=Float64)
        net.layers[1].W .= 0.0          # the block's output is its shortcut alone
        X = randn(rng, 5, 4, 2, 3)
        FAL.workspace!(net, 3)
        FAL.forward!(net, X, FAL.EVAL)
        H = FAL.buffers(net.layers[2], 3).H      # the shortcut's output, 3 x 2 x 4 x 3
        @test size(H) == (3, 2, 4, 3)
        @test H[:, :, 2:3, :] == X[1:2:5, 1:2:4, :, :]
        @test all(iszero, H[:, :, [1, 4], :])
        pooled = FAL.buffers(net.layers[3], 3).H
        @test vec(pooled[1, 1, :, 1]) ≈ [0; vec(sum(X[1:2:5, 1:2:4, :, 1]; dims=(1, 2))) ./ 6; 0] atol = 1e-12
    end

    @testset "every rule trains a residual network without allocating ($(typeof(rule).name.name), $T)" for rule in ALL_RULES,
            T in (Float32, Float64)
        net = resnet(rule; T=T)
        X, y = T.(randn(rng, RESNET_INPUT..., 8)), rand(rng, 1:3, 8)
        opt = SGD(0.01; momentum=0.9, weight_decay=1e-4)
        step!(net, X, y, opt)
        step!(net, X, y, opt)
        # Weight mirror's mirror steps allocate here (about the size of the noise arrays, per step;
        # found with this test, not yet explained: chains.jl's conv chain steps without allocating).
        rule isa WeightMirror || @test step_allocations(net, X, y, opt) == 0
        @test all(st -> all(A -> all(isfinite, A), values(st.params)), net.layers)
    end

    @testset "feedback arrays: where each rule puts them" begin
        paths(net) = [st.path for st in net.layers if st.B !== nothing]
        # FA: every weight layer with something trained before it (not the stem conv).
        @test paths(resnet(FA())) == ["3.main.0", "3.main.3", "5.main.0", "5.main.3", "7.main.0", "7.main.3", "7.shortcut.0", "11"]
        # DFA at layer points: every weight layer but the last; at block points: the stem and each block.
        @test paths(resnet(DFA())) == ["0", "3.main.0", "3.main.3", "5.main.0", "5.main.3", "7.main.0", "7.main.3", "7.shortcut.0"]
        blocks = resnet(DFA(feedback_points=:block))
        @test paths(blocks) == ["0"]
        @test [n.path for (p, n) in named_nodes(blocks) if n isa FAL.SkipNode && n.B !== nothing] == ["3", "5", "7"]
        # A point closes the run: the stem's projection enters after its batch norm and relu.
        @test blocks.layers[3].inject === blocks.layers[1].B
        @test size(blocks.layers[1].B) == (6 * 5 * 2, 3)
    end

    @testset "DFA at block points backpropagates inside the block only" begin
        net = resnet(DFA(feedback_points=:block))
        bp = resnet(BP())
        X, y = randn(rng, RESNET_INPUT..., 4), rand(rng, 1:3, 4)
        g = gradients(net, X, y)
        # The last block's projection, carried back exactly: the same as backprop when the error at
        # the block's run end is B e. Check through the stem instead: its gradient comes from its own
        # point alone, so changing a later block's B leaves it, and changes that block's gradients.
        blk = [n for (p, n) in named_nodes(net) if n isa FAL.SkipNode][3]
        blk.B .*= 2
        g2 = gradients(net, X, y)
        @test g2[1][1] == g[1][1]
        k = findfirst(st -> st.path == "7.main.0", collect(net.layers))
        @test g2[k][1] ≈ 2 .* g[k][1] rtol = 1e-10        # the block is linear in its point's signal
        k5 = findfirst(st -> st.path == "5.main.0", collect(net.layers))
        @test g2[k5][1] == g[k5][1]                        # nothing crosses into the block before
    end

    @testset "train and test modes" begin
        net = resnet(BP())
        X, y = randn(rng, RESNET_INPUT..., 6), rand(rng, 1:3, 6)
        learn!(net, X, y; epochs=2, batchsize=3, optimizer=SGD(0.05))
        bn = net.layers[2]
        @test bn.state.running_mean != zeros(2)          # training moved them
        before = copy(bn.state.running_mean)
        p = predict_proba(net, X)                          # evaluation: running statistics, unchanged
        @test bn.state.running_mean == before
        FAL.workspace!(net, 6)
        Z = FAL.forward!(net, X, FAL.EVAL)
        @test p ≈ exp.(Z) ./ sum(exp.(Z); dims=1) atol = 1e-12
        trainmode!(net); g_train = gradients(net, X, y)
        testmode!(net); g_test = gradients(net, X, y)
        @test g_train[1][1] != g_test[1][1]                # batch against running statistics
        @test bn.state.running_mean == before             # gradients change nothing
    end

    @testset "bad networks say where and what" begin
        err(f) = try f(); "" catch e; sprint(showerror, e) end
        msg = err(() -> Network(Chain(Conv((3, 3), 1 => 2; pad=1), SkipConnection(Chain(Conv((3, 3), 2 => 3; pad=1)), +),
                                     Flatten(), Dense(48 => 2)); input=(4, 4, 1)))
        @test occursin("layer 1", msg) && occursin("(4, 4, 3)", msg) && occursin("(4, 4, 2)", msg)
        msg = err(() -> Network(Chain(Conv((3, 3), 1 => 2), BatchNorm(3), Flatten(), Dense(8 => 2)); input=(4, 4, 1)))
        @test occursin("layer 1", msg) && occursin("BatchNorm(3) expects 3 channels, but receives 2", msg)
        one = Network(Chain(Dense(3 => 4), BatchNorm(4), Dense(4 => 2)); T=Float64)
        msg = err(() -> step!(one, randn(3, 1), [1], SGD(0.1)))
        @test occursin("more than one value per channel", msg) && occursin("layer 1, BatchNorm(4)", msg)
        before = copy(one.layers[1].W)
        msg = err(() -> learn!(one, randn(3, 5), [1, 2, 1, 2, 1]; batchsize=2, optimizer=SGD(0.1)))   # a last batch of one
        @test occursin("batches of at least 2 observations, but one has 1", msg)
        @test one.layers[1].W == before && one.epochs == 0      # refused before any work
        @test_throws ArgumentError PadShortcut(2 => 5)
        @test_throws ArgumentError DFA(feedback_points=:everywhere)
        @test_throws ArgumentError SkipConnection(Dense(2 => 2), *)
    end
end

@testset "Dropout layer: the mask by hand" begin
    p, m = 0.25, 400
    rng = MersenneTwister(3)
    net = Network(Chain(Dense(5 => 8, tanh), Dropout(p), Dense(8 => 3)); input=5, rule=BP(), T=Float64, seed=2)
    X, y = randn(rng, 5, m), rand(rng, 1:3, m)
    d1, drop, d2 = net.layers
    W1, b1, W2, b2 = d1.params.W, d1.params.b, d2.params.W, d2.params.b
    FAL.workspace!(net, m)
    total, _ = FAL.loss_and_grads!(net, X, y, FAL.TRAIN)
    M = copy(FAL.buffers(drop, m).mask)
    @test all(v -> v == 0 || v == 1 / (1 - p), M)
    @test abs(count(iszero, M) / length(M) - p) < 0.03          # 3200 values: ~4 standard deviations
    # The same network by hand, with that mask held fixed: loss and every gradient.
    H1 = tanh.(W1 * X .+ b1) .* M
    Z = W2 * H1 .+ b2
    P = exp.(Z .- maximum(Z; dims=1)); P ./= sum(P; dims=1)
    @test total / m ≈ -sum(log(P[y[j], j]) for j in 1:m) / m rtol = 1e-12
    E = copy(P); for j in 1:m; E[y[j], j] -= 1; end; E ./= m
    dA1 = (W2' * E) .* M .* (1 .- tanh.(W1 * X .+ b1) .^ 2)
    @test d2.grads.W ≈ E * H1' rtol = 1e-10
    @test d1.grads.W ≈ dA1 * X' rtol = 1e-10
    @test d1.grads.b ≈ vec(sum(dA1; dims=2)) rtol = 1e-10
    # Evaluation and `gradients` (batch mode) pass values on unchanged: the network without the layer.
    plain = Network(Chain(Dense(5 => 8, tanh), Dense(8 => 3)); input=5, rule=BP(), T=Float64, seed=2)
    @test plain.layers[1].params.W == W1 && plain.layers[2].params.W == W2   # Dropout draws no weights
    @test predict_proba(net, X) == predict_proba(plain, X)
    @test gradients(net, X, y)[1] == gradients(plain, X, y)[1]
    @test_throws ArgumentError Dropout(1.0)
    @test_throws ArgumentError Dropout(-0.1)
    # A training step allocates nothing with the layer either.
    opt = SGD(0.1)
    step!(net, X, y, opt)
    @test step_allocations(net, X, y, opt) == 0
end
