"""Learning rules with parameters. Rules without any are passed by name (``rule="fa"``).

The Learning rules page of the documentation (docs/rules.md) gives every rule, its paper and its update.
"""

from dataclasses import dataclass
from typing import Optional

from . import _schema
from ._spec import call

__all__ = ["USF", "WeightMirror", "DFA", "DRTP", "SDFA", "FEEDBACK_STYLE"]

# Which layers have a feedback matrix B, and its shape (Python view), from the rule's family in the
# engine's schema:
#   "fa":  every layer but the first, shaped like W.T: (n_out, n_in), carrying the error back;
#   "dfa": every hidden layer, (n_outputs, n_out): the output-sized signal straight to the layer.
FEEDBACK_STYLE = {name: {"fa-style": "fa", "dfa-style": "dfa"}.get(_schema.family(name))
                  for name in _schema.names("rules")}


@dataclass(frozen=True)
class USF:
    """Uniform sign-concordant feedback: B = scale * sign(W).T (default scale: the init's std).

    Parameters
    ----------
    scale : float, optional
        B's magnitude (> 0); default: the standard deviation of the layer's forward initialiser.
    """

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
    noise_std**2, makes W.T the fixed point.

    Parameters
    ----------
    noise_std : float
        Standard deviation of the noise fed to each layer.
    lr : float
        The mirror steps' learning rate.
    steps : int
        Mirror steps after each update.
    batch_size : int
        Noise samples per mirror step.
    decay : float, optional
        B's decay per mirror step; default ``noise_std**2``.
    """

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


def _check_points(owner, value):
    allowed = _schema.param("rules", "dfa", "feedback_points")["choices"]
    if value not in allowed:
        raise ValueError(f"{owner} feedback_points must be {' or '.join(map(repr, allowed))}, got {value!r}")


@dataclass(frozen=True)
class DFA:
    """Direct feedback alignment (Nøkland 2016) with a choice of where the projected output error
    enters. ``"layer"`` (the default, and what ``rule="dfa"`` means): at every Linear and Conv2d
    layer but the last, after the activation, batch norm and other elementwise layers that directly
    follow it, so a layer's error is (B e) times the local derivatives of those layers. ``"block"``:
    at each :class:`~pyjlfa.layers.Residual` block's output (after the elementwise layers that follow
    it), from where it is backpropagated exactly through the block, as Launay et al. (2020) place
    DFA per transformer block; Linear and Conv2d layers outside blocks keep their own points.

    Parameters
    ----------
    feedback_points : {"layer", "block"}
        Where the projected signal enters.
    """

    feedback_points: str = "layer"
    name = "dfa"

    def __post_init__(self):
        _check_points(type(self).__name__, self.feedback_points)

    def _spec(self):
        return f'{self.name}(feedback_points="{self.feedback_points}")'


@dataclass(frozen=True)
class DRTP(DFA):
    """Direct random target projection (Frenkel et al. 2021), ``feedback_points`` as :class:`DFA`'s.

    Parameters
    ----------
    feedback_points : {"layer", "block"}
        Where the projected signal enters.
    """

    name = "drtp"


@dataclass(frozen=True)
class SDFA(DFA):
    """Sign-DFA (sign(e) in place of e), ``feedback_points`` as :class:`DFA`'s.

    Parameters
    ----------
    feedback_points : {"layer", "block"}
        Where the projected signal enters.
    """

    name = "sdfa"
