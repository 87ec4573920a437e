"""The feedback-alignment family: every rule against the NumPy reference and its defining property;
feedback initialisers, optimisers, schedules and dropout against hand calculations."""

import numpy as np
import pytest

import pyjlfa
from pyjlfa import init
from reference import ReferenceNetwork

from conftest import TOLERANCE, batch, reference_of

ALL_RULES = ("bp", "fa", "dfa", "usf", "frsf", "brsf", "kp", "wm", "drtp", "sdfa", "shallow")


def angle(A, B):
    a, b = A.ravel(), B.ravel()
    return np.degrees(np.arccos(np.clip(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)), -1, 1)))


def make(rule, dtype="float64", loss="cross_entropy", activation="tanh", sizes=(6, 5, 4, 3), **kw):
    net = pyjlfa.Network(list(sizes), activation=activation, rule=rule, loss=loss, seed=7, dtype=dtype, **kw)
    rng = np.random.default_rng(3)
    for layer in net.layers:
        layer.b[:] = rng.normal(scale=0.1, size=layer.b.shape)
    return net


CASES = [(r, d, l) for r in ALL_RULES for d in ("float64", "float32") for l in ("cross_entropy", "mse")
         if not (r == "drtp" and l == "mse")]


@pytest.mark.slow
@pytest.mark.parametrize("rule,dtype,loss", CASES)
def test_gradients_agree_with_the_reference(rule, dtype, loss):
    net = make(rule, dtype, loss)
    ref = reference_of(net)
    X, y = batch(net, 9)
    tol = TOLERANCE[dtype]
    for (dW, db), (rW, rb) in zip(net.gradients(X, y), ref.gradients(X, y)):
        scale = max(np.abs(rW).max(), np.abs(rb).max(), 1e-30)
        np.testing.assert_allclose(dW, rW, rtol=tol["rtol"], atol=tol["rtol"] * scale)
        np.testing.assert_allclose(db, rb, rtol=tol["rtol"], atol=tol["rtol"] * scale)


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa", "usf", "frsf", "kp", "drtp", "sdfa", "shallow"])
def test_training_steps_agree_with_the_reference(rule):
    net = make(rule)
    ref = reference_of(net)
    for seed in range(3):
        X, y = batch(net, 8, seed=seed)
        loss = net.step(X, y, pyjlfa.SGD(lr=0.2, momentum=0.9))
        assert loss == pytest.approx(ref.step(X, y, lr=0.2, momentum=0.9), rel=1e-10)
    for layer, W, b, B in zip(net.layers, ref.Ws, ref.bs, ref.Bs):
        np.testing.assert_allclose(layer.W, W, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.b, b, rtol=1e-10, atol=1e-12)
        if B is not None:
            np.testing.assert_allclose(layer.B, B, rtol=1e-10, atol=1e-12)


def test_feedback_layout_per_rule():
    for rule in ALL_RULES:
        net = make(rule, sizes=(6, 5, 4, 3))
        assert [None if l.B is None else l.B.shape for l in net.layers] == net.feedback_shapes()
    assert make("fa").feedback_shapes() == [None, (4, 5), (3, 4)]
    assert make("drtp").feedback_shapes() == [(3, 5), (3, 4), None]
    assert make("shallow").feedback_shapes() == [None, None, None]


def test_usf_feedback_is_scaled_sign_of_w_and_follows_it():
    net = make("usf", sizes=(30, 20, 10))
    W, B = net.layers[1].W, net.layers[1].B
    std = np.sqrt(6 / (20 + 10)) / np.sqrt(3)  # the Glorot-uniform std of that layer
    np.testing.assert_allclose(B, std * np.where(W.T >= 0, 1.0, -1.0), rtol=1e-12)
    X, y = batch(net, 64)
    net.fit(X, y, epochs=5, batch_size=8, optimizer=pyjlfa.SGD(0.5))
    np.testing.assert_allclose(net.layers[1].B, std * np.where(net.layers[1].W.T >= 0, 1.0, -1.0), rtol=1e-12)
    custom = pyjlfa.Network([30, 20, 10], rule=pyjlfa.rules.USF(scale=0.25), dtype="float64")
    np.testing.assert_array_equal(np.abs(custom.layers[1].B), 0.25)


