"""The Python face of a Julia-side network: validation at the edge, zero-copy arrays across it."""

import ctypes
import sys
import time
from ctypes import c_double, c_int64, c_void_p
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import init as _init
from . import diagnostics as _diagnostics
from ._runtime import engine
from .optimizers import SGD, _Optimizer
from .rules import FEEDBACK_STYLE

__all__ = ["Network", "Layer"]

_DTYPES = {"float32": (np.float32, 0), "float64": (np.float64, 1)}
_OUTPUTS, _PROBABILITIES, _LABELS = 0, 1, 2  # fa_forward's output kinds


@dataclass(frozen=True)
class Layer:
    """Views of one layer's parameters in Julia's memory (writes go straight to the model).

    W has shape (n_in, n_out) so that a layer computes ``X @ W + b``; B, where the rule has one,
    is the fixed feedback matrix (FA: the shape of W.T; DFA: (n_outputs, n_out)); otherwise None.
    """

    W: np.ndarray
    b: np.ndarray
    B: Optional[np.ndarray]


class _Handle:
    """Owns one Julia network; freed when the Network and every view of its memory are gone.

    It also keeps alive the host arrays the Julia model reads in place (given feedback matrices).
    """

    def __init__(self, eng, handle, keepalive=()):
        self.engine, self.id, self.keepalive = eng, handle, keepalive

    def __del__(self):
        if not sys.is_finalizing():
            self.engine.free(self.id)


class _JuliaBuffer:
    """Exposes Julia-owned memory to NumPy; arrays made from it keep the handle alive."""

    def __init__(self, owner, address, shape, dtype):
        self.owner = owner
        self.__array_interface__ = {"data": (address, False), "shape": tuple(shape),
                                    "typestr": np.dtype(dtype).str, "version": 3}


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _choice(value, name, allowed):
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {', '.join(map(repr, allowed))}; got {value!r}")
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, allowed))}")
    return value


