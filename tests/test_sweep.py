"""Sweeps on Dask (pyjlfa.sweep, ``pyjlfa sweep``): every cluster, scheduler and worker here listens on
127.0.0.1 and is stopped inside the test that started it."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

distributed = pytest.importorskip("distributed")

import pyjlfa  # noqa: E402
from pyjlfa.sweep import SpecError, load_data, plan, sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT))  # subprocesses (CLI, dask workers) import this pyjlfa

TINY = {
    "data": {"name": "synthetic", "train_size": 300, "test_size": 100, "features": 6, "classes": 3, "seed": 1},
    "fixed": {"hidden": [5, 4], "epochs": 2, "batch_size": 16},
    "grid": {"rule": ["fa", "dfa"], "lr": [0.02, 0.3], "seed": [0, 1]},
}


def local_cluster(workers=2):
    from distributed import LocalCluster
    import dask
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
        return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                            dashboard_address=None)


def direct_history(config, data):
    """The run done by hand in this process: Network + fit with the configuration's values."""
    Xtr, ytr, Xte, yte = load_data(data)
    net = pyjlfa.Network([Xtr.shape[1], *config["hidden"], 3], rule=config["rule"], seed=config["seed"])
    h = net.fit(Xtr, ytr, epochs=config["epochs"], batch_size=config["batch_size"],
                optimizer=pyjlfa.SGD(lr=config["lr"]), validation_data=(Xte, yte))
    return {k: v for k, v in h.items() if k != "seconds"}


@pytest.mark.slow
@pytest.mark.subprocess
def test_local_cluster_runs_equal_direct_runs_and_summary(tmp_path):
    from distributed import Client
    out = tmp_path / "out"
    with local_cluster(2) as cluster, Client(cluster) as client:
        # An invalid rule/architecture combination is found by the engine on a worker, before any run.
        bad = dict(TINY, grid={"rule": ["fa", "drtp"], "seed": [0]}, fixed=dict(TINY["fixed"], loss="mse"))
        with pytest.raises(SpecError, match=r"rule=drtp.*needs loss='cross_entropy'"):
            sweep(bad, out=tmp_path / "bad", client=client, progress=False)
        assert list((tmp_path / "bad" / "runs").iterdir()) == []
        bad = dict(TINY, grid={"hidden": [[5], [5, 5]]}, fixed={"epochs": 1, "dropout": [0.1, 0.1]})
        with pytest.raises(SpecError, match=r"hidden=\[5\]: ValueError: dropout lists 2 rates"):
            sweep(bad, out=tmp_path / "bad2", client=client, progress=False)

        result = sweep(TINY, out=out, client=client, progress=False)
        assert cluster.status.name == "running"  # a client passed in is left running
        again = sweep(TINY, out=out, client=client, progress=False)  # every run finished: nothing runs
        assert (again["ran"], again["skipped"]) == (0, 8)

        # A run that raises is recorded with its error; the others go on.
        diverging = dict(TINY, grid={"lr": [0.1, 1e10]},
                         fixed=dict(TINY["fixed"], rule="fa", seed=0, activation="relu", save_model=True))
        mixed = sweep(diverging, out=tmp_path / "mixed", client=client, progress=False)
        assert (mixed["ran"], mixed["failed"]) == (2, 1)
        # Every worker loaded the data once, for all four sweeps, and kept it.
        loaded = client.run(lambda: list(sys.modules["pyjlfa.sweep"]._LOADED))
        key = json.dumps([TINY["data"], "float32"], sort_keys=True)
        assert all(keys in ([], [key]) for keys in loaded.values()) and [key] in loaded.values()
        records = [json.loads(p.read_text()) for p in (tmp_path / "mixed" / "runs").glob("*.json")]
        failed = [r for r in records if r["status"] == "error"]
        ok, = [r for r in records if r["status"] == "ok"]
        model = pyjlfa.load(tmp_path / "mixed" / ok["model"])  # the model came back as bytes
        _, _, Xte, yte = load_data(TINY["data"])
        assert model.sizes == (6, 5, 4, 3) and model.evaluate(Xte, yte)["accuracy"] == ok["final"]["val_accuracy"]
        assert len(failed) == 1 and failed[0]["config"]["lr"] == 1e10
        assert failed[0]["error"].startswith("DivergenceError") and "Traceback" in failed[0]["traceback"]
    assert (result["total"], result["ran"], result["skipped"], result["failed"]) == (8, 8, 0, 0)

    data, runs, _ = plan(TINY)
    finals = {}
    for rid, config in runs:
        record = json.loads((out / "runs" / f"{rid}.json").read_text())
        assert record["status"] == "ok" and record["config"] == config and record["worker"].startswith("tcp://127.0.0.1:")
        expected = direct_history(config, data)
        got = {k: v for k, v in record["history"].items() if k != "seconds"}
        assert got == expected  # bit-identical: JSON keeps every float exactly
        finals.setdefault((config["rule"], config["lr"]), []).append(expected["val_accuracy"][-1])

    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for row in rows:
        values = finals[(row["rule"], float(row["lr"]))]
        assert int(row["runs"]) == 2 and int(row["failed"]) == 0
        assert float(row["final_accuracy_mean"]) == pytest.approx(np.mean(values), abs=1e-12)
        assert float(row["final_accuracy_std"]) == pytest.approx(np.std(values), abs=1e-12)
    try:
        import matplotlib  # noqa: F401
        assert (out / "accuracy_vs_lr_final.png").stat().st_size > 1000
    except ImportError:
        pass


