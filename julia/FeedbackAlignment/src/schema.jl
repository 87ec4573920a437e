# The engine's schema: the names, families, parameters (defaults and bounds) of rules, optimizers
# (with their state slots), schedules, initialisers, activations, losses and layers, published to
# hosts as one JSON document (`fa_describe("schema")`). Python's checks, both model-file readers'
# tables and the docs' parameter table come from it; test/schema.jl probes every bound and default
# here against the constructors that enforce them, so this table cannot drift from the code.

"What a parameter may hold: a JSON type, bounds (`nothing`: none; open or closed), null or not, and
for a `choice` the strings it may be."
struct ParamKind
    type::String    # "number", "integer", "bool", "numbers" (a list), "integer_pair", "choice", "activation", "initialiser", "schedule", "layers"
    low::Union{Int,Nothing}
    low_open::Bool
    high::Union{Int,Nothing}
    high_open::Bool
    nullable::Bool
    choices::Vector{String}
end
ParamKind(type; low=nothing, low_open=false, high=nothing, high_open=false, nullable=false, choices=String[]) =
    ParamKind(type, low, low_open, high, high_open, nullable, choices)

const PARAM_KINDS = Dict{Symbol,ParamKind}(
    :positive => ParamKind("number"; low=0, low_open=true),
    :nonnegative => ParamKind("number"; low=0),
    :fraction => ParamKind("number"; low=0, low_open=true, high=1),
    :unit_open => ParamKind("number"; low=0, high=1, high_open=true),
    :unit_closed => ParamKind("number"; low=0, high=1),
    :count => ParamKind("integer"; low=1),
    :bool => ParamKind("bool"),
    :positive_or_null => ParamKind("number"; low=0, low_open=true, nullable=true),
    :rates_or_null => ParamKind("numbers"; low=0, nullable=true),   # the bounds hold for each number
    :initialiser => ParamKind("initialiser"),
    :schedule_or_null => ParamKind("schedule"; nullable=true),
    :count_pair => ParamKind("integer_pair"; low=1),                # an integer or a pair, each >= low
    :nonnegative_pair => ParamKind("integer_pair"; low=0),
    :activation => ParamKind("activation"),
    :points => ParamKind("choice"; choices=["layer", "block"]),
    :layer => ParamKind("layer"),                                   # a layer call (a container's path)
    :layer_or_null => ParamKind("layer"; nullable=true))

in_bounds(k::ParamKind, x) = (k.low === nothing || (k.low_open ? x > k.low : x >= k.low)) &&
                             (k.high === nothing || (k.high_open ? x < k.high : x <= k.high))

"Whether the JSON value `x` (as `parse_json` reads it) is one that kind `k` allows."
function check_value(k::ParamKind, x)
    k.nullable && x === nothing && return true
    k.type == "number" && return is_number(x) && in_bounds(k, x)
    k.type == "integer" && return x isa Int64 && in_bounds(k, x)
    k.type == "bool" && return x isa Bool
    k.type == "numbers" && return x isa Vector{Any} && all(v -> is_number(v) && in_bounds(k, v), x)
    k.type == "choice" && return x in k.choices
    throw(ArgumentError("values of kind $(k.type) are not checked here"))
end
is_number(x) = x isa Real && !(x isa Bool)   # JSON numbers: Int64 or finite Float64

"What kind `k` allows, in words (\"a number in [0, 1)\"), as both readers' messages say it."
function expected_text(k::ParamKind)
    k.type == "bool" && return "true or false"
    k.type == "choice" && return join(repr.(k.choices), " or ")
    noun = Dict("number" => "a number", "integer" => "an integer", "numbers" => "a list of numbers",
                "integer_pair" => "an integer or a pair of integers", "activation" => "an activation name",
                "initialiser" => "an initialiser", "schedule" => "a schedule", "layer" => "a layer")[k.type]
    bound = k.low !== nothing && k.high !== nothing ?
                " in $(k.low_open ? '(' : '[')$(k.low), $(k.high)$(k.high_open ? ')' : ']')" :
            k.low !== nothing ? (k.low_open ? " > $(k.low)" : " >= $(k.low)") :
            k.high !== nothing ? (k.high_open ? " < $(k.high)" : " <= $(k.high)") : ""
    return (k.nullable ? "null or " : "") * noun * bound
