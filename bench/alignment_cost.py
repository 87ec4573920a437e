"""What tracking alignment costs, measured as ratios in one run (Fashion-MNIST, 784-256-256-10 tanh).

    PYTHONPATH=. python bench/alignment_cost.py [--rules fa dfa] [--every 0 50 10 1] [--repeats 3]

1. Seconds per epoch of fit(track_alignment=n) against fit without it. The configurations take
   turns, one epoch each, and each keeps its best of --repeats epochs, so a machine that gets
   busier or quieter during the run does not favour one of them.
2. The price of one record in training steps: a record runs backprop's backward pass once more on
   the batch the epoch loop has just run forward and backward, plus one pass over W and B for the
   angle and norm sums. Timed as alignment() minus gradients() (both do the forward pass and the
   rule's backward pass) against step(), on one batch, interleaved, best of many.
"""

import argparse
import time

import numpy as np

import pyjlfa


def best_time(f, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", nargs="+", default=["fa", "dfa"])
    parser.add_argument("--every", nargs="+", type=int, default=[0, 50, 10, 1],
                        help="track every n batches; 0 means no tracking (the baseline)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    Xtr, ytr, _, _ = pyjlfa.datasets.fashion_mnist()
    batches = -(-len(Xtr) // args.batch_size)
    print(f"784-256-256-10 tanh, float32, batch {args.batch_size} ({batches} batches per epoch)\n")
    print(f"{'rule':<5} {'track every':>12} {'s/epoch':>8} {'ratio':>6} {'records':>8}")
    for rule in args.rules:
        nets = {every: pyjlfa.Network([784, 256, 256, 10], rule=rule, seed=0) for every in args.every}
        for every, net in nets.items():  # compile
            net.fit(Xtr[:6400], ytr[:6400], batch_size=args.batch_size, track_alignment=every or None)
        best, records = {e: float("inf") for e in nets}, {}
        for _ in range(args.repeats):
            for every, net in nets.items():
                start = time.perf_counter()
                hist = net.fit(Xtr, ytr, batch_size=args.batch_size, optimizer=pyjlfa.SGD(0.05),
                               track_alignment=every or None)
                best[every] = min(best[every], time.perf_counter() - start)
                records[every] = len(hist["alignment"]["step"]) if every else 0
        base = best[args.every[0]]
        for every in nets:
            print(f"{rule:<5} {every or '-':>12} {best[every]:>8.3f} {best[every] / base:>6.2f} {records[every]:>8}")

    print(f"\none record against one training step, on one batch of {args.batch_size} (best of 200 each, interleaved):")
    Xb, yb = Xtr[:args.batch_size], ytr[:args.batch_size]
    for rule in args.rules:
        net = pyjlfa.Network([784, 256, 256, 10], rule=rule, seed=0)
        opt = pyjlfa.SGD(1e-9)   # steps that barely move the weights
        calls = {"step": lambda: net.step(Xb, yb, opt), "gradients": lambda: net.gradients(Xb, yb),
                 "alignment": lambda: net.alignment(Xb, yb)}
        t = {k: float("inf") for k in calls}
        for _ in range(200):
            for k, f in calls.items():
                t[k] = min(t[k], best_time(f, 1))
        record = t["alignment"] - t["gradients"]
        print(f"{rule:<5} step {1000 * t['step']:.2f} ms, record {1000 * record:.2f} ms = {record / t['step']:.2f} steps")


if __name__ == "__main__":
    main()
