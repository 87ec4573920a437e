"""The pyjlfa command line and the figures."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pyjlfa import cli, plots

ROOT = Path(__file__).resolve().parent.parent


def run(*args, timeout=600):
    """The command in a fresh process, as a user types it (`python -m pyjlfa ...`)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "pyjlfa", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture
def cli_here(capsys):
    """The command in this process (one Julia for all tests; argparse's exits included): returns an
    object with returncode, stdout and stderr, as `run` does."""
    def call(*args):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as stop:
            code = stop.code
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code or 0, out, err)
    return call


@pytest.fixture
def npz(tmp_path):
    """A small separable 3-class problem in the .npz layout the CLI reads."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 6)).astype(np.float32)
    y = X[:, :3].argmax(axis=1)
    path = tmp_path / "blobs.npz"
    np.savez(path, X_train=X[:300], y_train=y[:300], X_test=X[300:], y_test=y[300:])
    return path


@pytest.mark.parametrize("command", [[], ["train"], ["compare"], ["reproduce"], ["robustness"]])
def test_help_explains_every_option(command, cli_here):
    result = cli_here(*command, "--help")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    options = [a for a in cli._parser()._subparsers._group_actions[0].choices[command[0]]._actions
               if a.option_strings] if command else []
    for action in options:
        assert action.help, action.option_strings      # every option has an explanation ...
        assert action.option_strings[-1] in text
    if command == ["train"]:
        assert "(default: 0.05)" in text and "--track-alignment" in text


def test_bad_arguments_say_what_to_fix(npz, cli_here):
    result = cli_here("train", "--epochs", "0")
    assert result.returncode == 2
    assert "argument --epochs: expected a positive integer, got 0" in result.stderr
    result = cli_here("compare", "--data", "missing.npz")
    assert result.returncode == 2 and "--data missing.npz: no such file" in result.stderr
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "--data", str(npz), "--rule", "no_such_rule"])
    assert stop.value.code == 2


@pytest.mark.parametrize("labels,test_labels,message", [
    (["cat", "dog", "ant", "cat"], ["ant", "dog"], r"y_train holds <U3 labels \('ant', 'cat', 'dog'\); the command line needs "
                                   r"integer class labels 0\.\.k-1"),
    (list(range(1, 11)), None, r"y_train holds 10 distinct labels \(1, 2, .*, 10\), and no sample has class 0, so the "
                         r"network would get 11 outputs .* subtract 1 so they start at 0"),
    ([0, 2, 0, 2], [0, 3], r"y_train and y_test hold 3 distinct labels \(0, 2, 3\), and no sample has class 1"),
    ([0, -1, 1, 0], [0, 3], r"distinct labels \(-1, 0, 1, 3\), and some are negative"),
])
def test_npz_labels_that_are_not_class_numbers_are_refused_naming_them(tmp_path, capsys, labels, test_labels, message):
    path = tmp_path / "bad.npz"
    test = {} if test_labels is None else dict(X_test=np.ones((2, 3)), y_test=np.array(test_labels))
    np.savez(path, X_train=np.ones((len(labels), 3)), y_train=np.array(labels), **test)
    for command in ("train", "compare"):
        with pytest.raises(SystemExit) as stop:
            cli.main([command, "--data", str(path), "--out", str(tmp_path / "out")])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert f"--data {path}: " in err and re.search(message, err), err
    assert not (tmp_path / "out").exists()


@pytest.mark.subprocess
def test_help_lists_the_rules_and_shows_no_markup(cli_here):
    from pyjlfa.rules import FEEDBACK_STYLE
    top = run("--help")    # the entry point itself, once, in a fresh process
    assert top.returncode == 0 and "``" not in top.stdout and "The pyjlfa command:" in top.stdout
    for command in ("train", "compare", "reproduce"):
        text = " ".join(cli_here(command, "--help").stdout.split())   # argparse wraps lines
        assert "``" not in text
        listed = text[text.index("of: bp"):].split("(")[0][4:]   # the help of --rule or --rules
        assert set(listed.replace(",", " ").split()) == set(FEEDBACK_STYLE), (command, listed)


def test_the_readme_and_help_say_what_train_saves(cli_here):
    readme = (ROOT / "README.md").read_text()
    assert "writes the history only" not in readme and "until the engine has a" not in readme
    text = " ".join(cli_here("train", "--help").stdout.split())
    assert "the model as model.safetensors" in text and "where this pyjlfa can save" not in text


def test_a_missing_data_path_is_reported_in_the_commands_words(cli_here):
    result = cli_here("train", "--data-path", "/nonexistent/fashion")
    assert result.returncode == 2
    assert "Searched: /nonexistent/fashion (from --data-path)" in result.stderr
    assert "pass --data-path <folder>" in result.stderr and "path=" not in result.stderr


@pytest.mark.slow
def test_train_saves_the_history(npz, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(npz), "--hidden", "8", "--epochs", "3", "--batch-size", "10",
                     "--lr", "0.1", "--track-alignment", "5", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "epoch 3/3" in printed.err                   # the progress bar
    assert "val_accuracy" in printed.out
    assert {"history.json", "history.csv", "history_alignment.csv", "model.safetensors"} <= set(os.listdir(out))
    rows = (out / "history.csv").read_text().splitlines()
    assert rows[0] == "rule,epoch,loss,accuracy,val_loss,val_accuracy,seconds" and len(rows) == 4


def test_weight_decay_reaches_the_optimizer(npz, tmp_path, cli_here):
    import pyjlfa
    norms = {}
    for wd in ("0", "0.5"):
        out = tmp_path / f"wd{wd}"
        assert cli.main(["train", "--data", str(npz), "--hidden", "8", "--epochs", "3", "--batch-size", "10",
                         "--lr", "0.1", "--weight-decay", wd, "--quiet", "--out", str(out)]) == 0
        with pyjlfa.load(out / "model.safetensors") as net:
            norms[wd] = sum(float(np.linalg.norm(layer.W)) for layer in net.layers)
    # 90 steps of W -= 0.1 (dW + 0.5 W) shrink W by about 0.95^90 ~ 1%: far below the undecayed norm
    assert norms["0.5"] < 0.3 * norms["0"]
    result = cli_here("compare", "--weight-decay", "-1")
    assert result.returncode == 2 and "argument --weight-decay: expected a finite number >= 0, got -1" in result.stderr


@pytest.mark.slow
def test_compare_prints_a_table_and_writes_figures(npz, tmp_path, cli_here):
    pytest.importorskip("matplotlib", reason="the figures need matplotlib (pip install pyjlfa[plot])")
    out = tmp_path / "cmp"
    result = cli_here("compare", "--data", str(npz), "--hidden", "16", "16", "--epochs", "2", "--batch-size", "10",
                 "--lr", "0.1", "--track-alignment", "4", "--out", str(out))
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.split()[:1] in
            (["bp"], ["fa"], ["dfa"])}
    assert set(rows) == {"bp", "fa", "dfa"}
    assert rows["bp"][4] == "-" and float(rows["fa"][4]) < 180   # angles only where they apply
    from PIL import Image   # comes with matplotlib
    for name in ("compare_learning.png", "compare_alignment.png", "compare_feedback.png", "compare_summary.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width >= 600 and image.height >= 400, name
            assert len(image.convert("RGB").getcolors(1 << 16)) > 20, name   # drawn on, not blank


def test_a_missing_matplotlib_is_explained(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'pyjlfa\[plot\]'"):
        plots.require_matplotlib()


@pytest.mark.subprocess
def test_cpp_extensions_can_throw_after_julia_started():
    """libjulia's libunwind must not catch C++ exceptions of modules loaded later (matplotlib aborted)."""
    pytest.importorskip("matplotlib", reason="needs a C++ extension that throws: matplotlib's ft2font")
    code = ("import pyjlfa; pyjlfa.Network([3, 2]); import matplotlib.ft2font as f\n"
            "try:\n    f.no_such_name\nexcept AttributeError:\n    print('caught')\n"
            "import matplotlib.pyplot")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0 and "caught" in result.stdout, result.stderr[-2000:]


