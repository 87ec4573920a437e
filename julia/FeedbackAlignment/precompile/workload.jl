# The work a prebuilt system image compiles in (precompile/build_image.jl runs it once while the
# image is generated). Everything it calls is then native code in the image, so a new process
# trains at once instead of compiling for seconds first.
#
# Two halves: what a Julia user calls (the public API), and what Python calls (the C ABI's entry
# points, looked up by name and entered through their pointers with the same argument types
# pyjlfa/_runtime.py declares). Sizes do not matter to the compiler, only types (a chain's layer types
# and activations), so the networks are tiny. To compile more in (other chains, activations), add cases here: this is the one
# file that says what the image holds. It must leave no state behind (no live handles, Julia's
# own BLAS), because the image keeps the package's globals as they are at the end.

module ImageWorkload

using FeedbackAlignment
using FeedbackAlignment: CABI

const RULE_NAMES = ("bp", "fa", "dfa", "usf", "frsf", "brsf", "kp", "wm", "drtp", "sdfa", "shallow")
const JULIA_RULES = (BP(), FA(), DFA(), KolenPollack(), uSF(0.05))
# The optimiser specs pyjlfa sends (pyjlfa.SGD(...)._spec() etc.), which Julia parses.
const OPTIMISER_SPECS = (
    "sgd(lr=0.05, momentum=0.0, nesterov=false, weight_decay=0.0, decoupled_weight_decay=0.0)",
    "sgd(lr=0.05, momentum=0.9, nesterov=false, weight_decay=0.0, decoupled_weight_decay=0.0)",
    "adam(lr=0.001, beta1=0.9, beta2=0.999, eps=1e-08, weight_decay=0.0, decoupled_weight_decay=0.0)")
const OPTIMISERS = (SGD(0.05), Adam(1e-3), SGD(0.05; momentum=0.9))   # momentum last: save keeps its state

# Deterministic inputs: Random's global generator is not set up while an image is generated.
samples(::Type{T}, rows, cols) where {T} = T[sin(i + 3j) for i in 1:rows, j in 1:cols]

entry(name) = (p = ccall(CABI.ENTRY_POINTS["fa_lookup"], Ptr{Cvoid}, (Cstring,), name);
               p == C_NULL ? error("the C ABI has no entry point $name") : p)

function check(status)
    status == 0 && return
    error("C ABI call failed: ", unsafe_string(ccall(entry("fa_error_message"), Ptr{UInt8}, ())))
end

# The layer calls pyjlfa sends: the dense shorthand, LeNet-5 (pyjlfa.layers writes every stride
# and pad, and each activation as a layer of its own) and a small residual network.
dense_chain(activation) = ["Dense(6 => 5, $activation)", "Dense(5 => 4, $activation)", "Dense(4 => 3)"]
const LENET = ["Conv((5, 5), 1 => 6; stride=(1, 1), pad=(0, 0))", "relu", "MaxPool((2, 2); stride=(2, 2))",
               "Conv((5, 5), 6 => 16; stride=(1, 1), pad=(0, 0))", "relu", "MaxPool((2, 2); stride=(2, 2))",
               "Conv((5, 5), 16 => 120; stride=(1, 1), pad=(0, 0))", "relu", "Flatten()", "Dense(120 => 84)", "relu",
               "Dense(84 => 10)"]
const RESNET = ["Conv((3, 3), 1 => 4; stride=(1, 1), pad=(1, 1), bias=false)", "BatchNorm(4; momentum=0.1, eps=1.0e-5)", "relu",
                "SkipConnection(Chain(Conv((3, 3), 4 => 4; stride=(1, 1), pad=(1, 1), bias=false), BatchNorm(4; momentum=0.1, eps=1.0e-5), relu, " *
                "Conv((3, 3), 4 => 4; stride=(1, 1), pad=(1, 1), bias=false), BatchNorm(4; momentum=0.1, eps=1.0e-5)), +)", "relu",
                "Parallel(+, Chain(Conv((3, 3), 4 => 8; stride=(2, 2), pad=(1, 1), bias=false), BatchNorm(8; momentum=0.1, eps=1.0e-5)), PadShortcut())",
                "relu", "GlobalMeanPool()", "Flatten()", "Dense(8 => 10)"]

