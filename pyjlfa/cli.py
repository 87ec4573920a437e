"""The pyjlfa command: train one network, compare learning rules, or reproduce a paper's experiment.

    pyjlfa train --rule fa --epochs 10 --out runs/fa
    pyjlfa compare --rules bp fa dfa --epochs 10 --out runs/compare
    pyjlfa reproduce linear --out results
    pyjlfa sweep spec.toml --out runs/sweep
    pyjlfa docs
    pyjlfa robustness runs/fa/model.safetensors --attack fgsm pgd square --eps 0 0.02 0.05 0.1

pyjlfa <command> --help explains every option. (Also python -m pyjlfa.)
"""

import argparse
import os
import sys
import time

import numpy as np

from . import _schema

__all__ = ["main"]

# Every rule the engine has, for --help, from its schema (Julia is not started for help).
_RULES = ", ".join(["bp", "fa", "dfa"] + sorted(set(_schema.names("rules")) - {"bp", "fa", "dfa"}))

_EPILOG = ("Julia starts at the first command that needs it (0.4 s with pyjlfa's system image; without it "
           "3-10 s and compiling on first use, 20-40 s the first time, while Julia precompiles the package). "
           "Data: Fashion-MNIST from Debian's dataset-fashion-mnist package, the folder in "
           "PYJLFA_FASHION_MNIST, or --data-path; or your own .npz file.")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default unless it is None/False or the help already says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is not None and action.default is not False and action.default != argparse.SUPPRESS \
                and "default" not in text and action.option_strings:
            default = " ".join(map(str, action.default)) if isinstance(action.default, list) else action.default
            text += f" (default: {default})"
        return text


