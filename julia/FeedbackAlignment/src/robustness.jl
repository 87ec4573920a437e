# Adversarial robustness: the gradient of the loss with respect to the input (through the forward
# weights, or through a rule's own feedback path), and three L∞ attacks that use it or only the
# predictions: FGSM, PGD and the Square attack. Networks are attacked as they predict: batch norm
# with its running statistics, no dropout.

"""
    ToInput(rule)

`rule`'s backward walk continued to the network's input. Training stops the walk at the first layer
with parameters (nothing before it needs an error); here every node between the input and the first
such layer carries its error back too, the first trained layer included, and a weight layer without a
feedback array (the FA family gives the first one none) carries it with its W.
"""
struct ToInput{R<:LearningRule} <: LearningRule
    rule::R
end
carries(r::ToInput, n) = carries(r.rule, n) || !n.upstream
exact(r::ToInput, n) = exact(r.rule, n) || n.B === nothing
point(r::ToInput, n) = point(r.rule, n)
signal(r::ToInput, net, m) = signal(r.rule, net, m)
# DRTP and sDFA project a signal of their own; the FA family's hooks (sign refreshes) are not run: B
# already follows W's signs, refreshed after every update, and the input gradient changes nothing.
prepare_signal!(r::ToInput{<:DFAStyle}, net, Y, m) = prepare_signal!(r.rule, net, Y, m)

function check_through(through::Symbol)
    through in (:weights, :feedback) || throw(ArgumentError("through must be :weights or :feedback, got $(repr(through))"))
    return through
end

"""
    input_gradient!(dX, net, X, Y; through = :weights) -> dX

Fill `dX` (X's shape) with the gradient of the batch's mean loss with respect to the input X, the
network in evaluation mode (batch norm's running statistics, no dropout). Nothing about the network
changes but its scratch buffers (the layers' gradient buffers among them).

`through = :weights` is the true gradient, carried back through every layer's W, whatever the rule.
`through = :feedback` is the error the network's own rule carries back, continued to the input:

- `BP()`: the same as `:weights` (backprop's feedback is W).
- FA family (`FA`, `uSF`, `frSF`, `brSF`, `KolenPollack`, `WeightMirror`): every weight layer with a B
  carries the error with B in W's place, as in training (a dense layer multiplies it by B, of Wᵀ's
  shape, instead of Wᵀ; a conv layer takes the transposed convolution with B). The first weight layer has no B (nothing trained lies before it, so
  no rule gives it one): it carries the error it received with its W.
- DFA style (`DFA`, `DRTP`, `sDFA`): the rule sends the signal it projects (e; -y*/m; sign(e)/m) to
  each feedback point through that point's B. The signal that reaches the input is the one projected
  to the first point (the first weight layer's output, after the activation and batch norm that follow
  it; with `feedback_points = :block`, the first block's output when the network starts with a block),
  carried back exactly through those elementwise layers (or the block) and then through the first
  weight layer's W, and exactly through any layers without parameters before it. This is the
  pseudo-gradient the rule's own update of that first layer is built from (its dW is that same
  error times the input). biotorch places DFA's B at a layer's input instead, so that there the image
  receives e projected by the first layer's B directly; pyjlfa's B sits at the layer's output
  (Nøkland 2016), and the last step to the input goes through the one forward matrix the rule trains
  with that signal.
- `Shallow()`: no error leaves the last layer, so the gradient through the feedback is zero.
"""
function input_gradient!(dX::Array{T}, net::Network{T}, X, Y; through::Symbol=:weights) where {T}
    X = as_input(net, X)
    check_inputs(net, X)
    size(dX) == size(X) || throw(DimensionMismatch("dX has size $(size(dX)); it must have X's size $(size(X))"))
    check_targets(net.loss, Y, outsize(net), nobs(X))
    # Each branch's rule has a concrete type, so the walk below compiles without dynamic calls.
    check_through(through) === :weights ? input_gradient_by!(dX, net, X, Y, ToInput(BP())) :
                                          input_gradient_by!(dX, net, X, Y, ToInput(net.rule))
    return dX
