"""The documentation: docstrings, the code blocks of the site and the README, the site's build, and
the built site in a browser.

- Every public Python name has a numpydoc docstring: a ``Parameters`` section naming each argument
  of a function, method or class (its constructor's).
- Every code block of README.md and docs/*.md runs: Python blocks here (a page's blocks in order, in
  one namespace, in a temporary folder), Julia blocks in julia/FeedbackAlignment/test/docs.jl, TOML
  blocks are checked as sweep specs. A block that must not run carries ``<!-- no-run: why -->`` on
  the line before it; ``<!-- test-replace: {"old": "new"} -->`` runs it with those replacements
  (small data where the page shows a long run). ``text`` blocks are output, not code.
- ``mkdocs build --strict`` succeeds (broken links, missing references, griffe's docstring warnings).
- The built site, served on 127.0.0.1 and opened in headless Chromium: the search finds
  "Kolen-Pollack", and the pages load their figures.
"""

import functools
import http.server
import importlib
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")

# The modules whose public names are documented on the site (pyjlfa's own private modules start with _).
PUBLIC_MODULES = ["pyjlfa", "pyjlfa.network", "pyjlfa.layers", "pyjlfa.optimizers", "pyjlfa.init", "pyjlfa.rules",
                  "pyjlfa.io", "pyjlfa.datasets", "pyjlfa.diagnostics", "pyjlfa.experiments", "pyjlfa.sklearn",
                  "pyjlfa.sweep", "pyjlfa.plots", "pyjlfa.cli", "pyjlfa.robustness"]


# -- the pages' code blocks -------------------------------------------------------------------------

def pages():
    """README.md and every Markdown page under docs/, as paths relative to the repository."""
    found = ["README.md"]
    for folder, _, files in os.walk(DOCS):
        found += sorted(os.path.relpath(os.path.join(folder, f), ROOT) for f in files if f.endswith(".md"))
    return found


_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*(no-run|test-replace):\s*(.*?)\s*-->\s*$")


def code_blocks(page):
    """The fenced code blocks of a page: dicts with ``lang``, ``code``, ``line`` (the fence's, 1-based)
    and ``no_run`` (the reason given) or ``replace`` (a dict) from a marker on the line before."""
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        lines = f.read().split("\n")
    blocks, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and lines[i].rstrip() != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise AssertionError(f"{page}:{start + 1}: a code block is not closed")
        block = {"lang": m.group(1), "code": "\n".join(body) + "\n", "line": start + 1}
        marker = _MARKER.match(lines[start - 1]) if start > 0 else None
        if marker and marker.group(1) == "no-run":
            assert marker.group(2), f"{page}:{start + 1}: say why the block does not run"
            block["no_run"] = marker.group(2)
        elif marker:
            block["replace"] = json.loads(marker.group(2))
        blocks.append(block)
        i += 1
    return blocks


def runnable(block, page):
    """The block's code with its test replacements made (each must occur in it)."""
    code = block["code"]
    for old, new in block.get("replace", {}).items():
        assert old in code, f"{page}:{block['line']}: test-replace text {old!r} is not in the block"
        code = code.replace(old, new)
    return code


def test_every_block_runs_or_says_why():
    """Python and Julia blocks run (below, and in the Julia suite), TOML blocks are checked; shell
    blocks must carry a no-run marker; ``text`` blocks are output. Prints the counts."""
    counts = {}
    for page in pages():
        for b in code_blocks(page):
            where = f"{page}:{b['line']}"
            if "no_run" in b:
                kind = "not run (marked)"
            elif b["lang"] in ("python", "julia"):
                kind = f"{b['lang']}, run"
            elif b["lang"] == "toml":
                kind = "toml, checked as a sweep spec"
            elif b["lang"] == "text":
                kind = "text (output)"
            else:
                raise AssertionError(f"{where}: a {b['lang'] or 'plain'} block must run (python, julia), be output "
                                     f"(text) or say why it does not run (<!-- no-run: ... -->)")
            counts[kind] = counts.get(kind, 0) + 1
    print(json.dumps(counts, indent=1))
    assert counts.get("python, run", 0) > 10 and counts.get("julia, run", 0) > 5


PYTHON_PAGES = [p for p in pages() if any(b["lang"] == "python" and "no_run" not in b for b in code_blocks(p))]


@pytest.mark.parametrize("page", PYTHON_PAGES)
def test_python_blocks(page, tmp_path, monkeypatch):
    """A page's Python blocks, in order, in one namespace, in a temporary folder."""
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    for b in code_blocks(page):
        if b["lang"] != "python" or "no_run" in b:
            continue
        code = compile(runnable(b, page), f"{page}:{b['line']}", "exec")
        try:
            exec(code, namespace)
        except Exception as e:
            raise AssertionError(f"{page}: the block at line {b['line']} raised {type(e).__name__}: {e}") from e


