"""JSON as docs/model-format.md's contract reads it: strict RFC 8259 on top of the standard
library's parser (no NaN/Infinity, no repeated keys, 64-bit integers, float64-range numbers, depth
at most 64, no unpaired surrogates), and the compact form both languages write.
(julia/FeedbackAlignment/src/json.jl is the Julia side.)"""

import json
import math


def _json(value):
    return json.dumps(value, separators=(",", ":"), allow_nan=False)


def _no_duplicates(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


_INT64 = (-2 ** 63, 2 ** 63)


def _parse_int(text):
    # Integers must fit in 64 signed bits (docs/model-format.md); bound the text before int() sees it.
    if len(text) > 20 or not _INT64[0] <= int(text) < _INT64[1]:
        raise ValueError(f"integer {text[:40]} does not fit in 64 bits")
    return int(text)


def _parse_float(text):
    # Refused: a number that overflows float64, or that underflows to zero from a non-zero text.
    value = float(text)
    mantissa = text.lower().split("e")[0]
    if math.isinf(value) or (value == 0 and mantissa.strip("-0.") != ""):
        raise ValueError(f"number {text[:40]} is outside float64's range")
    return value


def _check_parsed(value, depth=1):
    """Refuse what Python's json accepts but the contract does not: nesting deeper than 64
    levels, and strings holding an unpaired surrogate (a \\uD800 escape alone)."""
    if isinstance(value, (dict, list)):
        if depth > 64:
            raise ValueError("nested deeper than 64 levels")
        for v in (value.values() if isinstance(value, dict) else value):
            _check_parsed(v, depth + 1)
        if isinstance(value, dict):
            for k in value:
                _check_parsed(k, depth)
    elif isinstance(value, str):
        value.encode("utf-8")  # UnicodeEncodeError (a ValueError) on a surrogate


def _parse_json(text):
    value = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant,
                       parse_int=_parse_int, parse_float=_parse_float)
    _check_parsed(value)
    return value