end

function input_gradient_by!(dX::Array{T}, net::Network{T}, X::Array{T}, Y, rule::ToInput) where {T}
    n = nobs(X)
    each_input_chunk(net, X, dX) do Xc, dXc, cols
        m = nobs(Xc)
        input_gradient_chunk!(dXc, net, Xc, m == n ? Y : targetview(Y, cols), rule)
        m == n || (dXc .*= T(m / n))    # each chunk's error is its own mean: weigh it into the whole batch's
    end
end

"""
    input_gradient(net, X, Y; through = :weights)

The gradient of the batch's mean loss with respect to X, in a new array of X's shape (see
`input_gradient!` for what `through` carries).
"""
input_gradient(net::Network{T}, X, Y; through::Symbol=:weights) where {T} =
    input_gradient!(Array{T}(undef, size(X)), net, X, Y; through=through)

# Forward in evaluation mode, the output error, then the rule's walk with the input's error buffer dX.
function input_gradient_chunk!(dX::Array{T}, net::Network{T}, X::Array{T}, Y, rule::ToInput) where {T}
    m = nobs(X)
    Z = forward!(net, X, EVAL)
    loss_and_error!(output_error(net, m), net.loss, Z, Y)
    prepare_signal!(rule, net, Y, m)
    backward!(net.root, dX, false, true, rule, net) || fill!(dX, zero(T))   # Shallow: nothing reached it
    return dX
end

# visit(Xc, dXc, cols) for chunks of whole observations of X and of dX (their own memory, wrapped).
function each_input_chunk(visit, net::Network{T}, X::Array{T}, dX::Array{T}) where {T}
    n = nobs(X)
    chunk = max(capacity(net), min(n, 1024))
    workspace!(net, chunk)
    n <= chunk && return visit(X, dX, 1:n)
    per = length(X) ÷ n
    GC.@preserve X dX for start in 1:chunk:n
        throw_if_interrupted()
        cols = start:min(start + chunk - 1, n)
        dims = (Base.front(size(X))..., length(cols))
        visit(unsafe_wrap(Array, pointer(X, (start - 1) * per + 1), dims),
              unsafe_wrap(Array, pointer(dX, (start - 1) * per + 1), dims), cols)
    end
end

# --- attacks ---------------------------------------------------------------------------------------

function check_attack(net::Network, X::Array, y, eps::Real, bounds)
    net.loss isa CrossEntropy ||
        throw(ArgumentError("attacks measure accuracy, so they need a classifier (cross-entropy loss); this network uses $(typeof(net.loss).name.name)"))
    check_inputs(net, X)
    check_targets(net.loss, y, outsize(net), nobs(X))
    isfinite(eps) && eps >= 0 || throw(ArgumentError("eps must be a finite number >= 0, got $eps"))
    lo, hi = bounds
    isfinite(lo) && isfinite(hi) && lo < hi || throw(ArgumentError("bounds must be finite with lo < hi, got $bounds"))
    for (k, x) in enumerate(X)
        lo <= x <= hi || throw(ArgumentError("X[$k] = $x lies outside the bounds $bounds: give the pixel range of the " *
                                             "data as the network sees it (after any normalisation)"))
    end
end

"""
    fgsm(net, X, y, eps; through = :weights, bounds = (0, 1))

Goodfellow et al.'s fast gradient sign method under the L∞ norm: X + eps·sign(∇ₓL), clipped to
`bounds` (the valid pixel range in the units the network sees). `through` as in `input_gradient!`.
"""
function fgsm(net::Network{T}, X, y, eps::Real; through::Symbol=:weights, bounds=(0, 1)) where {T}
    X = as_input(net, X)
    return fgsm!(similar(X), net, X, y, eps; through=through, bounds=bounds)
end

