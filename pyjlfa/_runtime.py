"""Starting Julia once per process and reaching the FeedbackAlignment entry points.

Two ways in, one result. Either libjulia is embedded directly (ctypes, the same
``jl_parse_opts`` / ``jl_init_with_image`` / ``jl_eval_string`` sequence juliacall's own start
uses, with Julia's signal handling off), or, when juliacall is already running in the process or
the user asks for it, the package is loaded through juliacall. Both end in the address of
``fa_lookup``, from which every entry point of the flat C ABI is fetched by name; everything above
this module is shared.
"""

import atexit
import ctypes
import numbers
import os
import platform
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from ctypes import POINTER, c_char_p, c_double, c_int, c_int64, c_uint64, c_void_p
from pathlib import Path

__all__ = ["JuliaError", "DivergenceError", "start_julia", "runtime_info", "set_threads", "engine"]


class JuliaError(RuntimeError):
    """An exception raised inside Julia; the message is Julia's own."""


class JuliaValueError(JuliaError, ValueError):
    """Julia refused an argument (an ArgumentError or DimensionMismatch); the message says why."""


class DivergenceError(FloatingPointError):
    """Training produced a NaN or infinite loss; the message says at which epoch and batch."""


def julia_package_path():
    """The bundled Julia package: inside the installed wheel, else in the source tree."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "julia" / "FeedbackAlignment", here.parent / "julia" / "FeedbackAlignment"):
        if (candidate / "Project.toml").is_file():
            return candidate.resolve()
    raise FileNotFoundError(f"the bundled Julia package FeedbackAlignment was not found next to {here}")


# name: (return type, argument types) of each C entry point, as declared in julia/.../cabi.jl
_SIGNATURES = {
    "fa_new": (c_int, [POINTER(c_int64), c_int, c_int64, POINTER(c_int64), c_char_p, c_char_p, POINTER(c_void_p),
                       POINTER(c_int64)]),
    "fa_nodes": (c_void_p, [c_int64]),
    "fa_array": (c_int, [c_int64, c_int64, c_char_p, POINTER(c_void_p), POINTER(c_int64)]),
    "fa_set_mode": (c_int, [c_int64, c_int]),
    "fa_conventions": (c_int, [c_int]),
    "fa_free": (c_int, [c_int64]),
    "fa_live_handles": (c_int64, []),
    "fa_forward": (c_int, [c_int64, c_void_p, c_int64, c_int64, c_void_p, c_int]),
    "fa_evaluate": (c_int, [c_int64, c_void_p, c_int64, c_int64, c_void_p, POINTER(c_double)]),
    "fa_gradients": (c_int, [c_int64, c_void_p, c_int64, c_int64, c_void_p, POINTER(c_double)]),
    "fa_input_gradient": (c_int, [c_int64, c_void_p, c_int64, c_int64, c_void_p, c_int, c_void_p]),
    "fa_attack": (c_int, [c_int64, c_int, c_void_p, c_int64, c_int64, c_void_p, c_double, c_double, c_double, c_int,
                          c_int64, c_double, c_int64, c_int64, c_double, c_uint64, c_void_p, c_void_p]),
    "fa_step": (c_int, [c_int64, c_void_p, c_int64, c_int64, c_void_p, c_char_p, POINTER(c_double)]),
    "fa_train_epoch": (c_int, [c_int64, c_void_p, c_int64, c_int64, c_void_p, c_int64, c_int,
                               c_char_p, POINTER(c_double)]),
    "fa_state_get": (c_int, [c_int64, POINTER(c_int64), POINTER(c_uint64), POINTER(c_int64)]),
    "fa_state_set": (c_int, [c_int64, c_int64, c_uint64, c_int64]),
    "fa_optstate": (c_int, [c_int64, c_char_p, c_int, c_int64, c_int64, c_char_p, POINTER(c_void_p),
                            POINTER(c_int64)]),
    "fa_error_message": (c_void_p, []),
    "fa_describe": (c_void_p, [c_char_p]),
    "fa_set_blas": (c_int, [c_void_p, c_void_p, c_void_p]),
    "fa_set_threads": (c_int, [c_int]),
    "fa_watch_interrupts": (c_int, [c_int]),
    # alignment diagnostics and experiments (cabi_diagnostics.jl)
    "fa_alignment_fields": (c_void_p, []),
    "fa_alignment": (c_int, [c_int64, c_void_p, c_int64, c_int64, c_void_p, c_void_p]),
    "fa_track_alignment": (c_int, [c_int64, c_int64]),
    "fa_alignment_records": (c_int, [c_int64, c_void_p, c_int64, POINTER(c_int64)]),
    "fa_teacher_task": (c_int, [c_char_p, c_char_p, c_int, c_int64, POINTER(c_int64), c_int64, c_int64,
                                POINTER(c_double), c_double, c_double, c_uint64, c_int64, c_int64, c_void_p,
                                c_void_p]),
}


# Entry points that loop over batches or chunks and check for Ctrl-C between them (a step is one batch).
_INTERRUPTIBLE = frozenset({"fa_train_epoch", "fa_forward", "fa_evaluate", "fa_teacher_task", "fa_input_gradient",
                            "fa_attack"})

try:
    from _signal import getsignal as _getsignal  # signal.getsignal's enum conversion costs ~7 us per call
except ImportError:
    _getsignal = signal.getsignal


class _InterruptWatch:
    """Lets Julia see Ctrl-C between batches, so a long call stops within a batch's time.

    Python's C-level SIGINT handler only sets a flag that the interpreter checks between bytecodes,
    which a Julia call never returns to; but it also writes the signal number at once to the
    descriptor set by ``signal.set_wakeup_fd``. During each call from the main thread (while the
    default handler, which raises KeyboardInterrupt, is installed) that descriptor is one end of a
    socket pair whose other end Julia peeks at per batch (``interrupt.jl``). After the call the
    previous wakeup descriptor (asyncio's, Jupyter's) is restored and sent whatever arrived meanwhile.
    """

    def __init__(self, watch):
        self.julia_end, self.signal_end = socket.socketpair()
        self.julia_end.setblocking(False)
        self.signal_end.setblocking(False)
        self.pending = select.poll() if hasattr(select, "poll") else None
        if self.pending:
            self.pending.register(self.julia_end.fileno(), select.POLLIN)
        self.clean = True  # False while a disarm runs (Ctrl-C may cut it short and leave bytes behind)
        status = watch(self.julia_end.fileno())
        if status != 0:
            raise JuliaError("fa_watch_interrupts failed")
        atexit.register(self.close)   # open for the process's life; closed, not left to the GC (ResourceWarning)

    def close(self):
        self.julia_end.close()
        self.signal_end.close()

    def arm(self):
        """Route signal bytes to Julia for one call; returns what disarm needs (None: not armed)."""
        if (threading.current_thread() is not threading.main_thread()
                or _getsignal(signal.SIGINT) is not signal.default_int_handler):
            return None
        previous = signal.set_wakeup_fd(self.signal_end.fileno(), warn_on_full_buffer=False)
        if not self.clean:
            self._drain()  # bytes of signals Python has handled already
            self.clean = True
        return -1 if previous == self.signal_end.fileno() else previous

    def disarm(self, previous):
        if previous is None:
            return
        self.clean = False
        signal.set_wakeup_fd(previous)
        arrived = self._drain()
        if arrived and previous >= 0:
            try:
                os.write(previous, arrived)
            except OSError:
                pass
        self.clean = True

    def _drain(self):
        if self.pending and not self.pending.poll(0):
            return b""  # the usual case, without raising BlockingIOError (~5 us)
        arrived = b""
        try:
            while True:
                arrived += self.julia_end.recv(4096)
        except (BlockingIOError, InterruptedError):
            return arrived


class Engine:
    """The table of entry points, and the rules for calling them."""

    def __init__(self, lookup_address, started_by, details):
        lookup = ctypes.CFUNCTYPE(c_void_p, c_char_p)(lookup_address)
        self._fn = {}
        self._check_signatures(lookup)
        for name, (restype, argtypes) in _SIGNATURES.items():
            address = lookup(name.encode())
            if not address:
                raise JuliaError(f"the Julia package has no entry point {name}; is it out of date?")
            self._fn[name] = ctypes.CFUNCTYPE(restype, *argtypes)(address)
        self.thread = threading.get_ident()
        self.pid = os.getpid()        # the process Julia runs in; a forked child cannot use it
        self.forked = False
        self.julia_version = (0,)  # until Julia tells us; meanwhile only this thread may call
        self.started_by = started_by
        self.details = details
        self.runtime = dict(line.split("=", 1) for line in self.describe("runtime").splitlines())
        self.julia_version = tuple(int(p) for p in self.runtime["julia_version"].split("-")[0].split(".")[:3])
        self._names = {}
        self._pending_free = []
        self._interrupts = _InterruptWatch(self._fn["fa_watch_interrupts"])
        self.call("fa_conventions", 1)   # shapes in Julia's messages in NumPy's order

    def check_process(self):
        if self.forked:
            raise RuntimeError(
                f"pyjlfa cannot run in this process (pid {os.getpid()}): it was forked from process {self.pid} after "
                "Julia had started there, and Julia's runtime does not survive a fork (the child would abort or "
                "hang). Start worker processes with multiprocessing.get_context(\"spawn\") or "
                "get_context(\"forkserver\") (e.g. ProcessPoolExecutor(mp_context=multiprocessing.get_context("
                "\"spawn\"))), or fork before the first pyjlfa call.")

    @staticmethod
    def _check_signatures(lookup):
        """Compare the declarations above with the ones the Julia package publishes, so that a
        package out of step with this module is an error here, never a crash in a call."""
        describe = ctypes.CFUNCTYPE(c_void_p, c_char_p)(lookup(b"fa_describe"))
        published = dict(line.split("=", 1) for line in ctypes.string_at(describe(b"signatures")).decode().splitlines())
        for name, (restype, argtypes) in _SIGNATURES.items():
            ours = f"{_abi_kind(restype)}:{','.join(map(_abi_kind, argtypes))}"
            if published.get(name) != ours:
                raise JuliaError(f"entry point {name}: this pyjlfa declares ({ours}), the Julia package at "
                                 f"{julia_package_path()} publishes ({published.get(name, 'nothing')}); "
                                 "the two halves of the package are out of step")

    def check_thread(self):
        self.check_process()
        # Julia before 1.9 cannot adopt foreign threads: entering it from another thread crashes.
        if self.julia_version >= (1, 9):
            return
        here = threading.current_thread()
        # The first check runs in __init__, on the thread that started Julia: remember that thread.
        # Comparing Thread objects, not idents, because a finished thread's ident is reused.
        owner = self.__dict__.setdefault("_julia_thread", here)
        if here is owner:
            return
        version = self.runtime["julia_version"] if hasattr(self, "runtime") else "before 1.9"
        if not owner.is_alive():
            raise RuntimeError(
                f"Julia {version} is bound to the thread that started it ({owner.name!r}), which has finished; "
                "Julia before 1.9 can be entered from no other thread, so pyjlfa cannot compute in this process "
                "any more. Start a new process and let its first pyjlfa call (or pyjlfa.start_julia()) run on a "
                "thread that lives as long as you use pyjlfa, usually the main thread; or use Julia 1.9 or newer.")
        raise RuntimeError(
            f"Julia {version} can only be called from the thread that started it ({owner.name!r}, "
            f"thread {self.thread}); this call came from {here.name!r} (thread {threading.get_ident()}). "
            "Call pyjlfa from that thread (with joblib: a process-based backend such as its default, loky, "
            "not 'threading'), or use Julia 1.9 or newer.")

    def call(self, name, *args):
        """Call a status-returning entry point; raise Julia's error as a Python exception."""
        self.check_thread()
        self._free_pending()
        armed = self._interrupts.arm() if name in _INTERRUPTIBLE else None
        try:
            status = self._fn[name](*args)
        except KeyboardInterrupt:
            # Python's handler raised as the call returned; say where Julia stopped, if it did
            message = self._message()
            if message.startswith("interrupted"):
                raise KeyboardInterrupt(message) from None
            raise
        finally:
            self._interrupts.disarm(armed)
        if status != 0:
            message = self._message()
            raise {2: DivergenceError, 3: KeyboardInterrupt, 4: JuliaValueError}.get(status, JuliaError)(message)

    def _message(self):
        return ctypes.string_at(self._fn["fa_error_message"]()).decode("utf-8", "replace")

    def describe(self, what):
        self.check_thread()
        return ctypes.string_at(self._fn["fa_describe"](what.encode())).decode()

    def names(self, kind):
        """The names Julia accepts for an activation, rule, loss or optimizer."""
        if kind not in self._names:
            self._names[kind] = tuple(n for n in self.describe(kind).split(",") if n)
        return self._names[kind]

    def live_handles(self):
        self.check_thread()
        self._free_pending()
        return self._fn["fa_live_handles"]()

    def free(self, handle):
        """Free a network handle now, or at the next call if we are not on Julia's thread."""
        if self.forked:
            return  # Julia's memory here is a copy that nothing else uses
        if self.julia_version < (1, 9) and threading.get_ident() != self.thread:
            self._pending_free.append(handle)
        else:
            self.call("fa_free", handle)

    def _free_pending(self):
        while self._pending_free:
            self._fn["fa_free"](self._pending_free.pop())


