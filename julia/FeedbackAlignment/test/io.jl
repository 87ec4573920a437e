# Model files (src/io.jl): the JSON subset, save/load round trips, exact resumption, every corrupt
# case, and atomic writes. Included from runtests.jl; Python reads and writes the same files in
# tests/test_io.py.

# Bytes of a safetensors file with the given header text and data, built by hand.
function raw_file(path, header::AbstractString, data::Vector{UInt8}=UInt8[])
    header *= " "^mod(-ncodeunits(header), 8)
    write(path, [reinterpret(UInt8, [htol(UInt64(ncodeunits(header)))]); Vector{UInt8}(header); data])
    return path
end

# The error message `load(path)` throws (a ModelFileError), or "loaded".
function load_error(path)
    try
        load(path)
        return "loaded"
    catch e
        e isa ModelFileError || rethrow()
        return sprint(showerror, e)
    end
end

samebits(a::Network, b::Network) = all(zip(a.layers, b.layers)) do (x, y)
    x.W == y.W && x.b == y.b && (x.B === nothing ? y.B === nothing : x.B == y.B)
end
# The same optimiser state: its kind and step count, and every slot of every layer's W, b and B.
samestate(a::Network, b::Network) = a.optkind === b.optkind && a.optsteps == b.optsteps &&
    all(x.slots == y.slots && x.sB == y.sB for (x, y) in zip(a.layers, b.layers))

# A model file in format 1, laid out as the format-1 writer did (a dense network's sizes and one
# hidden activation in the metadata, SGD velocities only), from `net`'s arrays.
function write_format1(path, net::Network{T}, activation::String) where {T}
    meta = Pair{String,Any}["format" => "pyjlfa-safetensors", "format_version" => "1", "library_version" => "0.1.0",
        "created_by" => "FeedbackAlignment.jl (Julia 1.5.3)", "sizes" => FAL.json(FAL.sizes(net)),
        "dtype" => T == Float32 ? "float32" : "float64", "activation" => activation, "loss" => "cross_entropy",
        "rule" => lowercase(string(nameof(typeof(net.rule)))), "rule_params" => "{}",
        "init" => "glorot_uniform", "init_params" => "{\"gain\":1.0}",
        "feedback_init" => "glorot_uniform", "feedback_init_params" => "{\"gain\":1.0}",
        "seed" => string(net.seed), "feedback_seed" => string(net.feedback_seed), "epochs" => string(net.epochs),
        "rng_state" => string(net.rng.state), "dropout" => FAL.json(zeros(length(net.layers) - 1)),
        "optimizer" => "sgd", "optimizer_slots" => "[\"velocity\"]"]
    tensors = Pair{String,Array{T}}[]
    for (k, st) in enumerate(net.layers)
        push!(tensors, "layers.$(k-1).W" => st.W, "layers.$(k-1).b" => st.b)
        st.B === nothing || push!(tensors, "layers.$(k-1).B" => st.B)
    end
    for (k, st) in enumerate(net.layers)
        push!(tensors, "optimizer.velocity.$(k-1).W" => st.slots.W[1], "optimizer.velocity.$(k-1).b" => st.slots.b[1])
    end
    header, data = Pair{String,Any}["__metadata__" => meta], UInt8[]
    for (name, A) in tensors
        push!(header, name => Pair{String,Any}["dtype" => T == Float32 ? "F32" : "F64", "shape" => reverse(collect(size(A))),
                                               "data_offsets" => [length(data), length(data) + sizeof(A)]])
        append!(data, reinterpret(UInt8, vec(A)))
    end
    return raw_file(path, FAL.json(header), data)
end