function fgsm!(Xadv::Array{T}, net::Network{T}, X::Array{T}, y, eps::Real; through::Symbol=:weights, bounds=(0, 1)) where {T}
    check_attack(net, X, y, eps, bounds)
    eps == 0 && return copyto!(Xadv, X)
    input_gradient!(Xadv, net, X, y; through=through)      # the gradient, in the output's memory
    lo, hi, e = T(bounds[1]), T(bounds[2]), T(eps)
    @inbounds @simd for k in eachindex(Xadv, X)
        Xadv[k] = clamp(X[k] + e * sign(Xadv[k]), lo, hi)
    end
    return Xadv
end

"""
    pgd(net, X, y, eps; steps = 10, step_size = 2.5eps/steps, restarts = 1, seed = 0,
        through = :weights, bounds = (0, 1))

Projected gradient descent under the L∞ norm (Madry et al. 2018): from a uniformly random start in
the eps-ball (clipped to `bounds`), `steps` steps x ← clip(x + step_size·sign(∇ₓL)) back into the
eps-ball around X and into `bounds`. With `restarts > 1` each sample keeps the first restart's input
that the network misclassifies (else the first restart's). The random start comes from `seed` alone
(SplitMix64, one uniform per input value in memory order, restart after restart).
"""
function pgd(net::Network{T}, X, y, eps::Real; kwargs...) where {T}
    X = as_input(net, X)
    return pgd!(similar(X), net, X, y, eps; kwargs...)
end

function pgd!(Xadv::Array{T}, net::Network{T}, X::Array{T}, y, eps::Real; steps::Integer=10,
              step_size::Real=2.5 * eps / steps, restarts::Integer=1, seed::Integer=0, through::Symbol=:weights,
              bounds=(0, 1)) where {T}
    check_attack(net, X, y, eps, bounds)
    steps >= 0 || throw(ArgumentError("steps must be >= 0, got $steps"))
    restarts >= 1 || throw(ArgumentError("restarts must be >= 1, got $restarts"))
    isfinite(step_size) && step_size >= 0 || throw(ArgumentError("step_size must be a finite number >= 0, got $step_size"))
    seed >= 0 || throw(ArgumentError("seed must be >= 0, got $seed"))
    check_through(through)
    eps == 0 && return copyto!(Xadv, X)
    n = nobs(X)
    per = length(X) ÷ n
    lo, hi, e, α = T(bounds[1]), T(bounds[2]), T(eps), T(step_size)
    rng = stream(seed, 4)
    x, G = similar(X), similar(X)
    fooled, labels = falses(n), Vector{Int}(undef, n)
    for r in 1:restarts
        for k in eachindex(x, X)
            x[k] = clamp(X[k] + e * T(2 * uniform(rng) - 1), lo, hi)
        end
        for _ in 1:steps
            throw_if_interrupted()
            input_gradient!(G, net, x, y; through=through)
            @inbounds @simd for k in eachindex(x, X, G)
                x[k] = clamp(clamp(x[k] + α * sign(G[k]), X[k] - e, X[k] + e), lo, hi)
            end
        end
        restarts == 1 && return copyto!(Xadv, x)
        predict_labels!(labels, net, x)
        for j in 1:n
            (r == 1 || (!fooled[j] && labels[j] != y[j])) || continue
            copyto!(Xadv, (j - 1) * per + 1, x, (j - 1) * per + 1, per)
            fooled[j] = labels[j] != y[j]
        end
    end
    return Xadv
end