def _parsed(convert, expected, ok):
    """An argparse type: convert(text) for which ok(value) holds, else an error saying what was expected."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not ok(value) or (isinstance(value, float) and not np.isfinite(value)):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value
    return parse


_positive_int = _parsed(int, "a positive integer", lambda v: v >= 1)
_nonnegative_int = _parsed(int, "an integer >= 0", lambda v: v >= 0)
_positive_float = _parsed(float, "a positive number", lambda v: v > 0)
_nonnegative_float = _parsed(float, "a finite number >= 0", lambda v: v >= 0)
_momentum = _parsed(float, "a number in [0, 1)", lambda v: 0 <= v < 1)


def _add_data(p):
    g = p.add_argument_group("data")
    g.add_argument("--data", default="fashion-mnist", metavar="fashion-mnist|FILE.npz",
                   help="'fashion-mnist' (as images with --arch/--layers), or an .npz file holding X_train "
                        "(samples x features, or samples x channels x height x width images for --arch/--layers), "
                        "y_train (integer labels 0..k-1) and optionally X_test, y_test")
    g.add_argument("--data-path", metavar="DIR",
                   help="folder with the four Fashion-MNIST IDX files (default: $PYJLFA_FASHION_MNIST, "
                        "else /usr/share/datasets/fashion-mnist)")
    g.add_argument("--train-size", type=_positive_int, metavar="N",
                   help="use only the first N training samples (quick runs)")
    g.add_argument("--pad", type=_nonnegative_int, default=2, metavar="PIXELS",
                   help="fashion-mnist as images (--arch/--layers): standardise by the training pixels' mean and "
                        "std, then zero-pad every side by PIXELS (2 gives LeNet-5's 32 x 32)")


def _add_model(p, rule=True):
    g = p.add_argument_group("network and training")
    g.add_argument("--hidden", type=_positive_int, nargs="+", default=[256, 256], metavar="WIDTH",
                   help="hidden-layer widths of a dense network; input and output widths come from the data")
    g.add_argument("--activation", default="tanh",
                   help="the dense network's hidden activation: tanh, sigmoid, relu, leaky_relu, identity")
    chain = g.add_mutually_exclusive_group()
    chain.add_argument("--arch", metavar="NAME",
                       help="a named network for images instead of a dense one: lenet5, or resnet<depth> "
                            "(resnet20, resnet32, ...); channels and classes come from the data, images are 32 x 32")
    chain.add_argument("--layers", metavar="'[Layer(...), ...]'",
                       help="any network as a list of pyjlfa.layers calls in Python syntax, e.g. "
                            "\"[Conv2d(1, 6, 5), ReLU(), MaxPool2d(2), Flatten(), Linear(6 * 14 * 14, 10)]\" "
                            "(read, not run)")
    if rule:
        g.add_argument("--rule", default="fa",
                       help=f"learning rule, one of: {_RULES} (bp: backprop, fa: feedback alignment, dfa: "
                            "direct feedback alignment; docs/rules.md explains each)")
    g.add_argument("--feedback-seed", type=_nonnegative_int, metavar="S",
                   help="seed of the random feedback matrices B (default: --seed)")
    g.add_argument("--epochs", type=_positive_int, default=10, help="passes over the training data")
    g.add_argument("--batch-size", type=_positive_int, default=64, help="samples per SGD step")
    g.add_argument("--lr", type=_positive_float, default=0.05, help="SGD learning rate")
    g.add_argument("--momentum", type=_momentum, default=0.0, help="SGD momentum, in [0, 1)")
    g.add_argument("--weight-decay", type=_nonnegative_float, default=0.0, metavar="L2",
                   help="L2 weight decay on the weights (and on B under Kolen-Pollack, which needs it for "
                        "B to converge to W.T)")
    g.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of the forward weights and the shuffling")
    g.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="precision of the model")
    g.add_argument("--track-alignment", type=_nonnegative_int, default=50, metavar="N",
                   help="record the angles between each rule's updates and backprop's every N batches "
                        "(0: off)")


def _parser():
    parser = argparse.ArgumentParser(prog="pyjlfa", description=__doc__.split("\n\n")[0], epilog=_EPILOG,
                                     formatter_class=_Formatter)
    sub = parser.add_subparsers(dest="command", metavar="{train,compare,reproduce,sweep,docs,robustness}")
    sub.required = True

    train = sub.add_parser("train", formatter_class=_Formatter, epilog=_EPILOG,
                           help="train one network and save its history and model",
                           description="Train one network with one learning rule; print a progress bar per epoch; "
                                       "save the history as JSON and CSV and the model as model.safetensors "
                                       "(pyjlfa.load reads it) into --out.")
    _add_data(train)
    _add_model(train)
    train.add_argument("--out", metavar="DIR",
                       help="folder for history.json, history.csv, model.safetensors "
                            "(default: runs/<date-time>, a new folder)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")

    compare = sub.add_parser("compare", formatter_class=_Formatter, epilog=_EPILOG,
                             help="train several rules side by side; print a table and write plots",
                             description="Train one network per learning rule from the same seed (same initial "
                                         "forward weights), print a table of accuracies and final angles to "
                                         "backprop, and write compare.json, compare.csv and figures into --out.")
    _add_data(compare)
    _add_model(compare, rule=False)
    compare.add_argument("--rules", nargs="+", default=None, metavar="RULE",
                         help=f"learning rules to compare, some of: {_RULES} (default: all)")
    compare.add_argument("--out", metavar="DIR",
                         help="folder for results and figures (default: runs/<date-time>, a new folder)")
    compare.add_argument("--no-plots", action="store_true", help="write no figures (they need matplotlib)")
    compare.add_argument("--quiet", action="store_true", help="no progress bar")

    rep = sub.add_parser("reproduce", formatter_class=_Formatter, epilog=_EPILOG,
                         help="run a published experiment (Lillicrap et al. 2016; Fashion-MNIST curves)",
                         description="linear: Lillicrap et al. 2016's 30-20-10 linear network learning y = T x "
                                     "(BP, FA, shallow). nonlinear: their 30-20-10 tanh network learning a random "
                                     "30-20-10-10 tanh network (BP, FA, DFA). fashion-mnist: learning and "
                                     "alignment curves for every rule. Each writes <name>.json, <name>.csv and "
                                     "figures into --out.\n\nlenet-fashion-mnist: biotorch's LeNet-5 table "
                                     "(32x32 Fashion-MNIST, SGD momentum 0.9, weight decay 1e-3, batch 64, lr / 10 "
                                     "at 1/2 and 3/4 of --epochs) for bp fa dfa usf brsf frsf kp drtp sdfa shallow, "
                                     "each rule in its own process (--jobs at once), checkpointed into "
                                     "--out/<rule>/ after every epoch: rerun the same command to continue. "
                                     "Ends with the table next to biotorch's errors (CSV, markdown) and learning "
                                     "curves. --search runs the short learning-rate search instead.\n\n"
                                     "resnet20-fashion-mnist: ResNet-20 (biotorch's small ResNet, 1 input "
                                     "channel) on the same images by biotorch's CIFAR-10 recipe (SGD lr 0.1 "
                                     "momentum 0.9, weight decay 1e-4, batch 128, lr / 10 at 2/5, 3/5 and 4/5 "
                                     "of --epochs, default 250) for bp fa dfa dfa-block usf brsf frsf kp "
                                     "(dfa-block: DFA with feedback_points=\"block\"), resumable the same way.")
    rep.add_argument("experiment", choices=["linear", "nonlinear", "fashion-mnist", "lenet-fashion-mnist",
                                            "resnet20-fashion-mnist"],
                     help="which experiment")
    rep.add_argument("--out", default="results", metavar="DIR", help="folder for results and figures")
    rep.add_argument("--rules", nargs="+", metavar="RULE",
                     help=f"rules to run, some of: {_RULES} (default: linear bp fa shallow; nonlinear bp fa "
                          "dfa; fashion-mnist all)")
    rep.add_argument("--steps", type=_positive_int, metavar="N",
                     help="SGD steps of the teacher tasks (default: linear 5000, nonlinear 20000)")
    rep.add_argument("--hidden", type=_positive_int, nargs="+", metavar="WIDTH",
                     help="the student's hidden widths for the teacher tasks (default 20, as in the paper)")
    rep.add_argument("--epochs", type=_positive_int,
                     help="epochs (fashion-mnist: default 10; lenet-fashion-mnist: 100; resnet20-fashion-mnist: 250; "
                          "--search: 3, the protocol's first 3)")
    rep.add_argument("--lr", type=float, metavar="LR",
                     help="initial learning rate for every rule (the tables; default: the recipe's per-rule rates)")
    rep.add_argument("--jobs", type=_positive_int, default=2, help="rules trained at once (the tables)")
    rep.add_argument("--stop-after", type=_positive_int, metavar="EPOCHS",
                     help="stop each rule once it has this many epochs; rerun to continue (the tables)")
    rep.add_argument("--report", action="store_true",
                     help="train nothing: the table and figures of what --out holds (the tables)")
    rep.add_argument("--search", action="store_true",
                     help="the learning-rate search: each rule at lr 1e-4 3e-4 ... 0.1 for the protocol's "
                          "first --epochs (3) epochs, trained on all training images but the last 10000 "
                          "(or the first --train-size of them) and scored on those 10000 "
                          "(the tables; results in --out/search)")
    rep.add_argument("--search-lrs", type=float, nargs="+", metavar="LR",
                     help="learning rates --search tries (default 0.0001 0.0003 0.001 0.003 0.01 0.03 0.1)")
    rep.add_argument("--test-size", type=_positive_int, metavar="N", help="first N test images (the tables)")
    rep.add_argument("--train-size", type=_positive_int, metavar="N",
                     help="first N training images (fashion-mnist, lenet-fashion-mnist, resnet20-fashion-mnist; with --search, the first N "
                          "of those it trains on)")
    rep.add_argument("--data-path", metavar="DIR", help="Fashion-MNIST folder, or an .npz file of images (the tables)")
    rep.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of every random draw")
    rep.add_argument("--no-plots", action="store_true", help="write no figures (they need matplotlib)")
    rep.add_argument("--quiet", action="store_true", help="no progress output")
    _add_sweep(sub)
    _add_docs(sub)
    _add_robustness(sub)
    return parser


def _load_data(args, parser):
    from . import datasets, experiments
    chain = bool(args.arch or args.layers)
    if args.data == "fashion-mnist":
        try:
            if chain:
                Xtr, ytr, Xte, yte = experiments.fashion_mnist_images(path=args.data_path, dtype=args.dtype,
                                                                      pad=args.pad)
            else:
                Xtr, ytr, Xte, yte = datasets.fashion_mnist(path=args.data_path, dtype=args.dtype)
        except FileNotFoundError as e:
            parser.error(_in_cli_words(str(e)))
    elif args.data.endswith(".npz"):
        if not os.path.isfile(args.data):
            parser.error(f"--data {args.data}: no such file")
        with np.load(args.data) as f:
            missing = [k for k in ("X_train", "y_train") if k not in f]
            if missing:
                parser.error(f"--data {args.data} lacks {', '.join(missing)} (it has {', '.join(f.files) or 'nothing'})")
            Xtr, ytr = f["X_train"], f["y_train"]
            Xte, yte = (f["X_test"], f["y_test"]) if "X_test" in f and "y_test" in f else (None, None)
        _check_labels(parser, args.data, ytr, yte)
    else:
        parser.error(f"--data must be 'fashion-mnist' or a path ending in .npz, got {args.data!r}")
    if not chain and Xtr.ndim != 2:
        parser.error(f"X_train has shape {Xtr.shape}: a dense network (--hidden) takes 2-D X (samples, features); "
                     "for images give the network with --arch lenet5|resnet20 or --layers '[...]'")
    if chain and Xtr.ndim not in (2, 4):
        parser.error(f"X_train must be 2-D (samples, features) or 4-D (samples, channels, height, width), "
                     f"got shape {Xtr.shape}")
    if args.train_size:
        Xtr, ytr = Xtr[:args.train_size], ytr[:args.train_size]
    validation = None if Xte is None else (Xte, yte)
    return Xtr, ytr, validation


def _in_cli_words(message):
    """The data loader's advice names its Python arguments; say the options instead."""
    return (message.replace("the path= argument", "--data-path").replace("path= was not given", "--data-path was not given")
            .replace("pass path=<folder>", "pass --data-path <folder>"))


