# Convolution and pooling kernels on plain arrays, called by the Conv and pooling layers.
#
# Layouts: images are W x H x C x N (width fastest, batch last: NumPy's C-ordered (N, C, H, W));
# a conv kernel is kw x kh x Cin x Cout (PyTorch's (Cout, Cin, kh, kw)). Convolution is
# cross-correlation with zero padding, as in PyTorch. Every kernel overwrites its output, allocates
# nothing, and reads only the first m observations' worth of memory of each argument.
#
# Convolution is im2col + GEMM: per sample n, cols_n (P x Q, P = ow*oh output positions,
# Q = kw*kh*cin) holds the padded input patch of every output position, and A_n (P x Cout) =
# cols_n * Kmat with Kmat = reshape(K, Q, Cout). The forward pass leaves cols_n of every sample in
# `cols` for the filter gradient (dK = Σ_n cols_nᵀ dA_n). When the output is 1 x 1 (P = 1) the
# columns of all samples form one Q x m matrix, so each product is one GEMM over the batch; when
# the window also covers the whole unpadded input, that matrix is X itself and nothing is copied.
# Direct loops (no copy) were measured for one input channel (LeNet-5's first layer, 1 -> 6, k5 on
# 32x32, batch 64) and lost on every pass: forward 5.2 ms, filter gradient 18 ms, data gradient
# 4.9 ms against 2.0, 1.3 and 1.5 ms by im2col + GEMM (likely because their innermost loops, one
# output row of 28, are too short for the vectorised loop body; not profiled further).

"Geometry of a 2-D window (convolution kernel or pooling window) over W x H x C x N arrays."
struct Window
    k::NTuple{2,Int}       # window size (dim 1, dim 2)
    stride::NTuple{2,Int}
    pad::NTuple{2,Int}     # zero padding on both sides (pooling: (0, 0))
end

"""
    window_output(win::Window, (w, h)) -> (ow, oh)

Output size of `win` slid over a w x h input: `(w + 2pw - kw) ÷ sw + 1` along dim 1, likewise dim 2.
Throws `ArgumentError` for a window or stride below 1, a negative padding, or a (padded) input
smaller than the window.
"""
function window_output(win::Window, (w, h)::NTuple{2,Int})
    (kw, kh), (sw, sh), (pw, ph) = win.k, win.stride, win.pad
    kw >= 1 && kh >= 1 || throw(ArgumentError("window size must be at least 1 along each dimension, got $(win.k)"))
    sw >= 1 && sh >= 1 || throw(ArgumentError("stride must be at least 1 along each dimension, got $(win.stride)"))
    pw >= 0 && ph >= 0 || throw(ArgumentError("padding must be non-negative, got $(win.pad)"))
    w >= 1 && h >= 1 || throw(ArgumentError("input size must be at least 1 along each dimension, got $((w, h))"))
    w + 2pw >= kw && h + 2ph >= kh ||
        throw(ArgumentError("window $(win.k) is larger than the input $((w, h)) padded by $(win.pad)"))
    return ((w + 2pw - kw) ÷ sw + 1, (h + 2ph - kh) ÷ sh + 1)
end

"""
    conv_scratch_length(win, (w, h), cin, m) -> Int

Elements of scratch a convolution over a batch of m (w x h x cin) inputs needs: the im2col
matrices of all m samples, (ow*oh) x (kw*kh*cin) each.
"""
function conv_scratch_length(win::Window, insize::NTuple{2,Int}, cin::Int, m::Int)
    cin >= 1 || throw(ArgumentError("cin must be at least 1, got $cin"))
    m >= 0 || throw(ArgumentError("m must be non-negative, got $m"))
    ow, oh = window_output(win, insize)
    return ow * oh * win.k[1] * win.k[2] * cin * m
end

# A window over the whole unpadded input: each sample's im2col column is the sample itself.
whole_input(win::Window, w::Int, h::Int) = win.k == (w, h) && win.pad == (0, 0)

# Output positions ox (1:ow) whose input column x = (ox-1)*s + i - p lies in 1:w: the rest read padding.
@inline function valid_outputs(i::Int, s::Int, p::Int, w::Int, ow::Int)
    lo = max(1, cld(p + 1 - i, s) + 1)
    hi = min(ow, fld(w + p - i, s) + 1)
    return lo, hi
end

