"""Reproductions of published feedback-alignment experiments, measured here.

* :func:`linear_task` and :func:`nonlinear_task`: Lillicrap, Cownden, Tweed & Akerman 2016
  (*Random synaptic feedback weights support error backpropagation for deep learning*, Nat. Commun.
  7:13276), Fig. 2: a 30-20-10 network learns a fixed random teacher from fresh x ~ N(0, I).
  The numerics (teacher, data, training, diagnostics) run in Julia: ``teacher_task`` in
  ``julia/FeedbackAlignment/src/experiments.jl``, which Julia users call directly.
* :func:`fashion_mnist`: learning and alignment curves for every rule the engine has, on
  Fashion-MNIST, through :meth:`pyjlfa.Network.fit` with ``track_alignment``.
* :func:`compare`: the same for any data set (what ``pyjlfa compare`` runs).

Each returns a result dict and, given ``out_dir``, writes ``<name>.json``, ``<name>.csv`` and
(with matplotlib, ``pip install pyjlfa[plot]``) PNG figures there.
"""

import ctypes
import csv
import json
import math
import os
import sys
import time
from ctypes import c_double, c_int64

import numpy as np

from . import datasets
from ._runtime import engine
from .diagnostics import alignment_fields, roles
from .network import Network
from .optimizers import SGD

__all__ = ["linear_task", "nonlinear_task", "teacher_task", "fashion_mnist", "compare", "save_results",
           "available_rules"]

_DTYPES = {"float32": 0, "float64": 1}


def available_rules():
    """The learning rules the Julia engine knows: bp, fa, dfa first, then any others alphabetically."""
    first = ("bp", "fa", "dfa")
    names = engine().names("rule")
    return tuple(r for r in first if r in names) + tuple(sorted(r for r in names if r not in first))


def _check_rules(rules, extra=()):
    allowed = tuple(available_rules()) + tuple(extra)
    if isinstance(rules, str):
        rules = [rules]
    rules = list(rules)
    if not rules:
        raise ValueError(f"rules is empty; choose some of {', '.join(allowed)}")
    for r in rules:
        if r not in allowed:
            raise ValueError(f"unknown rule {r!r}; expected some of {', '.join(map(repr, allowed))}")
    return rules


def _positive(value, name, kind=int):
    ok = not isinstance(value, bool) and isinstance(value, (int, np.integer) if kind is int else (int, float, np.number))
    if not ok or not value > 0 or (kind is float and not math.isfinite(value)):
        raise ValueError(f"{name} must be a positive {'integer' if kind is int else 'number'}, got {value!r}")
    return kind(value)


def teacher_task(task, rules, steps, record_every, lr=None, batch_size=1, weight_range=0.01,
                 feedback_range=0.5, seed=0, test_size=1000, hidden=(20,), dtype="float64", out_dir=None,
                 plot=True, progress=False, name=None):
    """Lillicrap et al. 2016's teacher-student task ``task`` ("linear" or "nonlinear") for each rule.

    ``lr`` is a number, a dict {rule: lr}, or None for the task's defaults (the paper tuned the
    learning rate per algorithm and does not report it; see experiments.jl). ``hidden``: the
    student's hidden widths (30-20-10 in the paper). ``name`` names the output files (default
    "<task>_task"). Returns
    ``{"experiment", "params", "step", "runs": {rule: {"error", "alignment", "lr", "seconds"}}}``:
    the normalised test error (1 - R²) after each recorded step, and the alignment diagnostics
    measured on the test inputs at the same steps ({field: [[per layer] per record]}).
    """
    if task not in ("linear", "nonlinear"):
        raise ValueError(f"task must be 'linear' or 'nonlinear', got {task!r}")
    rules = _check_rules(rules, extra=("shallow",))
    steps = _positive(steps, "steps")
    record_every = _positive(record_every, "record_every")
    batch_size = _positive(batch_size, "batch_size")
    test_size = _positive(test_size, "test_size")
    if test_size < 2:
        raise ValueError(f"test_size must be at least 2, got {test_size}")
    weight_range = _positive(weight_range, "weight_range", float)
    feedback_range = _positive(feedback_range, "feedback_range", float)
    if isinstance(hidden, (str, bytes)) or not hasattr(hidden, "__len__"):
        raise ValueError(f"hidden must be a sequence of hidden-layer widths, got {hidden!r}")
    hidden = [_positive(h, "every hidden width") for h in hidden]
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    rates = lr if isinstance(lr, dict) else {r: lr for r in rules}
    for r in rules:
        if rates.get(r) is not None:
            _positive(rates[r], f"lr for rule {r!r}", float)

    eng = engine()
    fields, role_names = alignment_fields(), roles()
    n = steps // record_every + 1
    result = {"experiment": name or f"{task}_task",
              "params": dict(task=task, rules=rules, sizes=[30] + hidden + [10], steps=steps,
                             record_every=record_every, batch_size=batch_size,
                             weight_range=weight_range, feedback_range=feedback_range, seed=int(seed),
                             test_size=test_size, dtype=dtype),
              "step": [k * record_every for k in range(n)], "runs": {}}
    for rule in rules:
        errors = np.empty(n)
        records = np.empty((n, len(hidden) + 1, len(fields)))
        rate = c_double(float("nan") if rates.get(rule) is None else rates[rule])
        widths = (c_int64 * len(hidden))(*hidden)
        start = time.perf_counter()
        eng.call("fa_teacher_task", task.encode(), rule.encode(), _DTYPES[dtype], len(hidden), widths, steps,
                 batch_size, ctypes.byref(rate), weight_range, feedback_range, int(seed), record_every, test_size,
                 errors.ctypes.data, records.ctypes.data)
        seconds = time.perf_counter() - start
        run = {"error": errors.tolist(), "seconds": seconds, "lr": rate.value,
               "alignment": {"role": [[role_names[int(c)] for c in rec] for rec in records[:, :, 0]]}}
        for j, name in enumerate(fields[1:], start=1):
            run["alignment"][name] = records[:, :, j].tolist()
        result["runs"][rule] = run
        if progress:
            angle = records[-1, 0, fields.index("delta_angle")]
            sys.stderr.write(f"{task} task, {'-'.join(map(str, result['params']['sizes']))}, {rule:>7}: {steps} steps "
                             f"in {seconds:.1f} s, normalised error {errors[0]:.3g} -> {errors[-1]:.3g}, first "
                             f"hidden layer's delta angle {angle:.1f} deg\n")
    if out_dir is not None:
        save_results(result, out_dir, plot=plot)
    return result


