"""Model files: one safetensors file that Python and Julia both read and write.

The container (header length, JSON header with each tensor's dtype, shape and data offsets, raw
little-endian data) is pyjlfa._safetensors; its JSON rules are pyjlfa._json. This module says what a
pyjlfa file means.

Tensors are stored in the shape Python sees, named by each layer's path ("3", "3.main.0"; see
``Network.named_layers``): ``layers.<path>.W`` ((n_in, n_out) dense, (out, in, kh, kw) conv),
``layers.<path>.b``, batch norm's ``.gamma``, ``.beta``, ``.running_mean``, ``.running_var``, and
``.B`` the feedback array where the rule has one; with the optimizer state,
``optimizer.<slot>.<path>.<name>`` for every trained array (SGD's slot is ``velocity``, Adam's
``first_moment`` and ``second_moment``; ``.B`` for Kolen-Pollack). The ``__metadata__`` strings say
how to rebuild the network: format, format_version ("3"; versions 1 and 2 still load), input (one
sample's shape in the engine's order) and chain (the engine's layer calls, one per item of the list
the network was built from, containers with theirs nested; a JSON list), dtype, loss, rule and rule_params, init/feedback_init and their
params, dropout, seed, feedback_seed, epochs, rng_state (the network generator, so that shuffling
resumes exactly), optimizer, optimizer_params, optimizer_slots and optimizer_steps (with the
optimizer state), library_version. Version 1 had sizes and activation instead of input and chain.

docs/model-format.md is the contract, which both readers enforce. This module implements the
format with the standard library and NumPy only, independently of the Julia package's
``save``/``load`` (julia/FeedbackAlignment/src/modelfile.jl); the tests cross-read the two.
Parameters move without intermediate copies: tensors are written from, and read straight into,
the Julia-owned parameter buffers.
"""

import ctypes
import os
import sys
import unicodedata
from ctypes import c_int64, c_void_p

import numpy as np

from . import _schema
from ._json import _json, _parse_json
from ._safetensors import MAX_HEADER_BYTES, ModelFileError, _is_count, _read_header, _write_safetensors

__all__ = ["ModelFileError", "save", "load", "read_metadata", "FORMAT", "FORMAT_VERSION"]

FORMAT = "pyjlfa-safetensors"
FORMAT_VERSION = "3"
_READABLE_VERSIONS = ("1", "2", "3")
# dtype name in the metadata -> (safetensors dtype, little-endian NumPy dtype)
_DTYPES = {"float32": ("F32", np.dtype("<f4")), "float64": ("F64", np.dtype("<f8"))}
_DEFAULT_INIT = ("glorot_uniform", {"gain": 1.0})  # what the engine builds every network with today


def _optimizer_slots():
    """{state kind: its slot names} of the optimizers whose state files store (one array per W, b,
    B), from the engine's schema: "sgd" and "adam" (AdamW's state is Adam's)."""
    return {o["state"]: tuple(o["state_slots"]) for o in _schema.live()["optimizers"]}


def _path(path):
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


# ------------------------------------------------------------------------------------------------
# Writing

def _optimizer_view(net, kind, create, slot, node, name):
    """A NumPy view of Julia's optimizer state array for array ``name`` of node ``node`` (fa_nodes
    order), or None when the network holds none."""
    from .network import _JuliaBuffer

    address, dims = c_void_p(), (c_int64 * 5)()
    net._engine.call("fa_optstate", net._id(), kind.encode(), int(create), slot, node + 1, name.encode(),
                     ctypes.byref(address), dims)
    if not address.value:
        return None
    shape = tuple(dims[j] for j in range(dims[0], 0, -1))  # Julia's column-major -> row-major
    return np.asarray(_JuliaBuffer(net._handle, address.value, shape, net.dtype))


def _trained(layer):
    """The names of a layer's arrays that an optimizer updates (B only under Kolen-Pollack)."""
    return [name for name in layer.arrays if name not in ("running_mean", "running_var")]


