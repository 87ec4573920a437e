# The published schema against the code that enforces it: every name is in its registry, every
# parameter is a field of its type (in constructor order), and every default and bound is what the
# constructors actually do (probed at the bound and just beyond it).

const SECTIONS = ("rule" => FAL.RULES, "optimizer" => FAL.OPTIMISERS, "schedule" => FAL.SCHEDULES,
                  "initialiser" => FAL.INITIALISERS)

# A valid value for a parameter without a default, by kind.
example(kind) = Dict(:count => 2, :fraction => 0.5, :positive => 1.0, :initialiser => GlorotUniform())[kind]
# The value a constructor receives for a schema default.
as_value(kind, default) = default isa FAL.Derived ? 1.0 :
    kind === :initialiser ? FAL.INITIALISERS[default]() : kind === :schedule_or_null && default === nothing ? Constant() : default

# Build `section`'s `name` with every parameter at its default (or example) except `changes`.
function construct(section, name, changes...)
    ps = FAL.parameters(section, name)
    values = Any[p[3] isa FAL.Required ? example(p[2]) : as_value(p[2], p[3]) for p in ps]
    for (field, value) in changes
        values[findfirst(p -> p[1] == field, ps)] = value
    end
    T = Dict(SECTIONS)[section][name]
    section == "optimizer" && return T(; (Symbol(p[1]) => v for (p, v) in zip(ps, values))...)
    return T(values...)
end
accepts(f) = try f(); true catch e; e isa ArgumentError || rethrow(); false end

