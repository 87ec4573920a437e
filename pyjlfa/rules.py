"""Learning rules with parameters. Rules without any are passed by name (``rule="fa"``).

See the README's table for every rule, its paper and its update.
"""

from dataclasses import dataclass
from typing import Optional

from . import _schema
from ._spec import call

__all__ = ["USF", "WeightMirror", "FEEDBACK_STYLE"]

# Which layers have a feedback matrix B, and its shape (Python view), from the rule's family in the
# engine's schema:
#   "fa":  every layer but the first, shaped like W.T: (n_out, n_in), carrying the error back;
#   "dfa": every hidden layer, (n_outputs, n_out): the output-sized signal straight to the layer.
FEEDBACK_STYLE = {name: {"fa-style": "fa", "dfa-style": "dfa"}.get(_schema.family(name))
                  for name in _schema.names("rules")}


@dataclass(frozen=True)
class USF:
    """Uniform sign-concordant feedback: B = scale * sign(W).T (default scale: the init's std)."""

    scale: Optional[float] = None
    name = "usf"

    def __post_init__(self):
        if self.scale is not None:
            _schema.check("USF", "rules", "usf", "scale", self.scale)

    def _spec(self):
        return call("usf", self)


@dataclass(frozen=True)
class WeightMirror:
    """Weight mirror (Akrout et al. 2019): after each update, ``steps`` mirror steps with noise
    x ~ N(0, noise_std^2): B += lr * (x (W x).T / batch_size - decay * B). The default decay,
    noise_std**2, makes W.T the fixed point."""

    noise_std: float = 1.0
    lr: float = 0.01
    steps: int = 1
    batch_size: int = 16
    decay: Optional[float] = None
    name = "wm"

    def __post_init__(self):
        for field in ("noise_std", "lr", "steps"):
            _schema.check("WeightMirror", "rules", "wm", field, getattr(self, field))
        _schema.check("WeightMirror", "rules", "wm", "batchsize", self.batch_size, shown="batch_size")
        if self.decay is not None:
            _schema.check("WeightMirror", "rules", "wm", "decay", self.decay)

    def _spec(self):
        decay = self.noise_std ** 2 if self.decay is None else self.decay
        return (f"wm(noise_std={self.noise_std!r}, lr={self.lr!r}, steps={self.steps}, "
                f"batchsize={self.batch_size}, decay={float(decay)!r})")
