"""The prebuilt Julia system image: used when it matches the sources, never when it does not.

The image itself is built by scripts/build_image.sh (julia/FeedbackAlignment/precompile/build_image.jl,
4-9 minutes), which scripts/setup.sh starts in the background. The tests that need one for this tree
run last (conftest.py) and wait for that build, or build it, when the cache has none.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pyjlfa import _runtime
from pyjlfa._runtime import julia_package_path

BUILDER = julia_package_path() / "precompile" / "build_image.jl"
ROOT = julia_package_path().parent.parent
pytestmark = pytest.mark.subprocess

# One FA step of a fixed float64 network in a fresh process; prints how Julia was started and the loss.
STEP = """
import json, numpy as np, pyjlfa
net = pyjlfa.Network([6, 5, 4, 3], rule="fa", seed=3, dtype="float64")
X = np.linspace(-1, 1, 7 * 6).reshape(7, 6); y = np.arange(7) % 3
loss = net.step(X, y, pyjlfa.SGD(0.1, momentum=0.9))
info = pyjlfa.runtime_info()
print(json.dumps({k: info[k] for k in ("sysimage", "sysimage_kind", "sysimage_reason", "package_in_image")}
                 | {"loss": loss, "W0": float(net.layers[0].W[0, 0])}))
"""


def julia_paths():
    return _runtime._julia_paths(_runtime._find_julia(None))


def image_for(package):
    """Where pyjlfa looks for the image of `package` (a julia/FeedbackAlignment folder)."""
    bindir, base, libjulia, version, cpu = julia_paths()
    return _runtime._cache_dir() / _runtime._image_name(version, cpu, base, package)


NOTICE = "pyjlfa: starting Julia without a prebuilt system image"


def run_step(cwd, **env):
    environ = {k: v for k, v in os.environ.items() if k != "PYJLFA_IMAGE_NOTICE"}   # this process's notice
    result = subprocess.run([sys.executable, "-c", STEP], capture_output=True, text=True, timeout=900,
                            cwd=cwd, env={**environ, "PYTHONPATH": str(cwd), **env})
    assert result.returncode == 0, result.stderr[-3000:]
    return {**json.loads(result.stdout.splitlines()[-1]), "notices": result.stderr.count(NOTICE),
            "stderr": result.stderr}


@pytest.fixture(scope="module")
def built_image():
    """The image for this tree: already there, or once the running build ends, or built now."""
    image = image_for(julia_package_path())
    if not image.is_file():
        result = subprocess.run(["bash", str(ROOT / "scripts" / "build_image.sh")], capture_output=True, text=True,
                                timeout=3600)
        assert image.is_file(), result.stdout + result.stderr
    return image


def test_python_and_julia_agree_on_the_image_name(tmp_path):
    """build_image.jl writes the image where pyjlfa looks for it: the same key from both languages."""
    bindir, base, libjulia, version, cpu = julia_paths()
    code = f'include(raw"{BUILDER}"); print(default_output())'
    result = subprocess.run([str(Path(bindir) / "julia"), "--startup-file=no", "-e", code], capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYJLFA_CACHE": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == tmp_path / _runtime._image_name(version, cpu, base, julia_package_path())


def test_source_hash_covers_every_julia_source():
    files = _runtime._source_files(julia_package_path())
    assert "Project.toml" in files and "precompile/workload.jl" in files
    assert {f"src/{p.name}" for p in (julia_package_path() / "src").glob("*.jl")} <= set(files)


@pytest.mark.slow
@pytest.mark.image
def test_prebuilt_image_is_used_and_computes_what_the_default_image_computes(built_image):
    image = built_image
    repo = julia_package_path().parent.parent
    with_image = run_step(repo)
    without = run_step(repo, PYJLFA_SYSIMAGE="off")
    assert with_image["sysimage_kind"] == "prebuilt" and Path(with_image["sysimage"]) == image
    assert with_image["package_in_image"] is True
    assert without["sysimage_kind"] == "default" and without["package_in_image"] is False
    assert without["sysimage"] == julia_paths()[1] and "PYJLFA_SYSIMAGE=off" in without["sysimage_reason"]
    assert with_image["notices"] == 0 and without["notices"] == 0      # no image by choice: nothing to say
    # the same float64 step, bit for bit
    assert (with_image["loss"], with_image["W0"]) == (without["loss"], without["W0"])


@pytest.mark.slow
@pytest.mark.image
def test_missing_or_stale_image_is_never_used(tmp_path, built_image):
    """A copy of the tree with its own image cache: no image -> default; an image for its sources ->
    used; a source file touched afterwards -> that image is stale and Julia's default image is used."""
    image = built_image
    repo = tmp_path / "repo"
    shutil.copytree(julia_package_path().parent.parent / "pyjlfa", repo / "pyjlfa",
                    ignore=shutil.ignore_patterns("__pycache__", "julia"))
    shutil.copytree(julia_package_path(), repo / "julia" / "FeedbackAlignment")
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {"PYJLFA_CACHE": str(cache)}

    missing = run_step(repo, **env)
    assert missing["sysimage_kind"] == "default" and "no prebuilt image" in missing["sysimage_reason"]
    # said once, with how to build one
    assert missing["notices"] == 1 and "precompile/build_image.jl" in missing["stderr"], missing["stderr"]

    # The copy's sources are the tree's, so the tree's image serves as the copy's (under the copy's key).
    copy_package = (repo / "julia" / "FeedbackAlignment").resolve()
    (cache / _runtime._image_name(*julia_paths()[3:], julia_paths()[1], copy_package)).symlink_to(image)
    valid = run_step(repo, **env)
    assert valid["sysimage_kind"] == "prebuilt" and valid["package_in_image"] is True

    with open(copy_package / "src" / "network.jl", "a") as f:
        f.write("\n# touched\n")
    stale = run_step(repo, **env)
    assert stale["sysimage_kind"] == "default" and stale["package_in_image"] is False
    assert stale["sysimage"] == julia_paths()[1] and "stale" in stale["sysimage_reason"]
    assert stale["notices"] == 1 and valid["notices"] == 0
    assert (stale["loss"], stale["W0"]) == (valid["loss"], valid["W0"])


@pytest.mark.slow
@pytest.mark.image
def test_steps_allocate_nothing_with_the_image(built_image):
    """test/speed.jl (its zero-allocation assertions included) passes with the package from the image:
    code compiled into the image must not call helpers through boxed arguments."""
    image = built_image
    pkg = julia_package_path()
    code = ("using FeedbackAlignment, Test, Random, LinearAlgebra; const FAL = FeedbackAlignment; "
            "@assert occursin(\"FeedbackAlignment-julia\", unsafe_string(Base.JLOptions().image_file)); "
            f'@testset "speed.jl under the image" begin include(raw"{pkg / "test" / "speed.jl"}") end')
    result = subprocess.run([str(Path(julia_paths()[0]) / "julia"), "--startup-file=no", "-J", str(image),
                             f"--project={pkg}", "-e", code], capture_output=True, text=True, timeout=900)
    print(result.stdout[-3000:], result.stderr[-3000:])
    assert result.returncode == 0
    assert "speed.jl under the image" in result.stdout