"""
    square(net, X, y, eps; queries = 1000, p_init = 0.05, seed = 0, bounds = (0, 1)) -> (Xadv, used)

The Square attack under the L∞ norm (Andriushchenko et al. 2020), score-based: it reads only the
network's outputs, never a gradient (`square!` takes any function `logits!(Z, Xb)` that fills the
outputs of a batch). A sample is attacked until it is misclassified or has used `queries`
predictions, every prediction on it counting (its clean one too); `used` gives each sample's count.
The start is vertical stripes of ±eps (one sign per column and channel); each iteration proposes, for
every sample still classified correctly, a square window (its side from the share `p` of the image's
pixels that Andriushchenko et al.'s schedule gives, `p_init` halved as the budget is used up) set to
a random ±eps per channel, and keeps it if the margin (the correct class's output minus the largest
other) drops. The window's side is at most the image's less one, as in the authors' code; its corner
is uniform over every position where it fits (their code never places it on the last row or
column). Vector inputs are images one pixel high. Draws come from `seed` alone.
"""
function square(net::Network{T}, X, y, eps::Real; bounds=(0, 1), kwargs...) where {T}
    X = as_input(net, X)
    check_attack(net, X, y, eps, bounds)
    Xadv, used = similar(X), Vector{Int}(undef, nobs(X))
    square!(Xadv, used, (Z, Xb) -> outputs!(Z, net, Xb), net.insize, outsize(net), X, y, eps; bounds=bounds, kwargs...)
    return Xadv, used
end

# The schedule of the window's share p of the pixels over the budget (Andriushchenko et al.'s, for
# 10,000 iterations, rescaled to `budget`).
function square_p(p_init, it, budget)
    i = floor(Int, it / budget * 10000)
    halvings = i <= 10 ? 0 : i <= 50 ? 1 : i <= 200 ? 2 : i <= 500 ? 3 : i <= 1000 ? 4 : i <= 2000 ? 5 :
               i <= 4000 ? 6 : i <= 6000 ? 7 : i <= 8000 ? 8 : 9
    return p_init / 2^halvings
end

"The correct class's output minus the largest other one (negative: misclassified)."
function margin(Z::AbstractMatrix, j, label)
    other = typemin(eltype(Z))
    for i in axes(Z, 1)
        i == label || (other = max(other, Z[i, j]))
    end
    return Float64(Z[label, j] - other)
end

"Observation j of an array of images (or vectors, one pixel high), as W x H x C."
image(A::Array, j, (W, H, C)) = reshape(view(A, (j - 1) * W * H * C + 1:j * W * H * C), W, H, C)

"""
    square!(Xadv, used, logits!, insize, nout, X, y, eps; queries, p_init, seed, bounds)

The Square attack (see `square`) on a model known only by `logits!(Z, Xb)`, which fills the `nout`
outputs of each observation of the batch Xb (observations of shape `insize`).
"""
function square!(Xadv::Array{T}, used::Vector{Int}, logits!::F, insize::Dims, nout::Integer, X::Array{T}, y, eps::Real;
                 queries::Integer=1000, p_init::Real=0.05, seed::Integer=0, bounds=(0, 1)) where {T,F}
    queries >= 1 || throw(ArgumentError("queries must be >= 1, got $queries"))
    0 < p_init <= 1 || throw(ArgumentError("p_init must be in (0, 1], got $p_init"))
    seed >= 0 || throw(ArgumentError("seed must be >= 0, got $seed"))
    n = nobs(X)
    dims = length(insize) == 3 ? insize : (insize[1], 1, 1)
    W, H, C = dims
    per = W * H * C
    lo, hi, e = T(bounds[1]), T(bounds[2]), T(eps)
    rng = stream(seed, 5)
    copyto!(Xadv, X)
    Z = Matrix{T}(undef, nout, n)
    logits!(Z, X)                                   # the clean predictions
    fill!(used, 1)
    best = [margin(Z, j, y[j]) for j in 1:n]
    (eps == 0 || queries < 2) && return Xadv
    todo = [j for j in 1:n if best[j] > 0]          # misclassified samples are left as they are
    cand = similar(X)
    for (k, j) in enumerate(todo)                   # vertical stripes: one sign per column and channel
        xc, x0 = image(cand, k, dims), image(X, j, dims)
        for c in 1:C, w in 1:W
            s = uniform(rng) < 0.5 ? -e : e
            for h in 1:H
                xc[w, h, c] = clamp(x0[w, h, c] + s, lo, hi)
            end
        end
    end
    score!(logits!, Z, cand, todo, best, used, y, per, Xadv, true)
    for it in 1:queries - 2
        filter!(j -> best[j] > 0, todo)
        isempty(todo) && break
        throw_if_interrupted()
        side = round(Int, sqrt(square_p(p_init, it, queries) * W * H))
        sw, sh = clamp(side, 1, max(W - 1, 1)), clamp(side, 1, max(H - 1, 1))
        for (k, j) in enumerate(todo)
            xc, xa, x0 = image(cand, k, dims), image(Xadv, j, dims), image(X, j, dims)
            copyto!(xc, xa)
            w0, h0 = randbelow(rng, W - sw + 1), randbelow(rng, H - sh + 1)   # any position, the last row too
            for _ in 1:100   # draw the window's signs again while they would change nothing
                changed = false
                for c in 1:C
                    s = uniform(rng) < 0.5 ? -e : e
                    for h in h0 + 1:h0 + sh, w in w0 + 1:w0 + sw
                        v = clamp(x0[w, h, c] + s, lo, hi)
                        changed |= v != xa[w, h, c]
                        xc[w, h, c] = v
                    end
                end
                changed && break
            end
        end
        score!(logits!, Z, cand, todo, best, used, y, per, Xadv, false)
    end
    return Xadv
