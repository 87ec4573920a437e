"""Ctrl-C once Julia runs in the process: it reaches Python, and stops Julia between two batches.

Each case runs in its own process, which the test sends SIGINT as a terminal's Ctrl-C would.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import pyjlfa

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signals only")

# The child prints "ready", gets SIGINT from the test, and prints one JSON line of what it saw.
CHILD = r'''
import json, re, sys, time
import numpy as np
import pyjlfa

mode = sys.argv[1]
rng = np.random.default_rng(0)
if mode == "sleep":
    pyjlfa.Network([20, 16, 3])
    print("ready", flush=True)
    try:
        while True:
            time.sleep(0.05)
    except KeyboardInterrupt:
        print(json.dumps({"caught": time.time()}), flush=True)

elif mode == "fit":
    X = rng.standard_normal((20000, 64)); y = rng.integers(0, 10, 20000)
    sizes, bs = [64, 128, 128, 10], 32
    pyjlfa.Network(sizes, dtype="float64", seed=1).fit(X[:64], y[:64])      # compile, on another network
    net = pyjlfa.Network(sizes, dtype="float64", seed=0)
    print("ready", flush=True)
    try:
        net.fit(X, y, epochs=10**6, batch_size=bs, shuffle=False)
        raise SystemExit("fit ended without KeyboardInterrupt")
    except KeyboardInterrupt as e:
        caught, message = time.time(), str(e)
    epochs, history = net.epochs, len(net.history["loss"])
    # whole batches of the interrupted epoch; no batch number: the signal came while Python ran between
    # two epochs' calls (or as one returned), so the fit stopped after whole epochs
    stopped = re.search(r"before batch (\d+)", message)
    k = int(stopped.group(1)) - 1 if stopped else 0
    # The same training from scratch, by whole batches: `epochs` epochs, then the first k batches.
    twin = pyjlfa.Network(sizes, dtype="float64", seed=0)
    if epochs:
        twin.fit(X, y, epochs=epochs, batch_size=bs, shuffle=False)
    if k:
        twin.fit(X[:k * bs], y[:k * bs], epochs=1, batch_size=bs, shuffle=False)
    diff = max(float(np.max(np.abs(a - b))) for l, t in zip(net.layers, twin.layers)
               for a, b in ((l.W, t.W), (l.b, t.b)))
    finite = all(np.isfinite(l.W).all() and np.isfinite(l.b).all() for l in net.layers)
    after = net.fit(X[:640], y[:640], epochs=1, batch_size=bs)["loss"][0]   # still usable
    print(json.dumps({"caught": caught, "message": message, "epochs": epochs, "history": history,
                      "batches": k, "diff": diff, "finite": finite, "loss_after": after,
                      "predicts": int(net.predict(X[:5]).shape[0]), "epochs_after": net.epochs}), flush=True)

elif mode == "predict":
    net = pyjlfa.Network([64, 1024, 1024, 10], seed=0)
    X = rng.standard_normal((200000, 64)).astype(np.float32)
    net.predict(X[:2048])
    print("ready", flush=True)
    try:
        net.predict(X)
        raise SystemExit("predict ended without KeyboardInterrupt")
    except KeyboardInterrupt as e:
        caught, message = time.time(), str(e)
    print(json.dumps({"caught": caught, "message": message,
                      "labels": net.predict(X[:7]).tolist()}), flush=True)
'''


def interrupt(args, delay, cwd, ready="ready", stream="stdout", timeout=300):
    """Start a child, SIGINT it `delay` s after it prints a line holding `ready`.

    Returns the time the signal was sent, the child's stdout lines and stderr, and its exit code.
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    try:
        for line in getattr(child, stream):
            if ready in line:
                break
        else:
            raise AssertionError(f"the child never printed {ready!r}: {child.communicate()}")
        time.sleep(delay)
        sent = time.time()
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=timeout)
    finally:
        child.kill()
    return sent, out.strip().splitlines(), err, child.returncode


def run_child(mode, tmp_path, delay=1.5):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    sent, lines, err, code = interrupt([sys.executable, str(script), mode], delay, tmp_path)
    assert code == 0 and lines, err[-3000:]
    result = json.loads(lines[-1])
    result["latency"] = result["caught"] - sent
    print(f"{mode}: KeyboardInterrupt {result['latency']:.3f} s after SIGINT; {result.get('message', '')}")
    return result


def test_julia_leaves_sigint_to_python():
    """The cause: Julia's start blocked SIGINT in this thread and (its options misread) took over SIGINT."""
    pyjlfa.start_julia()
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.subprocess
def test_a_sleep_loop_is_interruptible_after_a_network_exists(tmp_path):
    result = run_child("sleep", tmp_path, delay=0.5)
    assert result["latency"] < 1.0


@pytest.mark.subprocess
def test_fit_stops_between_whole_batches_and_stays_usable(tmp_path):
    r = run_child("fit", tmp_path)
    assert r["latency"] < 1.0
    if r["message"]:   # Julia stopped between two batches (else Python caught it between two epochs)
        assert r["message"].startswith("interrupted (SIGINT) at epoch")
        assert f"epoch {r['epochs'] + 1} before batch {r['batches'] + 1}" in r["message"]
    # net.epochs and the history count the completed epochs; the parameters are those of the same
    # training from scratch by whole batches (bit for bit: the same arithmetic in the same order)
    assert r["history"] == r["epochs"]
    assert r["epochs"] + r["batches"] > 0
    assert r["finite"] and r["diff"] == 0.0
    assert np.isfinite(r["loss_after"]) and r["epochs_after"] == r["epochs"] + 1 and r["predicts"] == 5


