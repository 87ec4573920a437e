"""Hand NumPy's bundled OpenBLAS to the Julia engine for its matrix products.

Julia 1.5 ships OpenBLAS 0.3.9; NumPy wheels bundle a recent one (scipy-openblas, ILP64, symbols
``scipy_sgemm_64_`` ...), already loaded once NumPy is imported. On this project's machine NumPy's
was 1.1-1.9x faster on the GEMMs of a 784-1000-1000-1000-10 network and level on 784-256-256-10
(bench/breakdown.jl). ``PYJLFA_BLAS=julia`` keeps Julia's own BLAS.
"""

import ctypes
import functools
import glob
import os

import numpy as np

# ILP64 Fortran gemm symbols, most specific first: scipy-openblas64 (NumPy >= 2), then plain ILP64 builds.
_SYMBOLS = (("scipy_sgemm_64_", "scipy_dgemm_64_"), ("sgemm_64_", "dgemm_64_"))


def _candidates():
    """Shared libraries that may hold NumPy's OpenBLAS: the wheel's bundled folder, then what is loaded."""
    here = os.path.dirname(np.__file__)
    paths = []
    for pattern in ("../numpy.libs/*openblas*", ".dylibs/*openblas*", "../numpy.libs/*openblas*.dll"):
        paths += sorted(glob.glob(os.path.join(here, pattern)))
    try:
        with open("/proc/self/maps") as maps:
            paths += sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and "/" in line})
    except OSError:
        pass
    return list(dict.fromkeys(os.path.realpath(p) for p in paths))


@functools.lru_cache(maxsize=None)   # NumPy's library stays as loaded; a search costs ~0.5 ms
def numpy_gemm():
    """(sgemm address, dgemm address, library path) of NumPy's ILP64 OpenBLAS, or None."""
    for path in _candidates():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for s, d in _SYMBOLS:
            if hasattr(lib, s) and hasattr(lib, d):
                address = lambda name: ctypes.cast(getattr(lib, name), ctypes.c_void_p).value  # noqa: E731
                return address(s), address(d), path
    return None


# OpenBLAS's thread-count functions, by the names each build exports (scipy-openblas first).
_SET_THREADS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads")
_GET_THREADS = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads")


@functools.lru_cache(maxsize=None)
def _numpy_openblas_function(names):
    """The first of these functions NumPy's OpenBLAS exports, or None."""
    found = numpy_gemm()
    if found is None:
        return None
    lib = ctypes.CDLL(found[2])
    name = next((n for n in names if hasattr(lib, n)), None)
    return None if name is None else getattr(lib, name)


def set_numpy_blas_threads(n):
    """Set the thread count of NumPy's OpenBLAS (the one pyjlfa's matrix products use); False if it has none."""
    f = _numpy_openblas_function(_SET_THREADS)
    if f is None:
        return False
    f.argtypes, f.restype = [ctypes.c_int], None
    f(int(n))
    return True


def numpy_blas_threads():
    """The thread count of NumPy's OpenBLAS, or None if it cannot be read."""
    f = _numpy_openblas_function(_GET_THREADS)
    if f is None:
        return None
    f.argtypes, f.restype = [], ctypes.c_int
    return f()


def use_numpy_blas(engine):
    """Route the engine's GEMMs through NumPy's OpenBLAS unless PYJLFA_BLAS=julia; say which is used."""
    if os.environ.get("PYJLFA_BLAS", "").lower() == "julia":
        return "Julia's BLAS (PYJLFA_BLAS=julia)"
    found = numpy_gemm()
    if found is None:
        return "Julia's BLAS (no ILP64 OpenBLAS found in NumPy)"
    sgemm, dgemm, path = found
    # Its thread count tells the engine whether it may split products over Julia's threads (only
    # while this BLAS is serial: two pools of threads on the same cores slow each other down).
    threads = _numpy_openblas_function(_GET_THREADS)
    engine.call("fa_set_blas", sgemm, dgemm, None if threads is None else ctypes.cast(threads, ctypes.c_void_p).value)
    return f"NumPy's OpenBLAS ({os.path.basename(path)})"
