# Tests of the convolution and pooling kernels (src/conv.jl) against naive loops written here from
# the formulas, plus adjoint identities, finite differences and allocation counts. Included from
# runtests.jl; standalone: `using FeedbackAlignment, LinearAlgebra, Random, Test; include("conv.jl")`.

using FeedbackAlignment: Window, window_output, conv_scratch_length, conv_forward!, conv_data_grad!,
    conv_filter_grad!, maxpool_forward!, maxpool_backward!, meanpool_forward!, meanpool_backward!,
    gemm_ptr!, use_external_blas!
using LinearAlgebra, Random, Test

# --- naive references (Float64, straight from the definitions) --------------------------------------

function naive_pad(X, (pw, ph))
    w, h, c, m = size(X)
    Xpad = zeros(w + 2pw, h + 2ph, c, m)
    Xpad[pw+1:pw+w, ph+1:ph+h, :, :] .= X
    return Xpad
end

function naive_conv(X, K, b, win)
    w, h, cin, m = size(X)
    kw, kh, _, cout = size(K)
    (sw, sh), (pw, ph) = win.stride, win.pad
    ow, oh = (w + 2pw - kw) ÷ sw + 1, (h + 2ph - kh) ÷ sh + 1
    Xpad = naive_pad(X, win.pad)
    A = zeros(ow, oh, cout, m)
    for n in 1:m, co in 1:cout, oy in 1:oh, ox in 1:ow
        s = Float64(b[co])
        for ci in 1:cin, j in 1:kh, i in 1:kw
            s += K[i, j, ci, co] * Xpad[(ox-1)*sw+i, (oy-1)*sh+j, ci, n]
        end
        A[ox, oy, co, n] = s
    end
    return A
end

function naive_filter_grad(X, dA, ksize, win)
    w, h, cin, m = size(X)
    ow, oh, cout, _ = size(dA)
    kw, kh = ksize
    (sw, sh), (pw, ph) = win.stride, win.pad
    Xpad = naive_pad(X, win.pad)
    dK = zeros(kw, kh, cin, cout)
    for co in 1:cout, ci in 1:cin, j in 1:kh, i in 1:kw, n in 1:m, oy in 1:oh, ox in 1:ow
        dK[i, j, ci, co] += dA[ox, oy, co, n] * Xpad[(ox-1)*sw+i, (oy-1)*sh+j, ci, n]
    end
    db = [sum(Float64.(dA[:, :, co, :])) for co in 1:cout]
    return dK, db
end

function naive_data_grad(dA, K, insize, win)
    w, h = insize
    ow, oh, cout, m = size(dA)
    kw, kh, cin, _ = size(K)
    (sw, sh), (pw, ph) = win.stride, win.pad
    dXpad = zeros(w + 2pw, h + 2ph, cin, m)
    for n in 1:m, co in 1:cout, oy in 1:oh, ox in 1:ow, ci in 1:cin, j in 1:kh, i in 1:kw
        dXpad[(ox-1)*sw+i, (oy-1)*sh+j, ci, n] += K[i, j, ci, co] * dA[ox, oy, co, n]
    end
    return dXpad[pw+1:pw+w, ph+1:ph+h, :, :]
end

# max and first arg-max (memory order: i fastest) of each window; idx is linear within the sample
function naive_maxpool(X, win)
    w, h, c, m = size(X)
    (kw, kh), (sw, sh) = win.k, win.stride
    ow, oh = (w - kw) ÷ sw + 1, (h - kh) ÷ sh + 1
    Y, idx = zeros(ow, oh, c, m), zeros(Int, ow, oh, c, m)
    L = LinearIndices((w, h, c))
    for n in 1:m, ch in 1:c, oy in 1:oh, ox in 1:ow
        best, at = -Inf, 0
        for j in 1:kh, i in 1:kw
            x, y = (ox-1)*sw+i, (oy-1)*sh+j
            v = Float64(X[x, y, ch, n])
            if at == 0 || v > best || (isnan(v) && !isnan(best))
                best, at = v, L[x, y, ch]
            end
        end
        Y[ox, oy, ch, n], idx[ox, oy, ch, n] = best, at
    end
    return Y, idx
end

