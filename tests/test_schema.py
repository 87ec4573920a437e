"""One schema: the facts Julia publishes (fa_describe("schema")) against every place Python states or
uses them: the shipped copy, the option classes' fields, defaults and bounds, the layer classes'
bounds, the name lists, and the rule names' case."""

import dataclasses
import importlib
import math

import numpy as np
import pytest

import pyjlfa
from pyjlfa import _schema, init, layers, rules
from pyjlfa.optimizers import SGD, Adam, AdamW, Cosine, StepDecay

sweep = importlib.import_module("pyjlfa.sweep")   # the module (pyjlfa.sweep is also a function)

# Python's option classes and the schema entries they are; Python's names for parameters where
# each language keeps its own convention (the Julia/file name -> the Python field).
CLASSES = ([("optimizers", c._name, c) for c in (SGD, Adam, AdamW)]
           + [("schedules", c._name, c) for c in (StepDecay, Cosine)]
           + [("rules", c.name, c) for c in (rules.USF, rules.WeightMirror, rules.DFA, rules.DRTP, rules.SDFA)]
           + [("initialisers", getattr(init, n)._name, getattr(init, n)) for n in init.__all__ if n != "Initialiser"])
PYTHON_NAMES = {"batchsize": "batch_size"}
# A valid value for each required parameter, by (entry, parameter).
REQUIRED = {("step_decay", "every"): 2, ("cosine", "epochs"): 2, ("sparse", "density"): 0.5}


def test_the_shipped_schema_is_the_engines():
    assert _schema.snapshot() == _schema.live(), (
        "pyjlfa/_schema.json differs from what the engine publishes: run `python -m pyjlfa._schema`")


def test_every_entry_with_parameters_has_a_python_class():
    covered = {(section, name) for section, name, _ in CLASSES}
    for section in ("optimizers", "schedules", "rules", "initialisers"):
        for e in _schema.live()[section]:
            if e["params"] or section in ("optimizers", "initialisers"):
                assert (section, e["name"]) in covered, (section, e["name"])
    assert set(sweep._RULES) == {e["name"] for e in _schema.live()["rules"] if e["params"]}
    assert set(sweep._OPTIMIZERS) == set(_schema.names("optimizers", _schema.live()))
    assert set(sweep._INITIALISERS) == set(_schema.names("initialisers", _schema.live()))


@pytest.mark.parametrize("section,name,cls", CLASSES, ids=[f"{s}-{n}" for s, n, _ in CLASSES])
def test_python_fields_and_defaults_are_the_schemas(section, name, cls):
    params = _schema.entry(section, name, _schema.live())["params"]
    fields = {f.name: f for f in dataclasses.fields(cls)}
    assert list(fields) == [PYTHON_NAMES.get(p["name"], p["name"]) for p in params]
    for p in params:
        f = fields[PYTHON_NAMES.get(p["name"], p["name"])]
        if "default" not in p:
            assert f.default is dataclasses.MISSING, (name, p["name"])
        elif "default_from" in p:   # computed from other parameters: None until then
            assert f.default is None, (name, p["name"])
        elif p["type"] == "initialiser":
            assert f.default._name == p["default"], (name, p["name"])
        else:
            assert f.default == p["default"] and type(f.default) is type(p["default"]) or \
                (f.default is None and p["default"] is None), (name, p["name"], f.default, p["default"])


def _build(cls, section, name, field, value):
    kwargs = {PYTHON_NAMES.get(k, k): v for (n, k), v in REQUIRED.items() if n == name}
    kwargs[PYTHON_NAMES.get(field, field)] = [value] if field == "layer_lr" and value is not None else value
    return cls(**kwargs)


def _accepts(build):
    try:
        build()
        return True
    except ValueError:
        return False


@pytest.mark.parametrize("section,name,cls", CLASSES, ids=[f"{s}-{n}" for s, n, _ in CLASSES])
def test_python_bounds_are_the_schemas(section, name, cls):
    """Each bound, probed on the Python class: at the bound, just inside and just outside."""
    for p in _schema.entry(section, name, _schema.live())["params"]:
        if p["type"] not in ("number", "integer", "numbers"):
            continue
        step = (lambda b: 1) if p["type"] == "integer" else (lambda b: 1e-9 if b == 0 else math.ulp(b))
        probe = lambda x: _accepts(lambda: _build(cls, section, name, p["name"], x))  # noqa: E731
        if p["low"] is not None:
            assert probe(p["low"]) is not p["low_open"], (name, p["name"], "at low")
            assert not probe(p["low"] - step(p["low"])), (name, p["name"], "below low")
            assert probe(p["low"] + step(p["low"])), (name, p["name"], "above low")
        if p["high"] is not None:
            assert probe(p["high"]) is not p["high_open"], (name, p["name"], "at high")
            assert not probe(p["high"] + step(p["high"])), (name, p["name"], "above high")
        if p["nullable"]:
            assert _accepts(lambda: _build(cls, section, name, p["name"], None))


