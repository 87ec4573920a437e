# Input gradients and attacks (robustness.jl), in Julia alone: central finite differences, the
# walk's own properties (nothing changes, no allocation, chunks weighed into the batch mean), and a
# Square attack on a model known only by a counting output function. The agreement with the NumPy
# oracle for every rule and layer type is in pyjlfa's tests/test_robustness.py. Included from
# runtests.jl; standalone:
#   using FeedbackAlignment, Random, Test; const FAL = FeedbackAlignment; include("robustness.jl")

# Conv, batch norm (evaluation: running statistics), every activation, both poolings, flatten, dense.
robust_chain() = Chain(Conv((3, 3), 1 => 3, tanh; pad=1), BatchNorm(3), MaxPool((2, 2)), Conv((2, 2), 3 => 4),
                       sigmoid, MeanPool((2, 1)), Flatten(), Dense(8 => 5, leakyrelu), Dense(5 => 3))
function robust_net(rule; T=Float64, smooth=false)
    chain = smooth ? Chain(Conv((3, 3), 1 => 3, tanh; pad=1), BatchNorm(3), MeanPool((2, 2)), Flatten(),
                           Dense(27 => 5, tanh), Dense(5 => 3)) : robust_chain()
    net = Network(chain; input=(6, 6, 1), rule=rule, T=T, seed=3, feedback_seed=4)
    bn = net.layers[2]
    bn.state.running_mean .= [0.2, -0.1, 0.3]
    bn.state.running_var .= [0.5, 1.5, 2.0]
    bn.params.gamma .= [0.8, 1.2, 1.1]
    return net
end
mean_loss(net, X, y) = evaluate(net, X, y).loss
input_gradient_allocations(dX, net, X, y, through) = @allocated input_gradient!(dX, net, X, y; through=through)

@testset "input gradients" begin
    rng = MersenneTwister(7)
    X, y = rand(rng, 6, 6, 1, 5), [1, 2, 3, 1, 2]

    @testset "BP: central finite differences of the mean loss (running statistics)" begin
        net = robust_net(BP(); smooth=true)
        g = input_gradient(net, X, y)
        h, fd = 1e-6, similar(X)
        for k in eachindex(X)
            Xp, Xm = copy(X), copy(X)
            Xp[k] += h
            Xm[k] -= h
            fd[k] = (mean_loss(net, Xp, y) - mean_loss(net, Xm, y)) / 2h
        end
        @test maximum(abs.(g .- fd)) < 1e-8 * max(1, maximum(abs.(fd)))
        @test input_gradient(net, X, y; through=:feedback) == g    # BP's feedback is W
    end

    @testset "$(nameof(typeof(rule))): nothing changes, no allocation" for rule in
            (BP(), FA(), DFA(), uSF(), sDFA(), Shallow())   # one of each kind of walk (tests/test_robustness.py has all)
        net = robust_net(rule)
        arrays = [copy(A) for (_, n) in named_nodes(net) for (_, A) in FAL.node_arrays(n)]
        state = (net.rng.state, net.epochs, net.optsteps, net.training)
        dX = similar(X)
        for through in (:weights, :feedback)
            input_gradient!(dX, net, X, y; through=through)
            @test input_gradient_allocations(dX, net, X, y, through) == 0
            @test all(isfinite, dX)
        end
        @test arrays == [A for (_, n) in named_nodes(net) for (_, A) in FAL.node_arrays(n)]
        @test state == (net.rng.state, net.epochs, net.optsteps, net.training)
        rule isa Shallow && @test all(iszero, input_gradient(net, X, y; through=:feedback))
        rule isa FA && @test input_gradient(net, X, y; through=:feedback) != input_gradient(net, X, y)
    end

    @testset "chunks are weighed into the whole batch's mean" begin
        net = robust_net(FA())
        Xbig, ybig = rand(rng, 6, 6, 1, 1500), rand(rng, 1:3, 1500)
        chunked = input_gradient(net, Xbig, ybig; through=:feedback)     # 1024 + 476 observations
        FAL.workspace!(net, 1500)
        @test input_gradient(net, Xbig, ybig; through=:feedback) ≈ chunked rtol = 1e-12
    end

    @test_throws ArgumentError input_gradient(robust_net(FA()), X, y; through=:both)
    @test_throws DimensionMismatch input_gradient!(zeros(6, 6, 1, 4), robust_net(FA()), X, y)
