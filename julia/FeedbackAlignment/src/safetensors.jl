# Model files in the safetensors layout (https://github.com/huggingface/safetensors):
#
#     8 bytes   n, the header length (unsigned, little-endian)
#     n bytes   a JSON object, padded with spaces so that the data starts at a multiple of 8:
#               {"__metadata__": {string: string, ...},
#                "layers.0.W": {"dtype": "F32", "shape": [784, 256], "data_offsets": [0, 802816]}, ...}
#     the rest  the tensors' raw little-endian bytes, back to back (offsets count from here)
#
# This file is the container only (header, dtypes, offsets, atomic writes); modelfile.jl says what a
# pyjlfa file means. pyjlfa/_safetensors.py implements the same container independently.

const MAX_HEADER_BYTES = 100_000_000   # the safetensors package's own limit

"A model file that cannot be read, and why."
struct ModelFileError <: Exception
    path::String
    msg::String
end
Base.showerror(io::IO, e::ModelFileError) = print(io, "cannot load model file ", e.path, ": ", e.msg)

fail(path, msg) = throw(ModelFileError(path, msg))

# Run f(io) on the model file at `path`, opened for reading.
function open_model(f, path::AbstractString)
    isdir(path) && fail(path, "it is a folder, not a file")
    return open(f, path, "r")
end

"""
    read_header(io, path) -> (header, data_start)

The parsed JSON header of the safetensors file open in `io`, with every tensor's entry checked
(dtype, shape, data_offsets) and the offsets checked to tile the data section exactly.
"""
function read_header(io::IO, path)
    total = filesize(io)
    total >= 8 || fail(path, "truncated file: $total bytes, but a model file starts with an 8-byte header length")
    seekstart(io)
    n = ltoh(read(io, UInt64))
    n <= MAX_HEADER_BYTES || fail(path, "the header length field says $n bytes, more than the $MAX_HEADER_BYTES a header may have (corrupt file, or not a safetensors file)")
    n <= total - 8 || fail(path, "truncated file: the header length field says $n bytes, but only $(total - 8) bytes follow it")
    header = try
        parse_json(read(io, Int(n)))
    catch e
        e isa JSONSyntaxError || rethrow()
        fail(path, "corrupt header: $(e.msg) (not valid JSON)")
    end
    header isa Dict{String,Any} || fail(path, "corrupt header: it is not a JSON object")
    data_start, data_length = 8 + Int(n), total - 8 - Int(n)
    spans = Tuple{Int,Int,String}[]
    for (name, entry) in header
        name == "__metadata__" && continue
        entry isa Dict{String,Any} && haskey(entry, "dtype") && haskey(entry, "shape") && haskey(entry, "data_offsets") ||
            fail(path, "corrupt header: tensor \"$name\" needs dtype, shape and data_offsets")
        shape, offsets = entry["shape"], entry["data_offsets"]
        shape isa Vector{Any} && all(x -> x isa Int64 && x >= 0, shape) ||
            fail(path, "corrupt header: tensor \"$name\" has shape $(json(shape)), not a list of non-negative integers")
        offsets isa Vector{Any} && length(offsets) == 2 && all(x -> x isa Int64 && x >= 0, offsets) && offsets[1] <= offsets[2] ||
            fail(path, "corrupt header: tensor \"$name\" has data_offsets $(json(offsets)), not [begin, end] with begin <= end")
        itemsize = get(Dict("F32" => 4, "F64" => 8), entry["dtype"], 0)
        itemsize > 0 || fail(path, "tensor \"$name\" has dtype $(json(entry["dtype"])); model files hold F32 or F64")
        nbytes = try
            foldl(Base.checked_mul, shape; init=itemsize)
        catch e
            e isa OverflowError || rethrow()
            fail(path, "tensor \"$name\" has an impossibly large shape $(json(shape))")
        end
        offsets[2] - offsets[1] == nbytes ||
            fail(path, "tensor \"$name\" of shape $(json(shape)) needs $nbytes bytes, but its data_offsets $(json(offsets)) span $(offsets[2] - offsets[1])")
        push!(spans, (offsets[1], offsets[2], name))
    end
    at = 0
    for (first, last, name) in sort!(spans)
        first == at || fail(path, "tensor \"$name\" starts at data byte $first, but the previous tensor ends at $at (overlap or gap)")
        at = last
    end
    at == data_length || fail(path, at > data_length ?
        "truncated file: the tensors need $at bytes of data, but only $data_length follow the header" :
        "$(data_length - at) bytes follow the last tensor (corrupt file)")
    return header, data_start
end


"""
    write_safetensors(path, meta, tensors, dtype) -> path

Write the `tensors` (name => array pairs, all of safetensors dtype `dtype`, stored in the shape
Python sees) and the `meta` strings as a safetensors file, atomically (see `atomic_write`).
"""
function write_safetensors(path, meta, tensors, dtype)
    header = Pair{String,Any}["__metadata__" => meta]
    offset = 0
    for (name, A) in tensors
        push!(header, name => Pair{String,Any}["dtype" => dtype, "shape" => reverse(collect(size(A))),
                                               "data_offsets" => [offset, offset + sizeof(A)]])
        offset += sizeof(A)
    end
    text = json(header)
    text *= " "^(mod(-ncodeunits(text), 8))   # the data starts at a multiple of 8
    atomic_write(path) do io
        write(io, htol(UInt64(ncodeunits(text))))
        write(io, text)
        foreach(t -> write(io, t[2]), tensors)
    end
    return path
end

"Run `f(io)` on a new temporary file next to `path`, then rename it to `path`; on failure remove it."
function atomic_write(f, path::AbstractString)
    path = abspath(path)
    isdir(dirname(path)) || throw(ArgumentError("cannot write $path: the folder $(dirname(path)) does not exist"))
    isdir(path) && throw(ArgumentError("cannot write $path: it is a folder"))
    flags = Base.Filesystem.JL_O_CREAT | Base.Filesystem.JL_O_EXCL | Base.Filesystem.JL_O_WRONLY
    tmp, io = "", nothing
    for attempt in 1:100   # O_EXCL: never reuse a file someone else made
        tmp = joinpath(dirname(path), ".$(basename(path)).$(getpid()).$(string(time_ns() % 0xfffff, base=16)).tmp")
        try
            io = Base.Filesystem.open(tmp, flags, 0o666)
            break
        catch e
            (e isa Base.IOError && ispath(tmp) && attempt < 100) || rethrow()
        end
    end
    done = false
    try
        try
            f(io)
            Sys.isunix() && ccall(:fsync, Cint, (Cint,), reinterpret(Cint, io.handle))
        finally
            close(io)
        end
        Base.Filesystem.rename(tmp, path)   # atomic; `mv(; force=true)` would delete `path` first
        done = true
    finally
        done || rm(tmp; force=true)
    end
    return path
end
