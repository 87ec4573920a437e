# What a pyjlfa model file means: the metadata keys, the architecture, rule, initialisers and
# optimizer state it records (docs/model-format.md is the contract both readers enforce), on top of
# the safetensors container (safetensors.jl) and its JSON (json.jl).
#
# Tensors are stored in the shape Python sees (row-major): Julia's column-major W (n_out, n_in) is
# the (n_in, n_out) tensor with the same bytes, so nothing is transposed. The metadata says how to
# rebuild the network; docs/model-format.md is the contract both readers enforce. pyjlfa/io.py
# implements the same format independently, with Python's standard library and NumPy; the
# `safetensors` package reads these files too.

const FILE_FORMAT = "pyjlfa-safetensors"
const FILE_FORMAT_VERSION = "3"   # 3: nested chains, batch norm, state; 2: layer chains; 1: dense sizes + one activation (all read)

include_dependency(joinpath(@__DIR__, "..", "Project.toml"))
const LIBRARY_VERSION = match(r"^version\s*=\s*\"([^\"]+)\""m,
                              read(joinpath(@__DIR__, "..", "Project.toml"), String))[1]

# ---------------------------------------------------------------------------------------------
# How a network is described in the metadata. A rule, initialiser or optimiser is a name from its
# registry and its parameters, taken from its fields (a nested value such as an initialiser inside
# an initialiser is again {"name": ..., "params": ...}).

const FILE_DTYPES = Dict(Float32 => ("float32", "F32"), Float64 => ("float64", "F64"))
# The initialisers a file may name, by the names files use.
const FILE_INITIALISERS = INITIALISERS
# Optimisers whose state files store, and the names of their state slots (one array per W, b and,
# under Kolen-Pollack, B).
const STATE_SLOTS_BY_NAME = Dict(string(kind) => names for (kind, names) in STATE_SLOT_NAMES)

snake_case(s) = lowercase(replace(string(s), r"(?<=[a-z0-9])(?=[A-Z])" => "_"))

# The name `x` has in `registry` (whose values are instances or types), else its type's name in snake_case.
function registry_name(registry, x)
    for (name, entry) in registry
        (entry isa Type ? x isa entry : typeof(entry) === typeof(x)) && return name
    end
    return snake_case(nameof(typeof(x)))
end

function params(x)
    T = typeof(x)
    return Pair{String,Any}[string(f) => param_value(getfield(x, f)) for f in fieldnames(T)]
end
# Direct rules record where their feedback enters only when it is not the default, so that files
# of the default stay readable by readers that predate the setting.
params(r::DFAStyle) = r.feedback_points == "layer" ? Pair{String,Any}[] : Pair{String,Any}["feedback_points" => r.feedback_points]
param_value(x::Union{Real,AbstractString,Nothing}) = x
param_value(x::AbstractVector) = Any[param_value(v) for v in x]
param_value(x::Initialiser) = Pair{String,Any}["name" => registry_name(FILE_INITIALISERS, x), "params" => params(x)]
param_value(x) = Pair{String,Any}["name" => snake_case(nameof(typeof(x))), "params" => params(x)]

# The initialisers that built the network (the tensors, not these, decide a loaded network's
# parameters). Files record one feedback initialiser: the first layer's; an array the user gave
# (`Given`) is recorded as the default, its values being in the tensors.
forward_initialiser(net::Network) = net.init
function feedback_initialiser(net::Network)
    for st in net.layers
        st.feedback_init === nothing || st.feedback_init isa Given || return st.feedback_init
    end
    return GlorotUniform()
end

function file_metadata(net::Network{T}) where {T}
    winit, binit = forward_initialiser(net), feedback_initialiser(net)
    return Pair{String,String}[
        "format" => FILE_FORMAT, "format_version" => FILE_FORMAT_VERSION,
        "library_version" => LIBRARY_VERSION, "created_by" => "FeedbackAlignment.jl (Julia $VERSION)",
        "input" => json(collect(net.insize)), "chain" => json(map(layer_text, collect(net.chain.layers))),
        "dtype" => FILE_DTYPES[T][1],
        "loss" => registry_name(LOSSES, net.loss),
        "rule" => registry_name(RULES, net.rule), "rule_params" => json(params(net.rule)),
        "init" => registry_name(FILE_INITIALISERS, winit), "init_params" => json(params(winit)),
        "feedback_init" => registry_name(FILE_INITIALISERS, binit), "feedback_init_params" => json(params(binit)),
        "seed" => string(net.seed), "feedback_seed" => string(net.feedback_seed),
        "epochs" => string(net.epochs), "rng_state" => string(net.rng.state),
        "dropout" => json(Float64[st.dropout for st in net.layers[1:end-1]])]   # typed: an empty list must stay a list