function naive_maxpool_backward(dY, idx, insize)
    w, h = insize
    ow, oh, c, m = size(dY)
    dX = zeros(w, h, c, m)
    for n in 1:m, p in 1:ow*oh*c
        dX[(n-1)*w*h*c + idx[(n-1)*ow*oh*c + p]] += dY[(n-1)*ow*oh*c + p]
    end
    return dX
end

function naive_meanpool(X, win)
    w, h, c, m = size(X)
    (kw, kh), (sw, sh) = win.k, win.stride
    ow, oh = (w - kw) ÷ sw + 1, (h - kh) ÷ sh + 1
    Y = zeros(ow, oh, c, m)
    for n in 1:m, ch in 1:c, oy in 1:oh, ox in 1:ow
        Y[ox, oy, ch, n] = sum(Float64.(X[(ox-1)*sw+1:(ox-1)*sw+kw, (oy-1)*sh+1:(oy-1)*sh+kh, ch, n])) / (kw * kh)
    end
    return Y
end

function naive_meanpool_backward(dY, insize, win)
    w, h = insize
    ow, oh, c, m = size(dY)
    (kw, kh), (sw, sh) = win.k, win.stride
    dX = zeros(w, h, c, m)
    for n in 1:m, ch in 1:c, oy in 1:oh, ox in 1:ow
        dX[(ox-1)*sw+1:(ox-1)*sw+kw, (oy-1)*sh+1:(oy-1)*sh+kh, ch, n] .+= dY[ox, oy, ch, n] / (kw * kh)
    end
    return dX
end

# The kernels in the order a layer's training step calls them: forward with K, filter gradient,
# then the data gradient with the kernel B (K itself for backprop). `extra` pads cols beyond need.
function conv_step(X, K, b, B, dA, win; extra=0)
    T = eltype(X)
    w, h, cin, m = size(X)
    cout = size(K, 4)
    ow, oh = window_output(win, (w, h))
    cols = fill(T(NaN), conv_scratch_length(win, (w, h), cin, cout, m) + extra)   # garbage it must not read
    A = fill(T(NaN), ow, oh, cout, m)
    dK, db, dX = fill(T(NaN), size(K)), fill(T(NaN), cout), fill(T(NaN), size(X))
    conv_forward!(A, X, K, b, cols, win)
    conv_filter_grad!(dK, db, X, dA, cols, win)
    conv_data_grad!(dX, dA, B, cols, win)
    return A, dK, db, dX
end

# (w, h, cin, cout, k, stride, pad, m): one input channel and several, 1 x 1 outputs (from a window
# over the whole input, which skips im2col, and from a padded one), non-square kernels, strides 1
# and 2, paddings 0, 1 and 2, rows short and long (im2col copies long ones by memmove).
const CONV_CASES = [
    (7, 6, 1, 3, (3, 2), (1, 1), (0, 0), 1),
    (9, 8, 1, 2, (3, 4), (2, 2), (2, 1), 3),
    (6, 5, 1, 20, (3, 3), (1, 1), (1, 1), 3),
    (8, 7, 2, 4, (3, 3), (2, 2), (1, 1), 3),
    (9, 8, 3, 5, (2, 4), (1, 2), (2, 1), 3),
    (5, 6, 2, 3, (3, 3), (2, 1), (2, 2), 1),
    (5, 5, 4, 6, (5, 5), (1, 1), (0, 0), 3),
    (3, 3, 2, 4, (5, 5), (1, 1), (1, 1), 3),
    (4, 4, 3, 2, (1, 1), (2, 2), (0, 0), 2),
    (4, 3, 2, 3, (4, 3), (2, 2), (0, 0), 3),
    (30, 4, 2, 3, (3, 2), (1, 1), (1, 0), 2),     # rows of 29-30: copied by memmove
    (28, 3, 1, 2, (5, 1), (1, 1), (0, 0), 2),     # rows of 24: the shortest so copied
]

