"""MLPClassifier against FeedbackAlignmentClassifier (BP, FA, DFA) on Fashion-MNIST, in one run.

    python bench/sklearn_compare.py [--epochs 5] [--rules bp fa dfa]

The same task for all: 784-256-256-10, tanh, plain SGD (lr 0.05, no momentum), batch 64, shuffled,
float32, a fixed number of epochs (tol=0 and n_iter_no_change > epochs, so nothing stops early; for
SGD, MLPClassifier's max_iter counts epochs). What differs: the initial weights and the shuffling
order (each library draws its own). Fit times exclude pyjlfa's one-time Julia start and compilation,
which are measured and printed separately. Timings are noisy on shared machines: read the ratios.
"""

import argparse
import time
import warnings

from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

import pyjlfa
from pyjlfa.sklearn import FeedbackAlignmentClassifier


def timed_fit(model, X, y):
    start = time.perf_counter()
    model.fit(X, y)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--rules", nargs="+", default=["bp", "fa", "dfa"])
    args = parser.parse_args()
    warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter is reached on purpose

    Xtr, ytr, Xte, yte = pyjlfa.datasets.fashion_mnist()  # float32 in [0, 1]
    common = dict(hidden_layer_sizes=(256, 256), activation="tanh", learning_rate_init=0.05, momentum=0.0,
                  nesterovs_momentum=False, batch_size=64, alpha=0.0, max_iter=args.epochs, tol=0.0,
                  n_iter_no_change=args.epochs + 1, shuffle=True, random_state=0)

    # Julia's start and the compilation of the methods these networks use, once per process.
    start = time.perf_counter()
    for rule in args.rules:
        FeedbackAlignmentClassifier(**dict(common, max_iter=1), rule=rule).fit(Xtr[:256], ytr[:256])
    warmup = time.perf_counter() - start

    rows = []
    mlp = MLPClassifier(solver="sgd", **common)
    rows.append(("MLPClassifier", "bp", timed_fit(mlp, Xtr, ytr), mlp.score(Xte, yte), mlp.n_iter_))
    for rule in args.rules:
        fa = FeedbackAlignmentClassifier(rule=rule, **common)
        rows.append(("FeedbackAlignmentClassifier", rule, timed_fit(fa, Xtr, ytr), fa.score(Xte, yte), fa.n_iter_))

    print(f"Fashion-MNIST, 784-256-256-10 tanh, SGD lr 0.05, batch 64, {args.epochs} epochs, float32; "
          f"Julia {pyjlfa.runtime_info()['julia_version']}")
    print(f"pyjlfa's Julia start + compilation (not in the fit times below): {warmup:.1f} s")
    mlp_seconds = rows[0][2]
    print(f"{'estimator':<28} {'rule':<4} {'epochs':>6} {'test accuracy':>13} {'fit s':>7} {'s/epoch':>7} "
          f"{'MLP time / this':>15}")
    for name, rule, seconds, accuracy, epochs in rows:
        print(f"{name:<28} {rule:<4} {epochs:>6} {accuracy:>13.4f} {seconds:>7.1f} {seconds / epochs:>7.2f} "
              f"{mlp_seconds / seconds:>15.2f}")


if __name__ == "__main__":
    main()