def _state_views(net, kind, create):
    """{tensor name: view} of the optimizer state of every layer with parameters."""
    views = {}
    for s, slot in enumerate(_optimizer_slots()[kind]):
        for k, (path, layer) in enumerate(net._node_list()):
            for name in _trained(layer):
                view = _optimizer_view(net, kind, create, s, k, name)
                if view is not None:
                    views[f"optimizer.{slot}.{path}.{name}"] = view
    return views


def _optimizer_state(net):
    """(kind, {tensor name: view}) of the optimizer state the network holds, or (None, {})."""
    first = next(k for k, (_, layer) in enumerate(net._node_list()) if layer.W is not None)
    for kind in _optimizer_slots():
        if _optimizer_view(net, kind, False, 0, first, "W") is not None:
            return kind, _state_views(net, kind, False)
    return None, {}


def _tensors(net):
    """{tensor name: view} of every array of the network, by layer path."""
    return {f"layers.{path}.{name}": a for path, layer in net._node_list() for name, a in layer.arrays.items()}


def _metadata(net):
    epochs, rng, steps = net._state()
    from . import __version__

    inits = getattr(net, "_initialisers", None) or {
        "init": _initialiser_record(net.init),
        "feedback_init": _initialiser_record(_first_feedback(net.feedback))}
    dropout = net.dropout if isinstance(net.dropout, (list, tuple)) else \
        [net.dropout if layer.kind in ("Dense", "Conv") else 0.0 for layer in net._leaves[:-1]]
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "library_version": __version__,
        "created_by": f"pyjlfa (Python {sys.version.split()[0]})",
        "input": _json(list(reversed(net.input_shape))), "chain": _json([layer.spec for layer in net.layers]),
        "dtype": net.dtype.name, "loss": net.loss, "rule": net.rule,
        "rule_params": _json(_rule_params(net.rule_value)), "dropout": _json(list(dropout)),
    }
    for key, (name, params) in inits.items():
        meta[key], meta[f"{key}_params"] = name, _json(params)
    meta.update(seed=str(net.seed), feedback_seed=str(net.feedback_seed), epochs=str(epochs), rng_state=str(rng))
    return meta, steps


def save(net, path, include_optimizer=False):
    """Write ``net`` to ``path`` (see the module docstring); ``Network.save`` calls this.

    Parameters
    ----------
    net : Network
        The network.
    path : str or os.PathLike
        The file to write (written beside it, then renamed).
    include_optimizer : bool
        Also save ``net.optimizer``'s hyperparameters and state.
    """
    path = _path(path)
    if not isinstance(include_optimizer, bool):
        raise TypeError(f"include_optimizer must be True or False, got {include_optimizer!r}")
    if sys.byteorder != "little":
        raise NotImplementedError("model files are little-endian; this machine is not")
    net._id()  # refuses a closed network
    meta, steps = _metadata(net)
    tensors = _tensors(net)
    if include_optimizer:
        kind, state = _optimizer_state(net)
        optimizer = getattr(net, "optimizer", None)
        if optimizer is not None:
            name = _optimizer_kind(optimizer)
            if kind is None or name == kind:
                kind = name
                meta["optimizer_params"] = _json(_fields(optimizer))
        meta["optimizer"] = kind or "none"
        meta["optimizer_slots"] = _json(list(_optimizer_slots()[kind]) if state else [])
        meta["optimizer_steps"] = str(steps)
        tensors.update(state)

    _write_safetensors(path, meta, tensors, _DTYPES[net.dtype.name][0])


def _fields(value):
    """A dataclass's fields as JSON values; nested options as {"name": ..., "params": ...}, the
    way the Julia side writes them."""
    import dataclasses

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {"name": getattr(v, "_name", type(v).__name__.lower()),   # the engine's name
                    "params": _fields(v)}
        return list(v) if isinstance(v, tuple) else v
    return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}


