"""Residual networks with batch norm from Python, against the NumPy oracle (tests/reference.py,
ReferenceNet: plain code, nothing shared with the engine), across languages and at the API edge.

A small residual network (conv, batch norm, ReLU, a block with an option-A shortcut, a block with a
1x1 conv + batch norm projection, global average pooling, dense) is built by pyjlfa; its arrays are
copied into the oracle by path, and every rule's per-layer gradients, training steps and running
statistics are compared.
"""

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

import pyjlfa
from pyjlfa.layers import (AdaptiveAvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU,
                           Residual, Tanh)
from pyjlfa.rules import DFA
from reference import ReferenceNet

INPUT = (2, 7, 7)
RULES = ("bp", "fa", "dfa", "usf", "frsf", "kp", "drtp", "sdfa", "shallow")
TOLERANCE = {"float64": dict(rtol=1e-10, atol=1e-10), "float32": dict(rtol=1e-4, atol=1e-4)}


def resnet_layers():
    return [Conv2d(2, 4, 3, padding=1, bias=False), BatchNorm2d(4), ReLU(),
            Residual([Conv2d(4, 8, 3, stride=2, padding=1, bias=False), BatchNorm2d(8), ReLU(),
                      Conv2d(8, 8, 3, padding=1), BatchNorm2d(8)], shortcut="pad"),
            ReLU(),
            Residual([Conv2d(8, 6, 3, stride=2, padding=1, bias=False), BatchNorm2d(6), Tanh(),
                      Conv2d(6, 6, 3, padding=1), BatchNorm2d(6)],
                     shortcut=[Conv2d(8, 6, 1, stride=2, bias=False), BatchNorm2d(6)]),
            ReLU(), AdaptiveAvgPool2d(1), Flatten(), Linear(6, 3)]


def oracle_entries(layers):
    """The oracle's description of a list of pyjlfa layers (a translation, no shapes computed)."""
    out = []
    for layer in layers:
        name = type(layer).__name__
        if name == "Conv2d":
            out.append(("conv", dict(cin=layer.in_channels, cout=layer.out_channels, k=layer.kernel_size,
                                     stride=layer.stride, pad=layer.padding, bias=layer.bias)))
        elif name == "Linear":
            out.append(("dense", dict(n_in=layer.in_features, n_out=layer.out_features, bias=layer.bias)))
        elif name in ("BatchNorm2d", "BatchNorm1d"):
            out.append(("batchnorm", dict(c=layer.num_features)))
        elif name == "Residual":
            shortcut = layer.shortcut if layer.shortcut in (None, "pad") else oracle_entries(layer.shortcut)
            out.append(("residual", dict(main=oracle_entries(layer.main), shortcut=shortcut)))
        else:
            out.append({"ReLU": "relu", "Tanh": "tanh", "Flatten": "flatten", "AdaptiveAvgPool2d": "gap",
                        "MaxPool2d": "maxpool"}[name])
    return out


def build(rule="bp", dtype="float64", layers=resnet_layers, **kwargs):
    net = pyjlfa.Network(layers(), input_shape=INPUT, rule=rule, dtype=dtype, seed=1, feedback_seed=2, **kwargs)
    for _, layer in net.named_layers():   # batch norm away from its start, so gamma and beta matter
        if layer.gamma is not None:
            layer.gamma[...] = np.linspace(0.5, 1.5, layer.gamma.size)
            layer.beta[...] = np.linspace(-0.3, 0.3, layer.beta.size)
    return net


def oracle_of(net, layers=resnet_layers):
    """A float64 ReferenceNet holding copies of the engine's arrays, by path."""
    rule = net.rule_value if hasattr(net.rule_value, "feedback_points") else net.rule
    points = getattr(rule, "feedback_points", None)
    ref = ReferenceNet(oracle_entries(layers()), INPUT, net.rule, loss=net.loss,
                       feedback_points=points if net.rule in ("dfa", "drtp", "sdfa") else None)
    engine = {p: l for p, l in net.named_layers() if l.kind != "PadShortcut"}   # the oracle's "pad" is no layer
    assert [p for p, _ in ref.named_layers()] == list(engine)
    for path, layer in ref.named_layers():
        for name in ("W", "b", "B", "gamma", "beta", "running_mean", "running_var"):
            mine, theirs = engine[path].arrays.get(name), getattr(layer, name, None)
            assert (mine is None) == (theirs is None), (path, name)
            if mine is not None:
                assert mine.shape == theirs.shape, (path, name)
                setattr(layer, name, mine.astype(np.float64))
    return ref


