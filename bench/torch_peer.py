"""PyTorch (CPU) peer for bench/run.py, run in its own process (PyTorch and embedded Julia must not
share one: both bring LLVM, and libjulia is loaded with RTLD_GLOBAL).

FA and DFA are written the way PyTorch users write them (as biotorch does): custom
``torch.autograd.Function``s whose backward uses the fixed feedback matrices B (conv layers too,
for bench/conv.py's cases: FA's conv input gradient is conv2d_input with B in place of W). Reads one JSON
command per line on stdin and answers one JSON line on stdout:

    {"op": "case", "case": {...}, "data": "X.npy", "labels": "y.npy", "params": "p.npz", ...} -> {}
    {"op": "steps"} -> {"seconds": per step over the case's batches}
    {"op": "epoch"} -> {"seconds": one shuffled pass}
    {"op": "threads", "n": 2} -> {}    (intra-op threads from now on)

Between requests the peer blocks on its pipe, and its OpenMP threads sleep rather than spin
(OMP_WAIT_POLICY=PASSIVE, unless the caller set a policy): spinning threads would take the cores
while another peer is timed (issue 13 measured pyjlfa's 2-thread step a quarter slow that way).
"""

import json
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # read once, when libgomp loads with torch
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F


class LinearFA(torch.autograd.Function):
    """y = x W^T + b; the error reaches the input through the fixed B (the shape of W) instead of W."""

    @staticmethod
    def forward(ctx, x, weight, bias, B):
        ctx.save_for_backward(x, B)
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, B = ctx.saved_tensors
        grad_x = grad_out.mm(B) if ctx.needs_input_grad[0] else None
        return grad_x, grad_out.t().mm(x), grad_out.sum(0), None


class OutputDFA(torch.autograd.Function):
    """Identity on the logits z; backward sends the output error e = dL/dz straight to every hidden
    layer's activation as e @ B_k (the forward path between layers is detached, so nothing flows
    back through the weights)."""

    @staticmethod
    def forward(ctx, z, Bs, *hiddens):
        ctx.Bs = Bs
        return z.view_as(z)

    @staticmethod
    def backward(ctx, e):
        return (e, None, *(e.mm(B) for B in ctx.Bs))


class Net(torch.nn.Module):
    def __init__(self, params, rule, dtype):
        super().__init__()
        n = len(params["b"])
        # nn.Linear's layout: weight (n_out, n_in) = pyjlfa's W.T; pyjlfa's FA B already has it.
        self.weights = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.tensor(params["W"][k].T.copy(), dtype=dtype)) for k in range(n)])
        self.biases = torch.nn.ParameterList(
            [torch.nn.Parameter(torch.tensor(params["b"][k], dtype=dtype)) for k in range(n)])
        self.B = [None if B is None else torch.tensor(B, dtype=dtype) for B in params["B"]]
        self.rule = rule

    def forward(self, x):
        n = len(self.weights)
        hiddens = []
        h = x
        for k in range(n):
            if self.rule == "fa":
                a = LinearFA.apply(h, self.weights[k], self.biases[k], self.B[k])
            elif self.rule == "dfa" and k > 0:
                a = F.linear(h.detach(), self.weights[k], self.biases[k])
            else:
                a = F.linear(h, self.weights[k], self.biases[k])
            if k < n - 1:
                h = torch.tanh(a)
                hiddens.append(h)
        if self.rule == "dfa":
            a = OutputDFA.apply(a, self.B[:-1], *hiddens)
        return a