def test_layer_bounds_and_names_are_the_schemas():
    schema = _schema.live()
    low = {(e["name"], p["name"]): p["low"] for e in schema["layers"] for p in e["params"] if p["low"] is not None}
    probes = {  # Python's argument -> the engine's layer and argument it becomes
        ("Dense", "in"): lambda v: layers.Linear(v, 1), ("Dense", "out"): lambda v: layers.Linear(1, v),
        ("Conv", "cin"): lambda v: layers.Conv2d(v, 1, 1), ("Conv", "cout"): lambda v: layers.Conv2d(1, v, 1),
        ("Conv", "k"): lambda v: layers.Conv2d(1, 1, v), ("Conv", "stride"): lambda v: layers.Conv2d(1, 1, 1, stride=v),
        ("Conv", "pad"): lambda v: layers.Conv2d(1, 1, 1, padding=v),
        ("MaxPool", "k"): lambda v: layers.MaxPool2d(v), ("MaxPool", "stride"): lambda v: layers.MaxPool2d(1, stride=v),
        ("MeanPool", "k"): lambda v: layers.AvgPool2d(v), ("MeanPool", "stride"): lambda v: layers.AvgPool2d(1, stride=v),
        ("BatchNorm", "channels"): lambda v: layers.BatchNorm2d(v), ("BatchNorm", "momentum"): lambda v: layers.BatchNorm2d(1, momentum=v),
        ("Dropout", "p"): lambda v: layers.Dropout(v)}
    # PadShortcut: Python's Residual(shortcut="pad") leaves every argument to the engine, which fits it to
    # the block; eps's bound is open (> 0), probed below.
    assert set(probes) == {key for key in low if key[0] != "PadShortcut"} - {("BatchNorm", "eps")}
    eps = next(p for e in schema["layers"] if e["name"] == "BatchNorm" for p in e["params"] if p["name"] == "eps")
    assert eps["low"] == 0 and eps["low_open"]
    assert _accepts(lambda: layers.BatchNorm2d(1, eps=1e-12)) and not _accepts(lambda: layers.BatchNorm2d(1, eps=0))
    for key, make in probes.items():
        assert _accepts(lambda: make(low[key])) and not _accepts(lambda: make(low[key] - 1)), key
    python_layers = [layers.Linear(1, 1), layers.Conv2d(1, 1, 1), layers.MaxPool2d(1), layers.AvgPool2d(1), layers.Flatten(),
                     layers.BatchNorm2d(1), layers.BatchNorm1d(1), layers.AdaptiveAvgPool2d(1), layers.Dropout(0.5),
                     layers.Residual([layers.Linear(1, 1)]), layers.Residual([layers.Linear(1, 1)], shortcut="pad")]
    made = {layer._julia().split("(")[0] for layer in python_layers}
    made |= {"Chain", "PadShortcut"}    # written by Residual inside its call
    made |= {"Activation"}               # an activation layer is written by its function's name alone
    assert made == set(_schema.names("layers", schema))
    for act in (layers.ReLU(), layers.Tanh(), layers.Sigmoid(), layers.LeakyReLU()):
        assert act._julia_name in schema["activations"]


def test_rule_families_and_flags_come_from_the_schema():
    schema = _schema.live()
    families = {e["name"]: e["family"] for e in schema["rules"]}
    assert rules.FEEDBACK_STYLE == {n: {"fa-style": "fa", "dfa-style": "dfa"}.get(f) for n, f in families.items()}
    with pytest.raises(ValueError, match="rule 'drtp' projects one-hot class targets"):
        pyjlfa.Network([3, 2], rule="drtp", loss="mse")


def test_rule_names_are_case_insensitive(tmp_path):
    net = pyjlfa.Network([3, 4, 2], rule="uSF", seed=1)
    assert net.rule == "usf" and net.layers[1].B is not None
    net.save(tmp_path / "m.safetensors")
    assert pyjlfa.load(tmp_path / "m.safetensors").rule == "usf"
    assert pyjlfa.Network([3, 4, 2], rule="KP").rule == "kp"
    with pytest.raises(ValueError, match="unknown rule 'FX'"):
        pyjlfa.Network([3, 2], rule="FX")
    from pyjlfa import experiments
    assert experiments._check_rules(["BP", "uSF"]) == ["bp", "usf"]
    assert sweep._rule("USF(scale=0.5)", "rule") == rules.USF(scale=0.5)


def test_one_name_for_the_step_schedule(tmp_path):
    opt = SGD(lr=0.1, schedule=StepDecay(2))
    assert "schedule=step_decay(every=2" in opt._spec()
    X, y = np.random.default_rng(0).normal(size=(8, 3)), np.arange(8) % 2
    net = pyjlfa.Network([3, 2])
    net.fit(X, y, epochs=1, batch_size=4, optimizer=opt)
    net.save(tmp_path / "m.safetensors", include_optimizer=True)
    meta = pyjlfa.io.read_metadata(tmp_path / "m.safetensors")
    assert '"schedule":{"name":"step_decay"' in meta["optimizer_params"]
    assert pyjlfa.load(tmp_path / "m.safetensors").optimizer == opt


def test_the_docs_parameter_table_is_the_schemas():
    import pathlib
    doc = (pathlib.Path(__file__).parent.parent / "docs" / "model-format.md").read_text()
    assert _schema.file_table(_schema.live()) in doc, (
        "docs/model-format.md's parameter table differs from the engine's schema: "
        "replace it with the output of `python -m pyjlfa._schema --table`")
