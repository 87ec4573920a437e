"""Threads: start_julia(threads=N) / PYJLFA_THREADS, set_threads, and that N threads train as one does."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pyjlfa
from pyjlfa._runtime import julia_package_path, julia_command

ROOT = Path(__file__).resolve().parent.parent

# Trains one network per thread setting in a fresh process started with PYJLFA_THREADS, and saves
# the parameters. The layers are wide enough (256 x 256 per batch) for the kernels to be split.
TRAIN = """
import json, sys
import numpy as np
import pyjlfa
out, settings = sys.argv[1], [int(t) for t in sys.argv[2:]]
info = pyjlfa.start_julia()
rng = np.random.default_rng(0)
X, y = rng.normal(size=(512, 100)), rng.integers(0, 10, 512)
report = {"julia_threads": info["julia_threads"], "runs": []}
for k, threads in enumerate(settings):
    pyjlfa.set_threads(threads)
    info = pyjlfa.runtime_info()
    params = {}
    for rule in ("bp", "fa", "dfa"):
        net = pyjlfa.Network([100, 256, 256, 10], activation="tanh", rule=rule, seed=1, dtype="float64")
        losses = [net.step(X[:256], y[:256], pyjlfa.SGD(0.05, momentum=0.9))]
        net.fit(X, y, epochs=2, batch_size=256, optimizer=pyjlfa.SGD(0.05, momentum=0.9))
        params.update({f"{rule}_{i}_{name}": getattr(layer, name) for i, layer in enumerate(net.layers)
                       for name in ("W", "b")})
        params[f"{rule}_loss"] = np.array(losses + [net.evaluate(X, y)["loss"]])
    np.savez(f"{out}-{k}.npz", **params)
    report["runs"].append({key: info.get(key) for key in ("kernel_threads", "blas_threads", "gemm_blas_threads",
                                                          "gemm_threads_seen")})
# The engine reads the thread count of the BLAS it multiplies with: a BLAS given threads again makes it
# keep to one thread (the guard against two pools).
from pyjlfa._blas import set_numpy_blas_threads
from pyjlfa._runtime import _describe_runtime, engine
report["seen_after_raising"] = _describe_runtime(engine())["gemm_threads_seen"] if set_numpy_blas_threads(2) else None
print(json.dumps(report))
"""


def train_in_process(tmp_path, name, julia_threads, settings):
    env = {**os.environ, "PYJLFA_THREADS": str(julia_threads)}
    result = subprocess.run([sys.executable, "-c", TRAIN, str(tmp_path / name), *map(str, settings)],
                            capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[-1])
    runs = [dict(np.load(f"{tmp_path / name}-{k}.npz")) for k in range(len(settings))]
    return report, runs


@pytest.mark.slow
@pytest.mark.subprocess
def test_two_threads_train_as_one_and_repeat_bit_for_bit(tmp_path):
    report, (one, two, two_again) = train_in_process(tmp_path, "two", 2, [1, 2, 2])
    assert report["julia_threads"] == "2"
    assert [r["kernel_threads"] for r in report["runs"]] == ["1", "2", "2"]
    if report["runs"][0]["gemm_blas_threads"] is not None:     # NumPy's OpenBLAS does the GEMMs, serial: one pool
        assert [r["gemm_blas_threads"] for r in report["runs"]] == ["1", "1", "1"]
    assert [r["gemm_threads_seen"] for r in report["runs"]] == ["1", "1", "1"]   # so the engine may split products
    assert report["seen_after_raising"] in ("2", None)
    assert one.keys() == two.keys() and len(one) == 3 * (6 + 1)
    for key in one:
        np.testing.assert_array_equal(two[key], two_again[key], err_msg=f"{key}: same threads, same seed")
        np.testing.assert_allclose(two[key], one[key], rtol=1e-12, atol=1e-14, err_msg=f"{key}: 2 threads vs 1")
    # and a process started with one thread gives the same parameters as one thread in the 2-thread process
    report1, (single,) = train_in_process(tmp_path, "one", 1, [1])
    assert report1["julia_threads"] == "1" and report1["runs"][0]["kernel_threads"] == "1"
    for key in one:
        np.testing.assert_array_equal(single[key], one[key], err_msg=f"{key}: 1 thread in two processes")


def test_thread_settings_are_checked():
    running = int(pyjlfa.runtime_info()["julia_threads"])
    for bad in (0, -1, 1.5, "2", True, None):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            pyjlfa.set_threads(bad)
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        pyjlfa.start_julia(threads=0)
    with pytest.raises(ValueError, match=f"Julia started with {running} thread"):
        pyjlfa.set_threads(running + 1)
    with pytest.raises(RuntimeError, match=f"already running in this process with {running} thread"):
        pyjlfa.start_julia(threads=running + 1)
    assert pyjlfa.start_julia(threads=running)["julia_threads"] == str(running)   # the same count is fine


@pytest.mark.subprocess
def test_pyjlfa_threads_variable_is_checked():
    code = "import pyjlfa; pyjlfa.start_julia()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYJLFA_THREADS": "two"})
    assert result.returncode != 0 and "PYJLFA_THREADS must be a positive integer, got 'two'" in result.stderr


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_julia_thread_tests_pass_with_two_threads():
    pkg = julia_package_path()
    code = ("using FeedbackAlignment, Test, Random, LinearAlgebra; const FAL = FeedbackAlignment; "
            f"@testset \"threads\" begin include(raw\"{pkg / 'test' / 'threads.jl'}\") end")
    result = subprocess.run([*julia_command(), "-t", "2", f"--project={pkg}", "-e", code],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "784-256-256-10 FA step, batch 512, 2 threads:" in result.stderr + result.stdout   # the threaded paths ran
