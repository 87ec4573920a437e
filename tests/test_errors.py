"""Bad input is refused at the edge, before any Julia work; Julia's own errors become Python exceptions."""

import threading

import numpy as np
import pytest

import pyjlfa
from pyjlfa._runtime import engine

from conftest import assert_unchanged, batch, snapshot


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(sizes=[784]), ValueError, "at least an input and an output"),
    (dict(sizes="784-10"), ValueError, "sizes"),
    (dict(sizes=[784, 0, 10]), ValueError, "sizes must be a positive integer, got 0"),
    (dict(sizes=[784, 2.5, 10]), ValueError, "sizes must be a positive integer, got 2.5"),
    (dict(activation="tanhh"), ValueError, "unknown activation 'tanhh'; expected one of .*'tanh'"),
    (dict(activation=np.tanh), TypeError, "activation must be a string"),
    (dict(rule="xyz"), ValueError, "unknown rule 'xyz'; expected one of 'bp', 'brsf', 'dfa', 'drtp', 'fa', 'frsf', 'kp'"),
    (dict(loss="hinge"), ValueError, "unknown loss 'hinge'"),
    (dict(dtype="float16"), ValueError, "unknown dtype 'float16'"),
    (dict(dtype=object()), TypeError, "dtype must be 'float32' or 'float64'"),
    (dict(seed=-1), ValueError, r"seed must be an integer in \[0, 2\*\*64\)"),
    (dict(seed=1.5), ValueError, "seed must be an integer"),
    (dict(feedback_seed=-3), ValueError, "feedback_seed must be an integer"),
])
def test_constructor_refuses_bad_arguments(kwargs, error, match):
    args = dict(sizes=[4, 3, 2])
    args.update(kwargs)
    with pytest.raises(error, match=match):
        pyjlfa.Network(args.pop("sizes"), **args)


def bad_fit_calls():
    X, y = batch(pyjlfa.Network([6, 5, 3], seed=0), 10)
    Xnan, Xinf = X.copy(), X.copy()
    Xnan[3, 2], Xinf[0, 0] = np.nan, np.inf
    sgd = pyjlfa.SGD(lr=0.1)
    return [
        ("X 1-D", dict(X=X[0]), ValueError, r"X must be 2-D \(samples, features\)"),
        ("X features", dict(X=X[:, :5]), ValueError, "X has 5 features per sample; this network expects 6"),
        ("X empty", dict(X=X[:0], y=y[:0]), ValueError, "X is empty"),
        ("X NaN", dict(X=Xnan), ValueError, r"X contains NaN or Inf \(first at sample 3, feature 2\)"),
        ("X Inf", dict(X=Xinf), ValueError, "X contains NaN or Inf"),
        ("X strings", dict(X=X.astype(str)), TypeError, "X must hold real numbers"),
        ("X float64 overflow", dict(X=X.astype(np.float64) * 1e300), ValueError, "X contains NaN or Inf"),
        ("y length", dict(y=y[:9]), ValueError, "y must be a 1-D array of 10 class labels"),
        ("y 2-D", dict(y=y[:, None]), ValueError, "y must be a 1-D array"),
        ("y float", dict(y=y.astype(float)), TypeError, "y must hold integer class labels 0..2"),
        ("y too big", dict(y=np.where(np.arange(10) == 4, 3, y)), ValueError, r"labels outside \[0, 3\): y\[4\] = 3"),
        ("y negative", dict(y=np.where(np.arange(10) == 0, -1, y)), ValueError, r"y\[0\] = -1"),
        ("epochs 0", dict(epochs=0), ValueError, "epochs must be a positive integer, got 0"),
        ("epochs float", dict(epochs=2.0), ValueError, "epochs must be a positive integer"),
        ("batch 0", dict(batch_size=0), ValueError, "batch_size must be a positive integer, got 0"),
        ("batch negative", dict(batch_size=-4), ValueError, "batch_size must be a positive integer"),
        ("batch bool", dict(batch_size=True), ValueError, "batch_size must be a positive integer"),
        ("optimizer", dict(optimizer="sgd"), TypeError, "optimizer must be a pyjlfa optimizer"),
        ("validation shape", dict(validation_data=(X,)), ValueError, "validation_data must be a pair"),
        ("validation labels", dict(validation_data=(X, y + 5)), ValueError, r"validation_data\[1\] has labels outside"),
        ("validation features", dict(validation_data=(X[:, :4], y)), ValueError, r"validation_data\[0\] has 4 features"),
    ], X, y, sgd


CALLS, X0, Y0, SGD0 = bad_fit_calls()


