"""Worker processes: a child forked after Julia started gets a clear error (never a hang or an
abort), and spawned workers compute what the parent computes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.subprocess,
              pytest.mark.skipif(not hasattr(os, "fork"), reason="fork exists on POSIX systems only")]

SCRIPT = r'''
import json, multiprocessing, os, sys
import numpy as np
import pyjlfa


def work(seed):
    """Build and fit a small network; its final loss."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((200, 5)); y = (X[:, 0] > 0).astype(int)
    net = pyjlfa.Network([5, 8, 2], dtype="float64", seed=seed)
    return net.fit(X, y, epochs=3, batch_size=20, shuffle=False)["loss"][-1]


if __name__ == "__main__":
    method = sys.argv[1]
    pyjlfa.Network([5, 8, 2])                          # Julia runs in this (parent) process; `work` is not compiled
    report = {}
    with multiprocessing.get_context(method).Pool(2) as pool:
        try:
            report["results"] = pool.map_async(work, [0, 1]).get(timeout=120)
        except multiprocessing.TimeoutError:
            report["error"] = "TimeoutError: the pool hung"
        except Exception as e:                           # a worker's exception, re-raised here
            report["error"] = f"{type(e).__name__}: {e}"
    if method == "fork":                                 # a bare fork that exits the normal way
        pid = os.fork()
        if pid == 0:
            try:
                work(0)
                code = 3
            except RuntimeError as e:
                code = 0 if "spawn" in str(e) else 4
            sys.exit(code)                               # runs atexit: Julia's exit hook must not run here
        report["bare_fork_exit"] = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    report["parent"] = work(0)                           # the parent's Julia is unharmed
    print(json.dumps(report), flush=True)
'''


def run(method, tmp_path):
    script = tmp_path / "pool.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True, env=env,
                            timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(method, report)
    return report


def test_a_fork_pool_gets_a_clear_error_not_a_hang(tmp_path):
    report = run("fork", tmp_path)
    error = report.get("error", "")
    assert error.startswith("RuntimeError: pyjlfa cannot run in this process"), report
    assert 'get_context("spawn")' in error and 'get_context("forkserver")' in error
    assert report["bare_fork_exit"] == 0
    assert 0 < report["parent"] < 0.7   # the parent still trains (loss from ln 2 = 0.69 down)


def test_a_spawn_pool_computes_what_the_parent_computes(tmp_path):
    report = run("spawn", tmp_path)
    assert "error" not in report, report
    # each worker starts its own Julia; seed 0 gives the parent's result bit for bit
    assert report["results"][0] == report["parent"] and report["results"][1] != report["parent"]
