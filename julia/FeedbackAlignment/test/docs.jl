# The documentation's Julia side: every exported name has a docstring, and every Julia code block of
# the site (docs/*.md) and the README runs (a page's blocks in order, in one fresh module, in a
# temporary folder). tests/test_docs.py runs the Python blocks and explains the markers: a block after
# `<!-- no-run: why -->` is not run; `<!-- test-replace: {"old": "new"} -->` runs it with replacements.
# Skipped when the package is not inside a checkout (no docs/ folder beside it).

const REPO = normpath(joinpath(@__DIR__, "..", "..", ".."))

"The ```julia blocks of a Markdown file: (line of the fence, code, no-run reason or nothing, replacements)."
function julia_blocks(path)
    lines = split(read(path, String), '\n')
    blocks = Tuple{Int,String,Union{String,Nothing},Vector{Pair{String,String}}}[]
    i = 1
    while i <= length(lines)
        m = match(r"^```(\w*)\s*$", lines[i])
        if m === nothing
            i += 1
            continue
        end
        start = i
        body = String[]
        i += 1
        while i <= length(lines) && rstrip(lines[i]) != "```"
            push!(body, lines[i])
            i += 1
        end
        i += 1
        m.captures[1] == "julia" || continue
        marker = start > 1 ? match(r"^<!--\s*(no-run|test-replace):\s*(.*?)\s*-->\s*$", lines[start-1]) : nothing
        reason = marker !== nothing && marker.captures[1] == "no-run" ? String(marker.captures[2]) : nothing
        # test-replace holds a JSON object of strings; Julia blocks use plain strings without escapes.
        reps = marker !== nothing && marker.captures[1] == "test-replace" ?
            [String(a) => String(b) for (a, b) in eachmatch(r"\"((?:[^\"\\]|\\.)*)\"\s*:\s*\"((?:[^\"\\]|\\.)*)\"", marker.captures[2])] :
            Pair{String,String}[]
        push!(blocks, (start, join(body, "\n"), reason, reps))
    end
    return blocks
end

doc_pages() = vcat([joinpath(REPO, "README.md")],
                   [joinpath(root, f) for (root, _, files) in walkdir(joinpath(REPO, "docs")) for f in sort(files) if endswith(f, ".md")])

@testset "docs" begin
    @testset "every exported name has a docstring, with no example code in it" begin
        meta = Docs.meta(FeedbackAlignment)
        for n in names(FeedbackAlignment)
            b = Docs.Binding(FeedbackAlignment, n)
            @test (n, haskey(meta, b)) == (n, true)
            haskey(meta, b) || continue
            for d in values(meta[b].docs)
                # The API page shows a docstring's indented signature; fenced examples would be code the
                # docs tests do not run (the module's own docstring is not on the page).
                n === :FeedbackAlignment || @test (n, occursin("```", join(string.(d.text)))) == (n, false)
            end
        end
    end

    if isdir(joinpath(REPO, "docs"))
        ran = 0
        for page in doc_pages()
          mod = Module(:DocPage)
          Core.eval(mod, :(using FeedbackAlignment))
          for (line, code, reason, reps) in julia_blocks(page)
            reason === nothing || continue
            for (a, b) in reps
                @test occursin(a, code)
                code = replace(code, a => b)
            end
            where = "$(relpath(page, REPO)):$line"
            result = mktempdir() do dir
                cd(dir) do
                    try
                        include_string(mod, code, where)
                        true
                    catch e
                        @error "the Julia block at $where raised" exception = (e, catch_backtrace())
                        false
                    end
                end
            end
            @test (where, result) == (where, true)
            ran += 1
          end
        end
        @test ran >= 5
        println("docs: ran $ran Julia blocks")
    end
end