def _optimizer_kind(optimizer):
    """The name files record an optimizer by: its state's (AdamW is "adam")."""
    return _schema.entry("optimizers", optimizer._name, _schema.live())["state"]


def _rule_params(rule):
    """A rule's parameters under the Julia field names (what both sides write)."""
    from .rules import DFA, USF, WeightMirror
    if isinstance(rule, str):   # a rule given by name has its default parameters
        rule = {"usf": USF(), "wm": WeightMirror()}.get(rule, rule)
    if isinstance(rule, DFA):   # the default feedback points are left out (files before them lack them)
        return {} if rule.feedback_points == "layer" else {"feedback_points": rule.feedback_points}
    if isinstance(rule, USF):
        return {"scale": rule.scale}
    if isinstance(rule, WeightMirror):
        return {"noise_std": rule.noise_std, "lr": rule.lr, "steps": rule.steps, "batchsize": rule.batch_size,
                "decay": rule.noise_std ** 2 if rule.decay is None else rule.decay}
    return {}


def _rule_from(name, params, path):
    from .rules import DFA, DRTP, SDFA, USF, WeightMirror
    try:
        if name == "usf":
            return USF(**params)
        if params.get("feedback_points", "layer") != "layer":
            return {"dfa": DFA, "drtp": DRTP, "sdfa": SDFA}[name](**params)
        if name == "wm":
            p = dict(params)
            p["batch_size"] = p.pop("batchsize", 16)
            return WeightMirror(**p)
    except (TypeError, ValueError) as e:
        raise ModelFileError(path, f'cannot rebuild rule "{name}" from {_json(params)}: {e}') from None
    if set(params) - {"feedback_points"}:
        raise ModelFileError(path, f'rule "{name}" takes no parameters, but the file gives {_json(params)}')
    return name


def _initialiser_record(value):
    """(name, params) of an initialiser given by name or as a pyjlfa.init value."""
    from . import init
    if isinstance(value, str):  # a name stands for that initialiser with its default parameters
        defaults = {cls._name: cls for cls in map(lambda n: getattr(init, n), init.__all__)
                    if getattr(cls, "_name", "") and cls._name not in ("sparse",)}
        value = defaults[value]() if value in defaults else init.GlorotUniform()
    return value._name, _fields(value)


def _first_feedback(feedback):
    entries = feedback if isinstance(feedback, (list, tuple)) else [feedback]
    named = [e for e in entries if isinstance(e, str) or hasattr(e, "_name")]
    return named[0] if named else _DEFAULT_INIT[0]


# ------------------------------------------------------------------------------------------------
# Reading

def _metadata_of(header, path):
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ModelFileError(path, "not a pyjlfa model file: its safetensors header has no pyjlfa metadata "
                                   f'(__metadata__.format = "{FORMAT}")')
    if not all(isinstance(v, str) for v in meta.values()):
        raise ModelFileError(path, "corrupt header: __metadata__ values must be strings")
    version = meta.get("format_version", "(missing)")
    if version not in _READABLE_VERSIONS:
        raise ModelFileError(path, f'unknown format version "{version}"; this pyjlfa reads versions 1 to '
                                   f"{FORMAT_VERSION} (is the file from a newer release?)")
    return meta


def read_metadata(path):
    """The metadata strings of a model file (after checking its header), without loading the model.

    Parameters
    ----------
    path : str or os.PathLike
        A model file.

    Returns
    -------
    dict of str
    """
    path = _path(path)
    with open(path, "rb") as f:
        return _metadata_of(_read_header(f, path)[0], path)


