"""A sweep on a local Dask cluster of N workers against one process running the same runs in sequence.

    python bench/sweep_scaling.py [SPEC.toml] [--workers 2]

Both wall times include starting Julia (and, for Dask, the cluster) and compiling. Both use one
BLAS thread per process. The script also checks
that both give bit-identical histories.
"""

import argparse
import json
import os
import sys
import tempfile
import time

# One BLAS thread in this process too, as in Dask's workers (its nanny sets the same variables): with
# two threads on a busy 2-core machine, OpenBLAS's spinning threads made the sequential runs >3x slower.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pyjlfa.sweep import plan, run_config, sweep  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("spec", nargs="?", default=os.path.join(here, "..", "examples", "sweep_fashion_mnist.toml"))
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    data, runs, _ = plan(args.spec)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        sweep(args.spec, out=out, workers=args.workers, plot=False, progress=False, stream=sys.stdout)
        on_dask = time.perf_counter() - start
        records = {rid: json.load(open(os.path.join(out, "runs", f"{rid}.json"))) for rid, _ in runs}
    start = time.perf_counter()  # Julia starts in this process now, after the workers were spawned
    sequential = {rid: run_config(data, config) for rid, config in runs}
    in_sequence = time.perf_counter() - start
    same = all(json.loads(json.dumps({k: v for k, v in sequential[rid]["history"].items() if k != "seconds"}))
               == {k: v for k, v in records[rid]["history"].items() if k != "seconds"} for rid, _ in runs)
    failed = sum(r["status"] != "ok" for r in records.values())
    print(f"{len(runs)} runs ({failed} failed); histories bit-identical: {same}")
    print(f"local Dask cluster, {args.workers} workers: {on_dask:7.1f} s")
    print(f"one process, in sequence:     {in_sequence:7.1f} s")
    print(f"speed-up: {in_sequence / on_dask:.2f}x  (os.cpu_count() = {os.cpu_count()}; load average before: "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())})")


if __name__ == "__main__":
    main()
