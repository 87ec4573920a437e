#= Lillicrap, Cownden, Tweed & Akerman 2016's teacher-student tasks (Nat. Commun. 7:13276, Fig. 2):
a 30-20-10 network learns the function of a fixed random "teacher" from fresh Gaussian inputs,
x ~ N(0, I), one batch per step, with the loss ½‖e‖² (MSE).

- "linear": the teacher is a linear map T (10 x 30, entries uniform in [-1, 1]); the student is
  linear, y = W_2 W_1 x, without biases (they stay 0).
- "nonlinear": the teacher is a 30-20-10-10 network with tanh hidden units and a linear output,
  y* = W_2 tanh(W_1 tanh(W_0 x + b_0) + b_1) + b_2, weights and biases uniform in [-1, 1]; the
  student is a 30-20-10 tanh network.

The student's forward weights start uniform in ±`weight_range` (the paper: "small"; ±0.01 here),
its biases at 0, its feedback matrices uniform in ±`feedback_range` (the paper: [-0.5, 0.5]). Every
draw comes from SplitMix64 streams of `seed`: the student's weights and feedback from the network's
own streams 1 and 2, the teacher, the training inputs and the test inputs from three more, so all
rules see the same teacher, the same data and the same starting weights.

`rule` is any name in `RULES`; "shallow" trains only the output layer (from the true error), so
the hidden layers keep their initial random weights.