def linear_task(rules=("bp", "fa", "shallow"), steps=5000, record_every=25, **kwargs):
    """Lillicrap et al. 2016, Fig. 2a-b: a 30-20-10 linear network learns y = T x.

    T (10 x 30) uniform in [-1, 1], x ~ N(0, I), initial weights uniform in ±0.01 (``weight_range``),
    B uniform in ±0.5 (``feedback_range``), loss ½‖e‖², one sample per step. "shallow" trains only
    the output layer. Defaults: lr 0.001 (bp, fa, dfa), 10 (shallow). Other arguments: see
    :func:`teacher_task`.
    """
    return teacher_task("linear", rules, steps, record_every, **kwargs)


def nonlinear_task(rules=("bp", "fa", "dfa"), steps=20000, record_every=100, **kwargs):
    """Lillicrap et al. 2016, Fig. 2c-d: a 30-20-10 tanh network learns a random 30-20-10-10 tanh network.

    The teacher's weights and biases are uniform in [-1, 1]; otherwise as :func:`linear_task`
    (default lr 0.003). With one hidden layer DFA is FA: both send e to the hidden layer through
    one (20 x 10) matrix, here the same draw, so their curves coincide.
    """
    return teacher_task("nonlinear", rules, steps, record_every, **kwargs)


def compare(X, y, validation_data, rules=None, sizes=None, activation="tanh", epochs=10, batch_size=64,
            optimizer=None, seed=0, feedback_seed=None, dtype="float32", track_alignment=50, name="compare",
            out_dir=None, plot=True, progress=False, title=None):
    """Train one network per rule from the same seed on (X, y); record learning and alignment curves.

    ``rules`` defaults to every rule the engine has; ``sizes`` to [n_features, 256, 256, n_classes].
    Returns ``{"experiment": name, "params", "runs": {rule: history}}`` with each history as
    :meth:`pyjlfa.Network.fit` returns it (alignment under "alignment").
    """
    rules = _check_rules(available_rules() if rules is None else rules)
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (samples, features), got shape {X.shape}")
    if sizes is None:
        sizes = [X.shape[1], 256, 256, int(np.max(y)) + 1]
    optimizer = SGD(lr=0.05) if optimizer is None else optimizer
    result = {"experiment": name, "title": title,
              "params": dict(rules=rules, sizes=list(map(int, sizes)), activation=activation, epochs=epochs,
                             batch_size=batch_size, lr=optimizer.lr, momentum=optimizer.momentum,
                             weight_decay=optimizer.weight_decay, seed=int(seed),
                             feedback_seed=None if feedback_seed is None else int(feedback_seed), dtype=dtype,
                             track_alignment=track_alignment, n_train=int(X.shape[0]),
                             n_validation=None if validation_data is None else int(len(validation_data[1]))),
              "runs": {}}
    for rule in rules:
        with Network(sizes, activation=activation, rule=rule, seed=seed, feedback_seed=feedback_seed,
                     dtype=dtype) as net:
            history = net.fit(X, y, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                              validation_data=validation_data, progress=progress, track_alignment=track_alignment)
        result["runs"][rule] = history
    if out_dir is not None:
        save_results(result, out_dir, plot=plot)
    return result


