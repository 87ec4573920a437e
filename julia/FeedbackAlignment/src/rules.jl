"""
A learning rule decides where each layer's error signal comes from: which nodes carry the error
back (`carries`), whether weight layers carry it with W or with their feedback array (`exact`), the
shape of those arrays (`feedback_shape`), and where a direct signal enters (`point`, `signal`).
The layers decide how an error is carried (layers.jl). Adding a rule means adding a type and its
methods; the hooks below (`prepare_signal!`, `before_batch!`, `after_update!`, `learns`,
`learns_feedback`) default to doing nothing, and a rule that says nothing carries no error back.
"""
abstract type LearningRule end

"Backpropagation: errors travel back through the transposed forward weights Wᵀ."
struct BP <: LearningRule end

"Feedback alignment (Lillicrap et al. 2016): Wᵀ replaced by a fixed random B of the same shape."
struct FA <: LearningRule end

"""
    DFA(; feedback_points = :layer)

Direct feedback alignment (Nøkland 2016): each hidden layer gets the output error through its own
fixed random B. `feedback_points` says where: `:layer`, at every Dense and Conv layer but the last,
after the activation, batch norm and other elementwise layers that directly follow it (so a hidden
layer's error is (B e) ⊙ f'(a), Nøkland's rule, with batch norm's exact derivative when it sits in
between); `:block`, at each skip connection's output (after the elementwise layers that follow it),
from where the error is backpropagated exactly through the block, as Launay et al. (2020) place DFA
per transformer block; Dense and Conv layers outside blocks keep their own points.
"""
struct DFA <: LearningRule
    feedback_points::String
    DFA(points) = new(check_points(points))
end
DFA(; feedback_points=:layer) = DFA(feedback_points)

function check_points(p)
    s = string(p)
    s in ("layer", "block") || throw(ArgumentError("feedback_points must be :layer or :block, got $(repr(p))"))
    return s
end

"""
    uSF(scale = nothing)

Uniform sign-concordant feedback (Liao, Leibo & Poggio 2016): B = scale · sign(W)ᵀ, following W's
signs as it learns. `scale` defaults to the std of the layer's forward initialiser.
"""
struct uSF <: LearningRule
    scale::Union{Float64,Nothing}
    function uSF(scale)
        scale === nothing || scale > 0 ||
            throw(ArgumentError("uSF scale must be positive (or nothing: the std of the layer's initialiser), got $scale"))
        return new(scale)
    end
end
uSF(; scale=nothing) = uSF(scale === nothing ? nothing : Float64(scale))

"Fixed random-magnitude sign-concordant feedback (Liao et al. 2016): B = |M₀| ∘ sign(W)ᵀ, M₀ fixed."
struct frSF <: LearningRule end

"Batchwise random-magnitude sign-concordant feedback (Liao et al. 2016): B = |M| ∘ sign(W)ᵀ, M redrawn every batch."
struct brSF <: LearningRule end

"""
Kolen-Pollack (Akrout et al. 2019, "Deep learning without weight transport"): B gets the same
update as Wᵀ, weight decay included, so with decay B converges to Wᵀ.
"""
struct KolenPollack <: LearningRule end

"""
    WeightMirror(; noise_std = 1.0, lr = 0.01, steps = 1, batchsize = 16, decay = noise_std^2)

Weight mirror (Akrout et al. 2019): after each update, `steps` mirror steps drive each B towards
Wᵀ using only forward noise: x ~ N(0, noise_std²) into the layer, y = W x, B += lr·(x yᵀ/batchsize
- decay·B). The fixed point is (noise_std²/decay)·Wᵀ, i.e. Wᵀ with the default decay.
"""
struct WeightMirror <: LearningRule
    noise_std::Float64
    lr::Float64
    steps::Int
    batchsize::Int
    decay::Float64
    function WeightMirror(noise_std, lr, steps, batchsize, decay)
        noise_std > 0 || throw(ArgumentError("WeightMirror noise_std must be positive, got $noise_std"))
        lr > 0 || throw(ArgumentError("WeightMirror lr must be positive, got $lr"))
        steps >= 1 || throw(ArgumentError("WeightMirror steps must be at least 1, got $steps"))
        batchsize >= 1 || throw(ArgumentError("WeightMirror batchsize must be at least 1, got $batchsize"))
        decay >= 0 || throw(ArgumentError("WeightMirror decay must be non-negative, got $decay"))
        return new(noise_std, lr, steps, batchsize, decay)
    end
end
WeightMirror(; noise_std::Real=1.0, lr::Real=0.01, steps::Integer=1, batchsize::Integer=16,
             decay::Real=noise_std^2) = WeightMirror(noise_std, lr, steps, batchsize, decay)

