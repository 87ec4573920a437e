"""Layer chains (convolution, pooling, flatten, dense) against the NumPy oracle and across languages.

Every rule's per-layer gradients and its training steps are compared with ``ReferenceChain``
(tests/reference.py, plain NumPy with no code shared with the engine), BP's conv gradients with
central finite differences of the engine's own loss; then zero copy of image inputs and conv
parameters, model files and seeds across Python and Julia, bad input, alignment diagnostics on conv
layers, and Fashion-MNIST as padded images.

Each network type costs Julia a few seconds of compilation, so networks are built once per module
(``nets``) and reused by the tests that only read them.
"""

import contextlib
import gc
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import pyjlfa
from test_zero_copy import Spy   # records the input address each entry point was handed
from pyjlfa._blas import use_numpy_blas
from pyjlfa._runtime import engine, julia_command
from pyjlfa.layers import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sigmoid, Tanh
from reference import ReferenceChain, SplitMix64

ROOT = Path(__file__).resolve().parent.parent
INPUT = (2, 8, 8)
RULES = ("bp", "fa", "dfa", "usf", "frsf", "brsf", "kp", "wm", "drtp", "sdfa", "shallow")
LOSSES = ("cross_entropy", "mse")
RULE_LOSS = [(r, l) for r in RULES for l in LOSSES if not (r == "drtp" and l == "mse")]
DETERMINISTIC = ("bp", "fa", "dfa", "kp", "usf", "frsf", "drtp", "sdfa", "shallow")
TOLERANCE = {"float64": dict(rtol=1e-10, atol=1e-10), "float32": dict(rtol=1e-4, atol=1e-4)}


# Each chain twice: as pyjlfa layers, and written out independently for the reference (PyTorch's
# (height, width) order throughout, activations inside the layer they follow).
def conv_layers():
    # (2, 8, 8) -> conv 3x3 pad 1 -> (3, 8, 8) -> max 2 -> (3, 4, 4) -> conv (2, 3) stride 2 pad 1
    # -> (4, 3, 2) -> mean 2 (a row left over) -> (4, 1, 1) -> flatten 4 -> 5 -> 3
    return [Conv2d(2, 3, 3, padding=1), Tanh(), MaxPool2d(2), Conv2d(3, 4, (2, 3), stride=2, padding=1), ReLU(),
            AvgPool2d(2), Flatten(), Linear(4, 5), Tanh(), Linear(5, 3)]


def flat_layers():  # images flattened straight into a dense network
    return [Flatten(), Linear(128, 6), Sigmoid(), Linear(6, 3)]


CHAINS = {
    "conv": (conv_layers, [("conv", dict(cin=2, cout=3, k=3, pad=1, act="tanh")), ("maxpool", dict(k=2)),
                           ("conv", dict(cin=3, cout=4, k=(2, 3), stride=2, pad=1, act="relu")),
                           ("meanpool", dict(k=2)), "flatten", ("dense", dict(n_in=4, n_out=5, act="tanh")),
                           ("dense", dict(n_in=5, n_out=3))]),
    "flat": (flat_layers, ["flatten", ("dense", dict(n_in=128, n_out=6, act="sigmoid")), ("dense", dict(n_in=6, n_out=3))]),
}
KINDS = {"conv": ["Conv", "MaxPool", "Conv", "MeanPool", "Flatten", "Dense", "Dense"],
         "flat": ["Flatten", "Dense", "Dense"]}


# pyjlfa's layers are the items written, activations included; the reference fuses each activation
# into the layer before it. These pick the engine's layers (or per-layer values) the reference has.
def weighted(net):
    return [layer for layer in net.layers if layer.kind != "Activation"]


def fused(net, values):
    return [v for layer, v in zip(net.layers, values) if layer.kind != "Activation"]


def build(chain, rule, loss="cross_entropy", dtype="float64", seed=0, **kwargs):
    return pyjlfa.Network(CHAINS[chain][0](), input_shape=INPUT, rule=rule, loss=loss, dtype=dtype, seed=seed,
                          feedback_seed=seed + 100, **kwargs)


@pytest.fixture(scope="module")
def nets():
    """Networks built once for the module: nets(chain, rule, loss, dtype)."""
    cache = {}

    def get(chain, rule, loss="cross_entropy", dtype="float64"):
        key = (chain, rule, loss, dtype)
        if key not in cache:
            cache[key] = build(*key)
        return cache[key]

    return get


