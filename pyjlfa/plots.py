"""Figures of learning and alignment curves (matplotlib, an optional extra: ``pip install pyjlfa[plot]``).

:func:`figures` draws every figure that fits a result of :mod:`pyjlfa.experiments` and returns
the PNG paths: for a teacher task one figure (error, hidden-layer angle to backprop, W-vs-B angle);
for a comparison of rules the learning curves, the alignment angles per layer over training, the
W-vs-B angles, and a summary. Saved results can be drawn again without Julia:

    python -m pyjlfa.plots results/fashion_mnist.json [OUT_DIR]

Every function also takes what :meth:`pyjlfa.Network.fit` returns, one history or a dict of
name -> history (any network: dense, conv, residual), with the alignment curves where the
histories have ``track_alignment`` records::

    plots.figures({"FA": net_fa.fit(...), "BP": net_bp.fit(...)}, "figures/")
"""

import os

import numpy as np

__all__ = ["figures", "as_result", "teacher_task_figure", "learning_curves", "alignment_curves", "feedback_curves",
           "summary_figure", "robustness_figure", "require_matplotlib"]

_COLORS = {"bp": "black", "fa": "tab:green", "dfa": "tab:blue", "shallow": "tab:gray"}
_EXTRA = ["tab:orange", "tab:purple", "tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]


def require_matplotlib():
    """matplotlib.pyplot with a file-only backend, or an ImportError that says how to get it."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("pyjlfa's plots need matplotlib, which is not installed: "
                          "pip install 'pyjlfa[plot]' (or pip install matplotlib)") from None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def as_result(history, name=None):
    """What the figures are drawn from: a result of :mod:`pyjlfa.experiments` as it is, or one
    ``fit`` history (named ``name``, default "model"), or a dict of name -> history, wrapped as one.

    Parameters
    ----------
    history : dict
        A result, a history, or a dict of name -> history.
    name : str or None
        The name of a lone history.
    """
    def is_history(h):
        return isinstance(h, dict) and isinstance(h.get("loss"), list)
    if isinstance(history, dict) and "runs" in history:
        return history
    if is_history(history):
        runs = {name or "model": history}
    elif isinstance(history, dict) and history and all(is_history(h) for h in history.values()):
        runs = dict(history)
    else:
        raise TypeError("expected a history returned by Network.fit, a dict of name -> history, or a result of "
                        f"pyjlfa.experiments; got {type(history).__name__}"
                        + (f" with keys {', '.join(map(repr, list(history)[:6]))}" if isinstance(history, dict) else ""))
    return {"experiment": "history", "params": {}, "runs": runs}


def _dots(n):
    """Markers where a line has too few points to be seen as a line (a one-epoch history)."""
    return {"marker": "o", "ms": 4} if n <= 1 else {}


def _color(rule, rules):
    if rule in _COLORS:
        return _COLORS[rule]
    others = [r for r in rules if r not in _COLORS]
    return _EXTRA[others.index(rule) % len(_EXTRA)]


def _style(rule):
    """DFA dashed, so that it shows where it coincides with FA (one hidden layer)."""
    return "--" if rule == "dfa" else "-"


# How the papers write each rule (Liao et al.: uSF, frSF, brSF; Frenkel et al.: DRTP, sDFA).
_NAMES = {"bp": "BP", "fa": "FA", "dfa": "DFA", "usf": "uSF", "frsf": "frSF", "brsf": "brSF", "kp": "KP",
          "wm": "WM", "drtp": "DRTP", "sdfa": "sDFA", "shallow": "shallow"}


def _label(rule):
    return _NAMES.get(rule, rule)


# Line style of a feedback matrix by its place among a rule's layers with a B, counted from the
# output: the same in every figure (solid: the last layer with a B).
_B_STYLES = ["-", "--", "-.", ":"]


def _b_style(k, layers_with_B):
    return _B_STYLES[(len(layers_with_B) - 1 - layers_with_B.index(k)) % len(_B_STYLES)]


def _b_style_keys(n_layers):
    """Legend entries for the B line styles, from the first layer with a B to the last."""
    names = ["last layer with a B", "the one before", "two before", "three before"]
    return _style_keys(*[(_B_STYLES[i], names[i]) for i in reversed(range(min(n_layers, len(_B_STYLES))))])


def _target(rule, k):
    """What layer k's B stands in for, by the rule's feedback style."""
    from .rules import FEEDBACK_STYLE
    return {"fa": f"W_{k}ᵀ", "dfa": f"(W_{k + 1}⋯W_out)ᵀ"}.get(FEEDBACK_STYLE.get(rule), "its stand-in")


def _receiver(rule, k, alignment):
    """The layer whose error signal layer k's B makes: the layer itself under DFA-style rules, the
    nearest layer before it that learns from a feedback signal under FA-style ones (B replaces Wᵀ
    in carrying the error one layer down), so that both are numbered as the "layer j" panels are."""
    from .rules import FEEDBACK_STYLE
    if FEEDBACK_STYLE.get(rule) != "fa":
        return k
    before = [j for j in _compared_layers(alignment) if j < k]
    return before[-1] if before else k - 1


def _b_label(rule, k, alignment):
    return f"{_label(rule)}: B → δ of layer {_receiver(rule, k, alignment)} (∠ {_target(rule, k)})"


def _figure_legend(fig, handles, title=None):
    """One legend for all panels, in a column right of them, so that it covers no curve, bar or label."""
    legend = fig.legend(handles=handles, loc="center right", fontsize=8, title=title, title_fontsize=8)
    fig.canvas.draw()   # the legend's size is known once drawn
    width = legend.get_window_extent().width / fig.bbox.width
    fig.tight_layout(rect=(0, 0, 1 - width - 0.01, 1))
    return legend


def _style_keys(*pairs):
    """Legend entries for line styles alone (black): pairs of (linestyle, meaning)."""
    from matplotlib.lines import Line2D
    return [Line2D([], [], color="black", ls=ls, label=meaning) for ls, meaning in pairs]


def _series(alignment, field, layer):
    return np.array([np.nan if v is None else v for v in (rec[layer] for rec in alignment[field])], dtype=float)


def _compared_layers(alignment):
    """Layers whose role is "feedback" in some record (those with angles to backprop)."""
    roles = alignment["role"]
    n = len(roles[0]) if roles else 0
    return [k for k in range(n) if any(rec[k] == "feedback" for rec in roles)]


def _layers_with_B(alignment):
    values = np.array([[np.nan if v is None else v for v in rec] for rec in alignment["feedback_angle"]], dtype=float)
    return [k for k in range(values.shape[1]) if np.isfinite(values[:, k]).any()] if values.size else []


def _no_feedback_angle(runs):
    """DFA-style rules whose B has no angle to show: the engine defines (W_L⋯W_{l+1})ᵀ only where every
    later engine layer is a Dense one (so not in a chain with conv layers or separate activation layers)."""
    from .rules import FEEDBACK_STYLE
    missing = [r for r, a in runs.items() if FEEDBACK_STYLE.get(r) == "dfa" and _compared_layers(a)
               and not _layers_with_B(a)]
    return "".join(f"{_label(r)}: no B ∠ W angle: its target (W_L⋯W_l+1)ᵀ is defined only\n"
                   "where every later layer is a Linear (none after a conv layer\n"
                   "or a separate activation layer)\n" for r in missing).rstrip()


def _roles_note(runs):
    """Which rules have no angle to show, and why."""
    notes = []
    for rule, a in runs.items():
        final = a["role"][-1] if a["role"] else []
        if "feedback" not in final:
            why = "is backprop itself" if "backprop" in final else "gives its hidden layers no error signal"
            notes.append(f"{_label(rule)} {why}")
    return "\n".join(notes)


def _save(fig, path):
    import matplotlib.pyplot as plt
    from PIL import Image   # a dependency of matplotlib
    fig.savefig(path, dpi=100)
    plt.close(fig)
    with Image.open(path) as image:   # line plots need few colours: a palette PNG is ~3x smaller
        small = image.convert("RGB").quantize(colors=256)
    small.save(path, optimize=True)
    return path


def teacher_task_figure(result, path):
    """Normalised error, hidden-layer angle to backprop, and W-vs-B angle of a teacher task.

    Parameters
    ----------
    result : dict
        What an experiment of :mod:`pyjlfa.experiments` returns, one ``fit`` history, or a dict
        of name -> history.
    path : str
        The PNG file to write.
    """
    plt = require_matplotlib()
    p, steps, runs = result["params"], np.array(result["step"]), result["runs"]
    rules = list(runs)
    widths = [1.5, 3.3, 0.9]  # line widths, so that several layers of one rule can be told apart
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    for rule, run in runs.items():
        c, ls = _color(rule, rules), _style(rule)
        lr = f" (lr {run['lr']:g})" if run.get("lr") is not None else ""
        axes[0].semilogy(steps, np.maximum(np.array(run["error"], dtype=float), 1e-32), color=c, ls=ls,
                         label=f"{_label(rule)}{lr}")
        a = run["alignment"]
        for i, k in enumerate(_compared_layers(a)):
            axes[1].plot(steps, _series(a, "delta_angle", k), color=c, ls=ls, lw=widths[i % 3],
                         label=f"{_label(rule)}, hidden layer {k}")
        for i, k in enumerate(_layers_with_B(a)):
            axes[2].plot(steps, _series(a, "feedback_angle", k), color=c, ls=ls, lw=widths[i % 3],
                         label=_b_label(rule, k, a))
    axes[0].set(xlabel="training step (samples seen)", ylabel="normalised test error (1 − R²)",
                title="(a) error on 1000 test inputs")
    axes[1].axhline(90, color="gray", ls=":", lw=1)
    axes[1].set(xlabel="training step (samples seen)", ylabel="angle (degrees)", ylim=(0, 180),
                title="(b) hidden error signal: rule ∠ backprop (Δh)")
    axes[2].axhline(90, color="gray", ls=":", lw=1)
    axes[2].set(xlabel="training step (samples seen)", ylabel="angle (degrees)", ylim=(0, 180),
                title="(c) feedback matrix B ∠ the weights it replaces")
    notes = [_roles_note({r: run["alignment"] for r, run in runs.items()})]
    same = [f"{_label(b)} = {_label(a)}" for i, a in enumerate(rules) for b in rules[i + 1:]
            if runs[a]["error"] == runs[b]["error"]]
    if same:
        notes.append("identical curves: " + ", ".join(same))
    axes[1].text(0.02, 0.02, "\n".join(n for n in notes if n), transform=axes[1].transAxes, fontsize=8,
                 color="dimgray")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(_ticks())
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    sizes = "-".join(map(str, p.get("sizes", [30, 20, 10])))
    kind = f"linear {sizes} network learns y = T x" if p["task"] == "linear" else \
        f"{sizes} tanh network learns a random 30-20-10-10 tanh network"
    fig.suptitle(f"Lillicrap et al. 2016 {p['task']} task: {kind}\nx ~ N(0, I), batch {p['batch_size']}, "
                 f"initial W ~ U(±{p['weight_range']:g}), B ~ U(±{p['feedback_range']:g}), seed {p['seed']}, "
                 f"{p['steps']} steps")
    fig.tight_layout()
    return _save(fig, path)


def _ticks():
    from matplotlib.ticker import MaxNLocator
    return MaxNLocator(nbins=5, integer=True)


def _title(result):
    if result.get("title"):
        return result["title"]
    p = result.get("params") or {}
    if "sizes" not in p or "lr" not in p:   # histories given as they are: what they hold
        epochs = max(len(h["loss"]) for h in result["runs"].values())
        return f"{', '.join(map(_label, result['runs']))}: {epochs} epoch{'s' * (epochs != 1)}"
    return (f"{result['experiment']}: {'-'.join(map(str, p['sizes']))} {p['activation']}, SGD lr {p['lr']:g}, "
            f"batch {p['batch_size']}, {p['epochs']} epochs, seed {p['seed']}")


def _steps_axis(result):
    batch = (result.get("params") or {}).get("batch_size")
    return f"training step (minibatches{f' of {batch}' if batch else ''})"


def _accuracy_key(history):
    return "val_accuracy" if "val_accuracy" in history else "accuracy" if "accuracy" in history else None


def _identical(runs):
    """A note naming runs whose curves coincide (FA and DFA are one rule with one hidden layer), so
    that a line hidden under another is explained."""
    import textwrap
    names = list(runs)
    curves = {n: {k: v for k, v in runs[n].items() if k not in ("seconds", "alignment")} for n in names}
    same = [f"{_label(b)} = {_label(a)}" for i, a in enumerate(names) for b in names[i + 1:] if curves[a] == curves[b]]
    if not same:
        return ""
    why = " (with one hidden layer FA and DFA are the same rule)" if "FA = DFA" in same or "DFA = FA" in same else ""
    return textwrap.fill("identical curves: " + ", ".join(same) + why, 60)


def learning_curves(result, path):
    """Training loss and (validation) accuracy per epoch for each rule (or each named history).

    Parameters
    ----------
    result : dict
        What an experiment of :mod:`pyjlfa.experiments` returns, one ``fit`` history, or a dict
        of name -> history.
    path : str
        The PNG file to write.
    """
    plt = require_matplotlib()
    result = as_result(result)
    runs, rules = result["runs"], list(result["runs"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    for rule, h in runs.items():
        epochs = np.arange(1, len(h["loss"]) + 1)
        c = _color(rule, rules)
        axes[0].plot(epochs, h["loss"], "-o", ms=3, color=c)
        if "val_loss" in h:
            axes[0].plot(epochs, h["val_loss"], "--", color=c, **_dots(len(epochs)))
        key = _accuracy_key(h)
        if key:
            axes[1].plot(epochs, 100 * np.array(h[key]), "-o", ms=3, color=c,
                         label=f"{_label(rule)} ({100 * h[key][-1]:.2f}%)")
    axes[0].set(xlabel="epoch", ylabel="cross-entropy loss (nats per sample)", title="loss")
    axes[1].set(xlabel="epoch", ylabel="accuracy (%)",
                title="test accuracy" if "val_accuracy" in next(iter(runs.values())) else "training accuracy")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(_ticks())
    styles = [("-", "training (epoch mean)")] + ([("--", "test")] if "val_loss" in next(iter(runs.values())) else [])
    same = _identical(runs)
    if same:
        axes[0].text(0.02, 0.02, same, transform=axes[0].transAxes, fontsize=8, color="dimgray")
    fig.suptitle(_title(result))
    _figure_legend(fig, axes[1].get_legend_handles_labels()[0] + _style_keys(*styles),
                   title="rule (final accuracy);\nloss: line style")
    return _save(fig, path)


def alignment_curves(result, path):
    """Per hidden layer: the angle between each rule's update and backprop's, over training.

    Parameters
    ----------
    result : dict
        What an experiment of :mod:`pyjlfa.experiments` returns, one ``fit`` history, or a dict
        of name -> history.
    path : str
        The PNG file to write.
    """
    plt = require_matplotlib()
    result = as_result(result)
    runs = {r: h["alignment"] for r, h in result["runs"].items() if h.get("alignment") and h["alignment"]["step"]}
    rules = list(result["runs"])
    layers = sorted({k for a in runs.values() for k in _compared_layers(a)}) or [0]
    fig, axes = plt.subplots(1, len(layers), figsize=(5.2 * len(layers), 4.3), squeeze=False)
    for ax, k in zip(axes[0], layers):
        for rule, a in runs.items():
            if k not in _compared_layers(a):
                continue
            steps, c = np.array(a["step"]), _color(rule, rules)
            ax.plot(steps, _series(a, "update_angle", k), color=c, label=_label(rule), **_dots(len(steps)))
            ax.plot(steps, _series(a, "delta_angle", k), color=c, ls="--", lw=1, **_dots(len(steps)))
        ax.axhline(90, color="gray", ls=":", lw=1)
        ax.set(xlabel=_steps_axis(result), ylabel="angle to backprop (degrees)", ylim=(0, 180),
               title=_layer_title(result, k))
        ax.title.set_fontsize(10)
        ax.grid(alpha=0.3)
    note = _roles_note(runs)
    if note:
        axes[0][0].text(0.02, 0.02, note, transform=axes[0][0].transAxes, fontsize=8, color="dimgray")
    fig.suptitle(f"{_title(result)}\nangle between each rule's update and backprop's on the batch being trained")
    # one legend, beside the panels, naming every rule drawn in any panel
    named = {h.get_label(): h for ax in axes[0] for h in ax.get_legend_handles_labels()[0]}
    if named:
        _figure_legend(fig, list(named.values()) + _style_keys(("-", "dW ∠ dW_BP"), ("--", "δ ∠ δ_BP")))
    else:
        fig.tight_layout()
    return _save(fig, path)


def _layer_title(result, k):
    """Panel title of layer k (an engine layer: alignment records have one entry per layer)."""
    p = result.get("params") or {}
    if p.get("layer_names"):   # a chain: the layer as written
        return f"layer {k}: {p['layer_names'][k]}"
    if p.get("sizes"):
        return f"hidden layer {k} (W of shape {p['sizes'][k]}x{p['sizes'][k + 1]})"
    return f"layer {k}"


def feedback_curves(result, path):
    """The angle between each feedback matrix B and the weights it stands in for, over training.

    Parameters
    ----------
    result : dict
        What an experiment of :mod:`pyjlfa.experiments` returns, one ``fit`` history, or a dict
        of name -> history.
    path : str
        The PNG file to write.
    """
    plt = require_matplotlib()
    result = as_result(result)
    runs = {r: h["alignment"] for r, h in result["runs"].items() if h.get("alignment") and h["alignment"]["step"]}
    rules = list(result["runs"])
    n_lines = sum(len(_layers_with_B(a)) for a in runs.values())
    fig, ax = plt.subplots(figsize=(7.5 + (2.5 if n_lines > 8 else 0), 4.6))
    for rule, a in runs.items():
        with_B = _layers_with_B(a)
        for k in with_B:
            ax.plot(a["step"], _series(a, "feedback_angle", k), color=_color(rule, rules), ls=_b_style(k, with_B),
                    label=_b_label(rule, k, a), gid=f"{rule} B{k}", **_dots(len(a["step"])))
    ax.axhline(90, color="gray", ls=":", lw=1)
    note = _no_feedback_angle(runs)
    if note:
        ax.text(0.02, 0.02, note, transform=ax.transAxes, fontsize=8, color="dimgray")
    import textwrap   # a long title over one panel is cut at the figure's edges: wrapped to the panel
    ax.set(xlabel=_steps_axis(result), ylabel="angle (degrees)", ylim=(0, 180),
           title=textwrap.fill(_title(result), 75) +
           "\nweight alignment: feedback matrix B ∠ the forward weights it replaces")
    ax.title.set_fontsize(9)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        _figure_legend(fig, ax.get_legend_handles_labels()[0], title="line style: layer, solid = last with a B")
    else:
        ax.text(0.5, 0.5, "no rule here has a feedback matrix", ha="center", transform=ax.transAxes)
        fig.tight_layout()
    return _save(fig, path)


def summary_figure(result, path):
    """Accuracy, final angle per layer and rule, mean angle over training, W-vs-B angle: one page.

    Parameters
    ----------
    result : dict
        What an experiment of :mod:`pyjlfa.experiments` returns, one ``fit`` history, or a dict
        of name -> history.
    path : str
        The PNG file to write.
    """
    plt = require_matplotlib()
    from matplotlib.lines import Line2D
    result = as_result(result)
    all_runs, rules = result["runs"], list(result["runs"])
    runs = {r: h["alignment"] for r, h in all_runs.items() if h.get("alignment") and h["alignment"]["step"]}
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    (acc, bars), (curves, wb) = axes
    for rule, h in all_runs.items():
        key = _accuracy_key(h)
        if key:
            acc.plot(np.arange(1, len(h[key]) + 1), 100 * np.array(h[key]), "-o", ms=3, color=_color(rule, rules),
                     label=f"{_label(rule)} {100 * h[key][-1]:.2f}%")
    test = "val_accuracy" in next(iter(all_runs.values()))
    acc.set(xlabel="epoch", ylabel="accuracy (%)", title=f"(a) {'test' if test else 'training'} accuracy per epoch")
    acc.xaxis.set_major_locator(_ticks())

    layers = sorted({k for a in runs.values() for k in _compared_layers(a)})
    compared = [r for r in runs if _compared_layers(runs[r])]
    width = 0.8 / max(len(compared), 1)
    top = 100   # an angle above 100 (an update against backprop's) still shows, with its label
    for i, rule in enumerate(compared):
        a = runs[rule]
        final = [_final(a, "update_angle", k) for k in layers]
        pos = np.arange(len(layers)) + (i - (len(compared) - 1) / 2) * width
        b = bars.bar(pos, final, width, color=_color(rule, rules), label=_label(rule))
        top = max([top] + [10 * np.ceil(v / 10) + 10 for v in final if np.isfinite(v)])
        bars.bar_label(b, fmt="%.0f", fontsize=8)
    bars.set_xticks(np.arange(len(layers)))
    hidden = "hidden " if (result.get("params") or {}).get("sizes") else ""
    bars.set_xticklabels([f"{hidden}layer {k}" for k in layers])
    bars.axhline(90, color="gray", ls=":", lw=1)
    bars.set(ylabel="angle to backprop (degrees)", ylim=(0, top),
             title="(b) final dW ∠ dW_BP (mean of the last epoch's records)")

    for rule, a in runs.items():
        ks = _compared_layers(a)
        if ks:
            mean = np.nanmean(np.stack([_series(a, "update_angle", k) for k in ks]), axis=0)
            curves.plot(a["step"], mean, color=_color(rule, rules), label=_label(rule), **_dots(len(mean)))
    curves.axhline(90, color="gray", ls=":", lw=1)
    curves.set(xlabel=_steps_axis(result), ylabel="angle to backprop (degrees)", ylim=(0, 180),
               title="(c) dW ∠ dW_BP, mean over hidden layers")

    for rule, a in runs.items():
        with_B = _layers_with_B(a)
        for k in with_B:
            wb.plot(a["step"], _series(a, "feedback_angle", k), color=_color(rule, rules), ls=_b_style(k, with_B),
                    gid=f"{rule} B{k}", **_dots(len(a["step"])))
    wb.axhline(90, color="gray", ls=":", lw=1)
    wb.set(xlabel=_steps_axis(result), ylabel="angle (degrees)", ylim=(0, 180),
           title="(d) feedback matrix B ∠ the weights it replaces")
    note = _roles_note(runs)
    if note:
        curves.text(0.02, 0.02, note, transform=curves.transAxes, fontsize=8, color="dimgray")
    note = _no_feedback_angle(runs)
    if note:
        wb.text(0.02, 0.02, note, transform=wb.transAxes, fontsize=7, color="dimgray")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
    fig.suptitle(_title(result))
    # Every panel shows the same colours: one legend beside them, with (a)'s final accuracies and (d)'s line styles.
    handles = [Line2D([], [], color=_color(rule, rules), lw=2,
                      label=f"{_label(rule)}" + (f" {100 * h[_accuracy_key(h)][-1]:.2f}%" if _accuracy_key(h) else ""))
               for rule, h in all_runs.items()]
    n_B = max((len(_layers_with_B(a)) for a in runs.values()), default=0)
    _figure_legend(fig, handles + (_b_style_keys(n_B) if n_B else []),
                   title=f"rule, final {'test' if test else 'training'} accuracy" + ("\n(d): line style" if n_B else ""))
    return _save(fig, path)


def _final(alignment, field, layer):
    """Mean of ``field`` for ``layer`` over the records of the last epoch."""
    last = alignment["epoch"][-1]
    values = [rec[layer] for rec, e in zip(alignment[field], alignment["epoch"]) if e == last]
    values = np.array([np.nan if v is None else v for v in values], dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def figures(result, out_dir):
    """Every figure for ``result`` (from :mod:`pyjlfa.experiments`, or one ``fit`` history, or a
    dict of name -> history) as PNG files in ``out_dir``; the alignment figures where there are
    ``track_alignment`` records.

    Parameters
    ----------
    result : dict
        What an experiment of :mod:`pyjlfa.experiments` returns, one ``fit`` history, or a dict
        of name -> history.
    out_dir : str
        The folder.
    """
    require_matplotlib()
    result = as_result(result)
    os.makedirs(out_dir, exist_ok=True)
    name = result["experiment"]
    if "step" in result:
        return [teacher_task_figure(result, os.path.join(out_dir, f"{name}.png"))]
    paths = [learning_curves(result, os.path.join(out_dir, f"{name}_learning.png"))]
    if any(h.get("alignment") and h["alignment"]["step"] for h in result["runs"].values()):
        paths += [alignment_curves(result, os.path.join(out_dir, f"{name}_alignment.png")),
                  feedback_curves(result, os.path.join(out_dir, f"{name}_feedback.png")),
                  summary_figure(result, os.path.join(out_dir, f"{name}_summary.png"))]
    return paths


def robustness_figure(records, path):
    """Robust accuracy against eps: a panel per attack, a line per model (coloured by its rule),
    solid through the weights and dashed through the rule's feedback. ``records`` are the dicts
    ``pyjlfa robustness`` writes (label, rule, attack, through, eps_pixels, robust_accuracy).

    Parameters
    ----------
    records : list of dict
        The attacks' results.
    path : str
        Where the PNG goes.
    """
    plt = require_matplotlib()
    attacks = [a for a in ("fgsm", "pgd", "square") if any(r["attack"] == a for r in records)]
    rules = list(dict.fromkeys(r["rule"] for r in records))
    fig, axes = plt.subplots(1, len(attacks), figsize=(4.2 * len(attacks) + 1.6, 3.6), squeeze=False, sharey=True)
    names = {"fgsm": "FGSM", "pgd": "PGD", "square": "Square (score-based)"}
    handles = {}
    for ax, attack in zip(axes[0], attacks):
        for r in records:
            if r["attack"] != attack:
                continue
            line, = ax.plot(r["eps_pixels"], 100 * np.asarray(r["robust_accuracy"]), marker="o", ms=3,
                            color=_color(r["rule"], rules), ls="--" if r.get("through") == "feedback" else "-",
                            label=_label(r["label"]))
            handles.setdefault(_label(r["label"]), line)
        ax.set_title(names[attack])
        ax.set_xlabel("eps (pixel units, L-inf)")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("robust accuracy (%)")
    keys = list(handles.values())
    if any(r.get("through") == "feedback" for r in records):
        keys += _style_keys(("-", "gradient through W"), ("--", "through the rule's feedback"))
    _figure_legend(fig, keys)
    return _save(fig, path)


def main(argv=None):
    import argparse
    import json
    parser = argparse.ArgumentParser(prog="python -m pyjlfa.plots",
                                     description="Draw the figures of a saved pyjlfa result (a .json file).")
    parser.add_argument("result", help="a <name>.json written by pyjlfa (experiments, compare, train)")
    parser.add_argument("out_dir", nargs="?", help="where to write the PNGs (default: next to the result)")
    args = parser.parse_args(argv)
    with open(args.result) as f:
        result = json.load(f)
    for path in figures(result, args.out_dir or os.path.dirname(os.path.abspath(args.result))):
        print(path)


if __name__ == "__main__":
    main()