def test_toml_blocks_are_valid_sweep_specs():
    from pyjlfa.sweep import plan
    checked = 0
    for page in pages():
        for b in code_blocks(page):
            if b["lang"] == "toml" and "no_run" not in b:
                data, runs, varying = plan(tomllib.loads(b["code"]))
                assert runs, f"{page}:{b['line']}: the spec has no runs"
                checked += 1
    assert checked >= 1


def test_the_block_parser_reads_markers(tmp_path, monkeypatch):
    page = tmp_path / "p.md"
    page.write_text('text\n<!-- no-run: slow -->\n```bash\nsleep 3600\n```\n'
                    '<!-- test-replace: {"10": "1"} -->\n```python\nx = 10\n```\n```julia\ny = 2\n```\n')
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    blocks = code_blocks("p.md")
    assert [b["lang"] for b in blocks] == ["bash", "python", "julia"]
    assert blocks[0]["no_run"] == "slow" and blocks[0]["line"] == 3
    assert runnable(blocks[1], "p.md") == "x = 1\n" and "no_run" not in blocks[2]


# -- docstrings -----------------------------------------------------------------------------------

def public_names():
    """(qualified name, object) for every public function, class, method and property."""
    seen = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        seen.append((module_name, module))
        names = getattr(module, "__all__", None)
        if names is None:
            names = [n for n, o in vars(module).items() if not n.startswith("_") and
                     getattr(o, "__module__", None) == module_name and (inspect.isclass(o) or inspect.isfunction(o))]
        for name in names:
            obj = getattr(module, name)
            if inspect.ismodule(obj) or not (inspect.isclass(obj) or callable(obj)):
                continue
            seen.append((f"{module_name}.{name}", obj))
            if inspect.isclass(obj):
                for attr, value in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    if isinstance(value, (staticmethod, classmethod)):
                        value = value.__func__
                    if inspect.isfunction(value) or isinstance(value, property):
                        seen.append((f"{module_name}.{name}.{attr}", value))
    return seen


def _documented_parameters(doc):
    """The names listed in a numpydoc Parameters section (None when there is no such section)."""
    m = re.search(r"^Parameters\n-{3,}\n(.*?)(?=^\S[^\n]*\n-{3,}\n|\Z)", doc, re.M | re.S)
    if not m:
        return None
    names = set()
    for line in m.group(1).split("\n"):
        head = re.match(r"^(\*{0,2}[A-Za-z_][\w, *]*?)\s*(:|$)", line)
        if head and not line.startswith(" "):
            names.update(n.strip().lstrip("*") for n in head.group(1).split(","))
    return names


def _arguments(obj):
    """The arguments a caller passes (not self/cls), or () for what takes none."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    if inspect.isclass(obj) and target is object.__init__:
        return ()
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return ()
    if params and params[0].name in ("self", "cls"):
        params = params[1:]
    return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def test_every_public_python_name_has_a_numpydoc_docstring():
    missing, undocumented = [], []
    for qualname, obj in public_names():
        doc = inspect.getdoc(obj) or ""   # a property: its own doc, else its getter's
        if not doc.strip():
            missing.append(qualname)
            continue
        if inspect.ismodule(obj) or isinstance(obj, property):
            continue
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            continue
        args = _arguments(obj)
        if not args:
            continue
        listed = _documented_parameters(doc)
        if listed is None:
            undocumented.append(f"{qualname}: no Parameters section")
        elif set(args) - listed:
            undocumented.append(f"{qualname}: Parameters leaves out {sorted(set(args) - listed)}")
    assert not missing, "no docstring: " + ", ".join(missing)
    assert not undocumented, "not numpydoc:\n" + "\n".join(undocumented)


def test_the_docstring_check_can_fail():
    def documented(a, b=1):
        """Do it.

        Parameters
        ----------
        a : int
            One.
        b, c : int
            Two.
        """

    def half(a, b):
        """Do it.

        Parameters
        ----------
        a : int
        """

    assert _documented_parameters(inspect.getdoc(documented)) >= {"a", "b"}
    assert _documented_parameters(inspect.getdoc(half)) == {"a"} and _documented_parameters("Do it.") is None


# -- the site ---------------------------------------------------------------------------------------

def _build(site_dir):
    """``pyjlfa docs --build-only``: ``mkdocs build --strict`` on the repository's mkdocs.yml."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "pyjlfa", "docs", "--build-only", "--out", str(site_dir)],
                            capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    return site_dir


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built once for this module's tests by ``pyjlfa docs --build-only`` (``mkdocs build --strict``)."""
    pytest.importorskip("mkdocs")
    return _build(tmp_path_factory.mktemp("site"))


