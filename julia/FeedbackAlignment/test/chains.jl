# Conv chains in Julia alone, against independent math written here: every layer's forward and
# backward pass and every rule's error routing as plain loops (not the package's kernels), finite
# differences, allocation counts, model files, divergence, bad chains and input conversion.
# Included from runtests.jl; standalone:
#   using FeedbackAlignment, LinearAlgebra, Random, Test; const FAL = FeedbackAlignment; include("chains.jl")

using FeedbackAlignment: CABI

const ALL_RULES = (BP(), FA(), DFA(), uSF(), frSF(), brSF(), KolenPollack(), WeightMirror(), DRTP(), sDFA(), Shallow())

# Two convs with padding and stride (the first has one input channel, the second several: both of
# the package's convolution routes), an overlapping max pool, a mean pool that drops an edge column,
# flatten, and two dense layers, the first square (its B has Wᵀ's shape and W's).
small_chain() = Chain(Conv((3, 3), 1 => 3, tanh; stride=(2, 1), pad=(1, 0)),   # 9x8x1 -> 5x6x3
                      Conv((2, 3), 3 => 4, sigmoid; stride=(1, 2), pad=(1, 1)), # -> 6x3x4
                      MaxPool((2, 2); stride=(1, 1)),                          # -> 5x2x4
                      MeanPool((2, 2)),                                        # -> 2x1x4
                      Flatten(),                                               # -> 8
                      Dense(8 => 8, tanh),
                      Dense(8 => 3))
const SMALL_INPUT = (9, 8, 1)
small_net(rule; T=Float64, seed=1) = Network(small_chain(); input=SMALL_INPUT, rule=rule, T=T, seed=seed, feedback_seed=seed + 1)

# --- the reference: plain loops over the definitions, Float64 ---------------------------------------

ref_act(σ, a) = σ === tanh ? tanh(a) : σ === sigmoid ? 1 / (1 + exp(-a)) : σ === relu ? max(a, zero(a)) :
    σ === identity ? a : error("no reference for $σ")
ref_deriv(σ, a, h) = σ === tanh ? 1 - h^2 : σ === sigmoid ? h * (1 - h) : σ === relu ? Float64(a > 0) :
    σ === identity ? 1.0 : error("no reference for $σ")

# Input position (x, y) read by output (ox, oy) at kernel offset (i, j); outside 1:w, 1:h it is padding.
tap(ox, oy, i, j, stride, pad) = ((ox - 1) * stride[1] + i - pad[1], (oy - 1) * stride[2] + j - pad[2])

function ref_conv(X, K, b, stride, pad)
    w, h, cin, m = size(X)
    kw, kh, _, cout = size(K)
    ow, oh = (w + 2pad[1] - kw) ÷ stride[1] + 1, (h + 2pad[2] - kh) ÷ stride[2] + 1
    A = zeros(ow, oh, cout, m)
    for n in 1:m, co in 1:cout, oy in 1:oh, ox in 1:ow
        s = Float64(b[co])
        for ci in 1:cin, j in 1:kh, i in 1:kw
            x, y = tap(ox, oy, i, j, stride, pad)
            1 <= x <= w && 1 <= y <= h && (s += K[i, j, ci, co] * X[x, y, ci, n])
        end
        A[ox, oy, co, n] = s
    end
    return A
end

# Given dL/dA: the error carried to the input through kernel K (W, or a feedback kernel), and the
# kernel and bias gradients (which read X, not K).
function ref_conv_back(X, K, dA, stride, pad)
    w, h, cin, m = size(X)
    kw, kh, _, cout = size(K)
    dX, dK, db = zeros(size(X)), zeros(size(K)), zeros(cout)
    for n in 1:m, co in 1:cout, oy in 1:size(dA, 2), ox in 1:size(dA, 1)
        d = dA[ox, oy, co, n]
        db[co] += d
        for ci in 1:cin, j in 1:kh, i in 1:kw
            x, y = tap(ox, oy, i, j, stride, pad)
            if 1 <= x <= w && 1 <= y <= h
                dX[x, y, ci, n] += K[i, j, ci, co] * d
                dK[i, j, ci, co] += X[x, y, ci, n] * d
            end
        end
    end
    return dX, dK, db
