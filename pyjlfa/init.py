"""Initialisers for forward weights (``init=``) and feedback matrices (``feedback=``).

Pass one by name (``"glorot_uniform"``, ``"he_normal"``, ...) or as a value with parameters
(``pyjlfa.init.Sparse(0.1)``). For ``feedback`` you may also pass a NumPy array (used as that
layer's B itself, not copied) or a list with one entry per layer. Every draw comes from the
library's SplitMix64 streams: forward weights from ``seed``, feedback from ``feedback_seed``.
"""

from dataclasses import dataclass

from . import _schema
from ._spec import call

__all__ = ["GlorotUniform", "GlorotNormal", "HeUniform", "HeNormal", "LeCunUniform", "LeCunNormal",
           "Uniform", "Normal", "Orthogonal", "Sparse", "SignConcordant", "Zeros", "Initialiser"]


class Initialiser:
    """The base of every initialiser: pass one as ``init=`` (forward weights) or ``feedback=``
    (feedback arrays) to :class:`pyjlfa.Network`."""

    _name = ""

    def _spec(self):
        return call(self._name, self, positional=True)


_GAIN_DOC = """

    Parameters
    ----------
    gain : float
        A factor on the scale (> 0).
    """


def _gained(name, jl_name, doc):
    def __post_init__(self):
        _schema.check(name, "initialisers", jl_name, "gain", self.gain)
    cls = dataclass(frozen=True)(type(name, (Initialiser,), {
        "__doc__": doc + _GAIN_DOC, "__annotations__": {"gain": float}, "gain": 1.0, "_name": jl_name,
        "__post_init__": __post_init__, "__module__": __name__, "__qualname__": name}))
    return cls


GlorotUniform = _gained("GlorotUniform", "glorot_uniform", "U(-l, l), l = gain*sqrt(6/(fan_in+fan_out)) (Glorot & Bengio 2010).")
GlorotNormal = _gained("GlorotNormal", "glorot_normal", "N(0, s^2), s = gain*sqrt(2/(fan_in+fan_out)).")
HeUniform = _gained("HeUniform", "he_uniform", "U(-l, l), l = gain*sqrt(6/fan_in) (He et al. 2015).")
HeNormal = _gained("HeNormal", "he_normal", "N(0, s^2), s = gain*sqrt(2/fan_in) (He et al. 2015).")
LeCunUniform = _gained("LeCunUniform", "lecun_uniform", "U(-l, l) with std gain/sqrt(fan_in).")
LeCunNormal = _gained("LeCunNormal", "lecun_normal", "N(0, s^2), s = gain/sqrt(fan_in).")
Orthogonal = _gained("Orthogonal", "orthogonal", "A (semi-)orthogonal matrix times gain (Saxe et al. 2014).")


@dataclass(frozen=True)
class Uniform(Initialiser):
    """U(-scale, scale) with a fixed scale (Lillicrap et al. 2016 draw B from U(-0.5, 0.5)).

    Parameters
    ----------
    scale : float
        The half-width of the interval (> 0).
    """

    scale: float = 0.5
    _name = "uniform"

    def __post_init__(self):
        _schema.check("Uniform", "initialisers", self._name, "scale", self.scale)


@dataclass(frozen=True)
class Normal(Initialiser):
    """N(0, std^2) with a fixed standard deviation.

    Parameters
    ----------
    std : float
        The standard deviation (> 0).
    """

    std: float = 0.1
    _name = "normal"

    def __post_init__(self):
        _schema.check("Normal", "initialisers", self._name, "std", self.std)


@dataclass(frozen=True)
class Sparse(Initialiser):
    """Exactly round(density * size) non-zeros at random positions, drawn from ``init``.

    Parameters
    ----------
    density : float
        The fraction of non-zeros, in (0, 1].
    init : Initialiser
        Draws the non-zeros (a plain initialiser, not Sparse or SignConcordant).
    """

    density: float
    init: Initialiser = GlorotUniform()
    _name = "sparse"

    def __post_init__(self):
        _schema.check("Sparse", "initialisers", self._name, "density", self.density, shown="density (fraction of non-zeros)")
        if not isinstance(self.init, Initialiser) or isinstance(self.init, (Sparse, SignConcordant)):
            raise TypeError(f"Sparse: init must be a plain initialiser such as Normal(0.1), got {self.init!r}")


@dataclass(frozen=True)
class SignConcordant(Initialiser):
    """Magnitudes from ``init``, signs of the layer's initial W: B = |M| * sign(W.T) (FA-style rules).

    Parameters
    ----------
    init : Initialiser
        Draws the magnitudes.
    """

    init: Initialiser = GlorotUniform()
    _name = "sign_concordant"

    def __post_init__(self):
        if not isinstance(self.init, Initialiser) or isinstance(self.init, SignConcordant):
            raise TypeError(f"SignConcordant: init must be an initialiser such as GlorotUniform(), got {self.init!r}")


@dataclass(frozen=True)
class Zeros(Initialiser):
    """All zeros (rules that learn B, or DFA's zero-initialised forward weights)."""

    _name = "zeros"