end

# ---------------------------------------------------------------------------------------------
# Optimiser state: per layer with parameters, `STATE_SLOT_NAMES[kind]` arrays for W, for b and (Kolen-Pollack) for B.

state_name(net::Network) = net.optkind === :none ? nothing : string(net.optkind)

function new_state!(net::Network, kind::AbstractString)
    haskey(STATE_SLOTS_BY_NAME, kind) || throw(ArgumentError("no optimizer state \"$kind\"; known: $(join(sort!(collect(keys(STATE_SLOTS_BY_NAME))), ", "))"))
    return new_state!(net, Symbol(kind))
end

"""
    optimiser_buffer(net, kind, create, slot, node, name)

The optimiser state array of slot `slot` (1-based) for the array `name` ("W", "gamma", ..., or "B"
under Kolen-Pollack) of node `node` (its place among `listed_nodes`, from 1), when the network holds a
state of optimiser `kind` ("sgd", "adam"); `nothing` if it holds none. With `create`, a network
without such a state first gets a zero one (replacing a state of another optimiser).
"""
function optimiser_buffer(net::Network, kind::AbstractString, create::Bool, slot::Integer, node::Integer, name::AbstractString)
    haskey(STATE_SLOTS_BY_NAME, kind) || throw(ArgumentError("no optimizer state \"$kind\"; known: $(join(sort!(collect(keys(STATE_SLOTS_BY_NAME))), ", "))"))
    1 <= slot <= length(STATE_SLOTS_BY_NAME[kind]) || throw(ArgumentError("optimizer $kind has no state slot $slot"))
    nodes = listed_nodes(net)
    1 <= node <= length(nodes) || throw(ArgumentError("no node $node; the network has $(length(nodes))"))
    create && state_name(net) != kind && new_state!(net, kind)
    state_name(net) == kind || return nothing
    for (k, A) in state_arrays(nodes[node], slot)
        k == name && return A
    end
    return nothing
end

# A node's optimiser state of slot `s`, named as its arrays are: one per parameter, and B's under Kolen-Pollack.
function state_arrays(n, s)
    n isa Node || return Pair{String,Array}[]
    out = Pair{String,Array}[string(k) => v[s] for (k, v) in pairs(n.slots) if length(v) >= s]
    length(n.sB) >= s && push!(out, "B" => n.sB[s])
    return out
end

"Every array a model file holds for the network, named by the layer's path: layers.<path>.<name>."
network_tensors(net::Network) = Pair{String,Array}["layers.$(n.path).$name" => A for n in listed_nodes(net) for (name, A) in node_arrays(n)]

# The tensors of the optimiser state, with their names: optimizer.<slot>.<path>.<name>.
state_tensors(net::Network, slots) =
    Pair{String,Array}["optimizer.$slot.$(n.path).$name" => A for (s, slot) in enumerate(slots) for n in listed_nodes(net)
                       for (name, A) in state_arrays(n, s)]

# ---------------------------------------------------------------------------------------------
# Writing

"""
    save(path, net; include_optimizer=false, optimizer=net.optimizer) -> path

Write `net` to a model file that both Julia (`load`) and Python (`pyjlfa.load`) read: its
parameters and feedback matrices, the epochs trained and the state of its generator, and what
built it (input shape, layer chain, loss, rule, initialisers, seeds, dtype); docs/model-format.md
is the format. With `include_optimizer`,
the optimiser state (SGD's velocities, Adam's moments and step count, Kolen-Pollack's B state) too,
so that training resumes exactly, and the hyperparameters of `optimizer` (by default the network's
own: the one `learn!` last used or `load` read), which `load` gives back as `net.optimizer`. The file is written to a temporary file in the
same folder and renamed, so `path` never holds a half-written file.
"""
function save(path::AbstractString, net::Network{T}; include_optimizer::Bool=false,
              optimizer=net.optimizer) where {T}
    ENDIAN_BOM == 0x04030201 || error("model files are little-endian; this machine is not")
    meta = file_metadata(net)
    tensors = network_tensors(net)
    if include_optimizer
        kind = state_name(net)
        if optimizer !== nothing
            name = registry_name(OPTIMISERS, optimizer)
            kind === nothing || kind == name ||
                throw(ArgumentError("the network holds $kind state, but optimizer is $name"))
            kind = name
            push!(meta, "optimizer_params" => json(params(optimizer)))
        end
        slots = state_name(net) === nothing ? String[] : STATE_SLOTS_BY_NAME[kind]
        push!(meta, "optimizer" => something(kind, "none"), "optimizer_slots" => json(slots),
              "optimizer_steps" => string(net.optsteps))
        append!(tensors, state_tensors(net, slots))
    end
    return write_safetensors(path, meta, tensors, FILE_DTYPES[T][2])