# One network driven through the C ABI as pyjlfa.Network drives it: create, describe and view its
# layers, step with each optimiser, train an epoch, evaluate, forward (outputs, probabilities,
# labels), gradients, state and optimiser-state access, free.
function through_cabi(::Type{T}, rule::String, chain::Vector{String}, input::Vector{Int64}, loss::String) where {T}
    n, d, k = 7, prod(input), parse(Int, match(r"=> (\d+)", chain[end])[1])
    dtype = Cint(T === Float32 ? 0 : 1)
    spec = join(["loss=$loss", "rule=$rule", "seed=0", "feedback_seed=0", "init=glorot_uniform",
                 "feedback=glorot_uniform", "dropout=0.0"], "\n")
    X = samples(T, d, n)                                # Python's (n, d...) C-ordered batch
    Y = loss == "cross_entropy" ? Int64[i % k for i in 1:n] : samples(T, k, n)
    handle = Ref{Int64}(0)
    check(ccall(entry("fa_new"), Cint, (Ptr{Int64}, Cint, Int64, Ptr{Int64}, Cstring, Cstring, Ptr{Ptr{Cvoid}}, Ptr{Int64}),
                handle, dtype, length(input), input, join(chain, "\n"), spec, C_NULL, C_NULL))
    h = handle[]
    nodes = split(unsafe_string(ccall(entry("fa_nodes"), Ptr{UInt8}, (Int64,), h)), '\n')
    arrays = [[String(first(split(a, ':'))) for a in split(last(split(line, '\t')), ';') if !isempty(a)] for line in nodes]
    ptr, dims, lossval = Ref{Ptr{Cvoid}}(C_NULL), zeros(Int64, 5), Ref{Float64}(0.0)
    for (node, names) in enumerate(arrays), name in names
        check(ccall(entry("fa_array"), Cint, (Int64, Int64, Cstring, Ptr{Ptr{Cvoid}}, Ptr{Int64}), h, node, name, ptr, dims))
    end
    for opt in OPTIMISER_SPECS
        check(ccall(entry("fa_step"), Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Cstring, Ptr{Float64}),
                    h, X, n, d, Y, opt, lossval))
        out = zeros(3)
        check(ccall(entry("fa_train_epoch"), Cint,
                    (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Int64, Cint, Cstring, Ptr{Float64}),
                    h, X, n, d, Y, 3, 1, opt, out))
        # model files carry the optimiser state: pyjlfa reads it (create=0) and writes it (create=1)
        kind = startswith(opt, "sgd") ? "sgd" : "adam"
        for create in 0:1, (node, names) in enumerate(arrays), name in names
            check(ccall(entry("fa_optstate"), Cint,
                        (Int64, Cstring, Cint, Int64, Int64, Cstring, Ptr{Ptr{Cvoid}}, Ptr{Int64}),
                        h, kind, create, 0, node, name, ptr, dims))
        end
    end
    check(ccall(entry("fa_evaluate"), Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Ptr{Float64}),
                h, X, n, d, Y, zeros(2)))
    outputs = zeros(T, k, n)
    for kind in (loss == "cross_entropy" ? (0, 1, 2) : (0,))
        buffer = kind == 2 ? zeros(Int64, n) : outputs
        check(ccall(entry("fa_forward"), Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Cint),
                    h, X, n, d, buffer, kind))
    end
    for training in (Cint(0), Cint(1))
        check(ccall(entry("fa_set_mode"), Cint, (Int64, Cint), h, training))
        check(ccall(entry("fa_gradients"), Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Ptr{Float64}),
                    h, X, n, d, Y, lossval))
    end
    for (node, names) in enumerate(arrays), name in names   # the gradients, as pyjlfa reads them
        check(ccall(entry("fa_array"), Cint, (Int64, Int64, Cstring, Ptr{Ptr{Cvoid}}, Ptr{Int64}), h, node, "d" * name, ptr, dims))
    end
    epochs, rng, steps = Ref{Int64}(0), Ref{UInt64}(0), Ref{Int64}(0)
    check(ccall(entry("fa_state_get"), Cint, (Int64, Ptr{Int64}, Ptr{UInt64}, Ptr{Int64}), h, epochs, rng, steps))
    check(ccall(entry("fa_state_set"), Cint, (Int64, Int64, UInt64, Int64), h, epochs[], rng[], steps[]))
    check(ccall(entry("fa_free"), Cint, (Int64,), h))