@pytest.mark.subprocess
def test_predict_stops_between_chunks(tmp_path):
    r = run_child("predict", tmp_path)
    assert r["latency"] < 1.0
    assert r["message"] == "interrupted (SIGINT); the model was not changed"
    assert len(r["labels"]) == 7


@pytest.mark.subprocess
def test_cli_train_exits_130_and_keeps_the_completed_epochs(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30000, 20)).astype(np.float32)
    y = X[:, :3].argmax(axis=1)
    np.savez(tmp_path / "data.npz", X_train=X, y_train=y)
    out = tmp_path / "run"
    args = [sys.executable, "-u", "-m", "pyjlfa", "train", "--data", str(tmp_path / "data.npz"), "--hidden", "64",
            "--epochs", "100000", "--batch-size", "16", "--track-alignment", "0", "--out", str(out)]
    sent, lines, err, code = interrupt(args, 1.0, ROOT, ready="epoch", stream="stderr")   # a line per epoch
    assert code == 130, err[-3000:]
    assert "pyjlfa train: interrupted" in err and "completed epochs" in err
    history = json.loads((out / "history.json").read_text())["runs"]["fa"]
    assert len(history["loss"]) >= 1 and (out / "model.safetensors").is_file()
    # Issue 26, item 8: what is printed, what is saved and what the file says agree: the last completed epoch
    # (the model was saved "as it is now", mid-epoch, while its file said one epoch fewer).
    done = len(history["loss"])
    assert f"interrupted in epoch {done + 1}: saving the {done} completed epochs" in err
    final, = [line for line in lines if line.startswith("final")]
    assert final.startswith(f"final (epoch {done}): loss {history['loss'][-1]:.4f}  accuracy {history['accuracy'][-1]:.4f}")
    import pyjlfa
    with pyjlfa.load(out / "model.safetensors") as net:   # the checkpoint of that epoch: its loss is the history's
        assert net.epochs == done
        h = net.fit(X, y, epochs=1, batch_size=16, track_alignment=None, shuffle=True)
    with pyjlfa.Network([20, 64, 3], rule="fa", seed=0) as ref:   # the same run, stopped after `done` epochs
        expected = ref.fit(X, y, epochs=done + 1, batch_size=16, optimizer=pyjlfa.SGD(lr=0.05))
    assert h["loss"][0] == expected["loss"][done]


@pytest.mark.subprocess
def test_cli_train_stopped_before_the_first_epoch_leaves_no_folder(tmp_path):
    """Issue 26, item 8: Ctrl-C before the first batch left an empty run folder."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 20)).astype(np.float32)
    np.savez(tmp_path / "data.npz", X_train=X, y_train=X[:, :3].argmax(axis=1))
    out = tmp_path / "run"
    args = [sys.executable, "-u", "-m", "pyjlfa", "train", "--data", str(tmp_path / "data.npz"), "--hidden", "64",
            "--epochs", "3", "--track-alignment", "0", "--out", str(out)]
    sent, lines, err, code = interrupt(args, 0.3, ROOT, ready="training")   # Julia is still starting
    assert code == 130, err[-3000:]
    assert "interrupted before the first epoch ended: nothing saved" in err and not out.exists()


@pytest.mark.subprocess
def test_a_teacher_task_stops_at_once(tmp_path):
    """Lillicrap's tasks run in one Julia call; Ctrl-C stops it between two steps, not at its end."""
    args = [sys.executable, "-u", "-c", "import pyjlfa.experiments as e; e.linear_task(rules=['fa'], steps=10**6, "
            "record_every=10**5, progress=True); print('finished')"]
    script = tmp_path / "warm.py"   # compile the task first, in another run, so the timed one starts at once
    script.write_text("import pyjlfa.experiments as e; e.linear_task(rules=['fa'], steps=10, record_every=5)\n"
                      "import sys; print('ready', flush=True)\n" + "exec(" + repr(args[-1]) + ")\n")
    sent, lines, err, code = interrupt([sys.executable, "-u", str(script)], 1.0, tmp_path)
    caught = time.time()
    assert code == -signal.SIGINT and "KeyboardInterrupt: interrupted (SIGINT)" in err, err[-3000:]
    assert "finished" not in lines
    assert caught - sent < 5.0   # a million steps take a minute or more


def test_a_handler_of_the_users_own_is_left_alone():
    """With a SIGINT handler of their own, users keep SIGINT to themselves: Julia is not stopped."""
    import threading
    calls, fired = [], []
    net = pyjlfa.Network([64, 128, 10], dtype="float64")
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((20000, 64)), rng.integers(0, 10, 20000)
    net.fit(X[:64], y[:64])                                   # compiled before the clock starts
    previous = signal.signal(signal.SIGINT, lambda *a: calls.append(time.time()))
    try:
        timer = threading.Timer(0.2, lambda: (fired.append(time.time()), os.kill(os.getpid(), signal.SIGINT)))
        timer.start()
        net.fit(X, y, epochs=5, batch_size=16)
        ended = time.time()
        timer.join()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert fired and fired[0] < ended, "the signal came after fit: this machine was too fast for the test"
    assert net.epochs == 6 and calls