_SCALAR_KINDS = {c_int: "int32", c_int64: "int64", c_uint64: "uint64", c_double: "float64"}


def _abi_kind(ctype):
    """The ABI kind Julia's table names (int32, int64, uint64, float64, ptr) of a ctypes type."""
    return _SCALAR_KINDS.get(ctype, "ptr")


_engine = None
_start_lock = threading.Lock()


class _Laps:
    """Seconds spent in each step of the start, for runtime_info()["start_seconds"] (where a slow start goes)."""

    def __init__(self):
        self.last, self.steps = time.perf_counter(), {}

    def __call__(self, step):
        now = time.perf_counter()
        self.steps[step] = self.steps.get(step, 0.0) + now - self.last
        self.last = now

    def text(self):
        return " ".join(f"{k}={v:.3f}" for k, v in self.steps.items())


def engine():
    """The running engine, starting Julia on first use."""
    if _engine is None:
        start_julia()
    _engine.check_process()
    return _engine


def _after_fork_in_child():
    if _engine is not None:
        _engine.forked = True


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def start_julia(method=None, julia=None, threads=None):
    """Start Julia and load the FeedbackAlignment package (once per process).

    method: "embed" (load libjulia of a Julia found on PATH, or given by ``julia`` or the
    ``PYJLFA_JULIA`` environment variable) or "juliacall" (needs ``pip install pyjlfa[juliacall]``;
    on a machine with internet juliacall also installs Julia itself). Default: the
    ``PYJLFA_START`` environment variable, else "juliacall" if juliacall is already imported,
    else "embed".

    threads: how many threads pyjlfa computes with: Julia starts with that many (its count is fixed
    for the life of the process), and pyjlfa's products and element-wise kernels run on them, over a
    serial BLAS (see :func:`set_threads`). Default: the ``PYJLFA_THREADS`` environment variable, else Julia's own
    default (``JULIA_NUM_THREADS``, else 1) and the BLAS's. Returns :func:`runtime_info`.

    Parameters
    ----------
    method : {"embed", "juliacall"}, optional
        How to start Julia (see above).
    julia : str, optional
        The julia executable (embed).
    threads : int, optional
        Julia's thread count (see above).

    Returns
    -------
    dict
        :func:`runtime_info`.
    """
    global _engine
    with _start_lock:
        method = method or os.environ.get("PYJLFA_START") or ("juliacall" if "juliacall" in sys.modules else "embed")
        if method not in ("embed", "juliacall"):
            raise ValueError(f"method must be 'embed' or 'juliacall', got {method!r}")
        threads = _threads_wanted(threads)
        if _engine is not None:
            if method != _engine.started_by:
                raise RuntimeError(f"Julia is already running in this process (started by {_engine.started_by}); "
                                   "it can only be started once")
            _check_julia_threads(threads)
            return runtime_info()
        lap = _Laps()
        openblas = _choose_openblas_coretype()
        # Julia's start blocks SIGINT, SIGTERM, SIGQUIT, SIGABRT and SIGUSR1 in the calling thread (it expects its
        # own listener thread to take them): put back the mask Python had, so Ctrl-C reaches Python again.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, []) if hasattr(signal, "pthread_sigmask") else None
        try:
            address, details = (_start_juliacall(threads) if method == "juliacall" else
                                _start_embedded(julia, threads, lap))
        finally:
            if mask is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        details["openblas_coretype"] = openblas
        lap("julia")
        _engine = Engine(address, method, details)
        lap("entry_points")
        from ._blas import use_numpy_blas  # matrix products through NumPy's newer OpenBLAS, if it has one
        details["gemm_blas"] = use_numpy_blas(_engine)
        _engine.runtime = _describe_runtime(_engine)
        lap("blas")
        details["start_seconds"] = lap.text()
        if threads is not None:
            _check_julia_threads(threads)
            set_threads(threads)
    return runtime_info()