class _Fields:
    """Typed access to the metadata strings, with errors that name the key."""

    def __init__(self, meta, path):
        self.meta, self.path = meta, path

    def text(self, key):
        if key not in self.meta:
            raise ModelFileError(self.path, f'the metadata lacks "{key}"')
        return self.meta[key]

    def json(self, key, check, expected):
        text = self.text(key)
        try:
            value = _parse_json(text)
        except (ValueError, RecursionError) as e:
            raise ModelFileError(self.path, f'metadata "{key}" is not valid JSON ({e}): {text}') from None
        if not check(value):
            raise ModelFileError(self.path, f'metadata "{key}" must be {expected}, got {text}')
        return value

    def integer(self, key, bits):
        text = self.text(key)
        if not (text.isascii() and text.isdigit()) or len(text) > 20 or int(text) >= 2 ** bits:
            raise ModelFileError(self.path, f'metadata "{key}" must be an integer in [0, 2**{bits}), got "{text}"')
        return int(text)

    def choice(self, key, allowed):
        value = self.text(key)
        if value not in allowed:
            raise ModelFileError(self.path, f'unknown {key} "{value}"; this pyjlfa knows {", ".join(sorted(allowed))}')
        return value


def _description(meta, path):
    """Everything the metadata says, checked, as keyword values (nothing is built yet)."""
    from ._runtime import engine

    m = _Fields(meta, path)
    d = {"dtype": m.choice("dtype", _DTYPES)}
    eng = engine()
    if meta["format_version"] == "1":  # dense sizes and one hidden activation
        d["sizes"] = m.json("sizes", lambda v: isinstance(v, list) and len(v) >= 2 and all(
            _is_count(x) and x >= 1 for x in v), "a list of at least two positive integers")
        d["activation"] = m.choice("activation", eng.names("activation"))
    else:
        d["input"] = m.json("input", lambda v: isinstance(v, list) and len(v) in (1, 3) and all(
            _is_count(x) and x >= 1 for x in v), "a list of 1 or 3 positive integers")
        d["chain"] = m.json("chain", lambda v: isinstance(v, list) and len(v) >= 1 and all(
            isinstance(x, str) and x and not any(unicodedata.category(c) == "Cc" for c in x) for x in v),
            "a non-empty list of layer calls (non-empty strings without control characters)")
    for key in ("loss", "rule"):
        d[key] = m.choice(key, eng.names(key))
    is_object = (lambda v: isinstance(v, dict)), "a JSON object"
    rule_params = m.json("rule_params", *is_object)
    _check_record("rule", d["rule"], rule_params, path)
    d["rule"] = _rule_from(d["rule"], rule_params, path)
    # How many rates the chain takes (one per layer but the last) the engine checks as it builds it.
    d["dropout"] = m.json("dropout", lambda v: isinstance(v, list) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and 0 <= x < 1 for x in v),
        "a list of one rate in [0, 1) per layer but the last") if "dropout" in meta else 0.0
    d["initialisers"] = {key: (m.text(key), m.json(f"{key}_params", *is_object)) for key in ("init", "feedback_init")}
    for name, params in d["initialisers"].values():
        _check_record("initialiser", name, params, path)
    d["seed"], d["feedback_seed"] = m.integer("seed", 64), m.integer("feedback_seed", 64)
    d["epochs"], d["rng_state"] = m.integer("epochs", 63), m.integer("rng_state", 64)
    d["optimizer"], d["optimizer_params"], d["slots"], d["steps"] = None, None, (), 0
    if meta.get("optimizer", "none") != "none":
        kind = d["optimizer"] = m.choice("optimizer", _optimizer_slots())
        slots = list(_optimizer_slots()[kind])
        d["slots"] = tuple(m.json("optimizer_slots", lambda v: v in ([], slots), f"[] or {_json(slots)} for {kind}"))
        if "optimizer_steps" in meta:
            d["steps"] = m.integer("optimizer_steps", 63)
        if "optimizer_params" in meta:
            params = m.json("optimizer_params", *is_object)
            _check_record("optimizer", kind, params, path)
            d["optimizer_params"] = _optimizer_from(kind, params, path)
    return d


# The parameters a file may give each rule, initialiser, optimizer and schedule, with the kind of
# value each takes, come from the engine's schema (julia/.../schema.jl), which Julia's reader and
# docs/model-format.md's table also come from. Files name an optimizer by its state (AdamW is "adam").
_SECTIONS = {"initialiser": "initialisers", "rule": "rules", "optimizer": "optimizers", "schedule": "schedules"}