@testset "window_output" begin
    @test window_output(Window((5, 5), (1, 1), (0, 0)), (32, 32)) == (28, 28)
    @test window_output(Window((3, 3), (2, 2), (1, 1)), (8, 7)) == (4, 4)
    @test window_output(Window((3, 2), (2, 1), (0, 2)), (8, 7)) == (3, 10)
    @test window_output(Window((2, 2), (2, 2), (0, 0)), (5, 5)) == (2, 2)       # the last column is dropped
    @test window_output(Window((5, 5), (1, 1), (1, 1)), (3, 3)) == (1, 1)       # fits only padded
    for (win, insize) in ((Window((6, 2), (1, 1), (0, 0)), (5, 5)),           # window wider than the input
                          (Window((2, 6), (1, 1), (0, 0)), (5, 5)),
                          (Window((8, 2), (1, 1), (1, 1)), (5, 5)),           # ... even padded
                          (Window((2, 2), (0, 1), (0, 0)), (5, 5)),           # stride 0
                          (Window((2, 2), (1, -1), (0, 0)), (5, 5)),
                          (Window((2, 2), (1, 1), (-1, 0)), (5, 5)),          # negative padding
                          (Window((0, 2), (1, 1), (0, 0)), (5, 5)),           # empty window
                          (Window((2, 2), (1, 1), (0, 0)), (0, 5)))           # empty input
        @test_throws ArgumentError window_output(win, insize)
    end
    msg = try window_output(Window((6, 2), (1, 1), (0, 0)), (5, 5)); "" catch e; sprint(showerror, e) end
    @test occursin("(6, 2)", msg) && occursin("(5, 5)", msg)
    # the columns and product of one chunk of samples (rows: output positions; for stride 1 without
    # padding, w*(oh-1)+ow of them) and a kernel-sized sum; for 1 x 1 outputs, every sample's columns
    @test conv_scratch_length(Window((5, 5), (1, 1), (1, 1)), (32, 32), 3, 6, 64, 4) == 30 * 30 * 4 * (25 * 3 + 6) + 75 * 6
    @test conv_scratch_length(Window((5, 5), (1, 1), (0, 0)), (32, 32), 3, 6, 64, 4) == (32 * 27 + 28) * 4 * (25 * 3 + 6) + 75 * 6
    @test conv_scratch_length(Window((5, 5), (1, 1), (0, 0)), (32, 32), 3, 6, 3, 4) == (32 * 27 + 28) * 3 * (25 * 3 + 6) + 75 * 6
    @test conv_scratch_length(Window((5, 5), (1, 1), (0, 0)), (5, 5), 3, 6, 64) == 25 * 3 * 64
    @test_throws ArgumentError conv_scratch_length(Window((5, 5), (1, 1), (0, 0)), (4, 32), 3, 6, 64)
end

@testset "gemm_ptr! on parts of arrays" begin
    rng = MersenneTwister(20)
    for T in (Float32, Float64), tA in ('N', 'T'), tB in ('N', 'T')
        # op(A) 4 x 3, op(B) 3 x 5, each stored at an offset inside a larger buffer
        A = randn(rng, T, tA == 'N' ? (4, 3) : (3, 4))
        B = randn(rng, T, tB == 'N' ? (3, 5) : (5, 3))
        C0 = randn(rng, T, 4, 5)
        bufA, bufB, bufC = [randn(rng, T, 7); vec(A)], [randn(rng, T, 2); vec(B)], [randn(rng, T, 3); vec(C0)]
        before = bufC[1:3]
        GC.@preserve bufA bufB bufC gemm_ptr!(tA, tB, 4, 5, 3, T(2), pointer(bufA, 8), size(A, 1),
                                              pointer(bufB, 3), size(B, 1), T(0.5), pointer(bufC, 4), 4)
        expected = 2 .* (tA == 'N' ? A : transpose(A)) * (tB == 'N' ? B : transpose(B)) .+ 0.5 .* C0
        @test reshape(bufC[4:end], 4, 5) ≈ expected rtol = (T == Float32 ? 1e-5 : 1e-12)
        @test bufC[1:3] == before      # untouched before the offset
    end
end

@testset "convolution against naive loops ($T)" for T in (Float32, Float64)
    rtol = T == Float32 ? 1e-5 : 1e-12
    rng = MersenneTwister(21)
    for (w, h, cin, cout, k, s, p, m) in CONV_CASES
        win = Window(k, s, p)
        X, K, B = randn(rng, T, w, h, cin, m), randn(rng, T, k..., cin, cout), randn(rng, T, k..., cin, cout)
        b = randn(rng, T, cout)
        ow, oh = window_output(win, (w, h))
        dA = randn(rng, T, ow, oh, cout, m)
        A, dK, db, dX = conv_step(X, K, b, B, dA, win; extra=7)
        case = (w, h, cin, cout, k, s, p, m)
        @test (case, isapprox(A, naive_conv(X, K, b, win); rtol=rtol)) == (case, true)
        nK, nb = naive_filter_grad(X, dA, k, win)
        @test (case, isapprox(dK, nK; rtol=rtol), isapprox(db, nb; rtol=rtol)) == (case, true, true)
        # the data gradient uses B, not the forward kernel
        @test (case, isapprox(dX, naive_data_grad(dA, B, (w, h), win); rtol=rtol)) == (case, true)
        @test eltype(A) == eltype(dK) == eltype(dX) == T
    end