end

# The public Julia API on one network type: what a Julia script (examples/*.jl) runs.
function through_julia(::Type{T}, rule, activation, dir) where {T}
    X, y = samples(T, 6, 20), [1 + i % 3 for i in 1:20]
    net = Network([6, 5, 4, 3]; activation=activation, rule=rule, T=T, seed=1)
    for opt in OPTIMISERS
        step!(net, X[:, 1:8], y[1:8], opt)
        learn!(net, X, y; epochs=1, batchsize=8, optimizer=opt, validation=(X, y))
    end
    evaluate(net, X, y); predict(net, X); predict_proba(net, X); gradients(net, X, y)
    path = joinpath(dir, "model.safetensors")
    save(path, net; include_optimizer=true, optimizer=OPTIMISERS[3])
    load(path)
end

# Every rule with pyjlfa's default tanh and cross-entropy; relu and mse with the common rules.
# (A network type costs about a second of compilation at build time, hence not every combination.)
const COMMON_RULES = ("bp", "fa", "dfa")
# LeNet-5 (float32) with the rules of biotorch's table and Kolen-Pollack.
const LENET_RULES = ("bp", "fa", "dfa", "usf", "brsf", "frsf", "kp")

function run()
    # While an image is generated, modules' __init__ is only queued (it runs when the image
    # loads), so the entry-point table is filled here for the workload and emptied again below.
    fresh_table = isempty(CABI.ENTRY_POINTS)
    fresh_table && CABI.__init__()
    for T in (Float32, Float64)
        foreach(rule -> through_cabi(T, rule, dense_chain("tanh"), [6], "cross_entropy"), RULE_NAMES)
        foreach(rule -> through_cabi(T, rule, dense_chain("relu"), [6], "cross_entropy"), COMMON_RULES)
        foreach(rule -> through_cabi(T, rule, dense_chain("tanh"), [6], "mse"), COMMON_RULES)
    end
    foreach(rule -> through_cabi(Float32, rule, LENET, [32, 32, 1], "cross_entropy"), LENET_RULES)
    foreach(rule -> through_cabi(Float32, rule, RESNET, [8, 8, 1], "cross_entropy"), ("bp", "fa", "dfa", "kp"))
    # what pyjlfa asks at every start (the signature check: 1 s to compile on first use) and later
    for what in ("signatures", "runtime", "activation", "loss", "schema", keys(FeedbackAlignment.REGISTRIES)...)
        ccall(entry("fa_describe"), Ptr{UInt8}, (Cstring,), what)
    end
    mktempdir() do dir
        for T in (Float32, Float64), rule in JULIA_RULES
            through_julia(T, rule, tanh, dir)
        end
    end
    # Leave the package as a fresh load would: no live handles, Julia's own BLAS, no cached specs.
    FeedbackAlignment.use_external_blas!(C_NULL, C_NULL)
    empty!(CABI.PARSED_OPTIMISERS)
    CABI.fa_live_handles() == 0 || error("the workload left networks behind")
    fresh_table && empty!(CABI.ENTRY_POINTS)
    return nothing
end

end # module ImageWorkload
