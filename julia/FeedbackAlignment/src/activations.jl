# Activations are plain functions; `deriv(f, a, h)` gives f'(a) from the pre-activation `a`
# and the output `h = f(a)`, whichever is cheaper.

"The logistic function 1 / (1 + exp(-x))."
sigmoid(x::Real) = one(x) / (one(x) + exp(-x))
"The rectifier max(x, 0)."
relu(x::Real) = ifelse(x > zero(x), x, zero(x))
"The leaky rectifier: x for x > 0, else 0.01 x (Python: `\"leaky_relu\"`)."
leakyrelu(x::Real) = ifelse(x > zero(x), x, oftype(x, 0.01) * x)

deriv(::typeof(tanh), a, h) = one(h) - h * h
deriv(::typeof(sigmoid), a, h) = h * (one(h) - h)
deriv(::typeof(relu), a, h) = ifelse(a > zero(a), one(a), zero(a))
deriv(::typeof(leakyrelu), a, h) = ifelse(a > zero(a), one(a), oftype(a, 0.01))
deriv(::typeof(identity), a, h) = one(a)

"What the forward pass evaluates for `f`: `f` itself, except where a faster equivalent exists."
activate(f, x) = f(x)
activate(::typeof(tanh), x::Union{Float32,Float64}) = tanh_fast(x)

"""
    tanh_fast(x::Float32)

tanh as a clamped rational polynomial (the 13/6 approximation used by Eigen and XNNPACK), within a
few ulp of `tanh`, and exactly ±1 for |x| ≥ 9 as Base's Float32 `tanh`. Julia 1.5's `tanh` neither inlines nor vectorises (~22 ns per element here);
this is branch-free and call-free, so `@simd` loops over it vectorise.
"""
@inline function tanh_fast(x0::Float32)
    x = clamp(x0, -7.90531110763549805f0, 7.90531110763549805f0)
    x2 = x * x
    p = muladd(x2, -2.76076847742355f-16, 2.00018790482477f-13)
    p = muladd(x2, p, -8.60467152213735f-11)
    p = muladd(x2, p, 5.12229709037114f-8)
    p = muladd(x2, p, 1.48572235717979f-5)
    p = muladd(x2, p, 6.37261928875436f-4)
    p = muladd(x2, p, 4.89352455891786f-3)
    p = x * p
    q = muladd(x2, 1.19825839466702f-6, 1.18534705686654f-4)
    q = muladd(x2, q, 2.26843463243900f-3)
    q = muladd(x2, q, 4.89352518554385f-3)
    # Saturate to exactly ±1 where Base's Float32 tanh does (|x| ≥ 9), so f' = 1 - h² is 0 there too.
    return ifelse(abs(x0) >= 9f0, copysign(1f0, x0), ifelse(abs(x) < 0.0004f0, x, p / q))
end

"""
    tanh_fast(x::Float64)

tanh from a branch-free, call-free `expm1` (Cody-Waite reduction, then a degree-13 Taylor
polynomial), within a few ulp of `tanh`. Julia 1.5's Float64 `tanh` is not inlined, so a loop over
it neither vectorises nor, in the forward pass, avoids allocating.
"""
@inline function tanh_fast(x::Float64)
    a = min(abs(x), 20.0)             # tanh(20) rounds to 1; NaN stays NaN
    t = expm1_fast(-2.0 * a)          # in (-1, 0]
    return copysign(-t / (2.0 + t), x)
end

# expm1(y) for y in [-40, 0]: y = k log 2 + r with |r| <= log(2)/2, expm1(y) = 2^k expm1(r) + (2^k - 1).
@inline function expm1_fast(y::Float64)
    k = round(y * 1.4426950408889634)
    r = muladd(k, -6.93147180369123816490e-01, y)   # log 2 in two parts (fdlibm's ln2_hi, ln2_lo)
    r = muladd(k, -1.90821492927058770002e-10, r)
    p = 1.6059043836821613e-10                       # 1/13!, then Horner down to 1/2!
    p = muladd(r, p, 2.08767569878681e-9)
    p = muladd(r, p, 2.505210838544172e-8)
    p = muladd(r, p, 2.755731922398589e-7)
    p = muladd(r, p, 2.7557319223985893e-6)
    p = muladd(r, p, 2.48015873015873e-5)
    p = muladd(r, p, 1.984126984126984e-4)
    p = muladd(r, p, 1.3888888888888889e-3)
    p = muladd(r, p, 8.333333333333333e-3)
    p = muladd(r, p, 4.1666666666666664e-2)
    p = muladd(r, p, 1.6666666666666666e-1)
    p = muladd(r, p, 0.5)
    em1 = muladd(r * r, p, r)                        # expm1(r)
    s = reinterpret(Float64, (unsafe_trunc(Int64, k) + 1023) << 52)   # 2^k, k in -58..0
    return muladd(s, em1, s - 1.0)
end

const ACTIVATIONS = Dict{String,Function}(
    "tanh" => tanh, "sigmoid" => sigmoid, "relu" => relu,
    "leakyrelu" => leakyrelu, "leaky_relu" => leakyrelu, "identity" => identity)   # both spellings: Julia's and Python's
