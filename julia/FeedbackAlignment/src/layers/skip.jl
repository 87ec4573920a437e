"""
    SkipConnection(layer, +)

A residual connection with the identity as its shortcut: y = layer(x) + x (Flux's name and meaning;
only `+` joins the paths). `layer` is usually a `Chain`, e.g. a ResNet basic block
`SkipConnection(Chain(Conv((3, 3), 16 => 16; pad=1, bias=false), BatchNorm(16), relu,
Conv((3, 3), 16 => 16; pad=1, bias=false), BatchNorm(16)), +)`.

    Parallel(+, main, shortcut)

The same with a shortcut of its own, e.g. a projection `Chain(Conv((1, 1), 16 => 32; stride=2,
bias=false), BatchNorm(32))` or He et al.'s option A, `PadShortcut(16 => 32)`. Both paths must give
the same shape. Backward, the error at the output reaches both paths, and the errors they carry back
to the input add up. Paths name the two `main` and `shortcut` (in model files and errors).
"""
struct SkipConnection{M<:Layer,S<:Union{Nothing,Layer}} <: Layer
    main::M
    shortcut::S          # nothing: the identity
    SkipConnection(main::Layer, shortcut::Union{Nothing,Layer}) = new{typeof(main),typeof(shortcut)}(main, shortcut)
end
function SkipConnection(main, connection)
    connection === (+) || throw(ArgumentError("SkipConnection joins its paths with +, got $connection"))
    return SkipConnection(as_layer(main), nothing)
end
"""
    Parallel(+, main, shortcut)

A residual block whose shortcut has layers of its own: y = main(x) + shortcut(x) (Flux's name; only
`+` joins the paths). It builds a `SkipConnection` with that shortcut; see `SkipConnection`.
"""
function Parallel(connection, main, shortcut)
    connection === (+) || throw(ArgumentError("Parallel joins its paths with +, got $connection"))
    return SkipConnection(as_layer(main), as_layer(shortcut))
end
LAYERS["SkipConnection"] = SkipConnection
is_block(::SkipConnection) = true
LAYERS["Parallel"] = Parallel

layer_text(l::SkipConnection) = l.shortcut === nothing ? "SkipConnection($(layer_text(l.main)), +)" :
                                "Parallel(+, $(layer_text(l.main)), $(layer_text(l.shortcut)))"

"""
    PadShortcut(cin => cout; stride = 2)
    PadShortcut()

He et al.'s parameter-free shortcut ("option A", as biotorch writes it): every `stride`-th column
and row of the input, and (cout - cin) ÷ 2 zero channels on each side. Backward, the error of the
kept positions and channels goes back to where they came from. Without arguments, as the shortcut
of a `Parallel`, it fits the main path: its channels, and stride 2 where the main path makes the
image smaller (else 1).
"""
struct PadShortcut <: Layer
    cin::Int
    cout::Int
    stride::Int
    PadShortcut() = new(0, 0, 0)     # to fit the main path it stands beside
    function PadShortcut(ch::Pair{<:Integer,<:Integer}; stride::Integer=2)
        cin, cout = first(ch), last(ch)
        cin >= 1 && cout >= cin && iseven(cout - cin) ||
            throw(ArgumentError("PadShortcut pads channels evenly on both sides: it needs 1 <= cin <= cout with cout - cin even, got $cin => $cout"))
        stride >= 1 || throw(ArgumentError("PadShortcut stride must be at least 1, got $stride"))
        return new(cin, cout, stride)
    end
end
LAYERS["PadShortcut"] = PadShortcut
layer_text(l::PadShortcut) = l.cout == 0 ? "PadShortcut()" :
                             "PadShortcut($(l.cin) => $(l.cout)$(l.stride == 2 ? "" : "; stride=$(l.stride)"))"
# The shortcut a skip connection builds: a PadShortcut() made to fit its main path.
fitted(s, insize, mainsize) = s
function fitted(s::PadShortcut, insize, mainsize)
    s.cout == 0 || return s
    length(insize) == 3 && length(mainsize) == 3 ||
        throw(ArgumentError("PadShortcut() pads images, but the block's input is $(shape_text(insize)) and its main path gives $(shape_text(mainsize))"))
    return PadShortcut(insize[3] => mainsize[3]; stride=mainsize[1:2] == insize[1:2] ? 1 : 2)
end

function output_shape(l::PadShortcut, s::Dims)
    image_input(l, s)
    s[3] == l.cin || throw(ArgumentError("$(layer_text(l)) expects $(l.cin) input channels, but receives $(s[3])"))
    return (cld(s[1], l.stride), cld(s[2], l.stride), l.cout)
end

function forward!(l::PadShortcut, n, b, x::Array{T,4}, mode) where {T}
    H, s, lo = b.H, l.stride, (l.cout - l.cin) ÷ 2
    fill!(H, zero(T))
    @inbounds for j in 1:size(x, 4), c in 1:l.cin, oy in 1:size(H, 2)
        @simd for ox in 1:size(H, 1)
            H[ox, oy, c + lo, j] = x[(ox - 1) * s + 1, (oy - 1) * s + 1, c, j]
        end
    end
end

function carry!(dx::Array{T,4}, l::PadShortcut, n, b, x, exact::Bool, acc::Bool) where {T}
    D, s, lo = b.D, l.stride, (l.cout - l.cin) ÷ 2
    acc || fill!(dx, zero(T))
    @inbounds for j in 1:size(dx, 4), c in 1:l.cin, oy in 1:size(D, 2)
        @simd for ox in 1:size(D, 1)
            dx[(ox - 1) * s + 1, (oy - 1) * s + 1, c, j] += D[ox, oy, c + lo, j]
        end
    end
    return dx
end