@pytest.mark.parametrize("change, message", [
    ({"fixed": {"learning_rate": 0.1}}, r"fixed\.learning_rate: unknown key"),
    ({"grid": {"lr": [0.1, "fast"]}}, r"lr: expected a finite number, got 'fast'"),
    ({"grid": {"seed": []}}, r"grid\.seed: empty list"),
    ({"grid": {"seed": [0, -1]}}, r"seed: expected a seed >= 0, got -1"),
    ({"fixed": {"epochs": 0}}, r"epochs: expected a positive integer, got 0"),
    ({"grid": {}}, r"\[grid\] is empty"),
    ({"grid": {"lr": 0.1}}, r"grid\.lr: expected a list"),
    ({"grid": {"lr": [0.1, -1.0]}}, r"lr must be > 0, got -1\.0 \(in the run lr=-1\.0\)"),
    ({"grid": {"feedback": ["glorot_uniform", "sparse(2.0)"]}}, r"feedback: 'sparse\(2\.0\)'.*density.*<= 1"),
    ({"grid": {"feedback": ["sparse(0.1, nonsense(3))"]}}, r"feedback: 'sparse\(0\.1, nonsense\(3\)\)' is not a known initialiser"),
    ({"fixed": {"optimizer": "adam", "momentum": 0.9}, "grid": {"lr": [0.1]}}, r"momentum: not an option of optimizer 'adam'"),
    ({"fixed": {}, "grid": {"hidden": [[5], [0]]}}, r"hidden: expected a list of positive integer widths.*\(in the run hidden=\[0\]\)"),
    ({"fixed": {"lr": 0.1}, "grid": {"lr": [0.1]}}, r"lr: set in both \[fixed\] and \[grid\]"),
    ({"extra": {}}, r"unknown section \[extra\]"),
    ({"data": {"name": "mnist"}}, r"data\.name: expected one of"),
    ({"data": {"name": "synthetic", "size": 5}}, r"data\.size: unknown key"),
    ({"random": {"samples": 2, "momentum": {"gaussian": [0, 1]}}}, r"random\.momentum: unknown distribution 'gaussian'"),
])
def test_bad_specs_fail_before_any_run_naming_the_entry(tmp_path, change, message):
    spec = dict(TINY, **change)
    with pytest.raises(SpecError, match=message):
        sweep(spec, out=tmp_path / "out")  # no client: the spec fails before a cluster would start
    assert not (tmp_path / "out").exists()


