# Time of the convolution and pooling kernels (src/conv.jl) per batch of 64, against the floor of
# the GEMMs they make (the same GEMM calls alone, on the same buffers). Not a test.
#
#     OPENBLAS_CORETYPE=SkylakeX julia --startup-file=no bench/conv_kernels.jl [--float64]   # Haswell on AVX2
#
# Set OPENBLAS_CORETYPE as pyjlfa's `_choose_openblas_coretype` does (avx512f -> SkylakeX, avx2 ->
# Haswell): Julia 1.5's OpenBLAS 0.3.9 otherwise falls back to an old kernel on these CPUs.
# One BLAS thread: the machine is shared, and per-layer ratios are what this measures.
push!(LOAD_PATH, joinpath(@__DIR__, "..", "julia"))
using FeedbackAlignment, LinearAlgebra, Printf, Random
const FA_ = FeedbackAlignment
using FeedbackAlignment: Window, window_output, conv_scratch_length, gemm_ptr!

BLAS.set_num_threads(1)

# Seconds per call of f and of g: the best of 60 trials of ~2 ms each, f's and g's trials taking
# turns so both see the same load. On a shared machine the shortest trials are the ones nothing
# interrupted.
function seconds(f, g)
    f(); g()
    reps(h) = max(1, round(Int, 0.002 / max(@elapsed(h()), 1e-7)))
    nf, ng = reps(f), reps(g)
    tf, tg = Inf, Inf
    for _ in 1:60
        tf = min(tf, @elapsed(for _ in 1:nf; f(); end) / nf)
        tg = min(tg, @elapsed(for _ in 1:ng; g(); end) / ng)
    end
    return tf, tg
end
seconds(f) = seconds(f, () -> nothing)[1]

# The GEMMs of the im2col route alone, as the kernels call them (per sample; one for 1 x 1 outputs).
function gemm_floors(A, K, dA, cols, dK, m, P, Q, cout)
    T = eltype(A)
    fwd() = GC.@preserve A K cols if P == 1
        gemm_ptr!('T', 'N', cout, m, Q, one(T), pointer(K), Q, pointer(cols), Q, one(T), pointer(A), cout)
    else
        for n in 1:m
            gemm_ptr!('N', 'N', P, cout, Q, one(T), pointer(cols, (n-1)*P*Q + 1), P, pointer(K), Q, one(T),
                      pointer(A, (n-1)*P*cout + 1), P)
        end
    end
    filt() = GC.@preserve dK dA cols if P == 1
        gemm_ptr!('N', 'T', Q, cout, m, one(T), pointer(cols), Q, pointer(dA), cout, zero(T), pointer(dK), Q)
    else
        for n in 1:m
            gemm_ptr!('T', 'N', Q, cout, P, one(T), pointer(cols, (n-1)*P*Q + 1), P, pointer(dA, (n-1)*P*cout + 1),
                      P, one(T), pointer(dK), Q)
        end
    end
    data() = GC.@preserve dA K cols if P == 1
        gemm_ptr!('N', 'N', Q, m, cout, one(T), pointer(K), Q, pointer(dA), cout, zero(T), pointer(cols), Q)
    else
        for n in 1:m
            gemm_ptr!('N', 'T', P, Q, cout, one(T), pointer(dA, (n-1)*P*cout + 1), P, pointer(K), Q, zero(T),
                      pointer(cols), P)
        end
    end
    return fwd, filt, data
end

# Times of (forward, filter grad, data grad), and of their GEMM floor.
function conv_times(T, (w, h), cin, cout, k, stride, pad, m)
    rng = MersenneTwister(1)
    win = Window(k, stride, pad)
    ow, oh = window_output(win, (w, h))
    P, Q = ow * oh, k[1] * k[2] * cin
    X, K, b = randn(rng, T, w, h, cin, m), randn(rng, T, k..., cin, cout), randn(rng, T, cout)
    A, dA, dK, db, dX = zeros(T, ow, oh, cout, m), randn(rng, T, ow, oh, cout, m), similar(K), similar(b), similar(X)
    cols = zeros(T, conv_scratch_length(win, (w, h), cin, m))
    # the floor's own buffers (the same data), so the kernels' scratch keeps what their forward pass left
    FA_.conv_forward!(A, X, K, b, cols, win)
    cols2, A2, dK2 = copy(cols), copy(A), copy(dK)
    fwd, filt, data = gemm_floors(A2, K, dA, cols2, dK2, m, P, Q, cout)
    pairs = (seconds(() -> FA_.conv_forward!(A, X, K, b, cols, win), fwd),
             seconds(() -> FA_.conv_filter_grad!(dK, db, X, dA, cols, win), filt),
             seconds(() -> FA_.conv_data_grad!(dX, dA, K, cols, win), data))
    return first.(pairs), last.(pairs)
