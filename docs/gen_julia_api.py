"""The Julia API reference page, from the docstrings of the names FeedbackAlignment exports.

Documenter cannot be installed for the Julia (1.5) these machines have, so this asks Julia itself:
it loads the package from this checkout, reads each exported name's docstrings (``Docs.meta``) and
writes them out as Markdown, one section per name. ``docs/hooks.py`` calls :func:`julia_api_markdown`
while MkDocs builds the site, so the page is never stale; ``python docs/gen_julia_api.py`` prints it.
"""

import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "julia", "FeedbackAlignment")

# Prints a JSON list of {name, kind, docs: [docstring, ...]} for every exported name, in name order.
# (Julia 1.5 has no Docs.hasdoc; a documented binding is a key of the module's Docs.meta.)
_SCRIPT = r"""
using FeedbackAlignment
const M = FeedbackAlignment
meta = Docs.meta(M)
text(d) = d.object === nothing ? join(string.(d.text)) : string(d.object)
out = String[]
for n in sort(filter(n -> n !== :FeedbackAlignment, names(M)))
    b = Docs.Binding(M, n)
    docs = haskey(meta, b) ? [text(meta[b].docs[s]) for s in meta[b].order] : String[]
    v = getfield(M, n)
    kind = v isa DataType && isabstracttype(v) ? "abstract type" : v isa Type ? "type" : v isa Function ? "function" : "constant"
    push!(out, "{" * join(["\"name\":" * repr(string(n)), "\"kind\":" * repr(kind),
                           "\"docs\":[" * join(map(repr, docs), ",") * "]"], ",") * "}")
end
print("[", join(out, ","), "]")
"""


def julia_docstrings(julia=None):
    """Run Julia on this checkout's package and return its exported names' docstrings.

    Parameters
    ----------
    julia : str, optional
        The julia executable (default: ``PYJLFA_JULIA`` or the ``julia`` on ``PATH``).

    Returns
    -------
    list of dict
        One ``{"name", "kind", "docs"}`` entry per exported name; ``docs`` is a list of docstrings
        (one per documented method or signature), empty when the name has none.
    """
    julia = julia or os.environ.get("PYJLFA_JULIA") or shutil.which("julia")
    if not julia:
        raise RuntimeError("no julia on PATH (or PYJLFA_JULIA): the Julia API page needs one")
    env = {**os.environ, "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS", "1")}
    result = subprocess.run([julia, "--startup-file=no", f"--project={PACKAGE}", "-e", _SCRIPT],
                            capture_output=True, text=True, env=env, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"julia could not list the package's docstrings:\n{result.stderr}")
    # Julia's repr of a String is a valid JSON string for the text docstrings hold
    # ("\$" is Julia's escape of a dollar sign, which JSON does not know).
    return json.loads(result.stdout.replace("\\$", "$"))


def _demote(doc):
    """A docstring's Markdown with its headings moved below the page's, and its first indented
    block (Julia's convention: the signature) fenced as Julia code."""
    lines, out, i = doc.strip("\n").split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            out.append("###" + line)
        elif line.startswith("    ") and (not out or not out[-1].strip()) and not any(l.startswith("```") for l in out):
            block = []
            while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
                block.append(lines[i][4:])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            out += ["```julia", *block, "```", ""]
            continue
        else:
            out.append(line)
        i += 1
    return "\n".join(out)


def julia_api_markdown(entries=None):
    """The page's Markdown: an introduction, then one section per exported name.

    Parameters
    ----------
    entries : list of dict, optional
        What :func:`julia_docstrings` returns (it is called when not given).

    Returns
    -------
    str
        The page. A name without a docstring is listed as such (tests/test_docs.py fails on one).
    """
    entries = julia_docstrings() if entries is None else entries
    parts = ["# Julia API",
             "",
             "Every name `FeedbackAlignment` exports, with its docstring (generated from the package's",
             "source while the site is built, by `docs/gen_julia_api.py`). In the REPL, `?Name` shows",
             "the same text. The guide pages show these in use; signature blocks below are not runnable",
             "examples.",
             ""]
    for e in entries:
        parts += [f"## `{e['name']}`", "", f"*{e['kind']}*", ""]
        if not e["docs"]:
            parts += ["(no docstring)", ""]
        for doc in e["docs"]:
            parts += [_demote(doc), ""]
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(julia_api_markdown())
