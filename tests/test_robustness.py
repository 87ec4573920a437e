"""Input gradients and adversarial attacks (pyjlfa.robustness) against independent references: the
NumPy oracle's input gradient (tests/reference.py, ReferenceNet.input_gradient) for every rule and
layer type, central finite differences, plain NumPy FGSM and PGD, and a toy model whose adversarial
input is known."""

import numpy as np
import pytest

import pyjlfa
from pyjlfa import robustness
from pyjlfa.layers import AvgPool2d, BatchNorm2d, Conv2d, Flatten, LeakyReLU, Linear, MaxPool2d, Sigmoid, Tanh
from reference import RULES, ReferenceNet, SplitMix64

import test_residual as residual

TOL = dict(rtol=1e-10, atol=1e-10)
INPUT = (1, 6, 6)


def chain_layers():
    """Conv, batch norm, every activation kind, both poolings, flatten, dense."""
    return [Conv2d(1, 3, 3, padding=1), Tanh(), BatchNorm2d(3), MaxPool2d(2), Conv2d(3, 4, 2), Sigmoid(),
            AvgPool2d((1, 2)), Flatten(), Linear(8, 5), LeakyReLU(), Linear(5, 3)]


def with_running_statistics(net):
    """Batch norm away from its start (gamma, beta, running statistics): evaluation mode uses them."""
    for _, layer in net.named_layers():
        if layer.gamma is not None:
            c = layer.gamma.size
            layer.gamma[...] = np.linspace(0.6, 1.4, c)
            layer.beta[...] = np.linspace(-0.2, 0.2, c)
            layer.running_mean[...] = np.linspace(-0.3, 0.4, c)
            layer.running_var[...] = np.linspace(0.5, 2.0, c)
    return net


def build(rule, layers=chain_layers, input_shape=INPUT):
    return with_running_statistics(pyjlfa.Network(layers(), input_shape=input_shape, rule=rule, dtype="float64",
                                                  seed=1, feedback_seed=2))


def oracle_entries(layers):
    """The oracle's description of pyjlfa layers: test_residual's, plus pooling with its window,
    sigmoid and leaky ReLU."""
    out = []
    for layer in layers:
        name = type(layer).__name__
        if name in ("MaxPool2d", "AvgPool2d"):
            out.append(("maxpool" if name == "MaxPool2d" else "meanpool", dict(k=layer.kernel_size, stride=layer.stride)))
        elif name in ("Sigmoid", "LeakyReLU"):
            out.append({"Sigmoid": "sigmoid", "LeakyReLU": "leaky_relu"}[name])
        else:
            out.extend(residual.oracle_entries([layer]))
    return out


def oracle(net, layers=chain_layers, input_shape=INPUT):
    """A ReferenceNet holding copies of the engine's arrays, by path."""
    rule = net.rule_value
    points = getattr(rule, "feedback_points", None) if net.rule in ("dfa", "drtp", "sdfa") else None
    ref = ReferenceNet(oracle_entries(layers()), input_shape, net.rule, loss=net.loss, feedback_points=points)
    engine = {p: l for p, l in net.named_layers() if l.kind != "PadShortcut"}
    for path, layer in ref.named_layers():
        for name in ("W", "b", "B", "gamma", "beta", "running_mean", "running_var"):
            mine = engine[path].arrays.get(name)
            if mine is not None:
                setattr(layer, name, mine.astype(np.float64))
    return ref.eval()


def data(m=5, seed=3, shape=INPUT, classes=3):
    rng = np.random.default_rng(seed)
    return rng.random((m,) + shape), rng.integers(0, classes, m)


# -- the input gradient ------------------------------------------------------------------------