def batch(net, m, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m,) + INPUT).astype(net.dtype)
    y = rng.integers(0, 3, m) if net.loss == "cross_entropy" else rng.normal(size=(m, 3)).astype(net.dtype)
    return X, y


def reference_of(net, chain):
    """A float64 ReferenceChain holding copies of the engine's current W, b and B."""
    ref = ReferenceChain(CHAINS[chain][1], INPUT, net.rule, loss=net.loss, dtype="float64")
    assert len(ref.layers) == len(weighted(net))
    for i, layer in enumerate(weighted(net)):
        for name in ("W", "b", "B"):
            engine_array, ref_array = getattr(layer, name), getattr(ref, name)[i]
            assert (engine_array is None) == (ref_array is None), (i, name)
            if engine_array is not None:
                assert engine_array.shape == ref_array.shape, (i, name)
                getattr(ref, name)[i] = engine_array.astype(np.float64)
    return ref


def assert_grads_equal(got, expected, **tol):
    assert len(got) == len(expected)
    for i, ((dW, db), (eW, eb)) in enumerate(zip(got, expected)):
        if eW is None:
            assert dW is None and db is None, i
            continue
        np.testing.assert_allclose(dW, eW, err_msg=f"dW of layer {i}", **tol)
        np.testing.assert_allclose(db, eb, err_msg=f"db of layer {i}", **tol)


def assert_parameters_equal(net, ref, **tol):
    for i, layer in enumerate(weighted(net)):
        for name in ("W", "b", "B"):
            if getattr(layer, name) is not None:
                np.testing.assert_allclose(getattr(layer, name), getattr(ref, name)[i], err_msg=f"{name} of layer {i}",
                                           **tol)


def snapshot(net):
    return [[None if a is None else a.copy() for a in (l.W, l.b, l.B)] for l in net.layers]


def assert_unchanged(net, before):
    for layer, arrays in zip(net.layers, before):
        for a, b in zip((layer.W, layer.b, layer.B), arrays):
            assert (a is None and b is None) or np.array_equal(a, b)


# ---------------------------------------------------------------------------------------------------
# 1. Every rule's gradients against the reference
# ---------------------------------------------------------------------------------------------------

GRADIENT_CASES = ([("conv", r, l, "float64") for r, l in RULE_LOSS]
                  + [("conv", r, "cross_entropy", "float32") for r in RULES]
                  + [("flat", r, l, "float64") for r, l in RULE_LOSS])


@pytest.mark.slow
@pytest.mark.parametrize("chain,rule,loss,dtype", GRADIENT_CASES)
def test_gradients_match_the_reference(nets, chain, rule, loss, dtype):
    net = nets(chain, rule, loss, dtype)
    assert [l.kind for l in weighted(net)] == KINDS[chain]
    if rule in ("usf", "frsf", "brsf"):  # B = |B| * sign(W) (W.T for dense), sign(+0) = +
        for layer in net.layers:
            if layer.B is not None:
                W = layer.W.T if layer.kind == "Dense" else layer.W
                np.testing.assert_array_equal(np.signbit(layer.B), np.signbit(W))
    X, y = batch(net, 6)
    got = fused(net, net.gradients(X, y))
    assert all(dW is None or (dW.dtype == net.dtype and db.dtype == net.dtype) for dW, db in got)
    expected = reference_of(net, chain).gradients(X.astype(np.float64), y)
    assert_grads_equal(got, expected, **TOLERANCE[dtype])
    if rule == "shallow":  # the hidden layers get exactly nothing
        assert all(not g[0].any() for g in got[:-1] if g[0] is not None)


# ---------------------------------------------------------------------------------------------------
# 2. Training steps against the reference
# ---------------------------------------------------------------------------------------------------

SGD = dict(lr=0.1, momentum=0.9, weight_decay=0.01)


def step_batches(net):
    return [batch(net, m, seed) for m, seed in ((6, 2), (4, 3), (6, 4))]


@pytest.mark.slow
@pytest.mark.parametrize("chain,rule,loss", [("conv", r, l) for r, l in RULE_LOSS if r in DETERMINISTIC]
                         + [("flat", r, "cross_entropy") for r in DETERMINISTIC])
def test_sgd_steps_match_the_reference(chain, rule, loss):
    net = build(chain, rule, loss)  # a new network: no optimizer state yet
    ref = reference_of(net, chain)
    for X, y in step_batches(net):
        loss_value = net.step(X, y, pyjlfa.SGD(**SGD))
        assert math.isclose(loss_value, ref.step(X, y, **SGD), rel_tol=1e-12)
    assert_parameters_equal(net, ref, rtol=1e-10, atol=1e-12)
    if rule == "kp":  # B learned too
        assert not np.array_equal(weighted(net)[2].B, weighted(build(chain, rule, loss))[2].B)


