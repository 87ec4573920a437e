"""What tracking alignment costs: seconds per Fashion-MNIST epoch with fit(track_alignment=n), in one run.

    python bench/alignment_cost.py [--rules fa dfa] [--every 0 100 10 1] [--repeats 3]

Each record runs backprop's backward pass once more on the batch the epoch loop has just run
forward and backward (no pass over the data), plus the angles and norms: ~ one backward pass and
a few reductions over the weights. Timings are noisy on shared machines: read the ratios, taken
as the best of --repeats epochs after a warm-up epoch that compiles.
"""

import argparse
import time

import pyjlfa


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", nargs="+", default=["fa", "dfa"])
    parser.add_argument("--every", nargs="+", type=int, default=[0, 100, 10, 1],
                        help="track every n batches; 0 means no tracking (the baseline)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()

    Xtr, ytr, _, _ = pyjlfa.datasets.fashion_mnist()
    batches = -(-len(Xtr) // args.batch_size)
    print(f"784-256-256-10 tanh, float32, batch {args.batch_size} ({batches} batches per epoch); "
          f"best of {args.repeats} epochs\n")
    print(f"{'rule':<5} {'track every':>12} {'s/epoch':>8} {'ratio':>6} {'records':>8} {'ms/record':>10}")
    for rule in args.rules:
        base = None
        for every in args.every:
            net = pyjlfa.Network([784, 256, 256, 10], rule=rule, seed=0)
            track = every or None
            net.fit(Xtr[:6400], ytr[:6400], batch_size=args.batch_size, track_alignment=track)  # compile
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                hist = net.fit(Xtr, ytr, batch_size=args.batch_size, optimizer=pyjlfa.SGD(0.05), track_alignment=track)
                times.append(time.perf_counter() - start)
            best = min(times)
            base = best if every == 0 else base
            records = len(hist["alignment"]["step"]) if track else 0
            per_record = 1000 * (best - base) / records if records and base else float("nan")
            print(f"{rule:<5} {every or '-':>12} {best:>8.3f} {best / base:>6.2f} {records:>8} {per_record:>10.2f}")


if __name__ == "__main__":
    main()
