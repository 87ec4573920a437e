# Fashion-MNIST for the Julia examples: the IDX files of Debian's dataset-fashion-mnist package
# (decompressed with `gzip -dc`), and `--name value` command-line options.

"An MNIST-format IDX file of unsigned bytes, as an array with the last dimension first (Julia's order)."
function read_idx(path)
    bytes = read(endswith(path, ".gz") ? `gzip -dc $path` : path)
    bytes[3] == 0x08 || error("$path: only unsigned-byte IDX files are supported here")
    ndims = Int(bytes[4])
    dims = [Int(ntoh(reinterpret(UInt32, bytes[5+4k:8+4k])[1])) for k in 0:ndims-1]
    return reshape(bytes[5+4ndims:end], reverse(dims)...)
end

"Images (784 x n, scaled to [0, 1], as `T`) and class labels 1..10 of the \"train\" or \"t10k\" split."
function fashion(split, T=Float32; dir=get(ENV, "PYJLFA_FASHION_MNIST", "/usr/share/datasets/fashion-mnist"))
    file(name) = (p = joinpath(dir, name); isfile(p) ? p : p * ".gz")
    images = read_idx(file("$split-images-idx3-ubyte"))
    labels = read_idx(file("$split-labels-idx1-ubyte"))
    return reshape(T.(images) ./ T(255), 784, :), Int.(labels) .+ 1
end

"The same images as 28 x 28 x 1 x n arrays (width, height, channels, n), zero-padded by `pad` on every side."
function fashion_images(split, T=Float32; pad=0, kwargs...)
    X, y = fashion(split, T; kwargs...)
    images = zeros(T, 28 + 2pad, 28 + 2pad, 1, size(X, 2))
    images[pad+1:pad+28, pad+1:pad+28, 1, :] .= reshape(X, 28, 28, :)
    return images, y
end

"The value after `--name` on the command line, parsed as the type of `default`, else `default`."
function option(name, default)
    i = findfirst(==("--$name"), ARGS)
    i === nothing && return default
    i < length(ARGS) || error("--$name needs a value")
    return default isa AbstractString ? ARGS[i+1] : parse(typeof(default), ARGS[i+1])
end
