"""The prebuilt Julia system image: used when it matches the sources, never when it does not.

The image itself is built by scripts/setup.sh (julia/FeedbackAlignment/precompile/build_image.jl,
several minutes); tests that need one skip, saying so, when the cache has none for this tree.
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


def run_step(cwd, **env):
    result = subprocess.run([sys.executable, "-c", STEP], capture_output=True, text=True, timeout=900,
                            cwd=cwd, env={**os.environ, "PYTHONPATH": str(cwd), **env})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.splitlines()[-1])


def built_image():
    image = image_for(julia_package_path())
    if not image.is_file():
        pytest.skip(f"no prebuilt image for this tree ({image}); scripts/setup.sh builds it")
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


def test_prebuilt_image_is_used_and_computes_what_the_default_image_computes():
    image = built_image()
    repo = julia_package_path().parent.parent
    with_image = run_step(repo)
    without = run_step(repo, PYJLFA_SYSIMAGE="off")
    assert with_image["sysimage_kind"] == "prebuilt" and Path(with_image["sysimage"]) == image
    assert with_image["package_in_image"] is True
    assert without["sysimage_kind"] == "default" and without["package_in_image"] is False
    assert without["sysimage"] == julia_paths()[1] and "PYJLFA_SYSIMAGE=off" in without["sysimage_reason"]
    # the same float64 step, bit for bit
    assert (with_image["loss"], with_image["W0"]) == (without["loss"], without["W0"])


def test_missing_or_stale_image_is_never_used(tmp_path):
    """A copy of the tree with its own image cache: no image -> default; an image for its sources ->
    used; a source file touched afterwards -> that image is stale and Julia's default image is used."""
    image = built_image()
    repo = tmp_path / "repo"
    shutil.copytree(julia_package_path().parent.parent / "pyjlfa", repo / "pyjlfa",
                    ignore=shutil.ignore_patterns("__pycache__", "julia"))
    shutil.copytree(julia_package_path(), repo / "julia" / "FeedbackAlignment")
    cache = tmp_path / "cache"
    cache.mkdir()
    env = {"PYJLFA_CACHE": str(cache)}

    missing = run_step(repo, **env)
    assert missing["sysimage_kind"] == "default" and "no prebuilt image" in missing["sysimage_reason"]

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
    assert (stale["loss"], stale["W0"]) == (valid["loss"], valid["W0"])


def test_steps_allocate_nothing_with_the_image():
    """test/speed.jl (its zero-allocation assertions included) passes with the package from the image:
    code compiled into the image must not call helpers through boxed arguments."""
    image = built_image()
    pkg = julia_package_path()
    code = ("using FeedbackAlignment, Test, Random, LinearAlgebra; const FAL = FeedbackAlignment; "
            "@assert occursin(\"FeedbackAlignment-julia\", unsafe_string(Base.JLOptions().image_file)); "
            f'@testset "speed.jl under the image" begin include(raw"{pkg / "test" / "speed.jl"}") end')
    result = subprocess.run([str(Path(julia_paths()[0]) / "julia"), "--startup-file=no", "-J", str(image),
                             f"--project={pkg}", "-e", code], capture_output=True, text=True, timeout=900)
    print(result.stdout[-3000:], result.stderr[-3000:])
    assert result.returncode == 0
    assert "speed.jl under the image" in result.stdout