end

# Predict the candidates (cand's first length(todo) observations, for samples todo) in one batch; a
# candidate that lowers its sample's margin (any, when `always`) replaces the sample's adversarial input.
function score!(logits!::F, Z::Matrix{T}, cand::Array{T}, todo, best, used, y, per, Xadv, always::Bool) where {F,T}
    m = length(todo)
    GC.@preserve Z cand begin
        Zc = unsafe_wrap(Array, pointer(Z), (size(Z, 1), m))
        logits!(Zc, unsafe_wrap(Array, pointer(cand), (Base.front(size(cand))..., m)))
        for (k, j) in enumerate(todo)
            used[j] += 1
            g = margin(Zc, k, y[j])
            if always || g < best[j]
                best[j] = g
                copyto!(Xadv, (j - 1) * per + 1, cand, (k - 1) * per + 1, per)
            end
        end
    end
end

"""
    robustness(net, X, y; attack = :pgd, eps = [0, 0.01, ...], bounds = (0, 1), kwargs...)

The attack (`:fgsm`, `:pgd` or `:square`, with its keywords) at each eps, on the whole set: returns
`(eps, robust_accuracy, queries)`: the accuracy on the adversarial inputs per eps (eps 0: the clean
accuracy) and, for the Square attack, the mean number of predictions per sample (else `nothing`).
"""
function robustness(net::Network{T}, X, y; attack::Symbol=:pgd, eps=[0.0], bounds=(0, 1), kwargs...) where {T}
    X = as_input(net, X)
    attack in (:fgsm, :pgd, :square) || throw(ArgumentError("attack must be :fgsm, :pgd or :square, got $(repr(attack))"))
    foreach(e -> check_attack(net, X, y, e, bounds), isempty(eps) ? [0.0] : eps)
    Xadv, used, labels = similar(X), Vector{Int}(undef, nobs(X)), Vector{Int}(undef, nobs(X))
    accuracy, queries = Float64[], Float64[]
    for e in eps
        attack === :fgsm ? fgsm!(Xadv, net, X, y, e; bounds=bounds, kwargs...) :
        attack === :pgd ? pgd!(Xadv, net, X, y, e; bounds=bounds, kwargs...) :
        square!(Xadv, used, (Z, Xb) -> outputs!(Z, net, Xb), net.insize, outsize(net), X, y, e; bounds=bounds, kwargs...)
        predict_labels!(labels, net, Xadv)
        push!(accuracy, count(j -> labels[j] == y[j], eachindex(labels)) / length(labels))
        attack === :square && push!(queries, sum(used) / length(used))
    end
    return (eps = collect(Float64, eps), robust_accuracy = accuracy, queries = attack === :square ? queries : nothing)
end
