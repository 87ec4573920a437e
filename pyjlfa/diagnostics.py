"""Alignment diagnostics: how close a learning rule's updates come to backprop's.

All of it is computed in Julia (``julia/FeedbackAlignment/src/diagnostics.jl``, where every
quantity is derived); this module shapes the answers. Per engine layer ``k`` (the layers per-layer lists follow: those of ``net.named_layers()`` but residual blocks; ``net.layers`` for a plain chain):

``role``
    ``"feedback"``: a hidden layer learning from the rule's own error signal, compared with
    backprop below. ``"output"``: the output layer, which learns from the true error under every
    rule (its angles would be 0 by construction, so they are NaN and never averaged in).
    ``"backprop"``: the rule is backprop itself. ``"no_signal"``: the rule gave this layer no
    update on this batch (a layer only an output-layer rule leaves frozen, or all-dead ReLUs).
    ``"no_params"``: a layer with nothing to train (pooling, flatten, activations, dropout); all
    its diagnostics are NaN. Batch norm is ``"feedback"``: its error arrives exactly from the layer
    after it, and its update is compared on gamma and beta together.
``path``
    The layer's path, as in ``net.named_layers()`` (``"3.main.0"``).
``delta_angle``
    Degrees between the rule's error signal ``delta_k`` and backprop's on the same forward pass,
    over the whole batch (Lillicrap et al. 2016's angle between hidden-unit updates).
``update_angle``
    Degrees between the rule's ``dW_k`` and the true gradient (Nøkland 2016; Akrout et al. 2019);
    for batch norm, between its (dgamma, dbeta) and backprop's, taken as one vector.
    Below 90 the update decreases the loss to first order.
``feedback_angle``
    Degrees between the feedback matrix ``B`` this layer holds and the matrix it stands in for
    (NaN for conv layers under DFA, whose downstream map is no single matrix):
    FA ``W.T`` (B replaces it in the backward pass); DFA ``(W_{k+1} @ ... @ W_out).T``, the
    downstream weights' product (exact for a linear network; derivatives in between left out).
``alignment_product``
    Mean over the batch of ``delta_bp · delta_rule`` per sample: for a one-hidden-layer linear FA
    network exactly Lillicrap's ``eᵀ W B e``; positive means the rule helps that sample.
``update_weight_ratio``, ``update_bp_ratio``, ``weight_feedback_ratio``
    ‖dW‖/‖W‖ (times the learning rate: a step's relative size), ‖dW‖/‖dW_bp‖, ‖W‖/‖B‖.

Comparisons that do not apply to a layer are NaN.
"""

import ctypes
from ctypes import c_int64

import numpy as np

from ._runtime import engine

__all__ = ["alignment", "alignment_fields", "roles", "format_alignment", "hidden_means"]

_LAYOUT = {}


def _layout():
    """(fields, roles) as the Julia engine orders them."""
    if not _LAYOUT:
        eng = engine()
        eng.check_thread()
        text = ctypes.string_at(eng._fn["fa_alignment_fields"]()).decode()
        entries = dict(line.split("=", 1) for line in text.splitlines())
        _LAYOUT["fields"] = tuple(entries["fields"].split(","))
        _LAYOUT["roles"] = tuple(entries["roles"].split(","))
    return _LAYOUT["fields"], _LAYOUT["roles"]


def alignment_fields():
    """Names of the per-layer diagnostics, ``"role"`` first."""
    return _layout()[0]


def roles():
    """The layer roles, in the order of their codes."""
    return _layout()[1]


def _as_dict(matrix):
    """A (layers, fields) array from Julia as {field: per-layer values}, roles as strings."""
    fields, role_names = _layout()
    result = {"role": [role_names[int(code)] for code in matrix[:, 0]]}
    for j, name in enumerate(fields[1:], start=1):
        result[name] = matrix[:, j].copy()
    return result


