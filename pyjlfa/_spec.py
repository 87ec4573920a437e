"""Options cross the boundary as text in Julia's call syntax, e.g. ``sgd(lr=0.1, momentum=0.9)``.

Julia parses the text and builds the value from its registries (never evaluating it), so each
option is described once, here, as a small validated Python value with a ``_spec()`` method.
"""

import math
import numbers
from dataclasses import fields


def literal(value):
    """A Python value as a Julia literal."""
    if hasattr(value, "_spec"):
        return value._spec()
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))  # the shortest text that round-trips, which Julia reads back exactly
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    raise TypeError(f"cannot pass {value!r} to Julia")


def call(name, obj, positional=False):
    """``name(field=value, ...)`` for a dataclass's fields (None fields left to Julia's defaults),
    or ``name(value, ...)`` in field order."""
    if positional:
        args = ", ".join(literal(getattr(obj, f.name)) for f in fields(obj))
    else:
        args = ", ".join(f"{f.name}={literal(getattr(obj, f.name))}" for f in fields(obj)
                         if getattr(obj, f.name) is not None)
    return f"{name}({args})"


def number(owner, name, value, low=None, high=None, low_open=False, high_open=False, integer=False):
    """Check one numeric hyperparameter, naming it in the error."""
    kinds = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a finite {'integer' if integer else 'number'}, got {value!r}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{owner}: {name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{owner}: {name} must be {'<' if high_open else '<='} {high}, got {value!r}")
    return float(value) if not integer else int(value)
