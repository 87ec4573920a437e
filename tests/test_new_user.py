"""A new user's paper cuts (issue 16, items 1, 3, 5, 6, 7, 8, 12): each fixed, each tested."""

import copy
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pytest

import pyjlfa
from pyjlfa import network as network_module
from pyjlfa._runtime import engine
from pyjlfa.layers import Conv2d, Flatten, LeakyReLU, Linear, ReLU


def data(n=48, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    return X, (X[:, :k].argmax(axis=1)).astype(np.int64)


# 1. fit without optimizer= continues with the model's own optimizer (and its momentum).
def test_fit_after_load_continues_with_the_saved_optimizer(tmp_path):
    X, y = data()
    a = pyjlfa.Network([6, 8, 3], rule="fa", seed=1, dtype="float64")
    a.fit(X, y, epochs=1, batch_size=8, optimizer=pyjlfa.SGD(0.05, momentum=0.9))
    a.save(tmp_path / "a.safetensors", include_optimizer=True)
    b = pyjlfa.load(tmp_path / "a.safetensors")
    assert b.optimizer == pyjlfa.SGD(0.05, momentum=0.9)
    uninterrupted = a.fit(X, y, epochs=1, batch_size=8)["loss"]   # a keeps its own optimizer too
    resumed = b.fit(X, y, epochs=1, batch_size=8)["loss"]
    assert resumed == uninterrupted
    assert b.optimizer == pyjlfa.SGD(0.05, momentum=0.9)          # not replaced by SGD()
    fresh = pyjlfa.Network([6, 8, 3], rule="fa", seed=1, dtype="float64")
    fresh.fit(X, y, epochs=1, batch_size=8)
    assert fresh.optimizer == pyjlfa.SGD()                        # a new network starts with SGD()


def test_the_cli_records_the_optimizer_in_its_model(tmp_path):
    X, y = data(n=60, d=6)
    np.savez(tmp_path / "d.npz", X_train=X, y_train=y, X_test=X[:12], y_test=y[:12])
    out = tmp_path / "run"
    from pyjlfa import cli
    assert cli.main(["train", "--data", str(tmp_path / "d.npz"), "--hidden", "5", "--epochs", "1", "--momentum", "0.9",
                     "--lr", "0.07", "--quiet", "--out", str(out)]) == 0
    meta = pyjlfa.io.read_metadata(out / "model.safetensors")
    assert meta["optimizer"] == "sgd" and '"momentum":0.9' in meta["optimizer_params"] and '"lr":0.07' in meta["optimizer_params"]


# 3. pickle and deepcopy go through the model file's bytes.
@pytest.mark.slow
def test_pickle_and_deepcopy_give_the_same_network():
    X = np.random.default_rng(2).random((10, 1, 8, 8))
    y = np.arange(10) % 3
    net = pyjlfa.Network([Conv2d(1, 2, 3), ReLU(), Flatten(), Linear(72, 3)], input_shape=(1, 8, 8),
                         rule="kp", dtype="float64", seed=3)
    net.fit(X, y, epochs=1, batch_size=4, optimizer=pyjlfa.SGD(0.1, momentum=0.9))
    for twin in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
        assert np.array_equal(twin.outputs(X), net.outputs(X))
        assert twin.optimizer == net.optimizer and twin.epochs == net.epochs
        assert not np.shares_memory(twin.layers[0].W, net.layers[0].W)
        assert twin.fit(X, y, epochs=1, batch_size=4)["loss"] == copy.deepcopy(net).fit(X, y, epochs=1, batch_size=4)["loss"]


@pytest.mark.subprocess
def test_a_pickled_network_predicts_identically_in_a_fresh_process(tmp_path):
    X, y = data()
    net = pyjlfa.Network([6, 8, 3], rule="dfa", seed=4, dtype="float64")
    net.fit(X, y, epochs=2, batch_size=8, optimizer=pyjlfa.SGD(0.05))
    (tmp_path / "net.pkl").write_bytes(pickle.dumps(net))
    np.save(tmp_path / "X.npy", X)
    code = ("import pickle, sys, numpy as np; net = pickle.loads(open(sys.argv[1], 'rb').read()); "
            "np.save(sys.argv[3], net.outputs(np.load(sys.argv[2])))")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "net.pkl"), str(tmp_path / "X.npy"),
                    str(tmp_path / "out.npy")], check=True, capture_output=True)
    assert np.array_equal(np.load(tmp_path / "out.npy"), net.outputs(X))