def _shown(values, limit=12):
    values = [v.item() if hasattr(v, "item") else v for v in values]
    return ", ".join(map(repr, values[:limit])) + (f", ... ({len(values)} in all)" if len(values) > limit else "")


def _check_labels(parser, path, *label_arrays):
    """The network's outputs are the classes 0..k-1: refuse labels that are not exactly those, saying which were found."""
    names = ("y_train", "y_test")
    for name, y in zip(names, label_arrays):
        if y is None:
            continue
        if y.ndim != 1:
            parser.error(f"--data {path}: {name} must be 1-D (one label per sample), got shape {y.shape}")
        if not (np.issubdtype(y.dtype, np.integer) and y.dtype != np.bool_):
            parser.error(f"--data {path}: {name} holds {y.dtype} labels ({_shown(np.unique(y))}); the command line "
                         "needs integer class labels 0..k-1. Map them first, e.g. "
                         "classes, y = np.unique(y, return_inverse=True).")
    present = np.unique(np.concatenate([y for y in label_arrays if y is not None]))
    k = int(present[-1]) + 1 if present.size else 0
    absent = sorted(set(range(k)) - set(present.tolist()))
    if present.size and (present[0] < 0 or absent):
        fix = (f"subtract {int(present[0])} so they start at 0" if present[0] > 0 and
               np.array_equal(present, np.arange(present[0], present[-1] + 1)) else
               "renumber them, e.g. classes, y = np.unique(y, return_inverse=True)")
        which = [n for n, y in zip(names, label_arrays) if y is not None]
        what = "some are negative" if present[0] < 0 else \
            f"no sample has class{'es' if len(absent) > 1 else ''} {_shown(absent)}, so the network would get " \
            f"{k} outputs and {len(absent)} of them would never be trained"
        parser.error(f"--data {path}: the labels must be the class numbers 0..k-1; {' and '.join(which)} "
                     f"{'holds' if len(which) == 1 else 'hold'} {len(present)} distinct labels ({_shown(present)}), "
                     f"and {what}. Please {fix}.")


