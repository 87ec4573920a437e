"""
A learning rule decides which error signal each hidden layer receives. Adding one means adding a
type and its `feedback_shape` and `hidden_error!` methods; the hooks below (`prepare_signal!`,
`before_batch!`, `after_update!`, `learns`, `learns_feedback`) default to doing nothing.
"""
abstract type LearningRule end

"Backpropagation: errors travel back through the transposed forward weights Wᵀ."
struct BP <: LearningRule end

"Feedback alignment (Lillicrap et al. 2016): Wᵀ replaced by a fixed random B of the same shape."
struct FA <: LearningRule end

"Direct feedback alignment (Nøkland 2016): each hidden layer gets the output error through its own fixed random B."
struct DFA <: LearningRule end

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
error. Classification only.
"""
struct DRTP <: LearningRule end

"Sign-DFA (Frenkel et al. 2021's baseline): DFA with sign(e) in place of e."
struct sDFA <: LearningRule end

"Shallow learning: only the output layer learns; the hidden layers keep their initial weights."
struct Shallow <: LearningRule end

const FAStyle = Union{FA,uSF,frSF,brSF,KolenPollack,WeightMirror}
const DFAStyle = Union{DFA,DRTP,sDFA}
const SignSymmetric = Union{uSF,frSF,brSF}

"""
    feedback_shape(rule, layer, outsize, first, last, nout)

The shape of the feedback array B the rule gives `layer` (whose observations leave it with shape
`outsize`; `first`/`last`: whether it is the chain's first/last layer with parameters; `nout`: the
network's outputs), or `nothing`. Pooling and flatten layers never need one.
"""
feedback_shape(::LearningRule, layer, outsize, first, last, nout) = nothing
# FA style: B carries the error from the layer's output back to its input, in W's place: a dense B
# has Wᵀ's shape, a conv B the kernel's. The first layer with parameters has nothing to carry back to.
feedback_shape(::FAStyle, l::Dense, outsize, first, last, nout) = first ? nothing : (l.in, l.out)
feedback_shape(::FAStyle, l::Conv, outsize, first, last, nout) = first ? nothing : param_shape(l)
# DFA style: every layer with parameters but the last receives an output-sized signal on its whole
# output map through B (Nøkland 2016): (values per observation) x nout. The last learns from e.
feedback_shape(::DFAStyle, l::ParamLayer, outsize, first, last, nout) = last ? nothing : (prod(outsize), nout)

"Whether the rule carries errors back layer by layer (so layers before the last need their input's error)."
carries_back(::LearningRule) = false
carries_back(::Union{BP,FAStyle}) = true

"""
    hidden_signal!(D, rule, st, net)

Write into `D` the error signal layer `st` (not the last, with parameters) receives at its output, before the
activation's derivative. Rules that carry errors back find it already there (the next layer put it);
DFA-style rules project the output error e (`output_error`) or their own output-space signal
(`batch(net, m).S`, see `prepare_signal!`) through the layer's B; Shallow gives none.
"""
hidden_signal!(D, ::Union{BP,FAStyle}, st, net) = nothing
hidden_signal!(D, ::DFA, st, net) = project!(D, st.B, output_error(net, net.m))
hidden_signal!(D, ::Union{DRTP,sDFA}, st, net) = project!(D, st.B, batch(net, net.m).S)
hidden_signal!(D, ::Shallow, st, net) = fill!(D, 0)

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
refresh_signs!(net) = foreach_layer(st -> st.B === nothing || follow_signs!(st.B, st.W, st.spec), net.layers)

"Called before each training batch (not by `gradients`): brSF redraws its magnitudes."
before_batch!(::LearningRule, net) = nothing
before_batch!(::brSF, net) = foreach_layer(st -> st.B === nothing || redraw!(st, net.rng), net.layers)
function redraw!(st, rng)
    init = st.feedback_init isa SignConcordant ? st.feedback_init.init : st.feedback_init   # its magnitudes
    init!(st.B, init, rng, feedback_fans(st.spec, size(st.B))...)
    follow_signs!(st.B, st.W, st.spec)
end

"Called after each optimiser update: sign-symmetric rules follow W's new signs; weight mirror mirrors."
after_update!(::LearningRule, net) = nothing
after_update!(::SignSymmetric, net) = refresh_signs!(net)
after_update!(rule::WeightMirror, net) =
    foreach_layer(st -> st.B === nothing || mirror!(st, st.spec, rule, net.rng), net.layers)

# Mirror steps: noise x ~ N(0, noise_std²) into the layer, y = W x, then B += lr (x yᵀ / mb - decay B)
# (dense, as one GEMM with beta = 1 - lr*decay). For a kernel, x yᵀ is the kernel gradient of (x, y),
# a sum over mb·(output positions) patches, so it is divided by that count.
function mirror!(st, ::Dense, rule::WeightMirror, rng)
    T, x, y, mb = eltype(st), st.mirror.x, st.mirror.y, rule.batchsize
    for _ in 1:rule.steps
        noise!(x, rule.noise_std, rng)
        gemm!(y, 'N', st.W, 'N', x)
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
        conv_forward!(mr.y, mr.x, st.W, mr.bias, mr.scratch, win)
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