end

# Pooling: the outputs and, for max pooling, where each window's maximum is (the first in memory
# order, width fastest: a later equal value does not take it, unless LAST_TIE[] asks for the last,
# which only shows that the tie test can tell the two apart).
const LAST_TIE = Ref(false)
function ref_pool(X, k, stride, kind)
    w, h, c, m = size(X)
    ow, oh = (w - k[1]) ÷ stride[1] + 1, (h - k[2]) ÷ stride[2] + 1
    Y, from = zeros(ow, oh, c, m), fill((0, 0), ow, oh, c, m)
    for n in 1:m, ch in 1:c, oy in 1:oh, ox in 1:ow
        best, at, s = -Inf, (0, 0), 0.0
        for j in 1:k[2], i in 1:k[1]
            x, y = tap(ox, oy, i, j, stride, (0, 0))
            v = X[x, y, ch, n]
            s += v
            (v > best || (LAST_TIE[] && v == best)) && ((best, at) = (v, (x, y)))
        end
        Y[ox, oy, ch, n], from[ox, oy, ch, n] = kind === :max ? best : s / prod(k), at
    end
    return Y, from
end

function ref_pool_back(dY, from, insize, k, stride, kind)
    dX = zeros(insize)
    for n in axes(dY, 4), ch in axes(dY, 3), oy in axes(dY, 2), ox in axes(dY, 1)
        d = dY[ox, oy, ch, n]
        if kind === :max
            dX[from[ox, oy, ch, n]..., ch, n] += d
        else
            for j in 1:k[2], i in 1:k[1]
                x, y = tap(ox, oy, i, j, stride, (0, 0))
                dX[x, y, ch, n] += d / prod(k)
            end
        end
    end
    return dX
end

pool_kind(::MaxPool) = :max
pool_kind(::MeanPool) = :mean

# Every layer's input, pre-activation and output (and pooling's arg-max map), from the net's arrays.
function ref_forward(net, X)
    xs, As, Hs, froms = Any[], Any[], Any[], Any[]
    h = Float64.(X)
    for st in net.layers
        s, A, from = st.spec, nothing, nothing
        push!(xs, h)
        if s isa Conv
            A = ref_conv(h, st.W, st.b, s.stride, s.pad)
            h = ref_act.(s.σ, A)
        elseif s isa Dense
            A = Float64.(st.W) * h .+ st.b
            h = ref_act.(s.σ, A)
        elseif s isa Union{MaxPool,MeanPool}
            h, from = ref_pool(h, s.k, s.stride, pool_kind(s))
        else   # Flatten
            h = reshape(h, :, size(h, ndims(h)))
        end
        push!(As, A); push!(Hs, h); push!(froms, from)
    end
    return xs, As, Hs, froms
end

onehot(y, K) = Float64[k == y[j] for k in 1:K, j in eachindex(y)]

# The output error of the batch-mean cross-entropy: (softmax(Z) - onehot(y)) / m.
function ref_output_error(Z, y)
    P = exp.(Z .- maximum(Z; dims=1))
    P ./= sum(P; dims=1)
    return (P .- onehot(y, size(Z, 1))) ./ length(y)
end

# The array a layer of the FA family carries errors back through, in the layer's own layout:
# B itself, or for sign-symmetric rules |B| with W's signs (Wᵀ's for a dense layer; 0 counts as +).
function ref_feedback(rule, st)
    rule isa Union{uSF,frSF,brSF} || return Float64.(st.B)
    return st.spec isa Conv ? copysign.(Float64.(st.B), st.W) : copysign.(Float64.(st.B), transpose(st.W))
end