def runtime_info():
    """Which Julia computes, how it was started, and how its BLAS and threads are configured."""
    from ._blas import numpy_blas_threads
    e = engine()
    info = {"started_by": e.started_by, **e.details, **e.runtime}
    info["julia_version"] = e.runtime["julia_version"]
    if info.get("gemm") == "external":
        info["gemm_blas_threads"] = str(numpy_blas_threads())
    return info


def julia_command():
    """The command line (a list) of a julia process that runs the package as this process does: the same
    executable and, when this process uses a prebuilt system image, that image (the package is then loaded
    and compiled in 0.3 s instead of 5-30 s)."""
    info = runtime_info()
    command = [info.get("julia_executable") or _find_julia(None), "--startup-file=no"]
    if info.get("sysimage_kind") in ("prebuilt", "given"):
        command += ["-J", info["sysimage"]]
    return command


def _describe_runtime(e):
    return dict(line.split("=", 1) for line in e.describe("runtime").splitlines())


def set_threads(n):
    """Compute with ``n`` of Julia's threads from now on: the matrix products, cut into blocks, and the
    element-wise work (activations, bias, loss, optimiser updates) alike. The BLAS under them (NumPy's OpenBLAS,
    which pyjlfa uses when Python hosts Julia, and Julia's own) is made serial, so that one pool of threads runs at
    a time (two pools on the same cores slowed a step 4-14x). ``n`` may not exceed the thread count Julia started
    with (:func:`start_julia`'s ``threads``, ``PYJLFA_THREADS``). Trained parameters do not depend on ``n`` beyond
    the BLAS's rounding; the same ``n`` and seed give identical training. NumPy's OpenBLAS count is process-wide:
    NumPy's own matrix products in this process become serial too. While that BLAS has more threads (set by
    ``threadpoolctl``, say), pyjlfa keeps to one thread and lets the BLAS thread the products.

    Parameters
    ----------
    n : int
        Threads to compute with, from 1 to Julia's thread count.
    """
    from ._blas import set_numpy_blas_threads
    n = _threads_wanted(n, required=True)
    e = engine()
    started = int(e.runtime["julia_threads"])   # fixed when Julia started
    if n > started:
        raise ValueError(f"threads={n}, but Julia started with {started} thread(s) in this process; its thread count "
                         f"is fixed at start: use PYJLFA_THREADS={n} (or pyjlfa.start_julia(threads={n})) in a new "
                         "process")
    e.call("fa_set_threads", n)
    if e.details.get("gemm_blas", "").startswith("NumPy"):
        set_numpy_blas_threads(1)
    e.runtime = _describe_runtime(e)   # what runtime_info reports (from any thread)


