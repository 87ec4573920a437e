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
the comparisons above apply; a layer with parameters but no W, such as batch norm, gets its error
exactly from the layer after it and is compared on its own parameters), `:output` (learns from e itself under every rule, so its angles are 0
by construction and are reported as NaN, not averaged in), `:backprop` (the rule is BP: this is the
reference itself), `:no_signal` (the rule gave this layer no update on this batch, e.g. a layer that
only the output layer's training leaves frozen, or dead ReLUs). Comparisons that do not apply are NaN.
=#

"The diagnostics per layer, in the order of the rows `alignment_matrix!` fills."
const ALIGNMENT_FIELDS = (:role, :delta_angle, :update_angle, :feedback_angle, :alignment_product,
                          :update_weight_ratio, :update_bp_ratio, :weight_feedback_ratio)

"Layer roles; the `role` row holds the index in this tuple minus one."
const ALIGNMENT_ROLES = (:feedback, :output, :backprop, :no_signal, :no_params)

"""
    layer_role(rule, net, l)

What layer `l` learns from under `rule`: `:output` (the output error e), `:backprop` (backprop's own
error), `:feedback` (an error signal of the rule's making, to be compared with backprop's), or
`:no_params` (pooling, flatten, activations). A rule whose hidden layers learn something else can add a method.
"""
layer_role(rule::LearningRule, net, l) = isempty(net.layers[l].params) ? :no_params :
    l == length(net.layers) ? :output : rule isa BP ? :backprop : :feedback

# The parameters a layer's update is compared on: W for a weight layer (as the papers compare), else
# all of them (batch norm's γ and β).
# `arrays` is the node's params or grads (or the probe's copy of its grads, in the same order).
compared_arrays(st, arrays) = weight_layer(st.layer) ? (first(arrays),) : Tuple(arrays)

# dot_norms summed over pairs of arrays: one vector made of them all.
dot_norms(as::Tuple, bs::Tuple) = reduce((u, v) -> u .+ v, map(dot_norms, as, bs))

"""
    feedback_target(rule, net, l)

The array layer `l`'s feedback B_l stands in for (same shape as B_l), or `nothing`. FA family: W_lᵀ
(a dense layer) or W_l (a kernel). DFA family: (W_L ⋯ W_{l+1})ᵀ when every later layer is dense (the
linear map to the output; the activation derivatives in between are left out), else `nothing`.
"""
feedback_target(rule::LearningRule, net::Network, l) = nothing
function feedback_target(::FAStyle, net::Network, l)
    st = net.layers[l]
    st.B === nothing && return nothing
    return like_feedback(st.layer, st.W)   # a dense B stands for Wᵀ, a kernel-shaped B for W
end
function feedback_target(::DFAStyle, net::Network, l)
    net.layers[l].B === nothing && return nothing
    all(k -> linear_map(net.layers[k].layer), l+1:length(net.layers)) || return nothing
    return transpose(downstream(net, l))
end

"W_L ⋯ W_{l+1}: the linear map from layer l's output to the network output, derivatives left out (dense layers)."
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

# The per-sample alignment product: m² times the mean over observations of each observation's
# dot(P, Q) (observations last), i.e. m times the whole dot product.
mean_column_product(P::AbstractArray, Q::AbstractArray) = dot_norms(P, Q)[1] * size(P, ndims(P))

"""
    AlignmentProbe(net)

Buffers for measuring alignment: a copy of the rule's gradients and errors of every layer with
parameters, kept while backprop's are computed on the same forward pass. Reused across calls.
"""
mutable struct AlignmentProbe{T}
    grads::Vector{Vector{Array{T}}}   # per layer with parameters, its gradients in declaration order
    dB::Vector{Array{T}}
    deltas::Vector{Array{T}}      # the rule's dL/dA, up to `capacity` observations
    capacity::Int
end

function AlignmentProbe(net::Network{T}) where {T}
    params = [st for st in net.layers if !isempty(st.params)]
    return AlignmentProbe{T}([Array{T}[similar(g) for g in values(st.grads)] for st in params],
                             [st.dB === nothing ? T[] : similar(st.dB) for st in params], Array{T}[], 0)
end

function reserve!(p::AlignmentProbe{T}, net::Network{T}, m) where {T}
    if p.capacity < m
        p.deltas = [Array{T}(undef, st.outsize..., m) for st in net.layers if !isempty(st.params)]
        p.capacity = m
    end
    return p
end

"""
    alignment_matrix!(out, probe, net)

Fill `out` (length(ALIGNMENT_FIELDS) x layers, Float64) with the diagnostics of the batch the
network has just run forward and backward under its rule (the layers hold the rule's errors and
gradients). Runs backprop's backward pass on the same forward pass, then puts the rule's gradients
back, so a training step can still apply them.
"""
function alignment_matrix!(out::AbstractMatrix{Float64}, probe::AlignmentProbe{T}, net::Network{T}) where {T}
    m, L = net.m, length(net.layers)
    size(out) == (length(ALIGNMENT_FIELDS), L) ||
        throw(DimensionMismatch("out must be $(length(ALIGNMENT_FIELDS)) x $L, got $(size(out))"))
    reserve!(probe, net, m)
    params = [l for l in 1:L if !isempty(net.layers[l].params)]
    rule_delta(p) = lead(probe.deltas[p], m)
    for (p, l) in enumerate(params)
        st = net.layers[l]
        copyto!(rule_delta(p), buffers(st, m).D)
        foreach(copyto!, probe.grads[p], values(st.grads))
        st.dB === nothing || st.dB === st.grads.W || copyto!(probe.dB[p], st.dB)
    end
    # The rule's backward pass used conv layers' im2col columns as scratch: make them again (the
    # same pre-activations) for backprop's kernel gradients.
    foreach_layer(st -> weight_layer(st.layer) && refresh!(st, net), net.layers)
    backward!(net, BP())
    for l in 1:L
        st = net.layers[l]
        role = layer_role(net.rule, net, l)
        if role == :no_params
            out[:, l] .= NaN
            out[1, l] = findfirst(==(role), ALIGNMENT_ROLES) - 1
            continue
        end
        p = findfirst(==(l), params)
        rule_grads = compared_arrays(st, probe.grads[p])
        rule_d, bp_d = rule_delta(p), buffers(st, m).D
        role == :feedback && (all(iszero, rule_grads) || iszero(rule_d)) && (role = :no_signal)
        compared = role == :feedback
        target = st.B === nothing ? nothing : feedback_target(net.rule, net, l)
        update = dot_norms(rule_grads, compared_arrays(st, values(st.grads)))   # one pass each: angle and norms together
        feedback = target === nothing ? (NaN, NaN, NaN) : dot_norms(st.B, target)
        out[1, l] = findfirst(==(role), ALIGNMENT_ROLES) - 1
        out[2, l] = compared ? angle_between(rule_d, bp_d) : NaN
        out[3, l] = compared ? degrees_between(update...) : NaN
        out[4, l] = target === nothing ? NaN : degrees_between(feedback...)
        out[5, l] = compared ? mean_column_product(bp_d, rule_d) : NaN
        out[6, l] = ratio(sqrt(update[2]), sqrt(sum(a -> norm64(a)^2, compared_arrays(st, values(st.params)))))
        out[7, l] = ratio(sqrt(update[2]), sqrt(update[3]))
        out[8, l] = target === nothing ? NaN : ratio(sqrt(feedback[3]), sqrt(feedback[2]))
    end
    for (p, l) in enumerate(params)    # the rule's gradients back, for the update that follows
        st = net.layers[l]
        foreach(copyto!, values(st.grads), probe.grads[p])
        st.dB === nothing || st.dB === st.grads.W || copyto!(st.dB, probe.dB[p])
    end
    return out
end

# A weight layer's forward pass again, on the input it read (the same outputs, and its scratch as the
# forward pass leaves it).
function refresh!(st::Node{T,L,NI}, net) where {T,L,NI}
    forward!(st.layer, st, buffers(st, net.m), net.seen[st.index]::Array{T,NI}, BATCH)
    return true
end

"""
    alignment(net, X, Y) -> Vector of named tuples, one per layer

How the network's rule compares with backprop on the batch (X, Y): for each layer its `role` and
the angles (degrees), alignment product and norm ratios documented at the top of diagnostics.jl.
Nothing in the network changes.
"""
function alignment(net::Network{T}, X, Y) where {T}
    out = measure_alignment!(Matrix{Float64}(undef, length(ALIGNMENT_FIELDS), length(net.layers)),
                             AlignmentProbe(net), net, as_input(net, X), Y)
    return [NamedTuple{ALIGNMENT_FIELDS}((ALIGNMENT_ROLES[Int(out[1, l])+1], out[2:end, l]...))
            for l in axes(out, 2)]
end

"Forward, output error and the rule's backward pass on (X, Y), then the diagnostics into `out`."
function measure_alignment!(out::AbstractMatrix{Float64}, probe::AlignmentProbe{T}, net::Network{T},
                            X::Array{T}, Y) where {T}
    check_inputs(net, X)
    check_targets(net.loss, Y, outsize(net), nobs(X))
    workspace!(net, nobs(X))
    loss_and_grads!(net, X, Y)
    return alignment_matrix!(out, probe, net)
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
        alignment_matrix!(t.out, t.probe, net)
        push!(t.records, [Float64(epoch); Float64(batch); Float64(t.steps); vec(t.out)])
    end
    t.steps += 1
    return nothing
end
