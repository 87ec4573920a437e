"""The engine's schema: names, families, parameters, defaults and bounds of rules, optimizers (with
their state slots), schedules, initialisers, activations, losses and layers, as Julia publishes them
(``fa_describe("schema")``, julia/FeedbackAlignment/src/schema.jl).

Python checks arguments before Julia starts (a typo in ``Network(rule=...)`` or ``SGD(momentum=1)``
costs nothing), so it reads a copy of that document shipped beside this module, ``_schema.json``,
written from the engine by ``python -m pyjlfa._schema``. tests/test_schema.py fails when the copy
differs from what the engine publishes; the model-file readers, which run the engine anyway, read
the engine's own answer (:func:`live`).
"""

import json
import os
import sys
from functools import lru_cache

_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_schema.json")
SECTIONS = ("rules", "optimizers", "schedules", "initialisers", "layers")


@lru_cache(maxsize=None)
def snapshot():
    """The shipped copy of the engine's schema."""
    with open(_PATH, encoding="utf-8") as f:
        return json.load(f)


def live():
    """The schema the running engine publishes (starts Julia if needed)."""
    from ._runtime import engine
    eng = engine()
    if "_schema" not in eng.__dict__:
        text = eng.describe("schema")
        if not text:
            from ._runtime import JuliaError
            raise JuliaError(f"the engine published no schema: {eng._message()}")
        eng._schema = json.loads(text)
    return eng._schema


def names(section, schema=None):
    """The names in a section ("rules", "activations", "losses", ...), sorted."""
    entries = (schema or snapshot())[section]
    return tuple(e if isinstance(e, str) else e["name"] for e in entries)


def entry(section, name, schema=None):
    for e in (schema or snapshot())[section]:
        if e["name"] == name:
            return e
    raise KeyError(f"no {section} entry {name!r} in the engine's schema")


def param(section, name, field, schema=None):
    for p in entry(section, name, schema)["params"]:
        if p["name"] == field:
            return p
    raise KeyError(f"{section} {name!r} has no parameter {field!r} in the engine's schema")


def within(p, x):
    """Whether the number x lies within parameter p's bounds."""
    return ((p["low"] is None or (x > p["low"] if p["low_open"] else x >= p["low"])) and
            (p["high"] is None or (x < p["high"] if p["high_open"] else x <= p["high"])))


def interval(p):
    """p's bounds as an interval, "[0, 1)" (both bounds) or "> 0" (one)."""
    if p["low"] is not None and p["high"] is not None:
        return f"{'(' if p['low_open'] else '['}{p['low']}, {p['high']}{')' if p['high_open'] else ']'}"
    if p["low"] is not None:
        return f"{'>' if p['low_open'] else '>='} {p['low']}"
    return f"{'<' if p['high_open'] else '<='} {p['high']}" if p["high"] is not None else ""


def check(owner, section, name, field, value, shown=None):
    """Check one numeric argument against the schema's bounds for ``section``'s ``name``'s
    ``field``, naming it as the caller wrote it (``shown``: Python's name where it differs, e.g.
    batch_size for Julia's batchsize). Returns it as an int or a float."""
    from ._spec import number

    p = param(section, name, field)
    return number(owner, shown or field, value, low=p["low"], high=p["high"], low_open=p["low_open"],
                  high_open=p["high_open"], integer=p["type"] == "integer")


def family(rule):
    """A rule's family: "backprop", "fa-style", "dfa-style" or "other"."""
    return entry("rules", rule)["family"]


def rule_name(value):
    """Rule names are case-insensitive (uSF, USF, usf): the engine's spelling of a name."""
    return value.lower() if isinstance(value, str) else value


def file_table(schema=None):
    """docs/model-format.md's table of the parameters files give each rule, initialiser, optimizer
    (by its state's name: AdamW is "adam") and schedule, as Markdown rows."""
    schema = schema or snapshot()
    rows = ["| kind | name | parameters |", "|---|---|---|"]
    for kind, section in (("rule", "rules"), ("initialiser", "initialisers"), ("optimizer", "optimizers"),
                          ("schedule", "schedules")):
        groups = {}   # parameters' text -> the names that take them, in name order
        for e in schema[section]:
            if kind == "optimizer" and e["state"] != e["name"]:
                continue
            text = ", ".join(f"`{p['name']}`: {p['expected']}" for p in e["params"]) or "none"
            groups.setdefault(text, []).append(f"`{e['name']}`")
        rows += [f"| {kind} | {', '.join(names)} | {text} |" for text, names in groups.items()]
    return "\n".join(rows) + "\n"


def write(path=_PATH):
    """Write the running engine's schema to ``path`` (the shipped copy by default)."""
    text = json.dumps(live(), indent=1, ensure_ascii=False) + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    snapshot.cache_clear()
    return path


if __name__ == "__main__":
    import argparse
    parser = argparse.ArgumentParser(prog="python -m pyjlfa._schema",
                                     description="Write the schema Julia publishes to pyjlfa/_schema.json (or PATH).")
    parser.add_argument("path", nargs="?", help="where to write it (default: the shipped pyjlfa/_schema.json)")
    parser.add_argument("--table", action="store_true", help="print docs/model-format.md's table instead")
    args = parser.parse_args()
    if args.table:
        print(file_table(live()), end="")
    else:
        print(f"wrote {write(*([args.path] if args.path else []))}")
