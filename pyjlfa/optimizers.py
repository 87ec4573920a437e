"""Optimizers: plain hyperparameter values; their state (momentum buffers) lives with the model in Julia."""

import math
from dataclasses import dataclass

__all__ = ["SGD"]


@dataclass(frozen=True)
class SGD:
    """Stochastic gradient descent with heavy-ball momentum, in PyTorch's form.

    v = momentum * v + dW;  W -= lr * v   (with momentum 0: W -= lr * dW)
    """

    lr: float = 0.01
    momentum: float = 0.0

    def __post_init__(self):
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"SGD: lr must be a positive finite number, got {self.lr!r}")
        if isinstance(self.momentum, bool) or not isinstance(self.momentum, (int, float)) or not 0 <= self.momentum < 1:
            raise ValueError(f"SGD: momentum must be a number in [0, 1), got {self.momentum!r}")

    def _engine_args(self):
        """The optimizer's name in the Julia registry and its hyperparameters, in order."""
        return "sgd", (float(self.lr), float(self.momentum))