# Parameters a file may leave out (added after files without them were written).
_OPTIONAL_PARAMS = ("feedback_points",)


def _file_params(kind):
    """{name: its parameters (schema entries)} of the rules, initialisers, optimizers or schedules
    (``kind``) a file may name."""
    entries = _schema.live()[_SECTIONS[kind]]
    return {e["name"]: e["params"] for e in entries if kind != "optimizer" or e["state"] == e["name"]}


def _is_number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _allowed(p, x):
    """Whether the JSON value x is one that parameter p (a schema entry) allows."""
    if p["nullable"] and x is None:
        return True
    if p["type"] == "number":
        return _is_number(x) and _schema.within(p, x)
    if p["type"] == "integer":
        return isinstance(x, int) and not isinstance(x, bool) and _schema.within(p, x)
    if p["type"] == "bool":
        return isinstance(x, bool)
    if p["type"] == "numbers":
        return isinstance(x, list) and all(_is_number(v) and _schema.within(p, v) for v in x)
    if p["type"] == "choice":
        return x in p["choices"]
    raise ValueError(f"parameters of type {p['type']} are not checked here")


def _check_record(kind, name, params, path):
    """Check a rule, initialiser, optimizer or schedule record (its name and its JSON parameters)
    against the engine's schema: exactly the listed parameters, each of its kind of value."""
    schemas = _file_params(kind)
    if name not in schemas:
        raise ModelFileError(path, f'unknown {kind} "{name}"; this pyjlfa knows {", ".join(sorted(schemas))}')
    fields = [p["name"] for p in schemas[name]]
    required = {f for f in fields if f not in _OPTIONAL_PARAMS}
    if not isinstance(params, dict) or not required <= set(params) <= set(fields):
        given = "(" + ", ".join(sorted(params)) + ")" if isinstance(params, dict) else _json(params)
        raise ModelFileError(path, f'{kind} "{name}" takes the parameters ({", ".join(fields)}), but the file gives {given}')
    for p in schemas[name]:
        if p["name"] not in params:   # an optional one, left out
            continue
        field, x = p["name"], params[p["name"]]
        if p["type"] in ("initialiser", "schedule"):
            if p["nullable"] and x is None:
                continue
            if not (isinstance(x, dict) and set(x) == {"name", "params"} and isinstance(x["name"], str)):
                raise ModelFileError(path, f'{kind} "{name}" parameter {field} must be '
                                           f'{"null or " if p["nullable"] else ""}{{"name": ..., "params": {{...}}}}, '
                                           f"got {_json(x)}")
            _check_record(p["type"], x["name"], x["params"], path)
            continue
        if not _allowed(p, x):
            raise ModelFileError(path, f'{kind} "{name}" parameter {field} must be {p["expected"]}, got {_json(x)}')
    if kind == "optimizer" and name == "sgd" and params["nesterov"] and params["momentum"] == 0:
        raise ModelFileError(path, 'optimizer "sgd" has nesterov true, which needs a momentum > 0')


def _optimizer_from(kind, params, path):
    from .optimizers import SGD, Adam, Cosine, StepDecay

    classes = {cls._name: cls for cls in (SGD, Adam, StepDecay, Cosine)}   # by the engine's names
    try:
        params = dict(params)
        schedule = params.get("schedule")
        if isinstance(schedule, dict):
            params["schedule"] = None if schedule.get("name") == "constant" else \
                classes[schedule["name"]](**schedule["params"])
        return classes[kind](**params)
    except (TypeError, ValueError, KeyError) as e:
        raise ModelFileError(path, f'cannot rebuild optimizer "{kind}" from {_json(params)}: {e}') from None


