"""Alignment diagnostics against a NumPy oracle built on the reference (tests/reference.py), and their tracking in fit."""

import functools
import math

import numpy as np
import pytest

import pyjlfa
from reference import ReferenceNetwork, _activate, _derivative

from conftest import batch, reference_of


def angle(a, b):
    """Degrees between two arrays as vectors (plain arccos of the cosine)."""
    cos = np.sum(a * b) / (np.linalg.norm(a) * np.linalg.norm(b))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def oracle(net, X, y):
    """The diagnostics computed from scratch in NumPy from the network's current parameters."""
    ref = reference_of(net)
    bp = ReferenceNetwork(ref.Ws, ref.bs, None, activation=net.activation, rule="bp", loss=net.loss)
    X = np.asarray(X, dtype=ref.dtype)
    inputs, pre, z = ref._forward(X)
    _, e = ref._loss_and_error(z, y)
    L, m = len(ref.Ws), X.shape[0]
    deltas = {"rule": [None] * L, "bp": [None] * L}
    for which in deltas:
        deltas[which][L - 1] = e
        for k in range(L - 2, -1, -1):
            fprime = _derivative(net.activation, pre[k], _activate(net.activation, pre[k]))
            if which == "bp":
                back = deltas["bp"][k + 1] @ ref.Ws[k + 1].T
            elif net.rule == "fa":
                back = deltas["rule"][k + 1] @ ref.Bs[k + 1]
            else:
                back = e @ ref.Bs[k]
            deltas[which][k] = back * fprime
    g_rule, g_bp = ref.gradients(X, y), bp.gradients(X, y)
    out = []
    for k in range(L):
        dW, bW, W, B = g_rule[k][0], g_bp[k][0], ref.Ws[k], ref.Bs[k]
        hidden = k < L - 1
        row = {"role": "feedback" if hidden else "output",
               "delta_angle": angle(deltas["rule"][k], deltas["bp"][k]) if hidden else math.nan,
               "update_angle": angle(dW, bW) if hidden else math.nan,
               "alignment_product": (m * m * np.sum(deltas["rule"][k] * deltas["bp"][k]) / m) if hidden else math.nan,
               "update_weight_ratio": np.linalg.norm(dW) / np.linalg.norm(W),
               "update_bp_ratio": np.linalg.norm(dW) / np.linalg.norm(bW)}
        if B is None:
            row["feedback_angle"] = row["weight_feedback_ratio"] = math.nan
        else:
            # Python's view: FA's B stands for W.T; DFA's for (W_{k+1} @ ... @ W_out).T
            target = W.T if net.rule == "fa" else functools.reduce(np.matmul, ref.Ws[k + 1:]).T
            row["feedback_angle"] = angle(B, target)
            row["weight_feedback_ratio"] = np.linalg.norm(target) / np.linalg.norm(B)
        out.append(row)
    return out


def assert_matches(got, expected, rtol=1e-9):
    assert got["role"] == [row["role"] for row in expected]
    for field in expected[0]:
        if field == "role":
            continue
        want = np.array([row[field] for row in expected], dtype=float)
        np.testing.assert_allclose(got[field], want, rtol=rtol, atol=1e-9, equal_nan=True, err_msg=field)


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["fa", "dfa"])
@pytest.mark.parametrize("loss,act", [("cross_entropy", "tanh"), ("mse", "sigmoid")])
def test_diagnostics_match_the_numpy_oracle(rule, loss, act):
    net = pyjlfa.Network([7, 6, 5, 4], activation=act, rule=rule, loss=loss, seed=2, dtype="float64")
    X, y = batch(net, 11)
    before = [l.W.copy() for l in net.layers]
    got = net.alignment(X, y)
    assert_matches(got, oracle(net, X, y))
    # random feedback at initialisation: hidden updates are far from backprop's, but not trivially so
    assert all(20 < a < 160 for a in got["update_angle"][:2])
    assert all(np.array_equal(W, l.W) for W, l in zip(before, net.layers))  # nothing changed


def test_after_training_the_oracle_still_agrees_and_fa_has_aligned():
    """After some FA training the angles fall below 90 degrees and still match the oracle."""
    net = pyjlfa.Network([8, 16, 16, 3], rule="fa", seed=4, dtype="float64")
    X, y = batch(net, 400, seed=5)
    y = (X[:, :3].argmax(axis=1))  # a learnable rule, so that training has a direction
    start = net.alignment(X, y)
    net.fit(X, y, epochs=30, batch_size=20, optimizer=pyjlfa.SGD(0.1, 0.9))
    end = net.alignment(X, y)
    assert_matches(end, oracle(net, X, y))
    assert end["update_angle"][1] < 80 < start["update_angle"][1]
    assert end["alignment_product"][1] > 0


