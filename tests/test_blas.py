"""Matrix products through NumPy's bundled OpenBLAS (pyjlfa/_blas.py), with Julia's BLAS as the fallback."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pyjlfa
from pyjlfa._blas import numpy_gemm

ROOT = Path(__file__).resolve().parents[1]


def test_runtime_reports_which_blas_multiplies():
    info = pyjlfa.runtime_info()
    if numpy_gemm() is None:
        assert info["gemm"] == "julia" and "Julia's BLAS" in info["gemm_blas"]
    else:
        assert info["gemm"] == "external" and "NumPy's OpenBLAS" in info["gemm_blas"]


GRADIENTS = """
import json, numpy as np, pyjlfa
net = pyjlfa.Network([20, 16, 12, 5], rule="dfa", seed=4, dtype="float64")
rng = np.random.default_rng(0)
X, y = rng.normal(size=(33, 20)), rng.integers(0, 5, 33)
print(json.dumps(dict(gemm=pyjlfa.runtime_info()["gemm"], grads=[g.tolist() for pair in net.gradients(X, y) for g in pair])))
"""


def _gradients(blas):
    env = dict(os.environ, PYJLFA_BLAS=blas, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", GRADIENTS], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.subprocess
def test_numpy_blas_and_julia_blas_give_the_same_gradients():
    julia = _gradients("julia")
    assert julia["gemm"] == "julia"
    default = _gradients("")
    assert default["gemm"] == ("julia" if numpy_gemm() is None else "external")
    for a, b in zip(julia["grads"], default["grads"]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
