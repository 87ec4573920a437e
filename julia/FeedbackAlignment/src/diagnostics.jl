#= Alignment diagnostics: how close a rule's updates come to backprop's, on one batch.

Notation (Julia's, observations are columns): layer l maps h_{l-1} (h_0 = X) to a_l = W_l h_{l-1} + b_l,
h_l = f(a_l) for hidden layers, z = a_L. `e` = ∂L/∂z is the output error (the loss averaged over the
batch, so column j is e_j / m with e_j = ∂ℓ_j/∂z_j the per-sample error). A rule gives each hidden
layer an error δ_l; it updates W_l by -lr * dW_l with dW_l = δ_l h_{l-1}ᵀ. Backprop's δ_l is
δ_l^BP = (W_{l+1}ᵀ δ_{l+1}^BP) ⊙ f'(a_l).

For each layer l, `alignment` reports:

- `delta_angle`: the angle between the rule's δ_l and backprop's δ_l^BP on the same forward pass,
  both taken as vectors over the whole batch (Frobenius inner product). This is Lillicrap et al.
  2016's Δh_FA ∠ Δh_BP (Fig. 2b), the angle between the hidden-unit update signals.
- `update_angle`: the angle between the rule's dW_l and backprop's dW_l (the true gradient), as in
  Nøkland 2016 and Akrout et al. 2019. Below 90° the rule's update decreases the loss to first order.
- `feedback_angle`: the angle between the feedback matrix B_l and the matrix it stands in for
  (`feedback_target`): for FA, B_l replaces W_lᵀ (vec(B_l) ∠ vec(W_lᵀ), Lillicrap's "W aligns with
  Bᵀ"); for DFA, B_l carries e straight to layer l, where backprop would use the product of the
  downstream weights (W_L ⋯ W_{l+1})ᵀ (exact for a linear network; the activation derivatives in
  between are left out), so vec(B_l) ∠ vec((W_L ⋯ W_{l+1})ᵀ). Reported on the layer that holds B.
- `alignment_product`: the mean over the batch of δ_{l,j}^BPᵀ δ_{l,j} in per-sample units (both
  deltas computed from e_j, hence the factor m²). For a 1-hidden-layer FA net this is Lillicrap's
  condition e_jᵀ W_2 D_j² B_2 e_j (D_j = diag f'(a_{1,j}); for a linear net e_jᵀ W_2 B_2 e_j > 0);
  for FA deeper down, δ_{l+1}^BPᵀ W_{l+1} D² B_{l+1} δ_{l+1}; for DFA e_jᵀ (W_L D ⋯ D W_{l+1}) D² B_l e_j,
  in a linear net Nøkland's e_jᵀ W_L ⋯ W_{l+1} B_l e_j > 0. Positive: the rule's change of layer
  l's pre-activations lowers the loss of that sample to first order.
- `update_weight_ratio` ‖dW_l‖/‖W_l‖ (times the learning rate: the relative size of a step),
  `update_bp_ratio` ‖dW_l‖/‖dW_l^BP‖, and `weight_feedback_ratio` ‖target‖/‖B_l‖ (Frobenius norms).

Each layer has a `role`: `:feedback` (a hidden layer that learns from the rule's own error signal:
the comparisons above apply), `:output` (learns from e itself under every rule, so its angles are 0
by construction and are reported as NaN, not averaged in), `:backprop` (the rule is BP: this is the
reference itself), `:no_signal` (the rule gave this layer no update on this batch, e.g. a layer that
only the output layer's training leaves frozen, or dead ReLUs). Comparisons that do not apply are NaN.
=#

"The diagnostics per layer, in the order of the rows `alignment_matrix!` fills."
const ALIGNMENT_FIELDS = (:role, :delta_angle, :update_angle, :feedback_angle, :alignment_product,
                          :update_weight_ratio, :update_bp_ratio, :weight_feedback_ratio)

"Layer roles; the `role` row holds the index in this tuple minus one."
const ALIGNMENT_ROLES = (:feedback, :output, :backprop, :no_signal)

"""
    layer_role(rule, nlayers, l)

What layer `l` of a network with `nlayers` layers learns from under `rule`: `:output` (the output
error e), `:backprop` (backprop's own error) or `:feedback` (an error signal of the rule's making,
to be compared with backprop's). A rule whose hidden layers learn something else can add a method.
"""
layer_role(::LearningRule, nlayers, l) = l == nlayers ? :output : :feedback
layer_role(::BP, nlayers, l) = l == nlayers ? :output : :backprop

"""
    feedback_target(rule, net, l)

The matrix layer `l`'s feedback matrix B_l stands in for (same shape as B_l), or `nothing`. FA:
W_lᵀ. DFA: (W_L ⋯ W_{l+1})ᵀ. Another rule falls back on the shape of its B: W_lᵀ's shape means
FA-like, (n_l, n_out) means DFA-like.
"""
function feedback_target(rule::LearningRule, net::Network, l)
    B = net.layers[l].B
    B === nothing && return nothing
    size(B) == reverse(size(net.layers[l].W)) && return transpose(net.layers[l].W)
    size(B) == (size(net.layers[l].W, 1), outsize(net)) && return transpose(downstream(net, l))
    return nothing
end
feedback_target(::FA, net::Network, l) = net.layers[l].B === nothing ? nothing : transpose(net.layers[l].W)
feedback_target(::DFA, net::Network, l) = net.layers[l].B === nothing ? nothing : transpose(downstream(net, l))

"W_L ⋯ W_{l+1}: the linear map from layer l's output to the network output, derivatives left out."
function downstream(net::Network, l)
    L = length(net.layers)
    l < L || throw(ArgumentError("layer $l is the output layer: nothing is downstream of it"))
    M = copy(net.layers[L].W)
    for k in L-1:-1:l+1
        M = M * net.layers[k].W
    end
    return M
end

"""
    dot_norms(a, b) -> (a⋅b, ‖a‖², ‖b‖²)

One pass over two arrays of the same shape, summed in Float64 (so Float32 parameters lose nothing).
"""
function dot_norms(a::AbstractArray, b::AbstractArray)
    size(a) == size(b) || throw(DimensionMismatch("comparing arrays of sizes $(size(a)) and $(size(b))"))
    ab, aa, bb = 0.0, 0.0, 0.0
    if a isa StridedArray && b isa StridedArray && IndexStyle(a) isa IndexLinear && IndexStyle(b) isa IndexLinear
        @inbounds @simd for i in eachindex(a, b)
            x, y = Float64(a[i]), Float64(b[i])
            ab += x * y
            aa += x * x
            bb += y * y
        end
    else
        @inbounds for I in CartesianIndices(a)
            x, y = Float64(a[I]), Float64(b[I])
            ab += x * y
            aa += x * x
            bb += y * y
        end
    end
    return ab, aa, bb
end

"Degrees between two vectors given their (a⋅b, ‖a‖², ‖b‖²); NaN if either is zero. The Float64 sums
keep the cosine's rounding near 1e-16, so even an angle near 0 is good to ~1e-6 degrees."
function degrees_between(ab, aa, bb)
    (aa == 0 || bb == 0 || !isfinite(aa) || !isfinite(bb)) && return NaN
    return acosd(clamp(ab / sqrt(aa * bb), -1.0, 1.0))
end

"The angle in degrees between two arrays of the same shape taken as vectors (NaN if either is zero)."
angle_between(a, b) = degrees_between(dot_norms(a, b)...)

norm64(a) = sqrt(dot_norms(a, a)[2])
ratio(x, y) = y == 0 ? NaN : x / y

# Mean over columns of m² * dot(P[:, j], Q[:, j]): the per-sample alignment product.
function mean_column_product(P::AbstractMatrix, Q::AbstractMatrix)
    m = size(P, 2)
    total = 0.0
    @inbounds for j in 1:m, i in axes(P, 1)
        total += Float64(P[i, j]) * Float64(Q[i, j])
    end
    return total * m
end

"""
    AlignmentProbe(net)

Buffers for measuring alignment: backprop's gradients and a copy of the rule's hidden-layer errors.
Reused across calls, so tracking during training allocates nothing per batch but the target matrices.
"""
mutable struct AlignmentProbe{T}
    bp_grads::Vector{Tuple{Matrix{T},Vector{T}}}
    rule_grads::Vector{Tuple{Matrix{T},Vector{T}}}   # used by `alignment`; training brings its own
    deltas::Vector{Matrix{T}}                         # the rule's δ_l, hidden layers, up to `capacity` columns
    capacity::Int
end

function AlignmentProbe(net::Network{T}) where {T}
    grads() = [(similar(d.W), similar(d.b)) for d in net.layers]
    return AlignmentProbe{T}(grads(), grads(), Matrix{T}[], 0)
end

function reserve!(p::AlignmentProbe{T}, net::Network{T}, m) where {T}
    if p.capacity < m
        p.deltas = [Matrix{T}(undef, size(d.W, 1), m) for d in net.layers[1:end-1]]
        p.capacity = m
    end
    return p
end

"""
    alignment_matrix!(out, probe, net, X, rule_grads)

Fill `out` (length(ALIGNMENT_FIELDS) x layers, Float64) with the diagnostics of the batch `X`, given
that the forward pass, the output error and the rule's backward pass into `rule_grads` have just run
on it (the workspace holds the rule's errors). Runs backprop's backward pass on the same forward pass
into the probe's own buffers, then puts the rule's errors back, so the workspace ends as it began.
"""
function alignment_matrix!(out::AbstractMatrix{Float64}, probe::AlignmentProbe{T}, net::Network{T},
                           X::AbstractMatrix{T}, rule_grads) where {T}
    ws, m, L = net.ws, size(X, 2), length(net.layers)
    size(out) == (length(ALIGNMENT_FIELDS), L) ||
        throw(DimensionMismatch("out must be $(length(ALIGNMENT_FIELDS)) x $L, got $(size(out))"))
    reserve!(probe, net, m)
    for l in 1:L-1
        copyto!(view(probe.deltas[l], :, 1:m), delta(ws, l, m))
    end
    backward!(probe.bp_grads, net, X, BP())
    for l in 1:L
        dW, bpW = rule_grads[l][1], probe.bp_grads[l][1]
        W, B = net.layers[l].W, net.layers[l].B
        role = layer_role(net.rule, L, l)
        if l < L
            rule_delta, bp_delta = view(probe.deltas[l], :, 1:m), delta(ws, l, m)
            role != :output && (iszero(dW) || iszero(rule_delta)) && (role = :no_signal)
        end
        compared = role == :feedback && l < L
        target = B === nothing ? nothing : feedback_target(net.rule, net, l)
        update = dot_norms(dW, bpW)                        # one pass each: angle and norms together
        feedback = target === nothing ? (NaN, NaN, NaN) : dot_norms(B, target)
        out[1, l] = findfirst(==(role), ALIGNMENT_ROLES) - 1
        out[2, l] = compared ? angle_between(rule_delta, bp_delta) : NaN
        out[3, l] = compared ? degrees_between(update...) : NaN
        out[4, l] = target === nothing ? NaN : degrees_between(feedback...)
        out[5, l] = compared ? mean_column_product(bp_delta, rule_delta) : NaN
        out[6, l] = ratio(sqrt(update[2]), norm64(W))
        out[7, l] = ratio(sqrt(update[2]), sqrt(update[3]))
        out[8, l] = target === nothing ? NaN : ratio(sqrt(feedback[3]), sqrt(feedback[2]))
    end
    for l in 1:L-1
        copyto!(delta(ws, l, m), view(probe.deltas[l], :, 1:m))
    end
    return out
end

"""
    alignment(net, X, Y) -> Vector of named tuples, one per layer

How the network's rule compares with backprop on the batch (X, Y): for each layer its `role` and
the angles (degrees), alignment product and norm ratios documented at the top of diagnostics.jl.
Nothing in the network changes.
"""
function alignment(net::Network{T}, X::AbstractMatrix, Y) where {T}
    X = convert(AbstractMatrix{T}, X)
    out = measure_alignment!(Matrix{Float64}(undef, length(ALIGNMENT_FIELDS), length(net.layers)),
                             AlignmentProbe(net), net, X, Y)
    return [NamedTuple{ALIGNMENT_FIELDS}((ALIGNMENT_ROLES[Int(out[1, l])+1], out[2:end, l]...))
            for l in axes(out, 2)]
end

"Forward, output error and the rule's backward pass on (X, Y), then the diagnostics into `out`."
function measure_alignment!(out::AbstractMatrix{Float64}, probe::AlignmentProbe{T}, net::Network{T},
                            X::AbstractMatrix{T}, Y) where {T}
    check_inputs(net, X)
    check_targets(net.loss, Y, outsize(net), size(X, 2))
    workspace!(net, size(X, 2))
    loss_and_grads!(probe.rule_grads, net, X, Y)
    return alignment_matrix!(out, probe, net, X, probe.rule_grads)
end

"""
    AlignmentTracker(net, every)

Records the alignment diagnostics every `every` batches while training: pass it as
`train_epoch!(...; observe=tracker)` or `learn!(...; observe=tracker)`. It measures the batch the
epoch loop has just run forward and backward, before that batch's update, so it adds one backprop
backward pass per record and no pass over the data. `tracker.records` holds one row per record:
epoch, batch within the epoch, batches trained before it in total, then the `ALIGNMENT_FIELDS` of
each layer in turn (layer 1's first).
"""
mutable struct AlignmentTracker{T}
    every::Int
    probe::AlignmentProbe{T}
    out::Matrix{Float64}
    records::Vector{Vector{Float64}}
    steps::Int
end

function AlignmentTracker(net::Network{T}, every::Integer) where {T}
    every >= 1 || throw(ArgumentError("alignment can be tracked every n >= 1 batches, got $every"))
    return AlignmentTracker{T}(every, AlignmentProbe(net),
                               Matrix{Float64}(undef, length(ALIGNMENT_FIELDS), length(net.layers)),
                               Vector{Float64}[], 0)
end

function (t::AlignmentTracker{T})(net::Network{T}, X, Y, epoch, batch) where {T}
    if t.steps % t.every == 0
        alignment_matrix!(t.out, t.probe, net, X, net.grads)
        push!(t.records, [Float64(epoch); Float64(batch); Float64(t.steps); vec(t.out)])
    end
    t.steps += 1
    return nothing
end
