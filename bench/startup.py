"""Time to first training step in a fresh process, with and without the prebuilt Julia image.

    python bench/startup.py [--rounds 5] [--threads N]

Each round starts two fresh Python processes, one with the image (if scripts/setup.sh built it)
and one with PYJLFA_SYSIMAGE=off, interleaved so both see the same machine. Each imports pyjlfa,
starts Julia, builds a 784-256-256-10 tanh FA network (float32) and takes one SGD step on a batch
of 64. Printed: wall time (what a user waits) and the process's CPU time (less sensitive to other
jobs on a shared machine), medians over the rounds after one unmeasured warm-up round each (the
warm-up also refreshes Julia's package cache, which other checkouts of the package invalidate).
Also printed: where the start goes, step by step (runtime_info()["start_seconds"], medians).
Target (issue 25): with the image, import + start + first step at most 0.5 s.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, time
def cpu():
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
t0 = time.perf_counter()
import numpy as np
import pyjlfa
t_import = time.perf_counter()
pyjlfa.start_julia()
t1 = time.perf_counter()
net = pyjlfa.Network([784, 256, 256, 10], activation="tanh", rule="fa", seed=0, dtype="float32")
rng = np.random.default_rng(0)
X = rng.random((64, 784), dtype=np.float32); y = rng.integers(0, 10, 64)
net.step(X, y, pyjlfa.SGD(0.05))
t2 = time.perf_counter()
net.step(X, y, pyjlfa.SGD(0.05))
t3 = time.perf_counter()
info = pyjlfa.runtime_info()
print(json.dumps({"start": t1 - t0, "first": t2 - t1, "total": t2 - t0, "second": t3 - t2, "cpu": cpu(),
                  "kind": info["sysimage_kind"], "reason": info["sysimage_reason"], "import": t_import - t0,
                  "steps": dict(kv.split("=") for kv in info["start_seconds"].split())}))
"""


def fresh_process(image, threads):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYJLFA_IMAGE_NOTICE": "shown"}
    if not image:
        env["PYJLFA_SYSIMAGE"] = "off"
    if threads:
        env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(threads)
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(f"the {'image' if image else 'default'} process failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="OPENBLAS_NUM_THREADS for the processes (0: unset)")
    args = parser.parse_args()
    fresh_process(True, args.threads), fresh_process(False, args.threads)     # warm-up, not counted
    runs = {True: [], False: []}
    load = [os.getloadavg()[0]]
    for _ in range(args.rounds):
        for image in (True, False):
            runs[image].append(fresh_process(image, args.threads))
    load.append(os.getloadavg()[0])
    print(f"fresh process: import + Julia start + first FA step, 784-256-256-10 tanh, batch 64, float32; "
          f"median of {args.rounds} rounds (load average {load[0]:.1f} before, {load[1]:.1f} after, "
          f"{os.cpu_count()} cores; OPENBLAS_NUM_THREADS={args.threads or 'unset'})")
    print(f"{'julia image':<12} {'import+start s':>14} {'first step s':>12} {'total s':>8} {'cpu s':>6} "
          f"{'2nd step ms':>11}")
    medians = {}
    for image in (True, False):
        m = {k: statistics.median(r[k] for r in runs[image]) for k in ("start", "first", "total", "cpu", "second")}
        medians[image] = m
        print(f"{runs[image][0]['kind']:<12} {m['start']:>14.3f} {m['first']:>12.3f} {m['total']:>8.3f} "
              f"{m['cpu']:>6.2f} {1000 * m['second']:>11.1f}")
    for image in (True, False):
        steps = {k: statistics.median(float(r["steps"][k]) for r in runs[image]) for k in runs[image][0]["steps"]}
        print(f"{runs[image][0]['kind']:<12} steps s: import={statistics.median(r['import'] for r in runs[image]):.3f} "
              + " ".join(f"{k}={v:.3f}" for k, v in steps.items()))
    if runs[True][0]["kind"] != "prebuilt":
        print(f"no prebuilt image was used: {runs[True][0]['reason']}")
    ratio = medians[False]["total"] / medians[True]["total"]
    best = min(r["total"] for r in runs[True])
    met = medians[True]["total"] <= 0.5 and runs[True][0]["kind"] == "prebuilt"
    print(f"with the image {ratio:.1f}x faster to the first step; fastest image run {best:.3f} s")
    print(f"target: with the image, import + start + first step <= 0.5 s: "
          f"{'met' if met else 'missed'} ({medians[True]['total']:.3f} s median wall, "
          f"{medians[True]['cpu']:.2f} s CPU)")


if __name__ == "__main__":
    main()
