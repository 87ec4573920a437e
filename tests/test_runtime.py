"""The Julia runtime: how it starts, what it reports, and that the Julia package's own tests pass."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import pyjlfa
from pyjlfa._runtime import julia_package_path, julia_command

ROOT = Path(__file__).resolve().parent.parent


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


def test_runtime_info_says_julia_computes():
    pyjlfa.Network([3, 2])
    info = pyjlfa.runtime_info()
    assert info["started_by"] == "embed"
    assert info["julia_version"][0].isdigit() and "libjulia" in info["libjulia"]
    assert Path(info["package_path"]) == julia_package_path()
    assert info["blas"] and int(info["blas_threads"]) >= 1


def test_julia_starts_only_once():
    pyjlfa.start_julia()
    assert pyjlfa.start_julia()["started_by"] == "embed"  # asking again is fine
    with pytest.raises(RuntimeError, match="already running in this process"):
        pyjlfa.start_julia(method="juliacall")
    with pytest.raises(ValueError, match="method must be 'embed' or 'juliacall'"):
        pyjlfa.start_julia(method="pycall")


@pytest.mark.subprocess
def test_import_starts_nothing_and_a_process_exits_cleanly():
    code = ("import sys, pyjlfa, pyjlfa._runtime as r; assert r._engine is None; "
            "assert 'juliacall' not in sys.modules; import numpy as np; "
            "net = pyjlfa.Network([3, 2]); net.fit(np.ones((4, 3)), np.array([0, 1, 0, 1])); print('trained')")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "trained"


@pytest.mark.subprocess
def test_openblas_core_type_is_chosen_but_a_user_choice_wins():
    code = "import pyjlfa; i = pyjlfa.start_julia(); print(i['openblas_coretype']); print(i['blas'])"
    user = run_python(code, OPENBLAS_CORETYPE="Haswell")
    assert user.returncode == 0, user.stderr
    assert "Haswell (set by the user)" in user.stdout and "Haswell" in user.stdout.splitlines()[1]
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if " avx512f" in flags or " avx2" in flags:
        env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
        chosen = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
        assert "chosen by pyjlfa from the CPU flags" in chosen.stdout, chosen.stderr
        core = chosen.stdout.split()[0]
        assert core in chosen.stdout.splitlines()[1]  # OpenBLAS reports the kernel it took


@pytest.mark.subprocess
def test_a_missing_julia_is_explained():
    result = run_python("import pyjlfa; pyjlfa.start_julia(julia='/nonexistent/julia')")
    assert result.returncode != 0
    assert "no Julia found" in result.stderr and "PYJLFA_JULIA" in result.stderr


@pytest.mark.skipif(os.environ.get("PYJLFA_TEST_JULIACALL") != "1",
                    reason="juliacall needs Julia >= 1.10.3 and PythonCall from the Julia registry, neither "
                           "reachable offline here; set PYJLFA_TEST_JULIACALL=1 on a machine with internet")
@pytest.mark.subprocess
def test_juliacall_route_gives_the_same_engine():
    code = ("import juliacall, pyjlfa, numpy as np; net = pyjlfa.Network([3, 2], dtype='float64'); "
            "print(pyjlfa.runtime_info()['started_by']); print(net.predict_proba(np.ones((1, 3)))[0].sum())")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["juliacall", "1.0"]


@pytest.mark.slow
@pytest.mark.subprocess
def test_the_julia_packages_own_test_suite_passes():
    """runtests.jl run directly with julia (Pkg.test needs the network), on this session's image. Without the
    parts other tests run: threads.jl (test_threads.py, under `julia -t 2`) and the model-file contract
    (test_model_contract.py: the corpus's verdicts in Julia, and resuming across the two languages)."""
    pkg = julia_package_path()
    result = subprocess.run([*julia_command(), f"--project={pkg}", str(pkg / "test" / "runtests.jl")],
                            capture_output=True, text=True, timeout=900, env={**os.environ, "FA_TEST_SKIP": "threads,contract"})
    print(result.stdout[-3000:], result.stderr[-3000:])
    assert result.returncode == 0
    assert "Test Summary" in result.stdout
