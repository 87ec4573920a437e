# The model-file contract (docs/model-format.md): the shared corpus gets the same verdicts as in
# Python (tests/test_model_contract.py), and saving with the optimizer then loading resumes training
# bit for bit, for every optimizer, on a dense and a conv network.
using FeedbackAlignment, Test

@testset "model-file contract" begin
    corpus = joinpath(@__DIR__, "..", "..", "..", "tests", "model_files")
    @testset "shared corpus" begin
        files = isdir(corpus) ? filter(f -> endswith(f, ".safetensors"), readdir(corpus)) : String[]
        isempty(files) && @warn "no corpus at $corpus (the Julia package outside its repository): skipped"
        @test isempty(files) || count(f -> startswith(f, "valid_"), files) >= 5
        for f in files
            path = joinpath(corpus, f)
            if startswith(f, "valid_")
                @test load(path) isa Network
            else
                verdict = try
                    load(path)
                    "loaded"
                catch e
                    e isa ModelFileError ? "ModelFileError" : sprint(showerror, e)
                end
                verdict == "ModelFileError" || println("corpus file $f: ", verdict)
                @test verdict == "ModelFileError"
            end
        end
        @test !ispath("/tmp/pyjlfa_pwned")   # invalid_chain_code's command never ran
    end

    # Bitwise equality of every parameter and every optimiser state array.
    same(a, b) = isequal(a, b) && (a === nothing || reinterpret(UInt8, vec(a)) == reinterpret(UInt8, vec(b)))
    function identical(a::Network, b::Network)
        all(zip(a.layers, b.layers)) do (x, y)
            same(x.W, y.W) && same(x.b, y.b) && same(x.B, y.B) &&
                all(length(s) == length(t) && all(same.(s, t)) for (s, t) in zip(values(x.slots), values(y.slots))) &&
                length(x.sB) == length(y.sB) && all(same.(x.sB, y.sB))
        end && a.optsteps == b.optsteps && a.epochs == b.epochs && a.rng.state == b.rng.state
    end

    @testset "exact resume: $name, $kind" for (name, rule, opt) in (
            ("SGD", FA(), SGD(0.05)), ("SGD momentum", FA(), SGD(0.05, 0.9)),
            ("Nesterov", FA(), SGD(0.05; momentum=0.9, nesterov=true)), ("Adam", FA(), Adam(0.01)),
            ("AdamW", DFA(), AdamW(0.01)), ("Kolen-Pollack, momentum", KolenPollack(), SGD(0.05, 0.9))),
            kind in ("dense", "conv")
        make() = kind == "dense" ?
            Network([6, 5, 3]; rule=rule, seed=1, T=Float64) :
            Network(Chain(Conv((3, 3), 1 => 2, relu), MaxPool((2, 2)), Flatten(), Dense(8 => 3));
                    input=(6, 6, 1), rule=rule, seed=1, T=Float64)
        X = kind == "dense" ? [sin(3.0i + j) for i in 1:6, j in 1:20] : [cos(0.7i + 1.3j + 2.1c + 0.5n) for i in 1:6, j in 1:6, c in 1:1, n in 1:20]
        y = [mod1(n * 7, 3) for n in 1:20]
        straight = make()
        learn!(straight, X, y; epochs=3, batchsize=7, optimizer=opt)
        first = make()
        learn!(first, X, y; epochs=1, batchsize=7, optimizer=opt)
        path = tempname() * ".safetensors"
        try
            save(path, first; include_optimizer=true, optimizer=opt)
            resumed = load(path)
            @test identical(resumed, first)
            learn!(resumed, X, y; epochs=2, batchsize=7, optimizer=opt)
            @test identical(resumed, straight)
            # control: without the optimizer state the continuation differs (momentum/moments matter)
            save(path, first)
            bare = load(path)
            learn!(bare, X, y; epochs=2, batchsize=7, optimizer=opt)
            opt isa SGD && opt.momentum == 0 || @test !identical(bare, straight)
        finally
            rm(path; force=true)
        end
    end
end