def test_frsf_keeps_magnitudes_and_brsf_redraws_them():
    fr, br = make("frsf"), make("brsf")
    mag_fr, mag_br = np.abs(fr.layers[2].B).copy(), np.abs(br.layers[2].B).copy()
    X, y = batch(fr, 32)
    for net in (fr, br):
        net.fit(X, y, epochs=2, batch_size=8, optimizer=pyjlfa.SGD(0.3))
        for layer in net.layers[1:]:
            assert np.all(np.sign(layer.B) == np.where(layer.W.T >= 0, 1, -1))  # signs follow W
    np.testing.assert_array_equal(np.abs(fr.layers[2].B), mag_fr)
    assert not np.allclose(np.abs(br.layers[2].B), mag_br)
    assert np.abs(br.layers[2].B).max() <= np.sqrt(6 / (4 + 3))  # redrawn from the same Glorot law


@pytest.mark.parametrize("rule,optimizer", [
    ("kp", pyjlfa.SGD(0.05, momentum=0.9, weight_decay=0.01)),
    ("wm", pyjlfa.SGD(0.05, momentum=0.9)),
])
@pytest.mark.slow
def test_kolen_pollack_and_weight_mirror_drive_b_to_w_transpose(rule, optimizer):
    Xtr, ytr, _, _ = pyjlfa.datasets.fashion_mnist()
    net = pyjlfa.Network([784, 64, 10], rule=rule, seed=0)
    before = angle(net.layers[1].B, net.layers[1].W.T)
    fa = pyjlfa.Network([784, 64, 10], rule="fa", seed=0)
    net.fit(Xtr[:6000], ytr[:6000], epochs=2, batch_size=32, optimizer=optimizer)
    fa.fit(Xtr[:6000], ytr[:6000], epochs=2, batch_size=32, optimizer=optimizer)
    after = angle(net.layers[1].B, net.layers[1].W.T)
    assert before > 80  # random B starts (nearly) orthogonal to W.T
    assert after < 15, (before, after)
    assert angle(fa.layers[1].B, fa.layers[1].W.T) > 45  # FA only partly aligns in the same time


def test_drtp_never_reads_the_error():
    """Hidden-layer updates depend on the target, not on the output: change the output layer and
    the output error changes, yet DRTP's hidden gradients do not (DFA's do)."""
    for rule, same in (("drtp", True), ("dfa", False)):
        net = make(rule)
        X, y = batch(net, 10)
        g1 = net.gradients(X, y)
        net.layers[2].W[:] *= -3.0
        g2 = net.gradients(X, y)
        assert np.allclose(g1[0][0], g2[0][0]) == same
        assert not np.allclose(g1[2][0], g2[2][0])  # the output layer still learns from e


def test_shallow_trains_only_the_output_layer():
    net = make("shallow")
    hidden = [l.W.copy() for l in net.layers[:2]]
    out = net.layers[2].W.copy()
    X, y = batch(net, 40)
    net.fit(X, y, epochs=3, batch_size=8, optimizer=pyjlfa.SGD(0.3, momentum=0.9, weight_decay=0.1))
    for W, layer in zip(hidden, net.layers[:2]):
        np.testing.assert_array_equal(layer.W, W)
    assert not np.allclose(net.layers[2].W, out)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(rule="drtp", loss="mse"), ValueError, "drtp.*needs loss='cross_entropy'"),
    (dict(rule="fa", feedback=[None, np.zeros((4, 5))]), ValueError, r"feedback lists 2 entries; the network has 3 layers"),
    (dict(rule="fa", feedback=[None, np.zeros((5, 4)), np.zeros((3, 4))]), ValueError, r"layer 1, Dense\(5 => 4, tanh\) has a B of shape \(4, 5\) under FA\(\), but the given feedback array has shape \(5, 4\)"),
    (dict(rule="fa", feedback=[None, np.zeros((4, 5), np.float32), np.zeros((3, 4))]), TypeError, r"feedback\[1\] is used in place as B.*float64"),
    (dict(rule="fa", feedback=[np.zeros((5, 6)), None, None]), ValueError, r"the feedback given for layer 0 is an array, but under FA\(\) layer 0 \(Dense\(6 => 5, tanh\)\) has no feedback array"),
    (dict(rule="fa", feedback=[None, None, np.zeros((3, 4))]), ValueError, r"the feedback given for layer 1 is nothing, but under FA\(\) layer 1 \(Dense\(5 => 4, tanh\)\) has a feedback array"),
    (dict(rule="brsf", feedback=[None, np.zeros((4, 5)), np.zeros((3, 4))]), ValueError, "brsf' redraws B every batch"),
    (dict(rule="fa", feedback="gaussian"), ValueError, "unknown feedback 'gaussian'; expected one of"),
    (dict(rule="fa", feedback=3.0), TypeError, "feedback must be an initialiser name"),
    (dict(rule="fa", dropout=1.0), ValueError, r"dropout rates must be numbers in \[0, 1\)"),
    (dict(rule="fa", dropout=[0.1]), ValueError, r"dropout lists 1 rates; expected one per layer but the last \(2\)"),
])
def test_invalid_combinations_are_refused_before_training(kwargs, error, match):
    with pytest.raises(error, match=match):
        make(sizes=(6, 5, 4, 3), **kwargs)


