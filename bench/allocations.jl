# Bytes Julia allocates per training step in the steady state, as bench/run.py reports them.
#
#     julia --startup-file=no [--compiled-modules=no] bench/allocations.jl
#
# In Julia 1.5, training code inferred while a package precompiles, and loaded from that cache,
# called some helpers through boxed arguments (1-1.5 KB a step), which is why the package runs no
# training workload at precompile time. Both modes are shown so a regression of that kind shows:
# with --compiled-modules=no everything is compiled in this process.
# Measured with Julia's allocation counter (@allocated) over many steps after a warm-up, for
# `step!` (one batch) and `train_epoch!` (per batch of an epoch, so per-epoch costs show divided).
push!(LOAD_PATH, joinpath(@__DIR__, "..", "julia"))
using FeedbackAlignment
const FA_ = FeedbackAlignment

function per_step(net, X, y, Xb, yb, opt, batchsize)
    step!(net, Xb, yb, opt); train_epoch!(net, X, y, opt; batchsize=batchsize)    # warm up
    n = 20
    step_bytes = @allocated for _ in 1:n
        step!(net, Xb, yb, opt)
    end
    epoch_bytes = @allocated for _ in 1:n
        train_epoch!(net, X, y, opt; batchsize=batchsize)
    end
    return step_bytes / n, epoch_bytes / n / cld(size(X, 2), batchsize)
end

cached = Base.JLOptions().use_compiled_modules != 0
println("bytes allocated per step (784-256-256-10 tanh, batch 32, 1024 samples per epoch), package ",
        cached ? "loaded from its precompile cache:" : "compiled in this process (--compiled-modules=no):")
println(rpad("dtype", 8), rpad("rule", 5), rpad("optimizer", 16), lpad("step!", 8), lpad("train_epoch! per batch", 24))
for T in (Float32, Float64), rule in (BP(), FA(), DFA()), opt in (SGD(0.01), SGD(0.01, 0.9))
    net = Network([784, 256, 256, 10]; rule=rule, T=T)
    X = rand(T, 784, 1024)
    y = FA_.ZeroBasedLabels(rand(0:9, 1024))
    s, e = per_step(net, X, y, X[:, 1:32], FA_.ZeroBasedLabels(y.data[1:32]), opt, 32)
    println(rpad(T, 8), rpad(typeof(rule).name.name, 5), rpad(string(opt), 16), lpad(round(Int, s), 8), lpad(round(e, digits=1), 24))
end