# Argument checks shared by the conv kernels; they return the geometry.
function conv_geometry(X, K, A, win::Window)
    w, h, cin, m = size(X)
    kw, kh, kcin, cout = size(K)
    (kw, kh) == win.k || throw(DimensionMismatch("kernel is $kw x $kh but the window is $(win.k)"))
    kcin == cin || throw(DimensionMismatch("kernel takes $kcin input channels, the input has $cin"))
    ow, oh = window_output(win, (w, h))
    size(A) == (ow, oh, cout, m) ||
        throw(DimensionMismatch("output is $(size(A)), expected $((ow, oh, cout, m)) for input $(size(X)) and kernel $(size(K))"))
    return w, h, cin, m, cout, ow, oh
end

function check_cols(cols, need::Int)
    length(cols) >= need || throw(DimensionMismatch("cols has $(length(cols)) elements, needs at least $need"))
    return nothing
end

function check_bias(b, cout::Int, name)
    length(b) == cout || throw(DimensionMismatch("$name has $(length(b)) elements, expected $cout (output channels)"))
    return nothing
end

# Rows at least this long are copied by memmove: im2col of LeNet-5's first layer (rows of 28)
# took half the time of the element loop, whose vector body is too wide for rows that short; rows
# of 10-15 were as fast or faster by the loop (measured here, Float32 and Float64).
const MEMMOVE_MIN_ROW = 24

# cols[off + p + (q-1)*P] = Xpad patch q of output position p, for sample n (p = ox + (oy-1)*ow,
# q = i + (j-1)*kw + (ci-1)*kw*kh). Along ox the copy is contiguous in X for stride 1.
function im2col!(cols::Vector{T}, off::Int, X::Array{T,4}, n::Int, win::Window, ow::Int, oh::Int) where {T}
    w, h, cin = size(X, 1), size(X, 2), size(X, 3)
    (kw, kh), (sw, sh), (pw, ph) = win.k, win.stride, win.pad
    P = ow * oh
    @inbounds for i in 1:kw
        lo, hi = valid_outputs(i, sw, pw, w, ow)      # the same for every row and channel
        for ci in 1:cin, j in 1:kh
            c = off + (i - 1 + (j - 1) * kw + (ci - 1) * kw * kh) * P
            for oy in 1:oh
                y = (oy - 1) * sh + j - ph
                if 1 <= y <= h && lo <= hi
                    xoff = (y - 1) * w + ((ci - 1) + (n - 1) * cin) * (w * h) + i - pw - sw
                    for ox in 1:lo-1
                        cols[c + ox] = zero(T)
                    end
                    if sw == 1 && hi - lo + 1 >= MEMMOVE_MIN_ROW
                        GC.@preserve cols X unsafe_copyto!(pointer(cols, c + lo), pointer(X, xoff + lo), hi - lo + 1)
                    else
                        @simd for ox in lo:hi
                            cols[c + ox] = X[xoff + ox * sw]
                        end
                    end
                    for ox in hi+1:ow
                        cols[c + ox] = zero(T)
                    end
                else
                    @simd for ox in 1:ow
                        cols[c + ox] = zero(T)
                    end
                end
                c += ow
            end
        end
    end
    return nothing
end

# The adjoint of im2col! for sample n: dX[..., n] += scattered cols (dX must be zeroed before).
function col2im!(dX::Array{T,4}, n::Int, cols::Vector{T}, off::Int, win::Window, ow::Int, oh::Int) where {T}
    w, h, cin = size(dX, 1), size(dX, 2), size(dX, 3)
    (kw, kh), (sw, sh), (pw, ph) = win.k, win.stride, win.pad
    P = ow * oh
    @inbounds for i in 1:kw
        lo, hi = valid_outputs(i, sw, pw, w, ow)
        for ci in 1:cin, j in 1:kh
            c = off + (i - 1 + (j - 1) * kw + (ci - 1) * kw * kh) * P
            for oy in 1:oh
                y = (oy - 1) * sh + j - ph
                if 1 <= y <= h
                    xoff = (y - 1) * w + ((ci - 1) + (n - 1) * cin) * (w * h) + i - pw - sw
                    @simd for ox in lo:hi
                        dX[xoff + ox * sw] += cols[c + ox]
                    end
                end
                c += ow
            end
        end
    end
    return nothing
end