end

# ---------------------------------------------------------------------------------------------
# Reading

"""
    read_metadata(path) -> Dict{String,String}

The metadata of a model file (after checking its header), without loading the model.
"""
function read_metadata(path::AbstractString)
    header, _ = open_model(io -> read_header(io, path), path)
    return metadata_of(header, path)
end

function metadata_of(header, path)
    meta = get(header, "__metadata__", nothing)
    meta isa Dict{String,Any} && get(meta, "format", nothing) == FILE_FORMAT ||
        fail(path, "not a pyjlfa model file: its safetensors header has no pyjlfa metadata (__metadata__.format = \"$FILE_FORMAT\")")
    all(v -> v isa String, values(meta)) || fail(path, "corrupt header: __metadata__ values must be strings")
    version = get(meta, "format_version", "(missing)")
    version in ("1", "2", FILE_FORMAT_VERSION) ||
        fail(path, "unknown format version \"$version\"; this FeedbackAlignment reads versions 1 to $FILE_FORMAT_VERSION (is the file from a newer release?)")
    return Dict{String,String}(meta)
end

function field(meta, key, path)
    haskey(meta, key) || fail(path, "the metadata lacks \"$key\"")
    return meta[key]
end

function json_field(meta, key, path, check, expected)
    text = field(meta, key, path)
    value = try
        parse_json(text)
    catch e
        e isa JSONSyntaxError || rethrow()
        fail(path, "metadata \"$key\" is not valid JSON ($(e.msg)): $text")
    end
    check(value) || fail(path, "metadata \"$key\" must be $expected, got $text")
    return value
end

function integer_field(meta, key, path, ::Type{I}) where {I<:Union{Int64,UInt64}}
    text = field(meta, key, path)
    n = all(isdigit, text) && length(text) <= 20 ? tryparse(I, text) : nothing   # the contract's bound
    n === nothing && fail(path, "metadata \"$key\" must be an integer in [0, 2**$(I == Int64 ? 63 : 64)), got \"$text\"")
    return n
end

function lookup(table, what, name, path)
    haskey(table, name) || fail(path, "unknown $what \"$name\"; this FeedbackAlignment knows $(join(sort!(collect(keys(table))), ", "))")
    return table[name]
end

is_object(x) = x isa Dict{String,Any}

# The parameters a file may give each rule, initialiser, optimizer and schedule: the field names in
# the order of the engine's positional constructors (optimizers: its keyword constructors), and the
# kind of value each takes, from the engine's schema (schema.jl), which docs/model-format.md's table
# and pyjlfa/io.py's checks also come from. Files name an optimizer by its state (AdamW is "adam").
const FILE_OPTIMISERS = sort!(unique(optimiser_state_kind(name) for name in keys(OPTIMISERS)))
const PARAM_SCHEMAS = Dict{String,Dict{String,Vector{Tuple{String,Symbol}}}}(
    "initialiser" => file_param_schemas("initialiser", keys(INITIALISERS)),
    "rule" => file_param_schemas("rule", keys(RULES)),
    "optimizer" => file_param_schemas("optimizer", FILE_OPTIMISERS),
    "schedule" => file_param_schemas("schedule", keys(SCHEDULES)))
const FILE_SCHEDULES = SCHEDULES
# Parameters a file may leave out (added after files without them were written), and their values then.
const OPTIONAL_PARAMS = Dict{Symbol,Any}(:points => "layer")

const VALUE_KINDS = Dict{Symbol,Tuple{Function,String}}(
    kind => (x -> check_value(k, x), expected_text(k)) for (kind, k) in PARAM_KINDS if k.type in ("number", "integer", "bool", "numbers", "choice"))