def test_train_writes_into_a_new_runs_folder_by_default(npz, tmp_path, monkeypatch):
    """Without --out, results go to runs/<date-time>/ (ignored by git), a new folder per run."""
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        assert cli.main(["train", "--data", str(npz), "--hidden", "4", "--epochs", "1", "--quiet",
                         "--track-alignment", "0"]) == 0
    runs = sorted(os.listdir(tmp_path / "runs"))
    assert len(runs) == 2 and all((tmp_path / "runs" / r / "history.json").is_file() for r in runs)
    assert "/runs/" in (ROOT / ".gitignore").read_text().split()


# -- issue 26, item 3: images, named architectures and chains ---------------------------------------------
@pytest.fixture
def images(tmp_path):
    """(n, 1, 32, 32) images of three classes in the .npz layout, for LeNet-5 and small chains."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 1, 32, 32)).astype(np.float32)
    y = X[:, 0, :3, :].sum(axis=2).argmax(axis=1)
    path = tmp_path / "images.npz"
    np.savez(path, X_train=X[:40], y_train=y[:40], X_test=X[40:], y_test=y[40:])
    return path


@pytest.mark.slow
def test_train_takes_images_and_a_named_architecture(images, tmp_path, cli_here):
    import pyjlfa
    from pyjlfa.experiments import lenet5
    out = tmp_path / "lenet"
    result = cli_here("train", "--data", images, "--arch", "lenet5", "--rule", "FA", "--epochs", "2", "--batch-size",
                      "10", "--lr", "0.01", "--track-alignment", "0", "--quiet", "--out", out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("training lenet5, rule fa, 40 samples")
    with np.load(images) as f:
        X, y, Xte = f["X_train"], f["y_train"], f["X_test"]
    with pyjlfa.Network(lenet5(classes=3), input_shape=(1, 32, 32), rule="fa", seed=0) as net, \
            pyjlfa.load(out / "model.safetensors") as saved:
        net.fit(X, y, epochs=2, batch_size=10, optimizer=pyjlfa.SGD(lr=0.01))
        assert saved.epochs == 2 and np.array_equal(saved.outputs(Xte), net.outputs(Xte))
    result = cli_here("train", "--data", images, "--out", tmp_path / "dense")
    assert result.returncode == 2 and "for images give the network with --arch lenet5|resnet20 or --layers" in result.stderr
    result = cli_here("train", "--data", images, "--arch", "alexnet", "--out", tmp_path / "x")
    assert result.returncode == 2 and "unknown architecture 'alexnet'" in result.stderr


@pytest.mark.slow
def test_compare_takes_a_chain_written_as_python(images, tmp_path, cli_here):
    out = tmp_path / "cmp"
    chain = "[Conv2d(1, 2, 5), ReLU(), MaxPool2d(4), Flatten(), Linear(2 * 7 * 7, 3)]"
    result = cli_here("compare", "--data", images, "--layers", chain, "--rules", "bp", "fa", "--epochs", "1",
                      "--batch-size", "10", "--track-alignment", "1", "--no-plots", "--quiet", "--out", out)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.split()[:1] in (["bp"], ["fa"])}
    assert set(rows) == {"bp", "fa"} and rows["bp"][4] == "-" and 0 <= float(rows["fa"][4]) <= 180
    import json
    params = json.loads((out / "compare.json").read_text())["params"]
    assert params["layers"][0] == "Conv2d(in_channels=1, out_channels=2, kernel_size=(5, 5))"
    assert params["layer_names"] == ["Conv2d(1, 2, 5)", "ReLU()", "MaxPool2d(4, 4)", "Flatten()", "Linear(98, 3)"]
    result = cli_here("compare", "--data", images, "--layers", "[Conv2d(1, 2, 5), Softmax()]", "--out", out)
    assert result.returncode == 2 and "'Softmax' is not a layer of pyjlfa.layers" in result.stderr


def test_defaults_are_the_ones_the_readme_explains():
    """Issue 26, item 14: defaults differed without a reason given; the README now gives one per place."""
    import inspect
    import pyjlfa
    from pyjlfa import experiments
    from pyjlfa.sklearn import FeedbackAlignmentClassifier, FeedbackAlignmentRegressor
    assert inspect.signature(pyjlfa.Network.fit).parameters["batch_size"].default == 32 and pyjlfa.SGD().lr == 0.01
    train = cli._parser().parse_args(["train"])
    assert (train.batch_size, train.lr) == (64, 0.05)
    compare = inspect.signature(experiments.compare).parameters
    assert compare["batch_size"].default == 64 and "SGD(lr=0.05)" in inspect.getsource(experiments.compare)
    clf, reg = FeedbackAlignmentClassifier(), FeedbackAlignmentRegressor()
    assert (clf.learning_rate_init, clf.momentum, clf._auto_batch_size, reg.learning_rate_init) == (0.03, 0.9, 32, 0.001)
    readme = " ".join((ROOT / "README.md").read_text().split())
    page = " ".join((ROOT / "docs" / "cli.md").read_text().split())
    section = page[page.index("**Defaults, and why they differ.**"):][:1500]
    for text in ("batch 32", "lr 0.01", "batch 64 and lr 0.05", "lr 0.03, momentum 0.9 and batches of 32", "lr 0.001"):
        assert text in section, text
    assert "pandas is not a dependency" not in readme   # it is in the test extra, and the pandas checks run
    reproduce = cli._parser()._subparsers._group_actions[0].choices["reproduce"]
    help_text, = [a.help for a in reproduce._actions if "--train-size" in a.option_strings]
    assert "lenet-fashion-mnist" in help_text


@pytest.mark.parametrize("spelling", ["FA", "uSF", "USF"])
def test_rule_names_are_case_insensitive_on_the_command_line(spelling, npz, tmp_path, cli_here):
    import json
    out = tmp_path / spelling
    result = cli_here("train", "--data", npz, "--rule", spelling, "--hidden", "4", "--epochs", "1", "--quiet",
                      "--track-alignment", "0", "--out", out)
    assert result.returncode == 0, result.stderr
    assert list(json.loads((out / "history.json").read_text())["runs"]) == [spelling.lower()]
