# Convolution and pooling kernels on plain arrays, called by the Conv and pooling layers.
#
# Layouts: images are W x H x C x N (width fastest, batch last: NumPy's C-ordered (N, C, H, W));
# a conv kernel is kw x kh x Cin x Cout (PyTorch's (Cout, Cin, kh, kw)). Convolution is
# cross-correlation with zero padding, as in PyTorch. Every kernel overwrites its output, allocates
# nothing, and reads only the first m observations' worth of memory of each argument.
#
# Convolution is im2col + GEMM: cols_n (Pr x Q, Q = kw*kh*cin) holds the padded input patch of each
# output position of sample n, and A_n = cols_n * Kmat with Kmat = reshape(K, Q, Cout). Samples go
# in chunks: a chunk's cols_n are stacked row-wise into one matrix, so each pass makes one GEMM per
# chunk (a few samples, sized to stay in cache) instead of one per sample; the product goes into
# place (W x H x C x N) in the same pass that adds the bias and applies the activation, and the
# error is stacked the same way for the gradients. For stride 1 without padding, rows are output
# positions on the input's row pitch (Pr = w*(oh-1)+ow, some rows junk), so a sample's column is one
# memmove of X. The filter gradient makes its chunk's columns again rather than keeping the forward
# pass's (which for a batch of 256 would not stay in cache). For 1 x 1 outputs (P = 1) the columns
# of all samples form one Q x m matrix (X itself for a window over the whole unpadded input).
# Measured here (2 cores, load average ~5, NumPy's OpenBLAS, one thread; bench/conv_step.jl against
# the kernels before, which made one GEMM per sample and kept the forward pass's columns): step/GEMM
# floor went from 1.7-2.2 to 0.9-1.0 for LeNet-5 (BP, batch 64: 8.3 -> 4.5-4.8 ms) and from 1.75
# to 1.34 for LeNet-CIFAR (BP, batch 64); per pass at batch 64 (bench/conv_kernels.jl), against one
# whole-batch GEMM each: LeNet-5's first layer 1.05 / 0.40 / 0.69 (forward / filter / data), second
# 1.36 / 0.95 / 1.73; LeNet-CIFAR's 1.46 / 0.71 / 1.12, 1.16 / 1.01 / 1.23, 1.48 / 1.40 / 1.59.
# `python bench/run.py --conv`: LeNet-5 1.67-2.13x PyTorch per step, LeNet-CIFAR 1.14-1.37x.
# Direct loops (no copy) were measured for LeNet-5's first layer earlier and lost on every pass
# (5.2, 18 and 4.9 ms against 2.0, 1.3 and 1.5 ms by per-sample im2col + GEMM then).

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
    conv_scratch_length(win, (w, h), cin, cout, m[, chunk]) -> Int