"""
Direct random target projection (Frenkel, Lefebvre & Bol 2021): hidden layer l learns from
B_l·(-y*) with y* the one-hot target, a stand-in for the sign of the error; it never reads the
error. Classification only. `feedback_points` as DFA's.
"""
struct DRTP <: LearningRule
    feedback_points::String
    DRTP(points) = new(check_points(points))
end
DRTP(; feedback_points=:layer) = DRTP(feedback_points)

"Sign-DFA (Frenkel et al. 2021's baseline): DFA with sign(e) in place of e. `feedback_points` as DFA's."
struct sDFA <: LearningRule
    feedback_points::String
    sDFA(points) = new(check_points(points))
end
sDFA(; feedback_points=:layer) = sDFA(feedback_points)

"Shallow learning: only the output layer learns; the hidden layers keep their initial weights."
struct Shallow <: LearningRule end

const FAStyle = Union{FA,uSF,frSF,brSF,KolenPollack,WeightMirror}
const DFAStyle = Union{DFA,DRTP,sDFA}
const SignSymmetric = Union{uSF,frSF,brSF}

"""
    feedback_shape(rule, layer, outsize, upstream, last, inblock, nout)

The shape of the feedback array B the rule gives `layer` (whose observations leave it with shape
`outsize`; `upstream`: whether a layer with parameters lies before it; `last`: whether it is the
network's last layer; `inblock`: whether it sits inside a skip connection; `nout`: the network's
outputs), or `nothing`. Only weight layers (and, for direct rules at block points, skip connections)
ever get one.
"""
feedback_shape(::LearningRule, layer, outsize, upstream, last, inblock, nout) = nothing
# FA style: B carries the error from the layer's output back to its input, in W's place (the layer
# says its shape: Wᵀ's for a dense layer, the kernel's for a conv). A layer with nothing trained
# before it has nothing to carry back to.
feedback_shape(::FAStyle, l, outsize, upstream, last, inblock, nout) =
    weight_layer(l) && upstream ? stand_in_shape(l) : nothing
# DFA style: a direct feedback point receives an output-sized signal on its whole output map through
# B (Nøkland 2016): (values per observation) x nout. The last layer learns from e itself.
feedback_shape(r::DFAStyle, l, outsize, upstream, last, inblock, nout) =
    (weight_layer(l) && !last && !(by_block(r) && inblock)) || (is_block(l) && by_block(r) && !inblock) ?
        (prod(outsize), nout) : nothing
by_block(r::DFAStyle) = r.feedback_points == "block"

"Whether the rule carries errors back layer by layer (so layers before the last need their input's error)."
carries_back(::LearningRule) = false
carries_back(::Union{BP,FAStyle}) = true

"""
    carries(rule, node)

Whether `node` carries the error it receives back to its input under `rule`: backprop and the FA
family wherever something before it trains; Shallow never; DFA-style rules only from a node to the
weight layer its point serves (within a run) or, with block points, inside a block down to the
block's input.
"""
carries(::LearningRule, n) = false
carries(rule::Union{BP,FAStyle}, n) = n.upstream
carries(::Shallow, n) = false
function carries(r::DFAStyle, n)
    is_block(n.layer) && return by_block(r) ? n.inblock && n.block_upstream : n.upstream
    by_block(r) && n.inblock && return n.block_upstream
    return !weight_layer(n.layer) && n.upstream
end
"Whether weight layers carry the error with W itself (backprop, and direct rules inside a block) or with their B."
exact(::LearningRule) = true
exact(::FAStyle) = false
"Whether `node` carries its error with W (by default what the rule says for every weight layer)."
exact(rule::LearningRule, node) = exact(rule)

"Whether a direct feedback signal enters at `node` under `rule`."
point(::LearningRule, n) = false
point(::DFAStyle, n) = n.inject !== nothing

"The output-sized signal a direct rule projects: e (DFA), or the rule's own (`prepare_signal!`)."
signal(::DFA, net, m) = output_error(net, m)
signal(::Union{DRTP,sDFA}, net, m) = batch(net, m).S

# D (outsize... x m, as a (values x m) matrix) = B * S, without a reshaped wrapper.
function project!(D::Array{T}, B::Matrix{T}, S::Matrix{T}) where {T}
    rows, m = size(B, 1), size(S, 2)
    gemm_ptr!('N', 'N', rows, m, size(B, 2), one(T), pointer(B), rows, pointer(S), size(S, 1), zero(T), pointer(D), rows)
    return D
end