def test_oracle_input_gradient_is_the_finite_difference_gradient():
    """The oracle itself (NumPy only): bp's input gradient against central differences of its loss."""
    net = with_running_statistics(build("bp", layers=lambda: [Conv2d(1, 3, 3, padding=1), Tanh(), BatchNorm2d(3),
                                                              AvgPool2d(2), Flatten(), Linear(27, 3)]))
    ref = oracle(net, layers=lambda: [Conv2d(1, 3, 3, padding=1), Tanh(), BatchNorm2d(3), AvgPool2d(2), Flatten(),
                                      Linear(27, 3)])
    X, y = data()
    g = ref.input_gradient(X, y)
    h, fd = 1e-6, np.empty_like(X)
    for i in np.ndindex(X.shape):
        Xp, Xm = X.copy(), X.copy()
        Xp[i] += h
        Xm[i] -= h
        fd[i] = (ref.loss(Xp, y) - ref.loss(Xm, y)) / (2 * h)
    np.testing.assert_allclose(g, fd, rtol=1e-6, atol=1e-9)
    # ... and so is the engine's, through the weights
    np.testing.assert_allclose(net.input_gradient(X, y), fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("rule", RULES)
def test_input_gradient_matches_the_oracle_on_a_chain(rule):
    net = build(rule)
    ref = oracle(net)
    X, y = data()
    for through in ("weights", "feedback"):
        np.testing.assert_allclose(net.input_gradient(X, y, through=through), ref.input_gradient(X, y, through), **TOL)


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa", "dfa-block"])
def test_input_gradient_matches_the_oracle_on_a_residual_network(rule):
    rule = pyjlfa.rules.DFA(feedback_points="block") if rule == "dfa-block" else rule
    net = build(rule, layers=residual.resnet_layers, input_shape=residual.INPUT)
    ref = oracle(net, layers=residual.resnet_layers, input_shape=residual.INPUT)
    X, y = data(shape=residual.INPUT)
    for through in ("weights", "feedback"):
        np.testing.assert_allclose(net.input_gradient(X, y, through=through), ref.input_gradient(X, y, through), **TOL)


def test_through_feedback_is_through_weights_for_bp_but_not_for_fa():
    X, y = data()
    bp = build("bp")
    np.testing.assert_array_equal(bp.input_gradient(X, y, through="feedback"), bp.input_gradient(X, y))
    fa = build("fa")
    assert not np.allclose(fa.input_gradient(X, y, through="feedback"), fa.input_gradient(X, y))


def test_input_gradient_is_written_in_place_and_changes_nothing():
    net = build("kp")
    X, y = data()
    before = {(p, k): a.copy() for p, l in net.named_layers() for k, a in l.arrays.items()}
    out = np.full_like(X, np.nan)
    got = net.input_gradient(X, y, through="feedback", out=out)
    assert got is out and np.isfinite(out).all()       # Julia wrote into the caller's array
    np.testing.assert_array_equal(out, net.input_gradient(X, y, through="feedback"))
    for (p, k), a in before.items():
        np.testing.assert_array_equal(dict(net.named_layers())[p].arrays[k], a)
    assert net.training                                 # the mode gradients() uses is left alone
    with pytest.raises(ValueError, match="out must be a writeable C-contiguous float64 array"):
        net.input_gradient(X, y, out=np.empty_like(X, dtype=np.float32))
    with pytest.raises(ValueError, match="unknown through 'both'"):
        net.input_gradient(X, y, through="both")
    with pytest.raises(ValueError, match="labels outside"):
        net.input_gradient(X, np.array([0, 1, 2, 3, 0]))


def test_inputs_are_read_and_gradients_written_in_place():
    """Zero copy both ways: Julia reads the caller's X and writes the gradient into the caller's out;
    an attack reads X in place and writes into the array it returns."""
    net = build("fa")
    X, y = data()
    seen, table = [], net._engine._fn
    originals = {entry: table[entry] for entry in ("fa_input_gradient", "fa_attack")}
    for entry, at in (("fa_input_gradient", (1, 6)), ("fa_attack", (2, 16))):
        table[entry] = lambda *a, fn=originals[entry], at=at: seen.append(tuple(a[i] for i in at)) or fn(*a)
    try:
        out = np.empty_like(X)
        net.input_gradient(X, y, out=out)
        X_adv = robustness.fgsm(net, X, y, 0.1)
    finally:
        table.update(originals)
    assert seen == [(X.ctypes.data, out.ctypes.data), (X.ctypes.data, X_adv.ctypes.data)]


# -- FGSM and PGD against plain NumPy ----------------------------------------------------------

def numpy_fgsm(ref, X, y, eps, through, lo=0.0, hi=1.0):
    return np.clip(X + eps * np.sign(ref.input_gradient(X, y, through)), lo, hi)


def numpy_pgd(ref, X, y, eps, steps, step_size, restarts, seed, through, lo=0.0, hi=1.0):
    """Madry et al.'s L-inf PGD written out: uniform start from the library's documented stream
    (SplitMix64 tag 4, one draw per value in C order), signed steps, projection; a sample keeps the
    first restart that fools the network."""
    rng = SplitMix64.stream(seed, 4)
    best, fooled = None, np.zeros(len(X), bool)
    for r in range(restarts):
        x = np.clip(X + eps * (2 * rng.uniforms(X.size).reshape(X.shape) - 1), lo, hi)
        for _ in range(steps):
            x = np.clip(np.clip(x + step_size * np.sign(ref.input_gradient(x, y, through)), X - eps, X + eps), lo, hi)
        wrong = ref.forward(x).argmax(axis=1) != y
        if best is None:
            best, fooled = x.copy(), wrong
        else:
            take = ~fooled & wrong
            best[take], fooled = x[take], fooled | take
    return best


@pytest.mark.parametrize("rule,through", [("bp", "weights"), ("fa", "weights"), ("fa", "feedback"),
                                          ("dfa", "feedback")])
def test_fgsm_and_pgd_equal_plain_numpy(rule, through):
    net = build(rule)
    ref = oracle(net)
    X, y = data(m=8)
    np.testing.assert_allclose(robustness.fgsm(net, X, y, 0.05, through=through),
                               numpy_fgsm(ref, X, y, 0.05, through), **TOL)
    np.testing.assert_allclose(robustness.pgd(net, X, y, 0.1, steps=4, step_size=0.03, restarts=2, seed=9,
                                              through=through),
                               numpy_pgd(ref, X, y, 0.1, 4, 0.03, 2, 9, through), **TOL)
    # the default step size is 2.5 eps / steps
    np.testing.assert_allclose(robustness.pgd(net, X, y, 0.1, steps=4, seed=9, through=through),
                               numpy_pgd(ref, X, y, 0.1, 4, 0.0625, 1, 9, through), **TOL)


def test_adversarial_inputs_stay_in_the_ball_and_the_pixel_range():
    net = build("fa")
    X, y = data(m=10)
    X[0] = 0.0          # on the range's edges
    X[1] = 1.0
    for bounds in ((0.0, 1.0), (-0.5, 1.02)):
        for X_adv in (robustness.fgsm(net, X, y, 0.1, bounds=bounds),
                      robustness.pgd(net, X, y, 0.1, steps=3, restarts=2, through="feedback", bounds=bounds),
                      robustness.square(net, X, y, 0.1, queries=20, bounds=bounds)):
            assert X_adv.shape == X.shape and X_adv.dtype == X.dtype
            assert np.abs(X_adv - X).max() <= 0.1 + 1e-12
            assert X_adv.min() >= bounds[0] and X_adv.max() <= bounds[1]


# -- robust accuracy ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained():
    """A small dense classifier trained on three well separated blobs in [0, 1]^8."""
    rng = np.random.default_rng(0)
    centres = rng.uniform(0.25, 0.75, (3, 8))
    y = np.arange(300) % 3
    X = np.clip(centres[y] + 0.08 * rng.normal(size=(300, 8)), 0, 1)
    net = pyjlfa.Network([8, 16, 3], activation="tanh", rule="bp", seed=0, dtype="float64")
    net.fit(X, y, epochs=30, batch_size=16, optimizer=pyjlfa.SGD(0.5))
    return net, X, y


@pytest.mark.parametrize("attack", robustness.ATTACKS)
def test_robust_accuracy_at_eps_zero_is_the_clean_accuracy(trained, attack):
    net, X, y = trained
    result = robustness.evaluate(net, X, y, attack=attack, eps=[0.0, 0.1], **({"queries": 20} if attack == "square"
                                                                              else {}))
    assert result["robust_accuracy"][0] == net.evaluate(X, y)["accuracy"] > 0.9
    assert result["eps"] == [0.0, 0.1] and result["n_samples"] == 300 and result["attack"] == attack


def test_pgd_robust_accuracy_never_rises_with_eps(trained):
    net, X, y = trained
    eps = [0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3]
    accuracy = robustness.evaluate(net, X, y, attack="pgd", eps=eps, steps=20, seed=3)["robust_accuracy"]
    assert all(a >= b for a, b in zip(accuracy, accuracy[1:])), accuracy
    assert accuracy[-1] < accuracy[0] - 0.3          # the attack does bite


# -- the Square attack -------------------------------------------------------------------------

def test_square_reads_no_gradient_and_keeps_to_its_budget(trained):
    net, X, y = trained
    net.gradients(X[:10], y[:10])                      # fill the layers' gradient buffers
    index = {path: k for k, (path, _) in enumerate(net._nodes)}
    grads = lambda: [net._array(index[p], "dW").copy() for p, _ in net.named_layers()]
    before = grads()
    X_adv, used = robustness.square(net, X, y, 0.2, queries=15, return_queries=True)
    for a, b in zip(before, grads()):                  # no gradient was computed
        np.testing.assert_array_equal(a, b)
    clean_wrong = net.predict(X) != y
    assert (used[clean_wrong] == 1).all()              # misclassified samples: their clean prediction only
    assert used.max() <= 15
    fooled = net.predict(X_adv) != y
    assert (used[~fooled] == 15).all()                 # a sample never fooled uses the whole budget
    robustness.fgsm(net, X, y, 0.2)                    # whereas a gradient attack does touch them
    assert any(not np.array_equal(a, b) for a, b in zip(before, grads()))


def test_square_finds_a_known_adversarial_example():
    """A linear model on 4 x 4 images says class 0 while the mean pixel exceeds 0.5: images of
    0.55 everywhere are class 0, and every pixel lowered by eps = 0.1 makes them class 1."""
    net = pyjlfa.Network([Flatten(), Linear(16, 2)], input_shape=(1, 4, 4), rule="bp", dtype="float64")
    net.layers[1].W[...] = np.column_stack([np.full(16, 1 / 16), np.zeros(16)])
    net.layers[1].b[...] = [0.0, 0.5]
    X, y = np.full((4, 1, 4, 4), 0.55), np.zeros(4, dtype=np.int64)
    assert (net.predict(X) == 0).all() and (net.predict(X - 0.1) == 1).all()
    X_adv, used = robustness.square(net, X, y, 0.1, queries=400, seed=2, return_queries=True)
    assert (net.predict(X_adv) == 1).all() and used.max() < 400
    result = robustness.evaluate(net, X, y, attack="square", eps=[0.0, 0.1], queries=400, seed=2)
    assert result["robust_accuracy"] == [1.0, 0.0] and result["queries_mean"][0] == 1.0
    with pytest.raises(ValueError, match="bounds"):    # nothing to find at 0.55 when 0.55 is the top
        robustness.square(net, X, y, 0.1, bounds=(0.0, 0.5))


# -- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("call,error,message", [
    (lambda net, X, y: robustness.fgsm(net, X, y, -0.1), ValueError, "eps must be a finite number >= 0"),
    (lambda net, X, y: robustness.pgd(net, X, y, float("nan")), ValueError, "eps must be a finite number >= 0"),
    (lambda net, X, y: robustness.evaluate(net, X, y, eps=[0, float("inf")]), ValueError, "eps must be a finite"),
    (lambda net, X, y: robustness.fgsm(net, X + 1, y, 0.1), ValueError, r"X lies outside bounds \(0, 1\)"),
    (lambda net, X, y: robustness.fgsm(net, X, y, 0.1, bounds=(1, 0)), ValueError, "lo < hi"),
    (lambda net, X, y: robustness.fgsm(net, X, y + 3, 0.1), ValueError, "labels outside"),
    (lambda net, X, y: robustness.fgsm(net, X, y, 0.1, through="grad"), ValueError, "through must be"),
    (lambda net, X, y: robustness.pgd(net, X, y, 0.1, steps=0), ValueError, "steps must be an integer >= 1"),
    (lambda net, X, y: robustness.square(net, X, y, 0.1, queries=0), ValueError, "queries must be"),
    (lambda net, X, y: robustness.evaluate(net, X, y, attack="cw"), ValueError, "attack must be one of"),
    (lambda net, X, y: robustness.evaluate(net, X, y, attack="fgsm", steps=3), TypeError, "fgsm has no setting steps"),
])
def test_bad_input_is_refused_before_any_work(call, error, message):
    net = build("fa")
    X, y = data()
    calls = []
    attack = net._engine._fn["fa_attack"]
    net._engine._fn["fa_attack"] = lambda *a: calls.append(a) or attack(*a)
    try:
        with pytest.raises(error, match=message):
            call(net, X, y)
    finally:
        net._engine._fn["fa_attack"] = attack
    assert calls == []