end

@testset "attacks" begin
    rng = MersenneTwister(8)
    X, y = rand(rng, 6, 6, 1, 12), rand(rng, 1:3, 12)
    net = robust_net(FA())
    within(Xa, eps, lo, hi) = all(abs.(Xa .- X) .<= eps + 1e-12) && all(lo .<= Xa .<= hi)
    for (lo, hi) in ((0.0, 1.0), (-0.2, 1.1))
        @test within(fgsm(net, X, y, 0.1; bounds=(lo, hi)), 0.1, lo, hi)
        @test within(pgd(net, X, y, 0.1; steps=5, restarts=2, bounds=(lo, hi)), 0.1, lo, hi)
        @test within(square(net, X, y, 0.1; queries=30, bounds=(lo, hi))[1], 0.1, lo, hi)
    end
    # FGSM by hand: one signed step of the true gradient.
    g = input_gradient(net, X, y)
    @test fgsm(net, X, y, 0.05) == clamp.(X .+ 0.05 .* sign.(g), 0, 1)
    @test pgd(net, X, y, 0.1; seed=5) == pgd(net, X, y, 0.1; seed=5)
    @test pgd(net, X, y, 0.1; seed=5) != pgd(net, X, y, 0.1; seed=6)
    clean = evaluate(net, X, y).accuracy
    for attack in (:fgsm, :pgd, :square)
        @test robustness(net, X, y; attack=attack, eps=[0.0]).robust_accuracy == [clean]
    end
    @test_throws ArgumentError fgsm(net, X, y, -0.1)
    @test_throws ArgumentError pgd(net, X, y, Inf)
    @test_throws ArgumentError fgsm(net, X .+ 1, y, 0.1)                 # outside the pixel range
    @test_throws ArgumentError fgsm(net, X, fill(4, 12), 0.1)            # no class 4
    mse = Network(Chain(Flatten(), Dense(36 => 2)); input=(6, 6, 1), loss=MSE(), T=Float64)
    @test_throws ArgumentError fgsm(mse, X, rand(2, 12), 0.1)
end

@testset "Square attack: outputs only, within its budget" begin
    # A linear two-class model on 4 x 4 images: class 1 while the mean pixel exceeds 0.5. Every
    # pixel at 0.55 is class 1, and lowering them all by eps = 0.1 (a known adversarial input)
    # makes it class 2.
    calls, seen = Ref(0), Ref(0)
    function logits!(Z, Xb)
        calls[] += 1
        seen[] += size(Xb, 4)
        for j in 1:size(Xb, 4)
            Z[1, j], Z[2, j] = sum(view(Xb, :, :, :, j)) / 16, 0.5
        end
        return Z
    end
    X = fill(0.55, 4, 4, 1, 3)
    X[:, :, :, 3] .= 0.9                              # out of reach at eps 0.1
    Xadv, used = similar(X), zeros(Int, 3)
    FAL.square!(Xadv, used, logits!, (4, 4, 1), 2, X, [1, 1, 1], 0.1; queries=400, seed=1)
    @test all(j -> sum(Xadv[:, :, :, j]) / 16 < 0.5, 1:2)    # found for both reachable samples
    @test sum(Xadv[:, :, :, 3]) / 16 > 0.5
    @test all(abs.(Xadv .- X) .<= 0.1 + 1e-12)
    @test used[3] == 400 && all(<(400), used[1:2])         # the budget, every prediction counted
    @test seen[] == sum(used)                              # the outputs function is all it used
    @test calls[] <= 400
end