end

# The integrator allocates the scratch once for its largest batch and reuses it for every batch
# size: only its first elements count, whatever earlier calls left in the rest.
@testset "convolution with the scratch of a larger batch" begin
    rng = MersenneTwister(22)
    win = Window((3, 3), (2, 1), (1, 1))
    K, B, b = randn(rng, 3, 3, 2, 3), randn(rng, 3, 3, 2, 3), randn(rng, 3)
    cols = fill(NaN, conv_scratch_length(win, (6, 5), 2, 3, 10))
    ow, oh = window_output(win, (6, 5))
    for m in (4, 1, 3)
        X, dA = randn(rng, 6, 5, 2, m), randn(rng, ow, oh, 3, m)
        A, dK, db, dX = zeros(ow, oh, 3, m), similar(K), similar(b), similar(X)
        conv_forward!(A, X, K, b, cols, win)
        conv_filter_grad!(dK, db, X, dA, cols, win)
        conv_data_grad!(dX, dA, B, cols, win)
        nK, nb = naive_filter_grad(X, dA, (3, 3), win)
        @test A ≈ naive_conv(X, K, b, win) rtol=1e-12
        @test dK ≈ nK rtol=1e-12
        @test db ≈ nb rtol=1e-12
        @test dX ≈ naive_data_grad(dA, B, (6, 5), win) rtol=1e-12
    end
end

# Samples per GEMM (the last argument): one (the product lands in A in place), some with a shorter
# last chunk, all, more than the batch, and the default, in the exact row layout and the wide one
# (stride 1, no padding); the fused form also gives H = σ.(A).
@testset "convolution in chunks of samples ($T)" for T in (Float32, Float64)
    rtol = T == Float32 ? 1e-5 : 1e-12
    rng = MersenneTwister(29)
    σ = FeedbackAlignment.relu
    m = 5
    for (w, h, cin, cout, k, s, p) in ((9, 8, 3, 5, (2, 4), (1, 2), (2, 1)), (30, 4, 2, 3, (3, 2), (1, 1), (1, 0)),
                                       (6, 5, 1, 20, (3, 3), (1, 1), (1, 1)), (8, 7, 2, 4, (3, 3), (1, 1), (0, 0))),
        chunk in (1, 2, 3, 5, 7, 0)
        win = Window(k, s, p)
        ow, oh = window_output(win, (w, h))
        X, K, B = randn(rng, T, w, h, cin, m), randn(rng, T, k..., cin, cout), randn(rng, T, k..., cin, cout)
        b, dA = randn(rng, T, cout), randn(rng, T, ow, oh, cout, m)
        cols = fill(T(NaN), conv_scratch_length(win, (w, h), cin, cout, m, chunk))
        A, H = fill(T(NaN), ow, oh, cout, m), fill(T(NaN), ow, oh, cout, m)
        dK, db, dX = fill(T(NaN), size(K)), fill(T(NaN), cout), fill(T(NaN), size(X))
        conv_forward!(A, H, σ, X, K, b, cols, win, chunk)
        conv_filter_grad!(dK, db, X, dA, cols, win, chunk)
        conv_data_grad!(dX, dA, B, cols, win, chunk)
        nA = naive_conv(X, K, b, win)
        nK, nb = naive_filter_grad(X, dA, k, win)
        case = (w, h, cin, cout, chunk)
        @test (case, isapprox(A, nA; rtol=rtol), isapprox(H, max.(nA, 0); rtol=rtol)) == (case, true, true)
        @test (case, isapprox(dK, nK; rtol=rtol), isapprox(db, nb; rtol=rtol)) == (case, true, true)
        @test (case, isapprox(dX, naive_data_grad(dA, B, (w, h), win); rtol=rtol)) == (case, true)
    end
    @test_throws ArgumentError conv_forward!(zeros(T, 3, 3, 1, 1), zeros(T, 5, 5, 1, 1), zeros(T, 3, 3, 1, 1),
                                             zeros(T, 1), zeros(T, 100), Window((3, 3), (1, 1), (0, 0)), -1)