The error is normalised: the test set's mean squared error divided by the variance of the teacher's
outputs on it (1 − R²; a network that outputs the teacher's mean scores 1).
=#

const TEACHER_STREAM, TRAIN_STREAM, TEST_STREAM = 0x7465616368, 0x747261696e, 0x74657374   # "teach", "train", "test"

# Learning rates: the paper chose η per algorithm by hand for learning speed and does not give
# them; these were chosen here the same way (bp and fa share one; shallow, whose hidden activities
# are ~100x smaller, needs a larger one).
const TEACHER_TASKS = Dict(
    "linear" => (student = [30, 20, 10], teacher = [30, 10], activation = identity, biases = false,
                 steps = 5000, record_every = 25, lr = 0.001, shallow_lr = 10.0),
    "nonlinear" => (student = [30, 20, 10], teacher = [30, 20, 10, 10], activation = tanh, biases = true,
                    steps = 20_000, record_every = 100, lr = 0.003, shallow_lr = 0.1),
)

"Fill `M` with draws uniform in [-r, r) from `rng`, in memory order."
function uniform!(M::AbstractArray{T}, rng::SplitMix64, r::Real) where {T}
    for i in eachindex(M)
        M[i] = T((2 * uniform(rng) - 1) * r)
    end
    return M
end

"Fill `M` with standard normal draws from `rng` (Box-Muller: two uniforms give two normals), in memory order."
function gaussian!(M::AbstractArray{T}, rng::SplitMix64) where {T}
    n = length(M)
    for i in 1:2:n
        r = sqrt(-2 * log(1 - uniform(rng)))      # 1 - u is in (0, 1]
        t = 2π * uniform(rng)
        M[i] = T(r * cos(t))
        i < n && (M[i+1] = T(r * sin(t)))
    end
    return M
end

function teacher_spec(task::AbstractString)
    haskey(TEACHER_TASKS, task) ||
        throw(ArgumentError("unknown task \"$task\"; expected one of $(join(sort!(collect(keys(TEACHER_TASKS))), ", "))"))
    return TEACHER_TASKS[task]
end

"The learning rate `teacher_task` uses: `lr`, or (NaN) the task's default for the rule."
task_lr(task, rule, lr) = isnan(lr) ? (rule == "shallow" ? teacher_spec(task).shallow_lr : teacher_spec(task).lr) : Float64(lr)

function task_rule(name::AbstractString)
    haskey(RULES, name) && return RULES[name]()
    throw(ArgumentError("unknown rule \"$name\"; expected one of $(join(sort!(collect(keys(RULES))), ", "))"))
end

"""
    teacher_task(task; rule="fa", steps, batchsize=1, lr, weight_range=0.01, feedback_range=0.5,
                 seed=0, record_every, test_size=1000, hidden=[20], T=Float64)
        -> (step = ..., error = ..., alignment = ..., lr = ...)

Train a student on `task` ("linear" or "nonlinear", see the top of experiments.jl) with `rule` for
`steps` SGD steps of `batchsize` fresh samples each. Every `record_every` steps (from step 0, before
any update) it records, after that many updates, the normalised test error and the alignment
diagnostics (`ALIGNMENT_FIELDS` x layers, see diagnostics.jl) measured on the test inputs: with one
sample per step, one training sample's angle would mostly show that sample. `alignment[:, l, k]`
is layer l at record k. `steps`, `record_every` and `lr` default to the task's entry in
`TEACHER_TASKS` (linear: 5000, 25, 0.001; nonlinear: 20000, 100, 0.003; shallow: its own `lr`).
`hidden` gives the student's hidden widths (the paper: [20]; its Fig. 2d also trains [20, 10]).
"""
function teacher_task(task::AbstractString; rule::AbstractString="fa", steps::Integer=teacher_spec(task).steps,
                      record_every::Integer=teacher_spec(task).record_every,
                      hidden::AbstractVector{<:Integer}=teacher_spec(task).student[2:end-1], lr::Real=NaN, kwargs...)
    steps >= 0 && record_every >= 1 || throw(ArgumentError("need steps >= 0 and record_every >= 1"))
    n = steps ÷ record_every + 1
    errors = Vector{Float64}(undef, n)
    records = Array{Float64}(undef, length(ALIGNMENT_FIELDS), length(hidden) + 1, n)
    lr = task_lr(task, rule, lr)
    teacher_task!(errors, records, task, rule; steps=steps, record_every=record_every, hidden=hidden, lr=lr, kwargs...)
    return (step = collect(0:record_every:steps), error = errors, alignment = records, lr = lr)
end

function teacher_task!(errors::AbstractVector{Float64}, records::AbstractArray{Float64,3}, task::AbstractString,
                       rule::AbstractString; steps::Integer=teacher_spec(task).steps, batchsize::Integer=1,
                       lr::Real=NaN, weight_range::Real=0.01, feedback_range::Real=0.5, seed::Integer=0,
                       record_every::Integer=teacher_spec(task).record_every, test_size::Integer=1000,
                       hidden::AbstractVector{<:Integer}=teacher_spec(task).student[2:end-1],
                       T::Type{<:AbstractFloat}=Float64)
    spec = teacher_spec(task)
    learning_rule = task_rule(rule)
    lr = task_lr(task, rule, lr)
    all(>(0), hidden) || throw(ArgumentError("hidden widths must be positive, got $hidden"))
    sizes = [spec.student[1]; hidden; spec.student[end]]
    steps >= 0 || throw(ArgumentError("steps must be >= 0, got $steps"))
    batchsize >= 1 && record_every >= 1 && test_size >= 2 ||
        throw(ArgumentError("need batchsize >= 1, record_every >= 1 and test_size >= 2"))
    weight_range >= 0 && feedback_range >= 0 || throw(ArgumentError("weight and feedback ranges must be >= 0"))
    L = length(sizes) - 1
    n = steps ÷ record_every + 1
    length(errors) == n && size(records) == (length(ALIGNMENT_FIELDS), L, n) ||
        throw(DimensionMismatch("need $n errors and $(length(ALIGNMENT_FIELDS)) x $L x $n alignment records"))

    student = Network(sizes; activation=spec.activation, rule=learning_rule, loss=MSE(), seed=seed, T=T)
    wrng, brng = stream(seed, 1), stream(seed, 2)
    for d in student.layers
        uniform!(d.W, wrng, weight_range)
        fill!(d.b, 0)
        d.B === nothing || uniform!(d.B, brng, feedback_range)
    end
    teacher = Network(spec.teacher; activation=spec.activation, rule=BP(), loss=MSE(), seed=seed, T=T)
    trng = stream(seed, TEACHER_STREAM)
    for d in teacher.layers
        uniform!(d.W, trng, 1)
        spec.biases ? uniform!(d.b, trng, 1) : fill!(d.b, 0)
    end

    Xtest = gaussian!(Matrix{T}(undef, sizes[1], test_size), stream(seed, TEST_STREAM))
    Ytest = outputs(teacher, Xtest)
    spread = Ytest .- sum(Ytest; dims=2) ./ test_size
    variance = sum(abs2, spread) / 2test_size          # the loss of always answering the mean
    X = Matrix{T}(undef, sizes[1], batchsize)
    Y = Matrix{T}(undef, sizes[end], batchsize)
    data = stream(seed, TRAIN_STREAM)
    probe, opt = AlignmentProbe(student), SGD(lr)
    workspace!(student, max(batchsize, test_size))
    no_biases!(net) = spec.biases || foreach(d -> fill!(d.db, 0), net.layers)   # a task without biases keeps them at 0
    k = 0
    for s in 0:steps
        throw_if_interrupted()   # Ctrl-C from the host: the results so far are discarded, nothing else changed
        if s % record_every == 0
            k += 1
            total, _ = loss_and_grads!(student, Xtest, Ytest)
            errors[k] = total / test_size / variance
            no_biases!(student)
            alignment_matrix!(view(records, :, :, k), probe, student)
        end
        s == steps && break
        outputs!(Y, teacher, gaussian!(X, data))
        total, _ = loss_and_grads!(student, X, Y)
        isfinite(total) || throw(DivergenceError(total / batchsize, 1, s + 1))
        no_biases!(student)
        update!(student, opt)
    end
    return errors, records
end