"""
    prepare_signal!(rule, net, Y, m)

Called after the output error is known and before the backward pass: fills `batch(net, m).S` for rules
that project something other than e (DRTP: -y*/m; sDFA: sign(e)/m, keeping the batch-mean scale).
Sign-symmetric rules refresh B's signs from the current W here.
"""
prepare_signal!(::LearningRule, net, Y, m) = nothing

function prepare_signal!(::DRTP, net, y, m)
    T = eltype(net)
    S = batch(net, m).S
    fill!(S, zero(T))
    @inbounds for j in 1:m
        S[y[j], j] = -one(T) / m
    end
end

function prepare_signal!(::sDFA, net, Y, m)
    S, E = batch(net, m).S, output_error(net, m)
    S .= sign.(E) ./ eltype(net)(m)
end

prepare_signal!(::SignSymmetric, net, Y, m) = refresh_signs!(net)

"B ← |B| ∘ sign(W) (dense: sign(Wᵀ)) for every layer with a B (a zero weight counts as positive)."
refresh_signs!(net) = foreach_layer(st -> st.B === nothing || follow_signs!(st.B, st.params.W, st.layer), net.layers)

"Called before each training batch (not by `gradients`): brSF redraws its magnitudes."
before_batch!(::LearningRule, net) = nothing
before_batch!(::brSF, net) = foreach_layer(st -> st.B === nothing || redraw!(st, net.rng), net.layers)
"The initialiser of B's magnitudes: a sign-concordant initialiser's inner one, else itself."
magnitudes(init::SignConcordant) = init.init
magnitudes(init) = init
function redraw!(st, rng)
    init = magnitudes(getfield(st, :feedback_init))
    init!(st.B, init, rng, feedback_fans(st.layer, size(st.B))...)
    follow_signs!(st.B, st.params.W, st.layer)
end

"Called after each optimiser update: sign-symmetric rules follow W's new signs; weight mirror mirrors."
after_update!(::LearningRule, net) = nothing
after_update!(::SignSymmetric, net) = refresh_signs!(net)
after_update!(rule::WeightMirror, net) =
    foreach_layer(st -> st.B === nothing || mirror!(st, st.layer, rule, net.rng), net.layers)

# Mirror steps: noise x ~ N(0, noise_std²) into the layer, y = W x, then B += lr (x yᵀ / mb - decay B)
# (dense, as one GEMM with beta = 1 - lr*decay). For a kernel, x yᵀ is the kernel gradient of (x, y),
# a sum over mb·(output positions) patches, so it is divided by that count.
function mirror!(st, ::Dense, rule::WeightMirror, rng)
    T, x, y, mb = eltype(st), st.mirror.x, st.mirror.y, rule.batchsize
    for _ in 1:rule.steps
        noise!(x, rule.noise_std, rng)
        gemm!(y, 'N', st.params.W, 'N', x)
        gemm!(st.B, 'N', x, 'T', y, T(rule.lr / mb), T(1 - rule.lr * rule.decay))
    end
end

function mirror!(st, spec::Conv, rule::WeightMirror, rng)
    T, mr, win = eltype(st), st.mirror, window(spec)
    fill!(mr.bias, zero(T))
    scale = T(rule.lr / (rule.batchsize * size(mr.y, 1) * size(mr.y, 2)))
    keep = T(1 - rule.lr * rule.decay)
    for _ in 1:rule.steps
        noise!(mr.x, rule.noise_std, rng)
        conv_forward!(mr.y, mr.x, st.params.W, mr.bias, mr.scratch, win)
        conv_filter_grad!(mr.product, mr.bias, mr.x, mr.y, mr.scratch, win)
        B, P = st.B, mr.product
        @inbounds @simd for k in eachindex(B, P)
            B[k] = keep * B[k] + scale * P[k]
        end
        fill!(mr.bias, zero(T))
    end
end

function noise!(x::Array{T}, std, rng) where {T}
    for k in eachindex(x)
        x[k] = T(std * gaussian(rng))
    end
end

"Whether layer `st` learns under the rule (Shallow: only the last layer)."
learns(::LearningRule, st, net) = true
learns(::Shallow, st, net) = st.index == length(net.layers)

"Whether the optimiser also updates B (with the gradient of W, transposed for a dense layer): Kolen-Pollack."
learns_feedback(::LearningRule) = false
learns_feedback(::KolenPollack) = true

"Whether the rule needs class targets (it cannot be used for regression)."
needs_classes(::LearningRule) = false
needs_classes(::DRTP) = true

const RULES = Dict{String,Any}(
    "bp" => BP, "fa" => FA, "dfa" => DFA, "usf" => uSF, "frsf" => frSF, "brsf" => brSF,
    "kp" => KolenPollack, "wm" => WeightMirror, "drtp" => DRTP, "sdfa" => sDFA, "shallow" => Shallow)
