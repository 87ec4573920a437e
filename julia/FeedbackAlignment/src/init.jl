# Initialisers: values users pass for forward weights (`init`) and feedback matrices (`feedback`).
# `init!(M, initialiser, rng, fan_in, fan_out, W)` fills M in memory order (Python's row-major
# order of the same array) from a SplitMix64 stream; `W` is the layer's forward weight matrix,
# which only sign-concordant feedback reads. Draws are computed in Float64 and rounded once.

"""
How an array starts: the supertype of `GlorotUniform`, `HeNormal`, `Uniform`, `Sparse`, `Given`, ...
Pass one as `init` (forward weights) or `feedback` (feedback arrays) to `Network`. Each fills an array
from the network's SplitMix64 streams, so a seed gives the same draw in Julia and Python.
"""
abstract type Initialiser end

"Standard normal draw (Box-Muller on two SplitMix64 uniforms; the second value is discarded)."
function gaussian(r::SplitMix64)
    u1, u2 = uniform(r), uniform(r)
    return sqrt(-2.0 * log(1.0 - u1)) * cos(2π * u2)
end

# Uniform and normal families: a unit draw (U(-1, 1) or N(0, 1)) times a scale from the fans
# (the limit of the uniform, the std of the normal).
const UNIFORM_UNIT, NORMAL_UNIT = :(2.0 * uniform(r) - 1.0), :(gaussian(r))
for (name, doc, fan_scale, unit_draw) in (
        (:GlorotUniform, "Glorot & Bengio (2010): U(-l, l), l = gain*sqrt(6/(fan_in+fan_out)).", :(i.gain * sqrt(6.0 / (fi + fo))), UNIFORM_UNIT),
        (:HeUniform, "He et al. (2015): U(-l, l), l = gain*sqrt(6/fan_in).", :(i.gain * sqrt(6.0 / fi)), UNIFORM_UNIT),
        (:LeCunUniform, "LeCun: U(-l, l), l = gain*sqrt(3/fan_in), so std = gain/sqrt(fan_in).", :(i.gain * sqrt(3.0 / fi)), UNIFORM_UNIT),
        (:GlorotNormal, "Glorot & Bengio (2010): N(0, s²), s = gain*sqrt(2/(fan_in+fan_out)).", :(i.gain * sqrt(2.0 / (fi + fo))), NORMAL_UNIT),
        (:HeNormal, "He et al. (2015): N(0, s²), s = gain*sqrt(2/fan_in).", :(i.gain * sqrt(2.0 / fi)), NORMAL_UNIT),
        (:LeCunNormal, "LeCun: N(0, s²), s = gain/sqrt(fan_in).", :(i.gain / sqrt(fi)), NORMAL_UNIT))
    @eval begin
        @doc $doc struct $name <: Initialiser
            gain::Float64
            $name(gain::Real) = gain > 0 ? new(gain) : throw(ArgumentError(string($(string(name)), " gain must be positive, got ", gain)))
        end
        $name(; gain::Real=1.0) = $name(Float64(gain))
        scale(i::$name, fi, fo) = $fan_scale
        unit(::$name, r) = $unit_draw
    end
end

"U(-scale, scale) with a fixed scale (Lillicrap et al. 2016 use U(-0.5, 0.5) for B)."
struct Uniform <: Initialiser
    scale::Float64
    Uniform(scale::Real=0.5) = scale > 0 ? new(scale) : throw(ArgumentError("Uniform scale must be positive, got $scale"))
end
scale(i::Uniform, fi, fo) = i.scale
unit(::Uniform, r) = 2.0 * uniform(r) - 1.0

"N(0, std²) with a fixed standard deviation."
struct Normal <: Initialiser
    std::Float64
    Normal(std::Real=0.1) = std > 0 ? new(std) : throw(ArgumentError("Normal std must be positive, got $std"))
end
scale(i::Normal, fi, fo) = i.std
unit(::Normal, r) = gaussian(r)

# The scalar families fill element by element: a unit draw times the family's scale, computed once
# (brSF redraws every batch; a division and a square root per element made that 20 ns an element).
function init!(M::AbstractArray{T}, i::Initialiser, r::SplitMix64, fan_in, fan_out, W=nothing) where {T}
    s = scale(i, fan_in, fan_out)
    for k in eachindex(M)
        M[k] = T(unit(i, r) * s)
    end
    return M
end

"All zeros (for rules that learn B, or DFA's zero-initialised forward weights)."
struct Zeros <: Initialiser end
init!(M::AbstractArray, ::Zeros, r::SplitMix64, fan_in, fan_out, W=nothing) = fill!(M, 0)

