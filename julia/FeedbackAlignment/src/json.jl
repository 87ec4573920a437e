# JSON (RFC 8259, strict, as docs/model-format.md says): a writer for the values model files
# and the engine's schema hold, and a parser for the same subset (objects, arrays, strings,
# numbers, true/false/null), strict and bounded in depth.


json(x) = sprint(json, x)
json(io::IO, x::Bool) = print(io, x ? "true" : "false")
json(io::IO, x::Integer) = print(io, x)
json(io::IO, ::Nothing) = print(io, "null")
function json(io::IO, x::AbstractFloat)
    isfinite(x) || throw(ArgumentError("$x cannot be written as JSON"))
    print(io, repr(Float64(x)))   # the shortest text that reads back to the same Float64
end
function json(io::IO, s::AbstractString)
    print(io, '"')
    for c in s
        c == '"' ? print(io, "\\\"") : c == '\\' ? print(io, "\\\\") :
        c < ' ' ? print(io, "\\u", string(UInt32(c), base=16, pad=4)) : print(io, c)
    end
    print(io, '"')
end
function json(io::IO, v::Union{AbstractVector,Tuple})
    print(io, '[')
    for (i, x) in enumerate(v)
        i > 1 && print(io, ',')
        json(io, x)
    end
    print(io, ']')
end
function json(io::IO, d::AbstractVector{<:Pair})   # an object, keys in the given order
    print(io, '{')
    for (i, (k, v)) in enumerate(d)
        i > 1 && print(io, ',')
        json(io, string(k))
        print(io, ':')
        json(io, v)
    end
    print(io, '}')
end
json(io::IO, d::AbstractDict) = json(io, sort!([string(k) => v for (k, v) in d]; by=first))

mutable struct JSONReader
    s::Vector{UInt8}
    i::Int
    depth::Int
end

struct JSONSyntaxError <: Exception
    msg::String
end
Base.showerror(io::IO, e::JSONSyntaxError) = print(io, e.msg)

"""
    parse_json(text)

The value of a JSON text: objects as `Dict{String,Any}` (a repeated key is an error), arrays as
`Vector{Any}`, integers as `Int64`, other numbers as `Float64`, and `true`, `false`, `nothing`.
"""
function parse_json(text::Union{AbstractString,AbstractVector{UInt8}})
    bytes = Vector{UInt8}(codeunits(text isa AbstractString ? String(text) : String(copy(text))))
    isvalid(String, bytes) || throw(JSONSyntaxError("not valid UTF-8"))
    r = JSONReader(bytes, 1, 0)
    value = read_value(r)
    skip_space(r)
    r.i <= length(r.s) && json_fail(r, "unexpected text after the JSON value")
    return value
end

json_fail(r::JSONReader, msg) = throw(JSONSyntaxError("$msg at byte $(r.i)"))
peek_byte(r::JSONReader) = r.i <= length(r.s) ? r.s[r.i] : json_fail(r, "unexpected end of text")
function skip_space(r::JSONReader)
    while r.i <= length(r.s) && r.s[r.i] in (UInt8(' '), UInt8('\t'), UInt8('\n'), UInt8('\r'))
        r.i += 1
    end
end
function expect(r::JSONReader, c::Char)
    skip_space(r)
    peek_byte(r) == UInt8(c) || json_fail(r, "expected '$c'")
    r.i += 1
end

function read_value(r::JSONReader)
    skip_space(r)
    c = Char(peek_byte(r))
    c == '{' && return read_object(r)
    c == '[' && return read_array(r)
    c == '"' && return read_string(r)
    (c == '-' || isdigit(c)) && return read_number(r)
    for (word, value) in (("true", true), ("false", false), ("null", nothing))
        if r.i + length(word) - 1 <= length(r.s) && String(r.s[r.i:r.i+length(word)-1]) == word
            r.i += length(word)
            return value
        end
    end
    json_fail(r, "unexpected character '$c'")
end

function nest(f, r::JSONReader)
    (r.depth += 1) > 64 && json_fail(r, "nested deeper than 64 levels")
    value = f()
    r.depth -= 1
    return value
end