# A[:, :, co, n] = b[co] for every channel and sample.
function fill_bias!(A::Array{T,4}, b::Vector{T}) where {T}
    P, cout, m = size(A, 1) * size(A, 2), size(A, 3), size(A, 4)
    @inbounds for n in 1:m, co in 1:cout
        off, bc = ((n - 1) * cout + co - 1) * P, b[co]
        @simd for p in 1:P
            A[off + p] = bc
        end
    end
    return A
end

"""
    conv_forward!(A, X, K, b, cols, win)

A = conv(X, K) .+ b (cross-correlation with zero padding, bias per output channel), for X
(w, h, cin, m), K (kw, kh, cin, cout), A (ow, oh, cout, m). Leaves in `cols` (at least
`conv_scratch_length` elements) what `conv_filter_grad!` needs.
"""
function conv_forward!(A::Array{T,4}, X::Array{T,4}, K::Array{T,4}, b::Vector{T}, cols::Vector{T},
                       win::Window) where {T<:Union{Float32,Float64}}
    w, h, cin, m, cout, ow, oh = conv_geometry(X, K, A, win)
    check_bias(b, cout, "b")
    check_cols(cols, ow * oh * win.k[1] * win.k[2] * cin * m)
    fill_bias!(A, b)
    return im2col_forward!(A, X, K, cols, win, ow, oh)
end

# A += conv(X, K) by im2col + GEMM, leaving every sample's columns in `cols`.
function im2col_forward!(A::Array{T,4}, X::Array{T,4}, K::Array{T,4}, cols::Vector{T}, win::Window,
                         ow::Int, oh::Int) where {T}
    m, cout = size(X, 4), size(K, 4)
    P, Q = ow * oh, win.k[1] * win.k[2] * size(X, 3)
    GC.@preserve A K X cols begin
        if whole_input(win, size(X, 1), size(X, 2))    # X is the Q x m matrix of columns
            gemm_ptr!('T', 'N', cout, m, Q, one(T), pointer(K), Q, pointer(X), Q, one(T), pointer(A), cout)
        elseif P == 1       # each sample's columns are one column of a Q x m matrix: one GEMM
            for n in 1:m
                im2col!(cols, (n - 1) * Q, X, n, win, ow, oh)
            end
            gemm_ptr!('T', 'N', cout, m, Q, one(T), pointer(K), Q, pointer(cols), Q, one(T), pointer(A), cout)
        else
            for n in 1:m    # copy then multiply sample by sample, while its columns are in cache
                im2col!(cols, (n - 1) * P * Q, X, n, win, ow, oh)
                gemm_ptr!('N', 'N', P, cout, Q, one(T), pointer(cols, (n - 1) * P * Q + 1), P, pointer(K), Q,
                          one(T), pointer(A, (n - 1) * P * cout + 1), P)
            end
        end
    end
    return A
end

"""
    conv_filter_grad!(dK, db, X, dA, cols, win)

The gradients of the convolution's parameters: dK[i, j, ci, co] = Σ dA[ow, oh, co, n] *
Xpad[(ow-1)sw+i, (oh-1)sh+j, ci, n] and db[co] = Σ dA[:, :, co, :]. Overwrites dK and db. Reads
what `conv_forward!(A, X, ...)` on the same X left in `cols`.
"""
function conv_filter_grad!(dK::Array{T,4}, db::Vector{T}, X::Array{T,4}, dA::Array{T,4}, cols::Vector{T},
                           win::Window) where {T<:Union{Float32,Float64}}
    w, h, cin, m, cout, ow, oh = conv_geometry(X, dK, dA, win)
    check_bias(db, cout, "db")
    channel_sums!(db, dA)
    check_cols(cols, ow * oh * win.k[1] * win.k[2] * cin * m)
    whole_input(win, w, h) && return im2col_filter_grad!(dK, dA, X, win, ow, oh)   # X is its columns
    return im2col_filter_grad!(dK, dA, cols, win, ow, oh)
end