def batch(m, seed=3, dtype="float64"):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(m,) + INPUT).astype(dtype), rng.integers(0, 3, m)


def assert_gradients_match(net, ref, X, y, tol):
    got = net.gradients(X, y)
    expected = ref.gradients(X.astype(np.float64), y)
    assert len(got) == len(expected) + sum(l.kind == "PadShortcut" for _, l in net.named_layers())
    for (path, layer), g in zip(net.named_layers(), got):
        if layer.kind == "PadShortcut":
            assert g == (None, None)
            continue
        for mine, theirs in zip(g, expected[path]):
            assert (mine is None) == (theirs is None), path
            if mine is not None:
                np.testing.assert_allclose(mine, theirs, err_msg=path, **tol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rule", RULES)
def test_every_rules_gradients_match_the_oracle(rule, dtype):
    net = build(rule, dtype)
    X, y = batch(5, dtype=dtype)
    assert_gradients_match(net, oracle_of(net), X, y, TOLERANCE[dtype])


@pytest.mark.parametrize("rule", ["dfa", "drtp", "sdfa"])
def test_block_feedback_points_match_the_oracle(rule):
    from pyjlfa.rules import DRTP, SDFA
    value = {"dfa": DFA, "drtp": DRTP, "sdfa": SDFA}[rule](feedback_points="block")
    net = build(value)
    blocks = [path for path, layer in net.named_layers() if layer.B is not None]
    assert blocks == ["0", "3", "5"]    # the stem's conv, and each block
    X, y = batch(5)
    assert_gradients_match(net, oracle_of(net), X, y, TOLERANCE["float64"])


def test_evaluation_mode_gradients_use_the_running_statistics():
    net = build("fa").eval()
    ref = oracle_of(net)
    ref.eval()
    X, y = batch(4)
    assert_gradients_match(net, ref, X, y, TOLERANCE["float64"])
    net.train()
    ref.train()
    assert_gradients_match(net, ref, X, y, TOLERANCE["float64"])


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa", "kp"])
def test_training_steps_and_running_statistics_match_the_oracle(rule):
    net = build(rule)
    ref = oracle_of(net)
    for seed in range(4):
        X, y = batch(6, seed=10 + seed)
        loss = net.step(X, y, pyjlfa.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3))
        assert math.isclose(loss, ref.step(X, y, 0.05, momentum=0.9, weight_decay=1e-3), rel_tol=1e-10)
    engine = dict(net.named_layers())
    for path, layer in ref.named_layers():
        for name in ("W", "b", "B", "gamma", "beta", "running_mean", "running_var"):
            if getattr(layer, name, None) is not None:
                np.testing.assert_allclose(engine[path].arrays[name], getattr(layer, name), rtol=1e-9, atol=1e-11,
                                           err_msg=f"{path}.{name}")
    X, _ = batch(7, seed=99)
    ref.eval()
    np.testing.assert_allclose(net.outputs(X), ref.forward(X), rtol=1e-10, atol=1e-12)   # predictions: running statistics


