"""Write the shared corpus of model files that Python's and Julia's readers must judge alike.

    python tests/model_files/make_corpus.py

A file named ``valid_*.safetensors`` must load in both languages; ``invalid_*.safetensors`` must be
refused by both with ModelFileError. docs/model-format.md is the contract each file exercises, and
README.md (written here too) says which rule. The valid bases are saved by pyjlfa itself; every
invalid file is a base with one edit.
"""

import json
import struct
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

import pyjlfa  # noqa: E402
from pyjlfa.layers import (AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d,  # noqa: E402
                           ReLU, Residual)

FILES = {}  # name -> what it exercises


def split(blob):
    """(header dict, data bytes) of a safetensors file's bytes."""
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def join(header_text, data):
    text = header_text.encode() if isinstance(header_text, str) else header_text
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data


def emit(name, blob, what):
    assert name not in FILES, name
    FILES[name] = what
    (HERE / f"{name}.safetensors").write_bytes(blob)


def edited(base, meta=None, drop_meta=(), header=None, text=None, data=None):
    """A copy of `base` (bytes) with metadata keys set/removed, header entries replaced, or the
    header text rewritten by `text(header_text)`."""
    h, d = split(base)
    for k, v in (meta or {}).items():
        h["__metadata__"][k] = v
    for k in drop_meta:
        del h["__metadata__"][k]
    for k, v in (header or {}).items():
        if v is None:
            h.pop(k)
        else:
            h[k] = v
    t = json.dumps(h)
    if text is not None:
        t = text(t)
    return join(t, d if data is None else data)


def sub(old, new):
    """A header-text edit that must find `old`."""
    def edit(text):
        assert old in text, old
        return text.replace(old, new, 1)
    return edit


def without_last(blob):
    """`blob` without its last tensor (by offset), data cut to match: (blob, the tensor's name)."""
    h, d = split(blob)
    name = max((k for k in h if k != "__metadata__"), key=lambda k: h[k]["data_offsets"][1])
    begin = h.pop(name)["data_offsets"][0]
    return join(json.dumps(h), d[:begin]), name


def saved(net, include_optimizer=False):
    path = HERE / "_tmp.safetensors"
    net.save(path, include_optimizer=include_optimizer)
    blob = path.read_bytes()
    path.unlink()
    h, d = split(blob)  # fixed text where pyjlfa writes versions, so the corpus is reproducible
    h["__metadata__"].update(library_version="0", created_by="make_corpus.py")
    return join(json.dumps(h), d)


