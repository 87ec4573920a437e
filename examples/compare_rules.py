"""Train the same 784-256-256-10 tanh network on Fashion-MNIST with BP, FA and DFA, and compare.

    python examples/compare_rules.py [--epochs 10] [--batch-size 64] [--lr 0.05]

Every rule starts from the same forward weights (same seed); FA and DFA draw their fixed random
feedback matrices from the feedback seed. Prints a progress bar per epoch and a table at the end.
"""

import argparse
import time

import pyjlfa


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--rules", nargs="+", default=["bp", "fa", "dfa"],
                        help="rules to compare (default: bp fa dfa; 'all' for every rule)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()
    if args.rules == ["all"]:
        args.rules = ["bp", "fa", "dfa", "usf", "frsf", "brsf", "kp", "wm", "drtp", "sdfa", "shallow"]

    Xtr, ytr, Xte, yte = pyjlfa.datasets.fashion_mnist(dtype=args.dtype)
    info = pyjlfa.start_julia()
    print(f"Julia {info['julia_version']} ({info['started_by']}), {info['blas']}, {info['blas_threads']} BLAS threads")
    print(f"Fashion-MNIST: {len(Xtr)} train / {len(Xte)} test; 784-256-256-10 tanh, batch {args.batch_size}, "
          f"SGD lr {args.lr}, {args.epochs} epochs, {args.dtype}\n")

    rows = []
    for rule in args.rules:
        start = time.perf_counter()
        net = pyjlfa.Network([784, 256, 256, 10], activation="tanh", rule=rule, seed=0, dtype=args.dtype)
        hist = net.fit(Xtr, ytr, epochs=args.epochs, batch_size=args.batch_size,
                       optimizer=pyjlfa.SGD(lr=args.lr), validation_data=(Xte, yte), progress=True)
        total = time.perf_counter() - start
        # The first epoch includes Julia compiling this network's methods; report it apart.
        steady = hist["seconds"][1:] or hist["seconds"]
        rows.append((rule, hist["val_accuracy"][-1], sum(steady) / len(steady), hist["seconds"][0], total))

    print(f"\n{'rule':<5} {'test accuracy':>13} {'s/epoch':>8} {'first epoch s':>14} {'total s':>8}")
    for rule, acc, per_epoch, first, total in rows:
        print(f"{rule:<5} {acc:>13.4f} {per_epoch:>8.2f} {first:>14.2f} {total:>8.1f}")


if __name__ == "__main__":
    main()