def _threads_wanted(threads, required=False):
    """The thread count asked for (the argument, else PYJLFA_THREADS unless required), checked; None if none."""
    name = "threads"
    if threads is None and not required:
        text = os.environ.get("PYJLFA_THREADS", "").strip()
        if not text:
            return None
        name = "PYJLFA_THREADS"
        try:
            threads = int(text)
        except ValueError:
            raise ValueError(f"PYJLFA_THREADS must be a positive integer, got {text!r}") from None
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1:
        raise ValueError(f"{name} must be a positive integer, got {threads!r}")
    return int(threads)


def _check_julia_threads(threads):
    """A clear error when Julia is running with another thread count than the one asked for."""
    if threads is None:
        return
    running = int(_engine.runtime["julia_threads"])
    if running != threads:
        raise RuntimeError(f"Julia is already running in this process with {running} thread(s), not the {threads} "
                           "asked for (threads= or PYJLFA_THREADS); Julia's thread count is fixed when it starts. Set "
                           "PYJLFA_THREADS (or call pyjlfa.start_julia(threads=...)) before pyjlfa's first use, in a "
                           f"new process; pyjlfa.set_threads(n) can still lower the threads used to n <= {running}.")


def _choose_openblas_coretype():
    """Pick OpenBLAS's kernel from the CPU flags unless the user chose one.

    Julia 1.5's OpenBLAS 0.3.9 does not recognise every recent CPU (this project's Xeon) and falls back to a slow
    generic kernel; the variable must be set before libjulia (and so OpenBLAS) loads.
    """
    if os.environ.get("OPENBLAS_CORETYPE"):
        return f"{os.environ['OPENBLAS_CORETYPE']} (set by the user)"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return "OpenBLAS's own choice"
    try:
        with open("/proc/cpuinfo") as cpuinfo:   # closed at once (an open file left to the GC is a ResourceWarning)
            flags = next((line.split(":", 1)[1].split() for line in cpuinfo if line.startswith("flags")), [])
    except OSError:
        flags = []
    core = "SkylakeX" if "avx512f" in flags else "Haswell" if "avx2" in flags else None
    if core is None:
        return "OpenBLAS's own choice"
    os.environ["OPENBLAS_CORETYPE"] = core
    return f"{core} (chosen by pyjlfa from the CPU flags)"