def fashion_mnist(rules=None, sizes=(784, 256, 256, 10), epochs=10, batch_size=64, lr=0.05, train_size=None,
                  track_alignment=50, seed=0, dtype="float32", path=None, out_dir=None, plot=True, progress=False,
                  **kwargs):
    """Fashion-MNIST learning and alignment curves for every rule the engine has (or ``rules``).

    784-256-256-10 tanh, SGD lr 0.05, batch 64, 10 epochs, test set as validation; the alignment
    diagnostics every ``track_alignment`` batches on the batch being trained. ``train_size`` uses
    the first n training images (for quick runs).
    """
    Xtr, ytr, Xte, yte = datasets.fashion_mnist(path=path, dtype=dtype)
    n_train = len(Xtr)
    if train_size is not None:
        train_size = _positive(train_size, "train_size")
        Xtr, ytr = Xtr[:train_size], ytr[:train_size]
    subset = f" (first {len(Xtr)} of {n_train} training images)" if len(Xtr) < n_train else ""
    title = (f"Fashion-MNIST{subset}, {'-'.join(map(str, sizes))} tanh, SGD lr {lr}, batch {batch_size}, "
             f"{epochs} epochs, seed {seed}")
    return compare(Xtr, ytr, (Xte, yte), rules=rules, sizes=list(sizes), epochs=epochs, batch_size=batch_size,
                   optimizer=SGD(lr=lr), seed=seed, dtype=dtype, track_alignment=track_alignment,
                   name="fashion_mnist", out_dir=out_dir, plot=plot, progress=progress, title=title, **kwargs)


# -- files -----------------------------------------------------------------------------------------

def _finite_or_none(value):
    """JSON has no NaN: write null instead."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def save_results(result, out_dir, plot=True):
    """Write ``<experiment>.json`` and CSV files (and, with matplotlib, PNG figures) into ``out_dir``.

    Returns the list of files written.
    """
    os.makedirs(out_dir, exist_ok=True)
    name = result["experiment"]
    written = [os.path.join(out_dir, f"{name}.json")]
    with open(written[0], "w") as f:
        json.dump(_finite_or_none(result), f, indent=1)
    written += _write_csv(result, out_dir)
    if plot:
        from . import plots
        written += plots.figures(result, out_dir)
    return written


def _layer_columns(alignment, fields):
    n_layers = len(alignment["role"][0]) if alignment["role"] else 0
    return [(f, k) for k in range(n_layers) for f in fields]


def _write_csv(result, out_dir):
    name, runs = result["experiment"], result["runs"]
    fields = ("role",) + tuple(alignment_fields()[1:])
    files = []
    if "step" in result:  # teacher task: one row per rule and recorded step
        path = os.path.join(out_dir, f"{name}.csv")
        first = next(iter(runs.values()))["alignment"]
        columns = _layer_columns(first, fields)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["rule", "step", "normalised_error"] + [f"layer{k}_{field}" for field, k in columns])
            for rule, run in runs.items():
                for i, step in enumerate(result["step"]):
                    w.writerow([rule, step, run["error"][i]] + [run["alignment"][field][i][k] for field, k in columns])
        return [path]
    path = os.path.join(out_dir, f"{name}.csv")  # one row per rule and epoch
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        keys = [k for k in next(iter(runs.values())) if k != "alignment"]
        w.writerow(["rule", "epoch"] + keys)
        for rule, h in runs.items():
            for e in range(len(h["loss"])):
                w.writerow([rule, e + 1] + [h[k][e] for k in keys])
    files.append(path)
    tracked = {rule: h["alignment"] for rule, h in runs.items() if "alignment" in h and h["alignment"]["step"]}
    if tracked:
        path = os.path.join(out_dir, f"{name}_alignment.csv")
        columns = _layer_columns(next(iter(tracked.values())), fields)
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["rule", "epoch", "batch", "step"] + [f"layer{k}_{field}" for field, k in columns])
            for rule, a in tracked.items():
                for i in range(len(a["step"])):
                    w.writerow([rule, a["epoch"][i], a["batch"][i], a["step"][i]] +
                               [a[field][i][k] for field, k in columns])
        files.append(path)
    return files
