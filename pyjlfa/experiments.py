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

import contextlib
import csv
import ctypes
import dataclasses
import json
import math
import os
import sys
import time
import warnings
from ctypes import c_double, c_int64

import numpy as np

from . import datasets
from ._runtime import engine
from .diagnostics import alignment_fields, roles
from .network import Network
from .optimizers import SGD

__all__ = ["linear_task", "nonlinear_task", "teacher_task", "fashion_mnist", "compare", "save_results",
           "available_rules", "architecture", "lenet5", "resnet", "fashion_mnist_images"]

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
    rules = [r.lower() if isinstance(r, str) else r for r in rules]   # rule names are case-insensitive
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

    Parameters
    ----------
    task : {"linear", "nonlinear"}
        The teacher.
    rules : list of str
        The rules to train.
    steps : int
        Training steps (one batch each).
    record_every : int
        Steps between records of the test error and the diagnostics.
    lr : float, dict or None
        Learning rate (see above).
    batch_size : int
        Samples per step (1 in the paper).
    weight_range, feedback_range : float
        Initial W and B are uniform in ±these.
    seed : int
        Seed of every draw.
    test_size : int
        Test inputs.
    hidden : list of int, optional
        The student's hidden widths.
    dtype : {"float64", "float32"}
        The networks' type.
    out_dir : str, optional
        Write the results there (:func:`save_results`).
    plot : bool
        Also draw the figures (needs matplotlib).
    progress : bool
        Print progress.
    name : str, optional
        The output files' name.
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

    Parameters
    ----------
    rules : list of str
        The rules to train.
    steps : int
        Training steps.
    record_every : int
        Steps between records.
    **kwargs
        As :func:`teacher_task` takes them.
    """
    return teacher_task("linear", rules, steps, record_every, **kwargs)


def nonlinear_task(rules=("bp", "fa", "dfa"), steps=20000, record_every=100, **kwargs):
    """Lillicrap et al. 2016, Fig. 2c-d: a 30-20-10 tanh network learns a random 30-20-10-10 tanh network.

    The teacher's weights and biases are uniform in [-1, 1]; otherwise as :func:`linear_task`
    (default lr 0.003). With one hidden layer DFA is FA: both send e to the hidden layer through
    one (20 x 10) matrix, here the same draw, so their curves coincide.

    Parameters
    ----------
    rules : list of str
        The rules to train.
    steps : int
        Training steps.
    record_every : int
        Steps between records.
    **kwargs
        As :func:`teacher_task` takes them.
    """
    return teacher_task("nonlinear", rules, steps, record_every, **kwargs)


def compare(X, y, validation_data, rules=None, sizes=None, activation="tanh", epochs=10, batch_size=64,
            optimizer=None, seed=0, feedback_seed=None, dtype="float32", track_alignment=50, name="compare",
            out_dir=None, plot=True, progress=False, title=None, layers=None):
    """Train one network per rule from the same seed on (X, y); record learning and alignment curves.

    ``rules`` defaults to every rule the engine has. The network: ``layers``, a list of
    :mod:`pyjlfa.layers` (any chain: conv, residual; X then holds samples of any shape, such as
    (n, C, H, W) images), or else the dense ``sizes`` (default [n_features, 256, 256, n_classes]).
    Returns ``{"experiment": name, "params", "runs": {rule: history}}`` with each history as
    :meth:`pyjlfa.Network.fit` returns it (alignment under "alignment").

    Parameters
    ----------
    X, y : ndarray
        Training data, as :meth:`pyjlfa.Network.fit` takes it.
    validation_data : tuple
        ``(X_val, y_val)``, evaluated after every epoch.
    rules : list of str, optional
        The rules (default: all).
    sizes : list of int, optional
        Layer widths.
    layers : list of layers, optional
        Any network (pyjlfa.layers) instead of the dense one, for image data too.
    activation : str
        Hidden activation.
    epochs, batch_size : int
        As :meth:`pyjlfa.Network.fit`.
    optimizer : SGD, Adam or AdamW, optional
        The same for every rule.
    seed, feedback_seed : int
        Seeds of the networks (the same for every rule).
    dtype : {"float32", "float64"}
        The networks' type.
    track_alignment : int, optional
        Record the diagnostics every this many batches.
    name : str
        The experiment's name (file names).
    out_dir : str, optional
        Write the results there (:func:`save_results`).
    plot : bool
        Also draw the figures (needs matplotlib).
    progress : bool
        Print progress.
    title : str, optional
        The figures' title.
    """
    rules = _check_rules(available_rules() if rules is None else rules)
    X, y = np.asarray(X), np.asarray(y)
    if layers is not None and sizes is not None:
        raise ValueError("give layers (a chain) or sizes (a dense network), not both")
    if layers is None and X.ndim != 2:
        raise ValueError(f"X of shape {X.shape} needs layers=[...] (e.g. experiments.lenet5()); sizes "
                         "describe a dense network, which takes 2-D X (samples, features)")
    if layers is None and sizes is None:
        sizes = [X.shape[1], 256, 256, int(np.max(y)) + 1]
    optimizer = SGD(lr=0.05) if optimizer is None else optimizer
    if layers is not None:   # one description, built afresh for each rule
        def build(rule):
            return Network(layers, input_shape=X.shape[1:], rule=rule, seed=seed, feedback_seed=feedback_seed,
                           dtype=dtype)
    else:
        def build(rule):
            return Network(sizes, activation=activation, rule=rule, seed=seed, feedback_seed=feedback_seed,
                           dtype=dtype)
    architecture = (dict(layers=[repr(layer) for layer in layers], input_shape=list(X.shape[1:]))
                    if layers is not None else dict(sizes=list(map(int, sizes)), activation=activation))
    result = {"experiment": name, "title": title,
              "params": dict(rules=rules, **architecture, epochs=epochs,
                             batch_size=batch_size, lr=optimizer.lr, momentum=optimizer.momentum,
                             weight_decay=optimizer.weight_decay, seed=int(seed),
                             feedback_seed=None if feedback_seed is None else int(feedback_seed), dtype=dtype,
                             track_alignment=track_alignment, n_train=int(X.shape[0]),
                             n_validation=None if validation_data is None else int(len(validation_data[1]))),
              "runs": {}}
    for rule in rules:
        with build(rule) as net:
            if layers is not None:   # what the alignment records' per-layer entries are
                result["params"]["layer_names"] = [_short(v) for v in net._leaves]
            history = net.fit(X, y, epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                              validation_data=validation_data, progress=progress, track_alignment=track_alignment)
        result["runs"][rule] = history
    if out_dir is not None:
        save_results(result, out_dir, plot=plot)
    return result


def _short(view):
    """A layer as a panel title: "Conv2d(1, 6, 5)", "Linear(120, 84)", "ReLU()"; the engine's call
    for layers not written by the user (a residual block's "pad" shortcut)."""
    layer = view.layer
    if layer is None:
        return view.spec
    values = [getattr(layer, f) for f in layer._fields if f not in layer._defaults or
              getattr(layer, f) != layer._defaults[f]]
    values = [v[0] if isinstance(v, tuple) and len(set(v)) == 1 else v for v in values]
    return f"{type(layer).__name__}({', '.join(map(str, values))})"


def fashion_mnist(rules=None, sizes=(784, 256, 256, 10), epochs=10, batch_size=64, lr=0.05, train_size=None,
                  track_alignment=50, seed=0, dtype="float32", path=None, out_dir=None, plot=True, progress=False,
                  **kwargs):
    """Fashion-MNIST learning and alignment curves for every rule the engine has (or ``rules``).

    784-256-256-10 tanh, SGD lr 0.05, batch 64, 10 epochs, test set as validation; the alignment
    diagnostics every ``track_alignment`` batches on the batch being trained. ``train_size`` uses
    the first n training images (for quick runs).

    Parameters
    ----------
    rules : list of str, optional
        The rules (default: all).
    sizes : list of int
        Layer widths.
    epochs, batch_size : int
        As :meth:`pyjlfa.Network.fit`.
    lr : float
        SGD's learning rate.
    train_size : int, optional
        Use the first this many training images.
    track_alignment : int
        Record the diagnostics every this many batches.
    seed : int
        Seed of the networks.
    dtype : {"float32", "float64"}
        The networks' type.
    path : str, optional
        The data's folder (see :func:`pyjlfa.datasets.fashion_mnist`).
    out_dir : str, optional
        Write the results there (:func:`save_results`).
    plot : bool
        Also draw the figures (needs matplotlib).
    progress : bool
        Print progress.
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

    Parameters
    ----------
    result : dict
        What an experiment function returns.
    out_dir : str
        The folder (created if missing).
    plot : bool
        Also draw the figures (needs matplotlib).
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


# -- Published tables, resumable: biotorch's LeNet-5 recipe, and ResNet-20's on Fashion-MNIST ---------

# biotorch (Sanfiz & Akrout 2021) publishes top-1 test error (%) of LeNet-5 on Fashion-MNIST, the
# error of the epoch with the best test accuracy; rules it has no row for are absent.
BIOTORCH_LENET_ERROR = {"bp": 9.20, "fa": 13.06, "dfa": 12.81, "usf": 9.69, "brsf": 10.02, "frsf": 9.61}
LENET_RULES = ("bp", "fa", "dfa", "usf", "brsf", "frsf", "kp", "drtp", "sdfa", "shallow")
# Initial learning rates, chosen by the short search (``pyjlfa reproduce lenet-fashion-mnist --search``:
# the protocol's first 3 epochs on 50,000 training images, scored on the other 10,000; the lowest
# final error of the runs that did not blow up wins). The Results page's (docs/results.md) "LeNet-5 on Fashion-MNIST"
# section gives the search's numbers.
LENET_LR = {"bp": 0.01, "fa": 0.001, "dfa": 0.0003, "usf": 0.01, "brsf": 0.03, "frsf": 0.03, "kp": 0.003,
            "drtp": 0.0001, "sdfa": 0.001, "shallow": 0.1}
LENET_SEARCH_LRS = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1)
# Fashion-MNIST's training pixels (in [0, 1]) have mean 0.2860 and std 0.3530: biotorch normalises by
# them (torchvision's Normalize) before the network sees an image; so does this reproduction, before
# zero-padding (so the padding is the mean pixel). The input's scale sets how fast FA-style rules
# blow up at a given rate.
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530
# A mean training loss above twice that of constant uniform outputs (2 ln 10 for ten classes) means
# confident wrong answers: the run blew up, its logits growing without bound (FA and DFA do this at
# too high a rate, in PyTorch too). A run near chance stays below it.
BLOWN_UP_LOSS = 2 * math.log(10)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A training protocol for a table: the network, SGD with momentum and weight decay, a batch size,
    ``epochs`` epochs with the rate divided by 10 at each fraction of them in ``milestones``, and the
    data (Fashion-MNIST normalised and padded to 32 x 32, or an .npz file's arrays). ``lr`` maps rules
    to their initial rates (``default_lr`` for the others); ``published`` maps rules to the error (%)
    the recipe's source reports, where it reports one for this data."""
    name: str
    title: str
    layers: object          # () -> the layer list
    rules: tuple
    lr: dict
    default_lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    epochs: int
    milestones: tuple
    published: dict


def lenet5(in_channels=1, classes=10):
    """LeNet-5 as biotorch builds it (ReLU, max pooling), for in_channels x 32 x 32 images.

    Parameters
    ----------
    in_channels : int
        Channels of the input images.
    classes : int
        Outputs of the last layer.
    """
    from .layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU
    return [Conv2d(in_channels, 6, 5), ReLU(), MaxPool2d(2), Conv2d(6, 16, 5), ReLU(), MaxPool2d(2),
            Conv2d(16, 120, 5), ReLU(), Flatten(), Linear(120, 84), ReLU(), Linear(84, classes)]


def architecture(name, in_channels=1, classes=10):
    """A named network as a list of layers: "lenet5", or "resnet<depth>" ("resnet20", "resnet56"),
    for 32 x 32 images with ``in_channels`` channels and ``classes`` outputs.

    Parameters
    ----------
    name : str
        "lenet5" or "resnet<depth>".
    in_channels : int
        Channels of the input images.
    classes : int
        Outputs of the last layer.
    """
    if name == "lenet5":
        return lenet5(in_channels, classes)
    if isinstance(name, str) and name.startswith("resnet") and name[6:].isdigit():
        return resnet(int(name[6:]), in_channels, classes)
    raise ValueError(f"unknown architecture {name!r}; known: 'lenet5', 'resnet<depth>' with depth 6n + 2 "
                     "('resnet20', 'resnet32', 'resnet44', 'resnet56', ...)")


def resnet(depth=20, in_channels=1, classes=10):
    """The small ResNet of He et al. (2016) for 32 x 32 images as biotorch builds it: a 3x3 conv with
    16 channels, batch norm and ReLU, three stages of (depth - 2) / 6 basic blocks with 16, 32 and 64
    channels (the first block of stages two and three halves the image, with option-A "pad"
    shortcuts), global average pooling and a Linear layer. ``depth=20`` is ResNet-20, 56 ResNet-56.

    Parameters
    ----------
    depth : int
        6n + 2 layers with weights.
    in_channels : int
        Channels of the input images.
    classes : int
        Outputs of the last layer.
    """
    from .layers import AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear, ReLU, Residual
    if not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise ValueError(f"depth must be 6n + 2 (20, 32, 44, 56, ...), got {depth!r}")
    layers = [Conv2d(in_channels, 16, 3, padding=1, bias=False), BatchNorm2d(16), ReLU()]
    cin = 16
    for stage, cout in enumerate((16, 32, 64)):
        for block in range((depth - 2) // 6):
            stride = 2 if stage > 0 and block == 0 else 1
            main = [Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), BatchNorm2d(cout), ReLU(),
                    Conv2d(cout, cout, 3, padding=1, bias=False), BatchNorm2d(cout)]
            layers += [Residual(main, shortcut="pad" if stride != 1 or cin != cout else None), ReLU()]
            cin = cout
    return layers + [AdaptiveAvgPool2d(1), Flatten(), Linear(64, classes)]


RECIPES = {r.name: r for r in (
    Recipe("lenet-fashion-mnist", "LeNet-5, Fashion-MNIST", lenet5, LENET_RULES, LENET_LR, 0.01, momentum=0.9,
           weight_decay=1e-3, batch_size=64, epochs=100, milestones=(0.5, 0.75),
           published=BIOTORCH_LENET_ERROR),
    # biotorch's CIFAR-10 recipe for its small ResNets (lr / 10 at epochs 100, 150 and 200 of 250) on
    # Fashion-MNIST; its published ResNet-20 errors are CIFAR-10's, so none stand beside these.
    Recipe("resnet20-fashion-mnist", "ResNet-20, Fashion-MNIST", lambda: resnet(20),
           ("bp", "fa", "dfa", "dfa-block", "usf", "brsf", "frsf", "kp"), {}, 0.1, momentum=0.9,
           weight_decay=1e-4, batch_size=128, epochs=250, milestones=(0.4, 0.6, 0.8), published={}),
)}


def _recipe(recipe):
    if isinstance(recipe, Recipe):
        return recipe
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; expected one of {', '.join(map(repr, RECIPES))}")
    return RECIPES[recipe]


def scheduled_lr(base, completed, epochs, milestones=(0.5, 0.75)):
    """The learning rate of the epoch after ``completed`` ones: ``base`` divided by 10 at each fraction
    of ``epochs`` in ``milestones`` (the default: epochs 50 and 75 of 100, PyTorch's MultiStepLR([50, 75]))."""
    return base * 0.1 ** sum(completed >= max(1, round(epochs * f)) for f in milestones)


def _rule_of(name):
    """A table's rule name as Network takes it: "dfa-block" is DFA with ``feedback_points="block"``."""
    if name.endswith("-block"):
        from . import rules
        return {"dfa": rules.DFA, "drtp": rules.DRTP, "sdfa": rules.SDFA}[name[:-len("-block")]]("block")
    return name


def _check_table_rules(rules):
    """Rule names, lowercased, each one the engine knows, "shallow", or dfa/drtp/sdfa with "-block"."""
    rules = [rules] if isinstance(rules, str) else list(rules)
    block = [isinstance(r, str) and r.lower().endswith("-block") for r in rules]
    plain = _check_rules([r[:-len("-block")] if b else r for r, b in zip(rules, block)], extra=("shallow",))
    for r, p, b in zip(rules, plain, block):
        if b and p not in ("dfa", "drtp", "sdfa"):
            raise ValueError(f"unknown rule {r!r}: only dfa, drtp and sdfa take '-block' (feedback_points=\"block\")")
    return [p + "-block" if b else p for p, b in zip(plain, block)]


def _write_json_atomic(value, path):
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(_finite_or_none(value), f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _normalised_padded(X, pad=2, normalize=True):
    """Images standardised by Fashion-MNIST's pixel mean and std (with ``normalize``), then
    zero-padded by ``pad`` pixels on every side (2: 28 x 28 -> 32 x 32)."""
    out = np.zeros(X.shape[:2] + (X.shape[2] + 2 * pad, X.shape[3] + 2 * pad), dtype=X.dtype)
    if normalize:
        X = (X - X.dtype.type(FASHION_MNIST_MEAN)) / X.dtype.type(FASHION_MNIST_STD)
    out[:, :, pad:pad + X.shape[2], pad:pad + X.shape[3]] = X
    return out


def fashion_mnist_images(path=None, dtype="float32", pad=2, normalize=True):
    """Fashion-MNIST as (n, 1, 28 + 2 pad, 28 + 2 pad) images, standardised by the training pixels'
    mean and std (with ``normalize``, as biotorch's LeNet runs do) before zero padding:
    (X_train, y_train, X_test, y_test).

    Parameters
    ----------
    path : str, optional
        The Fashion-MNIST folder (default: where the set-up installed it).
    dtype : str
        "float32" or "float64".
    pad : int
        Zero pixels added on every side.
    normalize : bool
        Standardise by the training pixels' mean and std first.
    """
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be an integer >= 0 (pixels added on every side), got {pad!r}")
    Xtr, ytr, Xte, yte = datasets.fashion_mnist(path=path, dtype=dtype, images=True)
    return _normalised_padded(Xtr, pad, normalize), ytr, _normalised_padded(Xte, pad, normalize), yte


def _table_data(data_path, train_size, test_size, holdout=None):
    """(Xtr, ytr, Xte, yte) as images: Fashion-MNIST normalised and padded to 32 x 32, or an .npz file's
    arrays as they are.
    ``holdout=n``: the last n training images replace the test set (for choosing hyperparameters)."""
    if data_path is not None and str(data_path).endswith(".npz"):
        with np.load(data_path) as f:
            Xtr, ytr, Xte, yte = (np.ascontiguousarray(f[k]) for k in ("X_train", "y_train", "X_test", "y_test"))
    else:
        Xtr, ytr, Xte, yte = (_normalised_padded(X) if X.ndim == 4 else X
                              for X in datasets.fashion_mnist(path=data_path, images=True))
    if holdout is not None:
        if holdout >= len(Xtr) or (train_size or 0) > len(Xtr) - holdout:
            raise ValueError(f"holdout {holdout} and train_size {train_size} overlap: there are {len(Xtr)} "
                             "training images")
        Xtr, ytr, Xte, yte = Xtr[:-holdout], ytr[:-holdout], Xtr[-holdout:], ytr[-holdout:]
    if train_size is not None:
        Xtr, ytr = Xtr[:train_size], ytr[:train_size]
    if test_size is not None:
        Xte, yte = Xte[:test_size], yte[:test_size]
    return Xtr, ytr, Xte, yte


def train_rule(rule, out_dir, recipe="lenet-fashion-mnist", epochs=None, lr=None, batch_size=None, seed=0,
               train_size=None, test_size=None, data_path=None, stop_after=None, layers=None,
               input_shape=(1, 32, 32), holdout=None, progress=False):
    """Train one rule by a table's ``recipe`` (a name in :data:`RECIPES`) in this process,
    checkpointing into ``out_dir``; ``epochs``, ``lr`` and ``batch_size`` default to the recipe's.

    After every epoch: ``history.json`` (per epoch train loss/accuracy, test loss/accuracy, lr,
    seconds) then ``model.safetensors`` (parameters, feedback, SGD momentum, epoch count and the
    shuffling generator's state), each written to a temporary file and renamed. If ``out_dir``
    already holds a checkpoint, training continues from it, so an interrupted run ends exactly as
    an uninterrupted one. ``stop_after=k`` stops once k epochs are done (to split a run).
    ``layers``/``input_shape`` replace LeNet-5 (for small tests). ``holdout=n`` evaluates on the
    last n training images instead of the test set ("test_*" then means that held-out set).
    Returns the history.
    """
    recipe = _recipe(recipe)
    rule, = _check_table_rules([rule])
    epochs = recipe.epochs if epochs is None else _positive(epochs, "epochs")
    lr = recipe.lr.get(rule, recipe.default_lr) if lr is None else _positive(lr, "lr", float)
    batch_size = recipe.batch_size if batch_size is None else _positive(batch_size, "batch_size")
    os.makedirs(out_dir, exist_ok=True)
    with _only_trainer(out_dir):
        return _train_rule(recipe=recipe, rule=rule, out_dir=out_dir, epochs=epochs, lr=lr, batch_size=batch_size,
                           seed=seed, train_size=train_size, test_size=test_size, data_path=data_path,
                           stop_after=stop_after, layers=layers, input_shape=input_shape, holdout=holdout,
                           progress=progress)


@contextlib.contextmanager
def _only_trainer(out_dir):
    """Hold ``out_dir/train.lock`` (an OS lock, gone with the process) while training into ``out_dir``:
    a second run on the same folder would interleave its checkpoints with the first's."""
    import fcntl
    with open(os.path.join(out_dir, "train.lock"), "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another process is training into {out_dir}; let it finish or stop it, "
                               "then rerun to continue from its last checkpoint") from None
        yield


def _train_rule(*, recipe, rule, out_dir, epochs, lr, batch_size, seed, train_size, test_size, data_path, stop_after,
                layers, input_shape, holdout, progress):
    """:func:`train_rule` once its arguments are checked and it holds the folder's lock."""
    from . import io
    from ._runtime import DivergenceError

    config = dict(rule=rule, epochs=epochs, lr=lr, batch_size=batch_size, seed=int(seed), train_size=train_size,
                  test_size=test_size, holdout=holdout, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                  layers=None if layers is None else [repr(layer) for layer in layers])
    if recipe.name != "lenet-fashion-mnist":   # (runs of the LeNet table from before recipes have no key)
        config["recipe"] = recipe.name
    config_path, history_path = os.path.join(out_dir, "config.json"), os.path.join(out_dir, "history.json")
    model_path = os.path.join(out_dir, "model.safetensors")
    if os.path.exists(config_path):
        with open(config_path) as f:
            saved = json.load(f)
        changed = [k for k in config if saved.get(k) != config[k]]
        if changed:
            differences = ", ".join(f"{k}: {saved.get(k)!r} there, {config[k]!r} now" for k in changed)
            raise ValueError(f"{out_dir} holds a run with other settings ({differences}); "
                             "use another --out or the same settings")
    else:
        _write_json_atomic(config, config_path)

    history = {k: [] for k in ("epoch", "lr", "train_loss", "train_accuracy", "test_loss", "test_accuracy",
                               "seconds")}
    history["status"] = "partial"
    if os.path.exists(model_path):
        net = io.load(model_path)
        with open(history_path) as f:
            saved = json.load(f)
        # history.json is written before the model: it may hold one epoch more than the model, never fewer
        for k in history:
            if k != "status":
                history[k] = saved[k][:net.epochs]
        if saved.get("status", "").startswith("diverged"):
            net.close()
            return saved
    else:
        net = Network(recipe.layers() if layers is None else layers, input_shape=input_shape, rule=_rule_of(rule),
                      seed=seed)
    Xtr, ytr, Xte, yte = _table_data(data_path, train_size, test_size, holdout)
    last = epochs if stop_after is None else min(epochs, _positive(stop_after, "stop_after"))
    try:
        while net.epochs < last:
            rate = scheduled_lr(lr, net.epochs, epochs, recipe.milestones)
            optimizer = SGD(rate, momentum=recipe.momentum, weight_decay=recipe.weight_decay)  # the momentum carries on
            try:
                with warnings.catch_warnings():  # its "epoch 1" would mislead here; the history has the loss
                    warnings.filterwarnings("ignore", message="the mean training loss", category=RuntimeWarning)
                    h = net.fit(Xtr, ytr, epochs=1, batch_size=batch_size, optimizer=optimizer)
            except DivergenceError as e:
                history["status"] = f"diverged in epoch {net.epochs + 1}: {e}"
                _write_json_atomic(history, history_path)
                break
            test = net.evaluate(Xte, yte)
            for k, v in (("epoch", net.epochs), ("lr", rate), ("train_loss", h["loss"][0]),
                         ("train_accuracy", h["accuracy"][0]), ("test_loss", test["loss"]),
                         ("test_accuracy", test["accuracy"]), ("seconds", h["seconds"][0])):
                history[k].append(v)
            if net.epochs == epochs:
                history["status"] = "done"
            _write_json_atomic(history, history_path)
            net.save(model_path, include_optimizer=True)
            if progress:
                sys.stderr.write(f"{rule:>7} epoch {net.epochs:>3}/{epochs}: lr {rate:.3g}, train loss "
                                 f"{h['loss'][0]:.4f}, test error {100 * (1 - test['accuracy']):.2f}% "
                                 f"({h['seconds'][0]:.0f} s)\n")
                sys.stderr.flush()
    finally:
        net.close()
    return history


def _in_processes(tasks, jobs):
    """[(rule, history or None, error text or None)] of :func:`train_rule` for each task's
    arguments, ``jobs`` at a time, each in a fresh spawned process (Julia aborts in a forked child)
    with its share of the cores for BLAS. A worker ends if this process dies, so no orphan goes on
    writing checkpoints that a rerun would then race with."""
    import concurrent.futures
    import multiprocessing
    saved = os.environ.get("OPENBLAS_NUM_THREADS")
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // min(jobs, len(tasks) or 1))))
    try:
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"),
                                                    max_tasks_per_child=1, initializer=_end_with_parent) as pool:
            return list(pool.map(_train_rule_quietly, tasks))
    finally:
        if saved is None:
            os.environ.pop("OPENBLAS_NUM_THREADS", None)


def _end_with_parent():
    """Worker initializer: on Linux, have the kernel send SIGTERM to this process when its parent dies."""
    if sys.platform.startswith("linux"):
        import signal
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        if os.getppid() == 1:   # the parent died before the call
            os._exit(1)


def _train_rule_quietly(kwargs):
    """Worker-process entry point: a failure comes back as text, not as a dead pool."""
    try:
        return kwargs["rule"], train_rule(**kwargs), None
    except Exception as e:  # reported per rule; the other rules go on
        return kwargs["rule"], None, f"{type(e).__name__}: {e}"


def reproduce(recipe="lenet-fashion-mnist", rules=None, out_dir=None, epochs=None, lr=None, jobs=2, seed=0,
              train_size=None, test_size=None, data_path=None, stop_after=None, plot=True, progress=False, run=True,
              layers=None, input_shape=(1, 32, 32)):
    """A table of ``recipe`` (a name in :data:`RECIPES`) for ``rules`` (default: the recipe's), each
    rule in its own spawned process.

    Each rule trains into ``out_dir/<rule>/`` (default ``results/<recipe>``) with a checkpoint after
    every epoch (:func:`train_rule`); calling this again continues every rule from its last
    checkpoint. ``lr``: None (the recipe's rates), a number for every rule, or {rule: lr}. ``jobs``
    processes run at once (each with one BLAS thread per core share). ``run=False`` only reports
    what is in ``out_dir``. Returns the report (see :func:`report`) and writes its CSV, markdown and
    figure into ``out_dir``.
    """
    recipe = _recipe(recipe)
    rules = _check_table_rules(recipe.rules if rules is None else rules)
    out_dir = os.path.join("results", recipe.name) if out_dir is None else out_dir
    jobs = _positive(jobs, "jobs")
    rates = lr if isinstance(lr, dict) else {r: lr for r in rules}
    failures = {}
    if run:
        tasks = [dict(rule=r, out_dir=os.path.join(out_dir, r), recipe=recipe.name, epochs=epochs, lr=rates.get(r),
                      seed=seed, train_size=train_size, test_size=test_size, data_path=data_path,
                      stop_after=stop_after, layers=layers, input_shape=input_shape, progress=progress)
                 for r in rules]
        for rule, _, error in _in_processes(tasks, jobs):
            if error is not None:
                failures[rule] = error
                sys.stderr.write(f"{rule}: failed: {error}\n")
    result = report(out_dir, recipe, rules, plot=plot)
    result["failures"] = failures
    return result


def report(out_dir, recipe="lenet-fashion-mnist", rules=None, plot=True):
    """The table of whatever ``out_dir/<rule>/history.json`` holds, beside the recipe's published errors.

    Per rule: test error (%) at the epoch of best test accuracy (biotorch's convention, optimistic:
    the test set picks the epoch), that epoch, the error after the last epoch run, epochs run of
    those configured, mean seconds per training epoch, and the published error. Writes
    ``<recipe>.csv``, ``.md`` and (with matplotlib) ``.png`` (the name with underscores) into
    ``out_dir``. Returns ``{"rows": [...], "histories": {rule: history}, "files": [...]}``.
    """
    recipe = _recipe(recipe)
    rows, histories = [], {}
    for rule in _check_table_rules(recipe.rules if rules is None else rules):
        path = os.path.join(out_dir, rule, "history.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            h = json.load(f)
        with open(os.path.join(out_dir, rule, "config.json")) as f:
            config = json.load(f)
        histories[rule] = h
        acc = h["test_accuracy"]
        best = int(np.argmax(acc)) if acc else None
        rows.append(dict(rule=rule, lr=config["lr"], epochs_run=len(acc), epochs=config["epochs"],
                         best_epoch=None if best is None else best + 1,
                         best_error=None if best is None else round(100 * (1 - acc[best]), 2),
                         last_error=round(100 * (1 - acc[-1]), 2) if acc else None,
                         seconds_per_epoch=round(float(np.mean(h["seconds"])), 1) if h["seconds"] else None,
                         published_error=recipe.published.get(rule), status=h.get("status", "")))
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, recipe.name.replace("-", "_"))
    files = [stem + ".csv", stem + ".md"]
    columns = ["rule", "lr", "epochs_run", "epochs", "best_epoch", "best_error", "last_error", "seconds_per_epoch",
               "published_error", "status"]
    with open(files[0], "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for row in rows:
            w.writerow(["" if row[c] is None else row[c] for c in columns])
    with open(files[1], "w") as f:
        f.write(results_table(rows) + "\n")
    if plot and histories:
        files.append(_table_figure(histories, recipe, stem + ".png"))
    return {"rows": rows, "histories": histories, "files": files}


def results_table(rows):
    """The report's rows as a markdown table."""
    def cell(v, fmt="{:.2f}"):
        return "-" if v is None else fmt.format(v)
    lines = ["| rule | lr | test error % at best epoch (epoch) | test error % after last epoch | epochs run | "
             "s / epoch | published error % |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['rule']} | {r['lr']:g} | {cell(r['best_error'])} ({cell(r['best_epoch'], '{}')}) | "
                     f"{cell(r['last_error'])} | {r['epochs_run']}/{r['epochs']}"
                     f"{'' if r['status'] in ('done', 'partial') else ' ' + r['status'].split(':')[0]} | "
                     f"{cell(r['seconds_per_epoch'], '{:.0f}')} | {cell(r['published_error'])} |")
    return "\n".join(lines)


def _table_figure(histories, recipe, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (ax_err, ax_loss) = plt.subplots(1, 2, figsize=(12, 4.5))
    for rule, h in histories.items():
        line, = ax_err.plot(h["epoch"], [100 * (1 - a) for a in h["test_accuracy"]], label=rule, marker=".")
        if rule in recipe.published:
            ax_err.axhline(recipe.published[rule], color=line.get_color(), linestyle=":", linewidth=0.8)
        ax_loss.plot(h["epoch"], h["train_loss"], label=rule, color=line.get_color(), marker=".")
    ax_err.set(xlabel="epoch", ylabel="test error (%)", title=f"{recipe.title}: test error" +
               ("\n(dotted: the published error)" if recipe.published else ""))
    top = max(100 * (1 - min(h["test_accuracy"])) for h in histories.values() if h["test_accuracy"])
    ax_err.set_ylim(0, min(100, max(20, top * 1.05)))
    ax_loss.set(xlabel="epoch", ylabel="mean train loss (before each update)", title="train loss", yscale="log")
    ax_err.legend(ncol=2, fontsize=8)
    ax_loss.legend(ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def lr_search(recipe="lenet-fashion-mnist", rules=None, lrs=LENET_SEARCH_LRS, out_dir=None, epochs=3,
              train_size=None, holdout=10000, jobs=2, seed=0, data_path=None, progress=False):
    """The short learning-rate search behind :data:`LENET_LR`: each rule at each lr runs the first
    ``epochs`` epochs of ``recipe``'s protocol (so still at its initial rate) on the training images
    but the last ``holdout`` (the first ``train_size`` of them, if given), scored by the error on those
    held-out images (never the test set). A run that diverged or whose mean training loss ever rose
    above :data:`BLOWN_UP_LOSS` blew up and cannot be chosen: those are the runs that get worse over the
    whole protocol. Runs resume like the table's. Writes ``search.csv``/``search.md`` into ``out_dir``
    (default ``results/<recipe>/search``);
    returns {rule: {"errors": {lr: error %}, "blew_up": {lr: bool}, "chosen": lr}}: the lr of lowest
    final error among the runs that did not blow up (a NaN-stopped run's error counts as 100 %).
    """
    recipe = _recipe(recipe)
    rules = _check_table_rules(recipe.rules if rules is None else rules)
    out_dir = os.path.join("results", recipe.name, "search") if out_dir is None else out_dir
    lrs = [_positive(x, "each lr", float) for x in lrs]
    epochs = _positive(epochs, "epochs")
    tasks = [dict(rule=r, out_dir=os.path.join(out_dir, f"{r}-lr{x:g}"), recipe=recipe.name, stop_after=epochs,
                  lr=x, seed=seed, train_size=train_size, holdout=holdout, data_path=data_path, progress=progress)
             for r in rules for x in lrs]
    outcomes = _in_processes(tasks, _positive(jobs, "jobs"))
    result = {}
    for task, (rule, history, error) in zip(tasks, outcomes):
        acc = history["test_accuracy"] if history else []
        stopped = error is not None or history["status"].startswith("diverged") or not acc
        final = 100.0 if stopped else 100 * (1 - acc[-1])
        blew_up = stopped or max(history["train_loss"]) > BLOWN_UP_LOSS
        r = result.setdefault(rule, {"errors": {}, "blew_up": {}})
        r["errors"][task["lr"]], r["blew_up"][task["lr"]] = round(final, 2), blew_up
    for rule, r in result.items():
        stable = [x for x in lrs if not r["blew_up"][x]] or lrs
        r["chosen"] = min(stable, key=lambda x: (r["errors"][x], x))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "search.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["rule"] + [f"lr={x:g}" for x in lrs] + [f"blew_up_lr={x:g}" for x in lrs] + ["chosen"])
        for rule, r in result.items():
            w.writerow([rule] + [r["errors"][x] for x in lrs] + [int(r["blew_up"][x]) for x in lrs] + [r["chosen"]])
    with open(os.path.join(out_dir, "search.md"), "w") as f:
        f.write(search_table(result, lrs, epochs, holdout) + "\n")
    return result


def search_table(result, lrs, epochs, holdout):
    """The search as markdown: held-out error (%) after the last epoch per rule and lr; * = blew up."""
    lines = [f"Held-out error % after the protocol's first {epochs} epochs (scored on the last {holdout} "
             f"training images, trained on the others; * = blew up: mean training loss above 2 ln 10, "
             f"100 = stopped by a NaN)", "",
             "| rule | " + " | ".join(f"lr {x:g}" for x in lrs) + " | chosen |",
             "|---|" + "---|" * (len(lrs) + 1)]
    for rule, r in result.items():
        cells = [f"{r['errors'][x]:.2f}{'*' if r['blew_up'][x] else ''}" for x in lrs]
        lines.append(f"| {rule} | " + " | ".join(cells) + f" | {r['chosen']:g} |")
    return "\n".join(lines)
