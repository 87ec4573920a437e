abstract type Initialiser end

"""
    GlorotUniform(gain = 1.0)

Glorot & Bengio (2010): U(-l, l) with l = gain * sqrt(6 / (fan_in + fan_out)). Draws are taken in
memory order (Python's row-major order of the same array) from a `SplitMix64` stream, computed in
Float64 and rounded once to the element type, so every language and Julia version gets the same bits.
"""
struct GlorotUniform <: Initialiser
    gain::Float64
end
GlorotUniform() = GlorotUniform(1.0)

function init!(M::AbstractArray{T}, init::GlorotUniform, rng::SplitMix64, fan_in, fan_out) where {T}
    limit = init.gain * sqrt(6.0 / (fan_in + fan_out))
    for i in eachindex(M)
        M[i] = T((2.0 * uniform(rng) - 1.0) * limit)
    end
    return M
end
