"""The figures (issue 16, item 10): titles, legends that cover no panel, one line-style mapping, rule names.

The figures are drawn from a made-up comparison of every rule, so no Julia is needed; the PNGs of
real runs were checked by eye.
"""

import numpy as np
import pytest

from pyjlfa import experiments, plots
from pyjlfa.rules import FEEDBACK_STYLE

RULES = list(FEEDBACK_STYLE)   # all 11
SIZES = [20, 16, 16, 10]


def _alignment(rule, n=12):
    """Alignment records shaped as Network.fit returns them, for a 20-16-16-10 network."""
    style = FEEDBACK_STYLE[rule]
    hidden = "backprop" if rule == "bp" else "no_signal" if style is None else "feedback"
    with_B = {"fa": [1, 2], "dfa": [0, 1], None: []}[style]
    rng = np.random.default_rng(len(rule))
    angles = lambda: [[None if hidden != "feedback" or k == 2 else float(a) for k, a in enumerate(rec)]
                      for rec in rng.uniform(20, 90, size=(n, 3))]
    return {"role": [[hidden, hidden, "output"]] * n, "update_angle": angles(), "delta_angle": angles(),
            "feedback_angle": [[float(rng.uniform(10, 90)) if k in with_B else None for k in range(3)]
                               for _ in range(n)],
            "step": list(range(0, 10 * n, 10)), "epoch": [1 + i * 3 // n for i in range(n)], "batch": list(range(n))}


def _result():
    runs = {}
    for i, rule in enumerate(RULES):
        acc = [0.70 + 0.01 * i, 0.75 + 0.01 * i, 0.78 + 0.01 * i]   # curves that a legend could hide
        runs[rule] = {"loss": [1.0, 0.8, 0.7], "accuracy": acc, "val_loss": [1.1, 0.9, 0.8], "val_accuracy": acc,
                      "seconds": [1.0, 0.5, 0.5], "alignment": _alignment(rule)}
    params = dict(rules=RULES, sizes=SIZES, activation="tanh", epochs=3, batch_size=64, lr=0.05, seed=0)
    return {"experiment": "compare", "title": "made-up comparison", "params": params, "runs": runs}


@pytest.fixture
def drawn(monkeypatch, tmp_path):
    """Draw every figure of an 11-rule comparison and keep the matplotlib figures (not only the PNGs)."""
    figures = _kept(monkeypatch)
    plots.figures(_result(), str(tmp_path))
    assert set(figures) == {"learning", "alignment", "feedback", "summary"}
    yield figures
    import matplotlib.pyplot as plt
    for fig in figures.values():
        plt.close(fig)


@pytest.mark.slow
def test_legends_cover_no_panel_and_stay_in_the_figure(drawn):
    for name, fig in drawn.items():
        assert fig.legends, name
        for legend in fig.legends:
            box = legend.get_window_extent()
            assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0 and \
                box.y1 <= fig.bbox.y1, (name, "legend cut off")
            for ax in fig.axes:
                panel = ax.get_window_extent()
                overlap = min(box.x1, panel.x1) - max(box.x0, panel.x0)
                assert overlap <= 0, (name, ax.get_title(), overlap)
        assert all(ax.get_legend() is None for ax in fig.axes), name   # no legend inside a panel
        # every bar label of the summary's panel (b) lies inside its panel, and nothing is drawn over it
    bars = next(ax for ax in drawn["summary"].axes if ax.get_title().startswith("(b)"))
    panel = bars.get_window_extent()
    labels = [t for t in bars.texts if t.get_text()]
    assert len(labels) == 2 * 9   # 9 rules with angles to compare, 2 hidden layers
    for t in labels:
        box = t.get_window_extent()
        assert panel.y0 <= box.y0 and box.y1 <= panel.y1, t.get_text()


@pytest.mark.slow
def test_b_line_styles_mean_the_same_in_every_figure(drawn):
    def styles(ax):
        return {line.get_gid(): line.get_linestyle() for line in ax.get_lines() if line.get_gid()}
    feedback = styles(drawn["feedback"].axes[0])
    summary = styles(next(ax for ax in drawn["summary"].axes if ax.get_title().startswith("(d)")))
    assert feedback == summary and len(feedback) == 2 * 9
    assert feedback["fa B2"] == feedback["dfa B1"] == "-"      # the last layer with a B: solid
    assert feedback["fa B1"] == feedback["dfa B0"] == "--"     # the one before: dashed
    keys = {t.get_text(): h.get_linestyle() for fig in (drawn["summary"], drawn["feedback"])
            for legend in fig.legends for t, h in zip(legend.get_texts(), legend.legend_handles)}
    assert keys["last layer with a B"] == "-" and keys["the one before"] == "--"


@pytest.mark.slow
def test_rule_names_are_cased_as_their_papers_write_them(drawn):
    names = {"bp": "BP", "fa": "FA", "dfa": "DFA", "usf": "uSF", "frsf": "frSF", "brsf": "brSF", "kp": "KP",
             "wm": "WM", "drtp": "DRTP", "sdfa": "sDFA", "shallow": "shallow"}
    expected = [names[r] for r in RULES]
    assert [plots._label(r) for r in RULES] == expected
    legend = [t.get_text() for t in drawn["summary"].legends[0].get_texts()]
    assert [text.split()[0] for text in legend[:len(RULES)]] == expected
    texts = " ".join(t.get_text() for fig in drawn.values() for legend in fig.legends for t in legend.get_texts())
    assert not {"kp", "brsf", "usf", "wm", "sdfa", "drtp"} & set(texts.replace(":", " ").split())


def test_a_fashion_mnist_subset_is_named_in_the_title(monkeypatch):
    images = np.zeros((60, 784), np.float32), np.arange(60) % 10, np.zeros((10, 784), np.float32), np.arange(10)
    monkeypatch.setattr(experiments.datasets, "fashion_mnist", lambda path=None, dtype="float32": images)
    titles = []
    monkeypatch.setattr(experiments, "compare", lambda X, *a, title=None, **kw: titles.append((len(X), title)))
    experiments.fashion_mnist(train_size=25)
    experiments.fashion_mnist()
    assert titles[0][0] == 25 and titles[0][1].startswith("Fashion-MNIST (first 25 of 60 training images), ")
    assert titles[1][0] == 60 and titles[1][1].startswith("Fashion-MNIST, 784-256-256-10")


# -- issue 26: any history, any network -----------------------------------------------------------------
def _kept(monkeypatch):
    """{name: figure} of the figures drawn from now on, kept instead of saved (the name ends their file's)."""
    pytest.importorskip("matplotlib", reason="the figures need matplotlib (pip install pyjlfa[plot])")
    figures = {}

    def keep(fig, path):
        figures[path.rsplit("_", 1)[-1][:-4]] = fig
        fig.canvas.draw()
        return path
    monkeypatch.setattr(plots, "_save", keep)
    return figures


def test_figures_take_one_fit_history_or_a_dict_of_histories(monkeypatch, tmp_path):
    """Item 1: a history as Network.fit returns it failed with KeyError: 'runs' (wrapped: 'params')."""
    figures = _kept(monkeypatch)
    history = _result()["runs"]["fa"]
    plots.figures(history, str(tmp_path))
    assert set(figures) == {"learning", "alignment", "feedback", "summary"}
    lines = figures["learning"].axes[0].get_lines()
    assert [list(line.get_ydata()) for line in lines] == [history["loss"], history["val_loss"]]
    figures.clear()
    bp = _result()["runs"]["bp"]
    plots.figures({"BP": bp, "FA": history}, str(tmp_path))
    legend = [t.get_text() for t in figures["learning"].legends[0].get_texts()]
    # the names given, with their final accuracy
    assert legend[:2] == [f"BP ({100 * bp['val_accuracy'][-1]:.2f}%)", f"FA ({100 * history['val_accuracy'][-1]:.2f}%)"]
    figures.clear()
    plots.learning_curves({"loss": [1.0], "accuracy": [0.5], "seconds": [1.0]}, str(tmp_path / "x.png"))
    with pytest.raises(TypeError, match="expected a history returned by Network.fit"):
        plots.figures({"runz": 1}, str(tmp_path))


def test_a_one_epoch_history_is_drawn_with_markers(monkeypatch, tmp_path):
    """Item 13: single points drawn as lines without markers were invisible."""
    figures = _kept(monkeypatch)
    one = {r: {"loss": [0.9], "val_loss": [1.0], "accuracy": [0.6], "val_accuracy": [0.6], "seconds": [1.0],
               "alignment": _alignment(r, n=1)} for r in ("bp", "fa", "dfa")}
    plots.figures(one, str(tmp_path))
    for name in ("learning", "alignment", "feedback", "summary"):
        for ax in figures[name].axes:
            for line in ax.get_lines():
                if len(line.get_xdata()) == 1:
                    assert line.get_marker() not in (None, "None", ""), (name, ax.get_title(), line.get_label())


def test_feedback_matrices_are_numbered_as_the_layer_panels_are(monkeypatch, tmp_path):
    """Item 13: FA's B were "layer 1/2" and DFA's "layer 0/1" beside panels "hidden layer 0/1": now each B is
    named by the layer whose error signal it makes, for FA (B of layer k teaches layer k-1) and DFA alike."""
    figures = _kept(monkeypatch)
    result = _result()
    result["runs"] = {r: result["runs"][r] for r in ("fa", "dfa")}
    plots.figures(result, str(tmp_path))
    labels = [t.get_text() for t in figures["feedback"].legends[0].get_texts()]
    assert labels == ["FA: B → δ of layer 0 (∠ W_1ᵀ)", "FA: B → δ of layer 1 (∠ W_2ᵀ)",
                      "DFA: B → δ of layer 0 (∠ (W_1⋯W_out)ᵀ)", "DFA: B → δ of layer 1 (∠ (W_2⋯W_out)ᵀ)"]
    panels = [ax.get_title() for ax in figures["alignment"].axes]
    assert panels == ["hidden layer 0 (W of shape 20x16)", "hidden layer 1 (W of shape 16x16)"]


def test_identical_curves_are_said_to_be(monkeypatch, tmp_path):
    """Item 13: with one hidden layer FA and DFA coincide; the figure says so instead of hiding a line."""
    figures = _kept(monkeypatch)
    runs = {r: _result()["runs"]["fa"] for r in ("bp", "fa", "dfa")}
    runs["bp"] = dict(runs["bp"], loss=[1.0, 0.6, 0.5])
    plots.learning_curves(runs, str(tmp_path / "x.png"))
    fig, = figures.values()
    notes = [t.get_text().replace("\n", " ") for t in fig.axes[0].texts]
    assert notes == ["identical curves: DFA = FA (with one hidden layer FA and DFA are the same rule)"]


def test_compare_trains_any_chain_on_images_and_draws_it(tmp_path):
    """Item 1: compare refused images (X must be 2-D); now any chain, with the histories a direct fit gives."""
    pytest.importorskip("matplotlib")
    import pyjlfa
    from pyjlfa.layers import Conv2d, Flatten, Linear, MaxPool2d, ReLU
    rng = np.random.default_rng(0)
    X = rng.normal(size=(64, 1, 8, 8)).astype(np.float32)
    y = (X[:, 0, :4].sum(axis=(1, 2)) > 0).astype(np.int64)
    layers = [Conv2d(1, 3, 3), ReLU(), MaxPool2d(2), Flatten(), Linear(27, 8), ReLU(), Linear(8, 2)]
    result = experiments.compare(X[:48], y[:48], (X[48:], y[48:]), rules=["bp", "fa"], layers=layers, epochs=2,
                                 batch_size=8, track_alignment=2, out_dir=str(tmp_path), title="chain")
    with pyjlfa.Network(layers, input_shape=(1, 8, 8), rule="fa", seed=0) as net:
        direct = net.fit(X[:48], y[:48], epochs=2, batch_size=8, optimizer=pyjlfa.SGD(lr=0.05),
                         validation_data=(X[48:], y[48:]), track_alignment=2)
    fa = result["runs"]["fa"]
    assert fa["loss"] == direct["loss"] and fa["val_accuracy"] == direct["val_accuracy"]
    np.testing.assert_array_equal(fa["alignment"]["update_angle"], direct["alignment"]["update_angle"])
    assert result["params"]["layer_names"][0] == "Conv2d(1, 3, 3)" and result["params"]["input_shape"] == [1, 8, 8]
    assert {p.name for p in tmp_path.glob("*.png")} == {f"compare_{n}.png" for n in
                                                          ("learning", "alignment", "feedback", "summary")}
    with pytest.raises(ValueError, match=r"X of shape \(64, 1, 8, 8\) needs layers="):
        experiments.compare(X, y, None, rules=["bp"])
