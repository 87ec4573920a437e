"""Cross-language agreement: the Julia engine against the plain NumPy reference (tests/reference.py)."""

import numpy as np
import pytest

import pyjlfa
from reference import SplitMix64

from conftest import ACTIVATIONS, LOSSES, RULES, TOLERANCE, batch, reference_of

CASES = [(dtype, act, rule, loss) for dtype in ("float64", "float32") for act in ACTIVATIONS
         for rule in RULES for loss in LOSSES]


def make(dtype, act, rule, loss, sizes=(6, 5, 4, 3), seed=7):
    net = pyjlfa.Network(list(sizes), activation=act, rule=rule, loss=loss, seed=seed, dtype=dtype)
    # Non-zero biases so that a dropped or misplaced bias shows.
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        layer.b[:] = rng.normal(scale=0.1, size=layer.b.shape)
    return net


@pytest.mark.slow
@pytest.mark.parametrize("dtype,act,rule,loss", CASES)
def test_forward_loss_and_gradients_agree(dtype, act, rule, loss):
    net = make(dtype, act, rule, loss)
    ref = reference_of(net)
    X, y = batch(net, 9)
    tol = TOLERANCE[dtype]
    np.testing.assert_allclose(net.outputs(X), ref.forward(X), **tol)
    assert net.evaluate(X, y)["loss"] == pytest.approx(ref.loss(X, y), rel=tol["rtol"])
    for (dW, db), (rW, rb) in zip(net.gradients(X, y), ref.gradients(X, y)):
        scale = max(np.abs(rW).max(), np.abs(rb).max())
        np.testing.assert_allclose(dW, rW, rtol=tol["rtol"], atol=tol["rtol"] * scale)
        np.testing.assert_allclose(db, rb, rtol=tol["rtol"], atol=tol["rtol"] * scale)
    if loss == "cross_entropy":
        np.testing.assert_allclose(net.predict_proba(X), ref.predict_proba(X), **tol)
        np.testing.assert_array_equal(net.predict(X), ref.forward(X).argmax(axis=1))


def assert_same_parameters(net, ref, tol):
    for layer, W, b in zip(net.layers, ref.Ws, ref.bs):
        np.testing.assert_allclose(layer.W, W, **tol)
        np.testing.assert_allclose(layer.b, b, **tol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("rule", RULES)
def test_sgd_momentum_steps_agree(dtype, rule):
    net = make(dtype, "tanh", rule, "cross_entropy")
    ref = reference_of(net)
    tol = TOLERANCE[dtype]
    for seed in range(3):  # momentum carries across calls
        X, y = batch(net, 8, seed=seed)
        loss = net.step(X, y, pyjlfa.SGD(lr=0.1, momentum=0.9))
        assert loss == pytest.approx(ref.step(X, y, lr=0.1, momentum=0.9), rel=tol["rtol"])
    assert_same_parameters(net, ref, tol)


@pytest.mark.slow
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("rule", RULES)
def test_epoch_in_order_agrees(rule, loss):
    net = make("float64", "sigmoid", rule, loss)
    ref = reference_of(net)
    X, y = batch(net, 23)  # 23 = 4 batches of 5 and a last batch of 3
    hist = net.fit(X, y, epochs=2, batch_size=5, shuffle=False, optimizer=pyjlfa.SGD(lr=0.2, momentum=0.5))
    expected = [ref.train_epoch(X, y, batch_size=5, lr=0.2, momentum=0.5) for _ in range(2)]
    np.testing.assert_allclose(hist["loss"], expected, rtol=1e-10)
    assert_same_parameters(net, ref, TOLERANCE["float64"])


@pytest.mark.parametrize("rule", RULES)
def test_shuffled_epochs_follow_the_documented_splitmix_order(rule):
    """fit's shuffling is SplitMix64 stream 3 of the seed with Fisher-Yates, continuing across epochs."""
    net = make("float64", "tanh", rule, "cross_entropy", seed=11)
    ref = reference_of(net)
    X, y = batch(net, 30)
    hist = net.fit(X, y, epochs=3, batch_size=4, optimizer=pyjlfa.SGD(lr=0.1))
    rng = SplitMix64.stream(11, 3)
    expected = [ref.train_epoch(X, y, batch_size=4, lr=0.1, order=rng.permutation(30)) for _ in range(3)]
    np.testing.assert_allclose(hist["loss"], expected, rtol=1e-10)
    assert_same_parameters(net, ref, TOLERANCE["float64"])


def test_evaluate_over_many_chunks_agrees():
    """evaluate/predict run the forward pass in chunks of 1024; results must not depend on it."""
    net = make("float64", "relu", "dfa", "cross_entropy", sizes=(6, 8, 3))
    ref = reference_of(net)
    X, y = batch(net, 2500)
    assert net.evaluate(X, y)["loss"] == pytest.approx(ref.loss(X, y), rel=1e-10)
    acc = np.mean(ref.forward(X).argmax(axis=1) == y)
    assert net.evaluate(X, y)["accuracy"] == pytest.approx(acc, abs=0)
    np.testing.assert_allclose(net.outputs(X), ref.forward(X), rtol=1e-10, atol=1e-12)
