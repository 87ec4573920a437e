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


PREDICT = """
import sys, numpy as np, pyjlfa
net = pyjlfa.load(sys.argv[1])
X = np.fromfile(sys.argv[2], dtype=np.float32).reshape(-1, net.n_features)
net.outputs(X).tofile(sys.argv[3])
print(pyjlfa.runtime_info()["gemm"])
"""


@pytest.mark.slow
@pytest.mark.subprocess
def test_python_and_julia_predict_one_file_alike_exactly_when_they_share_blas_and_kernel(tmp_path):
    """Issue 26, item 7, the README's claim as stated: a file round-trips bit for bit, but the predictions
    Python and Julia compute from it are bit-identical only when both multiply with the same BLAS and
    kernel (Python with PYJLFA_BLAS=julia, Julia with the OPENBLAS_CORETYPE pyjlfa chose); by default
    Python uses NumPy's OpenBLAS and they agree to float32 rounding."""
    from pyjlfa._runtime import julia_command
    rng = np.random.default_rng(0)
    X = rng.normal(size=(256, 40)).astype(np.float32)
    with pyjlfa.Network([40, 96, 96, 10], rule="fa", seed=1) as net:
        net.fit(X, rng.integers(0, 10, 256), epochs=1, batch_size=32, optimizer=pyjlfa.SGD(0.05))
        net.save(tmp_path / "m.safetensors")
        default = net.outputs(X)
    X.tofile(tmp_path / "X.f32")
    command = julia_command()   # this process started Julia, so OPENBLAS_CORETYPE is in os.environ now
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    assert env.get("OPENBLAS_CORETYPE"), "pyjlfa sets OPENBLAS_CORETYPE (from the CPU flags) unless the user did"
    script = (f'push!(LOAD_PATH, "{ROOT / "julia"}"); using FeedbackAlignment\n'
              'net = load("m.safetensors"); X = Array{Float32}(undef, 40, 256); read!("X.f32", X)\n'
              'write("julia.f32", outputs(net, X))\n')
    subprocess.run([*command, "-e", script], cwd=tmp_path, env=env, check=True, capture_output=True, timeout=600)
    julia = np.fromfile(tmp_path / "julia.f32", dtype=np.float32).reshape(256, 10)
    out = subprocess.run([sys.executable, "-c", PREDICT, "m.safetensors", "X.f32", "python.f32"], cwd=tmp_path,
                         env=dict(env, PYJLFA_BLAS="julia"), check=True, capture_output=True, text=True, timeout=600)
    assert out.stdout.split()[-1] == "julia"
    python = np.fromfile(tmp_path / "python.f32", dtype=np.float32).reshape(256, 10)
    assert np.array_equal(python, julia)                                  # same BLAS, same kernel: same bits
    np.testing.assert_allclose(default, julia, rtol=1e-5, atol=1e-5)      # NumPy's BLAS: float32 rounding apart
