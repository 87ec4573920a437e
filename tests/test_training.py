"""End-to-end training: networks learn, histories report what happened, the API behaves as documented."""

import numpy as np
import pytest

import pyjlfa

from conftest import batch


@pytest.fixture(scope="module")
def fashion():
    Xtr, ytr, Xte, yte = pyjlfa.datasets.fashion_mnist()
    return Xtr[:12000], ytr[:12000], Xte[:2000], yte[:2000]


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["bp", "fa", "dfa"])
def test_each_rule_learns_fashion_mnist(fashion, rule):
    Xtr, ytr, Xte, yte = fashion
    net = pyjlfa.Network([784, 64, 64, 10], activation="tanh", rule=rule, seed=0)
    chance = net.evaluate(Xte, yte)
    hist = net.fit(Xtr, ytr, epochs=2, batch_size=64, optimizer=pyjlfa.SGD(lr=0.05), validation_data=(Xte, yte))
    # Chance is 10 %; two short epochs of any working rule reach well above 70 %.
    assert chance["accuracy"] < 0.3
    assert hist["val_accuracy"][-1] > 0.72
    assert hist["loss"][1] < hist["loss"][0] < chance["loss"]
    assert net.evaluate(Xte, yte)["accuracy"] == hist["val_accuracy"][-1]


def test_history_and_progress(capsys, small_net):
    X, y = batch(small_net, 40)
    hist = small_net.fit(X, y, epochs=3, batch_size=16, validation_data=(X, y), progress=True)
    assert set(hist) == {"loss", "accuracy", "val_loss", "val_accuracy", "seconds"}
    assert all(len(v) == 3 for v in hist.values())
    assert all(0 <= a <= 1 for a in hist["accuracy"] + hist["val_accuracy"])
    err = capsys.readouterr().err
    for epoch in (1, 2, 3):
        assert f"epoch {epoch}/3" in err
    assert "val_accuracy" in err


def test_step_returns_the_loss_before_the_update(small_net):
    X, y = batch(small_net, 16)
    before = small_net.evaluate(X, y)["loss"]
    assert small_net.step(X, y, pyjlfa.SGD(lr=0.5)) == pytest.approx(before, rel=1e-12)
    assert small_net.evaluate(X, y)["loss"] < before


def test_predictions_are_consistent(small_net):
    X, _ = batch(small_net, 50)
    proba = small_net.predict_proba(X)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(small_net.predict(X), proba.argmax(axis=1))
    assert small_net.predict(X).dtype == np.int64


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["bp", "fa", "dfa"])
def test_regression_learns_a_linear_map(rule):
    rng = np.random.default_rng(0)
    T = rng.uniform(-1, 1, size=(8, 3))
    X = rng.normal(size=(500, 8))
    Y = X @ T
    net = pyjlfa.Network([8, 16, 3], activation="tanh", rule=rule, loss="mse", seed=1, dtype="float64")
    start = net.evaluate(X, Y)["loss"]
    hist = net.fit(X, Y, epochs=30, batch_size=20, optimizer=pyjlfa.SGD(lr=0.02, momentum=0.9))
    assert set(hist) == {"loss", "seconds"}
    assert hist["loss"][-1] < 0.05 * start
    assert net.predict(X).shape == (500, 3)


def test_same_seed_same_training_and_feedback_seed_only_changes_B():
    X, y = batch(pyjlfa.Network([6, 5, 3]), 40)
    nets = [pyjlfa.Network([6, 8, 8, 3], rule="fa", seed=5, feedback_seed=fs, dtype="float64") for fs in (5, 5, 6)]
    np.testing.assert_array_equal(nets[0].layers[0].W, nets[2].layers[0].W)
    assert not np.array_equal(nets[0].layers[1].B, nets[2].layers[1].B)
    hists = [n.fit(X, y, epochs=2, batch_size=8) for n in nets]
    assert hists[0]["loss"] == hists[1]["loss"] != hists[2]["loss"]
    np.testing.assert_array_equal(nets[0].layers[2].W, nets[1].layers[2].W)


def test_float64_and_float32_models_start_from_the_same_draws():
    n32 = pyjlfa.Network([6, 5, 3], seed=9, dtype="float32")
    n64 = pyjlfa.Network([6, 5, 3], seed=9, dtype="float64")
    for a, b in zip(n32.layers, n64.layers):
        np.testing.assert_array_equal(a.W, b.W.astype(np.float32))
    assert n32.layers[0].W.dtype == np.float32 and n64.layers[0].W.dtype == np.float64


def test_glorot_uniform_initial_weights():
    net = pyjlfa.Network([300, 200, 10], rule="fa", seed=0, dtype="float64")
    limit = np.sqrt(6 / (300 + 200))
    W = net.layers[0].W
    assert np.abs(W).max() <= limit and np.abs(W).max() > 0.99 * limit
    assert abs(W.mean()) < 0.01 * limit and W.std() == pytest.approx(limit / np.sqrt(3), rel=0.01)
    np.testing.assert_array_equal(net.layers[0].b, 0)