@pytest.mark.parametrize("chain", ["conv", "flat"])
def test_brsf_steps_match_the_reference_given_the_engines_redraws(chain):
    net = build(chain, "brsf")
    ref = reference_of(net, chain)
    magnitudes = []
    for X, y in step_batches(net):
        loss_value = net.step(X, y, pyjlfa.SGD(**SGD))
        # The engine drew new magnitudes before this batch, took the signs of W, updated W, and took
        # the new signs: |B| now holds the magnitudes it used.
        for i, layer in enumerate(weighted(net)):
            if layer.B is not None:
                ref.B[i] = np.abs(layer.B)
        magnitudes.append(np.abs(net.layers[-1].B).copy())
        assert math.isclose(loss_value, ref.step(X, y, **SGD), rel_tol=1e-12)
        assert_parameters_equal(net, ref, rtol=1e-10, atol=1e-12)
    assert not np.array_equal(magnitudes[0], magnitudes[1])  # redrawn every batch


def mirror_noise(state, net, steps, batch_size, noise_std):
    """The engine's mirror noise, replayed: after each update every layer with a B in turn draws
    steps x batch_size inputs from the shuffling stream, one N(0, 1) per value (Box-Muller,
    sqrt(-2 log(1 - u1)) cos(2 pi u2)), in Julia's memory order = NumPy's C order of (batch, C, H, W)."""
    rng, noise = SplitMix64(state), []
    for layer in weighted(net):
        if layer.B is None:
            noise.append(None)
            continue
        shape = (steps, batch_size) + layer.input_shape
        u = rng.uniforms(2 * int(np.prod(shape)))
        noise.append((noise_std * np.sqrt(-2.0 * np.log(1.0 - u[0::2])) * np.cos(2 * np.pi * u[1::2])).reshape(shape))
    return noise, rng.state


@pytest.mark.parametrize("chain", ["conv", "flat"])
def test_weight_mirror_steps_match_the_reference_with_the_engines_noise(chain):
    rule = pyjlfa.rules.WeightMirror(noise_std=0.5, lr=0.05, steps=2, batch_size=3)
    net = pyjlfa.Network(CHAINS[chain][0](), input_shape=INPUT, rule=rule, dtype="float64", seed=0, feedback_seed=100)
    ref = reference_of(net, chain)
    B0 = [None if l.B is None else l.B.copy() for l in net.layers]
    for X, y in step_batches(net):
        noise, state_after = mirror_noise(net._state()[1], net, 2, 3, 0.5)
        loss_value = net.step(X, y, pyjlfa.SGD(**SGD))
        assert net._state()[1] == state_after  # the step drew exactly the noise replayed here
        ref_loss = ref.step(X, y, **SGD, mirror_noise=noise, mirror_lr=0.05, mirror_decay=0.25)
        assert math.isclose(loss_value, ref_loss, rel_tol=1e-12)
        assert_parameters_equal(net, ref, rtol=1e-10, atol=1e-12)
    assert all(B is None or not np.allclose(B, l.B) for B, l in zip(B0, net.layers))  # B did move


# ---------------------------------------------------------------------------------------------------
# 3. Backprop through conv and pooling layers = finite differences of the engine's loss
# ---------------------------------------------------------------------------------------------------

def test_bp_conv_gradients_match_finite_differences(nets):
    net = nets("conv", "bp")
    X, y = batch(net, 5, seed=7)
    grads = net.gradients(X, y)
    rng = np.random.default_rng(8)
    eps = 1e-6
    checked = 0
    for k, layer in enumerate(net.layers):
        for which, param in ((0, layer.W), (1, layer.b)):
            if param is None:
                continue
            for flat in rng.choice(param.size, size=min(3, param.size), replace=False):
                idx = np.unravel_index(flat, param.shape)
                original = param[idx]
                param[idx] = original + eps  # written through the view into the model
                up = net.evaluate(X, y)["loss"]
                param[idx] = original - eps
                down = net.evaluate(X, y)["loss"]
                param[idx] = original
                numeric = (up - down) / (2 * eps)
                assert grads[k][which][idx] == pytest.approx(numeric, rel=1e-5, abs=1e-8), (k, which, idx)
                checked += 1
    assert checked == 4 * 2 * 3