"""
    from_record(kind, name, ps, path)

The rule, initialiser, optimizer or schedule (`kind`) a file names, after checking its parameters
`ps` (a JSON object) against PARAM_SCHEMAS: exactly the listed names, each of its kind of value.
"""
function from_record(kind, name, ps, path)
    schemas = PARAM_SCHEMAS[kind]
    haskey(schemas, name) || fail(path, "unknown $kind \"$name\"; this FeedbackAlignment knows $(join(sort!(collect(keys(schemas))), ", "))")
    schema = schemas[name]
    fields = first.(schema)
    required = [f for (f, what) in schema if !haskey(OPTIONAL_PARAMS, what)]
    ps isa Dict{String,Any} && issubset(keys(ps), fields) && issubset(required, keys(ps)) ||
        fail(path, "$kind \"$name\" takes the parameters ($(join(fields, ", "))), but the file gives $(ps isa Dict ? "(" * join(sort!(collect(keys(ps))), ", ") * ")" : json(ps))")
    values = map(schema) do (field, what)
        x = haskey(ps, field) ? ps[field] : OPTIONAL_PARAMS[what]
        if what === :initialiser || what === :schedule_or_null
            what === :schedule_or_null && x === nothing && return Constant()
            sub = what === :initialiser ? "initialiser" : "schedule"
            x isa Dict{String,Any} && Set(keys(x)) == Set(["name", "params"]) && x["name"] isa String ||
                fail(path, "$kind \"$name\" parameter $field must be $(sub == "schedule" ? "null or " : ""){\"name\": ..., \"params\": {...}}, got $(json(x))")
            return from_record(sub, x["name"], x["params"], path)
        end
        check, expected = VALUE_KINDS[what]
        check(x) || fail(path, "$kind \"$name\" parameter $field must be $expected, got $(json(x))")
        return x isa Vector{Any} ? Float64[v for v in x] : x   # (Float64.(Any[]) stays a Vector{Any})
    end
    if kind == "optimizer" && name == "sgd" && ps["nesterov"] && ps["momentum"] == 0
        fail(path, "optimizer \"sgd\" has nesterov true, which needs a momentum > 0")
    end
    registry = kind == "schedule" ? FILE_SCHEDULES : REGISTRIES[kind]
    try
        kind == "optimizer" && return registry[name](; (Symbol(f) => v for (f, v) in zip(fields, values))...)
        return registry[name](values...)
    catch e
        e isa InterruptException && rethrow()
        fail(path, "cannot rebuild $kind \"$name\" from $(json(ps)): $(sprint(showerror, e))")
    end
end

# The former name, for initialisers and rules (`what`): `from_record` with the same checks.
rebuild(registry, what, name, ps, path) = from_record(what, name, ps, path)

"""
    load(path) -> Network

A new network from a model file written by `save` or by Python's `Network.save`: the same
parameters, feedback matrices, epochs, generator state and (when the file has them) optimiser
state and hyperparameters, as `net.optimizer`, which `learn!` continues with when given no
`optimizer`: training continues exactly where it stopped, as after Python's `pyjlfa.load`. Throws a `ModelFileError` saying what is
wrong for a truncated or corrupt file, a safetensors file that is not a pyjlfa model, an unknown
format version, or tensors that disagree with the metadata.
"""
function load(path::AbstractString)
    ENDIAN_BOM == 0x04030201 || error("model files are little-endian; this machine is not")
    open_model(path) do io
        header, data_start = read_header(io, path)
        meta = metadata_of(header, path)
        dtype = field(meta, "dtype", path)
        T = lookup(Dict(name => T for (T, (name, _)) in FILE_DTYPES), "dtype", dtype, path)
        loss = lookup(LOSSES, "loss", field(meta, "loss", path), path)
        objects = Dict(k => json_field(meta, k, path, is_object, "a JSON object")
                       for k in ("rule_params", "init_params", "feedback_init_params"))
        rule = from_record("rule", field(meta, "rule", path), objects["rule_params"], path)
        init = from_record("initialiser", field(meta, "init", path), objects["init_params"], path)
        feedback = from_record("initialiser", field(meta, "feedback_init", path), objects["feedback_init_params"], path)
        seed, feedback_seed = integer_field(meta, "seed", path, UInt64), integer_field(meta, "feedback_seed", path, UInt64)
        epochs, rng_state = integer_field(meta, "epochs", path, Int64), integer_field(meta, "rng_state", path, UInt64)
        chain, input = file_chain(meta, path)
        # How many rates the chain takes (one per layer but the last) the engine checks as it builds it.
        dropout = haskey(meta, "dropout") ? Float64[x for x in json_field(meta, "dropout", path,
            v -> v isa Vector{Any} && all(x -> is_number(x) && 0 <= x < 1, v),
            "a list of one rate in [0, 1) per layer but the last")] : 0.0
        net = try
            Network(chain; input=input, T=T, loss=loss, rule=rule, init=init, feedback=feedback,
                    seed=seed, feedback_seed=feedback_seed, dropout=dropout,
                    max_params=(filesize(io) - data_start) ÷ 4)   # what the data could hold in the smallest dtype
        catch e   # whatever the engine refuses, the file is invalid: always a ModelFileError
            e isa InterruptException && rethrow()
            fail(path, "the metadata does not describe a network this FeedbackAlignment can build: $(sprint(showerror, e))")
        end
        kind = get(meta, "optimizer", "none")
        slots = String[]
        if kind != "none"
            haskey(STATE_SLOTS_BY_NAME, kind) || fail(path, "unknown optimizer \"$kind\"; this FeedbackAlignment knows $(join(sort!(collect(keys(STATE_SLOTS_BY_NAME))), ", "))")
            slots = String.(json_field(meta, "optimizer_slots", path,
                                       v -> v isa Vector{Any} && (isempty(v) || v == STATE_SLOTS_BY_NAME[kind]),
                                       "[] or $(json(STATE_SLOTS_BY_NAME[kind])) for $kind"))
            isempty(slots) || new_state!(net, kind)
            haskey(meta, "optimizer_steps") && (net.optsteps = integer_field(meta, "optimizer_steps", path, Int64))
            haskey(meta, "optimizer_params") && (net.optimizer = from_record("optimizer", kind,
                json_field(meta, "optimizer_params", path, is_object, "a JSON object"), path))
        end

        # The tensors this network holds, in Python's shapes (Julia is the one source of shapes).
        expected = network_tensors(net)
        append!(expected, state_tensors(net, slots))
        for (name, A) in expected
            shape = reverse(collect(size(A)))
            haskey(header, name) || fail(path, "tensor \"$name\" is missing (the metadata describes a $(field(meta, "rule", path)) network $(chain_text(net)))")
            entry = header[name]
            entry["dtype"] == FILE_DTYPES[T][2] || fail(path, "tensor \"$name\" is $(entry["dtype"]), but the metadata says dtype $dtype")
            entry["shape"] == shape || fail(path, "tensor \"$name\" has shape $(json(entry["shape"])), but the network the metadata describes ($(chain_text(net)), rule $(field(meta, "rule", path))) needs $(json(shape))")
        end
        names = Set(first.(expected))
        for name in sort!(collect(keys(header)))
            name == "__metadata__" || name in names || fail(path, "unexpected tensor \"$name\" (the metadata does not describe it)")
        end

        # Everything is checked: read the tensors straight into the network.
        for (name, A) in expected
            seek(io, data_start + header[name]["data_offsets"][1])
            read!(io, A)
        end
        net.epochs = epochs
        net.rng.state = rng_state
        return net
    end
