"""The Python face of a Julia-side network: validation at the edge, zero-copy arrays across it."""

import ctypes
import math
import os
import re
import sys
import time
from ctypes import c_double, c_int64, c_void_p
from dataclasses import dataclass
from typing import Optional

import numpy as np

from . import init as _init
from . import diagnostics as _diagnostics
from . import _schema
from ._runtime import JuliaError, engine
from .layers import Residual, _Layer, julia_chain
from .optimizers import SGD, _Optimizer

__all__ = ["Network", "Layer"]

_DTYPES = {"float32": (np.float32, 0), "float64": (np.float64, 1)}
_CONTAINERS = ("SkipConnection", "Chain")
# The names the engine accepts, from its schema (pyjlfa/_schema.py), so that a typo is refused
# before Julia starts.
_ACTIVATIONS = _schema.names("activations")
_LOSSES = _schema.names("losses")
_RULES = _schema.names("rules")
_INITIALISERS = _schema.names("initialisers")
_OUTPUTS, _PROBABILITIES, _LABELS = 0, 1, 2  # fa_forward's output kinds


@dataclass(frozen=True, repr=False)
class Layer:
    """One layer of a network, with zero-copy views of its arrays in Julia's memory (writes go
    straight to the model).

    ``path`` is its place in the list you wrote ("3", and "3.main.0" inside a :class:`Residual`),
    ``layer`` the :mod:`pyjlfa.layers` object it was built from (None for a network read from a
    file), ``kind`` the engine's layer ("Dense", "Conv", "BatchNorm", "Activation", "MaxPool",
    "MeanPool", "GlobalMeanPool", "Flatten", "SkipConnection", "PadShortcut"), ``spec`` the Julia call
    that built it and ``activation`` the activation it applies ("identity" for none);
    ``input_shape``/``output_shape`` are one sample's shapes. ``arrays`` maps each array's name to
    its view, and each is an attribute too (None where the layer has none): a Linear layer's W has
    shape (n_in, n_out), so that it computes ``X @ W + b``; a Conv2d layer's W has PyTorch's shape
    (out_channels, in_channels, kh, kw); ``b`` is None with ``bias=False``; BatchNorm has ``gamma``,
    ``beta``, ``running_mean`` and ``running_var``. B, where the rule gives the layer one, is its
    fixed feedback array (FA family: W.T's shape for a Linear layer, W's for a Conv2d layer; DFA
    family: (n_outputs, values at the layer's feedback point)). A Residual's view holds the views of
    its paths in ``main`` and ``shortcut`` (a tuple, or None for the identity).

    Parameters
    ----------
    path : str
        Its place in the list you wrote ("3"; "3.main.0" inside a Residual).
    kind : str
        The engine's layer ("Dense", "Conv", "BatchNorm", ...).
    spec : str
        The Julia call that built it.
    layer : object or None
        The :mod:`pyjlfa.layers` object it was built from (None for a network read from a file).
    activation : str
        The activation it applies ("identity" for none).
    input_shape, output_shape : tuple
        One sample's shape before and after the layer.
    arrays : dict
        Each array's name mapped to its zero-copy view.
    main, shortcut : tuple or None
        A Residual's paths (views of their layers); shortcut None is the identity.
    """

    path: str
    kind: str
    spec: str
    layer: Optional[object]
    activation: str
    input_shape: tuple
    output_shape: tuple
    arrays: dict
    main: tuple = ()
    shortcut: Optional[tuple] = None

    W = property(lambda self: self.arrays.get("W"), doc="The weights: (n_in, n_out) for Linear, (out_channels, in_channels, kh, kw) for Conv2d; None for layers without.")
    b = property(lambda self: self.arrays.get("b"), doc="The bias, or None (no bias, or a layer without parameters).")
    B = property(lambda self: self.arrays.get("B"), doc="The feedback array the rule gives this layer, or None: fixed for FA-style rules (W.T's shape for Linear, W's for Conv2d), (n_outputs, values at the point) for DFA-style rules.")
    gamma = property(lambda self: self.arrays.get("gamma"), doc="Batch norm's scale γ (one per channel or feature), or None.")
    beta = property(lambda self: self.arrays.get("beta"), doc="Batch norm's shift β, or None.")
    running_mean = property(lambda self: self.arrays.get("running_mean"), doc="Batch norm's running mean (updated in training), or None.")
    running_var = property(lambda self: self.arrays.get("running_var"), doc="Batch norm's running (unbiased) variance, or None.")

    def __repr__(self):
        arrays = ", ".join(f"{name}={a.shape} {a.dtype}" for name, a in self.arrays.items())
        what = repr(self.layer) if self.layer is not None else self.spec
        return (f"Layer({self.path}: {what}, {self.input_shape} -> {self.output_shape}" + (f", {arrays}" if arrays else "") + ")")


def _objects_by_path(layers, prefix=""):
    """(path, layer object) for every layer of a list written by the user, nested ones too."""
    for k, layer in enumerate(layers):
        path = f"{prefix}{k}"
        yield path, layer
        if isinstance(layer, Residual):
            yield from _objects_by_path(layer.main, f"{path}.main.")
            if layer.shortcut == "pad":
                yield f"{path}.shortcut", None
            elif layer.shortcut is not None:
                yield from _objects_by_path(layer.shortcut, f"{path}.shortcut.")


