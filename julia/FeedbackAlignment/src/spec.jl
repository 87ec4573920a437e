# Hosts describe what they want in Julia's own call syntax, restricted to literals, e.g.
#     "wm(noise_std=0.5, steps=2)"   "sparse(0.1, init=normal(0.05))"   "sgd(0.1, momentum=0.9)"
# The text is parsed with Meta.parse and interpreted here (never evaluated): a call's name must be
# in the registry for that kind of value, and its arguments are numbers, booleans, strings,
# vectors of those, `nothing`, or further calls from the same registries.

const INITIALISERS = Dict{String,Any}(
    "glorot_uniform" => GlorotUniform, "glorot_normal" => GlorotNormal, "he_uniform" => HeUniform,
    "he_normal" => HeNormal, "lecun_uniform" => LeCunUniform, "lecun_normal" => LeCunNormal,
    "uniform" => Uniform, "normal" => Normal, "orthogonal" => Orthogonal, "sparse" => Sparse,
    "sign_concordant" => SignConcordant, "zeros" => Zeros)

const REGISTRIES = Dict{String,Dict{String,Any}}(
    "layer" => LAYERS, "rule" => RULES, "initialiser" => INITIALISERS, "optimizer" => OPTIMISERS, "schedule" => SCHEDULES)

"""
    interpret(text, kind)

The value `text` (a call like `"sgd(0.1, momentum=0.9)"` or a bare name like `"fa"`) describes,
built from the registry of `kind` ("rule", "initialiser", "optimizer", "schedule").
"""
function interpret(text::AbstractString, kind::AbstractString)
    expr = try
        Meta.parse(text)
    catch e
        throw(ArgumentError("cannot read the $kind \"$text\": $(sprint(showerror, e))"))
    end
    return build(expr, kind, text)
end

function build(expr, kind, text)
    # An activation alone is a layer of its own (a layer line "relu", or `relu` inside a Chain).
    kind == "layer" && expr isa Symbol && haskey(ACTIVATIONS, string(expr)) && return Activation(ACTIVATIONS[string(expr)])
    registry = REGISTRIES[kind]
    name = expr isa Symbol ? string(expr) :
           expr isa Expr && expr.head == :call && expr.args[1] isa Symbol ? string(expr.args[1]) : nothing
    kind == "rule" && name !== nothing && (name = lowercase(name))   # rule names are case-insensitive: uSF, USF, usf
    name === nothing || haskey(registry, name) || throw(ArgumentError(
        "unknown $kind \"$name\"; expected one of $(join(sort!(collect(keys(registry))), ", "))"))
    if expr isa Symbol
        return registry[name]()
    elseif name !== nothing
        args, kwargs = Any[], Pair{Symbol,Any}[]
        for a in expr.args[2:end]
            if a isa Expr && a.head in (:kw, :(=)) && a.args[1] isa Symbol
                push!(kwargs, a.args[1] => literal(a.args[2], text))
            elseif a isa Expr && a.head == :parameters
                for p in a.args
                    push!(kwargs, p.args[1] => literal(p.args[2], text))
                end
            else
                push!(args, literal(a, text))
            end
        end
        return registry[name](args...; kwargs...)
    end
    throw(ArgumentError("cannot read the $kind \"$text\": expected a name or a call such as name(1.0, key=2)"))
end

function literal(x, text)
    x isa Union{Number,Bool,String} && return x
    x === :nothing && return nothing
    x isa Symbol && haskey(ACTIVATIONS, string(x)) && return ACTIVATIONS[string(x)]   # a layer's activation
    x isa Expr && x.head == :tuple && return Tuple(literal(v, text) for v in x.args)
    x isa Expr && x.head == :call && x.args[1] === :(=>) && length(x.args) == 3 &&
        return literal(x.args[2], text) => literal(x.args[3], text)
    x isa Expr && x.head == :vect && return [literal(v, text) for v in x.args]
    x === :+ && return (+)     # how a skip connection joins its paths
    x isa Expr && x.head == :call && x.args[1] === :- && length(x.args) == 2 && x.args[2] isa Number && return -x.args[2]
    if x isa Expr && x.head == :call && x.args[1] isa Symbol
        name = string(x.args[1])
        for kind in ("initialiser", "schedule", "layer")   # layers: the ones inside a container
            haskey(REGISTRIES[kind], name) && return build(x, kind, text)
        end
    end
    x isa Symbol && throw(ArgumentError("cannot read \"$text\": unknown name $(repr(x)); a layer's activation is one of " *
                                        join(sort!(collect(keys(ACTIVATIONS))), ", ")))
    throw(ArgumentError("cannot read \"$text\": $(repr(x)) is not a literal value"))
end