def _check_names(parser, option, names, kind):
    from ._runtime import engine
    allowed = engine().names(kind)
    for name in names:
        if name not in allowed:
            parser.error(f"{option}: unknown {kind} {name!r}; this engine has {', '.join(allowed)}")


def _sizes(args, Xtr, ytr):
    return [Xtr.shape[1], *args.hidden, int(np.max(ytr)) + 1]


def _chain(args, parser, Xtr, ytr):
    """The --arch or --layers network as a list of layers (None for the dense --hidden one)."""
    from . import experiments
    from .layers import from_text
    try:
        if args.arch:
            if Xtr.ndim != 4:
                parser.error(f"--arch {args.arch} needs images (samples, channels, height, width); X_train has "
                             f"shape {Xtr.shape}")
            return experiments.architecture(args.arch, in_channels=Xtr.shape[1], classes=int(np.max(ytr)) + 1)
        if args.layers:
            return from_text(args.layers, "--layers")
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    return None


def _network(args, layers, sizes, Xtr, rule):
    from .network import Network
    if layers is not None:
        return Network(layers, input_shape=Xtr.shape[1:], rule=rule, seed=args.seed,
                       feedback_seed=args.feedback_seed, dtype=args.dtype)
    return Network(sizes, activation=args.activation, rule=rule, seed=args.seed,
                   feedback_seed=args.feedback_seed, dtype=args.dtype)


def _described(args, layers, sizes):
    if layers is None:
        return f"{'-'.join(map(str, sizes))} {args.activation}"
    return args.arch or f"{len(layers)}-layer chain"


def _sgd(args):
    from .optimizers import SGD
    return SGD(lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)


def _train(args, parser):
    from . import experiments
    Xtr, ytr, validation = _load_data(args, parser)
    _check_names(parser, "--rule", [args.rule], "rule")
    layers = _chain(args, parser, Xtr, ytr)
    if layers is None:
        _check_names(parser, "--activation", [args.activation], "activation")
    sizes = _sizes(args, Xtr, ytr) if layers is None else None
    out = args.out or _new_run_folder()
    made = not os.path.exists(out)
    model = os.path.join(out, "model.safetensors")

    def checkpoint(net, history):   # the model of the last completed epoch: what Ctrl-C leaves
        os.makedirs(out, exist_ok=True)
        net.save(model, include_optimizer=True)   # the optimizer too, so `fit` on the loaded model resumes exactly

    print(f"training {_described(args, layers, sizes)}, rule {args.rule}, {len(Xtr)} samples, "
          f"SGD lr {args.lr} momentum {args.momentum} weight decay {args.weight_decay}, batch {args.batch_size}, "
          f"{args.epochs} epochs, seed {args.seed}")
    net, interrupted = None, None
    try:
        net = _network(args, layers, sizes, Xtr, args.rule)
        history = net.fit(Xtr, ytr, epochs=args.epochs, batch_size=args.batch_size,
                          optimizer=_sgd(args), validation_data=validation, on_epoch_end=checkpoint,
                          progress=not args.quiet, track_alignment=args.track_alignment or None)
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    except KeyboardInterrupt as e:   # Ctrl-C: keep the completed epochs, then exit 130 (main)
        done = len(net.history["loss"]) if net is not None and net.history else 0
        if not done:
            if made and os.path.isdir(out) and not os.listdir(out):
                os.rmdir(out)
            print("\ninterrupted before the first epoch ended: nothing saved", file=sys.stderr)
            raise
        interrupted, history = e, net.history
        if history.get("alignment"):   # records of the unfinished epoch go with its unsaved batches
            keep = [i for i, epoch in enumerate(history["alignment"]["epoch"]) if epoch <= done]
            history["alignment"] = {k: [v[i] for i in keep] for k, v in history["alignment"].items()}
        print(f"\ninterrupted in epoch {done + 1}: saving the {done} completed epochs; the model file is the "
              f"checkpoint written after epoch {done} (the batches of epoch {done + 1} are not in it)", file=sys.stderr)
    params = dict(vars(args), out=out, **(dict(sizes=sizes) if layers is None else
                                          dict(layers=[repr(layer) for layer in layers],
                                               input_shape=list(Xtr.shape[1:]))))
    result = {"experiment": "history", "params": params, "runs": {args.rule: history}}
    files = experiments.save_results(result, out, plot=False) + [model]
    last = {k: v[-1] for k, v in history.items() if isinstance(v, list) and v and not isinstance(v[-1], list)}
    print(f"final (epoch {len(history['loss'])}): " + "  ".join(f"{k} {v:.4f}" for k, v in last.items()
                                                              if k != "seconds"))
    print("wrote " + ", ".join(files))
    if interrupted is not None:
        raise interrupted