# ---------------------------------------------------------------------------------------------------
# 4. Zero copy: image inputs read in place, conv parameters are Julia's memory
# ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("entry,call", [
    ("fa_train_epoch", lambda net, X, y: net.fit(X, y, epochs=1, batch_size=4)),
    ("fa_step", lambda net, X, y: net.step(X, y, pyjlfa.SGD())),
    ("fa_forward", lambda net, X, y: net.predict(X)),
    ("fa_evaluate", lambda net, X, y: net.evaluate(X, y)),
    ("fa_gradients", lambda net, X, y: net.gradients(X, y)),
], ids=["fit", "step", "predict", "evaluate", "gradients"])
def test_image_inputs_are_read_in_place(nets, entry, call):
    net = nets("conv", "fa", "cross_entropy", "float32")
    X, y = batch(net, 8)
    assert X.flags.c_contiguous and X.dtype == np.float32
    spy = Spy(net, entry)
    try:
        call(net, X, y)
    finally:
        spy.restore()
    assert spy.seen and all(address == X.ctypes.data for address in spy.seen)


def test_other_image_inputs_are_converted_once_with_the_same_results(nets):
    net = nets("conv", "fa", "cross_entropy", "float32")
    X, _ = batch(net, 8)
    expected = net.outputs(X)
    for other in (X.astype(np.float64), np.asfortranarray(X), np.swapaxes(np.swapaxes(X, 2, 3).copy(), 2, 3)):
        spy = Spy(net, "fa_forward")
        try:
            got = net.outputs(other)
        finally:
            spy.restore()
        assert spy.seen[0] != other.ctypes.data
        np.testing.assert_array_equal(got, expected)


def test_conv_parameters_are_views_that_fit_updates_in_place():
    net = build("conv", "fa", dtype="float32")
    assert [l.B is not None for l in weighted(net)] == [False, False, True, False, False, True, True]
    views = [(l.W, l.b, l.B) for l in net.layers if l.W is not None]
    addresses = [[None if a is None else a.__array_interface__["data"][0] for a in v] for v in views]
    before = [W.copy() for W, _, _ in views]
    X, y = batch(net, 16)
    net.fit(X, y, epochs=2, batch_size=4, optimizer=pyjlfa.SGD(lr=0.1, momentum=0.9))
    # Julia's arrays did not move: fresh views from Julia have the old addresses.
    fresh = [[None if a is None else a.__array_interface__["data"][0] for a in map(lambda w: net._array(k, w), "WbB")]
             for k, l in enumerate(net.layers) if l.W is not None]
    assert fresh == addresses
    for (W, _, _), W0 in zip(views, before):
        assert not np.array_equal(W, W0)  # the old views saw the updates
    assert np.shares_memory(net._array(0, "W"), views[0][0]) and np.shares_memory(net._array(3, "B"), views[1][2])
    assert views[0][0].shape == (3, 2, 3, 3) and views[1][0].shape == (4, 3, 2, 3) == views[1][2].shape


def test_writing_conv_views_changes_the_model():
    net = build("conv", "fa")
    X, y = batch(net, 6)
    before = net.outputs(X)
    net.layers[3].W[...] *= -1  # flip the second kernel in place
    net.layers[0].b[:] = [0.5, -0.5, 0.25]
    np.testing.assert_allclose(net.outputs(X), reference_of(net, "conv").forward(X), rtol=1e-12, atol=1e-14)
    assert not np.allclose(net.outputs(X), before)
    net.layers[0].W[...] = 0  # the first layer's output no longer depends on the image
    net.layers[0].b[...] = 0
    out = net.outputs(X)
    np.testing.assert_array_equal(out, np.tile(out[0], (6, 1)))


# ---------------------------------------------------------------------------------------------------
# 5. Across languages: model files and seeds
# ---------------------------------------------------------------------------------------------------

JULIA = """
push!(LOAD_PATH, raw"{root}")
using FeedbackAlignment
dir = ARGS[1]
n = {n}
y = Int.(read!(joinpath(dir, "y"), Vector{{Int64}}(undef, n))) .+ 1
chain = Chain({chain})
for (T, tag) in ((Float64, "f64"), (Float32, "f32"))
    X = read!(joinpath(dir, "X_$tag"), Array{{T}}(undef, {julia_input}, n))   # NumPy's (n, C, H, W)
    # A conv network Python trained and saved: its outputs here.
    write(joinpath(dir, "py_$(tag)_outputs"), outputs(load(joinpath(dir, "py_$tag.safetensors")), X))
    # A conv network trained and saved here, with its outputs.
    net = Network(chain; input=({julia_input}), rule=KolenPollack(), seed=11, T=T)
    learn!(net, X, y; epochs=2, batchsize=4, optimizer=SGD(0.05, 0.9))
    save(joinpath(dir, "jl_$tag.safetensors"), net)
    write(joinpath(dir, "jl_$(tag)_outputs"), outputs(net, X))
end
# Untrained networks from seeds alone.
save(joinpath(dir, "seed_fa.safetensors"), Network(chain; input=({julia_input}), rule=FA(), seed=5, feedback_seed=9, T=Float64))
save(joinpath(dir, "seed_dfa.safetensors"), Network(chain; input=({julia_input}), rule=DFA(), seed=6, feedback_seed=3, T=Float32))
println("done")
"""