# A layer as Julia's messages name it: "layer 3.main.0, Conv((3, 3), 16 => 16)" or "layer 3 (Dense(...))".
_MENTION = re.compile(r"\blayer (\d+(?:\.(?:main|shortcut)(?:\.\d+)?)*)(?:, | \()")


def _call_end(text, start):
    """Where the Julia call (``Name(...)``, or a bare name such as ``relu``) at ``text[start]`` ends."""
    i = start
    while i < len(text) and (text[i].isalnum() or text[i] == "_"):
        i += 1
    if i < len(text) and text[i] == "(":
        depth = 0
        for j in range(i, len(text)):
            depth += {"(": 1, ")": -1}.get(text[j], 0)
            if depth == 0:
                return j + 1
    return i


def _in_python_terms(error, objects):
    """``error`` (from Julia) with each layer it names by path shown as the Python layer written
    there, not as Julia's call; positions are already the list's (from 0), shapes NumPy's order."""
    message, out, pos = str(error), [], 0
    for m in _MENTION.finditer(message):
        layer = objects.get(m.group(1))
        end = _call_end(message, m.end())
        if layer is None or end == m.end():
            continue
        out += [message[pos:m.end()], "Residual" if isinstance(layer, Residual) else repr(layer)]
        pos = end
    if not out:
        return error
    return type(error)("".join(out) + message[pos:])


def _leaf_count(layers):
    """How many layers a list holds, counting those inside residual blocks and not the blocks."""
    return sum(1 for _, layer in _objects_by_path(layers) if not isinstance(layer, Residual))


def _python_shape(text):
    """Julia's comma-separated dimensions -> NumPy's (reversed) shape tuple."""
    return tuple(int(d) for d in reversed(text.split(","))) if text else None


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


