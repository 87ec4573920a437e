"""Model files: Python and Julia write and read the same safetensors file, bit for bit.

Julia's side runs in a separate `julia` process (its own implementation of the format,
julia/FeedbackAlignment/src/modelfile.jl); files are also opened with a small reader written here and,
when installed, with the `safetensors` package.
"""

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

import pyjlfa
from pyjlfa._runtime import engine, julia_command

from conftest import RULES, assert_unchanged, batch, snapshot

ROOT = Path(__file__).resolve().parent.parent


# -- helpers: a plain safetensors reader/writer of our own, and a julia process --------------------

def read_raw(path):
    """(metadata, {name: (dtype, shape, bytes)}) of a safetensors file, parsed directly."""
    data = Path(path).read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert (8 + n) % 8 == 0, "the data section must start at a multiple of 8"
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__")
    start = 8 + n
    return meta, {k: (v["dtype"], v["shape"], data[start + v["data_offsets"][0]:start + v["data_offsets"][1]])
                  for k, v in header.items()}


def write_raw(path, meta, tensors, header_text=None):
    """Write a safetensors file from {name: array}; `header_text` replaces the JSON header."""
    header, offset, blobs = {} if meta is None else {"__metadata__": meta}, 0, []
    for name, a in tensors.items():
        a = np.ascontiguousarray(a)
        header[name] = {"dtype": {"float32": "F32", "float64": "F64"}[a.dtype.name], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        blobs.append(a.tobytes())
    text = (header_text or json.dumps(header)).encode()
    text += b" " * (-len(text) % 8)
    Path(path).write_bytes(len(text).to_bytes(8, "little") + text + b"".join(blobs))


def run_julia(tmp_path, code, *args):
    script = tmp_path / "script.jl"
    script.write_text(f'push!(LOAD_PATH, raw"{ROOT / "julia"}")\nusing FeedbackAlignment\n' + code)
    result = subprocess.run([*julia_command(), str(script),
                             *map(str, args)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return result.stdout


def trained(dtype, rule, seed=3, epochs=2, momentum=0.9):
    net = pyjlfa.Network([6, 5, 4, 3], rule=rule, seed=seed, feedback_seed=seed + 10, dtype=dtype)
    X, y = batch(net, 30)
    net.fit(X, y, epochs=epochs, batch_size=7, optimizer=pyjlfa.SGD(lr=0.1, momentum=momentum))
    return net, X, y


def same_parameters(a, b):
    return all(la.W.tobytes() == lb.W.tobytes() and la.b.tobytes() == lb.b.tobytes()
               and (la.B is None) == (lb.B is None) and (la.B is None or la.B.tobytes() == lb.B.tobytes())
               for la, lb in zip(a.layers, b.layers))


# -- Python -> Julia -> Python ---------------------------------------------------------------------

CASES = [(dtype, rule, opt) for dtype in ("float32", "float64") for rule in RULES for opt in (False, True)]


JULIA_SESSION = """
# 1. Load every file Python saved and save it again.
for line in eachline(joinpath(ARGS[1], "round_trips.txt"))
    a, b = split(line, '\t')
    net = load(a)
    save(b, net; include_optimizer=haskey(FeedbackAlignment.read_metadata(a), "optimizer"))
end

# 2. Train models in Julia alone, and save them with their predictions.
data = joinpath(ARGS[1], "data")
n, d, k = 40, 6, 3
y = Int.(read!(joinpath(data, "y"), Vector{Int64}(undef, n))) .+ 1
for (T, tag) in ((Float64, "f64"), (Float32, "f32"))
    X = read!(joinpath(data, "X_$tag"), Matrix{T}(undef, d, n))     # Python's (n, d) C-ordered array
    net = Network([d, 16, 8, k]; activation=relu, rule=DFA(), seed=5, T=T)
    learn!(net, X, y; epochs=3, batchsize=8, optimizer=SGD(0.05, 0.9))
    save(joinpath(data, "model_$tag.safetensors"), net)
    write(joinpath(data, "model_$(tag)_proba"), predict_proba(net, X))
    write(joinpath(data, "model_$(tag)_labels"), Int64.(predict(net, X) .- 1))
end
# Resume a model Python trained for one epoch, for one more epoch.
X = read!(joinpath(data, "X_f64"), Matrix{Float64}(undef, d, n))
net = load(joinpath(data, "resume_in.safetensors"))
learn!(net, X, y; epochs=1, batchsize=7, optimizer=SGD(0.1, 0.9))
save(joinpath(data, "resume_out.safetensors"), net; include_optimizer=true, optimizer=SGD(0.1, 0.9))

# 3. Every corrupt file: one line with the error.
for path in eachline(joinpath(ARGS[1], "corrupt.txt"))
    try
        load(path)
        println("LOADED ", path)
    catch e
        e isa ModelFileError || rethrow()
        println(sprint(showerror, e))
    end
end
"""


@pytest.fixture(scope="module")
def julia_session(tmp_path_factory):
    """Python writes every input file; one julia process (Julia's own modelfile.jl) does Julia's part."""
    tmp = tmp_path_factory.mktemp("julia_session")
    session = {"round_trips": {}}
    (tmp / "round_trip").mkdir()
    for case in CASES:
        dtype, rule, opt = case
        net, X, _ = trained(dtype, rule)
        a = tmp / "round_trip" / f"{dtype}_{rule}_{opt}_py.safetensors"
        b = a.with_name(a.name.replace("_py.", "_jl."))
        net.save(a, include_optimizer=opt)
        session["round_trips"][case] = (net, X, a, b)
    (tmp / "round_trips.txt").write_text("".join(f"{a}\t{b}\n" for _, _, a, b in session["round_trips"].values()))

    data = session["data"] = tmp / "data"
    data.mkdir()
    rng = np.random.default_rng(8)
    X, y = rng.normal(size=(40, 6)), rng.integers(0, 3, size=40)
    X.tofile(data / "X_f64")
    X.astype(np.float32).tofile(data / "X_f32")
    y.astype(np.int64).tofile(data / "y")
    session["Xy"] = X, y
    one = pyjlfa.Network([6, 16, 8, 3], rule="fa", seed=4, dtype="float64")
    one.fit(X, y, epochs=1, batch_size=7, optimizer=pyjlfa.SGD(lr=0.1, momentum=0.9))
    one.save(data / "resume_in.safetensors", include_optimizer=True)

    (tmp / "corrupt").mkdir()
    session["corrupt"] = corrupt_files(tmp / "corrupt")
    (tmp / "corrupt.txt").write_text("".join(f"{path}\n" for _, path, _ in session["corrupt"]))

    session["stdout"] = run_julia(tmp, JULIA_SESSION, tmp)
    return session


@pytest.fixture(scope="module")
def round_trips(julia_session):
    return julia_session["round_trips"]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_python_julia_python_round_trip_is_bit_identical(round_trips, case):
    net, X, a, b = round_trips[case]
    meta_a, tensors_a = read_raw(a)
    meta_b, tensors_b = read_raw(b)
    assert tensors_a == tensors_b  # names, dtypes, shapes and bytes
    if case[2]:
        assert any(k.startswith("optimizer.velocity.") for k in tensors_a)
        assert any(np.frombuffer(t[2], dtype=net.dtype).any() for k, t in tensors_a.items() if k.startswith("optimizer."))
    ignore = {"created_by", "optimizer_params"}  # who wrote it; Julia was not told the hyperparameters
    assert {k: v for k, v in meta_a.items() if k not in ignore} == {k: v for k, v in meta_b.items() if k not in ignore}
    assert meta_a["created_by"].startswith("pyjlfa") and meta_b["created_by"].startswith("FeedbackAlignment.jl")

    loaded = pyjlfa.load(b)
    assert same_parameters(net, loaded) and loaded.epochs == net.epochs == 2
    assert loaded.predict_proba(X).tobytes() == net.predict_proba(X).tobytes()
    np.testing.assert_array_equal(loaded.predict(X), net.predict(X))
    assert loaded.layers[0].W.ctypes.data != net.layers[0].W.ctypes.data  # a new model, not a view of the old


def test_python_files_load_in_python_with_their_optimizer(tmp_path):
    net, X, y = trained("float64", "fa")
    net.save(tmp_path / "m.safetensors", include_optimizer=True)
    loaded = pyjlfa.load(tmp_path / "m.safetensors")
    assert loaded.optimizer == pyjlfa.SGD(lr=0.1, momentum=0.9)
    assert (loaded.sizes, loaded.activation, loaded.rule, loaded.loss, loaded.seed, loaded.feedback_seed, loaded.dtype) == \
        (net.sizes, net.activation, net.rule, net.loss, net.seed, net.feedback_seed, net.dtype)


# -- Julia alone -> Python, and training resumed across languages ----------------------------------

@pytest.mark.parametrize("dtype,tag", [("float64", "f64"), ("float32", "f32")])
def test_model_trained_in_julia_alone_predicts_identically_in_python(julia_session, dtype, tag):
    tmp, (X, _) = julia_session["data"], julia_session["Xy"]
    net = pyjlfa.load(tmp / f"model_{tag}.safetensors")
    assert (net.sizes, net.activation, net.rule, net.dtype.name, net.seed, net.epochs) == \
        ((6, 16, 8, 3), "relu", "dfa", dtype, 5, 3)
    proba = np.fromfile(tmp / f"model_{tag}_proba", dtype=dtype).reshape(40, 3)
    assert net.predict_proba(X.astype(dtype)).tobytes() == proba.tobytes()  # to the last bit
    np.testing.assert_array_equal(net.predict(X.astype(dtype)), np.fromfile(tmp / f"model_{tag}_labels", dtype=np.int64))


def test_training_resumes_exactly_across_languages(julia_session):
    """Python: 1 epoch, save with the optimizer; Julia: load, 1 more epoch, save; equals 2 epochs in Python."""
    tmp, (X, y) = julia_session["data"], julia_session["Xy"]
    straight = pyjlfa.Network([6, 16, 8, 3], rule="fa", seed=4, dtype="float64")
    straight.fit(X, y, epochs=2, batch_size=7, optimizer=pyjlfa.SGD(lr=0.1, momentum=0.9))
    resumed = pyjlfa.load(tmp / "resume_out.safetensors")
    assert same_parameters(straight, resumed)
    assert resumed.epochs == 2 and resumed.optimizer == pyjlfa.SGD(lr=0.1, momentum=0.9)


# -- resuming in Python ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rule", RULES)
def test_include_optimizer_resumes_training_exactly(tmp_path, dtype, rule):
    straight, X, y = trained(dtype, rule, epochs=2)
    first, _, _ = trained(dtype, rule, epochs=1)
    first.save(tmp_path / "with.safetensors", include_optimizer=True)
    first.save(tmp_path / "without.safetensors")
    resumed = pyjlfa.load(tmp_path / "with.safetensors")
    resumed.fit(X, y, epochs=1, batch_size=7, optimizer=resumed.optimizer)
    assert same_parameters(straight, resumed) and resumed.epochs == 2
    # Without the velocities the second epoch differs: the test above can fail.
    fresh = pyjlfa.load(tmp_path / "without.safetensors")
    assert fresh.optimizer is None
    fresh.fit(X, y, epochs=1, batch_size=7, optimizer=pyjlfa.SGD(lr=0.1, momentum=0.9))
    assert not same_parameters(straight, fresh)


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["usf", "frsf", "brsf", "kp", "wm", "drtp", "sdfa", "shallow"])
def test_every_rule_given_by_name_resumes_exactly(tmp_path, rule):
    # A rule named by a string has its default parameters; uSF's and weight mirror's files once lacked them
    straight, X, y = trained("float64", rule, epochs=2)
    first, _, _ = trained("float64", rule, epochs=1)
    first.save(tmp_path / "m.safetensors", include_optimizer=True)
    resumed = pyjlfa.load(tmp_path / "m.safetensors")
    assert resumed.rule == rule
    resumed.fit(X, y, epochs=1, batch_size=7, optimizer=resumed.optimizer)
    assert same_parameters(straight, resumed) and resumed.epochs == 2


def test_plain_sgd_saves_zero_velocities_and_its_hyperparameters(tmp_path):
    net, _, _ = trained("float64", "bp", momentum=0.0)  # plain SGD: its velocities stay zero
    net.save(tmp_path / "m.safetensors", include_optimizer=True)
    meta, tensors = read_raw(tmp_path / "m.safetensors")
    params = json.loads(meta["optimizer_params"])
    assert meta["optimizer"] == "sgd" and (params["lr"], params["momentum"]) == (0.1, 0.0)
    state = [v for k, v in tensors.items() if k.startswith("optimizer.")]
    assert state and all(not any(raw) for _, _, raw in state)
    assert pyjlfa.load(tmp_path / "m.safetensors").optimizer == pyjlfa.SGD(lr=0.1)


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["fa", "kp"])
def test_adam_and_kolen_pollack_state_resume_exactly(tmp_path, rule):
    # Format 2 holds Adam's moments and step count, and Kolen-Pollack's B state (format 1 refused them).
    X = np.random.default_rng(1).normal(size=(12, 4))
    y = np.arange(12) % 2
    net = pyjlfa.Network([4, 3, 2], rule=rule, seed=0, dtype="float64")
    net.fit(X, y, epochs=2, batch_size=4, optimizer=pyjlfa.Adam(0.01, weight_decay=1e-3))
    net.save(tmp_path / "adam.safetensors", include_optimizer=True)
    loaded = pyjlfa.load(tmp_path / "adam.safetensors")
    assert loaded.optimizer == net.optimizer
    assert net.fit(X, y, epochs=2, batch_size=4)["loss"] == loaded.fit(X, y, epochs=2, batch_size=4)["loss"]
    for a, b in zip(net.layers, loaded.layers):
        assert np.array_equal(a.W, b.W) and np.array_equal(a.b, b.b)
        assert (a.B is None) == (b.B is None) and (a.B is None or np.array_equal(a.B, b.B))


# -- the safetensors package reads the files --------------------------------------------------------

def test_the_safetensors_package_reads_python_and_julia_files(round_trips):
    safetensors = pytest.importorskip("safetensors", reason="the safetensors package is not installed "
                                      "(pip install safetensors, or pyjlfa[test])")
    from safetensors.numpy import load_file

    net, _, a, b = round_trips[("float32", "fa", True)]
    for path in (a, b):
        arrays = load_file(str(path))
        for k, layer in enumerate(net.layers):
            np.testing.assert_array_equal(arrays[f"layers.{k}.W"], layer.W)
            np.testing.assert_array_equal(arrays[f"layers.{k}.b"], layer.b)
            assert (layer.B is None) == (f"layers.{k}.B" not in arrays)
            if layer.B is not None:
                np.testing.assert_array_equal(arrays[f"layers.{k}.B"], layer.B)
        assert arrays["layers.0.W"].dtype == np.float32 and arrays["layers.0.W"].shape == (6, 5)
        with safetensors.safe_open(str(path), framework="np") as f:
            assert f.metadata() == pyjlfa.io.read_metadata(path)
            assert set(f.keys()) == set(arrays)


# -- corrupt files: clear errors, nothing touched -----------------------------------------------------

def corrupt_files(folder):
    """(label, path, expected message) for every way a file can be unreadable."""
    net, _, _ = trained("float32", "fa", epochs=1)
    good = folder / "good.safetensors"
    net.save(good, include_optimizer=True)
    data = good.read_bytes()
    n = int.from_bytes(data[:8], "little")
    meta, _ = read_raw(good)
    tensors = {f"layers.{k}.{p}": getattr(layer, p) for k, layer in enumerate(net.layers) for p in "WbB"
               if getattr(layer, p) is not None}
    cases = []

    def case(label, expected, content=None, **raw):
        path = folder / f"{label.replace(' ', '_')}.safetensors"
        if content is not None:
            path.write_bytes(content)
        else:
            write_raw(path, **raw)
        cases.append((label, path, expected))

    case("truncated length field", r"truncated file: 5 bytes, but a model file starts with an 8-byte header length",
         data[:5])
    case("truncated header", rf"truncated file: the header length field says {n} bytes, but only 100 bytes follow it",
         data[:108])
    case("truncated data", r"truncated file: the tensors need \d+ bytes of data, but only \d+ follow the header",
         data[:-10])
    case("oversized header", r"the header length field says 4611686018427387904 bytes, more than the 100000000",
         (2**62).to_bytes(8, "little") + data[8:])
    case("corrupt JSON", r"corrupt header: .* \(not valid JSON\)",
         data[:8] + data[8:8 + n].replace(b'"__metadata__":{', b'"__metadata__":{{', 1) + data[8 + n:])
    case("foreign safetensors file", r"not a pyjlfa model file: its safetensors header has no pyjlfa metadata",
         meta={"framework": "numpy"}, tensors={"weight": np.ones((2, 3), np.float32)})
    case("no metadata at all", r"not a pyjlfa model file", meta=None, tensors={"weight": np.ones(4)})
    case("unknown format version", r'unknown format version "4"; this pyjlfa reads versions 1 to 3',
         meta={**meta, "format_version": "4"}, tensors=tensors)
    described = r"but the network the metadata describes \(\[Dense\(6 => 5, tanh\), Dense\(5 => 4, tanh\), Dense\(4 => 3\)\]"
    case("shape disagrees with the chain", rf'tensor "layers.1.W" has shape \[4,5\], {described}, rule fa\) needs \[5,4\]',
         meta={**meta, "optimizer": "none"}, tensors={**tensors, "layers.1.W": tensors["layers.1.W"].reshape(4, 5)})
    case("chain disagrees with tensors", r'tensor "layers.0.W" has shape \[6,5\], but the network the metadata '
         r"describes \(\[Dense\(6 => 7, tanh\)",
         meta={**meta, "chain": '["Dense(6 => 7, tanh)","Dense(7 => 4, tanh)","Dense(4 => 3)"]', "optimizer": "none"},
         tensors=tensors)
    case("dtype disagrees", r'tensor "layers.0.W" is F32, but the metadata says dtype float64',
         meta={**meta, "dtype": "float64", "optimizer": "none"}, tensors=tensors)
    case("feedback matrix of the wrong shape", rf'tensor "layers.2.B" has shape \[4,3\], {described}, rule fa\) needs \[3,4\]',
         meta={**meta, "optimizer": "none"}, tensors={**tensors, "layers.2.B": tensors["layers.2.B"].reshape(4, 3)})
    case("rule disagrees with feedback", r'unexpected tensor "layers.1.B" \(the metadata does not describe it\)',
         meta={**meta, "rule": "bp", "optimizer": "none"}, tensors=tensors)
    case("missing tensor", r'tensor "layers.2.b" is missing',
         meta={**meta, "optimizer": "none"}, tensors={k: v for k, v in tensors.items() if k != "layers.2.b"})
    case("missing optimizer state", r'tensor "optimizer.velocity.0.W" is missing', meta=meta, tensors=tensors)
    case("offsets overlap", r'starts at data byte 0, but the previous tensor ends at \d+ \(overlap or gap\)',
         content=None, meta=meta, tensors={},
         header_text=json.dumps({"__metadata__": meta, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                 "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}))
    case("trailing bytes", r"3 bytes follow the last tensor", data + b"xyz")
    case("bad metadata value", r'metadata "seed" must be an integer in \[0, 2\*\*64\), got "-1"',
         meta={**meta, "seed": "-1", "optimizer": "none"}, tensors=tensors)
    return cases


def test_every_corrupt_file_raises_a_clear_error_and_touches_nothing(julia_session, small_net):
    corrupt = julia_session["corrupt"]
    before = snapshot(small_net)
    live = engine().live_handles()
    for label, path, expected in corrupt:
        with pytest.raises(pyjlfa.ModelFileError, match=expected) as info:
            pyjlfa.load(path)
        assert str(info.value).startswith(f"cannot load model file {path}: "), label
        assert isinstance(info.value, ValueError)
    assert_unchanged(small_net, before)
    assert engine().live_handles() == live  # no half-built network was left behind


def test_julia_rejects_every_corrupt_file_too(julia_session):
    corrupt = julia_session["corrupt"]
    lines = julia_session["stdout"].strip().splitlines()
    assert len(lines) == len(corrupt)
    for (label, path, expected), line in zip(corrupt, lines):
        assert line.startswith(f"cannot load model file {path}: "), (label, line)
        # The two implementations word their errors alike; Julia says "FeedbackAlignment", not "pyjlfa".
        assert re.search(expected.replace("this pyjlfa", "this FeedbackAlignment"), line), (label, line)


# -- saving is atomic ---------------------------------------------------------------------------------

class FailingFile:
    """A file that reports a full disk after `limit` bytes."""

    def __init__(self, f, limit):
        self.f, self.limit, self.written = f, limit, 0

    def write(self, b):
        self.written += len(memoryview(b).cast("B"))
        if self.written > self.limit:
            raise OSError(28, "No space left on device (simulated)")
        return self.f.write(b)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_save_leaves_no_half_written_file(tmp_path, monkeypatch, existing):
    net, _, _ = trained("float64", "fa", epochs=1)
    (tmp_path / "ok").mkdir()
    net.save(tmp_path / "ok" / "model.safetensors", include_optimizer=True)
    size = (tmp_path / "ok" / "model.safetensors").stat().st_size
    folder = tmp_path / "models"
    folder.mkdir()
    target = folder / "model.safetensors"
    if existing:
        target.write_bytes(b"the previous model")
    real_fdopen = os.fdopen
    # The disk fills up half-way through the tensors.
    monkeypatch.setattr(os, "fdopen", lambda fd, mode: FailingFile(real_fdopen(fd, mode), size - 600))
    with pytest.raises(OSError, match="No space left on device"):
        net.save(target, include_optimizer=True)
    monkeypatch.undo()
    assert sorted(p.name for p in folder.iterdir()) == (["model.safetensors"] if existing else [])
    if existing:
        assert target.read_bytes() == b"the previous model"
    net.save(target)  # and a save that succeeds replaces it whole
    assert pyjlfa.load(target).predict_proba(np.ones((2, 6))).tobytes() == net.predict_proba(np.ones((2, 6))).tobytes()
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors"]


def test_save_checks_its_arguments(tmp_path, small_net):
    with pytest.raises(TypeError, match="path must be a str or os.PathLike"):
        small_net.save(3)
    with pytest.raises(TypeError, match="include_optimizer must be True or False"):
        small_net.save(tmp_path / "m.safetensors", include_optimizer="yes")
    with pytest.raises(FileNotFoundError, match="the folder .*no_such_folder does not exist"):
        small_net.save(tmp_path / "no_such_folder" / "m.safetensors")
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        small_net.save(tmp_path)
    small_net.close()
    with pytest.raises(ValueError, match="this Network is closed"):
        small_net.save(tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []
