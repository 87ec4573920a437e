"""Conv cases of bench/run.py: LeNet-5 and LeNet-CIFAR, pyjlfa against PyTorch (CPU), float32.

    python bench/conv.py                 # LeNet-5 (1x32x32) and LeNet-CIFAR (3x32x32), batch 64 and 256, BP/FA/DFA
    python bench/conv.py --conv-rules bp --batches 64
    python bench/run.py --conv           # the same, after run.py's dense cases

Per case: samples/s of a training step (net.step; a fixed list of batches, best of --rounds) and
of a whole shuffled epoch (one net.fit over --epoch-samples images), pyjlfa and PyTorch 2.13 in its
own process (bench/torch_peer.py: BP by autograd, FA as a conv2d/linear autograd.Function whose
input gradient uses B in place of W, DFA as a function on the logits that hands each hidden
layer's output B e, as biotorch writes them), same data and initial weights, one thread each, the
peers timed one at a time. "ratio" is PyTorch's time over pyjlfa's (above 1: pyjlfa is faster).
"floor" is the same convolutions and products done as whole-batch GEMMs (im2col shapes) in NumPy's
OpenBLAS, the fastest BLAS in the process; "step/floor" is pyjlfa's step time over it.
LeNet-5 runs on Fashion-MNIST padded to 32x32 (noise if it is missing); LeNet-CIFAR on uniform
noise. Targets (issue 12): LeNet-5 at least 2x PyTorch per step, LeNet-CIFAR at least 1.25x.
"""

import argparse
import os
import sys

if __name__ == "__main__":  # one thread, set before NumPy's (and Julia's) OpenBLAS loads
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"

import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # measure the pyjlfa this file belongs to
sys.path.insert(0, str(Path(__file__).resolve().parent))
import pyjlfa  # noqa: E402
from pyjlfa.layers import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU  # noqa: E402

LR = 0.01
# (name, input shape, layer list, the description the PyTorch peer builds from)
ARCHS = {
    "lenet5": ((1, 32, 32),
               lambda: [Conv2d(1, 6, 5), ReLU(), MaxPool2d(2), Conv2d(6, 16, 5), ReLU(), MaxPool2d(2),
                        Conv2d(16, 120, 5), ReLU(), Flatten(), Linear(120, 84), ReLU(), Linear(84, 10)]),
    "lenet-cifar": ((3, 32, 32),
                    lambda: [Conv2d(3, 32, 3), ReLU(), MaxPool2d(2), Conv2d(32, 64, 3), ReLU(), MaxPool2d(2),
                             Conv2d(64, 128, 3), ReLU(), AvgPool2d(4), Flatten(), Linear(128, 256), ReLU(),
                             Linear(256, 10)]),
}
TARGET = {"lenet5": 2.0, "lenet-cifar": 1.25}


def describe(layers):
    """The layer list as the PyTorch peer reads it: activations folded into the layer before them."""
    out = []
    for layer in layers:
        name = type(layer).__name__
        if name == "ReLU":
            out[-1]["relu"] = True
        elif name == "Conv2d":
            out.append({"kind": "conv", "relu": False})
        elif name == "Linear":
            out.append({"kind": "linear", "relu": False})
        elif name in ("MaxPool2d", "AvgPool2d"):
            out.append({"kind": "maxpool" if name == "MaxPool2d" else "avgpool", "k": layer.kernel_size[0]})
        else:
            out.append({"kind": "flatten"})
    return out


def save_params(path, net):
    """W, b (and B) of each layer that has them, keyed by the layer's position in net.layers."""
    arrays = {}
    for k, layer in enumerate(net.layers):
        if layer.W is not None:
            arrays[f"W{k}"], arrays[f"b{k}"] = layer.W, layer.b
        if layer.B is not None:
            arrays[f"B{k}"] = layer.B
    np.savez(path, **arrays)


def gemms(net, m, rule):
    """(rows, inner, cols) of every GEMM one step makes when each conv is done as one im2col GEMM over
    the whole batch: forward, the weight gradient and (not for the first layer; not under DFA) the
    input gradient; DFA instead projects e (m x 10) onto each hidden layer's output."""
    out, trainable = [], [l for l in net.layers if l.W is not None]
    n_out = trainable[-1].W.shape[1]
    for i, layer in enumerate(trainable):
        if layer.W.ndim == 4:                    # conv: (Cout, Cin, kh, kw), output (Cout, Ho, Wo)
            cout, cin, kh, kw = layer.W.shape
            rows, inner = m * int(np.prod(layer.output_shape[1:])), cin * kh * kw
        else:                                    # dense: W (n_in, n_out)
            inner, cout = layer.W.shape
            rows = m
        out.append((rows, inner, cout))          # forward
        out.append((inner, rows, cout))          # dW = cols.T @ delta
        last = i == len(trainable) - 1
        if rule == "dfa":
            if not last:
                out.append((m, n_out, rows // m * cout))  # e @ B_k, the layer's whole output map
        elif i > 0:
            out.append((rows, cout, inner))      # the error reaching the input (through W or B)
    return out


def gemm_floor(products, reps):
    rng = np.random.default_rng(1)
    ops = [(rng.random((r, k), dtype=np.float32), rng.random((k, c), dtype=np.float32),
            np.empty((r, c), dtype=np.float32)) for r, k, c in products]

    def timed():
        start = time.perf_counter()
        for _ in range(reps):
            for A, B, C in ops:
                np.matmul(A, B, out=C)
        return (time.perf_counter() - start) / reps
    timed()
    return timed


def data_for(arch, n):
    shape = ARCHS[arch][0]
    if arch == "lenet5":
        try:
            X, y, _, _ = pyjlfa.datasets.fashion_mnist(images=True, pad=2)
            return np.ascontiguousarray(X[:n]), np.ascontiguousarray(y[:n]), "Fashion-MNIST 32x32"
        except Exception as e:
            source = f"uniform noise ({type(e).__name__}: Fashion-MNIST not found)"
    else:
        source = "uniform noise"
    rng = np.random.default_rng(0)
    return rng.random((n, *shape), dtype=np.float32), rng.integers(0, 10, n), source


def measure(arch, m, rule, X, y, tmp, torch_peer, args):
    from run import best_time
    input_shape, layers = ARCHS[arch]
    k = max(3, args.step_samples // m)
    n_epoch = min(len(X), args.conv_epoch_samples)
    batches = [(X[i * m:(i + 1) * m], y[i * m:(i + 1) * m]) for i in range(k)]
    opt = pyjlfa.SGD(LR)
    net = pyjlfa.Network(layers(), input_shape=input_shape, rule=rule, seed=0)
    out = {"arch": arch, "batch": m, "rule": rule, "steps": k, "epoch_samples": n_epoch}
    params = tmp / f"params-{arch}-{rule}.npz"
    save_params(params, net)
    for xb, yb in batches[:2]:
        net.step(xb, yb, opt)
    net.fit(X[:2 * m + 1], y[:2 * m + 1], batch_size=m, optimizer=opt)   # compile the epoch path
    floor = gemm_floor(gemms(net, m, rule), k)
    Xe, ye = X[:n_epoch], y[:n_epoch]
    timers = {"step": {"pyjlfa": lambda: best_time(lambda: [net.step(xb, yb, opt) for xb, yb in batches], 1) / k,
                       "floor": floor},
              "epoch": {"pyjlfa": lambda: best_time(lambda: net.fit(Xe, ye, batch_size=m, optimizer=opt), 1)}}
    if torch_peer:
        torch_peer(op="case", case={"dtype": "float32", "batch": m, "rule": rule, "layers": describe(layers())},
                   data=str(tmp / f"X-{arch}.npy"), labels=str(tmp / f"y-{arch}.npy"), params=str(params), lr=LR,
                   steps=k, epoch_samples=n_epoch)
        timers["step"]["torch"] = lambda: torch_peer(op="steps")
        timers["epoch"]["torch"] = lambda: torch_peer(op="epoch")
    for kind, rounds in (("step", args.rounds), ("epoch", 2)):
        for _ in range(rounds):   # peers interleaved round by round; the best counts
            for name, timer in timers[kind].items():
                key = "gemm_floor" if name == "floor" else f"{name}_{kind}"
                out[key] = min(out.get(key, float("inf")), timer())
    net.close()
    return out


def print_row(r, has_torch):
    m, n = r["batch"], r["epoch_samples"]
    cells = [f"{r['arch']:<12}{m:>4} {r['rule']:<4}"]
    for kind, count in (("step", m), ("epoch", n)):
        cells.append(f"{count / r[f'pyjlfa_{kind}']:>9,.0f}")
        if has_torch:
            cells.append(f"{count / r[f'torch_{kind}']:>9,.0f} {r[f'torch_{kind}'] / r[f'pyjlfa_{kind}']:>5.2f}x")
    cells.append(f"{m / r['gemm_floor']:>9,.0f} {r['pyjlfa_step'] / r['gemm_floor']:>5.2f}")
    print(" ".join(cells), flush=True)


def run(args, torch_peer):
    """Every conv case; returns the results (one dict per case)."""
    has_torch = torch_peer is not None
    if has_torch:
        torch_peer(op="threads", n=1)
    part = f"{'pyjlfa':>9}" + (f" {'torch':>9} {'ratio':>6}" if has_torch else "")
    print(f"\nconv networks, float32, 1 thread; step = best of {args.rounds} rounds over ~{args.step_samples} "
          f"samples, epoch = one shuffled pass over {args.conv_epoch_samples} (best of 2); SGD lr {LR}")
    print(f"{'':<22}{'step (samples/s)':^{len(part)}} {'epoch (samples/s)':^{len(part)}} {'GEMM floor':^16}")
    print(f"{'network':<12}{'m':>4} {'rule':<4} {part} {part} {'samples/s':>9} {'step/':>6}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for arch in args.archs:
            X, y, source = data_for(arch, max(args.conv_epoch_samples, 2 * args.step_samples))
            np.save(tmp / f"X-{arch}.npy", X)
            np.save(tmp / f"y-{arch}.npy", y)
            print(f"  {arch}: {source}")
            for m in args.batches:
                for rule in args.conv_rules:
                    r = measure(arch, m, rule, X, y, tmp, torch_peer, args)
                    results.append(r)
                    print_row(r, has_torch)
    if has_torch:
        print("\ntargets (issue 12: pyjlfa step / PyTorch step, one thread):")
        for r in results:
            got, want = r["torch_step"] / r["pyjlfa_step"], TARGET[r["arch"]]
            print(f"  {'met   ' if got >= want else 'MISSED'} {r['arch']:<12} batch {r['batch']:>3} {r['rule']:<3} "
                  f"{got:.2f}x (target {want}x; pyjlfa step / GEMM floor {r['pyjlfa_step'] / r['gemm_floor']:.2f})")
    return results


def add_arguments(p):
    p.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS), help="conv networks")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256], help="batch sizes")
    p.add_argument("--conv-rules", nargs="+", default=["bp", "fa", "dfa"], help="rules")
    p.add_argument("--step-samples", type=int, default=2048, help="samples per timed round of steps")
    p.add_argument("--conv-epoch-samples", type=int, default=4096,
                   help="samples per timed conv epoch")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    p.add_argument("--rounds", type=int, default=3, help="timing rounds per measurement; the best counts")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    p.add_argument("--json", help="also write every number to this file")
    args = p.parse_args()
    from run import TorchPeer, _cpu
    info = pyjlfa.start_julia()
    print(f"pyjlfa conv benchmark, {time.strftime('%Y-%m-%d %H:%M')}: {_cpu()}, {os.cpu_count()} cores, load "
          f"average {os.getloadavg()[0]:.1f}; Julia {info['julia_version']}")
    torch_peer = None if args.no_torch else TorchPeer(1)
    if torch_peer:
        print(f"PyTorch {torch_peer.info['torch']} (CPU, own process, 1 thread)")
    results = run(args, torch_peer)
    if torch_peer:
        torch_peer.close()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