def test_regression_networks_cannot_be_attacked_by_accuracy():
    net = pyjlfa.Network([4, 3, 2], loss="mse", rule="fa", dtype="float64")
    X = np.random.default_rng(0).random((5, 4))
    with pytest.raises(ValueError, match="regression network"):
        robustness.fgsm(net, X, np.zeros((5, 2)), 0.1)
    assert net.input_gradient(X, np.zeros((5, 2))).shape == X.shape   # the gradient itself is defined


# -- the command -------------------------------------------------------------------------------

def test_the_command_prints_a_table_draws_it_and_resumes(tmp_path, capsys):
    import json

    from pyjlfa import cli
    rng = np.random.default_rng(0)
    X = rng.random((40, 1, 4, 4)).astype(np.float32)            # 4 x 4 images, padded to the models' 6 x 6
    y = rng.integers(0, 3, 40)
    np.savez(tmp_path / "data.npz", X_test=X, y_test=y)
    paths = []
    for rule in ("bp", "fa"):
        net = pyjlfa.Network(chain_layers(), input_shape=INPUT, rule=rule, seed=1)
        net.save(tmp_path / f"{rule}.safetensors")
        paths.append(str(tmp_path / f"{rule}.safetensors"))
    args = ["robustness", *paths, "--data", str(tmp_path / "data.npz"), "--normalize", "0.5", "0.25", "--eps", "0", "0.05",
            "--attack", "fgsm", "square", "--queries", "5", "--out", str(tmp_path / "out")]
    assert cli.main(args) == 0
    first = capsys.readouterr()
    rows = [line.split() for line in first.out.splitlines() if line.startswith(("bp ", "fa "))]
    assert [r[:4] for r in rows] == [["bp", "0", "fgsm", "weights"], ["bp", "0", "fgsm", "feedback"],
                                     ["bp", "0", "square", "-"], ["fa", "0", "fgsm", "weights"],
                                     ["fa", "0", "fgsm", "feedback"], ["fa", "0", "square", "-"]]
    # eps 0 is the clean accuracy of the images as the models see them: standardised, zero-padded
    seen = np.zeros((40,) + INPUT, np.float32)
    seen[:, :, 1:5, 1:5] = (X - np.float32(0.5)) / np.float32(0.25)
    clean = pyjlfa.load(paths[1]).evaluate(seen, y)["accuracy"]
    assert float(rows[3][4]) == pytest.approx(100 * clean, abs=0.05)
    records = json.loads((tmp_path / "out" / "robustness.json").read_text())["records"]
    assert len(records) == 6 and records[0]["eps_network"] == [0.0, 0.2]     # eps / std
    assert (tmp_path / "out" / "robustness.png").stat().st_size > 0
    assert cli.main(args) == 0                                  # the same command again: nothing recomputed
    again = capsys.readouterr()
    assert again.out.split("wrote")[0] == first.out.split("wrote")[0] and again.err.count("(") == 0
    assert json.loads((tmp_path / "out" / "robustness.json").read_text())["records"] == records
