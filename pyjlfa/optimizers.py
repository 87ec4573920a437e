"""Optimizers and learning-rate schedules: validated hyperparameter values.

Their state (velocities, moments) lives with the model in Julia and carries over between calls
while the optimizer's kind stays the same. Common options: ``weight_decay`` (L2, added to the
gradient), ``decoupled_weight_decay`` (AdamW-style), both on weights (and on B for Kolen-Pollack)
but not biases; ``layer_lr`` (a learning-rate multiplier per layer); ``schedule``.
"""

from dataclasses import dataclass
from typing import Optional, Sequence

from . import _schema
from ._spec import call, number

__all__ = ["SGD", "Adam", "AdamW", "StepDecay", "Cosine"]


@dataclass(frozen=True)
class StepDecay:
    """Multiply the learning rate by ``gamma`` every ``every`` epochs.

    Parameters
    ----------
    every : int
        Epochs between two multiplications.
    gamma : float
        The factor.
    """

    every: int
    gamma: float = 0.1
    _name = "step_decay"   # the engine's name (spec texts and model files)

    def __post_init__(self):
        for field in ("every", "gamma"):
            _schema.check("StepDecay", "schedules", self._name, field, getattr(self, field))

    def _spec(self):
        return call(self._name, self)


@dataclass(frozen=True)
class Cosine:
    """Cosine annealing from the full rate to ``min_factor`` times it over ``epochs`` epochs.

    Parameters
    ----------
    epochs : int
        Epochs over which the rate falls.
    min_factor : float
        The rate at the end, as a fraction of the full rate, in [0, 1].
    """

    epochs: int
    min_factor: float = 0.0
    _name = "cosine"

    def __post_init__(self):
        for field in ("epochs", "min_factor"):
            _schema.check("Cosine", "schedules", self._name, field, getattr(self, field))

    def _spec(self):
        return call(self._name, self)


class _Optimizer:
    def _encoded_spec(self):
        """The spec text Julia parses, as bytes; kept on the (frozen) optimizer, since building it
        was about half of a small step's Python time. Not kept while layer_lr is a mutable list."""
        spec = self.__dict__.get("_encoded")
        if spec is None:
            spec = self._spec().encode()
            if self.layer_lr is None or isinstance(self.layer_lr, tuple):
                object.__setattr__(self, "_encoded", spec)
        return spec

    def _check(self, *fields):
        for field in fields:
            _schema.check(type(self).__name__, "optimizers", self._name, field, getattr(self, field))

    def _check_common(self):
        owner = type(self).__name__
        self._check("lr", "weight_decay", "decoupled_weight_decay")
        if self.layer_lr is not None:
            if isinstance(self.layer_lr, (str, bytes)) or not hasattr(self.layer_lr, "__len__"):
                raise ValueError(f"{owner}: layer_lr must be a list of per-layer multipliers, got {self.layer_lr!r}")
            p = _schema.param("optimizers", self._name, "layer_lr")   # the bounds hold for each multiplier
            object.__setattr__(self, "layer_lr", tuple(
                number(owner, "each layer_lr", x, low=p["low"], low_open=p["low_open"]) for x in self.layer_lr))
        if self.schedule is not None and not isinstance(self.schedule, (StepDecay, Cosine)):
            raise TypeError(f"{owner}: schedule must be pyjlfa.StepDecay or pyjlfa.Cosine, got {self.schedule!r}")


@dataclass(frozen=True)
class SGD(_Optimizer):
    """Stochastic gradient descent with momentum, in PyTorch's form.

    g = dW + weight_decay*W;  v = momentum*v + g;  step = v (nesterov: g + momentum*v);
    W -= lr*(step + decoupled_weight_decay*W).

    Parameters
    ----------
    lr : float
        Learning rate.
    momentum : float
        Momentum, in [0, 1).
    nesterov : bool
        Nesterov momentum (needs momentum > 0).
    weight_decay : float
        L2 penalty added to the gradient (weights, and B under Kolen-Pollack; not biases).
    decoupled_weight_decay : float
        AdamW-style decay, ``W -= lr * decoupled_weight_decay * W`` apart from the gradient step.
    layer_lr : list of float, optional
        A learning-rate multiplier per layer (``named_layers()`` order, residual blocks left out).
    schedule : StepDecay or Cosine, optional
        The learning rate over epochs (default: constant).
    """

    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    decoupled_weight_decay: float = 0.0
    layer_lr: Optional[Sequence[float]] = None
    schedule: Optional[object] = None
    _name = "sgd"   # the engine's name

    def __post_init__(self):
        self._check_common()
        self._check("momentum")
        if not isinstance(self.nesterov, bool):
            raise ValueError(f"SGD: nesterov must be True or False, got {self.nesterov!r}")
        if self.nesterov and self.momentum == 0:
            raise ValueError("SGD: nesterov needs a momentum > 0")

    def _spec(self):
        return call(self._name, self)


@dataclass(frozen=True)
class Adam(_Optimizer):
    """Adam (Kingma & Ba 2015) with bias correction; AdamW with ``decoupled_weight_decay``.

    Parameters
    ----------
    lr : float
        Learning rate.
    beta1, beta2 : float
        Decay rates of the first and second moment estimates, in [0, 1).
    eps : float
        Added to the second moment's square root.
    weight_decay : float
        L2 penalty added to the gradient (weights, and B under Kolen-Pollack; not biases).
    decoupled_weight_decay : float
        AdamW-style decay, ``W -= lr * decoupled_weight_decay * W`` apart from the gradient step.
    layer_lr : list of float, optional
        A learning-rate multiplier per layer (``named_layers()`` order, residual blocks left out).
    schedule : StepDecay or Cosine, optional
        The learning rate over epochs (default: constant).
    """

    lr: float = 0.001
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    decoupled_weight_decay: float = 0.0
    layer_lr: Optional[Sequence[float]] = None
    schedule: Optional[object] = None

    _name = "adam"

    def __post_init__(self):
        self._check_common()
        self._check("beta1", "beta2", "eps")

    def _spec(self):
        return call("adam", self)   # AdamW too: its decoupled_weight_decay is in the call


@dataclass(frozen=True)
class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019), 0.01 by default.

    Parameters
    ----------
    lr : float
        Learning rate.
    beta1, beta2 : float
        Decay rates of the first and second moment estimates, in [0, 1).
    eps : float
        Added to the second moment's square root.
    weight_decay : float
        L2 penalty added to the gradient (weights, and B under Kolen-Pollack; not biases).
    decoupled_weight_decay : float
        AdamW-style decay (default 0.01), ``W -= lr * decoupled_weight_decay * W`` apart from the gradient step.
    layer_lr : list of float, optional
        A learning-rate multiplier per layer (``named_layers()`` order, residual blocks left out).
    schedule : StepDecay or Cosine, optional
        The learning rate over epochs (default: constant).
    """

    decoupled_weight_decay: float = 0.01
    _name = "adamw"
