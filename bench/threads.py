"""What Julia threads bring to pyjlfa's 2-thread step, in one process (trials interleaved, best of N).

    python bench/threads.py [--rounds 15] [--threads 2]

For 784-256-256-10 float32 (BP, FA, DFA; batch 32, 128, 512) it times net.step with
  serial    everything on 1 thread (pyjlfa.set_threads(1))
  blas      kernels on 1 Julia thread, NumPy's OpenBLAS (which does the products) on N threads: what
            a process gets without set_threads when NumPy's BLAS has its default thread count
  threads   products (cut into blocks, serial BLAS calls) and kernels on N Julia threads
            (pyjlfa.set_threads(N))
and the GEMM floor (the same products alone in NumPy) at 1 and N threads, and prints each step
over the floor at its thread count: issue 13's target is threads/floor <= 1.15 at batch 128 and 512,
and threads no slower than serial at batch 32. The machine is shared: compare within a row.
"""

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

import pyjlfa  # noqa: E402
from pyjlfa._blas import set_numpy_blas_threads  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--settle", type=float, default=0.3,
                   help="seconds of pause before each timing: OpenBLAS's idle threads spin ~0.1 s after their work")
    args = p.parse_args()
    n = args.threads
    info = pyjlfa.start_julia(threads=n)
    from run import SMALL, gemm_floor_round, load_data, steps_for   # bench/run.py's helpers
    X, y, source = load_data(4096)
    print(f"Julia {info['julia_version']} with {info['julia_threads']} threads; GEMMs: {info['gemm_blas']}; "
          f"kernels split where each part gets {info['kernel_min_work']} ns of estimated serial work; load average "
          f"{os.getloadavg()[0]:.1f}; data: {source}; best of {args.rounds} interleaved rounds, samples/s per step")

    def settings(julia, blas):
        def apply():
            pyjlfa.set_threads(julia)          # Julia's threads; NumPy's OpenBLAS serial ...
            set_numpy_blas_threads(blas)       # ... unless given threads again (then pyjlfa keeps to one thread)
        return apply

    variants = {"serial": settings(1, 1), "blas": settings(1, n), "threads": settings(n, 1)}
    print(f"{'rule':<5}{'m':>5}{'serial':>10}{'blas':>10}{'threads':>10}{'floor 1T':>10}{'floor ' + str(n) + 'T':>10}"
          f"{'threads/blas':>14}{'blas/fl':>9}{'thr/fl':>8}{'thr/serial':>11}")
    with threadpool_limits(limits=n, user_api="blas"):
        for rule in ("bp", "fa", "dfa"):
            for m in (32, 128, 512):
                k = steps_for(SMALL, m)
                batches = [(X[i * m:(i + 1) * m], y[i * m:(i + 1) * m]) for i in range(k)]
                net = pyjlfa.Network(list(SMALL), activation="tanh", rule=rule, seed=0, dtype="float32")
                opt = pyjlfa.SGD(0.01)
                floors = {}
                for t in (1, n):
                    set_numpy_blas_threads(t)
                    floors[t] = gemm_floor_round(SMALL, m, rule, np.dtype("float32"), k)
                best = {name: float("inf") for name in list(variants) + ["floor1", "floorN"]}
                for name, apply in variants.items():   # warm up
                    apply()
                    for xb, yb in batches:
                        net.step(xb, yb, opt)
                for _ in range(args.rounds):
                    for name, apply in variants.items():
                        apply()
                        time.sleep(args.settle)   # the idle threads of the variant before stop spinning
                        start = time.perf_counter()
                        for xb, yb in batches:
                            net.step(xb, yb, opt)
                        best[name] = min(best[name], (time.perf_counter() - start) / k)
                    for t, key in ((1, "floor1"), (n, "floorN")):
                        set_numpy_blas_threads(t)
                        time.sleep(args.settle)
                        best[key] = min(best[key], floors[t]())
                rate = {key: m / v for key, v in best.items()}
                print(f"{rule:<5}{m:>5}{rate['serial']:>10,.0f}{rate['blas']:>10,.0f}{rate['threads']:>10,.0f}"
                      f"{rate['floor1']:>10,.0f}{rate['floorN']:>10,.0f}{best['blas'] / best['threads']:>14.2f}"
                      f"{best['blas'] / best['floorN']:>9.2f}{best['threads'] / best['floorN']:>8.2f}"
                      f"{best['serial'] / best['threads']:>11.2f}", flush=True)
    pyjlfa.set_threads(n)


if __name__ == "__main__":
    main()
