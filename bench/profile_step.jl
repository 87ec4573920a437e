# A sampling profile of training steps (784-256-256-10 tanh, float32), grouped into BLAS and the rest:
#
#     julia --startup-file=no bench/profile_step.jl [rule] [batch]
#
# Shares of samples are ratios within one run, so they hold on a busy machine where times do not.
push!(LOAD_PATH, joinpath(@__DIR__, "..", "julia"))
using FeedbackAlignment, Profile
const FA_ = FeedbackAlignment

rule = Dict("bp" => BP(), "fa" => FA(), "dfa" => DFA())[get(ARGS, 1, "fa")]
m = parse(Int, get(ARGS, 2, "32"))
net = Network([784, 256, 256, 10]; rule=rule, T=Float32)
X = rand(Float32, 784, 8192)
y = FA_.ZeroBasedLabels(rand(0:9, 8192))
opt = SGD(0.001)
train_epoch!(net, X, y, opt; batchsize=m)
Profile.init(n=10^7, delay=0.0005)
@profile for _ in 1:3
    train_epoch!(net, X, y, opt; batchsize=m)
end

# Attribute each sample to the innermost frame that is either in BLAS or a named package function.
data = Profile.fetch()
lidict = Profile.getdict(data)
counts = Dict{String,Int}()
total = 0
function samples(data)
    out = Vector{Vector{UInt64}}()
    cur = UInt64[]
    for ip in data
        if ip == 0
            isempty(cur) || push!(out, cur)
            cur = UInt64[]
        else
            push!(cur, ip)
        end
    end
    return out
end
const PACKAGE_FUNCTIONS = ("bias_activate!", "times_deriv!", "loss_and_error!", "gather!", "gather_targets!",
                           "descend!", "momentum_descend!", "sum!", "update!", "shuffle!")
for s in samples(data)
    label = "other"
    for ip in s                      # innermost first
        frames = lidict[ip]
        f = frames[1]
        name = string(f.func)
        file = string(f.file)
        if occursin("openblas", lowercase(file)) || occursin("gemm", lowercase(name)) && f.from_c
            label = "BLAS (C)"
            break
        elseif any(fr -> string(fr.func) in PACKAGE_FUNCTIONS, frames)
            label = string(first(fr for fr in frames if string(fr.func) in PACKAGE_FUNCTIONS).func)
            break
        end
    end
    counts[label] = get(counts, label, 0) + 1
    global total += 1
end
println("profile of train_epoch! ($(typeof(rule).name.name), batch $m, Float32), $total samples:")
for (k, v) in sort(collect(counts), by=last, rev=true)
    println(rpad(k, 20), lpad(round(100 * v / total, digits=1), 6), " %")
end