end

chain_text(net) = "[" * join(map(layer_text, collect(net.chain.layers)), ", ") * "]"

# The layer chain and input shape a file describes: version 2 names the layers as Julia calls
# (read by the same interpreter as host specs: never evaluated); version 1 gave dense sizes and one
# hidden activation.
function file_chain(meta, path)
    if meta["format_version"] == "1"
        sizes = json_field(meta, "sizes", path, v -> v isa Vector{Any} && length(v) >= 2 && all(x -> x isa Int64 && x >= 1, v),
                           "a list of at least two positive integers")
        f = lookup(ACTIVATIONS, "activation", field(meta, "activation", path), path)
        L = length(sizes) - 1
        return Chain(Tuple(Dense(sizes[l] => sizes[l+1], l < L ? f : identity) for l in 1:L)), (Int(sizes[1]),)
    end
    input = json_field(meta, "input", path, v -> v isa Vector{Any} && length(v) in (1, 3) && all(x -> x isa Int64 && x >= 1, v),
                       "a list of 1 or 3 positive integers")
    lines = json_field(meta, "chain", path, v -> v isa Vector{Any} && !isempty(v) &&
                       all(x -> x isa String && !isempty(x) && !any(iscntrl, x), v),
                       "a non-empty list of layer calls (non-empty strings without control characters)")
    layers = map(lines) do line
        try
            layer = interpret(line, "layer")
            layer isa Layer || throw(ArgumentError("not a layer"))
            layer
        catch e
            e isa InterruptException && rethrow()
            fail(path, "metadata \"chain\" has \"$line\", which is not a layer this FeedbackAlignment builds ($(sprint(showerror, e)))")
        end
    end
    return Chain(Tuple(layers)), Tuple(Int.(input))
end

# Save and load a small network of each common kind while the package precompiles, so that a new
# process does not spend seconds inferring them.
let dir = mktempdir()
    try
        for T in (Float32, Float64), rule in (BP(), FA(), DFA())
            net = Network([3, 4, 2]; rule=rule, T=T)
            new_state!(net, :sgd)   # not step!: see FeedbackAlignment.jl
            load(save(joinpath(dir, "model.safetensors"), net; include_optimizer=true, optimizer=SGD(0.1, 0.9)))
        end
    finally
        rm(dir; recursive=true, force=true)
    end
end