@pytest.mark.subprocess
def test_cli_bad_spec_file(tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text('[data]\nname = "synthetic"\n[grid]\nrule = ["fa"]\nlr = [0.1, "x"]\n')
    r = subprocess.run([sys.executable, "-m", "pyjlfa", "sweep", str(spec), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.returncode == 2 and "lr: expected a finite number, got 'x'" in r.stderr
    assert not (tmp_path / "o").exists()


def test_random_samples_are_crossed_with_the_grid_and_reproducible():
    spec = dict(TINY, grid={"seed": [0, 1]}, random={"samples": 3, "seed": 7, "lr": {"log_uniform": [1e-3, 1e-1]},
                                                      "rule": {"choice": ["fa", "dfa"]}})
    _, runs, varying = plan(spec)
    assert len(runs) == 6 and varying == ["seed", "lr", "rule"]
    draws = [(c["lr"], c["rule"]) for _, c in runs]
    assert draws[:3] == draws[3:]  # every seed sees the same three draws
    assert all(1e-3 <= lr <= 1e-1 for lr, _ in draws)
    assert plan(spec)[1] == runs


def _popen(command, **kwargs):
    """Popen in the tests' environment. (SIGINT and SIGTERM reach the child: starting Julia no longer
    leaves them blocked in this process's signal mask, which children would inherit.)"""
    return subprocess.Popen(command, env=ENV, **kwargs)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc, timeout=20):
    if isinstance(proc, distributed.Client):
        proc.close()
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    assert proc.poll() is not None


def _wait_files(folder, count, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = sorted(folder.glob("*.json")) if folder.exists() else []
        if len(files) >= count:
            return files
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} results in {folder} after {timeout} s")


@pytest.mark.slow
@pytest.mark.subprocess
def test_scheduler_interrupt_resume_and_lost_worker(tmp_path):
    """Real `dask scheduler` + two `dask worker` processes; `pyjlfa sweep --scheduler` is interrupted
    with SIGINT, rerun (resuming), and one worker is killed mid-sweep."""
    spec = tmp_path / "spec.toml"
    spec.write_text("""
[data]
name = "synthetic"
train_size = 3000
test_size = 300
features = 40
classes = 4

[fixed]
hidden = [128]
epochs = 3
batch_size = 32

[grid]
rule = ["fa", "dfa"]
lr = [0.01, 0.05, 0.1]
seed = [0, 1]
""")
    out = tmp_path / "out"
    runs_dir = out / "runs"
    _, runs, _ = plan(spec)
    total = len(runs)
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    dask_cmd = [sys.executable, "-m", "dask"]
    procs = []
    try:
        scheduler = _popen(dask_cmd + ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                           stderr=subprocess.DEVNULL)
        procs.append(scheduler)
        workers = [_popen(dask_cmd + ["worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-nanny",
                                      "--no-dashboard", "--name", f"w{i}"], stderr=subprocess.DEVNULL)
                   for i in range(2)]
        procs += workers
        client = distributed.Client(address, timeout=60)  # this test's eyes on the cluster; closed below
        procs.append(client)
        client.wait_for_workers(2, timeout=60)
        addresses = {info["name"]: a for a, info in client.scheduler_info()["workers"].items()}
        sweep_cmd = [sys.executable, "-m", "pyjlfa", "sweep", str(spec), "--out", str(out), "--scheduler", address,
                     "--no-plots"]

        # 1. Interrupt (SIGINT, as Ctrl-C) once two runs are written.
        first = _popen(sweep_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(first)
        _wait_files(runs_dir, 2, first, timeout=180)
        first.send_signal(signal.SIGINT)
        _, err1 = first.communicate(timeout=60)
        assert first.returncode == 130, err1
        assert "interrupted" in err1
        before = {p.name: p.read_bytes() for p in runs_dir.glob("*.json")}
        assert 2 <= len(before) < total

        # 2. Rerun: finished runs are skipped; kill worker w0 once one more run is written.
        second = _popen(sweep_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.append(second)
        _wait_files(runs_dir, len(before) + 1, second, timeout=180)
        deadline = time.monotonic() + 60
        while not client.processing().get(addresses["w0"]):  # kill w0 while it is running a run
            assert time.monotonic() < deadline and second.poll() is None, "w0 never got a run"
            time.sleep(0.01)
        workers[0].kill()
        killed_at = time.time()
        _, err2 = second.communicate(timeout=180)
        assert second.returncode == 0, err2
        assert f"{total} runs, {len(before)} finished before (skipped), {total - len(before)} to run" in err2

        files = sorted(runs_dir.glob("*.json"))
        assert sorted(p.stem for p in files) == sorted(rid for rid, _ in runs)  # every run exactly once
        for name, content in before.items():
            assert (runs_dir / name).read_bytes() == content  # finished runs were not rerun
        records = [json.loads(p.read_text()) for p in files]
        assert all(r["status"] == "ok" for r in records)
        done_lines = [line for line in err2.splitlines() if "(ok: " in line]
        assert len(done_lines) == total - len(before) == len(set(done_lines))  # each written once
        after_kill = [r for r in records if r["started"] > killed_at]
        assert all(r["worker"] == addresses["w1"] for r in after_kill)
        print(f"\n{total} runs; interrupted after {len(before)} (exit 130); the rerun skipped those, "
              f"killed worker w0 while it ran a run, after {len(before) + 1} results; {len(after_kill)} runs started after the kill, "
              f"all on w1; {len(files)} result files, one per run, {sum(r['worker'] == addresses['w0'] for r in records)} "
              f"by w0 and {sum(r['worker'] == addresses['w1'] for r in records)} by w1")
        print(err2.strip().splitlines()[-1])
    finally:
        for proc in reversed(procs):
            _stop(proc)


@pytest.mark.slow
@pytest.mark.subprocess
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")  # max_iter=3 on purpose
def test_sklearn_grid_search_on_dask_equals_sequential():
    sklearn = pytest.importorskip("sklearn")  # noqa: F841
    import joblib
    from distributed import Client, get_task_stream
    from sklearn.model_selection import GridSearchCV
    from pyjlfa.sklearn import FeedbackAlignmentClassifier

    Xtr, ytr, _, _ = load_data(TINY["data"])
    grid = {"rule": ["fa", "dfa"], "learning_rate_init": [0.02, 0.2]}
    estimator = FeedbackAlignmentClassifier(hidden_layer_sizes=(5,), max_iter=3, batch_size=16, random_state=0)
    with local_cluster(2) as cluster, Client(cluster) as client:
        with joblib.parallel_backend("dask"), get_task_stream(client) as stream:
            on_dask = GridSearchCV(estimator, grid, cv=3, n_jobs=-1).fit(Xtr, ytr)
        workers_used = {t["worker"] for t in stream.data}
    sequential = GridSearchCV(estimator, grid, cv=3, n_jobs=1).fit(Xtr, ytr)
    assert len(workers_used) >= 1 and all(w.startswith("tcp://127.0.0.1:") for w in workers_used)
    for k in range(3):
        np.testing.assert_array_equal(on_dask.cv_results_[f"split{k}_test_score"],
                                      sequential.cv_results_[f"split{k}_test_score"])
    assert on_dask.best_params_ == sequential.best_params_
    np.testing.assert_array_equal(on_dask.predict_proba(Xtr), sequential.predict_proba(Xtr))


# -- issue 26, item 2: sweeps over architectures, on images ---------------------------------------------
IMAGES = {"name": "npz", "path": None}
CHAIN = "[Conv2d(1, 3, 3), ReLU(), MaxPool2d(2), Flatten(), Linear(3 * 3 * 3, 3)]"


@pytest.fixture
def image_npz(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 1, 8, 8)).astype(np.float32)
    y = X[:, 0].reshape(90, 4, 16).sum(axis=2)[:, :3].argmax(axis=1)
    path = tmp_path / "images.npz"
    np.savez(path, X_train=X[:60], y_train=y[:60], X_test=X[60:], y_test=y[60:])
    return str(path)


def test_a_grid_over_architectures_plans_one_run_per_chain(image_npz):
    spec = {"data": {"name": "npz", "path": image_npz}, "fixed": {"epochs": 1},
            "grid": {"layers": [CHAIN, "lenet5", "resnet20"], "rule": ["bp", "fa"]}}
    data, runs, varying = plan(spec)
    assert varying == ["layers", "rule"] and len(runs) == 6
    assert [config["layers"] for _, config in runs[::2]] == [CHAIN, "lenet5", "resnet20"]
    assert all("hidden" not in config for _, config in runs)   # the dense default does not apply to a chain


@pytest.mark.parametrize("layers, message", [
    ("[Linear(4, 2), Softmax()]", r"'Softmax' is not a layer of pyjlfa.layers; it has Conv2d, .*Dropout"),
    ("[__import__('os').system('echo hi')]", r"is not a layer call or a literal \(the text is read, not run"),
    ("[Linear(4, 2)", r"cannot read .* as Python"),
    ("vgg16", r"unknown architecture 'vgg16'; known: 'lenet5', 'resnet<depth>'"),
    ("resnet21", r"depth must be 6n \+ 2"),
])
def test_a_chain_is_read_not_run(layers, message, tmp_path):
    spec = dict(TINY, grid={"layers": [layers]}, fixed={"epochs": 1})
    with pytest.raises(SpecError, match=message):
        plan(spec)


def test_layers_and_the_dense_keys_exclude_each_other():
    with pytest.raises(SpecError, match="hidden: describes the dense network, but layers gives the network"):
        plan(dict(TINY, grid={"layers": [CHAIN]}, fixed={"hidden": [4]}))
    with pytest.raises(SpecError, match=r"data\.pad: applies to images; add images = true"):
        plan(dict(TINY, data={"name": "fashion_mnist", "pad": 2}))
    spec = {"data": {"name": "fashion_mnist", "images": True, "pad": 0, "normalize": False},
            "grid": {"layers": [CHAIN]}}
    assert plan(spec)[0] == spec["data"]


def test_an_image_run_equals_a_direct_fit(image_npz):
    """run_config (what a worker does) on 4-D data with a chain: the history a Network.fit by hand gives."""
    from pyjlfa.layers import from_text
    from pyjlfa.sweep import run_config
    data = {"name": "npz", "path": image_npz}
    config = {"layers": CHAIN, "rule": "fa", "lr": 0.05, "epochs": 2, "batch_size": 16, "seed": 3}
    record = run_config(data, config)
    assert record["status"] == "ok", record.get("traceback")
    Xtr, ytr, Xte, yte = load_data(data)
    with pyjlfa.Network(from_text(CHAIN), input_shape=(1, 8, 8), rule="fa", seed=3) as net:
        h = net.fit(Xtr, ytr, epochs=2, batch_size=16, optimizer=pyjlfa.SGD(lr=0.05), validation_data=(Xte, yte))
    assert {k: v for k, v in record["history"].items() if k != "seconds"} == {k: v for k, v in h.items() if k != "seconds"}
    lenet = run_config(data, dict(config, layers="lenet5"))   # LeNet-5 takes 32 x 32 images: the engine says so
    assert lenet["status"] == "error" and "Conv" in lenet["error"]


def test_fashion_mnist_as_images_is_standardised_and_padded():
    if not os.path.isdir(os.environ.get("PYJLFA_FASHION_MNIST", "/usr/share/datasets/fashion-mnist")):
        pytest.skip("Fashion-MNIST is not installed (Debian: dataset-fashion-mnist)")
    data = {"name": "fashion_mnist", "images": True, "train_size": 50, "test_size": 20}
    Xtr, ytr, Xte, yte = load_data(data)
    flat = load_data({"name": "fashion_mnist", "train_size": 50, "test_size": 20})[0]
    assert Xtr.shape == (50, 1, 32, 32) and Xte.shape == (20, 1, 32, 32)
    inner = (flat.reshape(50, 28, 28) - np.float32(0.2860)) / np.float32(0.3530)
    np.testing.assert_allclose(Xtr[:, 0, 2:30, 2:30], inner, rtol=1e-6)
    assert not Xtr[:, 0, :2].any() and not Xtr[:, 0, :, 30:].any()


def _rows(key, values, rules=("bp", "fa", "dfa")):
    return [dict({key: v} if key else {}, rule=r, runs=2, failed=0, final_accuracy_mean=0.5 + 0.1 * i + 0.05 * (r == "bp"),
                 final_accuracy_std=0.01, best_accuracy_mean=0.6 + 0.1 * i, best_accuracy_std=0.01, seconds_mean=1.0)
            for i, v in enumerate(values) for r in rules]


def test_figures_are_drawn_against_whichever_key_varies(tmp_path):
    """Figures were drawn only when lr was in the grid, silently none otherwise."""
    pytest.importorskip("matplotlib")
    import importlib
    sweep_module = importlib.import_module("pyjlfa.sweep")
    rows = _rows("layers", [CHAIN, "lenet5"])
    assert sweep_module.x_key(rows) == ("layers", "")
    assert sweep_module.x_key(_rows("hidden", [[5], [5, 5]], rules=("fa",))) == ("hidden", "")
    assert sweep_module.x_key(_rows(None, [0], rules=("bp", "fa"))) == ("rule", "")
    key, why = sweep_module.x_key(_rows(None, [0], rules=("fa",)))
    assert key is None and why.startswith("every run has the same configuration but its seeds")
    notes = sweep_module.identical_rules(rows)
    assert len(notes) == 2 and notes[0].startswith("fa and dfa give identical results at layers=[Conv2d(") \
        and "FA and DFA are one rule in a network with one hidden layer" in notes[0]
    paths = sweep_module.figures(rows, str(tmp_path), notes)
    assert [os.path.basename(p) for p in paths] == ["accuracy_vs_layers_final.png", "accuracy_vs_layers_best.png"]
    assert sweep_module.figures(_rows(None, [0], rules=("fa",)), str(tmp_path)) == []


def test_rule_names_in_a_spec_are_case_insensitive():
    """Issue 26, item 14: "FA" and "fa" are one rule (one summary row, one colour)."""
    data, runs, _ = plan(dict(TINY, grid={"rule": ["FA", "uSF", "wm(steps=2)"]}))
    assert [config["rule"] for _, config in runs] == ["fa", "usf", "wm(steps=2)"]