"A (semi-)orthogonal matrix times `gain`: Q of the QR factorisation of a Gaussian matrix (Saxe et al. 2014)."
struct Orthogonal <: Initialiser
    gain::Float64
    Orthogonal(gain::Real) = gain > 0 ? new(gain) : throw(ArgumentError("Orthogonal gain must be positive, got $gain"))
end
Orthogonal(; gain::Real=1.0) = Orthogonal(Float64(gain))
function init!(M::AbstractArray{T}, i::Orthogonal, r::SplitMix64, fan_in, fan_out, W=nothing) where {T}
    # a kernel is orthogonal as a (kw·kh·cin) x cout matrix
    ndims(M) == 2 || (init!(reshape(M, :, size(M, ndims(M))), i, r, fan_in, fan_out); return M)
    rows, cols = size(M)
    G = [gaussian(r) for _ in 1:max(rows, cols), _ in 1:min(rows, cols)]
    F = qr(G)
    Q = Matrix(F.Q) .* sign.(transpose(diag(F.R)))   # sign fix makes Q uniformly distributed
    M .= T.(i.gain .* (rows >= cols ? Q : transpose(Q)))
    return M
end

"""
    Sparse(density, init = GlorotUniform())

Exactly round(density * length) non-zeros at random positions, drawn from `init`; the rest zero.
"""
struct Sparse{I<:Initialiser} <: Initialiser
    density::Float64
    init::I
    function Sparse(density::Real, init::I) where {I<:Initialiser}
        0 < density <= 1 || throw(ArgumentError("Sparse density (fraction of non-zeros) must be in (0, 1], got $density"))
        return new{I}(density, init)
    end
end
Sparse(density::Real; init::Initialiser=GlorotUniform()) = Sparse(density, init)
function init!(M::AbstractArray{T}, i::Sparse, r::SplitMix64, fan_in, fan_out, W=nothing) where {T}
    init!(M, i.init, r, fan_in, fan_out, W)
    n = length(M)
    keep = round(Int, i.density * n)
    positions = collect(1:n)
    for k in 1:keep                       # partial Fisher-Yates: the first `keep` are kept
        j = k + randbelow(r, n - k + 1)
        positions[k], positions[j] = positions[j], positions[k]
    end
    for k in keep+1:n
        M[positions[k]] = 0
    end
    return M
end

"""
    SignConcordant(init = GlorotUniform())

Magnitudes from `init`, signs of the layer's initial forward weights: B = |M| ∘ sign(Wᵀ)
(B must have the shape of Wᵀ, as in FA-style rules).
"""
struct SignConcordant{I<:Initialiser} <: Initialiser
    init::I
end
SignConcordant(; init::Initialiser=GlorotUniform()) = SignConcordant(init)
function init!(M::AbstractArray{T}, i::SignConcordant, r::SplitMix64, fan_in, fan_out, W=nothing) where {T}
    # W comes oriented like B (a dense layer's Wᵀ, a conv layer's kernel): see `feedback_array`.
    W !== nothing && size(W) == size(M) ||
        throw(ArgumentError("SignConcordant feedback needs a B shaped like the layer's Wᵀ or kernel (FA-style rules)"))
    init!(M, i.init, r, fan_in, fan_out, W)
    M .= copysign.(abs.(M), W)
    return M
end

"""
    Given(M)

A matrix the user supplies, used as it is (not copied): from Python, the NumPy array itself.
"""
struct Given{A<:Array} <: Initialiser
    M::A
end

"A host's array used as B itself, given by its address and its dimensions (Julia's order)."
struct GivenPointer{T} <: Initialiser
    p::Ptr{T}
    dims::Dims
end
GivenPointer(::Type{T}, p::Ptr, dims) where {T} = GivenPointer{T}(Ptr{T}(p), Tuple(Int.(dims)))

"The std of a draw from `i` for these fans (uSF's default feedback scale), where defined."
init_std(i::Union{GlorotUniform,HeUniform,LeCunUniform}, fi, fo) = scale(i, fi, fo) / sqrt(3.0)
init_std(i::Uniform, fi, fo) = i.scale / sqrt(3.0)
init_std(i::Normal, fi, fo) = i.std
init_std(i::GlorotNormal, fi, fo) = i.gain * sqrt(2.0 / (fi + fo))
init_std(i::HeNormal, fi, fo) = i.gain * sqrt(2.0 / fi)
init_std(i::LeCunNormal, fi, fo) = i.gain / sqrt(fi)
init_std(i::Initialiser, fi, fo) = 1.0 / sqrt(fi)