"""
Each layer's (dW, db) under `rule` for the batch (X, y), from the rule's semantics:
- every layer with parameters gets an error at its output, turned into dL/dA by its activation's
  derivative (the last layer: the output error e itself);
- BP carries errors back exactly (dense Wᵀ, conv: the transposed convolution with W; pooling and
  flatten exactly); the FA family carries back through B instead of W at every layer with
  parameters (the first has none, and nothing before it needs an error);
- the DFA family gives every layer with parameters but the last reshape(B * s), s = e (DFA),
  -onehot(y)/m (DRTP), sign(e)/m (sDFA); Shallow gives them nothing (only the last layer learns).
"""
function ref_gradients(net, X, y, rule)
    L = length(net.layers)
    xs, As, Hs, froms = ref_forward(net, X)
    E = ref_output_error(Hs[L], y)
    m = length(y)
    S = rule isa DFA ? E : rule isa DRTP ? -onehot(y, size(E, 1)) ./ m : rule isa sDFA ? sign.(E) ./ m : nothing
    FAfamily = rule isa Union{FA,uSF,frSF,brSF,KolenPollack,WeightMirror}
    last = findlast(st -> st.W !== nothing, collect(net.layers))
    grads = Any[nothing for _ in 1:L]
    g = E   # the error at layer l's output
    for l in L:-1:1
        st, s = net.layers[l], net.layers[l].spec
        dx = nothing
        if st.W !== nothing
            if l != last
                S === nothing || (g = reshape(st.B * S, size(Hs[l])))
                rule isa Shallow && (g = zeros(size(Hs[l])))
            end
            δ = l == last ? g : g .* ref_deriv.(s.σ, As[l], Hs[l])
            back = FAfamily ? (st.B === nothing ? nothing : ref_feedback(rule, st)) : s isa Conv ? Float64.(st.W) : transpose(Float64.(st.W))
            if s isa Dense
                grads[l] = (δ * transpose(xs[l]), vec(sum(δ; dims=2)))
                back === nothing || (dx = back * δ)
            else
                dxc, dK, db = ref_conv_back(xs[l], back === nothing ? Float64.(st.W) : back, δ, s.stride, s.pad)
                grads[l] = (dK, db)
                back === nothing || (dx = dxc)
            end
        elseif s isa Union{MaxPool,MeanPool}
            dx = ref_pool_back(g, froms[l], size(xs[l]), s.k, s.stride, pool_kind(s))
        else
            dx = reshape(g, size(xs[l]))
        end
        g = dx
    end
    return grads
end

relative_gap(a, b) = norm(Float64.(a) .- Float64.(b)) / max(norm(Float64.(a)), norm(Float64.(b)), floatmin(Float64))
same_state(a::Network, b::Network) = a.optkind === b.optkind && a.optsteps == b.optsteps &&
    all(x.slots == y.slots && x.sB == y.sB for (x, y) in zip(a.layers, b.layers))
same_params(a::Network, b::Network) = all(zip(a.layers, b.layers)) do (x, y)
    x.W == y.W && x.b == y.b && (x.B === nothing ? y.B === nothing : x.B == y.B)
end

chain_step_allocs(net, X, y, opt) = @allocated step!(net, X, y, opt)
chain_epoch_allocs(net, X, y, opt) = @allocated train_epoch!(net, X, y, opt; batchsize=16)

# A host's fa_new: an input shape and one layer call per line; returns (status, handle, message).
function chain_new(input, lines; rule="fa")
    h, inp, chain, spec = Ref{Int64}(-1), collect(Int64, input), join(lines, "\n"), "rule=$rule"
    L = length(lines)
    given, given_dims = fill(C_NULL, L), zeros(Int64, 5L)
    status = GC.@preserve h inp chain spec given given_dims CABI.fa_new(
        Base.unsafe_convert(Ptr{Int64}, h), Cint(1), Int64(length(inp)), pointer(inp), Base.unsafe_convert(Cstring, chain),
        Base.unsafe_convert(Cstring, spec), pointer(given), pointer(given_dims))
    status == 0 && CABI.fa_free(h[])
    return status, h[], unsafe_string(CABI.fa_error_message())
end