@pytest.mark.parametrize("name,override,error,match", CALLS, ids=[c[0] for c in CALLS])
def test_fit_refuses_bad_input_and_leaves_the_model_unchanged(name, override, error, match):
    net = pyjlfa.Network([6, 5, 3], seed=0)
    before = snapshot(net)
    args = dict(X=X0, y=Y0, epochs=1, batch_size=4, optimizer=SGD0)
    args.update(override)
    with pytest.raises(error, match=match):
        net.fit(args.pop("X"), args.pop("y"), **args)
    assert_unchanged(net, before)
    # The same bad data is refused by every other entry, too.
    if "X" in override or "y" in override:
        Xb, yb = override.get("X", X0), override.get("y", Y0)
        for call in (lambda: net.step(Xb, yb, SGD0), lambda: net.gradients(Xb, yb), lambda: net.evaluate(Xb, yb)):
            with pytest.raises(error, match=match):
                call()
        assert_unchanged(net, before)


@pytest.mark.parametrize("kwargs,match", [
    (dict(lr=0), "SGD: lr must be > 0, got 0"),
    (dict(lr=-0.1), "SGD: lr must be > 0, got -0.1"),
    (dict(lr=float("nan")), "SGD: lr must be a finite number, got nan"),
    (dict(lr=0.1, momentum=1.0), r"SGD: momentum must be < 1, got 1.0"),
    (dict(lr=0.1, momentum=-0.5), "momentum"),
])
def test_sgd_refuses_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pyjlfa.SGD(**kwargs)


def test_mse_targets_are_checked():
    net = pyjlfa.Network([4, 3, 2], loss="mse", seed=0)
    X = np.zeros((5, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"y must have shape \(5, 2\) for the mse loss"):
        net.fit(X, np.zeros(5))
    with pytest.raises(ValueError, match="y contains NaN or Inf"):
        net.fit(X, np.full((5, 2), np.nan))
    with pytest.raises(ValueError, match="predict_proba needs the cross_entropy loss"):
        net.predict_proba(X)


def test_julia_errors_become_python_exceptions_and_the_process_keeps_working(small_net):
    eng = engine()
    with pytest.raises(pyjlfa.JuliaError, match="no network with handle 987654321"):
        eng.call("fa_free", 987654321)
    # Julia checks what reaches it, too: a caller that skips Python's checks gets Julia's message.
    X, y = batch(small_net, 4)
    out = np.empty((4, 3))
    with pytest.raises(pyjlfa.JuliaError, match="X has 5 features .rows., the network expects 6"):
        eng.call("fa_forward", small_net._id(), X.ctypes.data, 4, 5, out.ctypes.data, 0)
    with pytest.raises(pyjlfa.JuliaError, match="unknown output kind 7"):
        eng.call("fa_forward", small_net._id(), X.ctypes.data, 4, 6, out.ctypes.data, 7)
    # Nothing is broken afterwards.
    assert np.isfinite(small_net.evaluate(X, y)["loss"])
    assert pyjlfa.Network([3, 2]).predict(np.ones((2, 3))).shape == (2,)


def test_divergence_stops_at_once_and_names_the_epoch_and_batch():
    net = pyjlfa.Network([4, 32, 2], activation="relu", loss="mse", seed=0, dtype="float64")
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(64, 4)), rng.normal(size=(64, 2))
    with pytest.raises(pyjlfa.DivergenceError, match=r"at epoch \d+, batch \d+") as info:
        net.fit(X, Y, epochs=50, batch_size=8, optimizer=pyjlfa.SGD(lr=50.0))
    assert "smaller learning rate" in str(info.value)
    for layer in net.layers:  # the parameters are those before the diverging batch
        assert np.isfinite(layer.W).all() and np.isfinite(layer.b).all()
    assert net.predict(X).shape == (64, 2)  # the network still answers
    fresh = pyjlfa.Network([4, 32, 2], activation="relu", loss="mse", seed=0, dtype="float64")
    hist = fresh.fit(X, Y, epochs=3, batch_size=8, optimizer=pyjlfa.SGD(lr=0.01))
    assert hist["loss"][-1] < hist["loss"][0]  # and the engine trains as before


def test_calls_from_another_thread_are_refused_clearly(small_net):
    if engine().julia_version >= (1, 9):
        pytest.skip("Julia 1.9+ adopts foreign threads; the check only applies before 1.9")
    X, _ = batch(small_net, 3)
    caught = []

    def worker():
        try:
            small_net.predict(X)
        except RuntimeError as e:
            caught.append(str(e))

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    assert caught and "can only be called from the thread that started it" in caught[0]
    assert small_net.predict(X).shape == (3,)


def test_a_network_dropped_on_another_thread_is_freed_later_on_julias_thread():
    eng = engine()
    if eng.julia_version >= (1, 9):
        pytest.skip("Julia 1.9+ adopts foreign threads; nothing is deferred")
    import gc
    gc.collect()
    live = eng.live_handles()
    box = [pyjlfa.Network([6, 5, 3])]
    t = threading.Thread(target=box.clear)  # the last reference dies on the worker thread
    t.start()
    t.join()
    gc.collect()
    assert eng.live_handles() == live  # freed at the next call from Julia's thread
