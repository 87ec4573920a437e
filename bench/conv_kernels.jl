# Time of the convolution and pooling kernels (src/conv.jl) per batch (64 unless --batch), against the floor of
# the GEMMs they make: the same products done as one whole-batch im2col GEMM per pass (as
# bench/conv.py's floor), on buffers of their own. Not a test.
#
#     OPENBLAS_CORETYPE=SkylakeX julia --startup-file=no bench/conv_kernels.jl [--float64] [--blas LIB] [--chunks 1,2,4,0] [--batch 64]
#         [--conv-only | --pool-only | --resnet]
#
# Set OPENBLAS_CORETYPE as pyjlfa's `_choose_openblas_coretype` does (avx512f -> SkylakeX, avx2 ->
# Haswell): Julia 1.5's OpenBLAS 0.3.9 otherwise falls back to an old kernel on these CPUs.
# `--blas LIB` routes the products through that library's ILP64 `scipy_sgemm_64_`/`scipy_dgemm_64_`
# (NumPy's OpenBLAS, numpy.libs/libscipy_openblas64_*.so: what pyjlfa uses under Python).
# `--chunks` times the conv passes for each number of samples per GEMM (0: the kernels' own choice).
# One BLAS thread: the machine is shared, and per-layer ratios are what this measures.
push!(LOAD_PATH, joinpath(@__DIR__, "..", "julia"))
using FeedbackAlignment, LinearAlgebra, Printf, Random
const FA_ = FeedbackAlignment
using FeedbackAlignment: Window, window_output, conv_scratch_length, gemm_ptr!, use_external_blas!
using Libdl

BLAS.set_num_threads(1)
argument(name) = (i = findfirst(==(name), ARGS); i === nothing ? nothing : ARGS[i+1])
if argument("--blas") !== nothing
    ENV["OPENBLAS_NUM_THREADS"] = "1"      # read when the library loads
    lib = Libdl.dlopen(argument("--blas"))
    use_external_blas!(Libdl.dlsym(lib, :scipy_sgemm_64_), Libdl.dlsym(lib, :scipy_dgemm_64_))
end
const CHUNKS = argument("--chunks") === nothing ? [0] : parse.(Int, split(argument("--chunks"), ","))

include(joinpath(@__DIR__, "timing.jl"))
seconds(f, g) = interleaved_seconds(f, g)
seconds(f) = seconds(f, () -> nothing)[1]

# The products of the three passes as one whole-batch im2col GEMM each (rows = P*m output positions).
function gemm_floors(T, m, P, Q, cout)
    rows = P * m
    cols, K, A, dA, dK = rand(T, rows, Q), rand(T, Q, cout), zeros(T, rows, cout), rand(T, rows, cout), zeros(T, Q, cout)
    fwd() = GC.@preserve cols K A gemm_ptr!('N', 'N', rows, cout, Q, one(T), pointer(cols), rows, pointer(K), Q,
                                            zero(T), pointer(A), rows)
    filt() = GC.@preserve cols dA dK gemm_ptr!('T', 'N', Q, cout, rows, one(T), pointer(cols), rows, pointer(dA), rows,
                                               zero(T), pointer(dK), Q)
    data() = GC.@preserve dA K cols gemm_ptr!('N', 'T', rows, Q, cout, one(T), pointer(dA), rows, pointer(K), Q,
                                              zero(T), pointer(cols), rows)
    return fwd, filt, data
end

# Times of (forward, filter grad, data grad) with `chunk` samples per GEMM, and of their GEMM floor.
function conv_times(T, (w, h), cin, cout, k, stride, pad, m, chunk)
    rng = MersenneTwister(1)
    win = Window(k, stride, pad)
    ow, oh = window_output(win, (w, h))
    P, Q = ow * oh, k[1] * k[2] * cin
    X, K, b = randn(rng, T, w, h, cin, m), randn(rng, T, k..., cin, cout), randn(rng, T, cout)
    A, dA, dK, db, dX = zeros(T, ow, oh, cout, m), randn(rng, T, ow, oh, cout, m), similar(K), similar(b), similar(X)
    cols = zeros(T, conv_scratch_length(win, (w, h), cin, cout, m, chunk))
    H, relu = similar(A), FA_.relu
    fwd, filt, data = gemm_floors(T, m, P, Q, cout)
    pairs = (seconds(() -> FA_.conv_forward!(A, H, relu, X, K, b, cols, win, chunk), fwd),
             seconds(() -> FA_.conv_filter_grad!(dK, db, X, dA, cols, win, chunk), filt),
             seconds(() -> FA_.conv_data_grad!(dX, dA, K, cols, win, chunk), data))
    return first.(pairs), last.(pairs)