@pytest.mark.parametrize("make_init,match", [
    (lambda: init.Sparse(0.0), r"Sparse: density \(fraction of non-zeros\) must be > 0"),
    (lambda: init.Sparse(1.5), r"must be <= 1"),
    (lambda: init.Normal(-1.0), "Normal: std must be > 0"),
    (lambda: pyjlfa.SGD(0.1, nesterov=True), "nesterov needs a momentum > 0"),
    (lambda: pyjlfa.Adam(beta1=1.0), "beta1 must be < 1"),
    (lambda: pyjlfa.StepDecay(0), "every must be >= 1"),
    (lambda: pyjlfa.Cosine(10, min_factor=2.0), "min_factor must be <= 1"),
    (lambda: pyjlfa.rules.WeightMirror(steps=0), "WeightMirror: steps must be >= 1"),
])
def test_option_values_validate_themselves(make_init, match):
    with pytest.raises(ValueError, match=match):
        make_init()


def test_given_feedback_matrix_is_used_in_place():
    B1 = np.random.default_rng(0).normal(size=(4, 5))
    net = make("fa", feedback=[None, B1, "he_normal"])
    assert np.shares_memory(net.layers[1].B, B1)
    B1[:] = net.layers[1].W.T  # the user's array is the model's B: FA now equals BP on that layer
    bp = make("bp")
    for layer, src in zip(bp.layers, net.layers):
        layer.W[:], layer.b[:] = src.W, src.b
    net.layers[2].B[:] = net.layers[2].W.T
    X, y = batch(net, 6)
    for (a, b), (c, d) in zip(net.gradients(X, y), bp.gradients(X, y)):
        np.testing.assert_allclose(a, c, rtol=1e-12)


@pytest.mark.slow
def test_feedback_initialisers():
    sizes = (200, 300, 100, 10)
    net = lambda fb, **kw: pyjlfa.Network(list(sizes), rule="fa", feedback=fb, seed=1, dtype="float64", **kw)
    B = net(init.Normal(0.2)).layers[1].B
    assert B.std() == pytest.approx(0.2, rel=0.02) and abs(B.mean()) < 0.01
    B = net("he_uniform").layers[1].B  # shape (100, 300): fan_in = 100 (it carries 100 errors to 300 units)
    assert np.abs(B).max() <= np.sqrt(6 / 100) and np.abs(B).max() > 0.99 * np.sqrt(6 / 100)
    B = net(init.Sparse(0.1, init.Normal(1.0))).layers[1].B
    assert np.count_nonzero(B) == round(0.1 * B.size)
    B = net("orthogonal").layers[2].B  # (10, 100): orthonormal rows
    np.testing.assert_allclose(B @ B.T, np.eye(10), atol=1e-12)
    n = net(init.SignConcordant(init.Uniform(0.3)))
    assert np.all(np.sign(n.layers[1].B) == np.sign(n.layers[1].W.T)) and np.abs(n.layers[1].B).max() <= 0.3
    assert not net("zeros").layers[1].B.any()
    a, b = net("glorot_uniform"), net("glorot_uniform", feedback_seed=2)
    np.testing.assert_array_equal(a.layers[1].W, b.layers[1].W)
    assert not np.array_equal(a.layers[1].B, b.layers[1].B)
    z = pyjlfa.Network([6, 5, 3], rule="dfa", init="zeros", dtype="float64")
    assert not z.layers[0].W.any()