end

@testset "adjoint identities" begin
    rng = MersenneTwister(23)
    for (w, h, cin, cout, k, s, p, m) in CONV_CASES
        win = Window(k, s, p)
        X, K = randn(rng, w, h, cin, m), randn(rng, k..., cin, cout)
        ow, oh = window_output(win, (w, h))
        dA = randn(rng, ow, oh, cout, m)
        A, dK, db, dX = conv_step(X, K, zeros(cout), K, dA, win)    # bias 0: A is linear in X and in K
        @test dot(A, dA) ≈ dot(X, dX) rtol=1e-12
        @test dot(A, dA) ≈ dot(K, dK) rtol=1e-12
        A1, = conv_step(X, K, ones(cout), K, dA, win)              # the bias part of ⟨A, dA⟩ is ⟨1, db⟩
        @test dot(A1 .- A, dA) ≈ sum(db) rtol=1e-12
    end
end

# L(X, K, b) = ½ Σ conv(X, K, b)²: dL/dA = A; the kernels' dX, dK, db match central differences.
@testset "finite differences" begin
    rng = MersenneTwister(24)
    for (w, h, cin, cout, k, s, p, m) in ((5, 4, 2, 3, (3, 2), (2, 1), (1, 1), 2), (5, 5, 1, 2, (3, 3), (1, 2), (1, 0), 2))
        win = Window(k, s, p)
        X, K, b = randn(rng, w, h, cin, m), randn(rng, k..., cin, cout), randn(rng, cout)
        ow, oh = window_output(win, (w, h))
        loss(X, K, b) = sum(abs2, conv_step(X, K, b, K, zeros(ow, oh, cout, m), win)[1]) / 2
        A = conv_step(X, K, b, K, zeros(ow, oh, cout, m), win)[1]
        _, dK, db, dX = conv_step(X, K, b, K, A, win)
        analytic, numeric = Float64[], Float64[]
        hstep = 1e-6
        for (P, G) in ((X, dX), (K, dK), (b, db)), i in eachindex(P)
            p0 = P[i]
            P[i] = p0 + hstep; up = loss(X, K, b)
            P[i] = p0 - hstep; down = loss(X, K, b)
            P[i] = p0
            push!(analytic, G[i]); push!(numeric, (up - down) / 2hstep)
        end
        @test norm(analytic - numeric) / norm(numeric) < 1e-7
        @test norm(analytic) > 1
    end
end