class Network:
    """A dense network whose forward, feedback and update arithmetic runs in Julia.

    Parameters
    ----------
    sizes : layer widths, inputs first, e.g. [784, 256, 256, 10].
    activation : hidden-layer activation: "tanh", "sigmoid", "relu", "leaky_relu" or "identity".
        The output layer is linear.
    rule : how hidden layers get their error signal: "bp", "fa", "dfa", "usf", "frsf", "brsf",
        "kp", "wm", "drtp", "sdfa" or "shallow" (see the README's table), or a rule value with
        parameters such as ``pyjlfa.rules.WeightMirror(steps=2)``.
    loss : "cross_entropy" (softmax, integer labels 0..k-1) or "mse" (half squared error, real targets).
    seed : seed of the forward weights, the shuffling, dropout and brSF's redraws.
    feedback_seed : seed of the feedback matrices (default: ``seed``), so one network can be
        trained with different feedback draws.
    dtype : "float32" or "float64", for parameters and all arithmetic.
    init : initialiser of the forward weights (a name or a ``pyjlfa.init`` value).
    feedback : initialiser of the feedback matrices: a name, a ``pyjlfa.init`` value, a NumPy
        array (C-contiguous, of the network's dtype, used as B itself: not copied), or a list
        with one of these per layer (None for layers without B).
    dropout : probability of dropping a hidden unit during training (one number, or one per
        hidden layer).

    Inputs are (samples, features) arrays. One that is C-contiguous and of the network's dtype is
    read in place by Julia; anything else is converted once per call (one copy of X).
    """

    def __init__(self, sizes, activation="tanh", rule="fa", loss="cross_entropy", seed=0,
                 feedback_seed=None, dtype="float32", init="glorot_uniform", feedback="glorot_uniform",
                 dropout=0.0):
        if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__len__") or len(sizes) < 2:
            raise ValueError(f"sizes must list at least an input and an output width, got {sizes!r}")
        self.sizes = tuple(_positive_int(s, "every entry of sizes") for s in sizes)
        try:
            dtype_name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
        except TypeError:
            raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None
        self.dtype = np.dtype(_DTYPES[_choice(dtype_name, "dtype", tuple(_DTYPES))][0])
        seed = self._seed(seed, "seed")
        feedback_seed = seed if feedback_seed is None else self._seed(feedback_seed, "feedback_seed")
        eng = engine()
        self.activation = _choice(activation, "activation", eng.names("activation"))
        self.loss = _choice(loss, "loss", eng.names("loss"))
        self.rule_value = rule  # the name, or the rule value with its parameters
        if hasattr(rule, "_spec") and hasattr(rule, "name"):
            self.rule, rule_spec = rule.name, rule._spec()
        else:
            self.rule = rule_spec = _choice(rule, "rule", eng.names("rule"))
        if self.rule == "drtp" and self.loss != "cross_entropy":
            raise ValueError("rule 'drtp' projects one-hot class targets: it needs loss='cross_entropy'")
        self.seed, self.feedback_seed = seed, feedback_seed
        self.init, self.feedback = init, feedback  # recorded as given (arrays are the model's B)
        init_spec = self._initialiser(init, "init", eng)
        feedback_specs, given = self._feedback(feedback, eng)
        self.dropout = self._dropout(dropout)

        spec = "\n".join([f"activation={self.activation}", f"loss={self.loss}", f"rule={rule_spec}",
                          f"seed={seed}", f"feedback_seed={feedback_seed}", f"init={init_spec}",
                          "feedback=[" + ", ".join(feedback_specs) + "]",
                          "dropout=[" + ", ".join(map(repr, self.dropout)) + "]"])
        out = c_int64()
        widths = (c_int64 * len(self.sizes))(*self.sizes)
        pointers = (c_void_p * (len(self.sizes) - 1))(*(None if B is None else B.ctypes.data for B in given))
        eng.call("fa_new", ctypes.byref(out), _DTYPES[dtype_name][1], len(self.sizes), widths, spec.encode(), pointers)
        self._engine = eng
        self._handle = _Handle(eng, out.value, keepalive=tuple(B for B in given if B is not None))
        self.layers = tuple(Layer(*(self._param(k, which) for which in range(3)))
                            for k in range(len(self.sizes) - 1))
        self.optimizer = None  # the optimizer of the last fit/step (recorded by save)
        self.history = None  # the history of the last fit, also when Ctrl-C cut it short

    @staticmethod
    def _initialiser(value, name, eng):
        if isinstance(value, _init.Initialiser):
            return value._spec()
        if isinstance(value, str):
            return _choice(value, name, eng.names("initialiser"))
        raise TypeError(f"{name} must be an initialiser name such as 'glorot_uniform' or a pyjlfa.init value, got {value!r}")

    def feedback_shapes(self):
        """The shape of each layer's B under this network's rule (None where it has none)."""
        style, L = FEEDBACK_STYLE[self.rule], len(self.sizes) - 1
        if style == "fa":
            return [None] + [(self.sizes[k + 1], self.sizes[k]) for k in range(1, L)]
        if style == "dfa":
            return [(self.sizes[-1], self.sizes[k + 1]) for k in range(L - 1)] + [None]
        return [None] * L

    def _feedback(self, feedback, eng):
        """Per layer: the initialiser's spec, and the array given as B (or None)."""
        shapes = self.feedback_shapes()
        entries = list(feedback) if isinstance(feedback, (list, tuple)) else [feedback] * len(shapes)
        if len(entries) != len(shapes):
            raise ValueError(f"feedback lists {len(entries)} entries; the network has {len(shapes)} layers")
        specs, given = [], []
        for k, (entry, shape) in enumerate(zip(entries, shapes)):
            name = f"feedback[{k}]" if isinstance(feedback, (list, tuple)) else "feedback"
            if isinstance(entry, np.ndarray):
                if self.rule == "brsf":
                    raise ValueError(f"{name}: rule 'brsf' redraws B every batch, so it cannot use a given matrix")
                if shape is None:
                    raise ValueError(f"{name}: layer {k} has no feedback matrix under rule {self.rule!r}; pass None")
                if entry.shape != shape:
                    raise ValueError(f"{name} has shape {entry.shape}; layer {k}'s B under rule {self.rule!r} needs {shape}")
                if entry.dtype != self.dtype or not entry.flags.c_contiguous or not entry.flags.writeable:
                    raise TypeError(f"{name} is used in place as B, so it must be a writeable C-contiguous "
                                    f"{self.dtype.name} array; got {entry.dtype}, "
                                    f"{'C' if entry.flags.c_contiguous else 'non-C'}-ordered "
                                    f"(convert once with np.ascontiguousarray(B, dtype='{self.dtype.name}'))")
                if not np.isfinite(entry).all():
                    raise ValueError(f"{name} contains NaN or Inf")
                specs.append("zeros()")
                given.append(entry)
            elif entry is None and (shape is None or isinstance(feedback, (list, tuple))):
                if shape is not None:
                    raise ValueError(f"{name} is None but layer {k} has a feedback matrix of shape {shape} under rule {self.rule!r}")
                specs.append("zeros()")
                given.append(None)
            else:
                specs.append(self._initialiser(entry, name, eng))
                given.append(None)
        return specs, given

    def _dropout(self, dropout):
        hidden = len(self.sizes) - 2
        rates = list(dropout) if isinstance(dropout, (list, tuple)) else [dropout] * hidden
        if len(rates) != hidden:
            raise ValueError(f"dropout lists {len(rates)} rates; the network has {hidden} hidden layers")
        for p in rates:
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
                raise ValueError(f"dropout rates must be numbers in [0, 1), got {p!r}")
        return tuple(float(p) for p in rates)

    @staticmethod
    def _seed(value, name):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 2**64:
            raise ValueError(f"{name} must be an integer in [0, 2**64), got {value!r}")
        return int(value)

    def _param(self, k, which):
        address, dims = c_void_p(), (c_int64 * 2)()
        self._engine.call("fa_param", self._handle.id, k + 1, which, ctypes.byref(address), dims)
        if not address.value:
            return None
        # Julia's column-major (rows, cols) is NumPy's row-major (cols, rows); b is a vector.
        shape = (dims[0],) if which == 1 else (dims[1], dims[0])
        return np.asarray(_JuliaBuffer(self._handle, address.value, shape, self.dtype))

    @property
    def n_features(self):
        return self.sizes[0]

    @property
    def n_outputs(self):
        return self.sizes[-1]

    def __repr__(self):
        return (f"Network({list(self.sizes)}, activation={self.activation!r}, rule={self.rule!r}, "
                f"loss={self.loss!r}, seed={self.seed}, dtype={self.dtype.name!r})")

    # -- lifetime ----------------------------------------------------------------------------
    def close(self):
        """Release the Julia model. Views of its parameters that you still hold stay valid."""
        self._handle = None
        self.layers = ()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _id(self):
        if self._handle is None:
            raise ValueError("this Network is closed")
        return self._handle.id

    # -- validation at the edge ---------------------------------------------------------------
    def _inputs(self, X, name="X"):
        X = np.asarray(X)
        if X.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {X.dtype}")
        if X.ndim != 2:
            raise ValueError(f"{name} must be 2-D (samples, features), got shape {X.shape}")
        if X.shape[0] == 0:
            raise ValueError(f"{name} is empty: it has 0 samples")
        if X.shape[1] != self.n_features:
            raise ValueError(f"{name} has {X.shape[1]} features per sample; this network expects {self.n_features}")
        with np.errstate(over="ignore"):  # an overflowing cast is reported as Inf just below
            X = np.ascontiguousarray(X, dtype=self.dtype)  # the same array when already suitable
        if not np.isfinite(X).all():
            row, col = np.argwhere(~np.isfinite(X))[0]
            raise ValueError(f"{name} contains NaN or Inf (first at sample {row}, feature {col})")
        return X

    def _targets(self, y, n, name="y"):
        y = np.asarray(y)
        if self.loss == "cross_entropy":
            if y.ndim != 1 or y.shape[0] != n:
                raise ValueError(f"{name} must be a 1-D array of {n} class labels, got shape {y.shape}")
            if y.dtype.kind not in "iu":
                raise TypeError(f"{name} must hold integer class labels 0..{self.n_outputs - 1}, got dtype {y.dtype}")
            bad = (y < 0) | (y >= self.n_outputs)
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise ValueError(f"{name} has labels outside [0, {self.n_outputs}): {name}[{i}] = {y[i]}")
            return np.ascontiguousarray(y, dtype=np.int64)
        if y.ndim == 1 and self.n_outputs == 1:
            y = y.reshape(-1, 1)
        if y.shape != (n, self.n_outputs):
            raise ValueError(f"{name} must have shape ({n}, {self.n_outputs}) for the mse loss, got {y.shape}")
        if y.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got dtype {y.dtype}")
        with np.errstate(over="ignore"):
            y = np.ascontiguousarray(y, dtype=self.dtype)
        if not np.isfinite(y).all():
            raise ValueError(f"{name} contains NaN or Inf")
        return y

    def _data(self, X, y, names=("X", "y")):
        X = self._inputs(X, names[0])
        return X, self._targets(y, X.shape[0], names[1])

    def _optimizer(self, optimizer):
        if not isinstance(optimizer, _Optimizer):
            raise TypeError(f"optimizer must be a pyjlfa optimizer such as pyjlfa.SGD(lr=0.05), got {optimizer!r}")
        if optimizer.layer_lr is not None and len(optimizer.layer_lr) != len(self.sizes) - 1:
            raise ValueError(f"optimizer layer_lr lists {len(optimizer.layer_lr)} multipliers; "
                             f"the network has {len(self.sizes) - 1} layers")
        return optimizer._encoded_spec()

    # -- training ------------------------------------------------------------------------------
    def fit(self, X, y, epochs=1, batch_size=32, optimizer=None, shuffle=True, validation_data=None,
            progress=False, track_alignment=None):
        """Train for ``epochs`` passes over (X, y); each epoch is one call into Julia.

        Returns the history: per epoch "loss" (and "accuracy" for classifiers) averaged over the
        epoch's batches, each measured before its update; "val_loss"/"val_accuracy" given
        ``validation_data=(X_val, y_val)``; and "seconds". A NaN or infinite loss stops training
        with :class:`pyjlfa.DivergenceError` naming the epoch and batch.

        Ctrl-C (SIGINT) stops training between two batches with KeyboardInterrupt (within a
        batch's time): the parameters are those after the last completed batch, never a half
        update; ``net.epochs`` counts completed epochs only; ``net.history``, this history filled
        in as each epoch ends, keeps the completed epochs (and the alignment records so far). The
        network stays usable; another ``fit`` continues from there (the shuffling generator has
        moved on for the interrupted epoch).

        ``track_alignment=n`` records :meth:`alignment` every n batches, on the batch being trained
        (before its update), into ``history["alignment"]``: {"epoch", "batch", "step", "role",
        "update_angle", ...}, each a list with one entry per record (per-layer lists inside).
        """
        epochs = _positive_int(epochs, "epochs")
        batch_size = _positive_int(batch_size, "batch_size")
        opt = self._optimizer(SGD() if optimizer is None else optimizer)
        X, y = self._data(X, y)
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            validation = self._data(*validation_data, names=("validation_data[0]", "validation_data[1]"))
        handle = self._id()
        self.optimizer = SGD() if optimizer is None else optimizer
        tracker = _diagnostics.Tracker.start(self, track_alignment)

        classifier = self.loss == "cross_entropy"
        keys = ["loss"] + (["accuracy"] if classifier else [])
        keys += [f"val_{k}" for k in keys] if validation_data is not None else []
        history = {k: [] for k in keys + ["seconds"]}
        self.history = history  # filled in per epoch: what Ctrl-C leaves of this fit
        out = (c_double * 3)()
        try:
            for epoch in range(1, epochs + 1):
                start = time.perf_counter()
                self._engine.call("fa_train_epoch", handle, X.ctypes.data, X.shape[0], X.shape[1], y.ctypes.data,
                                  batch_size, int(bool(shuffle)), opt, out)
                history["loss"].append(out[0])
                if classifier:
                    history["accuracy"].append(out[1])
                history["seconds"].append(time.perf_counter() - start)
                if tracker:
                    tracker.collect(-(-X.shape[0] // batch_size))
                if validation_data is not None:
                    for k, v in self._evaluate(*validation).items():
                        history[f"val_{k}"].append(v)
                if progress:
                    _show_progress(self.rule, epoch, epochs, {k: v[-1] for k, v in history.items()})
        except KeyboardInterrupt:
            if tracker:  # keep the records made so far, and stop tracking
                tracker.collect(-(-X.shape[0] // batch_size))
                history["alignment"] = tracker.finish()
            raise
        if tracker:
            history["alignment"] = tracker.finish()
        return history

    def alignment(self, X, y):
        """How this network's rule compares with backprop on the batch (X, y); nothing changes.

        Per layer: role, angles (degrees) between the rule's and backprop's error signals and
        updates, the W-vs-B angle, the alignment product and norm ratios; see :mod:`pyjlfa.diagnostics`.
        """
        return _diagnostics.alignment(self, X, y)

    def step(self, X, y, optimizer):
        """One update on the batch (X, y); returns the batch loss before the update."""
        opt = self._optimizer(optimizer)
        X, y = self._data(X, y)
        self.optimizer = optimizer
        loss = c_double()
        self._engine.call("fa_step", self._id(), X.ctypes.data, X.shape[0], X.shape[1], y.ctypes.data,
                          opt, ctypes.byref(loss))
        return loss.value

    def gradients(self, X, y):
        """Per layer (dW, db), shaped like (W, b), that the rule would apply (W -= lr * dW).

        Nothing changes in the model.
        """
        X, y = self._data(X, y)
        handle = self._id()
        grads = [(np.empty_like(layer.W), np.empty_like(layer.b)) for layer in self.layers]
        dW = (c_void_p * len(grads))(*(g[0].ctypes.data for g in grads))
        db = (c_void_p * len(grads))(*(g[1].ctypes.data for g in grads))
        loss = c_double()
        self._engine.call("fa_gradients", handle, X.ctypes.data, X.shape[0], X.shape[1], y.ctypes.data,
                          dW, db, ctypes.byref(loss))
        return grads

    # -- model files ---------------------------------------------------------------------------
    @property
    def epochs(self):
        """Epochs trained so far (carried by model files)."""
        epochs, rng = c_int64(), ctypes.c_uint64()
        self._engine.call("fa_state_get", self._id(), ctypes.byref(epochs), ctypes.byref(rng))
        return epochs.value

    def save(self, path, include_optimizer=False):
        """Write the model to a safetensors file that ``pyjlfa.load`` and Julia's ``load`` read.

        It holds the parameters, feedback matrices, epochs trained, the shuffling generator's
        state and what built the network; with ``include_optimizer``, the optimizer state (SGD's
        velocities) and ``self.optimizer``'s hyperparameters too, so training resumes exactly.
        The file is written next to ``path`` and renamed: ``path`` is never half-written.
        """
        from .io import save

        save(self, path, include_optimizer)

    # -- inference -----------------------------------------------------------------------------
    def evaluate(self, X, y):
        """Mean loss over (X, y), and accuracy for a classifier: {"loss": ..., "accuracy": ...}."""
        return self._evaluate(*self._data(X, y))

    def _evaluate(self, X, y):
        out = (c_double * 2)()
        self._engine.call("fa_evaluate", self._id(), X.ctypes.data, X.shape[0], X.shape[1], y.ctypes.data, out)
        return {"loss": out[0], "accuracy": out[1]} if self.loss == "cross_entropy" else {"loss": out[0]}

    def _forward(self, X, kind):
        X = self._inputs(X)
        handle = self._id()
        out = (np.empty(X.shape[0], dtype=np.int64) if kind == _LABELS
               else np.empty((X.shape[0], self.n_outputs), dtype=self.dtype))
        self._engine.call("fa_forward", handle, X.ctypes.data, X.shape[0], X.shape[1], out.ctypes.data, kind)
        return out

    def outputs(self, X):
        """The network's outputs (logits for a classifier), shape (samples, n_outputs)."""
        return self._forward(X, _OUTPUTS)

    def predict(self, X):
        """Class labels 0..k-1 for a classifier; the outputs for a regressor (mse loss)."""
        return self._forward(X, _LABELS if self.loss == "cross_entropy" else _OUTPUTS)

    def predict_proba(self, X):
        """Class probabilities (softmax of the outputs), shape (samples, n_classes)."""
        if self.loss != "cross_entropy":
            raise ValueError(f"predict_proba needs the cross_entropy loss; this network uses {self.loss!r}")
        return self._forward(X, _PROBABILITIES)


def _show_progress(label, epoch, epochs, last, width=24):
    """One bar per fit, advanced each epoch (a line per epoch when stderr is not a terminal)."""
    done = int(width * epoch / epochs)
    bar = "=" * done + ">" * (done < width) + " " * (width - done - 1)
    stats = "  ".join(f"{k} {v:.4f}" for k, v in last.items() if k != "seconds")
    line = f"{label:>4} epoch {epoch:>{len(str(epochs))}}/{epochs} [{bar[:width]}] {stats}  {last['seconds']:.2f}s"
    tty = sys.stderr.isatty()
    sys.stderr.write(("\r" + line if tty else line + "\n") + ("\n" if tty and epoch == epochs else ""))
    sys.stderr.flush()