end

ms(t) = @sprintf("%7.3f", 1e3 * t)
ratio(a, b) = @sprintf("%5.2f", a / b)

function report_conv(T, layers, m)
    println("\nconvolution, $T, batch $m: ms per batch (ratio to the GEMM floor)")
    println(rpad("layer", 34), "forward         filter grad     data grad       | GEMM floor fwd/filt/data")
    total = zeros(2)
    for (name, insize, cin, cout, k, stride, pad) in layers
        kernels, floor = conv_times(T, insize, cin, cout, k, stride, pad, m)
        total .+= (sum(kernels), sum(floor))
        println(rpad(name, 34), join([ms(kernels[i]) * " (" * ratio(kernels[i], floor[i]) * ")" for i in 1:3], " "),
                " | ", join(ms.(floor), " "))
    end
    println(rpad("all three passes of these layers", 34), ms(total[1]), " (", ratio(total[1], total[2]), ")")
end

function report_pool(T, layers, m)
    println("\npooling, $T, batch $m: ms per batch (ratio to copying the input once)")
    println(rpad("layer", 34), "max fwd         max bwd         mean fwd        mean bwd")
    for (name, (w, h), c, k, stride) in layers
        win = Window(k, stride, (0, 0))
        ow, oh = window_output(win, (w, h))
        X = randn(MersenneTwister(2), T, w, h, c, m)
        Y, idx, dY, dX, X2 = zeros(T, ow, oh, c, m), zeros(Int32, ow, oh, c, m), randn(T, ow, oh, c, m), similar(X), similar(X)
        copy = seconds(() -> copyto!(X2, X))
        times = (seconds(() -> FA_.maxpool_forward!(Y, idx, X, win)), seconds(() -> FA_.maxpool_backward!(dX, dY, idx, win)),
                 seconds(() -> FA_.meanpool_forward!(Y, X, win)), seconds(() -> FA_.meanpool_backward!(dX, dY, win)))
        println(rpad(name, 34), join([ms(t) * " (" * ratio(t, copy) * ")" for t in times], " "))
    end
end

println("OPENBLAS_CORETYPE=", get(ENV, "OPENBLAS_CORETYPE", "(unset)"), ", Julia ", VERSION, ", 1 BLAS thread")
const LENET5 = [("LeNet-5 conv 1->6 k5 on 32x32", (32, 32), 1, 6, (5, 5), (1, 1), (0, 0)),
               ("LeNet-5 conv 6->16 k5 on 14x14", (14, 14), 6, 16, (5, 5), (1, 1), (0, 0)),
               ("LeNet-5 conv 16->120 k5 on 5x5", (5, 5), 16, 120, (5, 5), (1, 1), (0, 0))]
const CIFAR = [("CIFAR conv 3->32 k3 on 32x32", (32, 32), 3, 32, (3, 3), (1, 1), (0, 0)),
               ("CIFAR conv 32->64 k3 on 15x15", (15, 15), 32, 64, (3, 3), (1, 1), (0, 0)),
               ("CIFAR conv 64->128 k3 on 6x6", (6, 6), 64, 128, (3, 3), (1, 1), (0, 0))]
const POOLS = [("max/mean pool 2 on 28x28x6", (28, 28), 6, (2, 2), (2, 2)),
               ("max/mean pool 2 on 10x10x16", (10, 10), 16, (2, 2), (2, 2))]
for T in (Float32, ("--float64" in ARGS ? (Float64,) : ())...)
    report_conv(T, LENET5, 64)
    report_conv(T, CIFAR, 64)
    report_pool(T, POOLS, 64)
end