def one_step_problem(seed=0):
    net = pyjlfa.Network([4, 3, 2], rule="bp", loss="mse", activation="identity", seed=seed, dtype="float64")
    rng = np.random.default_rng(seed)
    X, Y = rng.normal(size=(5, 4)), rng.normal(size=(5, 2))
    return net, X, Y


def params(net):
    return [p.copy() for l in net.layers for p in (l.W, l.b)]


@pytest.mark.parametrize("opt", [
    pyjlfa.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01, decoupled_weight_decay=0.02),
    pyjlfa.Adam(0.01, weight_decay=0.01),
    pyjlfa.AdamW(0.01, decoupled_weight_decay=0.05),
    pyjlfa.SGD(0.1, layer_lr=[1.0, 0.25]),
])
def test_optimisers_match_their_formulas(opt):
    net, X, Y = one_step_problem()
    state = {}
    expected = params(net)
    for t in range(1, 4):
        grads = [g for pair in net.gradients(X, Y) for g in pair]
        net.step(X, Y, opt)
        for i, (p, g) in enumerate(zip(expected, grads)):
            decays = i % 2 == 0  # weights decay, biases do not
            layer = i // 2
            wd = opt.weight_decay if decays else 0.0
            dd = opt.decoupled_weight_decay if decays else 0.0
            lr = opt.lr * (1.0 if opt.layer_lr is None else opt.layer_lr[layer])
            g = g + wd * p
            if isinstance(opt, pyjlfa.SGD):
                v = state[i] = opt.momentum * state.get(i, 0) + g
                step = g + opt.momentum * v if opt.nesterov else v
            else:
                m = state[i, "m"] = opt.beta1 * state.get((i, "m"), 0) + (1 - opt.beta1) * g
                v = state[i, "v"] = opt.beta2 * state.get((i, "v"), 0) + (1 - opt.beta2) * g * g
                step = (m / (1 - opt.beta1 ** t)) / (np.sqrt(v / (1 - opt.beta2 ** t)) + opt.eps)
            p -= lr * (step + dd * p)
        for p, q in zip(expected, params(net)):
            np.testing.assert_allclose(q, p, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("schedule,factors", [
    (pyjlfa.StepDecay(2, 0.5), [1, 1, 0.5, 0.5, 0.25]),
    (pyjlfa.Cosine(4, 0.1), [0.1 + 0.9 * (1 + np.cos(np.pi * min(e, 4) / 4)) / 2 for e in range(5)]),
])
@pytest.mark.slow
def test_schedules_set_the_rate_per_epoch(schedule, factors):
    net, X, Y = one_step_problem()
    ref, _, _ = one_step_problem()
    for f in factors:  # one batch per epoch: each epoch is one plain SGD step at lr * factor
        net.fit(X, Y, epochs=1, batch_size=5, shuffle=False, optimizer=pyjlfa.SGD(0.1, schedule=schedule))
        ref.step(X, Y, pyjlfa.SGD(0.1 * f))
    for a, b in zip(params(net), params(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_dropout_trains_but_not_in_evaluation_or_gradients():
    plain = make("fa", dropout=0.0)
    dropped = make("fa", dropout=[0.5, 0.0])
    X, y = batch(plain, 50)
    assert dropped.evaluate(X, y) == plain.evaluate(X, y)  # no dropout when evaluating
    for a, b in zip(dropped.gradients(X, y), plain.gradients(X, y)):  # nor in gradients()
        np.testing.assert_array_equal(a[0], b[0])
    la, lb = plain.step(X, y, pyjlfa.SGD(0.1)), dropped.step(X, y, pyjlfa.SGD(0.1))
    assert la != lb  # the training step dropped units
    # Inverted dropout keeps the expected activation: the mean loss over many steps stays close.
    hist = dropped.fit(X, y, epochs=20, batch_size=10, optimizer=pyjlfa.SGD(0.1))
    assert hist["loss"][-1] < hist["loss"][0]