class Conv2dFA(torch.autograd.Function):
    """conv2d whose error reaches the input through the fixed kernel B (W's shape) instead of W, as
    biotorch's FA conv layer computes it."""

    @staticmethod
    def forward(ctx, x, weight, bias, B):
        ctx.save_for_backward(x, B)
        ctx.weight_shape = weight.shape
        return F.conv2d(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        x, B = ctx.saved_tensors
        grad_x = torch.nn.grad.conv2d_input(x.shape, B, grad_out) if ctx.needs_input_grad[0] else None
        grad_w = torch.nn.grad.conv2d_weight(x, ctx.weight_shape, grad_out)
        return grad_x, grad_w, grad_out.sum((0, 2, 3)), None


class OutputDFAMaps(torch.autograd.Function):
    """OutputDFA for any hidden outputs (conv maps too): each gets (e @ B_k) in its own shape."""

    @staticmethod
    def forward(ctx, z, Bs, *hiddens):
        ctx.Bs, ctx.shapes = Bs, [h.shape for h in hiddens]
        return z.view_as(z)

    @staticmethod
    def backward(ctx, e):
        return (e, None, *(e.mm(B).view(shape) for B, shape in zip(ctx.Bs, ctx.shapes)))


class ConvNet(torch.nn.Module):
    """A layer chain from bench/conv.py's description: conv/linear (with relu), maxpool/avgpool, flatten.
    Parameters are keyed by the layer's position in pyjlfa's net.layers (its Linear W is (n_in, n_out))."""

    def __init__(self, layers, path, rule, dtype):
        super().__init__()
        with np.load(path) as f:
            arrays = {k: torch.tensor(f[k], dtype=dtype) for k in f.files}
        self.layers, self.rule = layers, rule
        self.weights, self.biases = torch.nn.ParameterList(), torch.nn.ParameterList()
        self.B, self.index = [], {}
        for k, layer in enumerate(layers):
            if layer["kind"] in ("conv", "linear"):
                W = arrays[f"W{k}"]
                self.index[k] = len(self.weights)
                self.weights.append(torch.nn.Parameter(W if layer["kind"] == "conv" else W.t().contiguous()))
                self.biases.append(torch.nn.Parameter(arrays[f"b{k}"]))
                self.B.append(arrays.get(f"B{k}"))

    def forward(self, x):
        h, hiddens, Bs = x, [], []
        last = max(self.index)
        for k, layer in enumerate(self.layers):
            kind = layer["kind"]
            if kind in ("conv", "linear"):
                i = self.index[k]
                W, b, B = self.weights[i], self.biases[i], self.B[i]
                if self.rule == "dfa" and i > 0:
                    h = h.detach()   # DFA: nothing flows back between layers
                if self.rule == "fa" and B is not None:
                    h = (Conv2dFA if kind == "conv" else LinearFA).apply(h, W, b, B)
                else:
                    h = F.conv2d(h, W, b) if kind == "conv" else F.linear(h, W, b)
                if layer.get("relu"):
                    h = torch.relu(h)
                if self.rule == "dfa" and k != last:
                    hiddens.append(h)
                    Bs.append(B)
            elif kind == "maxpool":
                h = F.max_pool2d(h, layer["k"])
            elif kind == "avgpool":
                h = F.avg_pool2d(h, layer["k"])
            else:
                h = h.flatten(1)
        if self.rule == "dfa":
            h = OutputDFAMaps.apply(h, Bs, *hiddens)
        return h


def load_params(path):
    with np.load(path) as f:
        n = int(f["n"])
        return {"W": [f[f"W{k}"] for k in range(n)], "b": [f[f"b{k}"] for k in range(n)],
                "B": [f[f"B{k}"] if f"B{k}" in f.files else None for k in range(n)]}


class Case:
    """One network, optimizer and data set; times a round of steps or one epoch on request."""

    def __init__(self, cmd, cache):
        c = cmd["case"]
        dtype = {"float32": torch.float32, "float64": torch.float64}[c["dtype"]]
        key = (cmd["data"], c["dtype"])
        if key not in cache:
            cache.clear()
            cache[key] = torch.from_numpy(np.load(cmd["data"]).astype(c["dtype"]))
        X, y = cache[key], torch.from_numpy(np.load(cmd["labels"]))
        self.net = (ConvNet(c["layers"], cmd["params"], c["rule"], dtype) if "layers" in c else
                    Net(load_params(cmd["params"]), c["rule"], dtype))
        self.opt = torch.optim.SGD(self.net.parameters(), lr=cmd["lr"])
        self.m = m = c["batch"]
        self.batches = [(X[i * m:(i + 1) * m], y[i * m:(i + 1) * m]) for i in range(cmd["steps"])]
        n = cmd["epoch_samples"]
        self.Xe, self.ye = X[:n], y[:n]
        for xb, yb in self.batches[:2]:  # warm up
            self.step(xb, yb)

    def step(self, xb, yb):
        self.opt.zero_grad()
        loss = F.cross_entropy(self.net(xb), yb)
        loss.backward()
        self.opt.step()
        return loss

    def steps(self):
        start = time.perf_counter()
        for xb, yb in self.batches:
            self.step(xb, yb)
        return (time.perf_counter() - start) / len(self.batches)

    def epoch(self):
        """One shuffled pass as PyTorch users write it: randperm, then index each batch."""
        start = time.perf_counter()
        n, m = len(self.Xe), self.m
        order = torch.randperm(n)
        for i in range(0, n, m):
            idx = order[i:i + m]
            self.step(self.Xe[idx], self.ye[idx])
        return time.perf_counter() - start


def serve(cmd, state):
    if cmd["op"] == "threads":
        torch.set_num_threads(int(cmd["n"]))
        return {}
    if cmd["op"] == "case":
        state["case"] = Case(cmd, state.setdefault("data", {}))
        return {}
    return {"seconds": getattr(state["case"], cmd["op"])()}   # "steps" (per step) or "epoch"


def main():
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads())
    torch.set_num_interop_threads(1)   # no second pool: one step runs its ops one after another
    print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "omp_wait_policy": os.environ["OMP_WAIT_POLICY"]}), flush=True)
    state = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = serve(json.loads(line), state)
        except Exception as e:  # report, keep serving
            answer = {"error": f"{type(e).__name__}: {e}"}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