_JULIA_LOAD = """
try
    pushfirst!(LOAD_PATH, raw"{path}")
    @eval Main import FeedbackAlignment
    string(Main.FeedbackAlignment.CABI.lookup_address())
catch e
    "ERROR: " * sprint(showerror, e)
end
"""


def _find_julia(julia):
    exe = julia or os.environ.get("PYJLFA_JULIA") or shutil.which("julia")
    if not exe or not shutil.which(exe):
        raise FileNotFoundError(
            "no Julia found: put `julia` on PATH, set PYJLFA_JULIA to a julia executable, or "
            "`pip install pyjlfa[juliacall]` and set PYJLFA_START=juliacall (juliacall downloads Julia "
            "where the network allows). On Debian: apt-get install julia (bookworm has none; "
            "scripts/setup.sh installs bullseye's 1.5.3).")
    return shutil.which(exe)


def _unwind_with_libgcc():
    """Put the system's C++ unwinder (libgcc_s) in the global symbol scope ahead of libjulia's.

    libjulia, loaded RTLD_GLOBAL, brings a libunwind.so.8 that also defines _Unwind_Resume and
    friends; a C++ extension loaded afterwards (matplotlib's ft2font, any pybind11 module) whose
    exception then unwinds through it aborts the process. Loaded globally first, libgcc_s keeps
    those symbols; Julia itself only calls libunwind's own unw_* functions.
    """
    if platform.system() == "Linux":
        try:
            ctypes.CDLL("libgcc_s.so.1", mode=ctypes.RTLD_GLOBAL)
        except OSError:
            pass