def alignment(net, X, y):
    """The diagnostics of ``net``'s rule against backprop on the batch (X, y); nothing changes.

    Returns ``{"role": [str per layer], "path": [str per layer], "delta_angle": array per layer, ...}``
    (see the module docstring), one entry per layer that is not a container, depth first as
    :meth:`pyjlfa.Network.named_layers` lists them. Angles are in degrees.

    Parameters
    ----------
    net : Network
        The network.
    X : ndarray
        Samples, shape (n, *input_shape).
    y : ndarray
        Labels or targets, as :meth:`pyjlfa.Network.fit` takes them.
    """
    X, y = net._data(X, y)
    fields, _ = _layout()
    out = np.empty((len(net._leaves), len(fields)), dtype=np.float64)
    net._call("fa_alignment", net._id(), X.ctypes.data, X.shape[0], net.n_features, y.ctypes.data,
              out.ctypes.data)
    result = _as_dict(out)
    result["path"] = [layer.path for layer in net._leaves]
    return result


def hidden_means(a, field):
    """Mean of ``field`` over the layers whose role is "feedback" (NaN if there are none).

    Parameters
    ----------
    a : dict
        What :func:`alignment` returns.
    field : str
        A diagnostic's name, e.g. "update_angle".

    Returns
    -------
    float
    """
    values = [v for v, role in zip(a[field], a["role"]) if role == "feedback" and np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")


def format_alignment(a):
    """A text table of one ``alignment`` result, one row per layer.

    Parameters
    ----------
    a : dict
        What :func:`alignment` returns.

    Returns
    -------
    str
    """
    fields = [f for f in a if f != "role"]
    head = f"{'layer':>5} {'role':<10}" + "".join(f"{f:>22}" for f in fields)
    rows = [head]
    for k, role in enumerate(a["role"]):
        rows.append(f"{k:>5} {role:<10}" + "".join(f"{a[f][k]:>22.4g}" for f in fields))
    return "\n".join(rows)


class Tracker:
    """Records the diagnostics every ``every`` batches during ``Network.fit`` (see there).

    Julia measures the batch the epoch loop has just run forward and backward, before its update
    (one extra backprop backward pass per record, no pass over the data); Python collects the
    records after each epoch.
    """

    def __init__(self, net, every):
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"track_alignment must be a positive integer (record every n batches), got {every!r}")
        self.net, self.every = net, int(every)
        fields, _ = _layout()
        self.width = 3 + len(fields) * len(net._leaves)
        self.rows = []
        net._engine.call("fa_track_alignment", net._id(), self.every)

    @classmethod
    def start(cls, net, every):
        """A tracker for ``net``, or None when ``every`` is None (then any old tracker is detached)."""
        if every is None:
            net._engine.call("fa_track_alignment", net._id(), 0)
            return None
        return cls(net, every)

    def collect(self, batches_per_epoch):
        capacity = batches_per_epoch // self.every + 2
        buffer = np.empty((capacity, self.width), dtype=np.float64)
        count = c_int64()
        while True:
            self.net._engine.call("fa_alignment_records", self.net._id(), buffer.ctypes.data, capacity,
                                  ctypes.byref(count))
            self.rows.extend(buffer[:count.value].copy())
            if count.value < capacity:
                break

    def finish(self):
        """Stop tracking; the records as {"epoch", "batch", "step", "role", field: [[per layer] per record]}."""
        self.net._engine.call("fa_track_alignment", self.net._id(), 0)
        fields, role_names = _layout()
        rows = np.array(self.rows).reshape(len(self.rows), self.width)
        per_layer = rows[:, 3:].reshape(len(rows), len(self.net._leaves), len(fields))
        history = {"epoch": rows[:, 0].astype(int).tolist(), "batch": rows[:, 1].astype(int).tolist(),
                   "step": rows[:, 2].astype(int).tolist(),
                   "role": [[role_names[int(c)] for c in record] for record in per_layer[:, :, 0]]}
        for j, name in enumerate(fields[1:], start=1):
            history[name] = per_layer[:, :, j].tolist()
        return history