@testset "model files" begin
    @testset "JSON subset" begin
        text = "{\"a\":[1,-2,3.5e2,\"q\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\"],\"b\":{\"c\":null,\"d\":true,\"e\":false},\"f\":[]}"
        v = FAL.parse_json(text)
        @test v["a"] == Any[1, -2, 350.0, "q\"\\/\b\f\n\r\té😀"]
        @test v["a"][1] isa Int64 && v["a"][3] isa Float64
        @test v["b"] == Dict{String,Any}("c" => nothing, "d" => true, "e" => false) && v["f"] == Any[]
        # writing and reading back gives the same value, floats to the last bit
        values = Pair{String,Any}["s" => "tab\t\"quote\" \\ \u01 é", "x" => [0.1, 1e-5, 1e300, -0.0, 2.5f0], "n" => nothing, "i" => typemax(Int64)]
        back = FAL.parse_json(FAL.json(values))
        @test back["s"] == values[1][2] && back["n"] === nothing && back["i"] == typemax(Int64)
        @test back["x"] == Float64[0.1, 1e-5, 1e300, -0.0, 2.5] && signbit(back["x"][4])
        @test FAL.json(Pair{String,Any}["b" => [1, 2], "a" => Pair{String,Any}[]]) == "{\"b\":[1,2],\"a\":{}}"
        @test_throws ArgumentError FAL.json(NaN)
        for bad in ("{\"a\":1,\"a\":2}", "[1,]", "{\"a\" 1}", "01", "1.", "-", "\"\\x\"", "\"\\ud800\"", "[1] 2",
                    "\"a\nb\"", "nul", "9223372036854775808", "[" ^ 100 * "]" ^ 100, "\"abc")
            @test_throws FAL.JSONSyntaxError FAL.parse_json(bad)
        end
        @test_throws FAL.JSONSyntaxError FAL.parse_json(UInt8[0x22, 0xff, 0x22])   # not UTF-8
    end

    mktempdir() do dir
        path(name) = joinpath(dir, name)
        X = randn(MersenneTwister(2), 6, 30)
        y = [mod1(j, 3) for j in 1:30]

        @testset "save and load round trip ($T, $(typeof(rule)))" for T in (Float32, Float64), rule in (BP(), FA(), DFA())
            net = Network([6, 5, 4, 3]; rule=rule, activation=sigmoid, seed=4, feedback_seed=9, T=T)
            learn!(net, T.(X), y; epochs=2, batchsize=7, optimizer=SGD(0.1, 0.9))
            @test save(path("a.safetensors"), net; include_optimizer=true, optimizer=SGD(0.1, 0.9)) == path("a.safetensors")
            loaded = load(path("a.safetensors"))
            @test loaded isa Network{T,2,typeof(rule),CrossEntropy}
            @test [FAL.activation(st.spec) for st in loaded.layers] == [sigmoid, sigmoid, identity]
            @test samebits(net, loaded) && loaded.epochs == 2 && loaded.rng.state == net.rng.state
            @test (loaded.seed, loaded.feedback_seed) == (4, 9)
            @test loaded.optkind === :sgd && samestate(net, loaded)
            @test FeedbackAlignment.state_tensors(loaded, ["velocity"]) == FeedbackAlignment.state_tensors(net, ["velocity"])
            @test predict_proba(loaded, T.(X)) == predict_proba(net, T.(X))
            loaded.layers[1].W[1] += 1   # a new model: the old one does not change
            @test loaded.layers[1].W[1] != net.layers[1].W[1]
            # saving the loaded model again gives the same bytes
            save(path("b.safetensors"), load(path("a.safetensors")); include_optimizer=true, optimizer=SGD(0.1, 0.9))
            @test read(path("a.safetensors")) == read(path("b.safetensors"))
            meta = FeedbackAlignment.read_metadata(path("a.safetensors"))
            @test meta["input"] == "[6]" && meta["dtype"] == (T == Float32 ? "float32" : "float64")
            @test meta["chain"] == "[\"Dense(6 => 5, sigmoid)\",\"Dense(5 => 4, sigmoid)\",\"Dense(4 => 3)\"]"
            @test meta["rule"] == lowercase(string(typeof(rule))) && meta["rule_params"] == "{}"
            @test meta["feedback_init"] == "glorot_uniform" && meta["feedback_init_params"] == "{\"gain\":1.0}"
            @test meta["optimizer"] == "sgd" && startswith(meta["optimizer_params"], "{\"lr\":0.1,\"momentum\":0.9,\"nesterov\":false")
            @test meta["optimizer_slots"] == "[\"velocity\"]" && meta["epochs"] == "2" && meta["format_version"] == "3"
            @test meta["optimizer_steps"] == string(net.optsteps) && net.optsteps == 2 * 5   # 30 observations in batches of 7
        end

        # Files of format 1 (dense sizes and one activation) still load, with the same numbers.
        @testset "format 1 files load ($T, $(typeof(rule)))" for T in (Float32, Float64), rule in (FA(), DFA())
            net = Network([6, 5, 4, 3]; rule=rule, activation=relu, seed=4, feedback_seed=9, T=T)
            learn!(net, T.(X), y; epochs=2, batchsize=7, optimizer=SGD(0.1, 0.9))
            write_format1(path("v1.safetensors"), net, "relu")
            @test FeedbackAlignment.read_metadata(path("v1.safetensors"))["format_version"] == "1"
            old = load(path("v1.safetensors"))
            @test old.chain.layers == (Dense(6 => 5, relu), Dense(5 => 4, relu), Dense(4 => 3)) && old.insize == (6,)
            @test samebits(net, old) && old.epochs == 2 && old.rng.state == net.rng.state
            @test (old.seed, old.feedback_seed) == (4, 9)
            @test old.optkind === :sgd && all(a.slots == b.slots for (a, b) in zip(net.layers, old.layers))
            @test predict_proba(old, T.(X)) == predict_proba(net, T.(X))
            learn!(old, T.(X), y; epochs=1, batchsize=7, optimizer=SGD(0.1, 0.9))   # SGD needs no step count
            learn!(net, T.(X), y; epochs=1, batchsize=7, optimizer=SGD(0.1, 0.9))
            @test samebits(net, old)
        end

        @testset "the layout is safetensors'" begin
            net = Network([3, 2]; rule=BP(), T=Float32)
            bytes = read(save(path("c.safetensors"), net))
            n = Int(ltoh(reinterpret(UInt64, bytes[1:8])[1]))
            @test (8 + n) % 8 == 0 && bytes[8+n] == UInt8(' ')
            header = FAL.parse_json(String(bytes[9:8+n]))
            @test header["layers.0.W"] == Dict{String,Any}("dtype" => "F32", "shape" => [3, 2], "data_offsets" => [0, 24])
            @test header["layers.0.b"]["data_offsets"] == [24, 32] && length(bytes) == 8 + n + 32
            # W (n_out, n_in) column-major is stored as-is: Python's (n_in, n_out) row-major
            @test reinterpret(Float32, bytes[9+n:8+n+24]) == vec(net.layers[1].W)
        end

        @testset "training resumes exactly" for rule in (FA(), DFA())
            straight = Network([6, 8, 3]; rule=rule, seed=1, T=Float64)
            learn!(straight, X, y; epochs=2, batchsize=4, optimizer=SGD(0.05, 0.9))
            first = Network([6, 8, 3]; rule=rule, seed=1, T=Float64)
            learn!(first, X, y; epochs=1, batchsize=4, optimizer=SGD(0.05, 0.9))
            save(path("r.safetensors"), first; include_optimizer=true)
            save(path("r0.safetensors"), first)
            resumed = load(path("r.safetensors"))
            learn!(resumed, X, y; epochs=1, batchsize=4, optimizer=SGD(0.05, 0.9))
            @test samebits(straight, resumed) && resumed.epochs == 2
            # load gives back the optimiser (issue 26): learn! continues with it, weight decay included
            decayed = SGD(0.05; momentum=0.9, weight_decay=1e-3)
            straight = Network([6, 8, 3]; rule=rule, seed=1, T=Float64)
            learn!(straight, X, y; epochs=2, batchsize=4, optimizer=decayed)
            first = Network([6, 8, 3]; rule=rule, seed=1, T=Float64)
            learn!(first, X, y; epochs=1, batchsize=4, optimizer=decayed)
            @test first.optimizer == decayed
            save(path("r.safetensors"), first; include_optimizer=true)   # records first.optimizer
            resumed = load(path("r.safetensors"))
            @test resumed.optimizer == decayed && load(path("r0.safetensors")).optimizer === nothing
            learn!(resumed, X, y; epochs=1, batchsize=4)
            @test samebits(straight, resumed) && resumed.epochs == 2
            without = load(path("r0.safetensors"))   # no velocities: a different second epoch
            @test without.optkind === :none && all(st -> all(isempty, values(st.slots)), without.layers)
            learn!(without, X, y; epochs=1, batchsize=4, optimizer=SGD(0.05, 0.9))
            @test !samebits(straight, without)
        end

        @testset "optimiser state that does not exist; Adam's and Kolen-Pollack's state" begin
            net = Network([3, 2]; T=Float64)                # never trained: no state
            save(path("s.safetensors"), net; include_optimizer=true)
            meta = FeedbackAlignment.read_metadata(path("s.safetensors"))
            @test meta["optimizer"] == "none" && meta["optimizer_slots"] == "[]" && !haskey(meta, "optimizer_params")
            @test load(path("s.safetensors")).optkind === :none
            # format 2 holds Adam's moments and step count, and the state of Kolen-Pollack's B
            Xs, ys = randn(MersenneTwister(3), 3, 4), [1, 2, 2, 1]
            for (net, opt) in ((Network([3, 4, 2]; T=Float64), Adam(0.01)),
                               (Network([3, 4, 2]; rule=KolenPollack(), T=Float64), SGD(0.1, 0.9)),
                               (Network([3, 4, 2]; rule=KolenPollack(), T=Float64), Adam(0.01)))
                step!(net, Xs, ys, opt); step!(net, Xs, ys, opt)
                save(path("s.safetensors"), net; include_optimizer=true, optimizer=opt)
                meta = FeedbackAlignment.read_metadata(path("s.safetensors"))
                @test meta["optimizer_slots"] == (opt isa Adam ? "[\"first_moment\",\"second_moment\"]" : "[\"velocity\"]")
                loaded = load(path("s.safetensors"))
                @test samebits(net, loaded) && samestate(net, loaded) && loaded.optsteps == 2
                @test net.rule isa KolenPollack ? !isempty(loaded.layers[2].sB) : all(st -> isempty(st.sB), loaded.layers)
                step!(net, Xs, ys, opt); step!(loaded, Xs, ys, opt)
                @test samebits(net, loaded) && samestate(net, loaded)
            end
        end

        @testset "corrupt files raise a clear ModelFileError" begin
            net = Network([6, 5, 4, 3]; rule=FA(), T=Float32)
            step!(net, ones(Float32, 6, 2), [1, 2], SGD(0.1, 0.9))
            good = read(save(path("good.safetensors"), net; include_optimizer=true))
            n = Int(ltoh(reinterpret(UInt64, good[1:8])[1]))
            header = String(good[9:8+n])
            data = good[9+n:end]
            with(name, bytes) = (write(path(name), bytes); path(name))
            edit(name, old, new) = raw_file(path(name), replace(header, old => new), data)
            cases = [
                with("t1", good[1:5]) => "truncated file: 5 bytes, but a model file starts with an 8-byte header length",
                with("t2", good[1:108]) => "truncated file: the header length field says $n bytes, but only 100 bytes follow it",
                with("t3", good[1:end-10]) => "truncated file: the tensors need $(length(data)) bytes of data, but only $(length(data) - 10) follow the header",
                with("big", [reinterpret(UInt8, [htol(UInt64(1) << 62)]); good[9:end]]) =>
                    "the header length field says 4611686018427387904 bytes, more than the 100000000 a header may have",
                with("json", [good[1:8]; Vector{UInt8}(replace(header, "{\"format\"" => "{{\"format\"")[1:n]); data]) =>
                    "corrupt header: expected a string key at byte 18 (not valid JSON)",
                raw_file(path("foreign"), "{\"__metadata__\":{\"framework\":\"pt\"},\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", zeros(UInt8, 4)) =>
                    "not a pyjlfa model file: its safetensors header has no pyjlfa metadata",
                raw_file(path("bare"), "{\"w\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", zeros(UInt8, 8)) =>
                    "not a pyjlfa model file",
                edit("version", "\"format_version\":\"3\"", "\"format_version\":\"7\"") =>
                    "unknown format version \"7\"; this FeedbackAlignment reads versions 1 to 3",
                edit("shape", "\"shape\":[5,4]", "\"shape\":[4,5]") =>
                    "tensor \"layers.1.W\" has shape [4,5], but the network the metadata describes ([Dense(6 => 5, tanh), Dense(5 => 4, tanh), Dense(4 => 3)], rule fa) needs [5,4]",
                edit("sizes", "Dense(6 => 5, tanh)\\\",\\\"Dense(5 => 4", "Dense(6 => 7, tanh)\\\",\\\"Dense(7 => 4") =>
                    "tensor \"layers.0.W\" has shape [6,5], but the network the metadata describes ([Dense(6 => 7, tanh), Dense(7 => 4, tanh), Dense(4 => 3)], rule fa) needs [6,7]",
                edit("input", "\"input\":\"[6]\"", "\"input\":\"[7]\"") =>
                    "the metadata does not describe a network this FeedbackAlignment can build: ArgumentError: layer 0, Dense(6 => 5, tanh) expects 6 inputs, but receives 7",
                edit("chain", "Dense(6 => 5, tanh)", "Conv((2, 2), 1 => 5)") =>
                    "layer 0, Conv((2, 2), 1 => 5) expects images (width, height, channels), but receives a vector of 6",
                edit("dtype", "\"dtype\":\"float32\"", "\"dtype\":\"float64\"") =>
                    "tensor \"layers.0.W\" is F32, but the metadata says dtype float64",
                edit("rule", "\"rule\":\"fa\"", "\"rule\":\"dfa\"") =>
                    "tensor \"layers.0.B\" is missing (the metadata describes a dfa network [Dense(6 => 5, tanh), Dense(5 => 4, tanh), Dense(4 => 3)])",
                edit("unknown", "Dense(6 => 5, tanh)", "Dense(6 => 5, swish)") =>
                    "metadata \"chain\" has \"Dense(6 => 5, swish)\", which is not a layer this FeedbackAlignment builds (ArgumentError: cannot read \"Dense(6 => 5, swish)\": unknown name :swish; a layer's activation is one of identity, leaky_relu, leakyrelu, relu, sigmoid, tanh)",
                edit("seed", "\"seed\":\"0\"", "\"seed\":\"x1\"") => "metadata \"seed\" must be an integer in [0, 2**64), got \"x1\"",
                edit("params", "\"rule_params\":\"{}\"", "\"rule_params\":\"{\\\"alpha\\\":1.0}\"") =>
                    "rule \"fa\" takes the parameters (), but the file gives (alpha)",
                edit("slots", "\"optimizer_slots\":\"[\\\"velocity\\\"]\"", "\"optimizer_slots\":\"[]\"") =>
                    "unexpected tensor \"optimizer.velocity.0.W\" (the metadata does not describe it)",
                edit("offsets", "\"data_offsets\":[0,120]", "\"data_offsets\":[0,116]") =>
                    "tensor \"layers.0.W\" of shape [6,5] needs 120 bytes, but its data_offsets [0,116] span 116",
                with("trailing", [good; UInt8[1, 2, 3]]) => "3 bytes follow the last tensor (corrupt file)",
            ]
            for (file, expected) in cases
                msg = load_error(file)
                @test startswith(msg, "cannot load model file $file: ")
                occursin(expected, msg) || @error "unexpected message" file expected msg
                @test occursin(expected, msg)
            end
        end

        @testset "rules and initialisers are rebuilt from their parameters" begin
            p = Dict{String,Any}("gain" => 2.0)
            @test FAL.rebuild(FAL.FILE_INITIALISERS, "initialiser", "glorot_uniform", p, "f") == GlorotUniform(2.0)
            @test FAL.param_value(GlorotUniform(0.5)) == Pair{String,Any}["name" => "glorot_uniform", "params" => Pair{String,Any}["gain" => 0.5]]
            @test FAL.rebuild(FAL.RULES, "rule", "dfa", Dict{String,Any}(), "f") === DFA()
            @test_throws ModelFileError FAL.rebuild(FAL.FILE_INITIALISERS, "initialiser", "glorot_uniform", Dict{String,Any}(), "f")
            @test_throws ModelFileError FAL.rebuild(FAL.FILE_INITIALISERS, "initialiser", "glorot_uniform",
                                                     Dict{String,Any}("gain" => "x"), "f")
            @test FAL.snake_case("GlorotUniform") == "glorot_uniform" && FAL.snake_case("SGD") == "sgd"
        end

        @testset "saving is atomic" begin
            target = path("atomic.safetensors")
            write(target, "previous")
            before = sort(readdir(dir))
            @test_throws ErrorException FeedbackAlignment.atomic_write(target) do io
                write(io, "half a mod")
                error("disk full (simulated)")
            end
            @test read(target, String) == "previous" && sort(readdir(dir)) == before
            FeedbackAlignment.atomic_write(io -> write(io, "new"), target)
            @test read(target, String) == "new" && sort(readdir(dir)) == before
            # an activation a file could not name is refused when the network is built, before any save
            @test_throws ArgumentError Network([2, 3, 2]; activation=x -> x)
            @test_throws ArgumentError save(joinpath(dir, "no_such_folder", "m.safetensors"), Network([2, 2]))
            @test occursin("it is a folder", load_error(dir))
        end
    end
end