def _new_run_folder():
    """runs/<date-time>, a folder no earlier run used (runs/ is in .gitignore)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path, n = os.path.join("runs", stamp), 1
    while os.path.exists(path):
        n += 1
        path = os.path.join("runs", f"{stamp}-{n}")
    return path


def _table(result):
    """One row per rule: accuracy, seconds, and the final angle of each hidden layer to backprop."""
    from .plots import _compared_layers, _final, _layers_with_B   # as the summary figure shows them
    runs = result["runs"]
    tracked = [h["alignment"] for h in runs.values() if h.get("alignment") and h["alignment"]["step"]]
    if tracked:   # the layers some rule has an angle for (engine layers: a chain's ReLUs count too)
        compared = sorted({k for a in tracked for k in _compared_layers(a)})
        with_B = sorted({k for a in tracked for k in _layers_with_B(a)})
    else:
        n_hidden = len(result["params"].get("sizes") or [0, 0]) - 2
        compared, with_B = list(range(n_hidden)), list(range(n_hidden + 1))
    head = f"{'rule':<8} {'test acc':>8} {'train loss':>10} {'s/epoch':>8}" + \
        "".join(f"{f'dW∠BP L{k}':>10}" for k in compared) + \
        "".join(f"{f'B∠W L{k}':>9}" for k in with_B)
    lines = [head]
    for rule, h in runs.items():
        acc = h.get("val_accuracy", h.get("accuracy", [float("nan")]))[-1]
        steady = h["seconds"][1:] or h["seconds"]  # the first epoch includes compiling for this network
        row = f"{rule:<8} {acc:>8.4f} {h['loss'][-1]:>10.4f} {np.mean(steady):>8.2f}"
        a = h.get("alignment")
        for k in compared:
            v = _final(a, "update_angle", k) if a and a["step"] else float("nan")
            row += f"{'-' if np.isnan(v) else f'{v:.1f}':>10}"
        for k in with_B:
            v = _final(a, "feedback_angle", k) if a and a["step"] else float("nan")
            row += f"{'-' if np.isnan(v) else f'{v:.1f}':>9}"
        lines.append(row)
    lines.append("s/epoch: mean seconds per epoch after the first (which includes compiling);")
    lines.append("dW∠BP Lk: degrees between the rule's update of hidden layer k and backprop's (mean of the "
                 "last epoch's records; - where the rule has none to compare);")
    lines.append("B∠W Lk: degrees between layer k's feedback matrix and the forward weights it stands in for.")
    return "\n".join(lines)


def _plots_available(args):
    if args.no_plots:
        return False
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("(no figures: matplotlib is not installed; pip install 'pyjlfa[plot]', or pass --no-plots)",
              file=sys.stderr)
        return False
    return True


def _compare(args, parser):
    from . import experiments
    Xtr, ytr, validation = _load_data(args, parser)
    rules = args.rules or list(experiments.available_rules())
    _check_names(parser, "--rules", rules, "rule")
    layers = _chain(args, parser, Xtr, ytr)
    if layers is None:
        _check_names(parser, "--activation", [args.activation], "activation")
    sizes = _sizes(args, Xtr, ytr) if layers is None else None
    data = "Fashion-MNIST" if args.data == "fashion-mnist" else os.path.basename(args.data)
    title = (f"{data} ({len(Xtr)} training samples), {_described(args, layers, sizes)}, SGD lr {args.lr}"
             f"{f' momentum {args.momentum}' if args.momentum else ''}"
             f"{f' weight decay {args.weight_decay}' if args.weight_decay else ''}, batch {args.batch_size}, {args.epochs} epochs, "
             f"seed {args.seed}")
    print(f"comparing {', '.join(rules)}: {title}")
    try:
        result = experiments.compare(Xtr, ytr, validation, rules=rules, sizes=sizes, layers=layers,
                                     activation=args.activation,
                                     epochs=args.epochs, batch_size=args.batch_size,
                                     optimizer=_sgd(args), seed=args.seed,
                                     feedback_seed=args.feedback_seed, dtype=args.dtype,
                                     track_alignment=args.track_alignment or None, name="compare",
                                     progress=not args.quiet, title=title)
    except (ValueError, TypeError) as e:
        parser.error(str(e))
    args.out = args.out or _new_run_folder()
    files = experiments.save_results(result, args.out, plot=_plots_available(args))
    print()
    print(_table(result))
    print("\nwrote " + ", ".join(files))


def _reproduce(args, parser):
    from . import experiments
    plot = _plots_available(args)
    kwargs = dict(seed=args.seed, out_dir=args.out, plot=plot, progress=not args.quiet)
    if args.experiment in experiments.RECIPES:
        return _reproduce_table(args, parser)
    if args.epochs is None:
        args.epochs = 10
    try:
        if args.experiment == "fashion-mnist":
            result = experiments.fashion_mnist(rules=args.rules, epochs=args.epochs, train_size=args.train_size,
                                               path=args.data_path, **kwargs)
        else:
            if args.rules:
                kwargs["rules"] = args.rules
            if args.steps:
                kwargs["steps"] = args.steps
                kwargs["record_every"] = max(1, args.steps // 200)
            if args.hidden:
                kwargs["hidden"] = args.hidden
                kwargs["name"] = f"{args.experiment}_task_{'-'.join(map(str, [30, *args.hidden, 10]))}"
            task = experiments.linear_task if args.experiment == "linear" else experiments.nonlinear_task
            result = task(**kwargs)
    except (ValueError, TypeError, FileNotFoundError) as e:
        parser.error(_in_cli_words(str(e)))
    if "step" in result:
        print(f"\n{'rule':<8} {'lr':>7} {'normalised error':>17} {'hidden δ∠BP (deg)':>18} {'B∠W (deg)':>10}")
        for rule, run in result["runs"].items():
            a = run["alignment"]
            delta = [v for v in a["delta_angle"][-1] if v == v]
            wb = [v for v in a["feedback_angle"][-1] if v == v]
            print(f"{rule:<8} {run['lr']:>7g} {run['error'][-1]:>17.3g} "
                  f"{(', '.join(f'{v:.1f}' for v in delta) or '-'):>18} {(', '.join(f'{v:.1f}' for v in wb) or '-'):>10}")
    else:
        print()
        print(_table(result))
    print(f"\nwrote {args.out}/{result['experiment']}.*")


def _reproduce_table(args, parser):
    from . import experiments
    recipe = args.experiment
    if args.out == "results":   # the shared default: keep this experiment's many files together
        args.out = os.path.join("results", recipe)
    try:
        if args.search:
            search_dir = os.path.join(args.out, "search")
            lrs = args.search_lrs or experiments.LENET_SEARCH_LRS
            result = experiments.lr_search(recipe, rules=args.rules, lrs=lrs, out_dir=search_dir,
                                           epochs=args.epochs or 3, train_size=args.train_size, jobs=args.jobs,
                                           seed=args.seed, data_path=args.data_path, progress=not args.quiet)
            print(experiments.search_table(result, lrs, args.epochs or 3, 10000))
            print(f"\nwrote {search_dir}/search.csv, {search_dir}/search.md")
            return
        if args.lr is not None and not args.lr > 0:
            parser.error(f"--lr must be a positive number, got {args.lr}")
        report = experiments.reproduce(
            recipe, rules=args.rules, out_dir=args.out, epochs=args.epochs, lr=args.lr, jobs=args.jobs,
            seed=args.seed, train_size=args.train_size, test_size=args.test_size, data_path=args.data_path,
            stop_after=args.stop_after, plot=_plots_available(args), progress=not args.quiet, run=not args.report)
    except (ValueError, TypeError, FileNotFoundError) as e:
        parser.error(_in_cli_words(str(e)))
    print()
    print(experiments.results_table(report["rows"]))
    for rule, error in report["failures"].items():
        print(f"{rule}: failed: {error}", file=sys.stderr)
    print("\nwrote " + ", ".join(report["files"]))
    if report["failures"]:
        sys.exit(1)


# -- pyjlfa sweep (pyjlfa/sweep.py) ----------------------------------------------------------------
def _add_sweep(sub):
    p = sub.add_parser("sweep", formatter_class=_Formatter,
                       help="run a grid of trainings from a TOML spec on Dask (resumable); summarise",
                       description="Run every configuration of SPEC.toml (a grid over rules, seeds, learning "
                                   "rates, ...) on Dask distributed: a local cluster of spawned worker processes "
                                   "by default, or the cluster at --scheduler. Each run's result is written to "
                                   "DIR/runs/<id>.json as it finishes; rerunning the command skips finished "
                                   "runs. Ends with DIR/summary.csv (mean ± std over seeds) and figures. "
                                   "The spec format is in docs/sweeps.md and in pyjlfa/sweep.py.")
    p.add_argument("spec", metavar="SPEC.toml", help="the sweep spec")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for results, summary and figures")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="a running Dask scheduler (e.g. tcp://10.0.0.5:8786) instead of a local cluster")
    p.add_argument("--workers", type=_positive_int, metavar="N",
                   help="worker processes of the local cluster (default: one per core)")
    p.add_argument("--retry-failed", action="store_true", help="run again the runs recorded as failed")
    p.add_argument("--no-plots", action="store_true", help="write no figures (they need matplotlib)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _sweep(args, parser):
    from .sweep import SpecError, sweep
    if not os.path.isfile(args.spec):
        parser.error(f"{args.spec}: no such file")
    try:
        sweep(args.spec, out=args.out, scheduler=args.scheduler, workers=args.workers,
                    retry_failed=args.retry_failed, plot=_plots_available(args), progress=not args.quiet)
    except SpecError as e:
        parser.error(str(e))
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are saved in {args.out}/runs; run the same command again to resume",
              file=sys.stderr)
        sys.exit(130)


# -- pyjlfa docs (the documentation site: mkdocs.yml, docs/) -----------------------------------------
def _add_docs(sub):
    p = sub.add_parser("docs", formatter_class=_Formatter,
                       help="build the documentation site and serve it locally (needs a checkout and mkdocs)",
                       description="Build the documentation site (MkDocs, from the repository's mkdocs.yml and "
                                   "docs/) and serve it on http://ADDRESS, rebuilding when a page changes; "
                                   "--build-only writes it to --out instead. Needs a checkout of the repository "
                                   "and the site's tools: pip install -e .[docs].")
    p.add_argument("--address", default="127.0.0.1:8000", metavar="HOST:PORT", help="where to serve the site")
    p.add_argument("--build-only", action="store_true", help="build the site into --out and stop")
    p.add_argument("--out", default="site", metavar="DIR", help="folder for --build-only")


def _docs(args, parser):
    import importlib.util
    import subprocess
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    config = os.path.join(root, "mkdocs.yml")
    if not os.path.isfile(config):
        parser.error(f"no mkdocs.yml beside the package ({root}): the site builds from a checkout of the repository")
    if importlib.util.find_spec("mkdocs") is None:
        parser.error("the site needs MkDocs: pip install -e .[docs] (mkdocs, mkdocs-material, mkdocstrings[python])")
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""), "NO_MKDOCS_2_WARNING": "1"}
    command = (["build", "--strict", "-d", os.path.abspath(args.out)] if args.build_only
               else ["serve", "--dev-addr", args.address])
    result = subprocess.run([sys.executable, "-m", "mkdocs", *command, "-f", config], env=env)
    if result.returncode:
        sys.exit(result.returncode)


# -- pyjlfa robustness (pyjlfa/robustness.py) ------------------------------------------------------
def _add_robustness(sub):
    p = sub.add_parser("robustness", formatter_class=_Formatter, epilog=_EPILOG,
                       help="attack saved models (FGSM, PGD, Square); print robust accuracy per eps; plot it",
                       description="Attack each saved model (a model.safetensors file) on the test set with each "
                                   "--attack at each --eps, FGSM and PGD through the weights and/or through the "
                                   "rule's own feedback (--through), and print the robust accuracy (eps 0: the clean "
                                   "accuracy). eps and the pixel range are in pixel units ([0, 1]); with --normalize "
                                   "MEAN STD the models saw (pixel - MEAN) / STD (as `pyjlfa reproduce "
                                   "lenet-fashion-mnist` trains them), and eps is divided by STD. Images are "
                                   "zero-padded (in the network's units) to the models' input size. Each result is "
                                   "saved into --out/robustness.json as it is done: rerun the same command to "
                                   "continue. Ends with robustness.csv and robustness.png (a panel per attack, a "
                                   "line per model).")
    p.add_argument("models", nargs="+", metavar="MODEL", help="model files (pyjlfa.load reads them)")
    p.add_argument("--attack", nargs="+", choices=["fgsm", "pgd", "square"], default=["fgsm", "pgd", "square"],
                   help="the attacks: FGSM and PGD follow a gradient, Square only reads the outputs")
    p.add_argument("--eps", type=_nonnegative_float, nargs="+", default=[0.0, 0.01, 0.02, 0.03, 0.05, 0.1],
                   help="L-inf radii in pixel units")
    p.add_argument("--through", nargs="+", choices=["weights", "feedback"], default=["weights", "feedback"],
                   help="the gradient FGSM and PGD follow: the true one (weights) or the rule's feedback path")
    p.add_argument("--data", default="fashion-mnist", metavar="fashion-mnist|FILE.npz",
                   help="'fashion-mnist' (its test set) or an .npz file with X_test (n, C, H, W) in [0, 1] and y_test")
    p.add_argument("--data-path", metavar="DIR", help="Fashion-MNIST folder")
    p.add_argument("--normalize", type=float, nargs=2, metavar=("MEAN", "STD"),
                   help="the models see (pixel - MEAN) / STD (the LeNet reproduction: 0.2860 0.3530)")
    p.add_argument("--test-size", type=_positive_int, metavar="N", help="the first N test images only")
    p.add_argument("--steps", type=_positive_int, default=10, help="PGD steps (step size 2.5 eps / steps)")
    p.add_argument("--restarts", type=_positive_int, default=1, help="PGD random restarts")
    p.add_argument("--queries", type=_positive_int, default=1000, help="Square: predictions per image at most")
    p.add_argument("--p-init", type=_positive_float, default=0.05, help="Square: initial share of pixels changed")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of PGD's starts and Square's draws")
    p.add_argument("--out", default="results/robustness", metavar="DIR", help="folder for results and the figure")
    p.add_argument("--no-plots", action="store_true", help="write no figure (it needs matplotlib)")


def _robustness_data(args, parser, shape):
    """Test images as the models see them: (X, y, bounds, scale) with eps_network = eps_pixels / scale."""
    from . import datasets
    if args.data == "fashion-mnist":
        try:
            _, _, X, y = datasets.fashion_mnist(path=args.data_path, images=True)
        except FileNotFoundError as e:
            parser.error(_in_cli_words(str(e)))
    elif args.data.endswith(".npz") and os.path.isfile(args.data):
        with np.load(args.data) as f:
            if "X_test" not in f or "y_test" not in f:
                parser.error(f"--data {args.data} needs X_test and y_test")
            X, y = f["X_test"].astype(np.float32), f["y_test"]
    else:
        parser.error(f"--data must be 'fashion-mnist' or an existing .npz file, got {args.data!r}")
    if args.test_size:
        X, y = X[:args.test_size], y[:args.test_size]
    grow = (shape[1] - X.shape[2], shape[2] - X.shape[3]) if X.ndim == 4 and len(shape) == 3 else None
    if grow is None or X.shape[1] != shape[0] or grow[0] != grow[1] or grow[0] < 0 or grow[0] % 2:
        parser.error(f"the test images have shape {X.shape[1:]}, the models take {shape}: they must be images "
                     "that the same zero padding on every side fits")
    mean, std = args.normalize if args.normalize else (0.0, 1.0)
    if not std > 0:
        parser.error(f"--normalize STD must be positive, got {std}")
    pad = grow[0] // 2
    out = np.zeros((X.shape[0],) + tuple(shape), dtype=X.dtype)
    out[:, :, pad:pad + X.shape[2], pad:pad + X.shape[3]] = (X - X.dtype.type(mean)) / X.dtype.type(std)
    t = X.dtype.type   # the range's ends computed as the pixels were, so that 0 and 1 land on them exactly
    return out, y, (float((t(0) - t(mean)) / t(std)), float((t(1) - t(mean)) / t(std))), std


def _robustness(args, parser):
    import datetime
    import json
    from . import io, robustness
    for path in args.models:
        if not os.path.isfile(path):
            parser.error(f"{path}: no such model file")
    os.makedirs(args.out, exist_ok=True)
    results_path = os.path.join(args.out, "robustness.json")
    records = []
    if os.path.exists(results_path):
        with open(results_path) as f:
            records = json.load(f)["records"]
    nets = []
    for path in args.models:
        try:
            nets.append((path, io.load(path)))
        except (ValueError, OSError) as e:
            parser.error(f"{path}: {e}")
    rules = [net.rule for _, net in nets]
    shapes = {net.input_shape for _, net in nets}
    if len(shapes) != 1:
        parser.error(f"the models take different inputs ({', '.join(map(str, shapes))}); attack them separately")
    X, y, bounds, scale = _robustness_data(args, parser, shapes.pop())
    eps = [e / scale for e in args.eps]
    done = []
    for path, net in nets:
        label = net.rule if rules.count(net.rule) == 1 else f"{net.rule} ({path})"
        for attack in args.attack:
            for through in (args.through if attack != "square" else [None]):
                settings = ({"through": through} if attack == "fgsm" else
                            {"steps": args.steps, "restarts": args.restarts, "seed": args.seed, "through": through}
                            if attack == "pgd" else {"queries": args.queries, "p_init": args.p_init, "seed": args.seed})
                key = dict(model=os.path.abspath(path), attack=attack, eps_pixels=args.eps, settings=settings,
                           n_samples=len(X), normalize=args.normalize, data=args.data)
                record = next((r for r in records if all(r.get(k) == v for k, v in key.items())), None)
                if record is None:
                    start = time.perf_counter()
                    try:
                        result = robustness.evaluate(net, X, y, attack=attack, eps=eps, bounds=bounds, **settings)
                    except (ValueError, TypeError) as e:
                        parser.error(f"{path}: {e}")
                    record = dict(key, label=label, rule=net.rule, epochs=net.epochs, through=through,
                                  robust_accuracy=result["robust_accuracy"], eps_network=eps,
                                  queries_mean=result.get("queries_mean"), seconds=time.perf_counter() - start,
                                  date=datetime.date.today().isoformat())
                    records.append(record)
                    tmp = results_path + ".tmp"
                    with open(tmp, "w") as f:
                        json.dump({"records": records}, f, indent=1)
                    os.replace(tmp, results_path)
                    print(f"{label:>6} {attack:>6} {through or '':>8}: " +
                          " ".join(f"{100 * a:.1f}" for a in record["robust_accuracy"]) +
                          f"  ({record['seconds']:.0f} s)", file=sys.stderr, flush=True)
                record["label"] = label
                done.append(record)
    table = _robustness_table(done)
    print(table)
    with open(os.path.join(args.out, "robustness.csv"), "w") as f:
        f.write("model,rule,epochs,attack,through," + ",".join(f"eps={e:g}" for e in args.eps) + "\n")
        for r in done:
            f.write(",".join([r["model"], r["rule"], str(r["epochs"]), r["attack"], r["through"] or "-"]
                             + [f"{a:.4f}" for a in r["robust_accuracy"]]) + "\n")
    files = [results_path, os.path.join(args.out, "robustness.csv")]
    if _plots_available(args):
        from .plots import robustness_figure
        files.append(robustness_figure(done, os.path.join(args.out, "robustness.png")))
    print("\nwrote " + ", ".join(files))


def _robustness_table(records):
    """Robust accuracy (%) per model, attack and gradient path, one column per eps (pixel units)."""
    eps = records[0]["eps_pixels"] if records else []
    head = f"{'model':<8} {'epochs':>6} {'attack':<7} {'through':<9}" + "".join(f"{'eps ' + format(e, 'g'):>10}"
                                                                           for e in eps)
    rows = [head, "-" * len(head)]
    for r in records:
        rows.append(f"{r['label']:<8} {r['epochs']:>6} {r['attack']:<7} {r['through'] or '-':<9}"
                    + "".join(f"{100 * a:>10.1f}" for a in r["robust_accuracy"]))
    return "\n".join(rows)


def main(argv=None):
    """Run the pyjlfa command.

    Parameters
    ----------
    argv : list of str, optional
        The arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        The exit status: 0, or 130 after Ctrl-C.
    """
    parser = _parser()
    args = parser.parse_args(argv)
    sub = parser._subparsers._group_actions[0].choices[args.command]
    if getattr(args, "rule", None):   # rule names are case-insensitive: --rule uSF is usf
        args.rule = _schema.rule_name(args.rule)
    if getattr(args, "rules", None):
        args.rules = [_schema.rule_name(r) for r in args.rules]
    try:
        {"train": _train, "compare": _compare, "reproduce": _reproduce, "sweep": _sweep,
         "docs": _docs, "robustness": _robustness}[args.command](args, sub)
    except KeyboardInterrupt as e:   # Ctrl-C: stopped between two batches
        print(f"\npyjlfa {args.command}: {e if str(e) else 'interrupted (Ctrl-C)'}", file=sys.stderr)
        return 130   # 128 + SIGINT, as a shell reports a process that SIGINT stopped
    return 0


if __name__ == "__main__":
    sys.exit(main())