@testset "schema" begin
    s = FAL.parse_json(FAL.schema_text())
    @test s["schema_version"] == 1
    @test s["activations"] == sort!(collect(keys(FAL.ACTIVATIONS)))
    @test [l["name"] for l in s["losses"]] == sort!(collect(keys(FAL.LOSSES)))
    for (key, table) in ("rules" => FAL.RULES, "optimizers" => FAL.OPTIMISERS, "schedules" => FAL.SCHEDULES,
                         "initialisers" => FAL.INITIALISERS, "layers" => FAL.LAYERS)
        @test [e["name"] for e in s[key]] == sort!(collect(keys(table)))
    end
    # every table entry names a registered value
    for (section, table) in ("layer" => FAL.LAYERS, SECTIONS...)
        @test issubset(keys(FAL.PARAMETERS[section]), keys(table))
    end

    @testset "families and flags come from the rules' types" begin
        family = Dict(r["name"] => r["family"] for r in s["rules"])
        @test family["bp"] == "backprop" && family["shallow"] == "other"
        @test all(family[n] == "fa-style" for n in ("fa", "usf", "frsf", "brsf", "kp", "wm"))
        @test all(family[n] == "dfa-style" for n in ("dfa", "drtp", "sdfa"))
        @test [r["name"] for r in s["rules"] if r["needs_classes"]] == ["drtp"]
        @test [r["name"] for r in s["rules"] if r["learns_feedback"]] == ["kp"]
        @test Dict(o["name"] => o["state_slots"] for o in s["optimizers"]) ==
              Dict("sgd" => ["velocity"], "adam" => ["first_moment", "second_moment"],
                   "adamw" => ["first_moment", "second_moment"])
    end

    @testset "parameters are the types' fields, in constructor order" begin
        for (section, table) in SECTIONS, name in keys(table)
            T = typeof(construct(section, name))
            @test (section, name, Tuple(Symbol.(first.(FAL.parameters(section, name))))) == (section, name, fieldnames(T))
        end
        for name in keys(FAL.LAYERS)
            T = FAL.LAYERS[name]
            T = T isa Type ? T : typeof(T(+, Dense(2 => 2), Dense(2 => 2)))   # Parallel builds a SkipConnection
            @test Tuple(Symbol.(first.(FAL.parameters("layer", name)))) == fieldnames(T)
        end
    end

    @testset "defaults are the constructors' defaults" begin
        for (section, table) in SECTIONS, name in keys(table)
            ps = FAL.parameters(section, name)
            required = [example(k) for (f, k, d) in ps if d isa FAL.Required]
            x = section == "optimizer" ? table[name]() : table[name](required...)
            for (field, kind, default) in ps
                default isa Union{FAL.Required,FAL.Derived} && continue
                @test (name, field, getfield(x, Symbol(field))) == (name, field, as_value(kind, default))
            end
        end
        @test WeightMirror(noise_std=3.0).decay == 9.0   # Derived("noise_std^2")
        @test FAL.parameters("rule", "wm")[5][3].text == "noise_std^2"
        dense, conv, pool = (FAL.interpret(t, "layer") for t in ("Dense(2 => 3)", "Conv((3, 2), 1 => 4)", "MaxPool((3, 2))"))
        @test dense.σ === identity && conv.σ === identity && conv.stride == (1, 1) && conv.pad == (0, 0)
        @test pool.stride == pool.k   # Derived("k")
        @test [p[3] for p in FAL.parameters("layer", "Conv")][4:6] == ["identity", 1, 0]
    end

    @testset "bounds are the constructors' bounds" begin
        for (section, table) in SECTIONS, name in keys(table), (field, kind, _) in FAL.parameters(section, name)
            k = FAL.PARAM_KINDS[kind]
            k.type in ("number", "integer", "numbers") || continue
            wrap(x) = k.type == "numbers" ? [x] : x
            step(b) = k.type == "integer" ? 1 : b == 0 ? 1e-9 : eps(Float64(b))
            if k.low !== nothing
                @test (name, field, accepts(() -> construct(section, name, field => wrap(k.low)))) == (name, field, !k.low_open)
                @test (name, field, accepts(() -> construct(section, name, field => wrap(k.low - step(k.low))))) == (name, field, false)
                @test (name, field, accepts(() -> construct(section, name, field => wrap(k.low + step(k.low))))) == (name, field, true)
            end
            if k.high !== nothing
                @test (name, field, accepts(() -> construct(section, name, field => wrap(k.high)))) == (name, field, !k.high_open)
                @test (name, field, accepts(() -> construct(section, name, field => wrap(k.high + step(k.high))))) == (name, field, false)
            end
            k.nullable && @test accepts(() -> construct(section, name, field => nothing))
        end
        # layers, through the calls hosts send
        layer(text) = accepts(() -> FAL.interpret(text, "layer"))
        @test layer("Dense(1 => 1)") && !layer("Dense(0 => 1)") && !layer("Dense(1 => 0)")
        @test layer("Conv((1, 1), 1 => 1; stride=1, pad=0)") && !layer("Conv((0, 1), 1 => 1)") && !layer("Conv((1, 1), 0 => 1)")
        @test !layer("Conv((1, 1), 1 => 1; stride=0)") && !layer("Conv((1, 1), 1 => 1; pad=-1)")
        @test layer("MaxPool((1, 1); stride=1)") && !layer("MaxPool((0, 1))") && !layer("MeanPool((1, 1); stride=(1, 0))")
        @test !layer("Dense(1 => 1, softplus)")
    end

    @testset "expected texts" begin
        @test FAL.expected_text(FAL.PARAM_KINDS[:unit_open]) == "a number in [0, 1)"
        @test FAL.expected_text(FAL.PARAM_KINDS[:fraction]) == "a number in (0, 1]"
        @test FAL.expected_text(FAL.PARAM_KINDS[:count]) == "an integer >= 1"
        @test FAL.expected_text(FAL.PARAM_KINDS[:rates_or_null]) == "null or a list of numbers >= 0"
    end

    @testset "one name for each thing" begin
        @test FAL.interpret("USF", "rule") isa uSF && FAL.interpret("uSF(scale=0.5)", "rule") == uSF(0.5)
        @test FAL.interpret("KP", "rule") isa KolenPollack
        @test FAL.interpret("sgd(0.1, schedule=step_decay(every=2))", "optimizer").schedule == StepDecay(2, 0.1)
        @test_throws ArgumentError FAL.interpret("step(every=2)", "schedule")
        @test FAL.PARAM_SCHEMAS["schedule"]["step_decay"] == [("every", :count), ("gamma", :positive)]
        @test sort!(collect(keys(FAL.PARAM_SCHEMAS["optimizer"]))) == ["adam", "sgd"]   # files name AdamW "adam"
    end

    @testset "through the ABI" begin
        text = unsafe_string(CABI.fa_describe(Base.unsafe_convert(Cstring, "schema")))
        @test text == FAL.schema_text()
    end
end
