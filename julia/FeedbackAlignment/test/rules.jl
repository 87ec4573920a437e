# Each rule of the feedback-alignment family has the defining property its paper gives it.
# Included from runtests.jl (uses Test, LinearAlgebra, Random and FeedbackAlignment).

angle(A, B) = acosd(clamp(dot(vec(A), vec(B)) / (norm(A) * norm(B)), -1, 1))

# Two Gaussian blobs per class in 8 dimensions: a task every rule can make progress on.
function rules_task(rng, n=300)
    centres = 2 .* randn(rng, 8, 3)
    y = rand(rng, 1:3, n)
    return centres[:, y] .+ randn(rng, 8, n), y
end

@testset "learning rules" begin
    rng = MersenneTwister(21)
    X, y = rules_task(rng)

    @testset "every rule trains" begin
        for rule in (BP(), FA(), DFA(), uSF(), frSF(), brSF(), KolenPollack(), WeightMirror(), DRTP(), sDFA(), Shallow())
            net = Network([8, 32, 32, 3]; rule=rule, seed=2, T=Float64)
            start = evaluate(net, X, y)
            learn!(net, X, y; epochs=15, batchsize=16, optimizer=SGD(0.05; momentum=0.9))
            after = evaluate(net, X, y)
            @test after.loss < start.loss
            @test after.accuracy > 0.8
        end
    end

    @testset "uSF: B = scale · sign(W)ᵀ, following W" begin
        net = Network([8, 20, 10, 3]; rule=uSF(), T=Float64)
        std = sqrt(6 / (20 + 10)) / sqrt(3)        # Glorot-uniform std of layer 2
        @test net.layers[2].B == std .* sign.(transpose(net.layers[2].W))
        learn!(net, X, y; epochs=3, batchsize=16, optimizer=SGD(0.1))
        for (l, (fi, fo)) in ((2, (20, 10)), (3, (10, 3)))
            @test net.layers[l].B == sqrt(6 / (fi + fo)) / sqrt(3) .* sign.(transpose(net.layers[l].W))
        end
    end

    @testset "frSF keeps |B|, brSF redraws it; both follow W's signs" begin
        fr = Network([8, 20, 3]; rule=frSF(), T=Float64)
        br = Network([8, 20, 3]; rule=brSF(), T=Float64)
        mfr, mbr = abs.(fr.layers[2].B), abs.(br.layers[2].B)
        for net in (fr, br)
            learn!(net, X, y; epochs=2, batchsize=16, optimizer=SGD(0.1))
            @test all(sign.(net.layers[2].B) .== sign.(transpose(net.layers[2].W)))
        end
        @test abs.(fr.layers[2].B) == mfr
        @test abs.(br.layers[2].B) != mbr
    end

    @testset "Kolen-Pollack and weight mirror drive B towards Wᵀ; FA does less" begin
        angles = Dict{String,Float64}()
        for (name, rule, opt) in (("kp", KolenPollack(), SGD(0.05; momentum=0.9, weight_decay=0.05)),
                                  ("wm", WeightMirror(), SGD(0.05; momentum=0.9)),
                                  ("fa", FA(), SGD(0.05; momentum=0.9, weight_decay=0.05)))
            net = Network([8, 32, 32, 3]; rule=rule, seed=4, T=Float64)
            @test angle(net.layers[2].B, transpose(net.layers[2].W)) > 60   # random start
            learn!(net, X, y; epochs=40, batchsize=16, optimizer=opt)
            angles[name] = angle(net.layers[2].B, transpose(net.layers[2].W))
        end
        @test angles["kp"] < 10
        @test angles["wm"] < 10
        @test angles["fa"] > angles["kp"] + 20
    end

    @testset "Kolen-Pollack: B's update is Wᵀ's update" begin
        net = Network([8, 6, 3]; rule=KolenPollack(), T=Float64)
        gap = net.layers[2].B .- transpose(net.layers[2].W)
        step!(net, X[:, 1:16], y[1:16], SGD(0.1))          # no decay: B - Wᵀ is unchanged
        @test net.layers[2].B .- transpose(net.layers[2].W) ≈ gap atol = 1e-14
        step!(net, X[:, 1:16], y[1:16], SGD(0.1; decoupled_weight_decay=0.5))   # decay shrinks it
        @test net.layers[2].B .- transpose(net.layers[2].W) ≈ (1 - 0.1 * 0.5) .* gap atol = 1e-14
    end

    @testset "DRTP never reads the error" begin
        net = Network([8, 6, 5, 3]; rule=DRTP(), T=Float64)
        g1 = gradients(net, X[:, 1:10], y[1:10])
        net.layers[3].W .*= -2                              # a different output, a different error
        g2 = gradients(net, X[:, 1:10], y[1:10])
        @test g1[1][1] == g2[1][1] && g1[2][1] == g2[2][1]
        @test g1[3][1] != g2[3][1]
        @test_throws ArgumentError Network([8, 3]; rule=DRTP(), loss=MSE())
    end

    @testset "sDFA sends sign(e)/m, DFA e" begin
        net = Network([8, 6, 3]; rule=sDFA(), T=Float64)
        dfa = Network([8, 6, 3]; rule=DFA(), T=Float64)
        Xb, yb = X[:, 1:10], y[1:10]
        # With hidden deltas fed by sign(e)/m, the hidden gradient equals DFA's on a copy whose
        # output errors are replaced by their signs: check through a linear identity net.
        g = gradients(net, Xb, yb)
        FeedbackAlignment.forward!(net, Xb)
        E = similar(Xb, 3, 10)
        FeedbackAlignment.loss_and_error!(E, net.loss, FeedbackAlignment.buffers(net.layers[2], 10).H, yb)
        A1, H1 = FeedbackAlignment.buffers(net.layers[1], 10).A, FeedbackAlignment.buffers(net.layers[1], 10).H
        D1 = (net.layers[1].B * (sign.(E) ./ 10)) .* (1 .- H1 .^ 2)
        @test g[1][1] ≈ D1 * transpose(Xb) rtol = 1e-12
    end

    @testset "Shallow: only the output layer learns" begin
        net = Network([8, 6, 3]; rule=Shallow(), T=Float64)
        W1 = copy(net.layers[1].W)
        learn!(net, X, y; epochs=2, optimizer=SGD(0.1; weight_decay=0.1))
        @test net.layers[1].W == W1
    end

    @testset "initialisers and options" begin
        B = Network([50, 40, 30]; rule=FA(), feedback=Sparse(0.25; init=Normal(1.0)), T=Float64).layers[2].B
        @test count(!iszero, B) == round(Int, 0.25 * length(B))
        Q = Network([50, 40, 30]; rule=FA(), feedback=Orthogonal(), T=Float64).layers[2].B   # 40 x 30
        @test transpose(Q) * Q ≈ I
        @test_throws ArgumentError Sparse(0.0)
        @test_throws ArgumentError Sparse(1.5)
        @test_throws DimensionMismatch Network([4, 5, 3]; rule=FA(), feedback=[GlorotUniform(), Given(zeros(3, 5))], T=Float64)
        @test FeedbackAlignment.interpret("sgd(lr=0.1, momentum=0.9, schedule=cosine(epochs=4))", "optimizer") isa SGD
        @test_throws ArgumentError FeedbackAlignment.interpret("run(`rm -rf /`)", "rule")
        @test_throws ArgumentError FeedbackAlignment.interpret("fa(1 + 2)", "rule")
        @test FeedbackAlignment.lr_factor(Cosine(4, 0.0), 2) ≈ 0.5
        @test FeedbackAlignment.lr_factor(StepDecay(2, 0.5), 5) == 0.25
    end

    @testset "dropout" begin
        net = Network([8, 32, 3]; rule=FA(), dropout=0.5, T=Float64)
        FeedbackAlignment.workspace!(net, 20)
        FeedbackAlignment.forward!(net, X[:, 1:20], true)
        M = FeedbackAlignment.buffers(net.layers[1], 20).mask
        @test all(m -> m == 0 || m == 2, M) && 0.3 < count(iszero, M) / length(M) < 0.7
        @test evaluate(net, X, y) == evaluate(net, X, y)        # deterministic outside training
    end
end