@testset "max pooling ($T)" for T in (Float32, Float64)
    rng = MersenneTwister(25)
    # (w, h, c, k, stride, m): non-overlapping, overlapping (stride < k), a dropped edge, non-square
    # and windows that tile the input with edge columns and rows left over
    for (w, h, c, k, s, m) in ((6, 4, 2, (2, 2), (2, 2), 3), (7, 7, 3, (3, 3), (2, 2), 1),
                               (5, 6, 2, (3, 2), (1, 1), 3), (7, 5, 1, (2, 3), (2, 1), 2),
                               (7, 5, 2, (2, 2), (2, 2), 2), (8, 7, 3, (3, 2), (3, 2), 2))
        win = Window(k, s, (0, 0))
        ow, oh = window_output(win, (w, h))
        # small integers: many ties, which the first maximum in memory order must win
        X = T.(rand(rng, -2:2, w, h, c, m))
        Y, idx = fill(T(NaN), ow, oh, c, m), zeros(Int32, ow, oh, c, m)
        maxpool_forward!(Y, idx, X, win)
        nY, nidx = naive_maxpool(X, win)
        @test Y == nY && idx == nidx
        dY, dX = randn(rng, T, ow, oh, c, m), fill(T(NaN), w, h, c, m)
        maxpool_backward!(dX, dY, idx, win)
        @test dX ≈ naive_maxpool_backward(dY, nidx, (w, h)) rtol = (T == Float32 ? 1e-6 : 1e-15)
    end
    # by hand, X[:, :, 1, 1] = [1 5 5; 5 0 2; 5 1 4] with dim 1 down the columns here (memory
    # order 1, 5, 5, 5, 0, 1, 5, 2, 4). Window (1, 1) holds 5 at linear indices 2 and 4: the first
    # in memory order (dim 1 fastest) is 2, where running over dim 2 first would give 4. Windows
    # (1, 1) and (2, 1) share their maximum at 2, so both gradients arrive there.
    X = reshape(T[1, 5, 5, 5, 0, 1, 5, 2, 4], 3, 3, 1, 1)
    Y, idx = zeros(T, 2, 2, 1, 1), zeros(Int32, 2, 2, 1, 1)
    win = Window((2, 2), (1, 1), (0, 0))
    maxpool_forward!(Y, idx, X, win)
    @test vec(Y) == T[5, 5, 5, 4]
    @test vec(idx) == Int32[2, 2, 4, 9]
    dX = fill(T(NaN), 3, 3, 1, 1)
    maxpool_backward!(dX, reshape(T[1, 10, 100, 1000], 2, 2, 1, 1), idx, win)
    @test vec(dX) == T[0, 11, 0, 100, 0, 0, 0, 0, 1000]
    # NaN propagates, and its position is recorded (the first NaN of the window)
    X = reshape(T[1, NaN, 9, NaN], 2, 2, 1, 1)
    Y, idx = zeros(T, 1, 1, 1, 1), zeros(Int32, 1, 1, 1, 1)
    maxpool_forward!(Y, idx, X, Window((2, 2), (2, 2), (0, 0)))
    @test isnan(Y[1]) && idx[1] == 2
    X = reshape(T[NaN, 1, 9, 2], 2, 2, 1, 1)
    maxpool_forward!(Y, idx, X, Window((2, 2), (2, 2), (0, 0)))
    @test isnan(Y[1]) && idx[1] == 1
    @test_throws ArgumentError maxpool_forward!(Y, idx, X, Window((2, 2), (2, 2), (1, 0)))   # padding
    @test_throws DimensionMismatch maxpool_forward!(zeros(T, 2, 1, 1, 1), zeros(Int32, 2, 1, 1, 1), X,
                                                    Window((2, 2), (2, 2), (0, 0)))
end

@testset "mean pooling ($T)" for T in (Float32, Float64)
    rtol = T == Float32 ? 1e-5 : 1e-12
    rng = MersenneTwister(26)
    for (w, h, c, k, s, m) in ((6, 4, 2, (2, 2), (2, 2), 3), (7, 7, 3, (3, 3), (2, 2), 1),
                               (5, 6, 2, (3, 2), (1, 1), 3))
        win = Window(k, s, (0, 0))
        ow, oh = window_output(win, (w, h))
        X, dY = randn(rng, T, w, h, c, m), randn(rng, T, ow, oh, c, m)
        Y, dX = fill(T(NaN), ow, oh, c, m), fill(T(NaN), w, h, c, m)
        meanpool_forward!(Y, X, win)
        meanpool_backward!(dX, dY, win)
        @test Y ≈ naive_meanpool(X, win) rtol=rtol
        @test dX ≈ naive_meanpool_backward(dY, (w, h), win) rtol=rtol
        @test dot(Float64.(Y), Float64.(dY)) ≈ dot(Float64.(X), Float64.(dX)) rtol=rtol   # adjoint
    end
    Y = zeros(T, 1, 1, 1, 1)
    meanpool_forward!(Y, reshape(T[1, 2, 3, 4, 5, 6], 3, 2, 1, 1), Window((3, 2), (1, 1), (0, 0)))
    @test Y[1] == T(3.5)
end

