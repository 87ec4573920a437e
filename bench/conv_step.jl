# A conv network's training step (forward, backward, SGD update) against its GEMM floor, in Julia
# alone: the floor is the products bench/conv.py counts (each conv pass as one whole-batch im2col
# GEMM, the dense products, DFA's projections), timed in turns with the step so both see the same
# load. Also a sampling profile of the step, grouped by kernel. Not a test.
#
#     OPENBLAS_CORETYPE=SkylakeX julia --startup-file=no bench/conv_step.jl [lenet5|cifar] [bp|fa|dfa] [batch] [--blas LIB]
#
# `--blas LIB`: NumPy's OpenBLAS (numpy.libs/libscipy_openblas64_*.so), as pyjlfa uses under Python.
push!(LOAD_PATH, joinpath(@__DIR__, "..", "julia"))
using FeedbackAlignment, LinearAlgebra, Printf, Profile, Random, Libdl
const FA_ = FeedbackAlignment
using FeedbackAlignment: gemm_ptr!, use_external_blas!, relu

BLAS.set_num_threads(1)
argument(name) = (i = findfirst(==(name), ARGS); i === nothing ? nothing : ARGS[i+1])
if argument("--blas") !== nothing
    ENV["OPENBLAS_NUM_THREADS"] = "1"
    lib = Libdl.dlopen(argument("--blas"))
    use_external_blas!(Libdl.dlsym(lib, :scipy_sgemm_64_), Libdl.dlsym(lib, :scipy_dgemm_64_))
end
positional = filter(a -> !startswith(a, "--") && a != argument("--blas"), ARGS)
arch = get(positional, 1, "lenet5")
rule = Dict("bp" => BP(), "fa" => FA(), "dfa" => DFA())[get(positional, 2, "bp")]
m = parse(Int, get(positional, 3, "64"))

chain, input = arch == "lenet5" ?
    (Chain(Conv((5, 5), 1 => 6, relu), MaxPool((2, 2)), Conv((5, 5), 6 => 16, relu), MaxPool((2, 2)),
           Conv((5, 5), 16 => 120, relu), Flatten(), Dense(120 => 84, relu), Dense(84 => 10)), (32, 32, 1)) :
    (Chain(Conv((3, 3), 3 => 32, relu), MaxPool((2, 2)), Conv((3, 3), 32 => 64, relu), MaxPool((2, 2)),
           Conv((3, 3), 64 => 128, relu), MeanPool((4, 4)), Flatten(), Dense(128 => 256, relu), Dense(256 => 10)), (32, 32, 3))
net = Network(chain; input=input, rule=rule, T=Float32)
X = rand(Float32, input..., m)
y = FA_.ZeroBasedLabels(rand(0:9, m))
opt = SGD(0.01)

# (rows, inner, cols) of each product, as bench/conv.py's `gemms`.
function products(net, m, rule)
    out = Tuple{Int,Int,Int}[]
    params = [st for st in net.layers if st.W !== nothing]
    for (i, st) in enumerate(params)
        if st.spec isa Conv
            rows, inner, cout = m * prod(st.outsize[1:2]), prod(size(st.W)[1:3]), size(st.W, 4)
        else
            rows, inner, cout = m, st.spec.in, st.spec.out
        end
        push!(out, (rows, inner, cout), (inner, rows, cout))
        if rule isa DFA
            i < length(params) && push!(out, (m, 10, rows ÷ m * cout))
        elseif i > 1
            push!(out, (rows, cout, inner))
        end
    end
    return out
end
bufs = [(rand(Float32, r, k), rand(Float32, k, c), zeros(Float32, r, c)) for (r, k, c) in products(net, m, rule)]
floor() = for (A, B, C) in bufs
    r, k = size(A); c = size(B, 2)
    GC.@preserve A B C gemm_ptr!('N', 'N', r, c, k, 1f0, pointer(A), r, pointer(B), k, 0f0, pointer(C), r)
end
stepf() = step!(net, X, y, opt)

include(joinpath(@__DIR__, "timing.jl"))
seconds(f, g) = interleaved_seconds(f, g; trials=30, trial_seconds=0.02)
stepf(); floor()
step_allocs(net, X, y, opt) = @allocated step!(net, X, y, opt)    # behind a function: globals box
alloc = step_allocs(net, X, y, opt)
ts, tf = seconds(stepf, floor)
@printf("%s %s batch %d: step %.3f ms (%.0f samples/s), GEMM floor %.3f ms (%.0f samples/s), step/floor %.2f, %d bytes allocated per step\n",
        arch, typeof(rule).name.name, m, 1e3ts, m / ts, 1e3tf, m / tf, ts / tf, alloc)

"--profile" in ARGS || exit()
const KERNELS = ("im2col!", "col2im!", "stacked_im2col!", "stacked_col2im!", "unstack_bias_activate!", "stack_chunk!", "channel_sums!",
                 "maxpool_forward!", "maxpool_backward!", "tiled_maxpool_backward!", "meanpool_forward!",
                 "meanpool_backward!", "times_deriv!", "bias_activate!", "rowsums!", "loss_and_error!",
                 "update!", "descend!", "momentum_descend!", "copyto!", "fill!", "unsafe_copyto!", "project!")
Profile.init(n=10^7, delay=0.0002)
@profile for _ in 1:max(1, round(Int, 2 / ts)); stepf(); end
data = Profile.fetch()
lidict = Profile.getdict(data)
counts, total = Dict{String,Int}(), 0
cur = UInt64[]
for ip in data
    global cur, total
    if ip != 0
        push!(cur, ip); continue
    end
    isempty(cur) && continue
    label = "other"
    for p in cur                         # innermost first
        frames = lidict[p]
        f = frames[1]
        if occursin("openblas", lowercase(string(f.file))) || occursin("gemm", lowercase(string(f.func))) && f.from_c
            label = "BLAS"; break
        end
        i = findfirst(fr -> string(fr.func) in KERNELS, frames)
        if i !== nothing
            label = string(frames[i].func); break
        end
    end
    counts[label] = get(counts, label, 0) + 1
    total += 1
    cur = UInt64[]
end
println("profile ($total samples):")
for (k, v) in sort(collect(counts), by=last, rev=true)
    println("  ", rpad(k, 26), lpad(round(100 * v / total, digits=1), 6), " %")
end
