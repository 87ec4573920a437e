# Timing for the Julia benchmark scripts: two functions timed in alternating trials, so that both
# see the same load on a shared machine; the shortest trial of each counts (nothing interrupted it).

"Seconds per call of `f` and of `g`: the best of `trials` trials of about `trial_seconds` each, taking turns."
function interleaved_seconds(f, g; trials::Int=60, trial_seconds::Float64=0.002)
    f(); g()
    reps(h) = max(1, round(Int, trial_seconds / max(@elapsed(h()), 1e-7)))
    nf, ng = reps(f), reps(g)
    tf, tg = Inf, Inf
    for _ in 1:trials
        tf = min(tf, @elapsed(for _ in 1:nf; f(); end) / nf)
        tg = min(tg, @elapsed(for _ in 1:ng; g(); end) / ng)
    end
    return tf, tg
end
