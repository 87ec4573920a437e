# SplitMix64 (Steele, Lea & Flood 2014): a tiny counter-based generator with the same output
# in every Julia version (Base's default streams changed between 1.5 and 1.7) and in NumPy.
"""
    SplitMix64(state)

The generator behind every random draw (weights, feedback arrays, shuffling, dropout, noise):
SplitMix64 (Steele, Lea & Flood 2014), whose streams are the same in every Julia version and in
NumPy (tests/reference.py), so a seed gives the same network in both languages.
"""
mutable struct SplitMix64
    state::UInt64
end

const GOLDEN_GAMMA = 0x9e3779b97f4a7c15

@inline function mix64(z::UInt64)
    z = (z ⊻ (z >> 30)) * 0xbf58476d1ce4e5b9
    z = (z ⊻ (z >> 27)) * 0x94d049bb133111eb
    return z ⊻ (z >> 31)
end

@inline function next!(r::SplitMix64)
    r.state += GOLDEN_GAMMA
    return mix64(r.state)
end

"""
    stream(seed, tag)

An independent generator for one purpose (`tag`: 1 forward weights, 2 feedback matrices,
3 shuffling), so that changing the feedback seed never changes the forward weights.
"""
stream(seed::Integer, tag::Integer) = SplitMix64(mix64(UInt64(seed)) ⊻ UInt64(tag))

"Uniform Float64 in [0, 1) from the top 53 bits."
uniform(r::SplitMix64) = Float64(next!(r) >> 11) * 0x1p-53

"Uniform integer in 0:n-1 (modulo reduction; its bias, below n / 2^64, is negligible here)."
randbelow(r::SplitMix64, n::Integer) = Int(next!(r) % UInt64(n))

"Fisher-Yates shuffle, from the last element down."
function shuffle!(r::SplitMix64, v::AbstractVector)
    for i in length(v):-1:2
        j = randbelow(r, i) + 1
        v[i], v[j] = v[j], v[i]
    end
    return v
end