# dK = Σ_n cols_nᵀ dA_n from the columns im2col_forward! left.
function im2col_filter_grad!(dK::Array{T,4}, dA::Array{T,4}, cols::Array{T}, win::Window, ow::Int, oh::Int) where {T}
    m, cout = size(dA, 4), size(dK, 4)
    P, Q = ow * oh, win.k[1] * win.k[2] * size(dK, 3)
    m == 0 && return fill!(dK, zero(T))
    GC.@preserve dK dA cols begin
        if P == 1
            gemm_ptr!('N', 'T', Q, cout, m, one(T), pointer(cols), Q, pointer(dA), cout, zero(T), pointer(dK), Q)
        else
            for n in 1:m
                gemm_ptr!('T', 'N', Q, cout, P, one(T), pointer(cols, (n - 1) * P * Q + 1), P,
                          pointer(dA, (n - 1) * P * cout + 1), P, n == 1 ? zero(T) : one(T), pointer(dK), Q)
            end
        end
    end
    return dK
end

# db[co] = Σ dA[:, :, co, :]
function channel_sums!(db::Vector{T}, dA::Array{T,4}) where {T}
    P, cout, m = size(dA, 1) * size(dA, 2), size(dA, 3), size(dA, 4)
    fill!(db, zero(T))
    @inbounds for n in 1:m, co in 1:cout
        off, s = ((n - 1) * cout + co - 1) * P, zero(T)
        @simd for p in 1:P
            s += dA[off + p]
        end
        db[co] += s
    end
    return db
end

"""
    conv_data_grad!(dX, dA, K, cols, win)

dX = the adjoint of X ↦ conv(X, K) applied to dA (the transposed convolution), for any kernel K of
the forward kernel's shape (W for backprop, a feedback kernel B for feedback alignment).
Overwrites dX; uses `cols` as scratch, so it must come after `conv_filter_grad!`.
"""
function conv_data_grad!(dX::Array{T,4}, dA::Array{T,4}, K::Array{T,4}, cols::Vector{T},
                         win::Window) where {T<:Union{Float32,Float64}}
    w, h, cin, m, cout, ow, oh = conv_geometry(dX, K, dA, win)
    check_cols(cols, ow * oh * win.k[1] * win.k[2] * cin * (ow * oh == 1 ? m : 1))
    if whole_input(win, w, h)           # dX (Q x m) = Kmat * dA: the columns are the input
        Q = w * h * cin
        GC.@preserve dX dA K gemm_ptr!('N', 'N', Q, m, cout, one(T), pointer(K), Q, pointer(dA), cout, zero(T),
                                       pointer(dX), Q)
        return dX
    end
    fill!(dX, zero(T))
    return im2col_data_grad!(dX, dA, K, cols, win, ow, oh)
end

# dX += col2im(dcols) with dcols = dA * Kmatᵀ, sample by sample in the first P*Q elements of
# `cols` (for 1 x 1 outputs, all samples at once: dcols (Q x m) = Kmat * dA).
function im2col_data_grad!(dX::Array{T,4}, dA::Array{T,4}, K::Array{T,4}, cols::Vector{T}, win::Window,
                           ow::Int, oh::Int) where {T}
    m, cout = size(dA, 4), size(K, 4)
    P, Q = ow * oh, win.k[1] * win.k[2] * size(K, 3)
    GC.@preserve dA K cols begin
        if P == 1
            gemm_ptr!('N', 'N', Q, m, cout, one(T), pointer(K), Q, pointer(dA), cout, zero(T), pointer(cols), Q)
            for n in 1:m
                col2im!(dX, n, cols, (n - 1) * Q, win, ow, oh)
            end
        else
            for n in 1:m
                gemm_ptr!('N', 'T', P, Q, cout, one(T), pointer(dA, (n - 1) * P * cout + 1), P, pointer(K), Q,
                          zero(T), pointer(cols), P)
                col2im!(dX, n, cols, 0, win, ow, oh)
            end
        end
    end
    return dX
end

# --- pooling ---------------------------------------------------------------------------------------

function pool_geometry(Y, X, win::Window)
    win.pad == (0, 0) || throw(ArgumentError("pooling takes no padding, got $(win.pad)"))
    w, h, c, m = size(X)
    ow, oh = window_output(win, (w, h))
    size(Y) == (ow, oh, c, m) ||
        throw(DimensionMismatch("pooled array is $(size(Y)), expected $((ow, oh, c, m)) for input $(size(X))"))
    return w, h, c, m, ow, oh
end