@testset "conv chains" begin
    rng = MersenneTwister(41)
    X, y = randn(rng, SMALL_INPUT..., 5), [1, 3, 2, 2, 3]

    @testset "the reference is the network's forward pass" begin
        net = small_net(BP())
        @test [st.outsize for st in net.layers] == [(5, 6, 3), (6, 3, 4), (5, 2, 4), (2, 1, 4), (8,), (8,), (3,)]
        @test size(net.layers[2].W) == (2, 3, 3, 4) && size(net.layers[6].W) == (8, 8)
        _, _, Hs, _ = ref_forward(net, X)
        @test relative_gap(outputs(net, X), Hs[end]) < 1e-12
    end

    @testset "BP gradients match finite differences" begin
        net = small_net(BP())
        for st in net.layers
            st.W === nothing || (st.b .= 0.3 .* randn(rng, length(st.b)))
        end
        g = gradients(net, X, y)
        analytic, numeric = Float64[], Float64[]
        h = 1e-6
        for (l, st) in enumerate(net.layers)
            st.W === nothing && continue
            for (P, G) in ((st.W, g[l][1]), (st.b, g[l][2])), i in eachindex(P)
                p0 = P[i]
                P[i] = p0 + h; fplus = evaluate(net, X, y).loss
                P[i] = p0 - h; fminus = evaluate(net, X, y).loss
                P[i] = p0
                push!(analytic, G[i]); push!(numeric, (fplus - fminus) / 2h)
            end
        end
        @test length(analytic) == 27 + 3 + 72 + 4 + 64 + 8 + 24 + 3
        @test relative_gap(analytic, numeric) < 1e-6
        @test norm(analytic) > 1e-3
        @test all(l -> g[l] === nothing, 3:5)          # pooling and flatten have no parameters
    end

    @testset "every rule's gradients are the reference's ($(typeof(rule)))" for rule in ALL_RULES
        net = small_net(rule)
        for st in net.layers
            st.W === nothing && continue
            st.b .= 0.3 .* randn(rng, length(st.b))
            st.W[1:3:end] .*= -1     # W's signs move: sign-symmetric B must follow them at the batch
        end
        withB = [l for l in 1:7 if net.layers[l].B !== nothing]
        if rule isa Union{FA,uSF,frSF,brSF,KolenPollack,WeightMirror}
            @test withB == [2, 6, 7]          # all but the first layer with parameters
            @test size(net.layers[2].B) == size(net.layers[2].W) && size(net.layers[7].B) == (8, 3)
        elseif rule isa Union{DFA,DRTP,sDFA}
            @test withB == [1, 2, 6]          # all but the last; B maps the outputs onto a whole output map
            @test size(net.layers[1].B) == (5 * 6 * 3, 3) && size(net.layers[2].B) == (6 * 3 * 4, 3)
        else
            @test isempty(withB)
        end
        ref = ref_gradients(net, X, y, rule)    # before the package refreshes any sign
        g = gradients(net, X, y)
        for l in (1, 2, 6, 7)
            @test (l, relative_gap(g[l][1], ref[l][1]) < 1e-10) == (l, true)
            @test (l, relative_gap(g[l][2], ref[l][2]) < 1e-10) == (l, true)
        end
        if rule isa Shallow
            @test all(l -> iszero(g[l][1]) && iszero(g[l][2]), (1, 2, 6)) && !iszero(g[7][1])
        elseif !(rule isa BP)     # the rule matters: its first layer's update is not backprop's
            bp = ref_gradients(net, X, y, BP())
            @test relative_gap(g[1][1], bp[1][1]) > 1e-3
        end
        if rule isa Union{uSF,frSF,brSF}   # the engine's B now has W's signs (Wᵀ's for the dense layers)
            @test all(sign.(net.layers[2].B) .== sign.(net.layers[2].W))
            @test all(l -> all(sign.(net.layers[l].B) .== sign.(transpose(net.layers[l].W))), (6, 7))
        end
    end

    # A window with equal maxima sends its error to the first in memory order: a 1x1 conv adding two
    # channels of small integers makes ties whose channels differ, so the kernel gradient tells.
    @testset "max pooling routes ties to the first maximum" begin
        net = Network(Chain(Conv((1, 1), 2 => 1), MaxPool((2, 2)), Flatten(), Dense(4 => 3)); input=(4, 4, 2), rule=BP(), T=Float64)
        net.layers[1].W .= 1
        Xt = Float64.(rand(MersenneTwister(5), 0:1, 4, 4, 2, 6))
        yt = [1, 2, 3, 1, 2, 3]
        S = Xt[:, :, 1:1, :] .+ Xt[:, :, 2:2, :]
        ties = count(CartesianIndices((2, 2, 6))) do I
            ox, oy, n = Tuple(I)
            w = [(x, y) for y in 2oy-1:2oy for x in 2ox-1:2ox]
            best = [p for p in w if S[p..., 1, n] == maximum(S[q..., 1, n] for q in w)]
            length(best) > 1 && length(unique(Xt[p..., 1, n] for p in best)) > 1
        end
        @test ties >= 3
        g, ref = gradients(net, Xt, yt), ref_gradients(net, Xt, yt, BP())
        @test relative_gap(g[1][1], ref[1][1]) < 1e-12 && relative_gap(g[4][1], ref[4][1]) < 1e-12
        LAST_TIE[] = true
        last_tie = try ref_gradients(net, Xt, yt, BP()) finally LAST_TIE[] = false end
        @test relative_gap(last_tie[1][1], ref[1][1]) > 1e-3     # the other routing gives another kernel gradient
    end

    @testset "Kolen-Pollack: B's update is dW's (transposed for dense) plus weight decay" begin
        net = small_net(KolenPollack())
        g = gradients(net, X, y)
        @test net.layers[2].dB === net.layers[2].dW                 # a kernel: dW itself
        @test net.layers[6].dB == transpose(net.layers[6].dW)       # a square dense W: still transposed
        @test net.layers[7].dB == transpose(net.layers[7].dW)
        lr, wd = 0.1, 0.01
        before = deepcopy(net)
        step!(net, X, y, SGD(lr; weight_decay=wd))
        for l in (2, 6, 7)
            a, b = before.layers[l], net.layers[l]
            dB = a.spec isa Conv ? g[l][1] : transpose(g[l][1])
            @test relative_gap(b.W, a.W .- lr .* (g[l][1] .+ wd .* a.W)) < 1e-12
            @test relative_gap(b.B, a.B .- lr .* (dB .+ wd .* a.B)) < 1e-12
        end
    end

    # Weight mirror: after the update, each layer with a B takes mirror steps with noise images x
    # (from the network's generator, layer by layer): dense B += lr (x (W x)ᵀ / mb - decay B), conv
    # B = (1 - lr decay) B + lr / (mb ow oh) * kernelgrad(x, conv(x, W)).
    @testset "weight mirror on conv and dense layers" begin
        rule = WeightMirror(; noise_std=0.7, lr=0.05, steps=2, batchsize=3, decay=0.3)
        net = small_net(rule)
        before = deepcopy(net)
        gen = deepcopy(net.rng)          # no dropout: the update draws nothing, the mirror everything
        step!(net, X, y, SGD(0.1))
        for l in (2, 6, 7)
            st, B = net.layers[l], Float64.(before.layers[l].B)
            W = Float64.(st.W)           # the mirror reads the updated W
            for _ in 1:rule.steps
                x = [rule.noise_std * FAL.gaussian(gen) for _ in CartesianIndices((st.insize..., rule.batchsize))]
                if st.spec isa Conv
                    yc = ref_conv(x, W, zeros(size(W, 4)), st.spec.stride, st.spec.pad)
                    _, P, _ = ref_conv_back(x, W, yc, st.spec.stride, st.spec.pad)
                    B = (1 - rule.lr * rule.decay) .* B .+ rule.lr / (rule.batchsize * size(yc, 1) * size(yc, 2)) .* P
                else
                    B = (1 - rule.lr * rule.decay) .* B .+ (rule.lr / rule.batchsize) .* (x * transpose(W * x))
                end
            end
            @test (l, relative_gap(st.B, B) < 1e-10) == (l, true)
        end
        @test net.rng.state == gen.state
    end

    @testset "steps allocate nothing ($T)" for T in (Float32, Float64)
        Xs, ys = randn(MersenneTwister(7), T, SMALL_INPUT..., 40), rand(MersenneTwister(8), 1:3, 40)  # batches 16, 16, 8
        Xb, yb = Xs[:, :, :, 1:16], ys[1:16]
        for rule in ALL_RULES, opt in (SGD(0.01), SGD(0.01, 0.9), Adam(1e-3))
            net = small_net(rule; T=T)
            for _ in 1:2
                chain_step_allocs(net, Xb, yb, opt); chain_epoch_allocs(net, Xs, ys, opt)
            end
            @test (T, rule, opt, chain_step_allocs(net, Xb, yb, opt)) == (T, rule, opt, 0)
            @test (T, rule, opt, chain_epoch_allocs(net, Xs, ys, opt)) == (T, rule, opt, 0)
        end
    end

    mktempdir() do dir
        @testset "save and load: training resumes exactly ($(typeof(rule)), $(typeof(opt).name))" for rule in (FA(), KolenPollack()),
                opt in (SGD(0.05, 0.9), Adam(1e-3))
            Xs, ys = randn(MersenneTwister(9), Float32, SMALL_INPUT..., 24), rand(MersenneTwister(10), 1:3, 24)
            net = small_net(rule; T=Float32)
            learn!(net, Xs, ys; epochs=1, batchsize=8, optimizer=opt)
            file = save(joinpath(dir, "conv.safetensors"), net; include_optimizer=true, optimizer=opt)
            meta = FAL.read_metadata(file)
            @test meta["input"] == "[9,8,1]" && occursin("Conv((3, 3), 1 => 3, tanh; stride=(2, 1), pad=(1, 0))", meta["chain"])
            loaded = load(file)
            @test loaded.chain.layers == net.chain.layers && loaded.insize == SMALL_INPUT
            @test same_params(net, loaded) && same_state(net, loaded) && loaded.optsteps == 3
            @test rule isa KolenPollack ? !isempty(loaded.layers[2].sB) && loaded.layers[2].sB == net.layers[2].sB :
                                          all(st -> isempty(st.sB), loaded.layers)
            @test all(st -> length(st.slots.W) == (opt isa Adam ? 2 : 1), filter(st -> st.W !== nothing, collect(loaded.layers)))
            @test predict_proba(loaded, Xs) == predict_proba(net, Xs)
            learn!(net, Xs, ys; epochs=2, batchsize=8, optimizer=opt)
            learn!(loaded, Xs, ys; epochs=2, batchsize=8, optimizer=opt)
            @test same_params(net, loaded) && same_state(net, loaded) && loaded.epochs == 3
        end
    end

    @testset "an update that would overflow names the layer and changes nothing" begin
        net = small_net(KolenPollack(); T=Float32)
        net.layers[1].W .*= 1f-3                      # large inputs, but no saturated first layer: large gradients
        Xs = 1000 .* randn(MersenneTwister(11), Float32, SMALL_INPUT..., 8)
        ys = rand(MersenneTwister(12), 1:3, 8)
        step!(net, Xs, ys, SGD(1e-6, 0.9))            # a velocity to keep
        g = gradients(net, Xs, ys)                     # leaves Kolen-Pollack's dB in the layers too
        # SGD with momentum 0.9: v = 0.9 v + g, P - lr v, in Float32
        overflows(P, V, G) = any(!isfinite, P .- 1f37 .* (0.9f0 .* V .+ G))
        bad = findfirst(1:7) do l
            st = net.layers[l]
            st.W === nothing && return false
            overflows(st.W, st.slots.W[1], g[l][1]) || overflows(st.b, st.slots.b[1], g[l][2]) ||
                (st.B !== nothing && overflows(st.B, st.sB[1], st.dB))
        end
        @test bad !== nothing                          # the premise: some update overflows Float32
        frozen = deepcopy(net)
        err = try step!(net, Xs, ys, SGD(1e37, 0.9)); nothing catch e; e end
        @test err isa DivergenceError
        if err isa DivergenceError
            @test isfinite(evaluate(frozen, Xs, ys).loss)          # the loss was finite: the update diverged
            @test err.layer == bad && err.array in ("W", "b", "B")
            @test occursin("layer $bad's $(err.array)", sprint(showerror, err))
        end
        @test same_params(net, frozen) && same_state(net, frozen)
        err = try learn!(net, Xs, ys; epochs=1, batchsize=8, optimizer=SGD(1e37, 0.9)); nothing catch e; e end
        @test err isa DivergenceError && (err.epoch, err.batch, err.layer) == (1, 1, bad)
        @test same_params(net, frozen) && same_state(net, frozen)
    end

    @testset "bad chains name the layer" begin
        message(f) = try f(); "no error" catch e; e isa ArgumentError ? e.msg : rethrow() end
        build(layers...; input=SMALL_INPUT) = message(() -> Network(Chain(layers...); input=input))
        @test startswith(build(Conv((3, 3), 1 => 2), Conv((6, 6), 2 => 2; pad=1), Flatten(), Dense(2 => 3); input=(5, 5, 1)),
                         "layer 1, Conv((6, 6), 2 => 2; pad=(1, 1)) has a window of (6, 6), larger than its padded input of (5, 5)")
        @test startswith(build(Conv((3, 3), 1 => 4), Conv((3, 3), 3 => 2), Flatten(), Dense(2 => 3)),
                         "layer 1, Conv((3, 3), 3 => 2) expects 3 input channels, but receives 4")
        @test startswith(build(Conv((3, 3), 1 => 2), MaxPool((2, 2)), Flatten(), Dense(10 => 3)),
                         "layer 3, Dense(10 => 3) expects 10 inputs, but receives 18")
        @test occursin("put Flatten() before it", build(Conv((3, 3), 1 => 2), Dense(84 => 3)))
        @test startswith(build(Conv((3, 3), 1 => 2), Flatten(), Dense(84 => 3, relu)),
                         "the last layer must be Dense (Python: Linear) with no activation (softmax lives in the loss), " *
                         "got layer 2, Dense(84 => 3, relu)")
        @test occursin("got layer 1, Flatten()", build(Conv((3, 3), 1 => 2), Flatten()))
        # settings no chain can have are refused when the layer is made; a host's chain text names its line
        @test occursin("stride must be at least 1", message(() -> Conv((3, 3), 1 => 2; stride=0)))
        @test occursin("stride must be at least 1", message(() -> MaxPool((2, 2); stride=(1, 0))))
        @test occursin("pad must be non-negative", message(() -> Conv((3, 3), 1 => 2; pad=-1)))
        ok = ["Conv((3, 3), 1 => 2)", "Flatten()", "Dense(84 => 3)"]
        @test chain_new(SMALL_INPUT, ok)[1] == 0
        for (line, why) in (("Conv((3, 3), 1 => 2; stride=0)", "stride must be at least 1"),
                            ("Conv((3, 3), 1 => 2; pad=-1)", "pad must be non-negative"))
            status, _, msg = chain_new(SMALL_INPUT, [line; ok[2:end]])
            @test status == 4 && startswith(msg, "ArgumentError: layer 0, \"$line\": ") && occursin(why, msg)
        end
        status, _, msg = chain_new(SMALL_INPUT, [ok[1]; "MaxPool((9, 9))"; ok[2:end]])
        @test status == 4 && occursin("layer 1, MaxPool((9, 9)) has a window of (9, 9), larger than its input of (7, 6)", msg)
    end

    @testset "Float64 data into a Float32 network, converted once" begin
        net = small_net(FA(); T=Float32)
        X64, ys = randn(MersenneTwister(13), SMALL_INPUT..., 12), rand(MersenneTwister(14), 1:3, 12)
        X32 = Float32.(X64)
        a, b = deepcopy(net), deepcopy(net)
        @test isequal(learn!(a, X64, ys; epochs=2, batchsize=5), learn!(b, X32, ys; epochs=2, batchsize=5))
        @test same_params(a, b)
        @test step!(a, X64, ys, Adam(1e-3)) == step!(b, X32, ys, Adam(1e-3)) && same_params(a, b) && same_state(a, b)
        @test evaluate(a, X64, ys) == evaluate(a, X32, ys)
        @test gradients(a, X64, ys) == gradients(a, X32, ys)
        @test predict(a, X64) == predict(a, X32) && eltype(predict_proba(a, X64)) === Float32
        @test predict_proba(a, X64) == predict_proba(a, X32)
        @test isequal(alignment(a, X64, ys), alignment(a, X32, ys))
        @test_throws DimensionMismatch predict(a, X64[:, 1, 1, 1])   # a vector is one observation of a dense network only
        dense = Network([4, 5, 3]; T=Float32, seed=2)
        x = randn(MersenneTwister(15), 4)
        @test predict(dense, x) isa Integer && predict(dense, x) == predict(dense, reshape(Float32.(x), 4, 1))[1]
    end
end