# 5. A closed network says so on every access.
def test_a_closed_network_says_it_is_closed():
    net = pyjlfa.Network([4, 3, 2])
    net.close()
    assert "closed" in repr(net)
    for access in (lambda: net.layers[0], lambda: net.predict(np.ones((2, 4))), lambda: net.epochs,
                   lambda: pickle.dumps(net)):
        with pytest.raises(ValueError, match="this Network is closed"):
            access()


# 6. A typo in a name is refused before Julia starts.
@pytest.mark.parametrize("kwargs,match", [(dict(rule="fq"), "unknown rule 'fq'"),
                                           (dict(activation="tanhh"), "unknown activation 'tanhh'"),
                                           (dict(loss="hinge"), "unknown loss 'hinge'"),
                                           (dict(init="glorot"), "unknown init 'glorot'")])
def test_a_typo_is_refused_before_julia_starts(kwargs, match, monkeypatch):
    # In this process, as if Julia had not started: any use of the engine would try to start it.
    from pyjlfa import _runtime

    def start_julia(*args, **kwargs):
        raise AssertionError("Julia was asked to start before the typo was refused")
    monkeypatch.setattr(_runtime, "_engine", None)
    monkeypatch.setattr(_runtime, "start_julia", start_julia)
    with pytest.raises(ValueError, match=match):
        pyjlfa.Network([3, 2], **kwargs)


def test_the_names_python_checks_are_the_engines():
    eng = engine()
    assert set(network_module._RULES) == set(eng.names("rule"))
    assert set(network_module._ACTIVATIONS) == set(eng.names("activation"))
    assert set(network_module._LOSSES) == set(eng.names("loss"))
    assert set(network_module._INITIALISERS) == set(eng.names("initialiser"))


# 7. feedback= with a rule that has no feedback arrays.
def test_feedback_with_a_rule_without_feedback_warns_or_refuses():
    with pytest.warns(UserWarning, match="rule 'bp' has no feedback arrays: feedback='uniform' is ignored"):
        pyjlfa.Network([4, 3, 2], rule="bp", feedback="uniform")
    with pytest.raises(ValueError, match="rule 'shallow' has no feedback arrays"):
        pyjlfa.Network([4, 3, 2], rule="shallow", feedback=[None, np.zeros((2, 3), np.float32)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pyjlfa.Network([4, 3, 2], rule="bp")   # the default says nothing


# 8. A loss that grows a hundredfold warns, naming the learning rate.
def test_a_blowing_up_loss_warns_with_the_learning_rate():
    X, y = data(n=64, d=4, k=2)
    net = pyjlfa.Network([4, 8, 2], activation="tanh", seed=0)
    with pytest.warns(RuntimeWarning, match=r"more than 100 times that of a uniform guess .* learning rate \(1e\+06\)"):
        net.fit(X, y, epochs=2, optimizer=pyjlfa.SGD(1e6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pyjlfa.Network([4, 8, 2], seed=0).fit(X, y, epochs=2, optimizer=pyjlfa.SGD(0.05))


# 12. Spellings and reprs.
def test_leaky_relu_has_both_spellings_and_reprs_show_what_matters():
    X, y = data(d=4)
    a = pyjlfa.Network([4, 5, 3], activation="leaky_relu", seed=0, dtype="float64")
    b = pyjlfa.Network([4, 5, 3], activation="leakyrelu", seed=0, dtype="float64")
    c = pyjlfa.Network([Linear(4, 5), LeakyReLU(), Linear(5, 3)], seed=0, dtype="float64")
    assert np.array_equal(a.outputs(X), b.outputs(X)) and np.array_equal(a.outputs(X), c.outputs(X))
    assert a.layers[0].activation == "leaky_relu"
    net = pyjlfa.Network([4, 3, 2], rule=pyjlfa.rules.WeightMirror(steps=2))
    assert "WeightMirror(" in repr(net) and "steps=2" in repr(net)
    layer = repr(net.layers[1])
    assert "W=(3, 2) float32" in layer and "B=(2, 3) float32" in layer and "[" not in layer.split("->")[1]
