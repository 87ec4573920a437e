"The loss a network trains on: `CrossEntropy()` (classification) or `MSE()` (regression)."
abstract type Loss end

"Softmax cross-entropy on integer class labels 1..K, averaged over the batch."
struct CrossEntropy <: Loss end

"Half squared error ½‖z − t‖², averaged over the batch (the loss of Lillicrap et al. 2016)."
struct MSE <: Loss end

const LOSSES = Dict{String,Loss}("cross_entropy" => CrossEntropy(), "mse" => MSE())

"""
    loss_and_error!(E, loss, Z, Y) -> (summed loss, number correct)

Fill `E` with dL/dZ of the batch-mean loss (so already divided by the batch size) for outputs `Z`
(outputs x observations) and targets `Y`; return the loss summed over the batch (the caller
divides) and, for classification, how many argmax predictions match.
"""
function loss_and_error!(E::AbstractMatrix{T}, loss::CrossEntropy, Z::AbstractMatrix{T},
                         y::AbstractVector{<:Integer}) where {T}
    p, cols = nparts(NS_SOFTMAX * length(Z)), 1:size(Z, 2)   # split over observations (threads.jl)
    return p == 1 ? loss_part!(cols, E, loss, Z, y) :
                    threaded_reduce(c -> loss_part!(c, E, loss, Z, y), add_pairs, (0.0, 0), cols, p)
end

function loss_part!(cols, E::AbstractMatrix{T}, ::CrossEntropy, Z::AbstractMatrix{T}, y::AbstractVector{<:Integer}) where {T}
    k, m = size(Z)
    invm = one(T) / m
    total = 0.0
    correct = 0
    @inbounds for j in cols
        zmax, imax = Z[1, j], 1
        for i in 2:k
            if Z[i, j] > zmax
                zmax, imax = Z[i, j], i
            end
        end
        s = zero(T)
        for i in 1:k
            E[i, j] = exp(Z[i, j] - zmax)
            s += E[i, j]
        end
        label = y[j]
        total += Float64(log(s) + zmax - Z[label, j])
        correct += imax == label
        scale = invm / s
        for i in 1:k
            E[i, j] *= scale
        end
        E[label, j] -= invm
    end
    return total, correct
end

function loss_and_error!(E::AbstractMatrix{T}, loss::MSE, Z::AbstractMatrix{T}, Y::AbstractMatrix) where {T}
    p, cols = nparts(NS_DERIV * length(Z)), 1:size(Z, 2)
    return p == 1 ? loss_part!(cols, E, loss, Z, Y) :
                    threaded_reduce(c -> loss_part!(c, E, loss, Z, Y), add_pairs, (0.0, 0), cols, p)
end

function loss_part!(cols, E::AbstractMatrix{T}, ::MSE, Z::AbstractMatrix{T}, Y::AbstractMatrix) where {T}
    invm = one(T) / size(Z, 2)
    total = 0.0
    @inbounds for j in cols, i in axes(Z, 1)
        d = Z[i, j] - T(Y[i, j])
        total += Float64(d * d) / 2
        E[i, j] = d * invm
    end
    return total, 0
end

add_pairs(a, b) = (a[1] + b[1], a[2] + b[2])

"Column-wise softmax of `Z` into `P`."
function softmax!(P::AbstractMatrix{T}, Z::AbstractMatrix{T}) where {T}
    p, cols = nparts(NS_SOFTMAX * length(Z)), 1:size(Z, 2)
    p == 1 ? softmax_part!(cols, P, Z) : threaded_parts(c -> softmax_part!(c, P, Z), cols, p)
    return P
end

function softmax_part!(cols, P::AbstractMatrix{T}, Z::AbstractMatrix{T}) where {T}
    @inbounds for j in cols
        zmax = maximum(view(Z, :, j))
        s = zero(T)
        for i in axes(Z, 1)
            P[i, j] = exp(Z[i, j] - zmax)
            s += P[i, j]
        end
        for i in axes(Z, 1)
            P[i, j] /= s
        end
    end
end

"Throw an ArgumentError unless `Y` are valid targets for `n` observations and `k` outputs."
function check_targets(::CrossEntropy, y, k::Integer, n::Integer)
    y isa AbstractVector && eltype(y) <: Integer ||   # (`isa AbstractVector{<:Integer}` allocates the type)
        throw(ArgumentError("cross-entropy targets must be a vector of integer class labels, got $(typeof(y))"))
    length(y) == n || throw(DimensionMismatch("$(length(y)) labels for $n observations"))
    for (j, label) in enumerate(y)
        1 <= label <= k || throw(ArgumentError("label $label of observation $j is outside 1:$k"))
    end
end

function check_targets(::MSE, Y, k::Integer, n::Integer)
    Y isa AbstractMatrix || throw(ArgumentError("MSE targets must be a matrix (outputs x observations), got $(typeof(Y))"))
    size(Y) == (k, n) || throw(DimensionMismatch("targets have size $(size(Y)), expected ($k, $n)"))
    all(isfinite, Y) || throw(ArgumentError("targets contain NaN or Inf"))
end

"Integer labels stored 0-based (as NumPy users have them), read as Julia's 1-based labels without a copy."
struct ZeroBasedLabels <: AbstractVector{Int}
    data::Vector{Int64}
end
Base.size(y::ZeroBasedLabels) = size(y.data)
Base.@propagate_inbounds Base.getindex(y::ZeroBasedLabels, i::Int) = Int(y.data[i]) + 1