def _choice(value, name, allowed, fold=None):
    """``value`` if it is one of ``allowed`` (after ``fold``, e.g. rule names' lower-casing)."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, one of {', '.join(map(repr, allowed))}; got {value!r}")
    if (fold(value) if fold else value) not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(map(repr, allowed))}")
    return fold(value) if fold else value


class Network:
    """A network whose forward, feedback and update arithmetic runs in Julia.

    Parameters
    ----------
    layers : a list of layers from :mod:`pyjlfa.layers` (``[Conv2d(1, 6, 5), ReLU(), MaxPool2d(2),
        ..., Flatten(), Linear(120, 84), ReLU(), Linear(84, 10)]``), or, as a dense shorthand, the
        layer widths, inputs first (``[784, 256, 256, 10]``; hidden layers apply ``activation``).
        The last layer must be a Linear with no activation: softmax lives in the loss.
    activation : the dense shorthand's hidden activation: "tanh", "sigmoid", "relu", "leaky_relu"
        or "identity" (a layer list gives each layer's activation as a layer instead).
    rule : how layers get their error signal: "bp", "fa", "dfa", "usf", "frsf", "brsf", "kp",
        "wm", "drtp", "sdfa" or "shallow" (see docs/rules.md; any case: "uSF" is "usf"), or a
        rule value with parameters such as ``pyjlfa.rules.WeightMirror(steps=2)``.
    loss : "cross_entropy" (softmax, integer labels 0..k-1) or "mse" (half squared error, real targets).
    seed : seed of the forward weights, the shuffling, dropout and brSF's redraws.
    feedback_seed : seed of the feedback arrays (default: ``seed``), so one network can be
        trained with different feedback draws.
    dtype : "float32" or "float64", for parameters and all arithmetic.
    init : initialiser of the forward weights (a name or a ``pyjlfa.init`` value).
    feedback : initialiser of the feedback arrays: a name, a ``pyjlfa.init`` value, a NumPy
        array (C-contiguous, of the network's dtype and of the shape the rule gives that layer's
        B: used as B itself, not copied), or a list with one of these per layer (None for layers
        without B).
    dropout : probability of dropping a unit of a layer's output during training: one number for
        every Dense/Conv layer but the last, or a list with one per layer but the last.
    input_shape : one sample's shape: (channels, height, width) for images, or (features,).
        A layer list that starts with Linear may leave it out.
    sizes : the dense shorthand's widths under their own name, keyword only (give ``layers`` or
        ``sizes``, not both).

    Notes
    -----
    Inputs are (samples, *input_shape) arrays. One that is C-contiguous and of the network's dtype
    is read in place by Julia; anything else is converted once per call (one copy of X).
    """

    def __init__(self, layers=None, activation="tanh", rule="fa", loss="cross_entropy", seed=0,
                 feedback_seed=None, dtype="float32", init="glorot_uniform", feedback="glorot_uniform",
                 dropout=0.0, input_shape=None, *, sizes=None):
        if sizes is not None and layers is not None:
            raise TypeError("give the layers, or sizes for the dense shorthand, not both")
        what = "sizes" if sizes is not None else "layers"
        layers = sizes if sizes is not None else layers
        if isinstance(layers, (str, bytes)) or not hasattr(layers, "__len__") or len(layers) == 0:
            raise ValueError(f"{what} must be a list of pyjlfa.layers or of layer widths (sizes), got {layers!r}")
        if sizes is not None or all(isinstance(s, (int, float, np.number)) for s in layers):
            if len(layers) < 2:
                raise ValueError(f"sizes must list at least an input and an output width, got {layers!r}")
            self.sizes = tuple(_positive_int(s, "sizes") for s in layers)
            if input_shape is not None and tuple(np.atleast_1d(input_shape)) != self.sizes[:1]:
                raise ValueError(f"input_shape {input_shape!r} disagrees with the first width {self.sizes[0]}")
            act = _choice(activation, "activation", _ACTIVATIONS)
            fold = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid", "leaky_relu": "leakyrelu",
                    "leakyrelu": "leakyrelu", "identity": None}[act]
            L = len(self.sizes) - 1
            chain = [f"Dense({self.sizes[k]} => {self.sizes[k + 1]}" + (f", {fold}" if fold and k < L - 1 else "") + ")"
                     for k in range(L)]
            self.activation = act
            julia_input = self.sizes[:1]
        else:
            self.sizes = None
            self.activation = None
            chain = julia_chain(layers)
            julia_input = self._input_shape(input_shape, layers)
        self._build(chain, julia_input, rule, loss, seed, feedback_seed, dtype, init, feedback, dropout,
                    layer_objects=None if self.sizes is not None else list(layers),
                    n_leaves=len(chain) if self.sizes is not None else _leaf_count(layers))

    @classmethod
    def _from_julia(cls, chain, julia_input, **kwargs):
        """A network from the engine's own layer calls (model files record those)."""
        net = cls.__new__(cls)
        net._build(list(chain), tuple(julia_input), **kwargs)
        net.sizes, net.activation = net._dense_shorthand()
        return net

    def _build(self, chain, julia_input, rule="fa", loss="cross_entropy", seed=0, feedback_seed=None,
               dtype="float32", init="glorot_uniform", feedback="glorot_uniform", dropout=0.0, max_params=None,
               layer_objects=None, n_leaves=None):
        try:
            dtype_name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
        except TypeError:
            raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from None
        self.dtype = np.dtype(_DTYPES[_choice(dtype_name, "dtype", tuple(_DTYPES))][0])
        seed = self._seed(seed, "seed")
        feedback_seed = seed if feedback_seed is None else self._seed(feedback_seed, "feedback_seed")
        self.loss = _choice(loss, "loss", _LOSSES)
        self.rule_value = rule  # the name, or the rule value with its parameters
        if hasattr(rule, "_spec") and hasattr(rule, "name"):
            self.rule, rule_spec = rule.name, rule._spec()
        else:
            self.rule = rule_spec = self.rule_value = _choice(rule, "rule", _RULES, fold=_schema.rule_name)
        if _schema.entry("rules", self.rule)["needs_classes"] and not _schema.entry("losses", self.loss)["classes"]:
            raise ValueError(f"rule {self.rule!r} projects one-hot class targets: it needs loss='cross_entropy'")
        self.seed, self.feedback_seed = seed, feedback_seed
        self.init, self.feedback = init, feedback  # recorded as given (arrays are the model's B)
        init_spec = self._initialiser(init, "init")
        # n_leaves: the layers per-layer lists follow (None for a chain read from a file: the engine counts)
        feedback_specs, given = self._feedback(feedback, n_leaves)
        has_feedback = _schema.family(self.rule) in ("fa-style", "dfa-style")
        if not has_feedback and any(g is not None for g in given):
            raise ValueError(f"feedback arrays were given, but rule {self.rule!r} has no feedback arrays")
        if not has_feedback and not (isinstance(feedback, str) and feedback == "glorot_uniform"):
            import warnings
            warnings.warn(f"rule {self.rule!r} has no feedback arrays: feedback={feedback!r} is ignored",
                          UserWarning, stacklevel=3)
        rates = self._dropout(dropout, n_leaves)

        spec = "\n".join([f"loss={self.loss}", f"rule={rule_spec}", f"seed={seed}", f"feedback_seed={feedback_seed}",
                          f"init={init_spec}", "feedback=" + feedback_specs,
                          "dropout=" + (repr(rates) if isinstance(rates, float) else "[" + ", ".join(map(repr, rates)) + "]")]
                         + ([] if max_params is None else [f"max_params={int(max_params)}"]))
        eng = engine()  # Julia starts here, after every check Python can make
        out = c_int64()
        shape = (c_int64 * len(julia_input))(*julia_input)
        pointers, dims = None, None   # no arrays given as B
        if any(B is not None for B in given):
            pointers = (c_void_p * len(given))(*(None if B is None else B.ctypes.data for B in given))
            dims = (c_int64 * (5 * len(given)))()
            for k, B in enumerate(given):  # the host's shape, in Julia's order: the engine checks it
                if B is not None:
                    dims[5 * k] = B.ndim
                    for j, n in enumerate(reversed(B.shape)):
                        dims[5 * k + 1 + j] = n
        try:
            eng.call("fa_new", ctypes.byref(out), _DTYPES[dtype_name][1], len(julia_input), shape,
                     "\n".join(chain).encode(), spec.encode(), pointers, dims)
        except JuliaError as e:
            raise _in_python_terms(e, dict(_objects_by_path(layer_objects or []))) from None
        self._engine = eng
        self._handle = _Handle(eng, out.value, keepalive=tuple(B for B in given if B is not None))
        self.dropout = tuple(rates) if not isinstance(rates, float) else rates
        self._views(layer_objects)
        self.training = True  # the mode gradients() uses (train() / eval())
        self.optimizer = None  # the optimizer the next fit continues with (recorded by save)
        self.history = None  # the history of the last fit, also when Ctrl-C cut it short

    def _views(self, layer_objects):
        """The layer views from the engine's description of every node (fa_nodes): ``layers`` in
        the order written, ``_named`` depth first, and ``_leaves`` (the layers per-layer lists follow)."""
        text = ctypes.string_at(self._engine._fn["fa_nodes"](self._handle.id)).decode()
        objects = dict(_objects_by_path(layer_objects)) if layer_objects is not None else {}
        rows = [line.split("\t") for line in text.split("\n") if line]
        views, children = {}, {}
        for k, (path, kind, spec, activation, ins, outs, arrays) in reversed(list(enumerate(rows))):
            arrays = {name: self._array(k, name) for name in (a.split(":")[0] for a in arrays.split(";") if a)}
            activation = "leaky_relu" if activation == "leakyrelu" else activation  # Python's spelling
            kids = children.get(path, {})
            main = kids.get("main")
            main = () if main is None else main.main if main.kind == "Chain" else (main,)
            shortcut = kids.get("shortcut")
            shortcut = None if shortcut is None else shortcut.main if shortcut.kind == "Chain" else (shortcut,)
            if kind == "Chain":   # a path's list of layers: held by the view of its container
                main = tuple(kids[str(i)] for i in range(len(kids)))
            views[path] = view = Layer(path, kind, spec, objects.get(path), activation, _python_shape(ins),
                                       _python_shape(outs), arrays, main, shortcut)
            parent, _, name = path.rpartition(".")
            children.setdefault(parent, {})[name] = view
        top = children.get("", {})
        self.layers = tuple(top[str(i)] for i in range(len(top)))
        self._nodes = tuple((path, views[path]) for path, *_ in rows)   # fa_nodes order: what the ABI indexes
        self._named = tuple((path, view) for path, view in self._nodes if view.kind != "Chain")
        self._leaves = tuple(v for _, v in self._named if v.kind not in _CONTAINERS)
        self.input_shape = self.layers[0].input_shape

    def _call(self, name, *args):
        """An entry point on this network; Julia's errors name its layers as they were written."""
        try:
            self._engine.call(name, *args)
        except JuliaError as e:
            raise _in_python_terms(e, {path: view.layer for path, view in self._named}) from None

    def named_layers(self):
        """Every layer as (path, layer) pairs, depth first, a Residual before the layers inside it
        (PyTorch's ``named_modules`` order): "0", "1", ..., "3", "3.main.0", ..., "3.shortcut.0"."""
        return list(self._named)

    def _dense_shorthand(self):
        """(sizes, activation) when the network is a dense stack with one hidden activation (what the
        shorthand builds: a loaded file's network looks the same), else (None, None)."""
        layers = self._leaves
        hidden = {layer.activation for layer in layers[:-1]}
        if all(layer.kind == "Dense" for layer in layers) and len(hidden) <= 1:
            return (layers[0].input_shape[0],) + tuple(l.output_shape[0] for l in layers), (hidden.pop() if hidden else "tanh")
        return None, None

    @staticmethod
    def _input_shape(input_shape, layers):
        """(channels, height, width) or (features,) -> the engine's order."""
        if input_shape is None:
            first = layers[0]
            if hasattr(first, "in_features"):
                return (first.in_features,)
            raise ValueError("input_shape is needed: one sample's (channels, height, width), e.g. input_shape=(1, 28, 28)")
        shape = (input_shape,) if isinstance(input_shape, (int, np.integer)) else tuple(input_shape)
        if len(shape) not in (1, 3) or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1
                                                for d in shape):
            raise ValueError(f"input_shape must be (channels, height, width) or (features,) with positive sizes, got {input_shape!r}")
        return tuple(int(d) for d in reversed(shape))

    @staticmethod
    def _initialiser(value, name):
        if isinstance(value, _init.Initialiser):
            return value._spec()
        if isinstance(value, str):
            return _choice(value, name, _INITIALISERS)
        raise TypeError(f"{name} must be an initialiser name such as 'glorot_uniform' or a pyjlfa.init value, got {value!r}")

    def feedback_shapes(self):
        """The shape of each layer's B under this network's rule (None where it has none), in
        ``named_layers()`` order."""
        return [None if layer.B is None else layer.B.shape for _, layer in self._named]

    def _feedback(self, feedback, n):
        """The feedback initialisers' spec for the engine (one, or a list with one per layer), and
        per layer the array given as B (or None; an empty list when none can be given)."""
        if not isinstance(feedback, (list, tuple)):
            if isinstance(feedback, np.ndarray):
                raise TypeError("feedback as an array needs a list with one entry per layer (None where none is given)")
            return self._initialiser(feedback, "feedback"), []
        entries = list(feedback)
        if n is not None and len(entries) != n:
            raise ValueError(f"feedback lists {len(entries)} entries; the network has {n} layers")
        specs, given = [], []
        for k, entry in enumerate(entries):
            name = f"feedback[{k}]"
            if isinstance(entry, np.ndarray):
                if self.rule == "brsf":
                    raise ValueError(f"{name}: rule 'brsf' redraws B every batch, so it cannot use a given array")
                if entry.dtype != self.dtype or not entry.flags.c_contiguous or not entry.flags.writeable:
                    raise TypeError(f"{name} is used in place as B, so it must be a writeable C-contiguous "
                                    f"{self.dtype.name} array; got {entry.dtype}, "
                                    f"{'C' if entry.flags.c_contiguous else 'non-C'}-ordered "
                                    f"(convert once with np.ascontiguousarray(B, dtype='{self.dtype.name}'))")
                if entry.ndim not in (2, 4):
                    raise ValueError(f"{name} must be a 2-D (dense) or 4-D (conv kernel) array, got shape {entry.shape}")
                if not np.isfinite(entry).all():
                    raise ValueError(f"{name} contains NaN or Inf")
                specs.append("zeros()")
                given.append(entry)
            elif entry is None:
                specs.append("nothing")   # the engine checks that this layer has no B
                given.append(None)
            else:
                specs.append(self._initialiser(entry, name))
                given.append(None)
        return "[" + ", ".join(specs) + "]", given

    @staticmethod
    def _dropout(dropout, n):
        if not isinstance(dropout, (list, tuple)):
            if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
                raise ValueError(f"dropout rates must be numbers in [0, 1), got {dropout!r}")
            return float(dropout)
        if n is not None and len(dropout) != n - 1:
            raise ValueError(f"dropout lists {len(dropout)} rates; expected one per layer but the last ({n - 1})")
        for p in dropout:
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
                raise ValueError(f"dropout rates must be numbers in [0, 1), got {p!r}")
        return [float(p) for p in dropout]

    @staticmethod
    def _seed(value, name):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 2**64:
            raise ValueError(f"{name} must be an integer in [0, 2**64), got {value!r}")
        return int(value)

    def _array(self, k, name):
        """A zero-copy view of array ``name`` of node k (fa_nodes order), or None."""
        address, dims = c_void_p(), (c_int64 * 5)()
        self._engine.call("fa_array", self._handle.id, k + 1, name.encode(), ctypes.byref(address), dims)
        if not address.value:
            return None
        # Julia's column-major dimensions, reversed, are NumPy's row-major shape of the same memory.
        shape = tuple(dims[j] for j in range(dims[0], 0, -1))
        return np.asarray(_JuliaBuffer(self._handle, address.value, shape, self.dtype))

    @property
    def n_features(self):
        """Values per sample: the product of input_shape."""
        return math.prod(self.input_shape)   # not np.prod: 3.5 µs of each step call (math.prod: 0.05)

    @property
    def n_outputs(self):
        """Values per output sample (the classes of a classifier)."""
        return self.layers[-1].output_shape[0]

    def train(self):
        """Training mode for :meth:`gradients` (batch norm uses the batch's statistics; the default).
        ``fit`` and ``step`` always train, and ``predict``/``evaluate`` always use the running
        statistics, whatever the mode. Returns the network."""
        self._engine.call("fa_set_mode", self._id(), 1)
        self.training = True
        return self

    def eval(self):
        """Evaluation mode for :meth:`gradients` (batch norm uses its running statistics). Returns the network."""
        self._engine.call("fa_set_mode", self._id(), 0)
        self.training = False
        return self

    def __repr__(self):
        rule = self.rule_value if hasattr(self.rule_value, "_spec") else self.rule
        head = (f"[{', '.join(map(str, self.sizes))}], activation={self.activation!r}" if self.sizes is not None
                else f"[{', '.join(repr(l.layer) if l.layer is not None else l.spec for l in self.layers)}], "
                     f"input_shape={self.input_shape}")
        closed = "" if self._handle is not None else ", closed"
        return (f"Network({head}, rule={rule!r}, loss={self.loss!r}, seed={self.seed}, "
                f"dtype={self.dtype.name!r}{closed})")

    # -- lifetime ----------------------------------------------------------------------------
    def close(self):
        """Release the Julia model. Views of its parameters that you still hold stay valid;
        everything else says that the network is closed."""
        self._handle = None
        self._layers = None

    @property
    def layers(self):
        """The network's layers in order (:class:`Layer`: kind, shapes, zero-copy W, b, B)."""
        if self._layers is None:
            raise ValueError("this Network is closed")
        return self._layers

    @layers.setter
    def layers(self, value):
        self._layers = value

    def __enter__(self):
        return self

    # -- pickling: through the model file's bytes (parameters, feedback, optimizer state, generator) --
    def __reduce__(self):
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "model.safetensors")
            self.save(path, include_optimizer=True)
            with open(path, "rb") as f:
                return _from_model_bytes, (f.read(),)

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
        want = self.input_shape
        if len(want) == 1:
            if X.ndim != 2:
                raise ValueError(f"{name} must be 2-D (samples, features), got shape {X.shape}")
            if X.shape[1] != self.n_features:
                raise ValueError(f"{name} has {X.shape[1]} features per sample; this network expects {self.n_features}")
        elif X.shape[1:] != want:
            raise ValueError(f"{name} has shape {X.shape}; this network expects (samples, {', '.join(map(str, want))}) "
                             "images, (samples, channels, height, width)")
        if X.shape[0] == 0:
            raise ValueError(f"{name} is empty: it has 0 samples")
        with np.errstate(over="ignore"):  # an overflowing cast is reported as Inf just below
            X = np.ascontiguousarray(X, dtype=self.dtype)  # the same array when already suitable
        if not np.isfinite(X).all():
            where = tuple(int(i) for i in np.argwhere(~np.isfinite(X))[0])
            raise ValueError(f"{name} contains NaN or Inf (first at sample {where[0]}, "
                             + (f"feature {where[1]})" if len(where) == 2 else f"index {where[1:]})"))
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
        if optimizer.layer_lr is not None and len(optimizer.layer_lr) != len(self._leaves):
            raise ValueError(f"optimizer layer_lr lists {len(optimizer.layer_lr)} multipliers; "
                             f"the network has {len(self._leaves)} layers")
        return optimizer._encoded_spec()

    # -- training ------------------------------------------------------------------------------
    def fit(self, X, y, epochs=1, batch_size=32, optimizer=None, shuffle=True, validation_data=None,
            progress=False, track_alignment=None, on_epoch_end=None):
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

        ``on_epoch_end(net, history)`` is called after each epoch (after its validation), e.g. to
        save a checkpoint: ``on_epoch_end=lambda net, h: net.save("ckpt.safetensors", True)``.

        Without ``optimizer``, training continues with the network's own: the one the last
        ``fit``/``step`` used, or the one a loaded model file recorded (its state, such as momentum,
        carries on); a new network starts with ``SGD()`` (lr 0.01). A mean epoch loss 100 times
        above chance level (cross-entropy) or above the first epoch's (mse) gives a warning that names
        the learning rate.

        Parameters
        ----------
        X : ndarray
            Samples, shape (n, *input_shape); read in place when C-contiguous and of the network's dtype.
        y : ndarray
            Integer class labels in [0, n_outputs) (cross_entropy), or targets of shape (n, n_outputs) (mse).
        epochs : int
            Passes over the data.
        batch_size : int
            Samples per update (the last batch of an epoch may be smaller).
        optimizer : SGD, Adam or AdamW, optional
            Default: the network's own (see above).
        shuffle : bool
            Shuffle the samples every epoch (with the model's own generator).
        validation_data : tuple, optional
            ``(X_val, y_val)``, evaluated after every epoch.
        progress : bool
            Draw a progress bar on stderr.
        track_alignment : int, optional
            Record the alignment diagnostics every this many batches.
        on_epoch_end : callable, optional
            Called as ``on_epoch_end(net, history)`` after each epoch.

        Returns
        -------
        dict
            The history (see above).
        """
        epochs = _positive_int(epochs, "epochs")
        batch_size = _positive_int(batch_size, "batch_size")
        if on_epoch_end is not None and not callable(on_epoch_end):
            raise TypeError(f"on_epoch_end must be a function called as on_epoch_end(net, history), got {on_epoch_end!r}")
        optimizer = optimizer if optimizer is not None else self.optimizer if self.optimizer is not None else SGD()
        opt = self._optimizer(optimizer)
        X, y = self._data(X, y)
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be a pair (X_val, y_val)")
            validation = self._data(*validation_data, names=("validation_data[0]", "validation_data[1]"))
        handle = self._id()
        self.optimizer = optimizer
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
                self._call("fa_train_epoch", handle, X.ctypes.data, X.shape[0], self.n_features, y.ctypes.data,
                                  batch_size, int(bool(shuffle)), opt, out)
                history["loss"].append(out[0])
                _warn_if_growing(history["loss"], np.log(self.n_outputs) if classifier else None, optimizer)
                if classifier:
                    history["accuracy"].append(out[1])
                history["seconds"].append(time.perf_counter() - start)
                if tracker:
                    tracker.collect(-(-X.shape[0] // batch_size))
                if validation_data is not None:
                    for k, v in self._evaluate(*validation).items():
                        history[f"val_{k}"].append(v)
                if on_epoch_end is not None:
                    on_epoch_end(self, history)
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

        Parameters
        ----------
        X : ndarray
            Samples, shape (n, *input_shape); read in place when C-contiguous and of the network's dtype.
        y : ndarray
            Integer class labels in [0, n_outputs) (cross_entropy), or targets of shape (n, n_outputs) (mse).

        Returns
        -------
        dict
            One list per diagnostic, one entry per layer.
        """
        return _diagnostics.alignment(self, X, y)

    def step(self, X, y, optimizer):
        """One update on the batch (X, y); returns the batch loss before the update.

        Parameters
        ----------
        X : ndarray
            Samples, shape (n, *input_shape); read in place when C-contiguous and of the network's dtype.
        y : ndarray
            Integer class labels in [0, n_outputs) (cross_entropy), or targets of shape (n, n_outputs) (mse).
        optimizer : SGD, Adam or AdamW
            The update to apply.

        Returns
        -------
        float
            The batch's mean loss.
        """
        opt = self._optimizer(optimizer)
        X, y = self._data(X, y)
        self.optimizer = optimizer
        loss = c_double()
        self._call("fa_step", self._id(), X.ctypes.data, X.shape[0], self.n_features, y.ctypes.data,
                          opt, ctypes.byref(loss))
        return loss.value

    def gradients(self, X, y):
        """Per layer, in :meth:`named_layers` order, the update the rule would apply (p -= lr * dp),
        as a pair shaped like the layer's parameters: (dW, db) for Linear and Conv2d (db None with
        ``bias=False``), (dgamma, dbeta) for batch norm, (None, None) for layers without parameters.
        In training mode (the default) batch norm uses the batch's statistics, in evaluation mode
        (:meth:`eval`) its running ones; dropout stays off. Nothing changes in the model.

        Parameters
        ----------
        X : ndarray
            Samples, shape (n, *input_shape); read in place when C-contiguous and of the network's dtype.
        y : ndarray
            Integer class labels in [0, n_outputs) (cross_entropy), or targets of shape (n, n_outputs) (mse).

        Returns
        -------
        list of tuple
            One pair of arrays (or Nones) per layer.
        """
        X, y = self._data(X, y)
        loss = c_double()
        self._call("fa_gradients", self._id(), X.ctypes.data, X.shape[0], self.n_features, y.ctypes.data,
                          ctypes.byref(loss))
        index = {path: k for k, (path, _) in enumerate(self._nodes)}
        grads = []
        for path, layer in self._named:   # the engine has a gradient ("dW", "dgamma", ...) for each trained array
            found = [g for g in (self._array(index[path], "d" + name) for name in layer.arrays if name != "B") if g is not None]
            if layer.W is not None and layer.b is None:   # a Conv2d or Linear without bias: (dW, None)
                found.append(None)
            grads.append(tuple(None if g is None else g.copy() for g in found) if found else (None, None))
        return grads

    def input_gradient(self, X, y, through="weights", out=None):
        """The gradient of the mean loss over (X, y) with respect to X, shape of X, with the network
        as it predicts (batch norm's running statistics, no dropout). Nothing in the model changes.

        ``through="weights"``: the true gradient, through every layer's W, whatever the rule.
        ``through="feedback"``: the error the network's own rule carries back, continued to the
        input: for "bp" the same as "weights"; for the FA family each layer's B in its W's place
        (the first weight layer has no B and carries with its W); for DFA, DRTP and sDFA the signal
        projected to the first feedback point, carried back through the layers after the first
        weight layer, then through its W; zero for "shallow". See docs/robustness.md.

        ``out``: a C-contiguous array of X's shape and the network's dtype that Julia writes the
        gradient into (returned); by default a new one.

        Parameters
        ----------
        X : ndarray
            Inputs, shape (n, *input_shape).
        y : array_like
            Labels or targets, as :meth:`fit` takes them.
        through : {"weights", "feedback"}
            The true gradient, or the one the rule's own feedback carries.
        out : ndarray or None
            Where Julia writes the gradient.
        """
        through = _choice(through, "through", ("weights", "feedback"))
        X, y = self._data(X, y)
        if out is None:
            out = np.empty_like(X)
        elif not isinstance(out, np.ndarray) or out.shape != X.shape or out.dtype != self.dtype \
                or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(f"out must be a writeable C-contiguous {self.dtype.name} array of X's shape {X.shape}")
        self._call("fa_input_gradient", self._id(), X.ctypes.data, X.shape[0], self.n_features, y.ctypes.data,
                   0 if through == "weights" else 1, out.ctypes.data)
        return out

    def _node_list(self):
        """Every node as (path, view) in the engine's order (fa_nodes), path lists included."""
        if self._handle is None:
            raise ValueError("this Network is closed")
        return self._nodes

    # -- model files ---------------------------------------------------------------------------
    @property
    def epochs(self):
        """Epochs trained so far (carried by model files)."""
        return self._state()[0]

    def _state(self):
        """(epochs trained, the shuffling generator's state, optimizer updates so far)."""
        epochs, rng, steps = c_int64(), ctypes.c_uint64(), c_int64()
        self._engine.call("fa_state_get", self._id(), ctypes.byref(epochs), ctypes.byref(rng), ctypes.byref(steps))
        return epochs.value, rng.value, steps.value

    def save(self, path, include_optimizer=False):
        """Write the model to a safetensors file that ``pyjlfa.load`` and Julia's ``load`` read.

        It holds the parameters, feedback matrices, epochs trained, the shuffling generator's
        state and what built the network; with ``include_optimizer``, the optimizer state (SGD's
        velocities) and ``self.optimizer``'s hyperparameters too, so training resumes exactly.
        The file is written next to ``path`` and renamed: ``path`` is never half-written.

        Parameters
        ----------
        path : str or os.PathLike
            The file to write.
        include_optimizer : bool
            Also save the optimizer's state and hyperparameters.
        """
        from .io import save

        save(self, path, include_optimizer)

    # -- inference -----------------------------------------------------------------------------
    def evaluate(self, X, y):
        """Mean loss over (X, y), and accuracy for a classifier: {"loss": ..., "accuracy": ...}.

        Parameters
        ----------
        X : ndarray
            Samples, shape (n, *input_shape); read in place when C-contiguous and of the network's dtype.
        y : ndarray
            Integer class labels in [0, n_outputs) (cross_entropy), or targets of shape (n, n_outputs) (mse).

        Returns
        -------
        dict
            ``{"loss": ..., "accuracy": ...}`` (no accuracy under mse).
        """
        return self._evaluate(*self._data(X, y))

    def _evaluate(self, X, y):
        out = (c_double * 2)()
        self._call("fa_evaluate", self._id(), X.ctypes.data, X.shape[0], self.n_features, y.ctypes.data, out)
        return {"loss": out[0], "accuracy": out[1]} if self.loss == "cross_entropy" else {"loss": out[0]}

    def _forward(self, X, kind):
        X = self._inputs(X)
        handle = self._id()
        out = (np.empty(X.shape[0], dtype=np.int64) if kind == _LABELS
               else np.empty((X.shape[0], self.n_outputs), dtype=self.dtype))
        self._call("fa_forward", handle, X.ctypes.data, X.shape[0], self.n_features, out.ctypes.data, kind)
        return out

    def outputs(self, X):
        """The network's outputs (logits for a classifier), shape (samples, n_outputs).

        Parameters
        ----------
        X : ndarray
            Samples, shape (n, *input_shape); read in place when C-contiguous and of the network's dtype.

        Returns
        -------
        ndarray
        """
        return self._forward(X, _OUTPUTS)

    def predict(self, X):
        """Class labels 0..k-1 for a classifier; the outputs for a regressor (mse loss).

        Parameters
        ----------
        X : ndarray
            Samples, shape (n, *input_shape); read in place when C-contiguous and of the network's dtype.

        Returns
        -------
        ndarray
            Shape (n,), int64 labels; or (n, n_outputs) under mse.
        """
        return self._forward(X, _LABELS if self.loss == "cross_entropy" else _OUTPUTS)

    def predict_proba(self, X):
        """Class probabilities (softmax of the outputs), shape (samples, n_classes).

        Parameters
        ----------
        X : ndarray
            Samples, shape (n, *input_shape); read in place when C-contiguous and of the network's dtype.

        Returns
        -------
        ndarray
            Shape (n, n_classes); each row sums to 1.
        """
        if self.loss != "cross_entropy":
            raise ValueError(f"predict_proba needs the cross_entropy loss; this network uses {self.loss!r}")
        return self._forward(X, _PROBABILITIES)


def _from_model_bytes(data):
    """A network from the bytes of a model file (how pickled networks come back)."""
    import tempfile

    from .io import load

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.safetensors")
        with open(path, "wb") as f:
            f.write(data)
        return load(path)


def _warn_if_growing(losses, chance, optimizer):
    """Warn once per fit when the mean loss has grown a hundredfold: a finite loss that large
    means training is blowing up without reaching Inf (and so without a DivergenceError)."""
    reference = chance if chance is not None else losses[0]
    if np.isfinite(losses[-1]) and reference > 0 and losses[-1] > 100 * reference and \
            not any(x > 100 * reference for x in losses[:-1]):
        import warnings
        what = "a uniform guess" if chance is not None else "the first epoch"
        warnings.warn(f"the mean training loss of epoch {len(losses)} is {losses[-1]:.4g}, more than 100 times "
                      f"that of {what} ({reference:.4g}): the learning rate ({optimizer.lr:g}) is probably too "
                      "large", RuntimeWarning, stacklevel=3)


def _show_progress(label, epoch, epochs, last, width=24):
    """One bar per fit, advanced each epoch (a line per epoch when stderr is not a terminal)."""
    done = int(width * epoch / epochs)
    bar = "=" * done + ">" * (done < width) + " " * (width - done - 1)
    stats = "  ".join(f"{k} {v:.4f}" for k, v in last.items() if k != "seconds")
    line = f"{label:>4} epoch {epoch:>{len(str(epochs))}}/{epochs} [{bar[:width]}] {stats}  {last['seconds']:.2f}s"
    tty = sys.stderr.isatty()
    sys.stderr.write(("\r" + line if tty else line + "\n") + ("\n" if tty and epoch == epochs else ""))
    sys.stderr.flush()