@pytest.mark.subprocess
def test_site_builds_strict_with_every_page(site):
    for page in ["index", "getting-started", "layers", "rules", "feedback", "optimizers", "alignment", "model-files",
                 "julia", "sklearn", "sweeps", "cli", "robustness", "results", "performance", "how-it-works",
                 "model-format", "contributing", "api/python", "api/julia"]:
        assert (site / page / "index.html").is_file() or (page == "index" and (site / "index.html").is_file()), page
    julia_api = (site / "api" / "julia" / "index.html").read_text()
    python_api = (site / "api" / "python" / "index.html").read_text()
    assert "learn!" in julia_api and "KolenPollack" in julia_api and "(no docstring)" not in julia_api
    assert "FeedbackAlignmentClassifier" in python_api and "feedback_seed" in python_api
    assert "2-D convolution" in python_api   # members' descriptions are shown
    # The only code on the API pages is signatures (docstrings hold no examples: the guide's, which run, do).
    assert not re.findall(r'<div class="(?:language-\w+ )?highlight">', python_api)
    rules = (site / "rules" / "index.html").read_text()
    assert "noise_std" in rules and "schema: rules" not in rules   # the schema's table was put in


class _Recorder(http.server.SimpleHTTPRequestHandler):
    """Serves the site and records what the browser fetched, with the status."""

    fetched = []

    def log_message(self, fmt, *args):
        pass

    def send_response(self, code, message=None):
        type(self).fetched.append((self.path.split("?")[0], code))
        super().send_response(code, message)


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


class _Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: it reads
    commands on fd 3 and answers on fd 4, here its stdin and stdout), so a test can wait for what a
    page's scripts do (Material's search runs in a web worker) and read the live DOM."""

    def __init__(self):
        self.proc = subprocess.Popen(
            ["sh", "-c", 'exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null', _chromium(), "--headless",
             "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--remote-debugging-pipe",
             "--window-size=1280,900", "about:blank"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL)
        self.next_id, self.buffer, self.session = 0, b"", None

    def send(self, method, session=True, **params):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if session and self.session:
            message["sessionId"] = self.session
        self.proc.stdin.write(json.dumps(message).encode() + b"\0")
        self.proc.stdin.flush()
        while True:   # events come in between; wait for this command's answer
            while b"\0" not in self.buffer:
                chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
                assert chunk, "chromium closed its DevTools pipe"
                self.buffer += chunk
            raw, self.buffer = self.buffer.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self.next_id:
                assert "error" not in answer, answer["error"]
                return answer["result"]

    def open(self, url):
        target = self.send("Target.createTarget", session=False, url=url)["targetId"]
        self.session = self.send("Target.attachToTarget", session=False, targetId=target, flatten=True)["sessionId"]

    def evaluate(self, expression):
        return self.send("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def wait_for(self, expression, timeout=60):
        """Poll a JavaScript expression until it is truthy; return its value (or the last one)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value or time.monotonic() > deadline:
                return value
            time.sleep(0.2)

    def close(self):
        self.proc.kill()
        self.proc.wait()
        self.proc.stdin.close()
        self.proc.stdout.close()


@pytest.fixture(scope="module")
def served(site):
    """The built site on http://127.0.0.1:<free port>/."""
    if not _chromium():
        pytest.skip("no chromium (scripts/setup.sh installs Debian's package)")
    handler = functools.partial(_Recorder, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


@pytest.fixture
def browser():
    b = _Browser()
    yield b
    b.close()


@pytest.mark.slow
@pytest.mark.subprocess
def test_site_search_finds_kolen_pollack(served, browser):
    """Material's search (client-side, on the index the search plugin built), opened with ?q=."""
    browser.open(served + "?q=Kolen-Pollack")
    results = browser.wait_for("Array.from(document.querySelectorAll('.md-search-result__item a'))"
                               ".map(a => [a.href, a.innerText])")
    assert results, "the search returned nothing"
    assert any("/rules/" in href and "Kolen" in text for href, text in results), results[:5]


@pytest.mark.slow
@pytest.mark.subprocess
def test_site_pages_render_with_their_figures(served, browser):
    """Each page with figures: the browser loaded every image (complete, with a width), and the
    server answered 200 for it."""
    for page in ("", "results/"):
        _Recorder.fetched.clear()
        browser.open(served + page)
        title = browser.wait_for("document.querySelector('article h1') && document.querySelector('article h1').innerText")
        assert title, f"{page or 'index'}: no title rendered"
        images = browser.wait_for("(() => { const im = Array.from(document.querySelectorAll('article img'));"
                                  " return im.length && im.every(i => i.complete) ? im.map(i => [i.src, i.naturalWidth]) : null })()")
        assert images, f"{page or 'index'}: no figure loaded"
        assert all(width > 100 for _, width in images), images
        fetched = dict(_Recorder.fetched)
        for src, _ in images:
            assert fetched.get("/" + src.split("/", 3)[3]) in (200, 304), (src, sorted(fetched))   # 304: cached
    for page, text in (("rules/", "Kolen-Pollack"), ("api/julia/", "learn!"), ("api/python/", "FeedbackAlignmentClassifier")):
        browser.open(served + page)
        found = browser.wait_for("document.readyState === 'complete' && !!document.querySelector('article')"
                                 f" && document.querySelector('article').innerText.includes({json.dumps(text)})")
        assert found, f"{page}: {text} not rendered"