@testset "convolution argument checks" begin
    win = Window((3, 3), (1, 1), (0, 0))
    X, K, b = zeros(5, 5, 2, 2), zeros(3, 3, 2, 4), zeros(4)
    cols = zeros(conv_scratch_length(win, (5, 5), 2, 4, 2))
    A = zeros(3, 3, 4, 2)
    @test_throws DimensionMismatch conv_forward!(zeros(3, 3, 4, 1), X, K, b, cols, win)        # batch
    @test_throws DimensionMismatch conv_forward!(A, X, zeros(3, 3, 1, 4), b, cols, win)        # cin
    @test_throws DimensionMismatch conv_forward!(A, X, zeros(3, 2, 2, 4), b, cols, win)        # kernel size
    @test_throws DimensionMismatch conv_forward!(A, X, K, zeros(3), cols, win)                 # bias
    @test_throws DimensionMismatch conv_forward!(A, X, K, b, cols[1:end-1], win)               # scratch
    @test_throws DimensionMismatch conv_filter_grad!(zeros(3, 3, 2, 4), zeros(5), X, A, cols, win)
    @test_throws DimensionMismatch conv_data_grad!(zeros(5, 4, 2, 2), A, K, cols, win)
    @test_throws ArgumentError conv_forward!(A, X, K, b, cols, Window((3, 3), (0, 1), (0, 0)))
end

# Julia's own OpenBLAS entered through its Fortran symbol stands in for an external BLAS (as in
# speed.jl): the GEMM routes give the same results through it.
@testset "convolution through an external BLAS" begin
    sym(name) = @eval cglobal(($(QuoteNode(name)), $(Base.libblas_name)))
    rng = MersenneTwister(27)
    try
        for (w, h, cin, cout, k, s, p, m) in CONV_CASES
            win = Window(k, s, p)
            X, K, b = randn(rng, w, h, cin, m), randn(rng, k..., cin, cout), randn(rng, cout)
            ow, oh = window_output(win, (w, h))
            dA = randn(rng, ow, oh, cout, m)
            use_external_blas!(C_NULL, C_NULL)
            own = conv_step(X, K, b, K, dA, win)
            use_external_blas!(sym(:sgemm_64_), sym(:dgemm_64_))
            external = conv_step(X, K, b, K, dA, win)
            @test all(isapprox.(own, external; rtol=1e-12))
        end
    finally
        use_external_blas!(C_NULL, C_NULL)
    end
end

# After a warm-up, every kernel allocates nothing (Julia's allocation counter), on every route.
function conv_kernel_allocations(X, K, b, dA, win)
    T = eltype(X)
    w, h, cin, m = size(X)
    cols = zeros(T, conv_scratch_length(win, (w, h), cin, size(K, 4), m))
    A, dK, db, dX = similar(dA), similar(K), similar(b), similar(X)
    run() = (conv_forward!(A, X, K, b, cols, win); conv_filter_grad!(dK, db, X, dA, cols, win);
             conv_data_grad!(dX, dA, K, cols, win))
    run()
    return (@allocated conv_forward!(A, X, K, b, cols, win)) +
           (@allocated conv_filter_grad!(dK, db, X, dA, cols, win)) +
           (@allocated conv_data_grad!(dX, dA, K, cols, win))
end

function pool_kernel_allocations(X, win)
    T = eltype(X)
    w, h, c, m = size(X)
    ow, oh = window_output(win, (w, h))
    Y, idx, dY, dX = zeros(T, ow, oh, c, m), zeros(Int32, ow, oh, c, m), ones(T, ow, oh, c, m), similar(X)
    maxpool_forward!(Y, idx, X, win); maxpool_backward!(dX, dY, idx, win)
    meanpool_forward!(Y, X, win); meanpool_backward!(dX, dY, win)
    return (@allocated maxpool_forward!(Y, idx, X, win)) + (@allocated maxpool_backward!(dX, dY, idx, win)) +
           (@allocated meanpool_forward!(Y, X, win)) + (@allocated meanpool_backward!(dX, dY, win))
end

@testset "no allocations ($T)" for T in (Float32, Float64)
    rng = MersenneTwister(28)
    for (w, h, cin, cout, k, s, p, m) in CONV_CASES
        win = Window(k, s, p)
        ow, oh = window_output(win, (w, h))
        X, K, b = randn(rng, T, w, h, cin, m), randn(rng, T, k..., cin, cout), randn(rng, T, cout)
        dA = randn(rng, T, ow, oh, cout, m)
        @test ((w, h, cin, cout), conv_kernel_allocations(X, K, b, dA, win)) == ((w, h, cin, cout), 0)
    end
    @test pool_kernel_allocations(randn(rng, T, 8, 6, 3, 2), Window((2, 2), (2, 2), (0, 0))) == 0
    @test pool_kernel_allocations(randn(rng, T, 7, 7, 2, 2), Window((3, 3), (2, 2), (0, 0))) == 0
end
