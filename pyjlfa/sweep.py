"""Sweeps: many training runs on a Dask cluster, resumable, summarised.

A sweep spec (TOML, or the same structure as a dict) names the data, the settings every run
shares, and the grid (plus optional random samples) over any Network/fit/optimizer argument:

    [data]
    name = "fashion_mnist"        # or "npz" (path = "file.npz") or "synthetic"
    train_size = 10000            # first N training samples (optional)

    [fixed]
    hidden = [256, 256]           # hidden widths; input and output widths come from the data
    epochs = 3

    [grid]
    rule = ["bp", "fa", "dfa"]
    lr = [0.01, 0.05]
    seed = [0, 1, 2]

    [random]                      # optional: `samples` draws, each crossed with the grid
    samples = 4
    seed = 0
    momentum = { uniform = [0.0, 0.9] }

Networks other than dense ones: ``layers``, a list of :mod:`pyjlfa.layers` calls in Python syntax
(read, never run) or a named architecture ("lenet5", "resnet20", ...), with image data
(``images = true`` for Fashion-MNIST, standardised and zero-padded by ``pad`` pixels; or an .npz
file with (n, C, H, W) arrays). A grid over architectures is a grid over ``layers``::

    [data]
    name = "fashion_mnist"
    images = true                 # (n, 1, 32, 32): pad = 2 (default), normalize = true (default)

    [grid]
    layers = ["lenet5", "[Conv2d(1, 8, 5), ReLU(), MaxPool2d(4), Flatten(), Linear(8 * 7 * 7, 10)]"]
    rule = ["bp", "fa"]

``sweep(spec, out=DIR)`` validates every run first, then runs them on Dask distributed (a
LocalCluster of spawned worker processes by default, or the ``client`` you pass), writes each
result atomically to ``DIR/runs/<id>.json`` as it arrives (a rerun skips finished runs), and
ends with ``DIR/summary.csv`` (mean and std over seeds per configuration) and figures.

Julia runs only in the workers: each worker embeds its own Julia, loads the data once and keeps
it; a task carries only its configuration. The client process never starts Julia.
"""

import ast
import csv
import hashlib
import itertools
import json
import math
import textwrap
import os
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from . import _schema
from . import init as _init
from . import rules as _rules
from .experiments import _finite_or_none
from .optimizers import SGD, Adam, AdamW

__all__ = ["sweep", "load_spec", "plan", "run_config", "load_data", "summarise", "PARAMETERS", "SpecError"]


class SpecError(ValueError):
    """A sweep spec that cannot run; the message names the offending entry."""


# -- values of spec keys ---------------------------------------------------------------------------
def _number(value, where):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SpecError(f"{where}: expected a finite number, got {value!r}")
    return value


def _integer(value, where):
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where}: expected an integer, got {value!r}")
    return value


def _positive_integer(value, where):
    if _integer(value, where) < 1:
        raise SpecError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _seed(value, where):
    if _integer(value, where) < 0:
        raise SpecError(f"{where}: expected a seed >= 0, got {value!r}")
    return value


def _text(value, where):
    if not isinstance(value, str):
        raise SpecError(f"{where}: expected a string, got {value!r}")
    return value


def _flag(value, where):
    if not isinstance(value, bool):
        raise SpecError(f"{where}: expected true or false, got {value!r}")
    return value


def _widths(value, where):
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
        raise SpecError(f"{where}: expected a list of positive integer widths such as [256, 256], got {value!r}")
    return value


def _layers(value, where):
    """A named architecture (resolved against the data on the worker) or the text of a layer list."""
    from .experiments import architecture
    from .layers import from_text
    _text(value, where)
    try:
        if value.lstrip().startswith("["):
            return from_text(value, where)
        architecture(value)   # checks the name
        return value
    except (TypeError, ValueError) as e:
        raise SpecError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None


