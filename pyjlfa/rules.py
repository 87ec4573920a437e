"""Learning rules with parameters. Rules without any are passed by name (``rule="fa"``).

See the README's table for every rule, its paper and its update.
"""

from dataclasses import dataclass
from typing import Optional

from ._spec import call, number

__all__ = ["USF", "WeightMirror", "FEEDBACK_STYLE"]

# Which layers have a feedback matrix B, and its shape (Python view):
#   "fa":  every layer but the first, shaped like W.T: (n_out, n_in), carrying the error back;
#   "dfa": every hidden layer, (n_outputs, n_out): the output-sized signal straight to the layer.
FEEDBACK_STYLE = {"bp": None, "shallow": None, "fa": "fa", "usf": "fa", "frsf": "fa", "brsf": "fa",
                  "kp": "fa", "wm": "fa", "dfa": "dfa", "drtp": "dfa", "sdfa": "dfa"}


@dataclass(frozen=True)
class USF:
    """Uniform sign-concordant feedback: B = scale * sign(W).T (default scale: the init's std)."""

    scale: Optional[float] = None
    name = "usf"

    def __post_init__(self):
        if self.scale is not None:
            number("USF", "scale", self.scale, low=0, low_open=True)

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
        number("WeightMirror", "noise_std", self.noise_std, low=0, low_open=True)
        number("WeightMirror", "lr", self.lr, low=0, low_open=True)
        number("WeightMirror", "steps", self.steps, low=1, integer=True)
        number("WeightMirror", "batch_size", self.batch_size, low=1, integer=True)
        if self.decay is not None:
            number("WeightMirror", "decay", self.decay, low=0)

    def _spec(self):
        decay = self.noise_std ** 2 if self.decay is None else self.decay
        return (f"wm(noise_std={self.noise_std!r}, lr={self.lr!r}, steps={self.steps}, "
                f"batchsize={self.batch_size}, decay={float(decay)!r})")