def main():
    for old in HERE.glob("*.safetensors"):
        old.unlink()
    rng = np.random.default_rng(0)

    # -- valid bases, saved by pyjlfa -----------------------------------------------------------
    dense = pyjlfa.Network([4, 5, 3], rule="fa", seed=1, dtype="float32")
    X, y = rng.standard_normal((12, 4)).astype(np.float32), rng.integers(0, 3, 12)
    dense.fit(X, y, epochs=1, batch_size=5, optimizer=pyjlfa.SGD(lr=0.1, momentum=0.9))
    base = saved(dense)
    emit("valid_dense_f32", base, "a dense FA network, float32, no optimizer state")
    with_sgd = saved(dense, include_optimizer=True)
    emit("valid_dense_f32_sgd_state", with_sgd, "SGD momentum: velocity tensors, optimizer_params, optimizer_steps")

    conv = pyjlfa.Network([Conv2d(1, 2, 3), ReLU(), MaxPool2d(2), Flatten(), Linear(8, 3)], input_shape=(1, 6, 6),
                          rule="dfa", seed=2, dtype="float64")
    Xc = rng.standard_normal((6, 1, 6, 6))
    conv.fit(Xc, rng.integers(0, 3, 6), epochs=1, batch_size=3, optimizer=pyjlfa.AdamW(lr=0.01))
    conv_adam = saved(conv, include_optimizer=True)
    emit("valid_conv_f64_adam_state", conv_adam, "a small conv DFA network with Adam(W) moments (two slots)")

    kp = pyjlfa.Network([4, 3, 2], rule="kp", seed=3, dtype="float64")
    kp.fit(X[:, :4].astype(np.float64), y % 2, epochs=1, batch_size=4,
           optimizer=pyjlfa.SGD(lr=0.05, momentum=0.5, schedule=pyjlfa.StepDecay(every=2)))
    kp_sgd = saved(kp, include_optimizer=True)
    emit("valid_kp_sgd_state", kp_sgd, "Kolen-Pollack: optimizer.velocity.k.B tensors; a step_decay schedule")

    usf = pyjlfa.Network([4, 3, 2], rule=pyjlfa.rules.USF(scale=0.5), seed=4, dtype="float32",
                         init=pyjlfa.init.Sparse(0.5, pyjlfa.init.Normal(0.2)))
    usf_blob = saved(usf)
    emit("valid_usf_sparse_init", usf_blob, "rule parameters, and an initialiser nested in another")

    res = pyjlfa.Network([Conv2d(1, 2, 3, padding=1, bias=False), BatchNorm2d(2), ReLU(),
                          Residual([Conv2d(2, 4, 3, stride=2, padding=1, bias=False), BatchNorm2d(4)], shortcut="pad"),
                          ReLU(), Residual([Conv2d(4, 4, 3, padding=1)], shortcut=[Conv2d(4, 4, 1, bias=False)]),
                          AdaptiveAvgPool2d(1), Flatten(), Linear(4, 3)],
                         input_shape=(1, 6, 6), rule=pyjlfa.rules.DFA(feedback_points="block"), seed=5, dtype="float32")
    res.fit(rng.standard_normal((8, 1, 6, 6)).astype(np.float32), rng.integers(0, 3, 8), epochs=1, batch_size=4,
            optimizer=pyjlfa.SGD(lr=0.05, momentum=0.9))
    res_blob = saved(res, include_optimizer=True)
    emit("valid_resnet_block_dfa", res_blob, "format 3: nested residual blocks with batch norm (running statistics), "
         "layers without bias, DFA with feedback_points \"block\" (B on the blocks), tensors named by path")
    emit("invalid_resnet_missing_running_var", edited(res_blob, header={"layers.1.running_var": None}),
         "a batch norm's running variance is missing")
    emit("invalid_resnet_shortcut_shapes", edited(res_blob, meta={"chain": split(res_blob)[0]["__metadata__"]["chain"].replace(
        "PadShortcut()", "Chain(Conv((1, 1), 2 => 4))")}), "a shortcut that does not halve the image as its main path does")
    emit("invalid_points_unknown", edited(res_blob, meta={"rule_params": '{"feedback_points": "everywhere"}'}),
         "feedback_points other than \"layer\" or \"block\"")

    v1_meta = {k: v for k, v in split(base)[0]["__metadata__"].items() if k not in ("input", "chain")}
    v1_meta.update(format_version="1", sizes="[4,5,3]", activation="tanh")
    emit("valid_format1", edited(base, meta=v1_meta, drop_meta=("input", "chain")),
         "format version 1: sizes and activation instead of input and chain")
    emit("valid_unknown_metadata_key", edited(base, meta={"comment": "ignored", "future_key": "[1,2]"}),
         "metadata keys the contract does not list are ignored")
    emit("valid_extra_key_in_tensor_entry",
         edited(base, text=sub('"dtype": "F32"', '"note": [1], "dtype": "F32"')),
         "other keys in a tensor entry are ignored")
    emit("valid_number_zero_exponent", edited(with_sgd, text=sub(
        '\\"weight_decay\\":0.0', '\\"weight_decay\\":0e999')),
         "0e999 is zero, not out of range")

    adam_params = json.loads(split(conv_adam)[0]["__metadata__"]["optimizer_params"])
    emit("valid_optimizer_layer_lr_empty", edited(conv_adam, meta={"optimizer_params": json.dumps({**adam_params, "layer_lr": []})}),
         "layer_lr [] is a list of numbers (Julia once failed on the empty list; found by the mutation run)")

    # -- invalid: the layout ------------------------------------------------------------------
    emit("invalid_too_short", base[:5], "fewer than 8 bytes")
    emit("invalid_header_length_huge", struct.pack("<Q", 2 ** 40) + base[8:], "header length above 100,000,000")
    emit("invalid_header_length_past_end", struct.pack("<Q", len(base)) + base[8:], "header length beyond the file")
    emit("invalid_truncated_data", base[:-4], "the data section is shorter than the tensors")
    emit("invalid_trailing_bytes", base + b"\0" * 8, "bytes after the last tensor")
    emit("invalid_header_not_json", edited(base, text=lambda t: t[:-1]), "the header is not valid JSON")
    emit("invalid_header_not_object", join("[1, 2]", b""), "the header is a JSON array")
    emit("invalid_header_not_utf8", edited(base, text=lambda t: t.encode().replace(b"make_corpus", b"make\xffcorpus", 1)),
         "the header is not UTF-8")
    emit("invalid_no_metadata", edited(base, header={"__metadata__": None}), "no __metadata__")
    emit("invalid_metadata_value_not_string", edited(base, meta={"epochs": 1}), "a metadata value that is not a string")
    emit("invalid_format_version_4", edited(base, meta={"format_version": "4"}), "an unknown format version")
    emit("invalid_duplicate_key", edited(base, text=sub('{"__metadata__": {', '{"__metadata__": {"dtype": "float32", ')),
         "a JSON key twice in one object")
    emit("invalid_nan_literal", edited(base, text=sub('"dtype": "F32"', '"x": NaN, "dtype": "F32"')),
         "NaN is not JSON")
    emit("invalid_number_overflow", edited(base, text=sub('"dtype": "F32"', '"x": 1e999, "dtype": "F32"')),
         "1e999 overflows float64 (Julia once threw ArgumentError)")
    emit("invalid_number_underflow", edited(base, text=sub('"dtype": "F32"', '"x": 1e-999, "dtype": "F32"')),
         "1e-999 underflows to zero")
    emit("invalid_integer_too_big", edited(base, text=sub('"dtype": "F32"', '"x": 9223372036854775808, "dtype": "F32"')),
         "an integer beyond 64 signed bits")
    emit("invalid_nesting_65", edited(base, text=sub('"dtype": "F32"', '"x": ' + "[" * 63 + "]" * 63 + ', "dtype": "F32"')),
         "JSON nested 65 levels deep")
    emit("invalid_lone_surrogate", edited(base, text=sub("make_corpus.py", "make\\ud800corpus")),
         "a string with an unpaired surrogate escape")
    h, _ = split(base)
    first = next(k for k in h if k != "__metadata__")
    entry = dict(h[first])
    emit("invalid_dtype_as_list", edited(base, header={first: {**entry, "dtype": ["F32"]}}),
         "a tensor dtype given as a list (Python once raised TypeError)")
    emit("invalid_dtype_f16", edited(base, header={first: {**entry, "dtype": "F16"}}), "a dtype other than F32/F64")
    emit("invalid_shape_negative", edited(base, header={first: {**entry, "shape": [-1, 5]}}), "a negative dimension")
    emit("invalid_offsets_span", edited(base, header={first: {**entry, "data_offsets": [0, 4]}}),
         "data_offsets disagree with the shape")
    emit("invalid_offsets_gap", edited(base, header={first: {**entry, "data_offsets": [entry["data_offsets"][0] + 4, entry["data_offsets"][1] + 4]}}),
         "tensors overlap or leave a gap")

    # -- invalid: the metadata ----------------------------------------------------------------
    emit("invalid_missing_loss", edited(base, drop_meta=("loss",)), "a required key is missing")
    emit("invalid_dtype_unknown", edited(base, meta={"dtype": "float16"}), "an unknown dtype")
    emit("invalid_tensor_dtype_mismatch", edited(base, meta={"dtype": "float64"}), "tensors F32, metadata float64")
    emit("invalid_epochs_negative", edited(base, meta={"epochs": "-1"}), "epochs is not integer text")
    emit("invalid_seed_too_big", edited(base, meta={"seed": "18446744073709551616"}), "a seed of 2^64")
    emit("invalid_rng_state_long", edited(base, meta={"rng_state": "0" * 5000 + "1"}), "5001 digits (Python's int() limit)")
    emit("invalid_input_shape", edited(base, meta={"input": "[4, 1]"}), "input with 2 dimensions")
    emit("invalid_chain_unknown_layer", edited(base, meta={"chain": '["Dense2(4 => 5, tanh)", "Dense(5 => 3)"]'}),
         "a layer name outside the registry")
    emit("invalid_chain_code", edited(base, meta={"chain": '["run(`touch /tmp/pyjlfa_pwned`)", "Dense(5 => 3)"]'}),
         "code in a layer call is never run")
    emit("invalid_chain_newline", edited(base, meta={"chain": '["Dense(4 => 5, tanh)\\nDense(5 => 5)", "Dense(5 => 3)"]'}),
         "a layer call with a control character")
    emit("invalid_chain_empty_call", edited(base, meta={"chain": '["Dense(4 => 5, tanh)", "", "Dense(5 => 3)"]'}),
         "an empty layer call")
    emit("invalid_chain_shapes", edited(base, meta={"chain": '["Dense(4 => 5, tanh)", "Dense(6 => 3)"]'}),
         "layers whose shapes do not fit")
    emit("invalid_chain_too_big", edited(base, meta={"chain": '["Dense(4 => 100000000, tanh)", "Dense(100000000 => 3)"]'}),
         "more weights than the file holds (max_params)")
    emit("invalid_tensor_shape", edited(base, meta={"chain": '["Dense(4 => 5, tanh)", "Dense(5 => 3)"]', "input": "[5]"}),
         "the built network's W has another shape than the file's")
    blob, name = without_last(base)
    emit("invalid_missing_tensor", blob, f"a tensor the network needs ({name}) is missing")
    emit("invalid_unexpected_tensor", edited(base, header={"extra": {"dtype": "F32", "shape": [0], "data_offsets": [len(split(base)[1])] * 2}}),
         "a tensor the metadata does not describe")
    emit("invalid_rule_unknown", edited(base, meta={"rule": "backprop"}), "an unknown rule")
    emit("invalid_rule_params_extra", edited(base, meta={"rule_params": '{"scale": 1}'}), "parameters for a rule that takes none")
    emit("invalid_usf_scale_zero", edited(usf_blob, meta={"rule_params": '{"scale": 0}'}), "usf scale must be > 0")
    emit("invalid_rule_params_number", edited(base, meta={"rule_params": "1e300"}), "a number where an object belongs")
    emit("invalid_init_unknown", edited(base, meta={"init": "glorot_uQiform"}),
         "an unknown initialiser (Python once accepted it)")
    emit("invalid_init_gain_negative", edited(base, meta={"init_params": '{"gain": -1.0}'}), "gain must be > 0")
    emit("invalid_init_gain_bool", edited(base, meta={"init_params": '{"gain": true}'}), "true is not a number")
    emit("invalid_nested_init_unknown", edited(usf_blob, meta={"init_params": '{"density": 0.5, "init": {"name": "nrmal", "params": {"std": 0.2}}}'}),
         "an unknown initialiser nested in sparse")
    emit("invalid_dropout_bool", edited(base, meta={"dropout": "[false]"}), "false is not a dropout rate")
    emit("invalid_dropout_length", edited(base, meta={"dropout": "[0.1, 0.1]"}), "one dropout rate too many")
    emit("invalid_drtp_mse", edited(base, meta={"rule": "drtp", "loss": "mse"}), "DRTP needs cross-entropy")
    emit("invalid_format1_too_big", edited(base, meta={**v1_meta, "sizes": "[100000, 100000, 3]"}, drop_meta=("input", "chain")),
         "format 1 declaring 10^10 weights in a 1 KB file (max_params; Python once allocated them)")
    emit("invalid_activation_v1", edited(base, meta={**v1_meta, "activation": "swish"}, drop_meta=("input", "chain")),
         "format 1 with an unknown activation")

    # -- invalid: the optimizer ---------------------------------------------------------------
    sgd_meta = split(with_sgd)[0]["__metadata__"]
    params = json.loads(sgd_meta["optimizer_params"])
    emit("invalid_optimizer_unknown", edited(with_sgd, meta={"optimizer": "rmsprop"}), "an unknown optimizer")
    emit("invalid_optimizer_param_unknown", edited(with_sgd, meta={"optimizer_params": json.dumps(
        {**{k: v for k, v in params.items() if k != "decoupled_weight_decay"}, "decouplee_weight_decay": 0.0})}),
         "an unknown optimizer parameter (Julia once accepted it)")
    emit("invalid_optimizer_params_number", edited(with_sgd, meta={"optimizer_params": "1e300"}),
         "a number where the optimizer's parameters belong")
    emit("invalid_optimizer_lr_bool", edited(with_sgd, meta={"optimizer_params": json.dumps({**params, "lr": True})}),
         "true is not a learning rate")
    emit("invalid_optimizer_nesterov_no_momentum", edited(with_sgd, meta={"optimizer_params": json.dumps(
        {**params, "nesterov": True, "momentum": 0})}), "nesterov needs momentum > 0")
    emit("invalid_optimizer_schedule_unknown", edited(kp_sgd, meta={"optimizer_params": json.dumps(
        {**json.loads(split(kp_sgd)[0]["__metadata__"]["optimizer_params"]), "schedule": {"name": "exp", "params": {}}})}),
         "an unknown schedule")
    emit("invalid_optimizer_slots", edited(with_sgd, meta={"optimizer_slots": '["first_moment"]'}),
         "slots that are not the optimizer's")
    emit("invalid_optimizer_steps", edited(with_sgd, meta={"optimizer_steps": "1.5"}), "steps not integer text")
    blob, name = without_last(conv_adam)
    emit("invalid_optimizer_state_missing", blob, f"an optimizer state tensor ({name}) is missing")
    emit("invalid_kp_state_shape", edited(kp_sgd, text=sub('"optimizer.velocity.1.B": {"dtype": "F64", "shape": [2, 3]',
                                                                                  '"optimizer.velocity.1.B": {"dtype": "F64", "shape": [3, 2]')),
         "Kolen-Pollack's B state with the transposed shape")

    lines = ["# Model-file corpus", "",
             "Written by `make_corpus.py` (run it to regenerate). `valid_*` files must load in Python and Julia;",
             "`invalid_*` files must be refused by both with ModelFileError (tests/test_model_contract.py,",
             "julia/FeedbackAlignment/test/contract.jl). The rules are docs/model-format.md's.", ""]
    lines += [f"- `{name}.safetensors`: {what}" for name, what in sorted(FILES.items())]
    (HERE / "README.md").write_text("\n".join(lines) + "\n")
    total = sum(p.stat().st_size for p in HERE.glob("*.safetensors"))
    print(f"{len(FILES)} files, {total} bytes")


if __name__ == "__main__":
    main()