def test_fa_with_B_equal_to_W_transpose_is_backprop():
    net = pyjlfa.Network([6, 5, 4, 3], rule="fa", seed=3, dtype="float64")
    for layer in net.layers[1:]:
        layer.B[...] = layer.W.T
    X, y = batch(net, 9)
    a = net.alignment(X, y)
    np.testing.assert_allclose(a["delta_angle"][:2], 0, atol=1e-6)
    np.testing.assert_allclose(a["update_angle"][:2], 0, atol=1e-6)
    np.testing.assert_allclose(a["feedback_angle"][1:], 0, atol=1e-6)
    np.testing.assert_allclose(a["update_bp_ratio"], 1, rtol=1e-12)
    np.testing.assert_allclose(a["weight_feedback_ratio"][1:], 1, rtol=1e-12)
    assert (a["alignment_product"][:2] > 0).all()


def test_one_hidden_layer_dfa_with_B_equal_to_W_transpose_is_backprop_in_float32_too():
    net = pyjlfa.Network([6, 5, 3], rule="dfa", seed=3, dtype="float32")
    net.layers[0].B[...] = net.layers[1].W.T
    a = net.alignment(*batch(net, 16))
    assert a["role"] == ["feedback", "output"]
    # float32 rounding of the two products only: the angle's own sums are Float64
    assert a["delta_angle"][0] < 1e-2 and a["update_angle"][0] < 1e-2 and a["feedback_angle"][0] < 1e-2


def test_backprop_and_the_output_layer_report_no_comparison():
    net = pyjlfa.Network([6, 5, 4, 3], rule="bp", seed=1, dtype="float64")
    a = net.alignment(*batch(net, 8))
    assert a["role"] == ["backprop", "backprop", "output"]
    for field in ("delta_angle", "update_angle", "feedback_angle", "alignment_product", "weight_feedback_ratio"):
        assert np.isnan(a[field]).all(), field
    np.testing.assert_allclose(a["update_bp_ratio"], 1)
    assert (a["update_weight_ratio"] > 0).all()
    assert pyjlfa.diagnostics.hidden_means(a, "update_angle") != pyjlfa.diagnostics.hidden_means(a, "update_angle")


def test_layers_without_an_error_signal_are_reported_as_such():
    """Dead ReLUs in the first layer: it gets no error and the next layer no input, so no update."""
    net = pyjlfa.Network([6, 5, 4, 3], activation="relu", rule="fa", seed=1, dtype="float64")
    net.layers[0].b[:] = -100.0
    a = net.alignment(*batch(net, 8))
    assert a["role"] == ["no_signal", "no_signal", "output"]
    assert np.isnan(a["update_angle"][:2]).all() and np.isnan(a["delta_angle"][:2]).all()
    assert np.isnan(pyjlfa.diagnostics.hidden_means(a, "update_angle"))


def test_tracking_records_what_alignment_reports_on_the_same_batches():
    sizes, every, bs = [6, 8, 5, 3], 3, 8
    tracked = pyjlfa.Network(sizes, rule="dfa", seed=6, dtype="float64")
    plain = pyjlfa.Network(sizes, rule="dfa", seed=6, dtype="float64")
    replay = pyjlfa.Network(sizes, rule="dfa", seed=6, dtype="float64")
    X, y = batch(tracked, 60)
    opt = pyjlfa.SGD(0.1, 0.5)
    hist = tracked.fit(X, y, epochs=2, batch_size=bs, shuffle=False, optimizer=opt, track_alignment=every)
    # tracking changes nothing in training
    assert hist["loss"] == plain.fit(X, y, epochs=2, batch_size=bs, shuffle=False, optimizer=opt)["loss"]
    for a, b in zip(tracked.layers, plain.layers):
        np.testing.assert_array_equal(a.W, b.W)
    a = hist["alignment"]
    batches = 8  # ceil(60 / 8) per epoch
    assert a["step"] == list(range(0, 2 * batches, every))
    assert a["epoch"] == [1 + s // batches for s in a["step"]]
    assert a["batch"] == [1 + s % batches for s in a["step"]]
    # each record is alignment() on that batch, before its update
    for i in range(2 * batches):
        b = i % batches
        Xb, yb = X[b * bs:(b + 1) * bs], y[b * bs:(b + 1) * bs]
        if i % every == 0:
            expected = replay.alignment(Xb, yb)
            record = a["step"].index(i)
            assert a["role"][record] == expected["role"]
            for field in ("delta_angle", "update_angle", "feedback_angle", "alignment_product", "update_weight_ratio"):
                np.testing.assert_allclose(a[field][record], expected[field], rtol=1e-10, equal_nan=True)
        replay.step(Xb, yb, opt)
    # the next fit without tracking records nothing
    assert "alignment" not in tracked.fit(X, y, epochs=1, batch_size=bs)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "10"])
def test_track_alignment_must_be_a_positive_integer(bad):
    net = pyjlfa.Network([4, 3], seed=0)
    X, y = batch(net, 10)
    with pytest.raises(ValueError, match="track_alignment must be a positive integer"):
        net.fit(X, y, track_alignment=bad)


def test_alignment_validates_its_input():
    net = pyjlfa.Network([4, 3, 2], seed=0)
    X, y = batch(net, 5)
    with pytest.raises(ValueError, match="X has 3 features"):
        net.alignment(X[:, :3], y)
    with pytest.raises(ValueError, match="labels outside"):
        net.alignment(X, y + 5)
