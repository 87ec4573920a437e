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
    feedback_shape(rule, sizes, l)

Size of layer `l`'s feedback matrix B (Julia's column-major shape) for a network with layer widths
`sizes`, or `nothing` when the rule gives that layer none. Layer `l` maps sizes[l] -> sizes[l+1].
"""
feedback_shape(::LearningRule, sizes, l) = nothing
# FA style: layer l's B carries the error from its output back to its input: the shape of W_lᵀ.
# The first layer's input is the data, so it needs none.
feedback_shape(::FAStyle, sizes, l) = l == 1 ? nothing : (sizes[l], sizes[l+1])
# DFA style: hidden layer l receives an output-sized signal through B_l. The output layer learns from e.
feedback_shape(::DFAStyle, sizes, l) = l == length(sizes) - 1 ? nothing : (sizes[l+1], sizes[end])

"""
    hidden_error!(D, rule, net, l, m)

Write into `D` the error signal that hidden layer `l` receives (before the activation derivative)
for a batch of `m` observations; `delta(net.ws, l + 1, m)`, the output error `delta(net.ws, L, m)` and the rule's
output-space signal `columns(net.ws, m).S` (see `prepare_signal!`) are filled.
"""
hidden_error!(D, ::BP, net, l, m) = gemm!(D, 'T', net.layers[l+1].W, 'N', delta(net.ws, l + 1, m))
hidden_error!(D, ::FAStyle, net, l, m) = gemm!(D, 'N', net.layers[l+1].B, 'N', delta(net.ws, l + 1, m))
hidden_error!(D, ::DFA, net, l, m) = gemm!(D, 'N', net.layers[l].B, 'N', delta(net.ws, length(net.layers), m))
hidden_error!(D, ::Union{DRTP,sDFA}, net, l, m) = gemm!(D, 'N', net.layers[l].B, 'N', columns(net.ws, m).S)
hidden_error!(D, ::Shallow, net, l, m) = fill!(D, 0)

"""
    prepare_signal!(rule, net, Y, m)

Called after the output error is known and before `hidden_error!`: fills `columns(net.ws, m).S` for rules
that project something other than e (DRTP: -y*/m; sDFA: sign(e)/m, keeping the batch-mean scale).
Sign-symmetric rules refresh B's signs from the current W here.
"""
prepare_signal!(::LearningRule, net, Y, m) = nothing

function prepare_signal!(::DRTP, net, y, m)
    T = eltype(net)
    S = columns(net.ws, m).S
    fill!(S, zero(T))
    @inbounds for j in 1:m
        S[y[j], j] = -one(T) / m
    end
end

function prepare_signal!(::sDFA, net, Y, m)
    S, E = columns(net.ws, m).S, delta(net.ws, length(net.layers), m)
    S .= sign.(E) ./ eltype(net)(m)
end

prepare_signal!(::SignSymmetric, net, Y, m) = refresh_signs!(net)

"B ← |B| ∘ sign(W)ᵀ for every layer with a B (a zero weight counts as positive)."
function refresh_signs!(net)
    for d in net.layers
        d.B === nothing && continue
        B, W = d.B, d.W
        @inbounds for j in axes(B, 2), i in axes(B, 1)
            B[i, j] = copysign(B[i, j], W[j, i])
        end
    end
end

"Called before each training batch (not by `gradients`): brSF redraws its magnitudes."
before_batch!(::LearningRule, net) = nothing
function before_batch!(::brSF, net)
    for (d, init) in zip(net.layers, net.feedback_init)
        d.B === nothing && continue
        n_in, n_out = size(d.B)
        init = init isa SignConcordant ? init.init : init   # its magnitudes; signs follow below
        init!(d.B, init, net.rng, n_out, n_in)
    end
    refresh_signs!(net)
end

"Called after each optimiser update: sign-symmetric rules follow W's new signs; weight mirror mirrors."
after_update!(::LearningRule, net) = nothing
after_update!(::SignSymmetric, net) = refresh_signs!(net)
function after_update!(rule::WeightMirror, net)
    T, mb = eltype(net), rule.batchsize
    for d in net.layers
        d.B === nothing && continue
        n_out, n_in = size(d.W)
        x, y = Matrix{T}(undef, n_in, mb), Matrix{T}(undef, n_out, mb)
        for _ in 1:rule.steps
            for k in eachindex(x)
                x[k] = T(rule.noise_std * gaussian(net.rng))
            end
            gemm!(y, 'N', d.W, 'N', x)                       # y = W x
            # B += lr (x yᵀ / mb - decay B), as one GEMM with beta = 1 - lr*decay
            gemm!(d.B, 'N', x, 'T', y, T(rule.lr / mb), T(1 - rule.lr * rule.decay))
        end
    end
end

"Whether layer `l` of `L` learns under the rule (Shallow: only the output layer)."
learns(::LearningRule, l, L) = true
learns(::Shallow, l, L) = l == L

"Whether the optimiser also updates B (with gradient dWᵀ): Kolen-Pollack."
learns_feedback(::LearningRule) = false
learns_feedback(::KolenPollack) = true

"Whether the rule needs class targets (it cannot be used for regression)."
needs_classes(::LearningRule) = false
needs_classes(::DRTP) = true

const RULES = Dict{String,Any}(
    "bp" => BP, "fa" => FA, "dfa" => DFA, "usf" => uSF, "frsf" => frSF, "brsf" => brSF,
    "kp" => KolenPollack, "wm" => WeightMirror, "drtp" => DRTP, "sdfa" => sDFA, "shallow" => Shallow)