@contextlib.contextmanager
def julias_blas():
    """Multiply with Julia's own OpenBLAS in this process, as the julia process does: NumPy's
    OpenBLAS rounds float sums differently in the last bits."""
    eng = engine()
    eng.call("fa_set_blas", None, None, None)
    try:
        yield
    finally:
        use_numpy_blas(eng)


@pytest.fixture(scope="module")
def julia_process(tmp_path_factory):
    """Python writes data and trained models, then starts one julia process that loads, trains, saves
    and predicts. It runs while the other tests of this module do (it spends most of its time
    compiling); the tests that read its files wait for it (``julia_session``)."""
    tmp = tmp_path_factory.mktemp("chains_julia")
    n = 12
    rng = np.random.default_rng(20)
    X, y = rng.normal(size=(n,) + INPUT), rng.integers(0, 3, n)
    y.astype(np.int64).tofile(tmp / "y")
    session = {"dir": tmp, "X": {}, "y": y, "py": {}}
    for dtype, tag in (("float64", "f64"), ("float32", "f32")):
        Xt = X.astype(dtype)
        Xt.tofile(tmp / f"X_{tag}")
        net = build("conv", "fa", dtype=dtype, seed=4)
        net.fit(Xt, y, epochs=2, batch_size=4, optimizer=pyjlfa.SGD(lr=0.05, momentum=0.9))
        net.save(tmp / f"py_{tag}.safetensors")
        session["X"][tag], session["py"][tag] = Xt, net
    chain_text = ", ".join(l.spec for l in session["py"]["f64"].layers)
    script = tmp / "session.jl"
    script.write_text(JULIA.format(root=ROOT / "julia", n=n, chain=chain_text,
                                   julia_input=", ".join(map(str, reversed(INPUT)))))
    pyjlfa.start_julia()  # puts the OPENBLAS_CORETYPE it chose into os.environ: the same kernels there
    env = {**os.environ, "PYJLFA_BLAS": "julia"}
    process = subprocess.Popen([*julia_command(), str(script), str(tmp)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    session["process"] = process
    yield session
    if process.poll() is None:  # a run of a few tests that did not need it
        process.kill()
        process.communicate()


@pytest.fixture(scope="module", autouse=True)
def _julia_runs_alongside(request):
    """Start the julia process with the module's first test, if any selected test needs it."""
    if any("julia_session" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("julia_process")


@pytest.fixture(scope="module")
def julia_session(julia_process):
    stdout, stderr = julia_process["process"].communicate(timeout=600)
    assert julia_process["process"].returncode == 0 and "done" in stdout, stdout + stderr
    return julia_process


@pytest.mark.parametrize("tag", ["f64", "f32"])
def test_conv_network_saved_by_python_predicts_bit_identically_in_julia(julia_session, tag):
    net, X = julia_session["py"][tag], julia_session["X"][tag]
    julia_out = np.fromfile(julia_session["dir"] / f"py_{tag}_outputs", dtype=net.dtype).reshape(len(X), 3)
    with julias_blas():
        assert net.outputs(X).tobytes() == julia_out.tobytes()


@pytest.mark.parametrize("tag", ["f64", "f32"])
def test_conv_network_saved_by_julia_predicts_bit_identically_in_python(julia_session, tag):
    X = julia_session["X"][tag]
    net = pyjlfa.load(julia_session["dir"] / f"jl_{tag}.safetensors")
    assert [l.kind for l in weighted(net)] == KINDS["conv"] and net.rule == "kp" and net.epochs == 2
    assert [l.spec for l in net.layers] == [l.spec for l in julia_session["py"]["f64"].layers]
    julia_out = np.fromfile(julia_session["dir"] / f"jl_{tag}_outputs", dtype=net.dtype).reshape(len(X), 3)
    with julias_blas():
        assert net.outputs(X).tobytes() == julia_out.tobytes()
    # And the reference agrees with the file's parameters (so the outputs are the model's, not noise).
    np.testing.assert_allclose(net.outputs(X), reference_of(net, "conv").forward(X.astype(np.float64)),
                               rtol=1e-4 if tag == "f32" else 1e-10, atol=1e-5 if tag == "f32" else 1e-12)


@pytest.mark.parametrize("name,rule,seed,feedback_seed,dtype", [("seed_fa", "fa", 5, 9, "float64"),
                                                                 ("seed_dfa", "dfa", 6, 3, "float32")])
def test_same_seed_builds_the_same_conv_network_in_both_languages(julia_session, name, rule, seed, feedback_seed, dtype):
    julia_net = pyjlfa.load(julia_session["dir"] / f"{name}.safetensors")
    net = pyjlfa.Network(conv_layers(), input_shape=INPUT, rule=rule, dtype=dtype, seed=seed, feedback_seed=feedback_seed)
    assert julia_net.dtype == net.dtype and julia_net.rule == rule
    n_B = 0
    for a, b in zip(net.layers, julia_net.layers):
        for name_ in ("W", "b", "B"):
            x, z = getattr(a, name_), getattr(b, name_)
            assert (x is None) == (z is None)
            if x is not None:
                assert x.shape == z.shape and x.tobytes() == z.tobytes(), name_
                n_B += name_ == "B"
    assert n_B == 3
    other = pyjlfa.Network(conv_layers(), input_shape=INPUT, rule=rule, dtype=dtype, seed=seed + 1,
                           feedback_seed=feedback_seed)
    assert not np.array_equal(other.layers[0].W, net.layers[0].W)


# ---------------------------------------------------------------------------------------------------
# 6. Bad input: a clear error naming the layer, before any work
# ---------------------------------------------------------------------------------------------------

def network(layers, **kwargs):
    return lambda: pyjlfa.Network(layers, **{"input_shape": (1, 6, 6), **kwargs})


BAD_NETWORKS = [
    ("kernel larger than the input", network([Conv2d(1, 2, 7), Flatten(), Linear(2, 3)]),
     r"layer 0, Conv2d\(in_channels=1, out_channels=2, kernel_size=\(7, 7\)\) has a window of \(7, 7\), larger than "
     r"its input of \(6, 6\)"),
    ("kernel larger than the padded input", network([Conv2d(1, 2, 5), Conv2d(2, 2, 5, padding=1), Flatten(), Linear(2, 3)]),
     r"layer 1, Conv2d\(in_channels=2, out_channels=2, kernel_size=\(5, 5\), padding=\(1, 1\)\) has a window of "
     r"\(5, 5\), larger than its padded input of \(4, 4\)"),
    # (height, width) in Python's order: a 3-high, 5-wide kernel on a 4-high, 8-wide image padded by (0, 1)
    ("kernel taller than the input", lambda: pyjlfa.Network([Conv2d(1, 2, (5, 3), padding=(0, 1)), Flatten(), Linear(2, 3)],
                                                            input_shape=(1, 4, 8)),
     r"layer 0, Conv2d\(.*\) has a window of \(5, 3\), larger than its padded input of \(4, 10\)"),
    ("pool window larger than its input", network([Conv2d(1, 2, 5), MaxPool2d(3), Flatten(), Linear(2, 3)]),
     r"layer 1, MaxPool2d\(kernel_size=\(3, 3\), stride=\(3, 3\)\).*larger than its input"),
    ("conv stride 0", lambda: Conv2d(1, 2, 3, stride=0), r"Conv2d stride must be an integer >= 1, got 0"),
    ("pool stride 0", lambda: AvgPool2d(2, stride=(1, 0)), r"AvgPool2d stride must be an integer >= 1, got 0"),
    ("negative padding", lambda: Conv2d(1, 2, 3, padding=(0, -1)), r"Conv2d padding must be an integer >= 0, got -1"),
    ("input channels", network([Conv2d(3, 2, 3), Flatten(), Linear(32, 3)]),
     r"layer 0, Conv2d\(in_channels=3, .*\) expects 3 input channels, but receives 1"),
    ("channels between layers", network([Conv2d(1, 4, 3), ReLU(), Conv2d(2, 2, 3), Flatten(), Linear(8, 3)]),
     r"layer 2, Conv2d\(in_channels=2, .*\) expects 2 input channels, but receives 4"),
    ("Linear after Flatten", network([Conv2d(1, 2, 3), MaxPool2d(2), Flatten(), Linear(7, 3)]),
     r"layer 3, Linear\(in_features=7, out_features=3\) expects 7 inputs, but receives 8"),
    ("Linear on an image", network([Conv2d(1, 2, 3), Linear(32, 3)]),
     r"layer 1, Linear\(in_features=32, out_features=3\) expects a vector of 32 inputs, but receives an image of size "
     r"\(2, 4, 4\); put Flatten\(\) before it"),
    ("last layer not Linear", network([Conv2d(1, 2, 3), Flatten()]),
     r"the last layer must be Dense \(Python: Linear\) with no activation .*got layer 1, Flatten\(\)"),
    ("last Linear with an activation", network([Conv2d(1, 2, 3), Flatten(), Linear(32, 3), Sigmoid()]),
     r"the last layer must be Dense \(Python: Linear\) with no activation .*got layer 3, Sigmoid\(\)"),
    ("conv B of the wrong shape", network([Conv2d(1, 2, 3), Conv2d(2, 3, 2), Flatten(), Linear(27, 3)], rule="fa",
                                          dtype="float64", feedback=[None, np.zeros((3, 2, 3, 3)), None, np.zeros((3, 27))]),
     r"layer 1, Conv2d\(in_channels=2, out_channels=3, kernel_size=\(2, 2\)\) has a B of shape \(3, 2, 2, 2\) under "
     r"FA\(\), but the given feedback array has shape \(3, 2, 3, 3\)"),
    ("DFA B of the wrong shape", network([Conv2d(1, 2, 3), Flatten(), Linear(32, 3)], rule="dfa", dtype="float64",
                                         feedback=[np.zeros((3, 31)), None, None]),
     r"layer 0, Conv2d\(in_channels=1, .*\) has a B of shape \(3, 32\) under DFA\(\), but the given feedback array has "
     r"shape \(3, 31\)"),
    ("B of the wrong rank", network([Conv2d(1, 2, 3), Conv2d(2, 3, 2), Flatten(), Linear(27, 3)], rule="fa",
                                    dtype="float64", feedback=[None, np.zeros((3, 2, 4)), None, None]),
     r"feedback\[1\] must be a 2-D \(dense\) or 4-D \(conv kernel\) array, got shape \(3, 2, 4\)"),
    ("dropout on a pooling layer", network([Conv2d(1, 2, 3), MaxPool2d(2), Flatten(), Linear(8, 3)],
                                           dropout=[0.0, 0.5, 0.0]),
     r"a dropout rate of 0.5 is given after layer 1, MaxPool2d\(kernel_size=\(2, 2\), stride=\(2, 2\)\), which has no "
     r"parameters; dropout follows a Dense or Conv layer"),
]


@pytest.mark.slow
@pytest.mark.parametrize("what,make,match", BAD_NETWORKS, ids=[case[0] for case in BAD_NETWORKS])
def test_bad_chains_are_refused_with_a_clear_error(what, make, match):
    eng = engine()
    gc.collect()
    live = eng.live_handles()
    with pytest.raises(ValueError, match=match):
        make()
    gc.collect()
    assert eng.live_handles() == live  # no half-built model left behind


@pytest.mark.parametrize("call", [
    lambda net, X, y: net.fit(X, y, epochs=1, batch_size=4),
    lambda net, X, y: net.step(X, y, pyjlfa.SGD(lr=0.1)),
    lambda net, X, y: net.gradients(X, y),
    lambda net, X, y: net.evaluate(X, y),
    lambda net, X, y: net.predict(X),
    lambda net, X, y: net.alignment(X, y),
], ids=["fit", "step", "gradients", "evaluate", "predict", "alignment"])
@pytest.mark.parametrize("shape", [(6, 2, 8, 7), (6, 1, 8, 8), (6, 128), (6, 8, 8, 2)], ids=str)
def test_images_of_the_wrong_shape_are_refused_before_any_work(nets, call, shape):
    net = nets("conv", "fa")
    _, y = batch(net, 6)
    before, state = snapshot(net), net._state()
    with pytest.raises(ValueError, match=r"X has shape \(6, .*\); this network expects \(samples, 2, 8, 8\) images"):
        call(net, np.zeros(shape, dtype=net.dtype), y)
    assert_unchanged(net, before)
    assert net._state() == state


# ---------------------------------------------------------------------------------------------------
# 7. Alignment diagnostics on conv layers
# ---------------------------------------------------------------------------------------------------

def angle(a, b):
    a, b = a.ravel(), b.ravel()
    return np.degrees(np.arccos(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1)))


def alignment_and_reference(nets):
    """The engine's alignment report of the FA conv network on a batch, and the reference's FA and
    BP gradients and signals for the same parameters."""
    net = nets("conv", "fa")
    X, y = batch(net, 16, seed=9)
    fa = reference_of(net, "conv")
    bp = ReferenceChain(CHAINS["conv"][1], INPUT, "bp", dtype="float64")
    bp.W, bp.b = fa.W, fa.b
    return net, net.alignment(X, y), (fa.gradients(X, y), bp.gradients(X, y)), (fa.signals(X, y), bp.signals(X, y))


@pytest.mark.slow
def test_alignment_reports_every_layer_with_conv_angles_as_the_reference_gives_them(nets):
    net, report, (g_fa, g_bp), (d_fa, d_bp) = alignment_and_reference(nets)
    assert all(len(v) == len(net.layers) for v in report.values())
    assert [r for l, r in zip(net.layers, report["role"]) if l.kind == "Activation"] == ["no_params"] * 3
    report = {f: fused(net, v) for f, v in report.items()}   # the reference's layers
    assert report["role"] == ["feedback", "no_params", "feedback", "no_params", "no_params", "feedback", "output"]
    for k in (0, 2, 5):
        assert np.isfinite(report["update_angle"][k]) and np.isfinite(report["delta_angle"][k])
        assert report["delta_angle"][k] == pytest.approx(angle(d_fa[k], d_bp[k]), abs=1e-8)
        assert report["update_weight_ratio"][k] == pytest.approx(
            np.linalg.norm(g_fa[k][0]) / np.linalg.norm(weighted(net)[k].W), rel=1e-10)
    for k in (0, 2, 5):
        assert report["update_angle"][k] == pytest.approx(angle(g_fa[k][0], g_bp[k][0]), abs=1e-8)
        assert report["update_bp_ratio"][k] == pytest.approx(
            np.linalg.norm(g_fa[k][0]) / np.linalg.norm(g_bp[k][0]), rel=1e-10)
    # The conv layer's B stands in for its kernel: the angle between them.
    assert report["feedback_angle"][2] == pytest.approx(angle(weighted(net)[2].B, weighted(net)[2].W), abs=1e-8)
    for k in (1, 3, 4):
        assert all(np.isnan(report[f][k]) for f in report if f not in ("role", "path"))


def test_fit_tracks_alignment_of_conv_layers_without_changing_training():
    net, untracked = build("conv", "fa"), build("conv", "fa")
    X, y = batch(net, 16, seed=10)
    history = net.fit(X, y, epochs=2, batch_size=4, track_alignment=2)
    untracked.fit(X, y, epochs=2, batch_size=4)
    for a, b in zip(net.layers, untracked.layers):
        assert a.W is None or (np.array_equal(a.W, b.W) and np.array_equal(a.b, b.b))
    track = history["alignment"]
    assert (track["epoch"], track["batch"], track["step"]) == ([1, 1, 2, 2], [1, 3, 1, 3], [0, 2, 4, 6])
    for roles, angles in zip(track["role"], track["update_angle"]):
        roles, angles = fused(net, roles), fused(net, angles)
        assert roles == ["feedback", "no_params", "feedback", "no_params", "no_params", "feedback", "output"]
        assert all(np.isfinite(angles[k]) for k in (0, 2, 5))
        assert all(np.isnan(angles[k]) for k in (1, 3, 4))


# ---------------------------------------------------------------------------------------------------
# 8. Fashion-MNIST as padded images
# ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_fashion_mnist_images_padded_to_32():
    try:
        flat = pyjlfa.datasets.fashion_mnist()
    except FileNotFoundError as e:
        pytest.skip(f"Fashion-MNIST is not installed here (Debian package dataset-fashion-mnist): {e}")
    images = pyjlfa.datasets.fashion_mnist(images=True, pad=2)
    for X, X_flat, n in ((images[0], flat[0], 60000), (images[2], flat[2], 10000)):
        assert X.shape == (n, 1, 32, 32) and X.dtype == np.float32 and X.flags.c_contiguous
        assert not X[:, :, :2].any() and not X[:, :, -2:].any() and not X[:, :, :, :2].any() and not X[:, :, :, -2:].any()
        np.testing.assert_array_equal(X[:, 0, 2:30, 2:30].reshape(n, 784), X_flat)
    np.testing.assert_array_equal(images[1], flat[1])
    np.testing.assert_array_equal(images[3], flat[3])
