"""Seconds per Fashion-MNIST epoch, pyjlfa against the plain NumPy reference, in one run.

    python bench/epoch_time.py [--rules bp fa dfa] [--batch-size 64] [--dtype float32]

Also measures, in a fresh process, how long Julia takes to start and to make the first training
step (the compile latency a new user sees). Timings are noisy on shared machines: read the ratios.
"""

import argparse
import importlib.util
import json
import pathlib
import subprocess
import sys
import time

import numpy as np

import pyjlfa


def _load_reference():
    """The NumPy speed peer: the test oracle, loaded from its file (tests/reference.py is no package module)."""
    path = pathlib.Path(__file__).resolve().parents[1] / "tests" / "reference.py"
    spec = importlib.util.spec_from_file_location("pyjlfa_tests_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ReferenceNetwork = _load_reference().ReferenceNetwork

FIRST_STEP = """
import json, time
t0 = time.perf_counter()
import numpy as np, pyjlfa
pyjlfa.start_julia()
t1 = time.perf_counter()
net = pyjlfa.Network([784, 256, 256, 10], activation="tanh", rule="{rule}", seed=0, dtype="{dtype}")
X = np.random.default_rng(0).random((64, 784), dtype=np.{dtype}); y = np.arange(64) % 10
net.step(X, y, pyjlfa.SGD(0.05))
t2 = time.perf_counter()
net.step(X, y, pyjlfa.SGD(0.05))
t3 = time.perf_counter()
print(json.dumps(dict(start=t1 - t0, first_step=t2 - t1, second_step=t3 - t2)))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", nargs="+", default=["bp", "fa", "dfa"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args()

    fresh = subprocess.run([sys.executable, "-c", FIRST_STEP.format(rule="fa", dtype=args.dtype)],
                           capture_output=True, text=True, check=True)
    t = json.loads(fresh.stdout.splitlines()[-1])
    print(f"fresh process: import + start Julia {t['start']:.2f} s; first FA step (compiles) {t['first_step']:.2f} s; "
          f"second step {1000 * t['second_step']:.2f} ms")

    Xtr, ytr, _, _ = pyjlfa.datasets.fashion_mnist(dtype=args.dtype)
    info = pyjlfa.start_julia()
    print(f"Julia {info['julia_version']}, {info['blas']}; NumPy {np.__version__}")
    print(f"784-256-256-10 tanh, batch {args.batch_size}, {args.dtype}, one epoch of {len(Xtr)} samples\n")
    print(f"{'rule':<5} {'pyjlfa s/epoch':>15} {'NumPy s/epoch':>14} {'NumPy / pyjlfa':>15}")
    for rule in args.rules:
        net = pyjlfa.Network([784, 256, 256, 10], activation="tanh", rule=rule, seed=0, dtype=args.dtype)
        ref = ReferenceNetwork([l.W.copy() for l in net.layers], [l.b.copy() for l in net.layers],
                               [None if l.B is None else l.B.copy() for l in net.layers],
                               activation="tanh", rule=rule)
        net.fit(Xtr[:2000], ytr[:2000], batch_size=args.batch_size)  # compile outside the timing
        start = time.perf_counter()
        net.fit(Xtr, ytr, epochs=1, batch_size=args.batch_size, optimizer=pyjlfa.SGD(0.05))
        ours = time.perf_counter() - start
        order = np.random.default_rng(0).permutation(len(Xtr))
        start = time.perf_counter()
        ref.train_epoch(Xtr, ytr, batch_size=args.batch_size, lr=0.05, order=order)
        theirs = time.perf_counter() - start
        print(f"{rule:<5} {ours:>15.2f} {theirs:>14.2f} {theirs / ours:>14.2f}x")


if __name__ == "__main__":
    main()