# A prebuilt system image (julia/FeedbackAlignment/precompile/build_image.jl, run by
# scripts/setup.sh) holds the package with its common paths compiled, so a process trains at once
# instead of compiling for seconds. It is looked up by a key of everything its code depends on;
# an image built from other sources, another checkout, Julia or CPU has another name and is never used.

def _cache_dir():
    if os.environ.get("PYJLFA_CACHE"):
        return Path(os.environ["PYJLFA_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pyjlfa"


def _source_files(package):
    """The files an image compiles in (the same rule as build_image.jl's `source_files`)."""
    files = ["Project.toml", "precompile/workload.jl"]
    files += [p.relative_to(package).as_posix() for p in (package / "src").rglob("*.jl")]
    return sorted(files)


def _source_hash(package):
    import hashlib
    lines = "".join(f"{f} {hashlib.sha256((package / f).read_bytes()).hexdigest()}\n" for f in _source_files(package))
    return hashlib.sha256(lines.encode()).hexdigest()


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((" ".join(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), "")
    except OSError:
        return ""


def _image_name(version, cpu, base_image, package):
    """File name of the image for this Julia, CPU, default image and package sources (build_image.jl's)."""
    import hashlib
    material = "".join(f"{k}={v}\n" for k, v in (
        ("julia", version), ("cpu", cpu), ("cpu_flags", _cpu_flags()), ("base", base_image),
        ("package", package), ("sources", _source_hash(package))))
    return f"FeedbackAlignment-julia{version}-{cpu}-{hashlib.sha256(material.encode()).hexdigest()[:16]}.so"


def _choose_image(version, cpu, base_image):
    """(image path, kind, reason): the prebuilt image when one matches, else Julia's default."""
    choice = os.environ.get("PYJLFA_SYSIMAGE", "")
    if choice.lower() in ("off", "0", "no", "none", "default"):
        return base_image, "default", f"PYJLFA_SYSIMAGE={choice}"
    if choice:
        if not Path(choice).is_file():
            raise FileNotFoundError(f"PYJLFA_SYSIMAGE names {choice!r}, which is not a file")
        return choice, "given", "named by PYJLFA_SYSIMAGE (not checked against the sources)"
    try:
        package = julia_package_path()
        image = _cache_dir() / _image_name(version, cpu, base_image, package)
    except OSError as e:
        return base_image, "default", f"cannot compute the image key ({e})"
    if image.is_file():
        return str(image), "prebuilt", f"prebuilt for these sources: {image.name}"
    others = sorted(p.name for p in _cache_dir().glob(f"FeedbackAlignment-julia{version}-{cpu}-*.so"))
    why = (f"the cached images ({', '.join(others)}) were built from other sources, another checkout or CPU (stale)"
           if others else f"no prebuilt image in {_cache_dir()}")
    if _image_build_running():
        return base_image, "default", f"{why}; one is being built now (log: {_cache_dir() / 'build.log'})"
    return base_image, "default", (f"{why}; build one with `julia --startup-file=no "
                                   f"{package / 'precompile' / 'build_image.jl'}` (4-9 minutes)")


def _image_build_running():
    """Whether scripts/build_image.sh holds its lock (a build of some image is under way)."""
    try:
        import fcntl
        with open(_cache_dir() / "build.lock", "rb") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(lock, fcntl.LOCK_UN)
    except (OSError, ImportError):
        pass
    return False


def _say_no_image(reason):
    """Once per process tree (children inherit the variable): starting without the image is slow, and why."""
    if os.environ.get("PYJLFA_IMAGE_NOTICE") == "shown":
        return
    os.environ["PYJLFA_IMAGE_NOTICE"] = "shown"
    print(f"pyjlfa: starting Julia without a prebuilt system image, so the package loads and each new kind of "
          f"network compiles before it trains (5-40 s more; PYJLFA_SYSIMAGE=off silences this): {reason}",
          file=sys.stderr, flush=True)


def _julia_paths(exe):
    """(bindir, default image, libjulia, version, CPU name) of a julia executable.

    Asking Julia costs a Julia start (0.15 s on a quiet machine, more on a busy one), so the
    answer is kept in the cache, keyed by the executable's path, size and modification time.
    """
    import hashlib
    real = os.path.realpath(exe)
    stat = os.stat(real)
    key = hashlib.sha256(f"{real}\n{stat.st_size}\n{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = _cache_dir() / f"julia-paths-{key}.txt"
    try:
        answer = cached.read_text().splitlines()
        if len(answer) == 5 and Path(answer[1]).is_file() and Path(answer[2]).is_file():
            return answer
    except OSError:
        pass
    probe = ('using Libdl; print(Sys.BINDIR, "\\n", unsafe_string(Base.JLOptions().image_file), "\\n", '
             'first(filter(p -> startswith(basename(p), "libjulia."), Libdl.dllist())), "\\n", VERSION, "\\n", '
             'Sys.CPU_NAME)')
    result = subprocess.run([exe, "--startup-file=no", "--history-file=no", "-e", probe],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise JuliaError(f"{exe} could not report its library paths: {result.stderr.strip()}")
    answer = result.stdout.splitlines()[-5:]
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text("\n".join(answer) + "\n")
        tmp.replace(cached)
    except OSError:
        pass  # a read-only home only costs the probe next time
    return answer


def _start_embedded(julia, threads=None, lap=lambda step: None):
    exe = _find_julia(julia)
    bindir, base_image, libpath, version, cpu = _julia_paths(exe)
    lap("find_julia")
    sysimage, image_kind, image_reason = _choose_image(version, cpu, base_image)
    if image_kind == "default" and not image_reason.startswith("PYJLFA_SYSIMAGE="):
        _say_no_image(image_reason)
    lap("choose_image")
    _unwind_with_libgcc()
    lib = ctypes.CDLL(libpath, mode=ctypes.RTLD_GLOBAL)
    lap("dlopen")

    # Options as on a julia command line, program name first (jl_parse_opts skips argv[0]: without it
    # --handle-signals=no was dropped and Julia replaced Python's SIGINT handler); signals stay with Python.
    # Except with several Julia threads: Julia stops them for garbage collection through a memory page that
    # faults (SIGSEGV) when protected, which without Julia's handler kills the process (about every other run
    # of tests/test_threads.py did). Then Julia handles signals and Python's SIGINT handler is put back after.
    several = threads is not None and threads > 1 or threads is None and _env_julia_threads() > 1
    options = [b"julia", b"--handle-signals=yes" if several else b"--handle-signals=no", b"--startup-file=no",
               b"--history-file=no"]
    if threads is not None:
        options.append(f"--threads={threads}".encode())   # else JULIA_NUM_THREADS, else 1
    python_sigint = signal.getsignal(signal.SIGINT)
    argc = c_int(len(options))
    argv = ctypes.cast((c_char_p * len(options))(*options), POINTER(c_char_p))
    lib.jl_parse_opts(ctypes.byref(argc), ctypes.byref(argv))
    for symbol in ("jl_init_with_image__threading", "jl_init_with_image", "jl_init_with_image_file"):
        if hasattr(lib, symbol):
            init = getattr(lib, symbol)
            break
    else:
        raise JuliaError(f"{libpath} has no jl_init_with_image entry point")
    init.argtypes = [c_char_p, c_char_p]
    init(bindir.encode(), sysimage.encode())
    lap("jl_init")
    if several and python_sigint is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, python_sigint)   # Ctrl-C stays with Python (and interrupt.jl's watch)
    atexit.register(_julia_atexit, lib.jl_atexit_hook, os.getpid())

    lib.jl_eval_string.argtypes = [c_char_p]
    lib.jl_eval_string.restype = c_void_p
    lib.jl_string_ptr.argtypes = [c_void_p]
    lib.jl_string_ptr.restype = c_char_p
    # Whether the package came with the image (rather than being loaded from its source files).
    value = lib.jl_eval_string(b'string(any(k -> k.name == "FeedbackAlignment", keys(Base.loaded_modules)))')
    in_image = bool(value) and lib.jl_string_ptr(value) == b"true"
    lap("jl_init")
    value = lib.jl_eval_string(_JULIA_LOAD.format(path=str(julia_package_path())).encode())
    lap("load_package")
    answer = lib.jl_string_ptr(value).decode() if value else "ERROR: Julia returned nothing"
    if answer.startswith("ERROR: "):
        raise JuliaError(f"loading the Julia package FeedbackAlignment failed: {answer[7:]}")
    return int(answer), {"julia_executable": exe, "libjulia": libpath, "sysimage": sysimage,
                         "sysimage_kind": image_kind, "sysimage_reason": image_reason,
                         "package_in_image": in_image}


def _env_julia_threads():
    """The thread count JULIA_NUM_THREADS asks for (Julia's default, 1, when unset; "auto": the cores)."""
    text = os.environ.get("JULIA_NUM_THREADS", "").strip()
    if text == "auto":
        return os.cpu_count() or 1
    try:
        return int(text)
    except ValueError:
        return 1


def _julia_atexit(hook, pid):
    if os.getpid() == pid:  # never in a forked child: Julia's runtime is not there
        hook(0)


def _start_juliacall(threads=None):
    if threads is not None and "juliacall" not in sys.modules:
        os.environ["PYTHON_JULIACALL_THREADS"] = str(threads)   # read when juliacall starts Julia
        if threads > 1:   # several threads need Julia's signal handlers (see _start_embedded)
            os.environ.setdefault("PYTHON_JULIACALL_HANDLE_SIGNALS", "yes")
    try:
        import juliacall
    except ImportError as e:
        raise ImportError("method='juliacall' needs juliacall: pip install pyjlfa[juliacall]") from e
    answer = str(juliacall.Main.seval(_JULIA_LOAD.format(path=str(julia_package_path()))))
    if answer.startswith("ERROR: "):
        raise JuliaError(f"loading the Julia package FeedbackAlignment failed: {answer[7:]}")
    return int(answer), {"juliacall_version": getattr(juliacall, "__version__", "unknown")}