def _check_tensor(header, name, shape, d, path, net):
    if name not in header:
        raise ModelFileError(path, f'tensor "{name}" is missing (the metadata describes a {d["rule"]} '
                                   f'network {_describe(net)})')
    if header[name]["dtype"] != _DTYPES[d["dtype"]][0]:
        raise ModelFileError(path, f'tensor "{name}" is {header[name]["dtype"]}, but the metadata says '
                                   f'dtype {d["dtype"]}')
    if header[name]["shape"] != list(shape):
        raise ModelFileError(path, f'tensor "{name}" has shape {_json(header[name]["shape"])}, but the network '
                                   f'the metadata describes ({_describe(net)}, rule {d["rule"]}) needs {_json(list(shape))}')


def _describe(net):
    return "[" + ", ".join(layer.spec for layer in net.layers) + "]"   # the chain as the file writes it


def load(path):
    """A new :class:`pyjlfa.Network` from a model file written by Python or Julia.

    It has the file's parameters, feedback matrices, epochs, generator state and (when the file
    has it) optimizer state, so that training continues exactly where it stopped; ``net.optimizer``
    is the optimizer the file records (or None). Raises :class:`ModelFileError` (a ValueError)
    saying what is wrong for a truncated or corrupt file, a safetensors file that is not a pyjlfa
    model, an unknown format version, or tensors that disagree with the metadata. Nothing existing
    is touched: the checks come before the new network is built.

    Parameters
    ----------
    path : str or os.PathLike
        A model file.

    Returns
    -------
    Network
    """
    from ._runtime import JuliaError
    from .network import Network

    path = _path(path)
    if sys.byteorder != "little":
        raise NotImplementedError("model files are little-endian; this machine is not")
    with open(path, "rb") as f:
        header, data_start = _read_header(f, path)
        meta = _metadata_of(header, path)
        d = _description(meta, path)
        options = dict(rule=d["rule"], loss=d["loss"], seed=d["seed"], feedback_seed=d["feedback_seed"],
                       dtype=d["dtype"], dropout=d["dropout"])
        if "sizes" in d:  # version 1: the dense chain those sizes stand for, as Julia's reader builds it
            sizes = d["sizes"]
            chain = [f"Dense({a} => {b}, {d['activation']})" for a, b in zip(sizes[:-2], sizes[1:-1])]
            chain, julia_input = chain + [f"Dense({sizes[-2]} => {sizes[-1]})"], [sizes[0]]
        else:
            chain, julia_input = d["chain"], d["input"]
        try:  # the engine builds the network the metadata describes, and says if it cannot; a file
            # cannot declare more weights than it holds (max_params), so it cannot make us allocate more
            net = Network._from_julia(chain, julia_input, **options,
                                      max_params=(os.fstat(f.fileno()).st_size - data_start) // 4)  # the smallest item size
        except (JuliaError, ValueError, TypeError) as e:  # whatever the engine refuses: the file is invalid
            raise ModelFileError(path, f"the metadata does not describe a network this pyjlfa can build: {e}") from None
        if "sizes" in d:
            net.sizes, net.activation = tuple(d["sizes"]), d["activation"]
        try:
            targets = _tensors(net)   # every shape comes from the engine
            if d["slots"]:
                targets.update(_state_views(net, d["optimizer"], True))
            for name, target in targets.items():
                _check_tensor(header, name, target.shape, d, path, net)
            for name in sorted(header):
                if name != "__metadata__" and name not in targets:
                    raise ModelFileError(path, f'unexpected tensor "{name}" (the metadata does not describe it)')
            for name, target in targets.items():  # straight into Julia's memory
                f.seek(data_start + header[name]["data_offsets"][0])
                view = memoryview(target).cast("B")
                if f.readinto(view) != len(view):
                    raise ModelFileError(path, f'the file ended while reading tensor "{name}" (did it change?)')
        except BaseException:
            net.close()
            raise
    net._engine.call("fa_state_set", net._id(), d["epochs"], d["rng_state"], d["steps"])
    net._initialisers = d["initialisers"]
    net.optimizer = d["optimizer_params"]
    return net