"""
    maxpool_forward!(Y, idx, X, win)

Y = the maximum of X over each window (no padding); idx[ox, oy, c, n] = the linear index, within
sample n's w x h x c block of X (1-based), of the element chosen. Ties: the first maximum in memory
order (dim 1 fastest, then dim 2) wins. A NaN in a window propagates: Y is NaN and idx points at the
window's first NaN.
"""
function maxpool_forward!(Y::Array{T,4}, idx::Array{Int32,4}, X::Array{T,4}, win::Window) where {T<:Union{Float32,Float64}}
    w, h, c, m, ow, oh = pool_geometry(Y, X, win)
    size(idx) == size(Y) || throw(DimensionMismatch("idx is $(size(idx)), expected $(size(Y))"))
    w * h * c <= typemax(Int32) || throw(ArgumentError("a sample of $(w * h * c) elements is too large for Int32 indices"))
    (kw, kh), (sw, sh) = win.k, win.stride
    # Taps in memory order with a strict >, so the first maximum stays. Branch-free: on random
    # data a branch would mispredict half the comparisons.
    @inbounds for n in 1:m, ch in 1:c, oy in 1:oh, ox in 1:ow
        sample = (n - 1) * (w * h * c)
        corner = (ch - 1) * (w * h) + ((oy - 1) * sh) * w + (ox - 1) * sw + 1   # within the sample
        best, at = X[sample + corner], corner
        for j in 1:kh, i in 1:kw
            k = corner + (j - 1) * w + (i - 1)
            v = X[sample + k]
            take = (v > best) | (isnan(v) & !isnan(best))
            best, at = ifelse(take, v, best), ifelse(take, k, at)
        end
        Y[ox, oy, ch, n] = best
        idx[ox, oy, ch, n] = at % Int32     # fits: checked above
    end
    return Y
end

"""
    maxpool_backward!(dX, dY, idx, win)

dX = 0 except each dY routed to its window's arg-max recorded in `idx` by `maxpool_forward!`
(summed where overlapping windows share one).
"""
function maxpool_backward!(dX::Array{T,4}, dY::Array{T,4}, idx::Array{Int32,4}, win::Window) where {T<:Union{Float32,Float64}}
    w, h, c, m, ow, oh = pool_geometry(dY, dX, win)
    size(idx) == size(dY) || throw(DimensionMismatch("idx is $(size(idx)), expected $(size(dY))"))
    fill!(dX, zero(T))
    P = ow * oh * c
    @inbounds for n in 1:m
        sample, off = (n - 1) * (w * h * c), (n - 1) * P
        for p in 1:P
            dX[sample + idx[off + p]] += dY[off + p]
        end
    end
    return dX
end

"""
    meanpool_forward!(Y, X, win)

Y = the mean of X over each window (no padding): the window's sum divided by kw*kh.
"""
function meanpool_forward!(Y::Array{T,4}, X::Array{T,4}, win::Window) where {T<:Union{Float32,Float64}}
    w, h, c, m, ow, oh = pool_geometry(Y, X, win)
    (kw, kh), (sw, sh) = win.k, win.stride
    area = T(kw * kh)
    @inbounds for n in 1:m, ch in 1:c, oy in 1:oh, ox in 1:ow
        corner = ((n - 1) * c + ch - 1) * (w * h) + ((oy - 1) * sh) * w + (ox - 1) * sw
        s = zero(T)
        for j in 1:kh
            @simd for i in 1:kw
                s += X[corner + (j - 1) * w + i]
            end
        end
        Y[ox, oy, ch, n] = s / area
    end
    return Y
end

"""
    meanpool_backward!(dX, dY, win)

dX = each window's dY / (kw*kh) spread over the window (summed where windows overlap).
"""
function meanpool_backward!(dX::Array{T,4}, dY::Array{T,4}, win::Window) where {T<:Union{Float32,Float64}}
    w, h, c, m, ow, oh = pool_geometry(dY, dX, win)
    (kw, kh), (sw, sh) = win.k, win.stride
    area = T(kw * kh)
    fill!(dX, zero(T))
    @inbounds for n in 1:m, ch in 1:c, oy in 1:oh, ox in 1:ow
        corner = ((n - 1) * c + ch - 1) * (w * h) + ((oy - 1) * sh) * w + (ox - 1) * sw
        g = dY[ox, oy, ch, n] / area
        for j in 1:kh
            @simd for i in 1:kw
                dX[corner + (j - 1) * w + i] += g
            end
        end
    end
    return dX
end