end

ms(t) = @sprintf("%7.3f", 1e3 * t)
ratio(a, b) = @sprintf("%5.2f", a / b)

function report_conv(T, layers, m)
    println("\nconvolution (ReLU fused in the forward pass), $T, batch $m: ms per batch (ratio to the GEMM floor)")
    println(rpad("layer", 34), rpad("chunk", 6), "forward         filter grad     data grad       | GEMM floor fwd/filt/data")
    for chunk in CHUNKS
        total = zeros(2)
        for (name, insize, cin, cout, k, stride, pad) in layers
            kernels, floor = conv_times(T, insize, cin, cout, k, stride, pad, m, chunk)
            total .+= (sum(kernels), sum(floor))
            println(rpad(name, 34), rpad(chunk == 0 ? "auto" : chunk, 6),
                    join([ms(kernels[i]) * " (" * ratio(kernels[i], floor[i]) * ")" for i in 1:3], " "),
                    " | ", join(ms.(floor), " "))
        end
        println(rpad("all three passes of these layers", 40), ms(total[1]), " (", ratio(total[1], total[2]), ")")
    end
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

println("OPENBLAS_CORETYPE=", get(ENV, "OPENBLAS_CORETYPE", "(unset)"), ", Julia ", VERSION, ", 1 BLAS thread, BLAS: ",
        something(argument("--blas"), "Julia's own"))
const LENET5 = [("LeNet-5 conv 1->6 k5 on 32x32", (32, 32), 1, 6, (5, 5), (1, 1), (0, 0)),
               ("LeNet-5 conv 6->16 k5 on 14x14", (14, 14), 6, 16, (5, 5), (1, 1), (0, 0)),
               ("LeNet-5 conv 16->120 k5 on 5x5", (5, 5), 16, 120, (5, 5), (1, 1), (0, 0))]
const CIFAR = [("CIFAR conv 3->32 k3 on 32x32", (32, 32), 3, 32, (3, 3), (1, 1), (0, 0)),
               ("CIFAR conv 32->64 k3 on 15x15", (15, 15), 32, 64, (3, 3), (1, 1), (0, 0)),
               ("CIFAR conv 64->128 k3 on 6x6", (6, 6), 64, 128, (3, 3), (1, 1), (0, 0))]
const RESNET20 = [("ResNet-20 conv 1->16 k3 p1 on 32x32", (32, 32), 1, 16, (3, 3), (1, 1), (1, 1)),
                 ("ResNet-20 conv 16->16 k3 p1 on 32x32", (32, 32), 16, 16, (3, 3), (1, 1), (1, 1)),
                 ("ResNet-20 conv 16->32 k3 s2 p1 on 32x32", (32, 32), 16, 32, (3, 3), (2, 2), (1, 1)),
                 ("ResNet-20 conv 32->32 k3 p1 on 16x16", (16, 16), 32, 32, (3, 3), (1, 1), (1, 1)),
                 ("ResNet-20 conv 32->64 k3 s2 p1 on 16x16", (16, 16), 32, 64, (3, 3), (2, 2), (1, 1)),
                 ("ResNet-20 conv 64->64 k3 p1 on 8x8", (8, 8), 64, 64, (3, 3), (1, 1), (1, 1))]
const POOLS = [("max/mean pool 2 on 28x28x6", (28, 28), 6, (2, 2), (2, 2)),
               ("max/mean pool 2 on 10x10x16", (10, 10), 16, (2, 2), (2, 2)),
               ("max/mean pool 2 on 30x30x32", (30, 30), 32, (2, 2), (2, 2)),
               ("max/mean pool 2 on 13x13x64", (13, 13), 64, (2, 2), (2, 2))]
const BATCH = parse(Int, something(argument("--batch"), "64"))
for T in (Float32, ("--float64" in ARGS ? (Float64,) : ())...)
    if "--resnet" in ARGS
        report_conv(T, RESNET20, BATCH)
        continue
    end
    "--pool-only" in ARGS || report_conv(T, LENET5, BATCH)
    "--pool-only" in ARGS || report_conv(T, CIFAR, BATCH)
    "--conv-only" in ARGS || report_pool(T, POOLS, BATCH)
end