Elements of scratch a convolution over a batch of m (w x h x cin) inputs with cout output channels
needs, `chunk` samples per GEMM (0: the kernels' choice): the im2col matrix of one chunk,
(Pr*chunk) x (kw*kh*cin), its product, (Pr*chunk) x cout, Pr being ow*oh or, for stride 1
without padding, w*(oh-1)+ow, and the filter gradient's cout x (kw*kh*cin) sum; for 1 x 1
outputs, the (kw*kh*cin) x m matrix of every sample's columns.
"""
function conv_scratch_length(win::Window, insize::NTuple{2,Int}, cin::Int, cout::Int, m::Int, chunk::Int=0)
    cin >= 1 || throw(ArgumentError("cin must be at least 1, got $cin"))
    cout >= 1 || throw(ArgumentError("cout must be at least 1, got $cout"))
    m >= 0 || throw(ArgumentError("m must be non-negative, got $m"))
    check_chunk(chunk)
    ow, oh = window_output(win, insize)
    P, Q = ow * oh, win.k[1] * win.k[2] * cin
    P == 1 && return Q * m
    Pr = rows_per_sample(win, insize[1], ow, oh)
    return Pr * chunk_size(Pr, m, chunk) * (Q + cout) + Q * cout
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

# cols[off + p + (q-1)*ld] = Xpad patch q of output position p, for sample n (p = ox + (oy-1)*ow,
# q = i + (j-1)*kw + (ci-1)*kw*kh): sample n's P x Q block inside a matrix of leading dimension ld
# (P*nb when nb samples are stacked row-wise; 1 for the Q x m matrix of 1 x 1 outputs). Along ox
# the copy is contiguous in X for stride 1.
function im2col!(cols::Vector{T}, off::Int, ld::Int, X::Array{T,4}, n::Int, win::Window, ow::Int, oh::Int) where {T}
    w, h, cin = size(X, 1), size(X, 2), size(X, 3)
    (kw, kh), (sw, sh), (pw, ph) = win.k, win.stride, win.pad
    @inbounds for i in 1:kw
        lo, hi = valid_outputs(i, sw, pw, w, ow)      # the same for every row and channel
        for ci in 1:cin, j in 1:kh
            c = off + (i - 1 + (j - 1) * kw + (ci - 1) * kw * kh) * ld
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
function col2im!(dX::Array{T,4}, n::Int, cols::Vector{T}, off::Int, ld::Int, win::Window, ow::Int, oh::Int) where {T}
    w, h, cin = size(dX, 1), size(dX, 2), size(dX, 3)
    (kw, kh), (sw, sh), (pw, ph) = win.k, win.stride, win.pad
    @inbounds for i in 1:kw
        lo, hi = valid_outputs(i, sw, pw, w, ow)
        for ci in 1:cin, j in 1:kh
            c = off + (i - 1 + (j - 1) * kw + (ci - 1) * kw * kh) * ld
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

# Samples per GEMM on the im2col route (P > 1). A chunk of nb samples is one product: their column
# blocks stacked row-wise form a (Pr*nb) x Q matrix, and the product a (Pr*nb) x cout one. Per-sample
# products (LeNet-CIFAR's last conv: 22x576 * 576x128) cost mostly call and packing overhead; large
# chunks lost too: the filter gradient's products (Q x cout, summed over the chunk's rows) took up
# to 3x longer with more than about a thousand rows (both LeNets' first layers), and LeNet-5's
# second layer was 20% slower with 4-16 samples (544-2176 rows) than with 1-2. About CHUNK_ROWS
# rows per product was the best or near it for every layer of both LeNets (bench/conv_kernels.jl
# --chunks, batch 64).
const CHUNK_ROWS = 256
chunk_size(Pr::Int, m::Int, chunk::Int) = clamp(chunk == 0 ? CHUNK_ROWS ÷ Pr : chunk, 1, max(m, 1))

# A sample's rows in the column matrix. Stride 1 without padding takes the "wide" layout: output
# positions on the input's row pitch w, Pr = w*(oh-1) + ow of them, w - ow of each row but the last
# being junk, so that each column of a sample is one contiguous run of X (one memmove, where the
# exact layout copies oh rows of ow: 10 elements in LeNet-5's second layer) at the cost of a
# product (w*(oh-1)+ow)/(ow*oh) times larger. The junk rows of the output are never read, and the
# error is 0 there, so they add nothing to the gradients. Otherwise rows are the P output positions.
wide_rows(win::Window) = win.stride == (1, 1) && win.pad == (0, 0)
row_pitch(win::Window, w::Int, ow::Int) = wide_rows(win) ? w : ow
rows_per_sample(win::Window, w::Int, ow::Int, oh::Int) = row_pitch(win, w, ow) * (oh - 1) + ow

# S[soff + (n-n0)*Pr + (co-1)*Pr*nb + (oy-1)*rp + ox] = dA[ox, oy, co, n] for the nb samples from n0,
# 0 in the junk rows (ox > ow): the chunk's rows of dA in the layout of its columns.
function stack_chunk!(S::Vector{T}, soff::Int, dA::Array{T,4}, n0::Int, nb::Int, rp::Int) where {T}
    ow, oh, cout = size(dA, 1), size(dA, 2), size(dA, 3)
    P, Pr = ow * oh, rp * (oh - 1) + ow
    rows = Pr * nb
    @inbounds for n in n0:n0+nb-1, co in 1:cout
        src, dst = ((n - 1) * cout + co - 1) * P, soff + (n - n0) * Pr + (co - 1) * rows
        if rp == ow
            @simd for p in 1:P
                S[dst + p] = dA[src + p]
            end
        else
            for oy in 1:oh
                @simd for ox in 1:ow
                    S[dst + ox] = dA[src + ox]
                end
                if oy < oh
                    for ox in ow+1:rp
                        S[dst + ox] = zero(T)
                    end
                end
                src += ow
                dst += rp
            end
        end
    end
    return nothing
end

# The inverse of stack_chunk! fused with the bias and activation: A[ox, oy, co, n] = S[...] + b[co]
# and H = σ.(A). S may be A itself (a chunk of one sample in the exact layout is already in place).
function unstack_bias_activate!(A::Array{T,4}, H::Array{T,4}, σ::F, S::Array{T}, soff::Int, b::Vector{T},
                                n0::Int, nb::Int, rp::Int) where {T,F}
    ow, oh, cout = size(A, 1), size(A, 2), size(A, 3)
    P, Pr = ow * oh, rp * (oh - 1) + ow
    rows = Pr * nb
    @inbounds for n in n0:n0+nb-1, co in 1:cout
        src, dst, bc = soff + (n - n0) * Pr + (co - 1) * rows, ((n - 1) * cout + co - 1) * P, b[co]
        if rp == ow
            @simd for p in 1:P
                a = S[src + p] + bc
                A[dst + p] = a
                H[dst + p] = activate(σ, a)
            end
        else
            for oy in 1:oh
                @simd for ox in 1:ow
                    a = S[src + ox] + bc
                    A[dst + ox] = a
                    H[dst + ox] = activate(σ, a)
                end
                src += rp
                dst += ow
            end
        end
    end
    return nothing
end

function check_chunk(chunk::Int)
    chunk >= 0 || throw(ArgumentError("chunk must be non-negative (0: chosen from the shapes), got $chunk"))
    return nothing
end

"""
    conv_forward!(A, X, K, b, cols, win[, chunk])
    conv_forward!(A, H, σ, X, K, b, cols, win[, chunk])

A = conv(X, K) .+ b (cross-correlation with zero padding, bias per output channel), for X
(w, h, cin, m), K (kw, kh, cin, cout), A (ow, oh, cout, m); the second form also sets H = σ.(A)
in the same pass. `cols` is scratch of at least `conv_scratch_length` elements; `chunk` is the
number of samples per GEMM (0, the default, chooses from the shapes).
"""
conv_forward!(A::Array{T,4}, X::Array{T,4}, K::Array{T,4}, b::Vector{T}, cols::Vector{T}, win::Window,
              chunk::Int=0) where {T<:Union{Float32,Float64}} = conv_forward!(A, A, identity, X, K, b, cols, win, chunk)

function conv_forward!(A::Array{T,4}, H::Array{T,4}, σ::F, X::Array{T,4}, K::Array{T,4}, b::Vector{T},
                       cols::Vector{T}, win::Window, chunk::Int=0) where {T<:Union{Float32,Float64},F}
    w, h, cin, m, cout, ow, oh = conv_geometry(X, K, A, win)
    size(H) == size(A) || throw(DimensionMismatch("H is $(size(H)), expected A's size $(size(A))"))
    check_bias(b, cout, "b")
    check_cols(cols, conv_scratch_length(win, (w, h), cin, cout, m, chunk))
    P, Q = ow * oh, win.k[1] * win.k[2] * cin
    if P == 1           # A = the product, then the bias and activation in one pass
        one_by_one_forward!(A, X, K, cols, win)
        @inbounds for n in 1:m
            @simd for co in 1:cout
                a = A[co + (n - 1) * cout] + b[co]
                A[co + (n - 1) * cout] = a
                H[co + (n - 1) * cout] = activate(σ, a)
            end
        end
        return A
    end
    rp = row_pitch(win, w, ow)
    Pr = rows_per_sample(win, w, ow, oh)
    nb = chunk_size(Pr, m, chunk)
    S0 = Pr * nb * Q            # the product buffer, after the chunk's columns
    GC.@preserve A K X cols for n0 in 1:nb:m
        nc = min(nb, m - n0 + 1)
        rows = Pr * nc
        stacked_im2col!(cols, X, n0, nc, win, ow, oh)
        if nc == 1 && Pr == P   # the product lands in A in place
            aoff = (n0 - 1) * P * cout
            gemm_ptr!('N', 'N', P, cout, Q, one(T), pointer(cols), P, pointer(K), Q, zero(T), pointer(A, aoff + 1), P)
            unstack_bias_activate!(A, H, σ, A, aoff, b, n0, 1, rp)
        else
            gemm_ptr!('N', 'N', rows, cout, Q, one(T), pointer(cols), rows, pointer(K), Q, zero(T),
                      pointer(cols, S0 + 1), rows)
            unstack_bias_activate!(A, H, σ, cols, S0, b, n0, nc, rp)
        end
    end
    return A
end

# The columns of the nc samples from n0, stacked row-wise: a (Pr*nc) x Q matrix at the start of cols.
function stacked_im2col!(cols::Vector{T}, X::Array{T,4}, n0::Int, nc::Int, win::Window, ow::Int, oh::Int) where {T}
    w, h, cin = size(X, 1), size(X, 2), size(X, 3)
    Pr = rows_per_sample(win, w, ow, oh)
    rows = Pr * nc
    if wide_rows(win)       # column (i, j, ci) of sample n: X from (i, j, ci, n) on, Pr elements
        (kw, kh) = win.k
        GC.@preserve cols X for n in n0:n0+nc-1, ci in 1:cin, j in 1:kh, i in 1:kw
            q = i + (j - 1) * kw + (ci - 1) * kw * kh
            unsafe_copyto!(pointer(cols, (n - n0) * Pr + (q - 1) * rows + 1),
                           pointer(X, ((n - 1) * cin + ci - 1) * (w * h) + (j - 1) * w + i), Pr)
        end
    else
        for n in n0:n0+nc-1
            im2col!(cols, (n - n0) * Pr, rows, X, n, win, ow, oh)
        end
    end
end

# The adjoint of stacked_im2col!: dX[..., n] += the columns of the nc samples from n0 (dX zeroed before).
function stacked_col2im!(dX::Array{T,4}, cols::Vector{T}, n0::Int, nc::Int, win::Window, ow::Int, oh::Int) where {T}
    w, h, cin = size(dX, 1), size(dX, 2), size(dX, 3)
    Pr = rows_per_sample(win, w, ow, oh)
    rows = Pr * nc
    if wide_rows(win)
        (kw, kh) = win.k
        @inbounds for n in n0:n0+nc-1, ci in 1:cin, j in 1:kh, i in 1:kw
            q = i + (j - 1) * kw + (ci - 1) * kw * kh
            src, dst = (n - n0) * Pr + (q - 1) * rows, ((n - 1) * cin + ci - 1) * (w * h) + (j - 1) * w + i - 1
            @simd for t in 1:Pr
                dX[dst + t] += cols[src + t]
            end
        end
    else
        for n in n0:n0+nc-1
            col2im!(dX, n, cols, (n - n0) * Pr, rows, win, ow, oh)
        end
    end
end

# A = conv(X, K) for 1 x 1 outputs: the columns of all samples form one Q x m matrix, so the product
# is one GEMM; when the window covers the whole unpadded input, that matrix is X itself.
function one_by_one_forward!(A::Array{T,4}, X::Array{T,4}, K::Array{T,4}, cols::Vector{T}, win::Window) where {T}
    m, cout = size(X, 4), size(K, 4)
    Q = win.k[1] * win.k[2] * size(X, 3)
    GC.@preserve A K X cols begin
        if whole_input(win, size(X, 1), size(X, 2))
            gemm_ptr!('T', 'N', cout, m, Q, one(T), pointer(K), Q, pointer(X), Q, zero(T), pointer(A), cout)
        else
            for n in 1:m
                im2col!(cols, (n - 1) * Q, 1, X, n, win, 1, 1)
            end
            gemm_ptr!('T', 'N', cout, m, Q, one(T), pointer(K), Q, pointer(cols), Q, zero(T), pointer(A), cout)
        end
    end
    return A
end

"""
    conv_filter_grad!(dK, db, X, dA, cols, win[, chunk])

The gradients of the convolution's parameters: dK[i, j, ci, co] = Σ dA[ow, oh, co, n] *
Xpad[(ow-1)sw+i, (oh-1)sh+j, ci, n] and db[co] = Σ dA[:, :, co, :]. Overwrites dK and db. `cols`
is scratch: the columns are made again, chunk by chunk, rather than kept from the forward pass.
"""
function conv_filter_grad!(dK::Array{T,4}, db::Vector{T}, X::Array{T,4}, dA::Array{T,4}, cols::Vector{T},
                           win::Window, chunk::Int=0) where {T<:Union{Float32,Float64}}
    w, h, cin, m, cout, ow, oh = conv_geometry(X, dK, dA, win)
    check_bias(db, cout, "db")
    check_cols(cols, conv_scratch_length(win, (w, h), cin, cout, m, chunk))
    channel_sums!(db, dA)
    m == 0 && return fill!(dK, zero(T))
    P, Q = ow * oh, win.k[1] * win.k[2] * cin
    if P == 1           # dK = columns (Q x m) * dAᵀ; the columns are X itself for a whole-input window
        Xc = whole_input(win, w, h) ? X : cols
        Xc === cols && for n in 1:m
            im2col!(cols, (n - 1) * Q, 1, X, n, win, 1, 1)
        end
        GC.@preserve dK dA Xc gemm_ptr!('N', 'T', Q, cout, m, one(T), pointer(Xc), Q, pointer(dA), cout, zero(T),
                                        pointer(dK), Q)
        return dK
    end
    rp = row_pitch(win, w, ow)
    Pr = rows_per_sample(win, w, ow, oh)
    nb = chunk_size(Pr, m, chunk)
    S0 = Pr * nb * Q
    Kt = S0 + Pr * nb * cout       # dKᵀ, after the chunk's columns and error
    GC.@preserve dK dA cols X for n0 in 1:nb:m
        nc = min(nb, m - n0 + 1)
        rows = Pr * nc
        stacked_im2col!(cols, X, n0, nc, win, ow, oh)
        if nc == 1 && Pr == P   # dA's rows are in place
            S = pointer(dA, (n0 - 1) * P * cout + 1)
        else
            stack_chunk!(cols, S0, dA, n0, nc, rp)
            S = pointer(cols, S0 + 1)
        end
        # dKᵀ (cout x Q) += Sᵀ * columns: 1.1-1.8x faster here than dK (Q x cout) += columnsᵀ * S
        gemm_ptr!('T', 'N', cout, Q, rows, one(T), S, rows, pointer(cols), rows, n0 == 1 ? zero(T) : one(T),
                  pointer(cols, Kt + 1), cout)
    end
    @inbounds for co in 1:cout, q in 1:Q
        dK[q + (co - 1) * Q] = cols[Kt + co + (q - 1) * cout]
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
    conv_data_grad!(dX, dA, K, cols, win[, chunk, acc])

dX = the adjoint of X ↦ conv(X, K) applied to dA (the transposed convolution), for any kernel K of
the forward kernel's shape (W for backprop, a feedback kernel B for feedback alignment).
Overwrites dX, or adds to it with `acc`; `cols` is scratch. `chunk`: samples per GEMM, as in `conv_forward!`.
"""
function conv_data_grad!(dX::Array{T,4}, dA::Array{T,4}, K::Array{T,4}, cols::Vector{T},
                         win::Window, chunk::Int=0, acc::Bool=false) where {T<:Union{Float32,Float64}}
    w, h, cin, m, cout, ow, oh = conv_geometry(dX, K, dA, win)
    check_cols(cols, conv_scratch_length(win, (w, h), cin, cout, m, chunk))
    P, Q = ow * oh, win.k[1] * win.k[2] * cin
    if whole_input(win, w, h)           # dX (Q x m) = Kmat * dA: the columns are the input
        GC.@preserve dX dA K gemm_ptr!('N', 'N', Q, m, cout, one(T), pointer(K), Q, pointer(dA), cout, T(acc),
                                       pointer(dX), Q)
        return dX
    end
    acc || fill!(dX, zero(T))
    GC.@preserve dA K cols if P == 1    # all samples at once: dcols (Q x m) = Kmat * dA
        gemm_ptr!('N', 'N', Q, m, cout, one(T), pointer(K), Q, pointer(dA), cout, zero(T), pointer(cols), Q)
        for n in 1:m
            col2im!(dX, n, cols, (n - 1) * Q, 1, win, ow, oh)
        end
    else                                # per chunk: dcols (rows x Q) = dA's rows * Kmatᵀ, at the start of cols
        rp = row_pitch(win, w, ow)
        Pr = rows_per_sample(win, w, ow, oh)
        nb = chunk_size(Pr, m, chunk)
        S0 = Pr * nb * Q
        for n0 in 1:nb:m
            nc = min(nb, m - n0 + 1)
            rows = Pr * nc
            if nc == 1 && Pr == P
                S = pointer(dA, (n0 - 1) * P * cout + 1)
            else
                stack_chunk!(cols, S0, dA, n0, nc, rp)
                S = pointer(cols, S0 + 1)
            end
            gemm_ptr!('N', 'T', rows, Q, cout, one(T), S, rows, pointer(K), Q, zero(T), pointer(cols), rows)
            stacked_col2im!(dX, cols, n0, nc, win, ow, oh)
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
    # The common windows get their own compiled loop, whose taps unroll (about 2x faster than a
    # loop over a run-time window size here); 2 x 2 compares its taps as a tree (2x faster again).
    (kw, kh), (sw, sh) = win.k, win.stride
    if (kw, kh) == (2, 2)
        maxpool2x2_kernel!(Y, idx, X, sw, sh)
    elseif (kw, kh) == (3, 3)
        maxpool_kernel!(Y, idx, X, Val(3), Val(3), sw, sh)
    else
        maxpool_kernel!(Y, idx, X, kw, kh, sw, sh)
    end
    return Y
end

# (a, ia) or (b, ib), whichever is the larger; a, the first in memory order, on ties; a NaN wins
# unless a is NaN already.
@inline function first_max(a, ia, b, ib)
    take = (b > a) | (isnan(b) & !isnan(a))
    return ifelse(take, b, a), ifelse(take, ib, ia)
end

function maxpool2x2_kernel!(Y::Array{T,4}, idx::Array{Int32,4}, X::Array{T,4}, sw::Int, sh::Int) where {T}
    w, h, c, m = size(X)
    ow, oh = size(Y, 1), size(Y, 2)
    @inbounds for n in 1:m, ch in 1:c, oy in 1:oh
        sample = (n - 1) * (w * h * c)
        row = (ch - 1) * (w * h) + (oy - 1) * sh * w - sw     # within the sample, 0-based, less one stride
        out = (((n - 1) * c + ch - 1) * oh + oy - 1) * ow
        @simd for ox in 1:ow
            k0 = row + ox * sw + 1
            k = Int32(k0)                                     # fits: checked above
            top, itop = first_max(X[sample + k0], k, X[sample + k0 + 1], k + Int32(1))
            bottom, ibottom = first_max(X[sample + k0 + w], k + Int32(w), X[sample + k0 + w + 1], k + Int32(w + 1))
            Y[out + ox], idx[out + ox] = first_max(top, itop, bottom, ibottom)
        end
    end
    return Y
end

# Taps in memory order with a strict >, so the first maximum stays; branch-free (on random data a
# branch would mispredict half the comparisons).
maxpool_kernel!(Y, idx, X, ::Val{kw}, ::Val{kh}, sw, sh) where {kw,kh} = maxpool_kernel!(Y, idx, X, kw, kh, sw, sh)
@inline function maxpool_kernel!(Y::Array{T,4}, idx::Array{Int32,4}, X::Array{T,4}, kw::Int, kh::Int, sw::Int, sh::Int) where {T}
    w, h, c, m = size(X)
    ow, oh = size(Y, 1), size(Y, 2)
    @inbounds for n in 1:m, ch in 1:c, oy in 1:oh
        sample = (n - 1) * (w * h * c)
        row = (ch - 1) * (w * h) + (oy - 1) * sh * w - sw     # within the sample, 0-based, less one stride
        out = (((n - 1) * c + ch - 1) * oh + oy - 1) * ow
        for ox in 1:ow
            k0 = row + ox * sw + 1
            best, at = X[sample + k0], Int32(k0)          # fits: checked above
            for j in 1:kh, i in 1:kw
                i == j == 1 && continue
                k = k0 + (j - 1) * w + i - 1
                v = X[sample + k]
                take = (v > best) | (isnan(v) & !isnan(best))
                best, at = ifelse(take, v, best), ifelse(take, k % Int32, at)
            end
            Y[out + ox] = best
            idx[out + ox] = at
        end
    end
    return Y
end

"""
    maxpool_backward!(dX, dY, idx, win[, acc])

dX = 0 except each dY routed to its window's arg-max recorded in `idx` by `maxpool_forward!`
(summed where overlapping windows share one); with `acc`, added to dX instead.
"""
function maxpool_backward!(dX::Array{T,4}, dY::Array{T,4}, idx::Array{Int32,4}, win::Window, acc::Bool=false) where {T<:Union{Float32,Float64}}
    w, h, c, m, ow, oh = pool_geometry(dY, dX, win)
    size(idx) == size(dY) || throw(DimensionMismatch("idx is $(size(idx)), expected $(size(dY))"))
    # A zero fill (memset) then a scatter of dY: 3x faster here than writing each element of dX once
    # by comparing it with its window's arg-max.
    acc || fill!(dX, zero(T))
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
    meanpool_backward!(dX, dY, win[, acc])

dX = each window's dY / (kw*kh) spread over the window (summed where windows overlap); with `acc`,
added to dX instead.
"""
function meanpool_backward!(dX::Array{T,4}, dY::Array{T,4}, win::Window, acc::Bool=false) where {T<:Union{Float32,Float64}}
    w, h, c, m, ow, oh = pool_geometry(dY, dX, win)
    (kw, kh), (sw, sh) = win.k, win.stride
    area = T(kw * kh)
    acc || fill!(dX, zero(T))
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
