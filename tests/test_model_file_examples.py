"""The model-file examples run in both directions, and each side sees the other's model exactly.

Python trains and saves -> Julia loads, evaluates, fine-tunes and saves; Julia trains and saves ->
Python loads, evaluates, fine-tunes and saves. (One epoch on 5000 images keeps them quick.)
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pyjlfa
from pyjlfa._runtime import julia_command

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]
ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
QUICK = ["--epochs", "1", "--train-samples", "5000"]
METRICS = r"test loss ([-\d.e]+), test accuracy ([\d.]+)"


def run(command, cwd):
    # The same environment as this process: PYTHONPATH finds this pyjlfa, and the OPENBLAS_CORETYPE
    # pyjlfa chose makes the Julia processes use the same BLAS kernel. PYJLFA_BLAS=julia makes the
    # Python processes multiply with Julia's OpenBLAS too (by default they use NumPy's, whose float32
    # sums round differently in the last bits), so that equal metrics mean the same model, bit for bit.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYJLFA_BLAS": "julia"}
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def metrics(stdout, prefix):
    match = re.search(prefix + r".*?" + METRICS, stdout)
    assert match, stdout
    return float(match.group(1)), float(match.group(2))


@pytest.fixture(scope="module")
def julia():
    pyjlfa.start_julia()  # sets OPENBLAS_CORETYPE in os.environ, as in a user's process
    return julia_command()


def test_python_trains_and_saves_then_julia_loads_and_finetunes(tmp_path, julia):
    out = run([sys.executable, str(EXAMPLES / "train_and_save.py"), *QUICK, "--out", "py.safetensors"], tmp_path)
    trained = metrics(out, "trained 1 epochs")
    assert 0.6 < trained[1] < 1

    out = run([*julia, str(EXAMPLES / "load_finetune.jl"), "py.safetensors", *QUICK, "--out", "py_jl.safetensors"], tmp_path)
    assert "written by pyjlfa" in out
    assert metrics(out, "loaded after 1 epochs") == trained  # Julia sees exactly the model Python saved
    finetuned = metrics(out, "fine-tuned to 2 epochs")
    assert finetuned[0] < trained[0]

    net = pyjlfa.load(tmp_path / "py_jl.safetensors")
    _, _, Xte, yte = pyjlfa.datasets.fashion_mnist()
    result = net.evaluate(Xte, yte)
    # This process multiplies with NumPy's OpenBLAS (the default): the same model, float32 rounding apart.
    assert net.epochs == 2 and result["accuracy"] == finetuned[1]
    assert result["loss"] == pytest.approx(finetuned[0], rel=1e-6)


def test_julia_trains_and_saves_then_python_loads_and_finetunes(tmp_path, julia):
    out = run([*julia, str(EXAMPLES / "train_and_save.jl"), *QUICK, "--out", "jl.safetensors"], tmp_path)
    trained = metrics(out, "trained 1 epochs")
    assert 0.6 < trained[1] < 1

    out = run([sys.executable, str(EXAMPLES / "load_finetune.py"), "jl.safetensors", *QUICK, "--out", "jl_py.safetensors"],
              tmp_path)
    assert "written by FeedbackAlignment.jl" in out
    assert metrics(out, "loaded after 1 epochs") == trained  # Python sees exactly the model Julia saved
    assert metrics(out, "fine-tuned to 2 epochs")[0] < trained[0]
    assert pyjlfa.load(tmp_path / "jl_py.safetensors").epochs == 2


def test_julia_load_gives_back_pythons_optimizer_and_continues_as_python_does(tmp_path, julia):
    """Issue 26, item 6: Julia's load dropped the optimizer (learn! defaulted to SGD(0.01); the example
    rebuilt it by hand and lost weight_decay). Now learn! without an optimizer continues with the file's,
    as Python's fit does after pyjlfa.load: both continue to the same parameters."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 5)), rng.integers(0, 3, size=40)
    net = pyjlfa.Network([5, 7, 3], rule="fa", seed=2, dtype="float64")
    net.fit(X, y, epochs=1, batch_size=8, optimizer=pyjlfa.SGD(lr=0.1, momentum=0.9, weight_decay=0.05))
    net.save(tmp_path / "py.safetensors", include_optimizer=True)
    X.tofile(tmp_path / "X.f64")   # C-ordered (samples, features) is Julia's column-major features x samples
    (y + 1).astype(np.int64).tofile(tmp_path / "y.i64")   # Julia's labels are 1..K
    script = (f'push!(LOAD_PATH, "{ROOT / "julia"}"); using FeedbackAlignment\n'
              'net = load("py.safetensors")\n'
              'X = Array{Float64}(undef, 5, 40); read!("X.f64", X); y = Vector{Int}(undef, 40); read!("y.i64", y)\n'
              'println("weight_decay ", net.optimizer.weight_decay, " momentum ", net.optimizer.momentum)\n'
              'learn!(net, X, y; epochs=1, batchsize=8)\n'
              'save("jl.safetensors", net; include_optimizer=true)\n')
    out = run([*julia, "-e", script], tmp_path)
    assert "weight_decay 0.05 momentum 0.9" in out, out
    with pyjlfa.load(tmp_path / "py.safetensors") as python, pyjlfa.load(tmp_path / "jl.safetensors") as julia_net:
        assert python.optimizer == pyjlfa.SGD(lr=0.1, momentum=0.9, weight_decay=0.05)
        python.fit(X, y, epochs=1, batch_size=8)          # continues with the file's optimizer
        assert julia_net.epochs == python.epochs == 2 and julia_net.optimizer == python.optimizer
        for a, b in zip(julia_net.layers, python.layers):
            np.testing.assert_allclose(a.W, b.W, rtol=0, atol=1e-13)   # two BLAS libraries: float64 rounding apart
            np.testing.assert_allclose(a.b, b.b, rtol=0, atol=1e-13)