def _numbers(value, where):
    if isinstance(value, list):
        return [_number(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return _number(value, where)


_INITIALISERS = {cls._name: cls for cls in (
    _init.GlorotUniform, _init.GlorotNormal, _init.HeUniform, _init.HeNormal, _init.LeCunUniform,
    _init.LeCunNormal, _init.Orthogonal, _init.Uniform, _init.Normal, _init.Sparse, _init.SignConcordant,
    _init.Zeros)}
# The Python classes of the rules with parameters, by the engine's (case-insensitive) names.
_RULES = {cls.name: cls for cls in (_rules.USF, _rules.WeightMirror, _rules.DFA, _rules.DRTP, _rules.SDFA)}


def _call_text(text, names, where, kind, fold=lambda name: name):
    """``name`` or ``name(args...)`` (Python call syntax, literals and nested calls only) as a value
    built from ``names`` (looked up after ``fold``); never evaluated."""
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        raise SpecError(f"{where}: cannot read {text!r}; expected a {kind} such as 'name' or 'name(0.1)'") from None

    def build(node):
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
            return -node.operand.value
        if isinstance(node, ast.Name) and fold(node.id) in names:
            return names[fold(node.id)]()
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and fold(node.func.id) in names:
            return names[fold(node.func.id)](*map(build, node.args), **{k.arg: build(k.value) for k in node.keywords})
        raise SpecError(f"{where}: {text!r} is not a known {kind}; known: {', '.join(sorted(names))}")

    if isinstance(tree, ast.Name):
        return text  # a plain name goes to Network as it is (the engine checks it)
    try:
        return build(tree)
    except SpecError:
        raise
    except (TypeError, ValueError) as e:
        raise SpecError(f"{where}: {text!r}: {e}") from None


def _initialiser(value, where):
    if isinstance(value, list):
        return [None if v == "none" else _initialiser(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return _call_text(_text(value, where), _INITIALISERS, where, "initialiser")


def _rule(value, where):
    return _call_text(_text(value, where), _RULES, where, "rule", fold=_schema.rule_name)


_OPTIMIZERS = {cls._name: cls for cls in (SGD, Adam, AdamW)}   # by the engine's names


def _optimizer_name(value, where):
    if value not in _OPTIMIZERS:
        raise SpecError(f"{where}: expected one of {', '.join(map(repr, _OPTIMIZERS))}, got {value!r}")
    return value


# THE table: spec key -> (where it goes, argument name, how to read its TOML value).
# A new Network/fit/optimizer argument is one line here.
PARAMETERS = {
    "hidden": ("network", "sizes", _widths),            # input and output widths come from the data
    "layers": ("network", "layers", _layers),           # "lenet5", "resnet20", or "[Conv2d(1, 6, 5), ReLU(), ...]"
    "activation": ("network", "activation", _text),
    "rule": ("network", "rule", _rule),                 # "fa", or with parameters: "wm(steps=2)"
    "loss": ("network", "loss", _text),                 # mse trains on one-hot targets
    "seed": ("network", "seed", _seed),
    "feedback_seed": ("network", "feedback_seed", _seed),
    "dtype": ("network", "dtype", _text),
    "init": ("network", "init", _initialiser),          # "he_normal", "normal(0.05)", ...
    "feedback": ("network", "feedback", _initialiser),  # "sparse(0.1)", or one per layer
    "dropout": ("network", "dropout", _numbers),
    "epochs": ("fit", "epochs", _positive_integer),
    "batch_size": ("fit", "batch_size", _positive_integer),
    "shuffle": ("fit", "shuffle", _flag),
    "track_alignment": ("fit", "track_alignment", _positive_integer),
    "optimizer": ("optimizer", None, _optimizer_name),  # "sgd" (default), "adam", "adamw"
    "lr": ("optimizer", "lr", _number),
    "momentum": ("optimizer", "momentum", _number),
    "nesterov": ("optimizer", "nesterov", _flag),
    "weight_decay": ("optimizer", "weight_decay", _number),
    "decoupled_weight_decay": ("optimizer", "decoupled_weight_decay", _number),
    "beta1": ("optimizer", "beta1", _number),
    "beta2": ("optimizer", "beta2", _number),
    "eps": ("optimizer", "eps", _number),
    "layer_lr": ("optimizer", "layer_lr", _numbers),
    "save_model": ("run", "save_model", _flag),         # also write DIR/models/<id>.safetensors
}

DEFAULTS = {"hidden": [256, 256], "epochs": 10, "batch_size": 64, "lr": 0.05}
SEED_KEYS = ("seed", "feedback_seed")  # the summary averages over these


def arguments(config):
    """The keyword arguments of Network, fit and the optimizer (and run options) for one configuration."""
    out = {"network": {}, "fit": {}, "optimizer": {}, "run": {}}
    for key, value in config.items():
        target, name, read = PARAMETERS[key]
        if name is not None:
            out[target][name] = read(value, key)
    kind = _OPTIMIZERS[config.get("optimizer", "sgd")]
    try:
        out["optimizer"] = kind(**out["optimizer"])
    except TypeError:
        unknown = sorted(set(out["optimizer"]) - set(kind.__dataclass_fields__))
        raise SpecError(f"{', '.join(unknown)}: not an option of optimizer {config.get('optimizer', 'sgd')!r}") from None
    except ValueError as e:
        raise SpecError(str(e)) from None
    return out


# -- data -------------------------------------------------------------------------------------------
_DATA_KEYS = {"fashion_mnist": {"path", "train_size", "test_size", "images", "pad", "normalize"},
              "npz": {"path", "train_size", "test_size"},
              "synthetic": {"train_size", "test_size", "features", "classes", "seed"}}


def _check_data(data, base_dir):
    if not isinstance(data, dict) or "name" not in data:
        raise SpecError(f"[data]: expected a table with name = one of {', '.join(map(repr, _DATA_KEYS))}")
    name = data["name"]
    if name not in _DATA_KEYS:
        raise SpecError(f"data.name: expected one of {', '.join(map(repr, _DATA_KEYS))}, got {name!r}")
    data = dict(data)
    for key, value in data.items():
        if key == "name":
            continue
        if key not in _DATA_KEYS[name]:
            raise SpecError(f"data.{key}: unknown key for data {name!r}; expected some of {', '.join(sorted(_DATA_KEYS[name]))}")
        if key == "path":
            data[key] = os.path.abspath(os.path.join(base_dir, _text(value, "data.path")))
        elif key in ("images", "normalize"):
            _flag(value, f"data.{key}")
        elif _integer(value, f"data.{key}") < (0 if key in ("seed", "pad") else 1):
            raise SpecError(f"data.{key}: expected a{' non-negative' if key == 'pad' else ' positive'} integer, "
                            f"got {value!r}")
    if not data.get("images") and ({"pad", "normalize"} & set(data)):
        raise SpecError(f"data.{sorted({'pad', 'normalize'} & set(data))[0]}: applies to images; add images = true")
    if name == "npz" and "path" not in data:
        raise SpecError("data.path: data 'npz' needs path = 'file.npz' (with X_train, y_train, optionally X_test, y_test)")
    return data


def _synthetic(train_size=2000, test_size=500, features=20, classes=4, seed=0):
    """Gaussian classes around random centres: a task a small network learns in a few epochs."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, features))
    y = rng.integers(0, classes, size=train_size + test_size)
    X = centres[y] + rng.normal(scale=1.5, size=(len(y), features))
    return X[:train_size], y[:train_size], X[train_size:], y[train_size:]


_LOADED = {}  # per worker process: (data spec, dtype) -> arrays, loaded once and kept


def load_data(data, dtype="float32"):
    """(X_train, y_train, X_test, y_test) for a data spec (X_test/y_test None when absent); cached.

    Parameters
    ----------
    data : dict
        The data spec.
    dtype : {"float32", "float64"}
        The arrays' type.
    """
    key = json.dumps([data, dtype], sort_keys=True)
    if key not in _LOADED:
        from . import datasets
        name, params = data["name"], {k: v for k, v in data.items() if k != "name"}
        train_size, test_size = params.pop("train_size", None), params.pop("test_size", None)
        if name == "fashion_mnist" and params.get("images"):
            from .experiments import fashion_mnist_images
            Xtr, ytr, Xte, yte = fashion_mnist_images(path=params.get("path"), dtype=dtype, pad=params.get("pad", 2),
                                                      normalize=params.get("normalize", True))
        elif name == "fashion_mnist":
            Xtr, ytr, Xte, yte = datasets.fashion_mnist(path=params.get("path"), dtype=dtype)
        elif name == "npz":
            with np.load(params["path"]) as f:
                Xtr, ytr = f["X_train"], f["y_train"]
                Xte, yte = (f["X_test"], f["y_test"]) if "X_test" in f.files else (None, None)
        else:
            Xtr, ytr, Xte, yte = _synthetic(**params, **{k: v for k, v in
                                                       (("train_size", train_size), ("test_size", test_size)) if v})
        Xtr, ytr = Xtr[:train_size], ytr[:train_size]
        if Xte is not None:
            Xte, yte = Xte[:test_size], yte[:test_size]
        as_x = lambda X: None if X is None else np.ascontiguousarray(X, dtype=dtype)  # noqa: E731
        as_y = lambda y: None if y is None else np.ascontiguousarray(y, dtype=np.int64)  # noqa: E731
        _LOADED[key] = (as_x(Xtr), as_y(ytr), as_x(Xte), as_y(yte))
    return _LOADED[key]


# -- the spec and its runs --------------------------------------------------------------------------
def load_spec(spec):
    """A spec from a TOML file path or a dict; returns (spec dict, folder relative paths start from).

    Parameters
    ----------
    spec : str, os.PathLike or dict
        A TOML file or the spec itself.
    """
    if isinstance(spec, dict):
        return spec, os.getcwd()
    path = os.fspath(spec)
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f), os.path.dirname(os.path.abspath(path))
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: not valid TOML: {e}") from None


def _draw(rng, key, how):
    where = f"random.{key}"
    if not isinstance(how, dict) or len(how) != 1:
        raise SpecError(f"{where}: expected one of {{uniform = [lo, hi]}}, {{log_uniform = [lo, hi]}}, "
                        f"{{integers = [lo, hi]}}, {{choice = [...]}}; got {how!r}")
    (kind, arg), = how.items()
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise SpecError(f"{where}.choice: expected a non-empty list, got {arg!r}")
        return arg[int(rng.integers(len(arg)))]
    if kind not in ("uniform", "log_uniform", "integers"):
        raise SpecError(f"{where}: unknown distribution {kind!r}; expected uniform, log_uniform, integers or choice")
    if not isinstance(arg, list) or len(arg) != 2 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in arg) or not arg[0] < arg[1]:
        raise SpecError(f"{where}.{kind}: expected [low, high] with low < high, got {arg!r}")
    lo, hi = arg
    if kind == "integers":
        return int(rng.integers(lo, hi + 1))
    if kind == "log_uniform":
        if lo <= 0:
            raise SpecError(f"{where}.log_uniform: bounds must be > 0, got {arg!r}")
        return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
    return float(rng.uniform(lo, hi))


def run_id(data, config):
    """A run's name: a hash of its data and configuration, so the same run keeps its file."""
    text = json.dumps({"data": data, "config": config}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan(spec):
    """Check a spec and list its runs: (data spec, [(run id, configuration)], varying keys).

    Every configuration is checked here (keys, types, optimizer values, initialiser and rule
    text) before anything runs; the engine's own checks (names, rule/architecture combinations)
    follow on a worker, also before any run, in :func:`sweep`.

    Parameters
    ----------
    spec : str, os.PathLike or dict
        A TOML file or the spec itself.
    """
    spec, base_dir = load_spec(spec)
    unknown = sorted(set(spec) - {"data", "fixed", "grid", "random"})
    if unknown:
        raise SpecError(f"unknown section [{unknown[0]}]; a spec has [data], [fixed], [grid] and optionally [random]")
    data = _check_data(spec.get("data"), base_dir)
    fixed, grid = dict(spec.get("fixed", {})), dict(spec.get("grid", {}))
    random = dict(spec.get("random", {}))
    samples, random_seed = random.pop("samples", 0 if not random else None), random.pop("seed", 0)
    if random and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise SpecError(f"random.samples: expected a positive number of draws, got {samples!r}")
    _integer(random_seed, "random.seed")
    for section, table in (("fixed", fixed), ("grid", grid), ("random", random)):
        for key in table:
            if key not in PARAMETERS:
                raise SpecError(f"{section}.{key}: unknown key; known keys: {', '.join(PARAMETERS)}")
    for key in grid:
        if not isinstance(grid[key], list):
            raise SpecError(f"grid.{key}: expected a list of values to try, got {grid[key]!r}")
        if not grid[key]:
            raise SpecError(f"grid.{key}: empty list: the grid would have no runs")
    for a, b in (("fixed", grid), ("fixed", random), ("grid", random)):
        both = sorted(set({"fixed": fixed, "grid": grid}[a]) & set(b))
        if both:
            raise SpecError(f"{both[0]}: set in both [{a}] and [{'grid' if b is grid else 'random'}]; give it in one place")
    if not grid and not random:
        raise SpecError("[grid] is empty: give at least one key with a list of values to sweep")

    rng = np.random.default_rng(random_seed)
    draws = [{k: _draw(rng, k, how) for k, how in random.items()} for _ in range(samples)] or [{}]
    given = set(fixed) | set(grid) | set(random)
    if "layers" in given:   # a chain instead of the dense network
        both = sorted(given & {"hidden", "activation"})
        if both:
            raise SpecError(f"{both[0]}: describes the dense network, but layers gives the network; give one "
                            "(activations are layers in a layer list: ReLU(), Tanh())")
    base = dict({k: v for k, v in DEFAULTS.items() if not (k == "hidden" and "layers" in given)}, **fixed)
    runs, seen = [], set()
    for values in itertools.product(*grid.values()):
        for draw in draws:
            config = dict(base, **dict(zip(grid, values)), **draw)
            if isinstance(config.get("rule"), str) and config["rule"].isidentifier():   # "FA" is "fa"
                config["rule"] = _schema.rule_name(config["rule"])
            where = ", ".join(f"{k}={config[k]!r}" for k in list(grid) + list(random))
            try:
                arguments(config)
            except SpecError as e:
                raise SpecError(f"{e} (in the run {where})") from None
            rid = run_id(data, config)
            if rid not in seen:
                seen.add(rid)
                runs.append((rid, config))
    varying = list(grid) + list(random)
    return data, runs, varying


# -- one run (on a worker) --------------------------------------------------------------------------
def _targets(y, loss, n_outputs):
    return np.eye(n_outputs)[y] if loss == "mse" and y is not None else y


def _build(args, Xtr, ytr):
    from .network import Network
    net_args = dict(args["network"])
    n_outputs = int(max(ytr.max(), 0)) + 1
    if "layers" in net_args:   # a chain: one sample's shape comes from the data
        if isinstance(net_args["layers"], str):
            from .experiments import architecture
            if Xtr.ndim != 4:
                raise ValueError(f"layers {net_args['layers']!r} needs images (n, C, H, W); the data has shape "
                                 f"{Xtr.shape} (Fashion-MNIST: images = true)")
            net_args["layers"] = architecture(net_args["layers"], in_channels=Xtr.shape[1], classes=n_outputs)
        net_args["input_shape"] = Xtr.shape[1:]
    else:
        if Xtr.ndim != 2:
            raise ValueError(f"the data are images of shape {Xtr.shape[1:]}: give the network as layers "
                             "(a layer list or 'lenet5'), hidden describes a dense one")
        net_args["sizes"] = [Xtr.shape[1], *net_args["sizes"], n_outputs]
    net = Network(**net_args)
    net._optimizer(args["optimizer"])  # the optimizer's per-layer options against this network
    return net, n_outputs


def _alignment_summary(alignment):
    """Per alignment field, per layer: the mean over the last epoch's records (None where undefined)."""
    if not alignment or not alignment.get("step"):
        return None
    last = alignment["epoch"][-1]
    rows = [i for i, e in enumerate(alignment["epoch"]) if e == last]
    out = {}
    for field in ("update_angle", "delta_angle", "feedback_angle"):
        if field in alignment:
            per_layer = np.array([[np.nan if v is None else v for v in alignment[field][i]] for i in rows], dtype=float)
            out[field] = [float(np.nanmean(c)) if np.isfinite(c).any() else None for c in per_layer.T]
    return out


def run_config(data, config, model_path=None):
    """Train one configuration in this process; the result record (raises nothing the run raises).

    Parameters
    ----------
    data : dict
        The data spec (from :func:`plan`).
    config : dict
        One configuration (from :func:`plan`).
    model_path : str, optional
        Also save the trained model there.
    """
    record = {"status": "ok", "config": config, "data": data, "host": os.uname().nodename, "pid": os.getpid(),
              "started": time.time()}
    try:
        args = arguments(config)
        Xtr, ytr, Xte, yte = load_data(data, args["network"].get("dtype", "float32"))
        net, n_outputs = _build(args, Xtr, ytr)
        loss = args["network"].get("loss", "cross_entropy")
        validation = None if Xte is None else (Xte, _targets(yte, loss, n_outputs))
        history = net.fit(Xtr, _targets(ytr, loss, n_outputs), optimizer=args["optimizer"],
                          validation_data=validation, **args["fit"])
        record["history"] = history
        record["final"] = {k: v[-1] for k, v in history.items() if k not in ("alignment", "seconds")}
        record["best"] = {k: (max(v) if "accuracy" in k else min(v))
                          for k, v in history.items() if k not in ("alignment", "seconds")}
        record["seconds"] = float(sum(history["seconds"]))
        record["alignment_summary"] = _alignment_summary(history.get("alignment"))
        if model_path:
            net.save(model_path)
    except Exception as e:  # a failed run is a result too; the sweep goes on
        record.update(status="error", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
    record["finished"] = time.time()
    return _finite_or_none(record)


_julia_thread = None
_julia_thread_lock = threading.Lock()


def _on_julia_thread(fn, *args):
    """Run fn on this process's one Julia thread (Julia < 1.9 may only be entered from one thread)."""
    global _julia_thread
    with _julia_thread_lock:
        if _julia_thread is None:
            _julia_thread = ThreadPoolExecutor(1, thread_name_prefix="pyjlfa-julia")
    return _julia_thread.submit(fn, *args).result()


def _worker_address():
    try:
        from distributed import get_worker
        return get_worker().address
    except (ImportError, ValueError):
        return None


def _run_task(data, config):
    """A Dask task: one run; the model file (if asked for) comes back as bytes for the client to write."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        model = os.path.join(tmp, "model.safetensors") if config.get("save_model") else None
        record = _on_julia_thread(run_config, data, config, model)
        if model and record["status"] == "ok":
            with open(model, "rb") as f:
                record["model_bytes"] = f.read()
    record["worker"] = _worker_address()
    return record


def _check_task(data, configs):
    """A Dask task run before any run: the engine's checks of every distinct network; [(index, error)]."""
    def check():
        errors, done = [], {}
        Xtr, ytr = None, None
        for i, config in enumerate(configs):
            args = arguments(config)
            key = json.dumps({k: v for k, v in config.items() if PARAMETERS[k][0] == "network" and k not in SEED_KEYS}
                             | {"layer_lr": config.get("layer_lr")}, sort_keys=True, default=str)
            if key not in done:
                try:
                    if Xtr is None:
                        Xtr, ytr = load_data(data, "float32")[:2]
                    net, _ = _build(args, Xtr, ytr)
                    net.close()
                    done[key] = None
                except Exception as e:
                    done[key] = f"{type(e).__name__}: {e}"
            if done[key]:
                errors.append((i, done[key]))
        return errors
    return _on_julia_thread(check)


# -- the client -------------------------------------------------------------------------------------
def _write_atomic(path, data):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _label(config, varying):
    return ", ".join(f"{k}={config[k]}" for k in varying)


class _Progress:
    """runs done / total, failures, ETA: a bar on a terminal, a line per run otherwise."""

    def __init__(self, total, skipped, stream, quiet=False):
        self.total, self.skipped, self.done, self.failed = total, skipped, 0, 0
        self.stream, self.quiet, self.start = stream, quiet, time.perf_counter()

    def update(self, label, ok):
        self.done += 1
        self.failed += not ok
        if self.quiet:
            return
        todo = self.total - self.skipped
        elapsed = time.perf_counter() - self.start
        eta = elapsed / self.done * (todo - self.done)
        width, filled = 30, int(30 * (self.skipped + self.done) / self.total)
        bar = "=" * filled + " " * (width - filled)
        line = (f"[{bar}] {self.skipped + self.done}/{self.total} runs, {self.failed} failed, "
                f"elapsed {_duration(elapsed)}, ETA {_duration(eta)}")
        if self.stream.isatty():
            self.stream.write("\r" + line + ("\n" if self.done == todo else ""))
        else:
            self.stream.write(f"{line}  ({'ok' if ok else 'FAILED'}: {label})\n")
        self.stream.flush()


def _duration(seconds):
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def _records(out, runs):
    records = []
    for rid, _ in runs:
        path = os.path.join(out, "runs", f"{rid}.json")
        if os.path.exists(path):
            with open(path) as f:
                records.append(json.load(f))
    return records


def _metric(record, which, name):
    values = record.get(which) or {}
    return values.get(f"val_{name}", values.get(name))


def summarise(records, varying):
    """One row per configuration (the varying keys other than seeds): mean and std over seeds.

    Parameters
    ----------
    records : list of dict
        The runs' result records.
    varying : list of str
        The keys the grid varies.
    """
    group_keys = [k for k in varying if k not in SEED_KEYS]
    groups = {}
    for r in records:
        key = tuple(json.dumps(r["config"][k]) for k in group_keys)
        groups.setdefault(key, []).append(r)
    rows = []
    for key, members in groups.items():
        ok = [r for r in members if r["status"] == "ok"]
        row = {k: members[0]["config"][k] for k in group_keys}
        row.update(runs=len(ok), failed=len(members) - len(ok))
        for which in ("final", "best"):
            values = np.array([np.nan if _metric(r, which, "accuracy") is None else _metric(r, which, "accuracy")
                               for r in ok], dtype=float)
            row[f"{which}_accuracy_mean"] = float(np.mean(values)) if len(values) else float("nan")
            row[f"{which}_accuracy_std"] = float(np.std(values)) if len(values) else float("nan")
        row["seconds_mean"] = float(np.mean([r["seconds"] for r in ok])) if ok else float("nan")
        rows.append(row)
    return rows


def _table(rows):
    if not rows:
        return "(no runs)"
    head = [k for k in rows[0] if not k.endswith(("_mean", "_std"))]
    cells = [[str(r[k]) for k in head] + [f"{r['final_accuracy_mean']:.4f} ± {r['final_accuracy_std']:.4f}",
                                          f"{r['best_accuracy_mean']:.4f} ± {r['best_accuracy_std']:.4f}",
                                          f"{r['seconds_mean']:.2f}"] for r in rows]
    head += ["final test acc", "best test acc", "s/run"]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def _write_summary(rows, path):
    with open(path, "w", newline="") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)


def _grouping_keys(rows):
    return [k for k in rows[0] if k not in ("runs", "failed") and not k.endswith(("_mean", "_std"))]


def _varies(rows, key):
    return len({json.dumps(r[key], sort_keys=True, default=str) for r in rows}) > 1


def x_key(rows):
    """(the key the figures are drawn against, or None, and why): lr if it varies, else the first
    other varying key (rule only when nothing else varies)."""
    if not rows:
        return None, "no runs finished"
    varying = [k for k in _grouping_keys(rows) if _varies(rows, k)]
    if not varying:
        return None, ("every run has the same configuration but its seeds: nothing varies to draw against "
                      "(summary.csv has the mean ± std over seeds)")
    for k in ["lr"] + [k for k in varying if k != "rule"] + ["rule"]:
        if k in varying:
            return k, ""


def identical_rules(rows):
    """Notes on rules whose results coincide in one configuration (with one hidden layer DFA is FA:
    both send the output error to the hidden layer through one random matrix, the same draw)."""
    others = [k for k in _grouping_keys(rows) if k != "rule"]
    groups, notes = {}, []
    for r in rows:
        if "rule" in r and r["runs"]:
            groups.setdefault(tuple(json.dumps(r[k], default=str) for k in others), []).append(r)
    for members in groups.values():
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                if all(a[f"{w}_accuracy_mean"] == b[f"{w}_accuracy_mean"] for w in ("final", "best")):
                    where = ", ".join(f"{k}={a[k]}" for k in others if _varies(rows, k))
                    why = ("; FA and DFA are one rule in a network with one hidden layer (both send e to it "
                           "through one random matrix, the same draw)") if {a["rule"], b["rule"]} == {"fa", "dfa"} else ""
                    notes.append(f"{a['rule']} and {b['rule']} give identical results{f' at {where}' if where else ''}{why}")
    return notes


def _tick(value):
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 24 else None


def figures(rows, out, notes=()):
    """Final and best test accuracy (mean; band: ± std over seeds) against the key that varies: lr
    when it does (log axis), else the first other varying key (a layer list, hidden, ...), one line
    per rule, one panel per combination of the other varying keys. Returns the PNG paths, none when
    nothing but seeds varies (:func:`x_key` says why)."""
    x, _ = x_key(rows)
    if x is None:
        return []
    from .plots import _color, _label as rule_label, require_matplotlib
    plt = require_matplotlib()
    lines_by = "rule" if x != "rule" and "rule" in rows[0] and _varies(rows, "rule") else None
    others = [k for k in _grouping_keys(rows) if k not in (x, lines_by) and _varies(rows, k)]
    rules = sorted({str(r.get("rule", "")) for r in rows})
    values = []   # the x values in order of appearance (numbers sorted)
    for r in rows:
        if r[x] not in values:
            values.append(r[x])
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        values.sort()
    key = (lambda v: v) if numeric else (lambda v: values.index(v))
    names = [_tick(v) for v in values]
    legend_text = [] if numeric or all(names) else [f"({chr(97 + i)}) {v}" for i, v in enumerate(values)]
    if legend_text:
        names = [f"({chr(97 + i)})" for i in range(len(values))]
    panels = {}
    for r in rows:
        panels.setdefault(tuple(str(r[k]) for k in others), []).append(r)
    paths = []
    for which in ("final", "best"):
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6),
                                 squeeze=False, sharey=True)
        for ax, (title, members) in zip(axes[0], panels.items()):
            lines = {}
            for r in members:
                lines.setdefault(str(r.get(lines_by, "")) if lines_by else "", []).append(r)
            for i, (rule, pts) in enumerate(lines.items()):
                pts.sort(key=lambda r: key(r[x]))
                xs = np.array([key(r[x]) for r in pts], dtype=float)
                m = np.array([r[f"{which}_accuracy_mean"] for r in pts])
                sd = np.array([r[f"{which}_accuracy_std"] for r in pts])
                color = _color(rule, rules) if rule else None
                label = rule_label(rule) if rule else None
                if numeric:
                    ax.plot(xs, m, marker="o", label=label, color=color, ls="--" if rule == "dfa" else "-")
                    ax.fill_between(xs, m - sd, m + sd, alpha=0.2, color=color)
                else:   # categories: points with ± std bars, side by side, not joined by lines
                    shift = (i - (len(lines) - 1) / 2) * 0.6 / max(len(lines), 1)
                    ax.errorbar(xs + shift, m, yerr=sd, marker="o", ls="none", capsize=3, label=label, color=color)
            if numeric:
                if x == "lr" or (min(values) > 0 and max(values) / min(values) >= 10):
                    ax.set_xscale("log")
                ax.minorticks_off()
                ax.set_xticks(values if len(values) <= 8 else values[::-(-len(values) // 8)])
                ax.set_xticklabels([f"{v:g}" for v in ax.get_xticks()])
            else:
                ax.set_xticks(range(len(values)))
                ax.set_xticklabels([rule_label(n) if x == "rule" else n for n in names], fontsize=8)
                ax.set_xlim(-0.5, len(values) - 0.5)
            ax.set_xlabel("learning rate" if x == "lr" else x)
            ax.set_title(", ".join(f"{k}={v}" for k, v in zip(others, title)) or "all runs", fontsize=9)
            ax.grid(alpha=0.3)
            if lines_by:
                ax.legend(fontsize=8)
        axes[0][0].set_ylabel(f"{which} test accuracy\n(mean ± std over seeds)")
        width, height = fig.get_size_inches()
        caption = "\n".join(textwrap.fill(t, int(17 * width), subsequent_indent="    ")
                             for t in legend_text + list(notes))
        n_lines = len(caption.splitlines()) if caption else 0
        # the caption below the panels: 7-point lines, the figure grown to hold them
        fig.set_size_inches(width, height + n_lines * 7 * 1.3 / 72)
        fig.tight_layout(rect=(0, (n_lines * 7 * 1.3 + 6) / 72 / (height + n_lines * 7 * 1.3 / 72), 1, 1))
        if caption:
            fig.text(0.01, 0.01, caption, fontsize=7, color="dimgray", va="bottom")
        path = os.path.join(out, f"accuracy_vs_{x}_{which}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def _start_cluster(workers):
    import dask
    from distributed import Client, LocalCluster
    # Julia aborts in a forked child: worker processes are spawned.
    with dask.config.set({"distributed.worker.multiprocessing-method": "spawn"}):
        cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=None)
    return cluster, Client(cluster)


def sweep(spec, out, client=None, scheduler=None, workers=None, retry_failed=False, plot=True, progress=True,
          stream=None):
    """Run every run of ``spec`` (a TOML path or dict) on Dask, writing results into ``out``.

    Parameters
    ----------
    spec : str, os.PathLike or dict
        The sweep spec (docs/sweeps.md).
    out : str
        The results' folder.
    client : distributed.Client, optional
        The cluster to run on; else ``scheduler`` (an address such as ``tcp://host:8786``) is
        connected to; else a LocalCluster with ``workers`` worker processes (default: one per core)
        is started and stopped here.
    scheduler : str, optional
        A running scheduler's address.
    workers : int, optional
        Worker processes of the local cluster.
    retry_failed : bool
        Run again the runs recorded as failed (finished runs are always skipped).
    plot : bool
        Draw the summary figures (needs matplotlib).
    progress : bool
        Print a progress line.
    stream : file, optional
        Where progress goes (default: stderr).

    Notes
    -----
    Writes ``out/runs/<id>.json`` per run, ``out/sweep.json`` (the runs and their ids),
    ``out/summary.csv`` and, with matplotlib, ``out/accuracy_vs_<key>_{final,best}.png`` against
    the key that varies (:func:`figures`; when only seeds vary it says so instead).
    Returns ``{"total", "ran", "skipped", "failed", "summary", "files"}``.
    """
    stream = stream or sys.stderr
    data, runs, varying = plan(spec)
    runs_dir = os.path.join(out, "runs")
    os.makedirs(runs_dir, exist_ok=True)
    _write_atomic(os.path.join(out, "sweep.json"), json.dumps(
        {"data": data, "varying": varying, "runs": {rid: config for rid, config in runs}}, indent=1).encode())

    def finished(rid):
        path = os.path.join(runs_dir, f"{rid}.json")
        if not os.path.exists(path):
            return False
        if retry_failed:
            with open(path) as f:
                return json.load(f)["status"] == "ok"
        return True
    todo = [(rid, config) for rid, config in runs if not finished(rid)]
    skipped = len(runs) - len(todo)
    print(f"sweep: {len(runs)} runs, {skipped} finished before (skipped), {len(todo)} to run", file=stream)

    own = None
    if todo:
        if client is None:
            if scheduler:
                from distributed import Client
                client = own = Client(scheduler)
            else:
                cluster, client = _start_cluster(workers)
                own = (client, cluster)
        try:
            _run_all(client, data, todo, varying, out, _Progress(len(runs), skipped, stream, quiet=not progress))
        finally:
            for thing in (own if isinstance(own, tuple) else (own,)):
                if thing is not None:
                    thing.close()

    records = _records(out, runs)
    rows = summarise(records, varying)
    files = [os.path.join(out, "summary.csv")]
    _write_summary(rows, files[0])
    notes = identical_rules(rows)
    if plot:
        try:
            files += figures(rows, out, notes)
            if x_key(rows)[0] is None:
                print(f"(no figures: {x_key(rows)[1]})", file=stream)
        except ImportError as e:
            print(f"(no figures: {e})", file=stream)
    failed = sum(r["status"] != "ok" for r in records)
    print(_table(rows), file=stream)
    for note in notes:
        print(f"note: {note}", file=stream)
    print(f"{len(records)} of {len(runs)} runs finished ({failed} failed); wrote {', '.join(files)}", file=stream)
    return {"total": len(runs), "ran": len(todo), "skipped": skipped, "failed": failed, "summary": rows,
            "files": files}


def _run_all(client, data, todo, varying, out, progress):
    from distributed import as_completed
    configs = [config for _, config in todo]
    errors = client.submit(_check_task, data, configs, pure=False).result()
    if errors:
        lines = [f"  run {_label(configs[i], varying)}: {msg}" for i, msg in errors[:10]]
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise SpecError(f"{len(errors)} of {len(configs)} runs are invalid; nothing was run:\n" + "\n".join(lines) + more)
    # Fresh task keys (pure=False): a run cancelled by an interrupted sweep may still be finishing on a worker.
    futures = {client.submit(_run_task, data, config, pure=False): (rid, config) for rid, config in todo}
    try:
        for future in as_completed(futures):
            rid, config = futures[future]
            try:
                record = future.result()
            except Exception as e:  # the task never returned: e.g. KilledWorker after repeated worker deaths
                record = {"status": "error", "config": config, "data": data, "error": f"{type(e).__name__}: {e}"}
            model = record.pop("model_bytes", None)
            if model is not None:
                os.makedirs(os.path.join(out, "models"), exist_ok=True)
                path = os.path.join(out, "models", f"{rid}.safetensors")
                _write_atomic(path, model)
                record["model"] = os.path.relpath(path, out)
            record["id"] = rid
            _write_atomic(os.path.join(out, "runs", f"{rid}.json"), json.dumps(record, indent=1).encode())
            future.release()
            progress.update(_label(config, varying), record["status"] == "ok")
    finally:
        client.cancel(list(futures))
