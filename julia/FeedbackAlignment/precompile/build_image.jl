# Builds a Julia system image with FeedbackAlignment and the work in workload.jl compiled in, using
# only Julia's own tools (no PackageCompiler): a `julia --output-o` process loads the package and
# runs the workload on top of Julia's default image, and gcc links the object into a shared library.
#
#     julia --startup-file=no julia/FeedbackAlignment/precompile/build_image.jl [--force] [OUTPUT.so]
#     julia --startup-file=no julia/FeedbackAlignment/precompile/build_image.jl --check   # exit 1 if none is up to date
#
# Without OUTPUT, the image goes to pyjlfa's cache (`$PYJLFA_CACHE`, else `$XDG_CACHE_HOME/pyjlfa`,
# else `~/.cache/pyjlfa`), named by a key of the Julia version, the CPU, the package's folder and a
# hash of its sources, where pyjlfa looks for it; an image already there is kept (--force
# rebuilds). Start Julia with `julia -J <image>`, then `using FeedbackAlignment` loads nothing.
# The image is built for this CPU (--cpu-target=native), so it runs only on CPUs of this kind.

using Libdl, SHA

const PACKAGE = rstrip(normpath(joinpath(@__DIR__, "..")), '/')
const WORKLOAD = joinpath(@__DIR__, "workload.jl")

# The files whose contents the image compiles: any change to one makes an image stale. The same
# rule as pyjlfa/_runtime.py's `_source_hash` (tests check they agree).
function source_files(pkg=PACKAGE)
    files = ["Project.toml", joinpath("precompile", "workload.jl")]
    for (root, _, names) in walkdir(joinpath(pkg, "src")), name in names
        endswith(name, ".jl") && push!(files, relpath(joinpath(root, name), pkg))
    end
    return sort!(replace.(files, '\\' => '/'))
end

source_hash(pkg=PACKAGE) =
    bytes2hex(sha256(join(["$f $(bytes2hex(sha256(read(joinpath(pkg, f)))))\n" for f in source_files(pkg)])))

default_image() = unsafe_string(Base.JLOptions().image_file)

# Sys.CPU_NAME can be "generic" for a CPU newer than Julia's LLVM, and native code for one CPU's
# features aborts Julia on another: the key carries the CPU's flags as Linux reports them.
function cpu_flags()
    isfile("/proc/cpuinfo") || return ""
    for line in eachline("/proc/cpuinfo")
        startswith(line, "flags") && return join(split(split(line, ':'; limit=2)[2]), ' ')
    end
    return ""
end

function image_key(pkg=PACKAGE)
    material = join(["julia=$VERSION", "cpu=$(Sys.CPU_NAME)", "cpu_flags=$(cpu_flags())",
                     "base=$(default_image())",
                     "package=$pkg", "sources=$(source_hash(pkg))", ""], "\n")
    return bytes2hex(sha256(material))[1:16]
end

nonempty(name) = (v = get(ENV, name, ""); isempty(v) ? nothing : v)
cache_dir() = something(nonempty("PYJLFA_CACHE"),
                        joinpath(something(nonempty("XDG_CACHE_HOME"), joinpath(homedir(), ".cache")), "pyjlfa"))
image_prefix() = "FeedbackAlignment-julia$(VERSION)-$(Sys.CPU_NAME)-"
default_output() = joinpath(cache_dir(), image_prefix() * image_key() * ".so")

function libjulia()
    # Libdl.dlpath("libjulia") segfaults in Julia 1.5: find it among the loaded libraries.
    lib = filter(p -> startswith(basename(p), "libjulia."), Libdl.dllist())
    isempty(lib) && error("cannot find the loaded libjulia")
    return realpath(first(lib))
end

# What the `--output-o` process runs. Globals it leaves behind are in the image, so it puts
# LOAD_PATH and DEPOT_PATH back as a fresh process finds them (Base.__init__ refills them).
function generator_code()
    return """
        Base.reinit_stdio()
        pushfirst!(LOAD_PATH, $(repr(PACKAGE)))
        using FeedbackAlignment
        include($(repr(WORKLOAD)))
        ImageWorkload.run()
        empty!(LOAD_PATH); empty!(DEPOT_PATH)
        """
end

function build(output)
    mkpath(dirname(output))
    tmp = tempname(dirname(output))
    object = tmp * ".o"
    try
        julia = joinpath(Sys.BINDIR, Base.julia_exename())
        run(`$julia --startup-file=no --history-file=no --cpu-target=native -J $(default_image())
             --output-o $object -e $(generator_code())`)
        lib = libjulia()
        run(`gcc -shared -o $tmp.so -Wl,--whole-archive $object -Wl,--no-whole-archive
             -L$(dirname(lib)) -l:$(basename(lib))`)
        mv(tmp * ".so", output; force=true)     # whole or not at all: pyjlfa never sees half an image
    finally
        rm(object; force=true)
        rm(tmp * ".so"; force=true)
    end
    return output
end

# Images are ~200 MB: keep this one and the two newest others (other checkouts share the cache),
# and drop what builds that were killed left behind (temporary objects a day old).
function prune(keep)
    dir = dirname(keep)
    others = [joinpath(dir, f) for f in readdir(dir)
              if startswith(f, "FeedbackAlignment-julia") && endswith(f, ".so") && joinpath(dir, f) != keep]
    sort!(others; by=mtime, rev=true)
    foreach(f -> rm(f; force=true), others[3:end])
    for f in readdir(dir)
        path = joinpath(dir, f)
        startswith(f, "jl_") && time() - mtime(path) > 86400 && rm(path; force=true)
    end
end

function main(args)
    if args == ["--check"]
        output = default_output()
        isfile(output) || (println("no Julia system image for these sources: $output"); exit(1))
        println("Julia system image up to date: $output")
        return
    end
    force = "--force" in args
    rest = filter(a -> a != "--force", args)
    length(rest) <= 1 || error("usage: build_image.jl [--force] [OUTPUT.so]")
    output = isempty(rest) ? default_output() : abspath(rest[1])
    if isempty(rest) && isfile(output) && !force      # a path given by hand is always rebuilt
        println("image up to date: $output")
        return
    end
    seconds = @elapsed build(output)
    isempty(rest) && prune(output)
    println("image built in $(round(seconds, digits=1)) s: $output")
end

abspath(PROGRAM_FILE) == abspath(@__FILE__) && main(ARGS)
