"""pyjlfa reproduce lenet-fashion-mnist: the schedule, checkpoints that resume bit-identically, the report."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import pyjlfa
from pyjlfa import experiments
from pyjlfa.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU

HISTORY_KEYS = ("epoch", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "status")


def images(path, n_train, n_test, side, seed=0):
    """Random images whose class (0-3) is the quadrant made brighter (learnable), saved as an .npz file."""
    rng = np.random.default_rng(seed)
    X = rng.random((n_train + n_test, 1, side, side), dtype=np.float32)
    y = rng.integers(0, 4, n_train + n_test)
    h = side // 2
    for i, c in enumerate(y):
        X[i, 0, (c // 2) * h:(c // 2 + 1) * h, (c % 2) * h:(c % 2 + 1) * h] += 1
    np.savez(path, X_train=X[:n_train], y_train=y[:n_train], X_test=X[n_train:], y_test=y[n_train:])
    return str(path)


def tiny_chain():
    return [Conv2d(1, 4, 3), ReLU(), MaxPool2d(2), Flatten(), Linear(4 * 5 * 5, 4)]


def parameters(path):
    net = pyjlfa.load(path)
    try:
        return [(l.W.copy(), l.b.copy(), None if l.B is None else l.B.copy()) for l in net.layers if l.W is not None]
    finally:
        net.close()


def test_schedule_divides_by_ten_at_half_and_three_quarters():
    # PyTorch's MultiStepLR([50, 75]): epochs 1-50 at lr, 51-75 at lr/10, 76-100 at lr/100
    rates = [experiments.scheduled_lr(0.1, completed, 100) for completed in range(100)]
    assert rates[:50] == [0.1] * 50
    assert rates[50:75] == pytest.approx([0.01] * 25, rel=1e-15)
    assert rates[75:] == pytest.approx([0.001] * 25, rel=1e-15)
    assert [experiments.scheduled_lr(1.0, c, 4) for c in range(4)] == pytest.approx([1, 1, 0.1, 0.01])


@pytest.mark.slow
def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    data = images(tmp_path / "d.npz", 300, 100, 12)
    run = dict(epochs=3, lr=0.05, data_path=data, layers=tiny_chain(), input_shape=(1, 12, 12))
    whole = experiments.train_rule("fa", tmp_path / "whole", **run)
    assert whole["status"] == "done" and whole["epoch"] == [1, 2, 3]
    assert whole["lr"] == [0.05, 0.05, pytest.approx(0.0005)]   # milestones of 3 epochs: 2 and 2
    assert whole["test_accuracy"][-1] > 0.5                       # it learns (chance: about 0.25)

    split = tmp_path / "split"
    first = experiments.train_rule("fa", split, stop_after=1, **run)
    assert first["epoch"] == [1] and first["status"] == "partial"
    shutil.copy(split / "model.safetensors", tmp_path / "after1.safetensors")
    experiments.train_rule("fa", split, stop_after=2, **run)
    # a crash between writing history.json (epoch 2) and the model leaves the model one epoch behind
    shutil.copy(tmp_path / "after1.safetensors", split / "model.safetensors")
    resumed = experiments.train_rule("fa", split, **run)

    for k in HISTORY_KEYS:
        assert resumed[k] == whole[k], k
    with open(split / "history.json") as f:
        assert json.load(f)["test_loss"] == whole["test_loss"]
    for (W1, b1, B1), (W2, b2, B2) in zip(parameters(tmp_path / "whole" / "model.safetensors"),
                                          parameters(split / "model.safetensors")):
        assert np.array_equal(W1, W2) and np.array_equal(b1, b2)
        assert (B1 is None) == (B2 is None) and (B1 is None or np.array_equal(B1, B2))


def test_resume_refuses_other_settings(tmp_path):
    data = images(tmp_path / "d.npz", 64, 32, 12)
    run = dict(epochs=2, data_path=data, layers=tiny_chain(), input_shape=(1, 12, 12), stop_after=1)
    experiments.train_rule("bp", tmp_path / "r", lr=0.05, **run)
    with pytest.raises(ValueError, match=r"lr: 0.05 there, 0.1 now"):
        experiments.train_rule("bp", tmp_path / "r", lr=0.1, **run)


@pytest.mark.slow
@pytest.mark.subprocess
def test_command_runs_rules_in_processes_and_reports(tmp_path):
    data = images(tmp_path / "d.npz", 128, 64, 32)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pyjlfa", "reproduce", "lenet-fashion-mnist", "--rules", "bp", "fa",
               "--epochs", "3", "--data-path", data, "--out", str(out), "--no-plots", "--quiet"]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(pyjlfa.__file__)))
    run = subprocess.run(command + ["--stop-after", "2"], capture_output=True, text=True, env=env, timeout=150)
    assert run.returncode == 0, run.stderr
    assert f"| bp | {experiments.LENET_LR['bp']:g} |" in run.stdout and "| 2/3 |" in run.stdout
    with open(out / "lenet_fashion_mnist.csv") as f:
        rows = {r["rule"]: r for r in csv.DictReader(f)}
    for rule, published in (("bp", "9.2"), ("fa", "13.06")):
        with open(out / rule / "history.json") as f:
            h = json.load(f)
        assert h["epoch"] == [1, 2] and h["status"] == "partial"
        assert os.path.exists(out / rule / "model.safetensors")
        best = int(np.argmax(h["test_accuracy"]))
        assert rows[rule]["epochs_run"] == "2" and rows[rule]["best_epoch"] == str(best + 1)
        assert float(rows[rule]["best_error"]) == pytest.approx(100 * (1 - h["test_accuracy"][best]), abs=0.006)
        assert float(rows[rule]["last_error"]) == pytest.approx(100 * (1 - h["test_accuracy"][-1]), abs=0.006)
        assert rows[rule]["published_error"] == published


def test_fashion_mnist_is_normalised_then_zero_padded():
    X = np.array([[[[0.0, 1.0], [0.2860, 0.5]]]], dtype=np.float32)
    out = experiments._normalised_padded(X)
    assert out.shape == (1, 1, 6, 6) and out.dtype == np.float32
    expected = np.array([[-0.2860, 0.7140], [0.0, 0.2140]]) / 0.3530   # (pixel - mean) / std, by hand
    np.testing.assert_allclose(out[0, 0, 2:4, 2:4], expected, rtol=1e-6)
    inner = np.zeros((6, 6), dtype=bool)
    inner[2:4, 2:4] = True
    assert np.all(out[0, 0][~inner] == 0)          # the padding is the mean pixel


@pytest.mark.slow
@pytest.mark.subprocess
def test_search_never_chooses_a_run_that_blew_up(tmp_path):
    data = images(tmp_path / "d.npz", 192, 32, 32)
    out = tmp_path / "search"
    result = experiments.lr_search(rules=["fa"], lrs=[0.001, 0.01, 30.0], out_dir=str(out), epochs=2,
                                         holdout=64, jobs=2, data_path=data)
    r = result["fa"]
    for lr in (0.001, 0.01, 30.0):
        with open(out / f"fa-lr{lr:g}" / "history.json") as f:
            h = json.load(f)
        assert h["lr"] == [lr, lr]                  # the protocol's first epochs: still the initial rate
        stopped = h["status"].startswith("diverged")
        expected = 100.0 if stopped else round(100 * (1 - h["test_accuracy"][-1]), 2)
        assert r["errors"][lr] == expected
        assert r["blew_up"][lr] == (stopped or max(h["train_loss"]) > 2 * np.log(10))
    assert r["blew_up"][30.0] and not r["blew_up"][0.001]
    stable = [lr for lr in (0.001, 0.01) if not r["blew_up"][lr]]
    assert r["chosen"] == min(stable, key=lambda lr: (r["errors"][lr], lr))
    table = (out / "search.md").read_text()
    assert f"| fa | {r['errors'][0.001]:.2f} |" in table and "*" in table.split("| fa |")[1]


def test_a_second_trainer_on_the_same_folder_is_refused(tmp_path):
    import fcntl
    data = images(tmp_path / "d.npz", 64, 32, 12)
    out = tmp_path / "r"
    out.mkdir()
    with open(out / "train.lock", "a") as held:          # as a running trainer holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match=f"another process is training into {out}"):
            experiments.train_rule("bp", out, epochs=2, lr=0.05, data_path=data, layers=tiny_chain(),
                                         input_shape=(1, 12, 12))
    assert sorted(os.listdir(out)) == ["train.lock"]     # nothing written
    h = experiments.train_rule("bp", out, epochs=1, lr=0.05, data_path=data, layers=tiny_chain(),
                                     input_shape=(1, 12, 12))
    assert h["status"] == "done"                          # the lock went with its holder


@pytest.mark.subprocess
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_end_when_the_command_dies(tmp_path):
    """A worker that outlived a killed `pyjlfa reproduce` would go on writing checkpoints."""
    import signal
    import time
    parent = subprocess.Popen([sys.executable, "-c", (
        "import concurrent.futures as cf, multiprocessing as mp, os, time\n"
        "from pyjlfa.experiments import _end_with_parent\n"
        "if __name__ == '__main__':\n"
        "    pool = cf.ProcessPoolExecutor(1, mp_context=mp.get_context('spawn'), initializer=_end_with_parent)\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(time.sleep, 600)\n"
        "    time.sleep(600)\n")], stdout=subprocess.PIPE, text=True,
        env=dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(pyjlfa.__file__))))
    worker = int(parent.stdout.readline())
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    parent.stdout.close()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(worker, signal.SIGKILL)
        raise AssertionError("the worker outlived its parent")


def test_resnet_recipe_is_biotorchs_cifar_schedule():
    # biotorch's small-ResNet recipe: lr / 10 at epochs 100, 150 and 200 of 250
    recipe = experiments.RECIPES["resnet20-fashion-mnist"]
    rates = [experiments.scheduled_lr(0.1, c, recipe.epochs, recipe.milestones) for c in range(250)]
    assert rates[:100] == [0.1] * 100
    assert rates[100:150] == pytest.approx([0.01] * 50) and rates[150:200] == pytest.approx([0.001] * 50)
    assert rates[200:] == pytest.approx([0.0001] * 50)


def test_resnet_recipe_trains_block_dfa_with_its_settings(tmp_path):
    from pyjlfa.layers import AdaptiveAvgPool2d, BatchNorm2d, Residual
    data = images(tmp_path / "d.npz", 40, 16, 8)
    layers = [Conv2d(1, 4, 3, padding=1, bias=False), BatchNorm2d(4), ReLU(),
              Residual([Conv2d(4, 4, 3, padding=1, bias=False), BatchNorm2d(4)]), ReLU(),
              AdaptiveAvgPool2d(1), Flatten(), Linear(4, 4)]
    h = experiments.train_rule("DFA-block", tmp_path / "r", recipe="resnet20-fashion-mnist", epochs=1,
                               data_path=data, layers=layers, input_shape=(1, 8, 8))
    assert h["status"] == "done" and h["lr"] == [0.1]
    with open(tmp_path / "r" / "config.json") as f:
        config = json.load(f)
    assert (config["rule"], config["batch_size"], config["momentum"], config["weight_decay"], config["recipe"]) == \
        ("dfa-block", 128, 0.9, 1e-4, "resnet20-fashion-mnist")
    net = pyjlfa.load(tmp_path / "r" / "model.safetensors")
    try:
        assert net.rule_value == pyjlfa.rules.DFA("block")
    finally:
        net.close()
    with pytest.raises(ValueError, match="only dfa, drtp and sdfa take '-block'"):
        experiments.train_rule("fa-block", tmp_path / "x", recipe="resnet20-fashion-mnist", data_path=data)