def test_bp_gradients_match_finite_differences():
    net = build("bp")
    X, y = batch(3)
    g = dict(zip([p for p, _ in net.named_layers()], net.gradients(X, y)))
    ref = oracle_of(net)
    for path, name, which in (("0", "W", 0), ("3.main.3", "b", 1), ("5.shortcut.1", "gamma", 0), ("1", "beta", 1)):
        A = dict(net.named_layers())[path].arrays[name]
        target = getattr(dict(ref.named_layers())[path], name)
        for i in [0, A.size // 2, A.size - 1]:
            keep = target.flat[i]
            target.flat[i] = keep + 1e-6
            up = ref.loss(X, y)
            target.flat[i] = keep - 1e-6
            down = ref.loss(X, y)
            target.flat[i] = keep
            assert g[path][which].flat[i] == pytest.approx((up - down) / 2e-6, rel=1e-5, abs=1e-8)


def test_layers_are_the_items_written_and_views_are_zero_copy():
    net = build("fa")
    assert len(net.layers) == 10 and type(net.layers[2].layer).__name__ == "ReLU"
    block = net.layers[5]
    assert block.kind == "SkipConnection" and [l.kind for l in block.main] == ["Conv", "BatchNorm", "Activation", "Conv", "BatchNorm"]
    assert [l.path for l in block.shortcut] == ["5.shortcut.0", "5.shortcut.1"]
    assert net.layers[3].shortcut[0].kind == "PadShortcut"
    assert block.main[0].b is None and block.main[3].b is not None          # bias=False
    bn = block.main[1]
    assert bn.gamma.shape == bn.running_var.shape == (6,) and bn.W is None
    before = bn.running_mean.ctypes.data
    net.fit(*batch(8), epochs=1, batch_size=4)
    assert bn.running_mean.ctypes.data == before and np.any(bn.running_mean != 0)   # trained in place
    assert repr(net.layers[0]) == ("Layer(0: Conv2d(in_channels=2, out_channels=4, kernel_size=(3, 3), padding=(1, 1), "
                                   "bias=False), (2, 7, 7) -> (4, 7, 7), W=(4, 2, 3, 3) float64)")


def test_a_resnet_saved_by_python_loads_in_julia_and_back_bit_identically(tmp_path):
    net = build("kp")
    X, y = batch(8)
    net.fit(X, y, epochs=1, batch_size=4, optimizer=pyjlfa.SGD(0.05, momentum=0.9))
    path = tmp_path / "resnet.safetensors"
    net.save(path, include_optimizer=True)
    again = pyjlfa.load(path)
    np.testing.assert_array_equal(again.predict_proba(X), net.predict_proba(X))
    assert [p for p, _ in again.named_layers()] == [p for p, _ in net.named_layers()]
    info = pyjlfa.runtime_info()
    out = tmp_path / "julia.safetensors"
    julia_text = json.dumps   # a JSON string is a Julia string literal too
    code = (f'push!(LOAD_PATH, {julia_text(str(Path(info["package_path"]).parent))}); using FeedbackAlignment; '
            f'net = load({julia_text(str(path))}); save({julia_text(str(out))}, net; include_optimizer=true); '
            f'print(net.rule isa KolenPollack, " ", count(st -> st.layer isa BatchNorm, net.layers))')
    result = subprocess.run([info["julia_executable"], "--startup-file=no", "-e", code], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "true 6"
    back = pyjlfa.load(out)
    for (p, a), (_, b) in zip(net.named_layers(), back.named_layers()):
        for name, arr in a.arrays.items():
            np.testing.assert_array_equal(arr, b.arrays[name], err_msg=f"{p}.{name}")
    np.testing.assert_array_equal(back.predict_proba(X), net.predict_proba(X))


def test_bad_residual_networks_say_where_and_what():
    with pytest.raises(ValueError, match=r"layer 1, Residual: its main path gives \(3, 4, 4\) but its shortcut gives \(2, 4, 4\)"):
        pyjlfa.Network([Conv2d(1, 2, 3, padding=1), Residual([Conv2d(2, 3, 3, padding="same")]), Flatten(),
                        Linear(48, 2)], input_shape=(1, 4, 4))
    with pytest.raises(ValueError, match=r"layer 1, BatchNorm2d\(num_features=3\) expects 3 channels, but receives 2"):
        pyjlfa.Network([Conv2d(1, 2, 3), BatchNorm2d(3), Flatten(), Linear(8, 2)], input_shape=(1, 4, 4))
    net = pyjlfa.Network([Linear(3, 4), BatchNorm1d(4), Linear(4, 2)], dtype="float64")
    before = net.layers[0].W.copy()
    with pytest.raises(ValueError, match="more than one value per channel"):
        net.step(np.ones((1, 3)), np.array([0]), pyjlfa.SGD(0.1))
    np.testing.assert_array_equal(net.layers[0].W, before)
    with pytest.raises(ValueError, match="feedback_points must be 'layer' or 'block'"):
        DFA(feedback_points="everywhere")
    with pytest.raises(TypeError, match="PyTorch modules are not taken"):
        torch_like = type("Conv2d", (), {"__module__": "torch.nn.modules.conv"})()
        pyjlfa.Network([torch_like], input_shape=(1, 4, 4))
    with pytest.raises(AttributeError, match="has no layer 'Sequential'; it has .*Dropout.*A Network takes the list"):
        pyjlfa.layers.Sequential
    for p in (1.0, -0.1, "0.5", True):
        with pytest.raises(ValueError, match=r"Dropout p must be a number in \[0, 1\), got"):
            pyjlfa.layers.Dropout(p)


def test_dropout_layer_drops_in_training_only_and_repeats_with_the_seed():
    """The mask itself is checked by hand in the Julia suite (test/residual.jl); here: the API's modes."""
    from pyjlfa.layers import Dropout
    with_drop = [Conv2d(2, 4, 3, padding=1), ReLU(), Dropout(0.4), Flatten(), Linear(4 * 7 * 7, 3)]
    without = [Conv2d(2, 4, 3, padding=1), ReLU(), Flatten(), Linear(4 * 7 * 7, 3)]
    rng = np.random.default_rng(5)
    X, y = rng.standard_normal((32,) + INPUT), rng.integers(0, 3, 32)
    nets = [pyjlfa.Network(layers, input_shape=INPUT, rule="fa", seed=3, dtype="float64")
            for layers in (with_drop, with_drop, without)]
    a, b, plain = nets
    assert a.layers[2].layer == Dropout(0.4) and a.layers[2].W is None
    np.testing.assert_array_equal(a.predict_proba(X), plain.predict_proba(X))      # evaluation: the identity
    ga, gp = a.gradients(X, y), plain.gradients(X, y)                               # batch mode: no mask
    assert ga[2] == (None, None) and len(ga) == len(gp) + 1
    for pa, pp in zip(ga[:2] + ga[3:], gp):
        for u, v in zip(pa, pp):
            assert (u is None and v is None) or np.array_equal(u, v)
    for net in nets:
        net.fit(X, y, epochs=2, batch_size=8, optimizer=pyjlfa.SGD(0.05))
    np.testing.assert_array_equal(a.layers[0].W, b.layers[0].W)                     # the seed repeats the masks
    assert not np.array_equal(a.layers[0].W, plain.layers[0].W)                     # and they drop something


def test_alignment_reports_every_layer_with_parameters_batch_norm_included():
    net, bp = build("fa"), build("bp")
    X, y = batch(8)
    report = net.alignment(X, y)
    fa_grads, bp_grads = oracle_of(net).gradients(X, y), oracle_of(bp).gradients(X, y)
    leaves = [(p, l) for p, l in net.named_layers() if l.kind not in ("SkipConnection", "Parallel")]
    assert report["path"] == [p for p, _ in leaves]

    def angle(a, b):
        return np.degrees(np.arccos(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1)))

    norms = [p for p, l in leaves if l.gamma is not None]
    assert len(norms) == 6
    for k, (path, layer) in enumerate(leaves):
        if layer.gamma is not None:    # compared on gamma and beta together, against the oracle's FA and BP
            assert report["role"][k] == "feedback", path
            a, b = (np.concatenate([g.ravel() for g in grads[path]]) for grads in (fa_grads, bp_grads))
            assert report["update_angle"][k] == pytest.approx(angle(a, b), abs=1e-6), path
            np.testing.assert_allclose(report["update_bp_ratio"][k], np.linalg.norm(a) / np.linalg.norm(b), rtol=1e-9)
            assert math.isnan(report["feedback_angle"][k])
        elif layer.W is None:
            assert report["role"][k] == "no_params" and math.isnan(report["update_angle"][k]), path