end

# A parameter: its field name (in constructor order), kind and default. REQUIRED: no default;
# Derived(text): a default computed from the other parameters.
struct Required end
const REQUIRED = Required()
struct Derived
    text::String
end

const GAIN_PARAMS = [("gain", :positive, 1.0)]
common_optimiser_params(decoupled) = [("weight_decay", :nonnegative, 0.0), ("decoupled_weight_decay", :nonnegative, decoupled),
    ("layer_lr", :rates_or_null, nothing), ("schedule", :schedule_or_null, nothing)]   # nothing: Constant()

# Parameters by section and registry name; names missing here take none.
const PARAMETERS = Dict{String,Dict{String,Vector{Tuple{String,Symbol,Any}}}}(
    "rule" => Dict(
        "usf" => [("scale", :positive_or_null, nothing)],   # nothing: the std of the layer's initialiser
        (name => [("feedback_points", :points, "layer")] for name in ("dfa", "drtp", "sdfa"))...,
        "wm" => [("noise_std", :positive, 1.0), ("lr", :positive, 0.01), ("steps", :count, 1), ("batchsize", :count, 16),
                 ("decay", :nonnegative, Derived("noise_std^2"))]),
    "optimizer" => Dict(
        "sgd" => [("lr", :positive, 0.01), ("momentum", :unit_open, 0.0), ("nesterov", :bool, false),
                  common_optimiser_params(0.0)...],
        "adam" => [("lr", :positive, 0.001), ("beta1", :unit_open, 0.9), ("beta2", :unit_open, 0.999),
                   ("eps", :positive, 1e-8), common_optimiser_params(0.0)...],
        "adamw" => [("lr", :positive, 0.001), ("beta1", :unit_open, 0.9), ("beta2", :unit_open, 0.999),
                    ("eps", :positive, 1e-8), common_optimiser_params(0.01)...]),
    "schedule" => Dict(
        "step_decay" => [("every", :count, REQUIRED), ("gamma", :positive, 0.1)],
        "cosine" => [("epochs", :count, REQUIRED), ("min_factor", :unit_closed, 0.0)]),
    "initialiser" => Dict(
        (name => GAIN_PARAMS for name in ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal",
                                          "lecun_uniform", "lecun_normal", "orthogonal"))...,
        "uniform" => [("scale", :positive, 0.5)], "normal" => [("std", :positive, 0.1)],
        "sparse" => [("density", :fraction, REQUIRED), ("init", :initialiser, "glorot_uniform")],
        "sign_concordant" => [("init", :initialiser, "glorot_uniform")]),
    # Layers' arguments as their calls take them (`Dense(in => out, σ)`, `Conv((kw, kh), cin => cout, σ; stride, pad)`).
    "layer" => Dict(
        "Dense" => [("in", :count, REQUIRED), ("out", :count, REQUIRED), ("σ", :activation, "identity"), ("bias", :bool, true)],
        "Conv" => [("k", :count_pair, REQUIRED), ("cin", :count, REQUIRED), ("cout", :count, REQUIRED),
                   ("σ", :activation, "identity"), ("stride", :count_pair, 1), ("pad", :nonnegative_pair, 0),
                   ("bias", :bool, true)],
        "BatchNorm" => [("channels", :count, REQUIRED), ("momentum", :unit_closed, 0.1), ("eps", :positive, 1e-5)],
        "Dropout" => [("p", :unit_open, REQUIRED)],
        "Chain" => [("layers", :layer, REQUIRED)],       # any number of layers
        "Activation" => [("σ", :activation, REQUIRED)],   # in a chain, the function alone: `relu`
        "SkipConnection" => [("main", :layer, REQUIRED), ("shortcut", :layer_or_null, nothing)],   # called as SkipConnection(main, +)
        "Parallel" => [("main", :layer, REQUIRED), ("shortcut", :layer, REQUIRED)],               # called as Parallel(+, main, shortcut)
        "PadShortcut" => [("cin", :count, Derived("the block's input")), ("cout", :count, Derived("the main path's output")),
                          ("stride", :count, 2)],
        "MaxPool" => [("k", :count_pair, REQUIRED), ("stride", :count_pair, Derived("k"))],
        "MeanPool" => [("k", :count_pair, REQUIRED), ("stride", :count_pair, Derived("k"))]))