function read_object(r::JSONReader)
    nest(r) do
        d = Dict{String,Any}()
        r.i += 1
        skip_space(r)
        peek_byte(r) == UInt8('}') && (r.i += 1; return d)
        while true
            skip_space(r)
            peek_byte(r) == UInt8('"') || json_fail(r, "expected a string key")
            at = r.i
            key = read_string(r)
            haskey(d, key) && throw(JSONSyntaxError("key \"$key\" appears twice (at byte $at)"))
            expect(r, ':')
            d[key] = read_value(r)
            skip_space(r)
            peek_byte(r) == UInt8('}') && (r.i += 1; return d)
            expect(r, ',')
        end
    end
end

function read_array(r::JSONReader)
    nest(r) do
        v = Any[]
        r.i += 1
        skip_space(r)
        peek_byte(r) == UInt8(']') && (r.i += 1; return v)
        while true
            push!(v, read_value(r))
            skip_space(r)
            peek_byte(r) == UInt8(']') && (r.i += 1; return v)
            expect(r, ',')
        end
    end
end

function read_hex4(r::JSONReader)
    r.i + 3 <= length(r.s) || json_fail(r, "unfinished \\u escape")
    code = tryparse(UInt16, String(r.s[r.i:r.i+3]); base=16)
    code === nothing && json_fail(r, "bad \\u escape")
    r.i += 4
    return code
end

function read_string(r::JSONReader)
    r.i += 1   # the opening quote
    out = IOBuffer()
    while true
        b = peek_byte(r)
        if b == UInt8('"')
            r.i += 1
            return String(take!(out))
        elseif b == UInt8('\\')
            r.i += 1
            e = Char(peek_byte(r))
            r.i += 1
            if e == 'u'
                code = UInt32(read_hex4(r))
                if 0xd800 <= code <= 0xdbff   # a surrogate pair
                    r.i + 1 <= length(r.s) && r.s[r.i] == UInt8('\\') && r.s[r.i+1] == UInt8('u') ||
                        json_fail(r, "unpaired surrogate in \\u escape")
                    r.i += 2
                    low = UInt32(read_hex4(r))
                    0xdc00 <= low <= 0xdfff || json_fail(r, "unpaired surrogate in \\u escape")
                    code = 0x10000 + ((code - 0xd800) << 10) + (low - 0xdc00)
                elseif 0xdc00 <= code <= 0xdfff
                    json_fail(r, "unpaired surrogate in \\u escape")
                end
                print(out, Char(code))
            else
                i = findfirst(==(e), "\"\\/bfnrt")
                i === nothing && json_fail(r, "unknown escape \\$e")
                print(out, "\"\\/\b\f\n\r\t"[i])
            end
        elseif b < 0x20
            json_fail(r, "control character in a string")
        else
            write(out, b)
            r.i += 1
        end
    end
end

function read_number(r::JSONReader)
    start = r.i
    digits() = (n = r.i; while r.i <= length(r.s) && UInt8('0') <= r.s[r.i] <= UInt8('9'); r.i += 1; end; r.i > n)
    r.i <= length(r.s) && r.s[r.i] == UInt8('-') && (r.i += 1)
    leading_zero = r.i <= length(r.s) && r.s[r.i] == UInt8('0')
    digits() || json_fail(r, "bad number")
    leading_zero && r.i - start > 1 + (r.s[start] == UInt8('-')) && json_fail(r, "number with a leading zero")
    integer = true
    if r.i <= length(r.s) && r.s[r.i] == UInt8('.')
        r.i += 1
        integer = false
        digits() || json_fail(r, "bad number")
    end
    if r.i <= length(r.s) && r.s[r.i] in (UInt8('e'), UInt8('E'))
        r.i += 1
        r.i <= length(r.s) && r.s[r.i] in (UInt8('+'), UInt8('-')) && (r.i += 1)
        integer = false
        digits() || json_fail(r, "bad number")
    end
    text = String(r.s[start:r.i-1])
    if integer
        n = tryparse(Int64, text)
        n === nothing && (r.i = start; json_fail(r, "integer $text does not fit in 64 bits"))
        return n
    end
    # A number that overflows Float64, or underflows to zero from a non-zero text, is refused
    # (tryparse gives nothing for both), as docs/model-format.md says.
    x = tryparse(Float64, text)
    x === nothing && (r.i = start; json_fail(r, "number $text is outside Float64's range"))
    return x
end
