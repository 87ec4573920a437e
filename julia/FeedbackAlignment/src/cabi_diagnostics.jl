# C ABI entry points of the alignment diagnostics and the teacher-student experiments (included in
# module CABI). Same conventions as cabi.jl: status returns, arrays wrapped in place.

using ..FeedbackAlignment: AlignmentProbe, measure_alignment!, ALIGNMENT_FIELDS, ALIGNMENT_ROLES,
    teacher_task!, task_lr

# The tracker attached to a network by fa_track_alignment, which fa_train_epoch passes to the epoch
# loop. Weak keys: a tracker goes when its network does.
const TRACKERS = WeakKeyDict{Any,Any}()
tracker_of(net) = get(TRACKERS, net, nothing)

const FIELDS_TEXT = Ref{String}("")

# "fields=role,delta_angle,...\nroles=feedback,output,...": the layout of every alignment record.
function fa_alignment_fields()::Ptr{UInt8}
    FIELDS_TEXT[] = string("fields=", join(ALIGNMENT_FIELDS, ","), "\nroles=", join(ALIGNMENT_ROLES, ","))
    return pointer(FIELDS_TEXT[])
end

# out: length(ALIGNMENT_FIELDS) x layers (Python's (layers, fields), C order).
function fa_alignment(h::Int64, X::Ptr{Cvoid}, n::Int64, d::Int64, Y::Ptr{Cvoid}, out::Ptr{Float64})::Cint
    guarded() do
        net = network(h)
        result = unsafe_wrap(Array, out, (length(ALIGNMENT_FIELDS), length(net.layers)))
        measure_alignment!(result, AlignmentProbe(net), net, inputs(net, X, n, d), targets(net, Y, n))
    end
end

# every >= 1: record every `every` batches from the next fa_train_epoch on (old records are dropped);
# every == 0: stop tracking.
function fa_track_alignment(h::Int64, every::Int64)::Cint
    guarded() do
        net = network(h)
        every >= 0 || throw(ArgumentError("every must be >= 0, got $every"))
        every == 0 ? delete!(TRACKERS, net) : (TRACKERS[net] = AlignmentTracker(net, every))
    end
end

# Moves up to `capacity` of the oldest records into out (capacity x width, C order; width =
# 3 + length(ALIGNMENT_FIELDS) * layers) and stores how many in count.
function fa_alignment_records(h::Int64, out::Ptr{Float64}, capacity::Int64, count::Ptr{Int64})::Cint
    guarded() do
        net = network(h)
        tracker = tracker_of(net)
        tracker === nothing && throw(ArgumentError("alignment is not being tracked for network $h"))
        k = min(Int(capacity), length(tracker.records))
        width = 3 + length(ALIGNMENT_FIELDS) * length(net.layers)
        dest = unsafe_wrap(Array, out, (width, k))
        for j in 1:k
            dest[:, j] = tracker.records[j]
        end
        deleteat!(tracker.records, 1:k)
        unsafe_store!(count, k)
    end
end

# Lillicrap et al.'s teacher-student task (experiments.jl) for one rule, with a student of hidden
# widths hidden[1:nhidden]. lr: in, NaN for the task's default; out, the rate used. errors: records;
# alignment: records x (nhidden + 1) layers x fields (C order).
function fa_teacher_task(task::Cstring, rule::Cstring, dtype::Cint, nhidden::Int64, hidden::Ptr{Int64},
                         steps::Int64, batchsize::Int64, lr::Ptr{Float64}, weight_range::Float64,
                         feedback_range::Float64, seed::UInt64, record_every::Int64, test_size::Int64,
                         errors::Ptr{Float64}, records::Ptr{Float64})::Cint
    guarded() do
        T = dtype == 0 ? Float32 : dtype == 1 ? Float64 : throw(ArgumentError("unknown dtype code $dtype"))
        name, rulename = unsafe_string(task), unsafe_string(rule)
        steps >= 0 && record_every >= 1 || throw(ArgumentError("need steps >= 0 and record_every >= 1"))
        widths = copy(unsafe_wrap(Array, hidden, Int(nhidden)))
        rate = task_lr(name, rulename, unsafe_load(lr))
        n = steps ÷ record_every + 1
        teacher_task!(unsafe_wrap(Array, errors, n),
                      unsafe_wrap(Array, records, (length(ALIGNMENT_FIELDS), length(widths) + 1, n)),
                      name, rulename; steps=steps, batchsize=batchsize, lr=rate, weight_range=weight_range,
                      feedback_range=feedback_range, seed=seed, record_every=record_every, test_size=test_size,
                      hidden=widths, T=T)
        unsafe_store!(lr, rate)
    end
end

const DIAGNOSTICS_SIGNATURES = [
    (:fa_alignment_fields, Ptr{UInt8}, ()),
    (:fa_alignment, Cint, (Int64, Ptr{Cvoid}, Int64, Int64, Ptr{Cvoid}, Ptr{Float64})),
    (:fa_track_alignment, Cint, (Int64, Int64)),
    (:fa_alignment_records, Cint, (Int64, Ptr{Float64}, Int64, Ptr{Int64})),
    (:fa_teacher_task, Cint, (Cstring, Cstring, Cint, Int64, Ptr{Int64}, Int64, Int64, Ptr{Float64}, Float64,
                              Float64, UInt64, Int64, Int64, Ptr{Float64}, Ptr{Float64})),
]