parameters(section, name) = get(PARAMETERS[section], name, Tuple{String,Symbol,Any}[])

"How a learning rule's hidden layers get their error: from the type unions the backward pass dispatches on."
rule_family(rule::LearningRule) = rule isa BP ? "backprop" : rule isa FAStyle ? "fa-style" :
                                  rule isa DFAStyle ? "dfa-style" : "other"

# The state kinds and the names of their slots (one array each per W, b and, under Kolen-Pollack, B).
optimiser_state_kind(name) = string(state_kind(OPTIMISERS[name]()))

function param_entry(field, kind::Symbol, default)
    k = PARAM_KINDS[kind]
    entry = Pair{String,Any}["name" => field, "type" => k.type, "low" => k.low, "low_open" => k.low_open,
                             "high" => k.high, "high_open" => k.high_open, "nullable" => k.nullable,
                             "choices" => k.choices,
                             "expected" => expected_text(k)]
    default isa Required || push!(entry, "default" => default isa Derived ? nothing : default)
    default isa Derived && push!(entry, "default_from" => default.text)
    return entry
end
params_entry(section, name) = Any[param_entry(p...) for p in parameters(section, name)]

sorted_names(table) = sort!(collect(keys(table)))

"The schema as a JSON-ready value; `schema_text()` is its JSON."
function schema()
    rules = map(sorted_names(RULES)) do name
        rule = RULES[name]()
        Pair{String,Any}["name" => name, "type" => string(nameof(typeof(rule))), "family" => rule_family(rule),
                         "needs_classes" => needs_classes(rule), "learns_feedback" => learns_feedback(rule),
                         "params" => params_entry("rule", name)]
    end
    optimizers = map(sorted_names(OPTIMISERS)) do name
        state = optimiser_state_kind(name)
        Pair{String,Any}["name" => name, "type" => string(nameof(typeof(OPTIMISERS[name]()))), "state" => state,
                         "state_slots" => STATE_SLOT_NAMES[Symbol(state)], "params" => params_entry("optimizer", name)]
    end
    entries(section, table) = [Pair{String,Any}["name" => name, "params" => params_entry(section, name)] for name in sorted_names(table)]
    return Pair{String,Any}[
        "schema_version" => 1,
        "activations" => sorted_names(ACTIVATIONS),
        "losses" => [Pair{String,Any}["name" => name, "classes" => LOSSES[name] isa CrossEntropy] for name in sorted_names(LOSSES)],
        "rules" => rules, "optimizers" => optimizers,
        "schedules" => entries("schedule", SCHEDULES), "initialisers" => entries("initialiser", INITIALISERS),
        "layers" => entries("layer", LAYERS)]
end
schema_text() = json(schema())

# The tables the model-file readers check parameters against, by section: (field, kind) in
# constructor order. Files record an optimizer by its state's name (AdamW is "adam").
file_param_schemas(section, names) =
    Dict{String,Vector{Tuple{String,Symbol}}}(name => [(f, k) for (f, k, _) in parameters(section, name)] for name in names)
