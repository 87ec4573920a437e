"""Plain NumPy reference implementation of pyjlfa's training math.

This module (tests/reference.py; it is not part of the pyjlfa package and needs nothing but
NumPy) exists for two reasons only:

* as a **test oracle**: the Julia engine's forward pass, losses, gradients
  and SGD updates are checked against it, and
* as a **benchmark baseline**: a straightforward vectorised NumPy version to
  compare the Julia engine's speed against.

The library never falls back to it. It is written to be read: every formula
below is the textbook one, in the order it is usually written down, with no
fused kernels, in-place tricks or caching beyond what the maths needs.

Conventions (row-major, one sample per row)
-------------------------------------------
A network with layer sizes ``[n0, n1, ..., nL]`` has ``L`` layers. Layer ``k``
(``k = 0 .. L-1``) has weights ``W[k]`` of shape ``(n_k, n_{k+1})`` and a bias
``b[k]`` of shape ``(n_{k+1},)``::

    a_k = h_{k-1} @ W[k] + b[k]          with h_{-1} = X, shape (m, n0)
    h_k = f(a_k)                         hidden layers, k < L-1
    z   = a_{L-1}                        the output layer is linear (logits)

Losses (``e = dL/dz``, already divided by the batch size ``m``):

* ``"cross_entropy"``: ``y`` holds integer class labels in ``[0, nL)``;
  ``L = mean(-log softmax(z)[y])`` and ``e = (softmax(z) - onehot(y)) / m``.
* ``"mse"``: ``y`` is a float array of shape ``(m, nL)``;
  ``L = mean(0.5 * sum_j (z_j - y_j)**2)`` and ``e = (z - y) / m``.

Learning rules (the output layer always uses ``delta_{L-1} = e``; hidden
layers ``k = L-2 .. 0``):

* ``"bp"``  backpropagation: ``delta_k = (delta_{k+1} @ W[k+1].T) * f'(a_k)``.
* ``"fa"``  feedback alignment (Lillicrap, Cownden, Tweed & Akerman 2016,
  "Random synaptic feedback weights support error backpropagation for deep
  learning", Nature Communications 7:13276):
  ``delta_k = (delta_{k+1} @ B[k+1]) * f'(a_k)``, where ``B[k+1]`` is a fixed
  matrix shaped like ``W[k+1].T``, i.e. ``(n_{k+2}, n_{k+1})``; ``B[0]`` is
  unused (``None``).
* ``"dfa"`` direct feedback alignment (Nøkland 2016, "Direct Feedback
  Alignment Provides Learning in Deep Neural Networks", NeurIPS):
  ``delta_k = (e @ B[k]) * f'(a_k)``, where ``B[k]`` has shape
  ``(nL, n_{k+1})``; the output layer's ``B[L-1]`` is ``None``.

Gradients: ``dW[k] = h_{k-1}.T @ delta_k`` and ``db[k] = delta_k.sum(axis=0)``.
Updates are SGD with momentum in the PyTorch convention:
``v = momentum * v + dW; W -= lr * v`` (likewise for ``b``), velocities
starting at zero; with ``momentum = 0`` this is plain SGD.

Layer chains (:class:`ReferenceChain`)
--------------------------------------
A chain is a list of layers: ``conv``, ``maxpool``, ``meanpool``, ``flatten`` and ``dense``.
Images are ``(m, C, H, W)``; a conv weight is ``(Cout, Cin, kh, kw)`` with bias ``(Cout,)``; a
dense weight is ``(n_in, n_out)`` (``x @ W + b``) with bias ``(n_out,)``; flatten is the C-order
reshape of ``(C, H, W)`` to ``(C*H*W,)``. Conv is PyTorch's conv2d (a cross-correlation) with
stride ``(sh, sw)`` and zero padding ``(ph, pw)``; output size ``(H + 2ph - kh)//sh + 1``.
Pooling windows ``(kh, kw)`` move by their stride (default: the window), without padding;
max-pool's backward pass routes each window's gradient to its FIRST maximum in row-major order
(rows top to bottom, each left to right), and overlapping windows accumulate. The last layer is
dense with identity activation; its output is ``z`` and the losses are the ones above.

The conv and dense layers are the parametric layers, ``p = 0 .. P-1`` in chain order. Layer p
computes the pre-activation map ``a_p`` and the output ``h_p = f(a_p)``. ``delta_p = dL/da_p``
(shape of ``a_p``) is ``signal_p * f'(a_p)``, where ``signal_p`` is the error arriving at
``h_p``; the last parametric layer always has ``delta = e``. Gradients: dense
``dW = h_in.T @ delta``, ``db = delta.sum(0)``; conv
``dW[co, ci, i, j] = sum_{n,y,x} delta[n, co, y, x] * xpad[n, ci, y*sh + i, x*sw + j]``,
``db = delta.sum((0, 2, 3))``. The rules:

* ``"bp"``: the signal flows back exactly through every layer (dense: ``delta @ W.T``; conv: the
  transposed convolution of ``delta`` with ``W``; pooling and flatten: as backpropagation).
* FA style (``"fa"``, ``"usf"``, ``"frsf"``, ``"brsf"``, ``"kp"``, ``"wm"``): the same, except that
  each parametric layer but the first carries its ``delta`` back to its input through its own
  fixed ``B`` instead of ``W``: a dense ``B`` is ``(n_out, n_in)`` (``W.T``'s shape; input error
  ``delta @ B``), a conv ``B`` is ``(Cout, Cin, kh, kw)`` (``W``'s shape; input error the
  transposed convolution of ``delta`` with ``B``). Pooling and flatten carry back exactly. The
  first parametric layer has ``B = None``. Sign-symmetric rules (``"usf"``, ``"frsf"``,
  ``"brsf"``) use ``|B| * sign(W.T)`` (dense) or ``|B| * sign(W)`` (conv), signs taken from the
  current ``W`` (``np.copysign``, so a +0 weight counts as +) before the signals are computed.
* DFA style (``"dfa"``, ``"drtp"``, ``"sdfa"``): each parametric layer but the last has ``B_p``
  of shape ``(n_outputs, size of a_p per sample)`` and
  ``signal_p = (s @ B_p).reshape(a_p.shape)`` (C order) with ``s = e`` (dfa),
  ``s = -onehot(y)/m`` (drtp) or ``s = sign(e)/m`` (sdfa). Pooling and flatten play no part in
  the signals (they still run forward). The last parametric layer has ``B = None``.
* ``"shallow"``: only the last parametric layer learns (the others' delta, dW and db are 0).

Updates (:meth:`ReferenceChain.step`): SGD with momentum as above, with L2 weight decay on the
weights (``g = dW + weight_decay * W``; biases do not decay). ``"kp"`` gives each ``B`` the
update of its ``W`` (dense: ``dW.T``; conv: ``dW``), weight decay included. ``"wm"`` after the
update moves each ``B`` toward ``W`` by mirror steps with noise ``x`` of the layer's input shape
and ``y`` the layer's output without bias: dense ``B += lr * (y.T @ x / mb - decay * B)``, conv
``B += lr * (dWlike(x, y) / (mb * oh * ow) - decay * B)``, ``dWlike`` being the conv weight
gradient formula with ``(x, y)`` in place of ``(h_in, delta)``. A chain of dense layers gives
exactly what :class:`ReferenceNetwork` gives.

Nested networks (:class:`ReferenceNet`)
---------------------------------------
A network is a list of items ``(kind, options)`` whose residual items hold lists in turn. PyTorch's
conventions and layouts throughout: images ``(m, C, H, W)``, conv ``W`` ``(Cout, Cin, kh, kw)``,
dense ``W`` ``(n_in, n_out)`` with ``y = x @ W + b``.

Layers. ``conv`` (cin, cout, k, stride=1, pad=0, bias=True, act="identity"), ``dense`` (n_in,
n_out, bias=True, act="identity"), ``maxpool``/``meanpool`` (k, stride=k) and ``flatten`` are
the chain's; ``bias=False`` means no b at all; a fused ``act`` is the same as the activation layer
following the weight layer (and the point of its DFA run sits after it). Activation layers:
``relu``, ``tanh``, ``sigmoid``, ``leaky_relu`` (slope 0.01), ``identity``. ``gap`` is PyTorch's
AdaptiveAvgPool2d(1): (C, H, W) -> (C, 1, 1), backward ``g / (H*W)`` to every pixel.

``batchnorm`` (c) normalises (C, H, W) inputs per channel (statistics over m, H, W) and (F,)
inputs per feature (over m); n is the number of values per channel. gamma starts at 1, beta at 0,
running_mean at 0, running_var at 1; momentum 0.1, eps 1e-5 (PyTorch's). Training mode: with the
batch mean and the BIASED batch variance, ``xhat = (x - mean) / sqrt(var + eps)``,
``y = gamma * xhat + beta``; backward ``dgamma = sum(g * xhat)``, ``dbeta = sum(g)``,
``dx = gamma / sqrt(var + eps) * (g - mean(g) - xhat * mean(g * xhat))`` (means over the n values).
n = 1 is an error (PyTorch refuses it too). Evaluation mode: the running statistics in place of the
batch's, nothing updated, and ``dx = gamma / sqrt(running_var + eps) * g``. A training step then
sets ``running_mean = 0.9 * running_mean + 0.1 * mean`` and
``running_var = 0.9 * running_var + 0.1 * var * n / (n - 1)`` (the unbiased variance), from the
statistics of the step's own forward pass.

``dropout`` (p, 0 <= p < 1): in training mode the output is the input times a mask the caller
supplies, ``masks[path]`` of shape (m, *shape) holding only 0 and 1/(1-p) (optional for p = 0,
where it is all ones); the backward pass multiplies by the same mask. Evaluation mode: the identity
(masks are then ignored).

``residual`` (main=[...], shortcut=None | "pad" | [...]): ``out = main(x) + shortcut(x)``. None is
the identity; a list is a projection path; ``"pad"`` is He et al.'s option A as biotorch writes
it: ``x[:, :, ::s, ::s]`` with s = 2 when main's output has another (H, W) than x (else 1), then
(Cout - Cin) / 2 zero channels before and after (Cout - Cin must be even and >= 0). Both paths
must give the same shape (a ValueError names the block's path and both shapes). Backward: the
error at the output goes down both paths, and the error at the block's input is the SUM of what
they carry back (the "pad" path: the kept channels' error back at every s-th row and column, 0
elsewhere). Residual items nest.

The last top-level item must be dense with identity activation; losses are the ones above.

Paths and modes. A layer is named by its position in the nested lists, as PyTorch's named_modules
names it: ``"3"`` at the top level, ``"3.main.0"`` and ``"3.shortcut.1"`` inside item 3.
``named_layers()`` walks them depth-first, a residual before its main path, its main path before
its shortcut. Each layer object holds ``W``, ``b``, ``B``, ``gamma``, ``beta``, ``running_mean``,
``running_var`` (None where it has none). The network starts in training mode; ``train()`` and
``eval()`` switch it. ``forward``, ``outputs``, ``loss``, ``gradients``, ``output_errors`` and
``input_error`` use the current mode and change nothing (running statistics included); ``step``
always runs a training-mode forward pass (whatever the mode, which it leaves as it was).

The rules on a nested network. Weight layers (conv, dense) are where a rule's feedback acts;
every other layer (batchnorm, activations, pools, flatten, gap, dropout, the residual addition and
the "pad" shortcut) carries errors back exactly under every rule. A weight layer's delta is the
error at its output times ``f'(a)`` of its fused activation; its gradients are the chain's.

* ``"bp"``: exact gradients everywhere.
* FA style (``"fa"``, ``"usf"``, ``"frsf"``, ``"brsf"``, ``"kp"``, ``"wm"``): a weight layer carries
  its delta back to its input through its B in W's place (dense: B is (n_out, n_in) and the input
  error ``delta @ B``; conv: B has W's shape and the input error is the transposed convolution
  with B); sign-symmetric rules use ``|B| * sign(W)`` (``sign(W.T)`` for dense), signs by
  ``np.copysign`` (+0 counts as +). A weight layer has a B iff some trainable layer (a weight layer
  or a batchnorm) lies between the network input and it, on any path: the stem conv of a ResNet
  has none, a 1x1 shortcut conv inside a block has one. A weight layer without B carries nothing
  back (nothing before it learns, so nothing is lost).
* DFA style (``"dfa"``, ``"drtp"``, ``"sdfa"``) with ``feedback_points`` ``"layer"`` (default) or
  ``"block"``. The output signal is ``s = e`` (dfa), ``sign(e) / m`` (sdfa) or ``-onehot(y) / m``
  (drtp). A point's B is ``(n_outputs, size of the point per sample)``; the point receives
  ``(s @ B).reshape(m, *point shape)`` (C order) as the error there, which is carried back
  exactly, with the true W, through the layers of its RUN and no further. A run is its owner
  followed by the longest sequence of directly following items of the same list that are
  batchnorm, activation or dropout layers; the point sits at the run's output, and the B is held
  by the owner.

  - ``"layer"``: every weight layer but the network's last owns a run. (For Dense + activation this
    is Nøkland's ``delta = (s @ B) * f'(a)``; for a chain, exactly ReferenceChain.) The run's
    batchnorm layers learn from the error carried back to them.
  - ``"block"``: every top-level residual item (one not inside another) owns a run (the block and
    the batchnorm/activation/dropout items right after it); its error goes back exactly through
    everything inside the block, convs included (with W), down to the block's input, where it
    stops. Weight layers outside every residual item keep their ``"layer"`` runs. Weight layers
    inside a block have no B; the block has one.

  The network's last layer learns from e itself (delta = e) under every DFA-style rule, as in
  ReferenceChain.
* ``"shallow"``: only the network's last layer learns.

Layers no error reaches get zero gradients: every layer but the last under shallow, and under the
DFA-style rules any trainable layer in no run (e.g. a batchnorm right after a pool). The input error
(``input_error``) is dL/dX under bp and what the weight layers' B carry back under FA style (None
when the first weight layers have no B); the DFA-style rules and shallow carry nothing to the input.

``gradients`` answers ``{path: grads}`` in ``named_layers()`` order: ``(dW, db)`` for weight layers
(db None without bias), ``(dgamma, dbeta)`` for batchnorm, ``(None, None)`` for every other layer.

Updates (``step``): PyTorch's SGD with momentum per array, ``v = mu * v + (grad + wd * p);
p -= lr * v``, velocities starting at 0, with weight decay ``wd`` on conv and dense W only (not on
b, gamma or beta). ``"kp"``: each B gets W's update (grad dW.T for dense, dW for conv) with
``wd * B``. Sign-symmetric rules then set B = |B| with W's new signs; brsf's redraw is the
caller's (assign B). ``"wm"``: then ReferenceChain's mirror steps, noise given per path. Under
``"shallow"`` only the last layer's arrays change (and the running statistics, which any training
forward pass updates). DFA-style B never change.
"""

import numpy as np

__all__ = [
    "ACTIVATIONS",
    "RULES",
    "LOSSES",
    "feedback_shapes",
    "ReferenceNetwork",
    "ReferenceChain",
    "ReferenceNet",
    "NetLayer",
    "conv2d",
    "conv2d_transpose",
    "conv2d_weight_gradient",
    "max_pool2d",
    "max_pool2d_backward",
    "mean_pool2d",
    "mean_pool2d_backward",
    "batch_norm",
    "batch_statistics",
    "batch_norm_backward",
    "global_avg_pool",
    "global_avg_pool_backward",
    "option_a_shortcut",
    "option_a_shortcut_backward",
    "SplitMix64",
    "initial_parameters",
]

ACTIVATIONS = ("tanh", "sigmoid", "relu", "leaky_relu", "identity")
RULES = ("bp", "fa", "dfa", "usf", "frsf", "brsf", "kp", "wm", "drtp", "sdfa", "shallow")
# Rules whose B has the shape of W.T and carries delta back one layer (FA style), and rules whose
# B sends an output-sized signal straight to a hidden layer (DFA style).
FA_STYLE = ("fa", "usf", "frsf", "brsf", "kp", "wm")
DFA_STYLE = ("dfa", "drtp", "sdfa")
# Sign-symmetric rules use B = |B| * sign(W.T) (Liao, Leibo & Poggio 2016), sign(0) taken as +.
SIGN_SYMMETRIC = ("usf", "frsf", "brsf")
LOSSES = ("cross_entropy", "mse")

# Slope of leaky_relu for negative inputs.
LEAKY_SLOPE = 0.01


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def _check_name(kind, name, allowed):
    if name not in allowed:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {allowed}")


def _check_sizes(sizes):
    sizes = [int(n) for n in sizes]
    if len(sizes) < 2:
        raise ValueError(f"a network needs at least 2 layer sizes, got {sizes}")
    if any(n < 1 for n in sizes):
        raise ValueError(f"layer sizes must be positive, got {sizes}")
    return sizes


def _activate(name, a):
    """h = f(a)."""
    if name == "tanh":
        return np.tanh(a)
    if name == "sigmoid":
        # 1 / (1 + exp(-a)), written so that exp never overflows:
        # with t = exp(-|a|), sigmoid(a) = 1/(1+t) for a >= 0 and t/(1+t) otherwise.
        t = np.exp(-np.abs(a))
        return np.where(a >= 0, 1 / (1 + t), t / (1 + t))
    if name == "relu":
        return np.maximum(a, 0)
    if name == "leaky_relu":
        return np.where(a > 0, a, LEAKY_SLOPE * a)
    if name == "identity":
        return a.copy()
    raise ValueError(f"unknown activation {name!r}")


def _derivative(name, a, h):
    """f'(a), given both the pre-activation a and the activation h = f(a)."""
    one = np.ones((), dtype=a.dtype)
    if name == "tanh":
        return 1 - h * h
    if name == "sigmoid":
        return h * (1 - h)
    if name == "relu":
        return np.where(a > 0, one, 0 * one)
    if name == "leaky_relu":
        return np.where(a > 0, one, LEAKY_SLOPE * one).astype(a.dtype)
    if name == "identity":
        return np.ones_like(a)
    raise ValueError(f"unknown activation {name!r}")


def _log_softmax(z):
    """log softmax(z) row by row, via a numerically stable log-sum-exp."""
    zmax = z.max(axis=1, keepdims=True)
    lse = zmax + np.log(np.exp(z - zmax).sum(axis=1, keepdims=True))
    return z - lse


def _softmax(z):
    return np.exp(_log_softmax(z))


def _as_target(loss_name, y, m, n_out, dtype):
    """``y`` checked for ``m`` samples and ``n_out`` outputs: class labels (cross_entropy) or targets (mse)."""
    if loss_name == "cross_entropy":
        y = np.asarray(y)
        if y.shape != (m,):
            raise ValueError(f"y must hold {m} class labels, got shape {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            if not np.all(y == np.round(y)):
                raise ValueError("class labels must be integers")
            y = y.astype(np.int64)
        if y.size and (y.min() < 0 or y.max() >= n_out):
            raise ValueError(f"class labels must lie in [0, {n_out})")
        return y
    # mse
    y = np.asarray(y, dtype=dtype)
    if y.shape != (m, n_out):
        raise ValueError(f"y must have shape {(m, n_out)}, got {y.shape}")
    return y


def _loss_and_error(loss_name, z, y, dtype):
    """The batch loss and ``e = dL/dz`` (already divided by m)."""
    m = z.shape[0]
    if loss_name == "cross_entropy":
        log_p = _log_softmax(z)
        loss = -log_p[np.arange(m), y].mean()
        onehot = np.zeros_like(z)
        onehot[np.arange(m), y] = 1
        e = (np.exp(log_p) - onehot) / m
    else:  # mse
        diff = z - y
        loss = (0.5 * (diff * diff).sum(axis=1)).mean()
        e = diff / m
    return float(loss), e.astype(dtype, copy=False)


def feedback_shapes(sizes, rule):
    """Shapes of the fixed feedback matrices ``B`` of a network.

    Returns a list with one entry per layer (``len(sizes) - 1`` entries):
    ``None`` when that layer has no feedback matrix, otherwise the
    ``(rows, cols)`` shape of its ``B``.

    * ``"bp"``: every entry is ``None``.
    * ``"fa"``: ``B[k]`` (``k >= 1``) is shaped like ``W[k].T``, i.e.
      ``(sizes[k+1], sizes[k])``; ``B[0]`` is ``None``.
    * ``"dfa"``: ``B[k]`` (``k < L-1``) is ``(sizes[-1], sizes[k+1])``;
      ``B[L-1]`` is ``None``.
    """
    sizes = _check_sizes(sizes)
    _check_name("rule", rule, RULES)
    n_layers = len(sizes) - 1
    n_out = sizes[-1]
    if rule in FA_STYLE:
        return [None] + [(sizes[k + 1], sizes[k]) for k in range(1, n_layers)]
    if rule in DFA_STYLE:
        return [(n_out, sizes[k + 1]) for k in range(n_layers - 1)] + [None]
    return [None] * n_layers  # bp, shallow


# ---------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------

class ReferenceNetwork:
    """A fully connected network trained by BP, FA or DFA, in plain NumPy.

    Parameters
    ----------
    Ws, bs : sequences of arrays
        Weights ``W[k]`` of shape ``(n_k, n_{k+1})`` and biases ``b[k]`` of
        shape ``(n_{k+1},)``. They are copied. All arithmetic is done in the
        dtype of ``Ws[0]`` (float32 or float64); every other array, inputs
        included, is converted to it.
    Bs : sequence of arrays/None, or None
        Fixed feedback matrices, one entry per layer, with the shapes given
        by :func:`feedback_shapes` (``None`` where that gives ``None``). May
        be ``None`` as a whole for ``rule="bp"``. They are copied and never
        updated.
    activation : str
        Hidden-layer activation, one of :data:`ACTIVATIONS`.
    rule : str
        Learning rule, one of :data:`RULES`.
    loss : str
        Loss, one of :data:`LOSSES`.

    Attributes ``Ws``, ``bs``, ``Bs`` (lists of arrays), ``activation``,
    ``rule``, ``loss_name`` and ``sizes`` are public; :meth:`step` updates
    ``Ws`` and ``bs`` in place. (The loss *name* lives in ``loss_name``
    because ``loss`` is the method that computes the loss.)
    """

    def __init__(self, Ws, bs, Bs, activation="tanh", rule="fa", loss="cross_entropy"):
        _check_name("activation", activation, ACTIVATIONS)
        _check_name("rule", rule, RULES)
        _check_name("loss", loss, LOSSES)
        self.activation = activation
        self.rule = rule
        self.loss_name = loss

        Ws = list(Ws)
        bs = list(bs)
        if len(Ws) == 0:
            raise ValueError("a network needs at least one layer")
        if len(bs) != len(Ws):
            raise ValueError(f"got {len(Ws)} weight matrices but {len(bs)} bias vectors")

        dtype = np.asarray(Ws[0]).dtype
        if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"Ws[0] must be float32 or float64, got {dtype}")
        self.dtype = dtype

        self.Ws = [np.array(W, dtype=dtype, copy=True) for W in Ws]
        self.bs = [np.array(b, dtype=dtype, copy=True) for b in bs]

        # Layer sizes, and a check that the layers fit together.
        for k, W in enumerate(self.Ws):
            if W.ndim != 2:
                raise ValueError(f"Ws[{k}] must be 2-D, got shape {W.shape}")
        sizes = [self.Ws[0].shape[0]] + [W.shape[1] for W in self.Ws]
        for k, W in enumerate(self.Ws):
            if W.shape != (sizes[k], sizes[k + 1]):
                raise ValueError(
                    f"Ws[{k}] has shape {W.shape}, expected {(sizes[k], sizes[k + 1])} "
                    f"to follow Ws[{k - 1}]"
                )
            if self.bs[k].shape != (sizes[k + 1],):
                raise ValueError(
                    f"bs[{k}] has shape {self.bs[k].shape}, expected {(sizes[k + 1],)}"
                )
        self.sizes = _check_sizes(sizes)

        # Feedback matrices.
        expected = feedback_shapes(self.sizes, rule)
        if Bs is None:
            if any(shape is not None for shape in expected):
                raise ValueError(f"rule {rule!r} needs feedback matrices Bs with shapes {expected}")
            Bs = [None] * len(expected)
        Bs = list(Bs)
        if len(Bs) != len(expected):
            raise ValueError(f"got {len(Bs)} feedback entries, expected one per layer ({len(expected)})")
        self.Bs = []
        for k, (B, shape) in enumerate(zip(Bs, expected)):
            if shape is None:
                if B is not None:
                    raise ValueError(f"Bs[{k}] must be None for rule {rule!r}")
                self.Bs.append(None)
            else:
                if B is None:
                    raise ValueError(f"Bs[{k}] is None, expected shape {shape} for rule {rule!r}")
                B = np.array(B, dtype=dtype, copy=True)
                if B.shape != shape:
                    raise ValueError(f"Bs[{k}] has shape {B.shape}, expected {shape} for rule {rule!r}")
                self.Bs.append(B)

        # SGD-with-momentum velocities, one per parameter, starting at zero.
        self._vW = [np.zeros_like(W) for W in self.Ws]
        self._vb = [np.zeros_like(b) for b in self.bs]
        self._vB = [None if B is None else np.zeros_like(B) for B in self.Bs]

    @property
    def n_layers(self):
        return len(self.Ws)

    # -- input handling ----------------------------------------------------

    def _as_input(self, X):
        X = np.asarray(X, dtype=self.dtype)
        if X.ndim != 2 or X.shape[1] != self.sizes[0]:
            raise ValueError(f"X must have shape (m, {self.sizes[0]}), got {X.shape}")
        if X.shape[0] == 0:
            raise ValueError("X is empty")
        return X

    def _as_target(self, y, m):
        return _as_target(self.loss_name, y, m, self.sizes[-1], self.dtype)

    # -- forward pass --------------------------------------------------------

    def _forward(self, X):
        """Pre-activations a_k and layer inputs h_{k-1} of every layer, and z.

        Returns ``(inputs, pre, z)`` where ``inputs[k] = h_{k-1}`` (so
        ``inputs[0] = X``), ``pre[k] = a_k`` and ``z = a_{L-1}``.
        """
        inputs = []
        pre = []
        h = X
        for k in range(self.n_layers):
            inputs.append(h)
            a = h @ self.Ws[k] + self.bs[k]
            pre.append(a)
            if k < self.n_layers - 1:
                h = _activate(self.activation, a)
        z = pre[-1]
        return inputs, pre, z

    def forward(self, X):
        """The network outputs ``z`` (logits), shape ``(m, nL)``."""
        X = self._as_input(X)
        return self._forward(X)[2]

    def predict_proba(self, X):
        """``softmax(z)``: class probabilities (``cross_entropy`` networks only)."""
        if self.loss_name != "cross_entropy":
            raise ValueError("predict_proba is only defined for loss='cross_entropy'")
        return _softmax(self.forward(X))

    # -- loss -----------------------------------------------------------------

    def _loss_and_error(self, z, y):
        """The batch loss and ``e = dL/dz`` (already divided by m)."""
        return _loss_and_error(self.loss_name, z, y, self.dtype)

    def loss(self, X, y):
        """The mean loss over the batch ``(X, y)``, as a Python float."""
        X = self._as_input(X)
        y = self._as_target(y, X.shape[0])
        z = self._forward(X)[2]
        return self._loss_and_error(z, y)[0]

    # -- gradients ------------------------------------------------------------

    def _loss_and_gradients(self, X, y):
        inputs, pre, z = self._forward(X)
        loss, e = self._loss_and_error(z, y)

        L = self.n_layers
        deltas = [None] * L
        deltas[L - 1] = e
        for k in range(L - 2, -1, -1):
            h = _activate(self.activation, pre[k])
            fprime = _derivative(self.activation, pre[k], h)
            m = X.shape[0]
            if self.rule == "bp":
                back = deltas[k + 1] @ self.Ws[k + 1].T
            elif self.rule in SIGN_SYMMETRIC:
                back = deltas[k + 1] @ np.copysign(np.abs(self.Bs[k + 1]), self.Ws[k + 1].T)
            elif self.rule in FA_STYLE:  # fa, kp, wm
                back = deltas[k + 1] @ self.Bs[k + 1]
            elif self.rule == "dfa":
                back = e @ self.Bs[k]
            elif self.rule == "sdfa":  # sign of the error, keeping the batch-mean scale
                back = (np.sign(e) / m) @ self.Bs[k]
            elif self.rule == "drtp":  # the one-hot target stands in for the error's sign: -y*/m
                back = (-np.eye(self.sizes[-1], dtype=e.dtype)[y] / m) @ self.Bs[k]
            else:  # shallow: hidden layers do not learn
                back = np.zeros_like(pre[k])
            deltas[k] = back * fprime

        grads = []
        for k in range(L):
            dW = inputs[k].T @ deltas[k]
            db = deltas[k].sum(axis=0)
            grads.append((dW, db))
        return loss, grads

    def gradients(self, X, y):
        """``[(dW, db), ...]`` per layer, as the rule would apply them.

        Nothing in the network changes.
        """
        X = self._as_input(X)
        y = self._as_target(y, X.shape[0])
        return self._loss_and_gradients(X, y)[1]

    # -- training -------------------------------------------------------------

    def step(self, X, y, lr, momentum=0.0):
        """One SGD(-with-momentum) update on the batch ``(X, y)``.

        Returns the batch loss computed before the update.
        """
        X = self._as_input(X)
        y = self._as_target(y, X.shape[0])
        # Python floats keep float32 networks in float32 (NumPy scalars might not).
        lr = float(lr)
        momentum = float(momentum)
        if self.rule in ("brsf", "wm"):
            raise NotImplementedError(f"the reference does not replay {self.rule}'s random draws during training")
        loss, grads = self._loss_and_gradients(X, y)
        for k, (dW, db) in enumerate(grads):
            self._vW[k] = momentum * self._vW[k] + dW
            self._vb[k] = momentum * self._vb[k] + db
            self.Ws[k] -= lr * self._vW[k]
            self.bs[k] -= lr * self._vb[k]
            if self.rule == "kp" and self.Bs[k] is not None:  # Kolen-Pollack: B gets W.T's update
                self._vB[k] = momentum * self._vB[k] + dW.T
                self.Bs[k] -= lr * self._vB[k]
        if self.rule in SIGN_SYMMETRIC:  # B follows W's new signs
            for k in range(1, self.n_layers):
                self.Bs[k] = np.copysign(np.abs(self.Bs[k]), self.Ws[k].T)
        return loss

    def train_epoch(self, X, y, batch_size, lr, momentum=0.0, order=None):
        """One pass over ``(X, y)`` in mini-batches.

        ``order`` is a permutation of ``range(n)`` (``None`` means
        ``0 .. n-1``); the batches are consecutive slices of it of
        ``batch_size`` samples, the last one smaller if ``n % batch_size``
        is not 0. Returns the mean of the batch losses (each computed before
        its update) weighted by batch size.
        """
        X = self._as_input(X)
        n = X.shape[0]
        y = self._as_target(y, n)
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if order is None:
            order = np.arange(n)
        else:
            order = np.asarray(order)
            if order.shape != (n,) or not np.array_equal(np.sort(order), np.arange(n)):
                raise ValueError(f"order must be a permutation of range({n})")

        total = 0.0
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            total += self.step(X[idx], y[idx], lr, momentum) * len(idx)
        return total / n


# ---------------------------------------------------------------------------
# The library's random streams (SplitMix64), so that orders and draws can be replayed here
# ---------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _mix64(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class SplitMix64:
    """SplitMix64 (Steele, Lea & Flood 2014), written from its definition in plain Python ints."""

    GAMMA = 0x9E3779B97F4A7C15

    def __init__(self, state):
        self.state = state & _MASK64

    @classmethod
    def stream(cls, seed, tag):
        """The library's stream for one purpose: 1 forward weights, 2 feedback, 3 shuffling."""
        return cls(_mix64(seed & _MASK64) ^ tag)

    def next(self):
        self.state = (self.state + self.GAMMA) & _MASK64
        return _mix64(self.state)

    def next_block(self, n):
        """The next ``n`` outputs as a uint64 array, equal to ``n`` calls of :meth:`next`.

        Output i mixes state0 + (i+1)*GAMMA, so a block is computed at once (uint64 arithmetic
        wraps modulo 2**64, as the generator's does).
        """
        steps = np.arange(1, n + 1, dtype=np.uint64)
        z = np.uint64(self.state) + steps * np.uint64(self.GAMMA)
        self.state = (self.state + n * self.GAMMA) & _MASK64
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))

    def uniforms(self, n):
        """``n`` float64 uniforms in [0, 1): the top 53 bits of each output times 2**-53."""
        return (self.next_block(n) >> np.uint64(11)).astype(np.float64) * 2.0 ** -53

    def permutation(self, n):
        """Fisher-Yates from the last element down, j uniform in 0..i by modulo reduction."""
        order = list(range(n))
        for i in range(n - 1, 0, -1):
            j = self.next() % (i + 1)
            order[i], order[j] = order[j], order[i]
        return np.array(order)


def _glorot_uniform(shape, rng, dtype, gain=1.0):
    """Glorot & Bengio (2010) U(-l, l), l = gain * sqrt(6 / (fan_in + fan_out)), drawn in
    row-major order; each value computed in float64 as (2u - 1) * l and rounded once to dtype."""
    fan_in, fan_out = shape
    limit = gain * np.sqrt(6.0 / (fan_in + fan_out))
    u = rng.uniforms(fan_in * fan_out)
    return ((2.0 * u - 1.0) * limit).astype(dtype).reshape(shape)


def initial_parameters(sizes, rule, seed, feedback_seed=None, dtype="float32"):
    """The initial ``(Ws, bs, Bs)`` of a pyjlfa network, computed here from the seeds alone.

    The library's documented construction: forward weights come from ``SplitMix64.stream(seed,
    1)``, feedback matrices from ``SplitMix64.stream(feedback_seed, 2)`` (``feedback_seed``
    defaults to ``seed``), both Glorot-uniform and drawn layer after layer, each matrix in the
    row-major order of its shape here (``W[k]`` is ``(n_k, n_{k+1})``; ``B[k]`` as in
    :func:`feedback_shapes`). Biases start at zero.
    """
    sizes = _check_sizes(sizes)
    dtype = np.dtype(dtype)
    feedback_seed = seed if feedback_seed is None else feedback_seed
    wrng, brng = SplitMix64.stream(seed, 1), SplitMix64.stream(feedback_seed, 2)
    Ws, bs, Bs = [], [], []
    for k, shape in enumerate(feedback_shapes(sizes, rule)):
        Ws.append(_glorot_uniform((sizes[k], sizes[k + 1]), wrng, dtype))
        bs.append(np.zeros(sizes[k + 1], dtype=dtype))
        Bs.append(None if shape is None else _glorot_uniform(shape, brng, dtype))
    return Ws, bs, Bs


# ---------------------------------------------------------------------------
# Layer chains: convolution, pooling, flatten and dense layers (see the module docstring)
# ---------------------------------------------------------------------------

CHAIN_LAYERS = ("conv", "maxpool", "meanpool", "flatten", "dense")


def _pair(what, value):
    """An int or a pair of ints as a pair ``(rows, cols)``."""
    pair = (value, value) if np.isscalar(value) else tuple(np.atleast_1d(value))
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) for v in pair):
        raise ValueError(f"{what} must be an int or a pair of ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def _windows(x, k, stride):
    """The (kh, kw) windows of ``x`` (m, C, H, W) at the given stride, as a view of shape
    (m, C, oh, ow, kh, kw) with ``windows[n, c, y, x] = x[n, c, y*sh : y*sh+kh, x*sw : x*sw+kw]``."""
    sh, sw = stride
    return np.lib.stride_tricks.sliding_window_view(x, k, axis=(2, 3))[:, :, ::sh, ::sw]


def _pad(x, pad):
    ph, pw = pad
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))


def _im2col(x, kernel, stride, pad):
    """The windows of the padded ``x`` as rows: (m*oh*ow, Cin*kh*kw), row ``(n, y, x)`` holding
    ``xpad[n, :, y*sh : y*sh+kh, x*sw : x*sw+kw]`` in C order, so that a convolution is one
    matrix product with ``W.reshape(Cout, -1)``."""
    windows = _windows(_pad(x, pad), kernel, stride)  # (m, C, oh, ow, kh, kw)
    m, _, oh, ow = windows.shape[:4]
    return windows.transpose(0, 2, 3, 1, 4, 5).reshape(m * oh * ow, -1), (m, oh, ow)


def conv2d(x, W, b, stride=(1, 1), pad=(0, 0)):
    """PyTorch's conv2d: ``out[n, o, y, x] = b[o] + sum_{c,i,j} W[o, c, i, j] * xpad[n, c, y*sh+i, x*sw+j]``
    with ``x`` (m, Cin, H, W), ``W`` (Cout, Cin, kh, kw), ``b`` (Cout,) or None, zero padding ``pad``."""
    cols, (m, oh, ow) = _im2col(x, W.shape[2:], stride, pad)
    out = (cols @ W.reshape(W.shape[0], -1).T).reshape(m, oh, ow, -1).transpose(0, 3, 1, 2)
    return out if b is None else out + b[None, :, None, None]


def conv2d_weight_gradient(x, delta, kernel, stride=(1, 1), pad=(0, 0)):
    """``dW[o, c, i, j] = sum_{n,y,x} delta[n, o, y, x] * xpad[n, c, y*sh+i, x*sw+j]``: the gradient of
    ``sum(delta * conv2d(x, W))`` with respect to W, shape (Cout, Cin, kh, kw)."""
    cols, _ = _im2col(x, kernel, stride, pad)
    cout, cin = delta.shape[1], x.shape[1]
    return (delta.transpose(0, 2, 3, 1).reshape(-1, cout).T @ cols).reshape((cout, cin) + tuple(kernel))


def conv2d_transpose(delta, W, stride, pad, input_size):
    """The adjoint of ``x -> conv2d(x, W, None, stride, pad)`` applied to ``delta`` (m, Cout, oh, ow):
    every output position sends ``delta * W`` back to the input pixels it read. Returns
    (m, Cin, H, W) for ``input_size = (H, W)``; pixels no window reached get 0."""
    (sh, sw), (ph, pw) = stride, pad
    m, cout, oh, ow = delta.shape
    _, cin, kh, kw = W.shape
    H, Wd = input_size
    # What each window sends back to its kh x kw pixels: (m, oh, ow, Cin, kh, kw).
    cols = (delta.transpose(0, 2, 3, 1).reshape(-1, cout) @ W.reshape(cout, -1)).reshape(m, oh, ow, cin, kh, kw)
    grad = np.zeros((m, cin, H + 2 * ph, Wd + 2 * pw), dtype=delta.dtype)
    for i in range(kh):
        for j in range(kw):
            # Kernel tap (i, j) of the window at (y, x) read pixel (y*sh + i, x*sw + j).
            grad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += cols[..., i, j].transpose(0, 3, 1, 2)
    return grad[:, :, ph:ph + H, pw:pw + Wd]


def max_pool2d(x, k, stride):
    """Max over each (kh, kw) window. Returns ``(out, first)``, ``first`` holding, per window, the
    row-major index ``i*kw + j`` of its FIRST maximum (np.argmax keeps the first)."""
    windows = _windows(x, k, stride)
    flat = windows.reshape(windows.shape[:4] + (-1,))
    first = flat.argmax(axis=-1)
    return np.take_along_axis(flat, first[..., None], axis=-1)[..., 0], first


def max_pool2d_backward(g, first, k, stride, input_size):
    """The gradient reaching each window's first maximum; overlapping windows accumulate."""
    (kh, kw), (sh, sw) = k, stride
    m, c, oh, ow = g.shape
    grad = np.zeros((m, c) + tuple(input_size), dtype=g.dtype)
    for i in range(kh):
        for j in range(kw):
            grad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += np.where(first == i * kw + j, g, 0)
    return grad


def mean_pool2d(x, k, stride):
    """Mean over each (kh, kw) window."""
    return _windows(x, k, stride).mean(axis=(4, 5))


def mean_pool2d_backward(g, k, stride, input_size):
    """Each window's gradient shared equally among its kh*kw pixels; overlapping windows accumulate."""
    (kh, kw), (sh, sw) = k, stride
    m, c, oh, ow = g.shape
    grad = np.zeros((m, c) + tuple(input_size), dtype=g.dtype)
    for i in range(kh):
        for j in range(kw):
            grad[:, :, i:i + sh * oh:sh, j:j + sw * ow:sw] += g / (kh * kw)
    return grad


class _ChainLayer:
    """One layer of a chain: its kind, settings, and input and output shapes (without the batch)."""

    def __init__(self, index, entry, in_shape):
        if isinstance(entry, str):
            entry = (entry, {})
        if not (isinstance(entry, (tuple, list)) and len(entry) in (1, 2) and isinstance(entry[0], str)):
            raise ValueError(f"layers[{index}] must be a tuple (kind, options), got {entry!r}")
        kind, opts = entry[0], dict(entry[1]) if len(entry) == 2 else {}
        where = f"layers[{index}] ({kind})"
        _check_name(f"layer kind in layers[{index}]", kind, CHAIN_LAYERS)
        allowed = {"conv": ("cin", "cout", "k", "stride", "pad", "act"), "dense": ("n_in", "n_out", "act"),
                   "maxpool": ("k", "stride"), "meanpool": ("k", "stride"), "flatten": ()}[kind]
        unknown = sorted(set(opts) - set(allowed))
        if unknown:
            raise ValueError(f"{where}: unknown options {unknown}; expected some of {allowed}")
        self.kind, self.in_shape = kind, tuple(in_shape)
        self.act = opts.get("act", "identity")
        if kind in ("conv", "dense"):
            _check_name(f"activation in {where}", self.act, ACTIVATIONS)

        if kind == "dense":
            missing = [key for key in ("n_in", "n_out") if key not in opts]
            if missing:
                raise ValueError(f"{where}: missing options {missing}")
            self.n_in, self.n_out = int(opts["n_in"]), int(opts["n_out"])
            if self.in_shape != (self.n_in,):
                raise ValueError(f"{where}: n_in={self.n_in} but its input has shape {self.in_shape}"
                                 + (" (add ('flatten', {}) before it)" if len(self.in_shape) != 1 else ""))
            if self.n_out < 1:
                raise ValueError(f"{where}: n_out must be positive, got {self.n_out}")
            self.W_shape, self.out_shape = (self.n_in, self.n_out), (self.n_out,)
        elif kind == "flatten":
            self.out_shape = (int(np.prod(self.in_shape)),)
        else:  # conv and pooling take images (C, H, W)
            if len(self.in_shape) != 3:
                raise ValueError(f"{where}: needs an image input (C, H, W), got shape {self.in_shape}")
            if "k" not in opts:
                raise ValueError(f"{where}: missing option 'k' (window size)")
            self.k = _pair(f"{where}: k", opts["k"])
            self.stride = _pair(f"{where}: stride", opts.get("stride", (1, 1) if kind == "conv" else self.k))
            self.pad = _pair(f"{where}: pad", opts.get("pad", (0, 0)) if kind == "conv" else (0, 0))
            if min(self.k) < 1 or min(self.stride) < 1 or min(self.pad) < 0:
                raise ValueError(f"{where}: k and stride must be positive and pad non-negative")
            C, H, Wd = self.in_shape
            oh = (H + 2 * self.pad[0] - self.k[0]) // self.stride[0] + 1
            ow = (Wd + 2 * self.pad[1] - self.k[1]) // self.stride[1] + 1
            if oh < 1 or ow < 1 or H + 2 * self.pad[0] < self.k[0] or Wd + 2 * self.pad[1] < self.k[1]:
                raise ValueError(f"{where}: window {self.k} does not fit its (padded) input {self.in_shape}")
            if kind == "conv":
                missing = [key for key in ("cin", "cout") if key not in opts]
                if missing:
                    raise ValueError(f"{where}: missing options {missing}")
                self.cin, self.cout = int(opts["cin"]), int(opts["cout"])
                if self.cin != C:
                    raise ValueError(f"{where}: cin={self.cin} but its input has {C} channels")
                if self.cout < 1:
                    raise ValueError(f"{where}: cout must be positive, got {self.cout}")
                self.W_shape, self.out_shape = (self.cout, self.cin) + self.k, (self.cout, oh, ow)
            else:
                self.out_shape = (C, oh, ow)

    @property
    def parametric(self):
        return self.kind in ("conv", "dense")

    def describe(self):
        return f"{self.kind} {self.in_shape} -> {self.out_shape}"


class ReferenceChain:
    """A chain of conv / maxpool / meanpool / flatten / dense layers trained by any rule in
    :data:`RULES`, in plain NumPy (the rules on a chain are written out in the module docstring).

    Parameters
    ----------
    layers : list
        One entry per layer, ``(kind, options)`` with ``options`` a dict (a bare string is a layer
        without options, e.g. ``"flatten"``):

        * ``("conv", dict(cin=1, cout=6, k=(5, 5), stride=(1, 1), pad=(0, 0), act="relu"))``:
          ``k``, ``stride`` and ``pad`` are ints or pairs (rows, cols); stride defaults to 1, pad to 0.
        * ``("maxpool", dict(k=(2, 2), stride=(2, 2)))`` and ``("meanpool", ...)``: stride defaults
          to the window; no padding.
        * ``("flatten", {})``: (C, H, W) -> (C*H*W,) in C order.
        * ``("dense", dict(n_in=120, n_out=84, act="tanh"))``.

        ``act`` is one of :data:`ACTIVATIONS` (default ``"identity"``). The last layer must be
        dense with identity activation: its output is the logits ``z``.
    input_shape : tuple
        One sample's shape: ``(C, H, W)`` for images, ``(n,)`` for vectors.
    rule, loss : str
        One of :data:`RULES` and :data:`LOSSES` (``"drtp"`` needs ``"cross_entropy"``).
    dtype : float32 or float64
        Every array and computation; inputs are converted to it.

    Attributes
    ----------
    W, b, B : lists with one entry per chain layer (None where a layer has none). W is
        (Cout, Cin, kh, kw) for conv and (n_in, n_out) for dense; b is (Cout,) or (n_out,); B has
        the shape :meth:`feedback_shapes` gives. They start at zero: set them (assign arrays of
        the right shape and dtype, or fill them in place) or call :meth:`init_random`.
    in_shapes, out_shapes : each layer's input and output shape, without the batch.
    kinds : each layer's kind. ``parametric``: indices of the conv and dense layers.
    """

    def __init__(self, layers, input_shape, rule, loss="cross_entropy", dtype="float64"):
        _check_name("rule", rule, RULES)
        _check_name("loss", loss, LOSSES)
        if rule == "drtp" and loss != "cross_entropy":
            raise ValueError("rule 'drtp' projects one-hot class targets; it needs loss='cross_entropy'")
        self.rule, self.loss_name = rule, loss
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        input_shape = tuple(int(n) for n in np.atleast_1d(input_shape))
        if len(input_shape) not in (1, 3) or min(input_shape) < 1:
            raise ValueError(f"input_shape must be (C, H, W) or (n,) with positive sizes, got {input_shape}")
        self.input_shape = input_shape

        layers = list(layers)
        if not layers:
            raise ValueError("layers is empty; a chain ends with a dense layer")
        self.layers = []
        shape = input_shape
        for index, entry in enumerate(layers):
            layer = _ChainLayer(index, entry, shape)
            self.layers.append(layer)
            shape = layer.out_shape
        last = self.layers[-1]
        if last.kind != "dense" or last.act != "identity":
            raise ValueError(f"the last layer must be dense with act='identity' (its output is the logits), "
                             f"got {last.kind} with act={last.act!r}")
        self.kinds = [layer.kind for layer in self.layers]
        self.in_shapes = [layer.in_shape for layer in self.layers]
        self.out_shapes = [layer.out_shape for layer in self.layers]
        self.parametric = [i for i, layer in enumerate(self.layers) if layer.parametric]
        self.n_outputs = last.n_out

        dt = self.dtype
        self.W = [np.zeros(l.W_shape, dt) if l.parametric else None for l in self.layers]
        self.b = [np.zeros(l.out_shape[:1], dt) if l.parametric else None for l in self.layers]
        self.B = [None if s is None else np.zeros(s, dt) for s in self.feedback_shapes()]
        # SGD-with-momentum velocities, created at the first step.
        self._vW, self._vb, self._vB = {}, {}, {}

    def __len__(self):
        return len(self.layers)

    def __repr__(self):
        body = "\n".join(f"  {i}: {l.describe()}" for i, l in enumerate(self.layers))
        return f"ReferenceChain(rule={self.rule!r}, loss={self.loss_name!r}, input {self.input_shape})\n{body}"

    def feedback_shapes(self):
        """The shape of each chain layer's B under the rule (None where it has none)."""
        shapes = [None] * len(self.layers)
        first, last = self.parametric[0], self.parametric[-1]
        for i in self.parametric:
            layer = self.layers[i]
            if self.rule in FA_STYLE and i != first:
                shapes[i] = (layer.n_out, layer.n_in) if layer.kind == "dense" else layer.W_shape
            elif self.rule in DFA_STYLE and i != last:
                shapes[i] = (self.n_outputs, int(np.prod(layer.out_shape)))
        return shapes

    def init_random(self, rng, bias_std=0.1):
        """Fill W and B with N(0, 1/fan_in) draws (fan_in of W; of B, the size it multiplies) and
        b with N(0, bias_std^2) draws from the NumPy Generator ``rng``. Returns self."""
        for i, layer in enumerate(self.layers):
            if not layer.parametric:
                continue
            fan_in = int(np.prod(layer.W_shape[1:])) if layer.kind == "conv" else layer.n_in
            self.W[i] = rng.normal(0, fan_in ** -0.5, layer.W_shape).astype(self.dtype)
            self.b[i] = rng.normal(0, bias_std, self.b[i].shape).astype(self.dtype)
            if self.B[i] is not None:
                B_shape = self.B[i].shape
                B_fan = B_shape[0] if len(B_shape) == 2 else int(np.prod(B_shape)) // B_shape[1]
                self.B[i] = rng.normal(0, B_fan ** -0.5, B_shape).astype(self.dtype)
        return self

    # -- checks -------------------------------------------------------------------

    def _check_parameters(self):
        """W, b and B must still have the shapes and dtype the chain was built with."""
        expected_B = self.feedback_shapes()
        for i, layer in enumerate(self.layers):
            for name, arr, shape in (("W", self.W[i], getattr(layer, "W_shape", None)),
                                     ("b", self.b[i], layer.out_shape[:1] if layer.parametric else None),
                                     ("B", self.B[i], expected_B[i])):
                if shape is None:
                    if arr is not None:
                        raise ValueError(f"{name}[{i}] must be None: layer {i} ({layer.kind}) has no {name} "
                                         f"under rule {self.rule!r}")
                    continue
                if not isinstance(arr, np.ndarray) or arr.shape != tuple(shape) or arr.dtype != self.dtype:
                    got = (arr.shape, arr.dtype) if isinstance(arr, np.ndarray) else type(arr).__name__
                    raise ValueError(f"{name}[{i}] of layer {i} ({layer.kind}) must be a {self.dtype} array "
                                     f"of shape {tuple(shape)}, got {got}")

    def _as_input(self, X):
        X = np.asarray(X, dtype=self.dtype)
        if X.shape[1:] != self.input_shape or X.shape[0] == 0:
            raise ValueError(f"X must have shape (m, {', '.join(map(str, self.input_shape))}) with m >= 1, "
                             f"got {X.shape}")
        return X

    # -- forward ------------------------------------------------------------------

    def _forward(self, X):
        """Per layer: its input, its pre-activation (parametric layers) and max-pool arg-maxes."""
        inputs, pre, first = [], [None] * len(self.layers), [None] * len(self.layers)
        h = X
        for i, layer in enumerate(self.layers):
            inputs.append(h)
            if layer.kind == "conv":
                pre[i] = conv2d(h, self.W[i], self.b[i], layer.stride, layer.pad)
                h = _activate(layer.act, pre[i])
            elif layer.kind == "dense":
                pre[i] = h @ self.W[i] + self.b[i]
                h = _activate(layer.act, pre[i])
            elif layer.kind == "maxpool":
                h, first[i] = max_pool2d(h, layer.k, layer.stride)
            elif layer.kind == "meanpool":
                h = mean_pool2d(h, layer.k, layer.stride)
            else:  # flatten
                h = h.reshape(h.shape[0], -1)
        return inputs, pre, first, pre[-1]

    def forward(self, X):
        """The logits z, shape (m, n_outputs)."""
        self._check_parameters()
        return self._forward(self._as_input(X))[3]

    def loss(self, X, y):
        """The mean loss over the batch (X, y), as a Python float."""
        self._check_parameters()
        X = self._as_input(X)
        y = _as_target(self.loss_name, y, X.shape[0], self.n_outputs, self.dtype)
        return _loss_and_error(self.loss_name, self._forward(X)[3], y, self.dtype)[0]

    # -- the rules ------------------------------------------------------------------

    def _feedback(self, i):
        """What layer i multiplies its delta by to reach its input: W (bp) or its B (FA style;
        sign-symmetric rules: |B| with the current signs of W, resp. W.T for dense)."""
        if self.rule == "bp":
            return self.W[i]
        if self.rule in SIGN_SYMMETRIC:
            W = self.W[i].T if self.layers[i].kind == "dense" else self.W[i]
            return np.copysign(np.abs(self.B[i]), W)
        return self.B[i]

    def _carry_back(self, i, g, first):
        """The error at layer i's input, given ``g``: its delta (parametric layers, through
        ``_feedback``) or the error at its output (pooling and flatten, exactly)."""
        layer = self.layers[i]
        if layer.kind == "dense":
            F = self._feedback(i)
            return g @ (F.T if self.rule == "bp" else F)
        if layer.kind == "conv":
            return conv2d_transpose(g, self._feedback(i), layer.stride, layer.pad, layer.in_shape[1:])
        if layer.kind == "maxpool":
            return max_pool2d_backward(g, first[i], layer.k, layer.stride, layer.in_shape[1:])
        if layer.kind == "meanpool":
            return mean_pool2d_backward(g, layer.k, layer.stride, layer.in_shape[1:])
        return g.reshape((g.shape[0],) + layer.in_shape)  # flatten

    def _loss_signals(self, X, y):
        """The loss, each layer's input, and delta_p = dL/da_p as the rule defines it (None for
        pooling and flatten)."""
        inputs, pre, first, z = self._forward(X)
        loss, e = _loss_and_error(self.loss_name, z, y, self.dtype)
        m = X.shape[0]
        deltas = [None] * len(self.layers)
        P = self.parametric
        deltas[P[-1]] = e

        def fprime(i):
            a = pre[i]
            return _derivative(self.layers[i].act, a, _activate(self.layers[i].act, a))

        if self.rule in DFA_STYLE:
            if self.rule == "dfa":
                s = e
            elif self.rule == "sdfa":  # the sign of the error, keeping the batch-mean scale
                s = np.sign(e) / m
            else:  # drtp: the one-hot target stands in for the error's sign
                s = -np.eye(self.n_outputs, dtype=self.dtype)[y] / m
            for i in P[:-1]:
                deltas[i] = (s @ self.B[i]).reshape(pre[i].shape) * fprime(i)
        elif self.rule == "shallow":
            for i in P[:-1]:
                deltas[i] = np.zeros_like(pre[i])
        else:  # bp and FA style: walk back layer by layer down to the first parametric layer
            g = self._carry_back(P[-1], e, first)
            for i in range(P[-1] - 1, P[0] - 1, -1):
                if self.layers[i].parametric:
                    deltas[i] = g * fprime(i)
                    if i == P[0]:
                        break
                    g = self._carry_back(i, deltas[i], first)
                else:
                    g = self._carry_back(i, g, first)
        return loss, inputs, deltas

    def signals(self, X, y):
        """delta_p = dL/da_p per chain layer (None for pooling and flatten), as the rule defines it."""
        self._check_parameters()
        X = self._as_input(X)
        y = _as_target(self.loss_name, y, X.shape[0], self.n_outputs, self.dtype)
        return self._loss_signals(X, y)[2]

    def _gradients(self, inputs, deltas):
        grads = []
        for i, layer in enumerate(self.layers):
            d = deltas[i]
            if layer.kind == "dense":
                grads.append((inputs[i].T @ d, d.sum(axis=0)))
            elif layer.kind == "conv":
                grads.append((conv2d_weight_gradient(inputs[i], d, layer.k, layer.stride, layer.pad),
                              d.sum(axis=(0, 2, 3))))
            else:
                grads.append((None, None))
        return grads

    def gradients(self, X, y):
        """``[(dW, db), ...]`` per chain layer ((None, None) for pooling and flatten). Nothing changes."""
        self._check_parameters()
        X = self._as_input(X)
        y = _as_target(self.loss_name, y, X.shape[0], self.n_outputs, self.dtype)
        _, inputs, deltas = self._loss_signals(X, y)
        return self._gradients(inputs, deltas)

    # -- training ------------------------------------------------------------------

    def _check_noise(self, name, noise, lead):
        """``noise`` as one array per chain layer with a B (None elsewhere) of shape
        ``lead + (batchsize,) + layer input shape``, converted to the chain's dtype."""
        noise = list(noise)
        if len(noise) != len(self.layers):
            raise ValueError(f"{name} needs one entry per chain layer ({len(self.layers)}), got {len(noise)}")
        checked = [None] * len(self.layers)
        for i, layer in enumerate(self.layers):
            if self.B[i] is None:
                continue
            x = np.asarray(noise[i], dtype=self.dtype)
            want = ", ".join(("steps",) * len(lead) + ("batchsize",) + tuple(map(str, layer.in_shape)))
            if x.shape[len(lead) + 1:] != layer.in_shape or x.ndim != len(lead) + 1 + len(layer.in_shape) \
                    or min(x.shape[:len(lead) + 1]) < 1:
                raise ValueError(f"{name}[{i}] must have shape ({want}), got {x.shape}")
            checked[i] = x
        return checked

    def mirror(self, noise, lr=0.01, decay=1.0):
        """One weight-mirror step on every layer with a B: ``noise[i]`` is a batch x of layer i's
        input shape (None where B is None), y = (layer without bias)(x), and
        dense: ``B += lr * (y.T @ x / mb - decay * B)`` (B is (n_out, n_in)),
        conv:  ``B += lr * (conv2d_weight_gradient(x, y) / (mb * oh * ow) - decay * B)``."""
        noise = self._check_noise("noise", noise, ())
        lr, decay = float(lr), float(decay)
        for i, layer in enumerate(self.layers):
            if self.B[i] is None:
                continue
            x = noise[i]
            mb = x.shape[0]
            if layer.kind == "dense":
                y = x @ self.W[i]
                self.B[i] += lr * (y.T @ x / mb - decay * self.B[i])
            else:
                y = conv2d(x, self.W[i], None, layer.stride, layer.pad)
                oh, ow = layer.out_shape[1:]
                dW_like = conv2d_weight_gradient(x, y, layer.k, layer.stride, layer.pad)
                self.B[i] += lr * (dW_like / (mb * oh * ow) - decay * self.B[i])

    def step(self, X, y, lr, momentum=0.0, weight_decay=0.0, mirror_noise=None, mirror_lr=0.01,
             mirror_decay=1.0):
        """One SGD(-with-momentum) update on the batch (X, y); returns the loss before it.

        Per learning layer (all parametric layers; only the last under ``"shallow"``, whose other
        layers are not touched at all): ``g = dW + weight_decay * W; v = momentum * v + g;
        W -= lr * v``, and the same for b without weight decay. ``"kp"``: B likewise with
        ``g = dW.T + weight_decay * B`` (dense) or ``dW + weight_decay * B`` (conv).
        Sign-symmetric rules then set B = |B| with the new signs of W (W.T for dense);
        ``"brsf"``'s redraw of the magnitudes before each batch is the caller's (assign B).
        ``"wm"`` then makes ``mirror_noise[i].shape[0]`` mirror steps (:meth:`mirror`) with the noise
        batches ``mirror_noise[i][s]``, shape (batchsize,) + layer i's input shape (required for wm).
        """
        self._check_parameters()
        X = self._as_input(X)
        y = _as_target(self.loss_name, y, X.shape[0], self.n_outputs, self.dtype)
        # Python floats keep float32 chains in float32.
        lr, momentum, weight_decay = float(lr), float(momentum), float(weight_decay)
        if self.rule == "wm":  # checked before anything changes
            if mirror_noise is None:
                raise ValueError("rule 'wm' needs mirror_noise: one (steps, batchsize, *input shape) array "
                                 "per layer with a B, None elsewhere")
            mirror_noise = self._check_noise("mirror_noise", mirror_noise, (1,))
            steps = {len(x) for x in mirror_noise if x is not None}
            if len(steps) > 1:
                raise ValueError(f"every mirror_noise entry needs the same number of steps, got {sorted(steps)}")
        loss, inputs, deltas = self._loss_signals(X, y)
        grads = self._gradients(inputs, deltas)
        last = self.parametric[-1]
        for i in self.parametric:
            if self.rule == "shallow" and i != last:
                continue
            dW, db = grads[i]
            self._vW[i] = momentum * self._vW.get(i, 0) + (dW + weight_decay * self.W[i])
            self._vb[i] = momentum * self._vb.get(i, 0) + db
            self.W[i] -= lr * self._vW[i]
            self.b[i] -= lr * self._vb[i]
            if self.rule == "kp" and self.B[i] is not None:  # Kolen-Pollack: B gets W's update
                dB = dW.T if self.layers[i].kind == "dense" else dW
                self._vB[i] = momentum * self._vB.get(i, 0) + (dB + weight_decay * self.B[i])
                self.B[i] -= lr * self._vB[i]
        if self.rule in SIGN_SYMMETRIC:  # B follows W's new signs
            for i in self.parametric:
                if self.B[i] is not None:
                    self.B[i] = self._feedback(i).astype(self.dtype, copy=False)
        if self.rule == "wm":
            for s in range(steps.pop() if steps else 0):
                self.mirror([None if x is None else x[s] for x in mirror_noise], mirror_lr, mirror_decay)
        return loss


# ---------------------------------------------------------------------------
# Nested networks: batch norm, activation and dropout layers, global average pooling and residual
# blocks (see "Nested networks" in the module docstring)
# ---------------------------------------------------------------------------

WEIGHT_LAYERS = ("conv", "dense")
POOL_LAYERS = ("maxpool", "meanpool")
# Layers that may follow a weight layer (or a block) in its run: the point sits after the last.
RUN_LAYERS = ("batchnorm", "dropout") + ACTIVATIONS
NET_LAYERS = WEIGHT_LAYERS + POOL_LAYERS + ("flatten", "gap", "batchnorm", "dropout", "residual") + ACTIVATIONS
FEEDBACK_POINTS = ("layer", "block")
# PyTorch's BatchNorm defaults.
BN_MOMENTUM = 0.1
BN_EPS = 1e-5
# The arrays a layer may hold, in the order init_random draws and named_arrays lists them.
ARRAY_NAMES = ("W", "b", "B", "gamma", "beta", "running_mean", "running_var")


def batch_norm(x, gamma, beta, mean, var, eps=BN_EPS):
    """``y = gamma * (x - mean) / sqrt(var + eps) + beta`` per channel (axis 1 of ``x``, which is
    (m, C, H, W) or (m, F)). Returns ``(y, xhat, std)`` with ``xhat = (x - mean) / std``,
    ``std = sqrt(var + eps)`` (shape (C,))."""
    shape = (1, -1) + (1,) * (x.ndim - 2)  # a per-channel vector broadcast over (m, C, H, W) or (m, F)
    std = np.sqrt(var + eps)
    xhat = (x - mean.reshape(shape)) / std.reshape(shape)
    return gamma.reshape(shape) * xhat + beta.reshape(shape), xhat, std


def batch_statistics(x):
    """Per channel: the batch mean, the BIASED batch variance and n, the values per channel
    (m for (m, F); m*H*W for (m, C, H, W))."""
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    n = x.size // x.shape[1]
    mean = x.mean(axis=axes)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    var = ((x - mean.reshape(shape)) ** 2).mean(axis=axes)
    return mean, var, n


def batch_norm_backward(g, xhat, gamma, std, training):
    """``(dx, dgamma, dbeta)`` for ``g = dL/dy``. Training mode (batch statistics, which depend on x):
    ``dx = gamma/std * (g - mean(g) - xhat * mean(g * xhat))``, means over each channel's n values;
    evaluation mode (running statistics, constants): ``dx = gamma/std * g``. Both:
    ``dgamma = sum(g * xhat)``, ``dbeta = sum(g)`` per channel."""
    axes = (0,) if g.ndim == 2 else (0, 2, 3)
    shape = (1, -1) + (1,) * (g.ndim - 2)
    scale = (gamma / std).reshape(shape)
    if training:
        g_mean = g.mean(axis=axes).reshape(shape)
        gx_mean = (g * xhat).mean(axis=axes).reshape(shape)
        dx = scale * (g - g_mean - xhat * gx_mean)
    else:
        dx = scale * g
    return dx, (g * xhat).sum(axis=axes), g.sum(axis=axes)


def global_avg_pool(x):
    """PyTorch's AdaptiveAvgPool2d(1): (m, C, H, W) -> (m, C, 1, 1), the mean of each channel."""
    return x.mean(axis=(2, 3), keepdims=True)


def global_avg_pool_backward(g, input_size):
    """Each channel's gradient spread equally over its H*W pixels: (m, C, 1, 1) -> (m, C, H, W)."""
    H, Wd = input_size
    return np.broadcast_to(g / (H * Wd), g.shape[:2] + (H, Wd)).copy()


def option_a_shortcut(x, cout, stride):
    """He et al.'s parameter-free shortcut (option A) as biotorch writes it:
    ``x[:, :, ::s, ::s]`` with ``(cout - Cin) // 2`` zero channels added before and after."""
    m, cin = x.shape[:2]
    lo = (cout - cin) // 2
    kept = x[:, :, ::stride, ::stride]
    out = np.zeros((m, cout) + kept.shape[2:], dtype=x.dtype)
    out[:, lo:lo + cin] = kept
    return out


def option_a_shortcut_backward(g, cin, stride, input_size):
    """The adjoint of :func:`option_a_shortcut`: the kept channels' gradient goes back to the pixels
    they were read from (every s-th row and column); the other pixels get 0."""
    m, cout = g.shape[:2]
    lo = (cout - cin) // 2
    grad = np.zeros((m, cin) + tuple(input_size), dtype=g.dtype)
    grad[:, :, ::stride, ::stride] = g[:, lo:lo + cin]
    return grad


class NetLayer:
    """One layer of a :class:`ReferenceNet`, named by its ``path``.

    ``kind``, ``in_shape`` and ``out_shape`` (one sample's shapes) describe it; its arrays are the
    attributes ``W``, ``b``, ``B``, ``gamma``, ``beta``, ``running_mean`` and ``running_var``, each
    None where the layer has none (``b`` also for ``bias=False``). A residual layer holds ``main``
    (a list of layers) and ``shortcut`` (None, ``"pad"`` or a list of layers).
    """

    def __init__(self, path, entry, in_shape):
        if isinstance(entry, str):
            entry = (entry, {})
        if not (isinstance(entry, (tuple, list)) and len(entry) in (1, 2) and isinstance(entry[0], str)):
            raise ValueError(f"layer {path} must be a tuple (kind, options), got {entry!r}")
        kind, opts = entry[0], dict(entry[1]) if len(entry) == 2 else {}
        _check_name(f"layer kind of layer {path}", kind, NET_LAYERS)
        self.path, self.kind, self.in_shape = path, kind, tuple(in_shape)
        self.where = f"layer {path} ({kind})"
        allowed = {"conv": ("cin", "cout", "k", "stride", "pad", "bias", "act"),
                   "dense": ("n_in", "n_out", "bias", "act"), "maxpool": ("k", "stride"),
                   "meanpool": ("k", "stride"), "batchnorm": ("c",), "dropout": ("p",),
                   "residual": ("main", "shortcut")}.get(kind, ())
        unknown = sorted(set(opts) - set(allowed))
        if unknown:
            raise ValueError(f"{self.where}: unknown options {unknown}; expected some of {allowed}")
        for name in ARRAY_NAMES:
            setattr(self, name, None)
        self.act = opts.get("act", "identity")
        self.has_bias = bool(opts.get("bias", True))
        self.main, self.shortcut = None, None
        self.opts = opts

        if kind in WEIGHT_LAYERS:
            _check_name(f"activation of {self.where}", self.act, ACTIVATIONS)
        if kind == "dense":
            self._missing(opts, ("n_in", "n_out"))
            self.n_in, self.n_out = int(opts["n_in"]), int(opts["n_out"])
            if self.in_shape != (self.n_in,):
                raise ValueError(f"{self.where}: n_in={self.n_in} but its input has shape {self.in_shape}"
                                 + (" (add ('flatten', {}) before it)" if len(self.in_shape) != 1 else ""))
            if self.n_out < 1:
                raise ValueError(f"{self.where}: n_out must be positive, got {self.n_out}")
            self.W_shape, self.out_shape = (self.n_in, self.n_out), (self.n_out,)
        elif kind in ("conv",) + POOL_LAYERS:
            self._need_image()
            if "k" not in opts:
                raise ValueError(f"{self.where}: missing option 'k' (window size)")
            self.k = _pair(f"{self.where}: k", opts["k"])
            self.stride = _pair(f"{self.where}: stride", opts.get("stride", (1, 1) if kind == "conv" else self.k))
            self.pad = _pair(f"{self.where}: pad", opts.get("pad", (0, 0)) if kind == "conv" else (0, 0))
            if min(self.k) < 1 or min(self.stride) < 1 or min(self.pad) < 0:
                raise ValueError(f"{self.where}: k and stride must be positive and pad non-negative")
            C, H, Wd = self.in_shape
            if H + 2 * self.pad[0] < self.k[0] or Wd + 2 * self.pad[1] < self.k[1]:
                raise ValueError(f"{self.where}: window {self.k} does not fit its (padded) input {self.in_shape}")
            oh = (H + 2 * self.pad[0] - self.k[0]) // self.stride[0] + 1
            ow = (Wd + 2 * self.pad[1] - self.k[1]) // self.stride[1] + 1
            if kind == "conv":
                self._missing(opts, ("cin", "cout"))
                self.cin, self.cout = int(opts["cin"]), int(opts["cout"])
                if self.cin != C:
                    raise ValueError(f"{self.where}: cin={self.cin} but its input has {C} channels "
                                     f"(input shape {self.in_shape})")
                if self.cout < 1:
                    raise ValueError(f"{self.where}: cout must be positive, got {self.cout}")
                self.W_shape, self.out_shape = (self.cout, self.cin) + self.k, (self.cout, oh, ow)
            else:
                self.out_shape = (C, oh, ow)
        elif kind == "flatten":
            self.out_shape = (int(np.prod(self.in_shape)),)
        elif kind == "gap":
            self._need_image()
            self.out_shape = (self.in_shape[0], 1, 1)
        elif kind == "batchnorm":
            self._missing(opts, ("c",))
            self.c = int(opts["c"])
            if len(self.in_shape) not in (1, 3) or self.in_shape[0] != self.c:
                raise ValueError(f"{self.where}: c={self.c} but its input has shape {self.in_shape} "
                                 f"(expected ({self.c},) or ({self.c}, H, W))")
            self.out_shape = self.in_shape
        elif kind == "dropout":
            self._missing(opts, ("p",))
            self.p = float(opts["p"])
            if not 0 <= self.p < 1:
                raise ValueError(f"{self.where}: p must lie in [0, 1), got {opts['p']!r}")
            self.out_shape = self.in_shape
        elif kind == "residual":
            self._missing(opts, ("main",))
            main = opts["main"]
            shortcut = opts.get("shortcut")
            if not isinstance(main, (list, tuple)) or not main:
                raise ValueError(f"{self.where}: main must be a non-empty list of layers, got {main!r}")
            self.main = _build_layers(main, self.in_shape, f"{path}.main")
            main_shape = self.main[-1].out_shape
            if shortcut is None:
                self.shortcut, short_shape, what = None, self.in_shape, "the identity shortcut"
            elif isinstance(shortcut, str) and shortcut == "pad":
                self._need_image()
                self.shortcut = "pad"
                # Option A keeps every second row and column when main changes the spatial size.
                self.pad_stride = 2 if main_shape[1:] != self.in_shape[1:] else 1
                C, H, Wd = self.in_shape
                s = self.pad_stride
                cout = main_shape[0] if len(main_shape) == 3 else C
                short_shape = (cout, -(-H // s), -(-Wd // s))
                what = f"the 'pad' shortcut (stride {s}, {C} -> {cout} channels)"
                if len(main_shape) != 3 or cout < C or (cout - C) % 2:
                    raise ValueError(f"{self.where}: the 'pad' shortcut needs main to give (Cout, H, W) with "
                                     f"Cout - Cin even and >= 0; main gives {main_shape}, the input is "
                                     f"{self.in_shape}")
            elif isinstance(shortcut, (list, tuple)) and shortcut:
                self.shortcut = _build_layers(shortcut, self.in_shape, f"{path}.shortcut")
                short_shape, what = self.shortcut[-1].out_shape, "the shortcut"
            else:
                raise ValueError(f"{self.where}: shortcut must be None, 'pad' or a non-empty list of layers, "
                                 f"got {shortcut!r}")
            if tuple(short_shape) != tuple(main_shape):
                raise ValueError(f"{self.where}: main gives shape {main_shape} but {what} gives {tuple(short_shape)}")
            self.out_shape = main_shape
        else:  # activation layers
            self.out_shape = self.in_shape

    def _missing(self, opts, keys):
        missing = [key for key in keys if key not in opts]
        if missing:
            raise ValueError(f"{self.where}: missing options {missing}")

    def _need_image(self):
        if len(self.in_shape) != 3:
            raise ValueError(f"{self.where}: needs an image input (C, H, W), got shape {self.in_shape}")

    @property
    def is_weight(self):
        return self.kind in WEIGHT_LAYERS

    @property
    def trainable(self):
        """Whether the layer has parameters a rule trains (weight layers and batch norm)."""
        return self.kind in WEIGHT_LAYERS or self.kind == "batchnorm"

    def children(self):
        """The layers directly inside a residual layer, main path first."""
        if self.kind != "residual":
            return []
        return list(self.main) + (list(self.shortcut) if isinstance(self.shortcut, list) else [])

    def describe(self):
        extra = ""
        if self.kind == "residual":
            extra = f", shortcut {self.shortcut!r}" if not isinstance(self.shortcut, list) else ", projection shortcut"
        return f"{self.path}: {self.kind} {self.in_shape} -> {self.out_shape}{extra}"

    def __repr__(self):
        return f"NetLayer({self.describe()})"


def _build_layers(items, in_shape, prefix):
    """The layers of one list, paths ``prefix.i`` (``i`` alone at the top level)."""
    layers, shape = [], tuple(in_shape)
    for i, entry in enumerate(items):
        layer = NetLayer(f"{prefix}.{i}" if prefix else str(i), entry, shape)
        layers.append(layer)
        shape = layer.out_shape
    return layers


def _walk(layers):
    """Every layer depth-first, a residual before its main path, its main path before its shortcut."""
    for layer in layers:
        yield layer
        yield from _walk(layer.children())


class _Pass:
    """What one forward pass saves for the backward pass, per layer path."""

    def __init__(self, training, masks):
        self.training, self.masks = training, masks
        self.saved = {}      # path -> dict of the arrays the layer's backward needs
        self.batch = {}      # batchnorm path -> (batch mean, biased batch variance, n)
        self.grads = {}      # path -> the layer's parameter gradients, once a signal reached it
        self.errors = {}     # path -> the error that arrived at the layer's output


class ReferenceNet:
    """A network of nested layer lists (residual blocks, batch norm, activation and dropout layers)
    trained by any rule in :data:`RULES`, in plain NumPy. The layers and the rules on them are
    written out under "Nested networks" in the module docstring.

    Parameters
    ----------
    layers : list of ``(kind, options)`` (a bare string is a layer without options), kinds
        ``conv``, ``dense``, ``maxpool``, ``meanpool``, ``flatten``, ``gap``, ``batchnorm``,
        ``dropout``, ``residual`` and the activations in :data:`ACTIVATIONS`. The last top-level
        item must be dense with identity activation (its output is the logits).
    input_shape : ``(C, H, W)`` or ``(n,)``, one sample.
    rule, loss : one of :data:`RULES` and :data:`LOSSES` (``"drtp"`` needs ``"cross_entropy"``).
    dtype : float32 or float64, of every array and computation.
    feedback_points : ``"layer"`` (the default) or ``"block"``, DFA-style rules only.

    Layers are reached by path (``net.layer("3.main.0")``, :meth:`named_layers`); their arrays are
    attributes (``W``, ``b``, ``B``, ``gamma``, ``beta``, ``running_mean``, ``running_var``), all
    zero at first except ``gamma`` (1) and ``running_var`` (1): assign arrays of the right shape
    and dtype, fill them in place, or call :meth:`init_random`. The network starts in training
    mode; :meth:`train` and :meth:`eval` switch it.
    """

    def __init__(self, layers, input_shape, rule, loss="cross_entropy", dtype="float64", feedback_points=None):
        _check_name("rule", rule, RULES)
        _check_name("loss", loss, LOSSES)
        if rule == "drtp" and loss != "cross_entropy":
            raise ValueError("rule 'drtp' projects one-hot class targets; it needs loss='cross_entropy'")
        if rule in DFA_STYLE:
            feedback_points = "layer" if feedback_points is None else feedback_points
            _check_name("feedback_points", feedback_points, FEEDBACK_POINTS)
        elif feedback_points is not None:
            raise ValueError(f"feedback_points is a setting of the direct rules {DFA_STYLE}; rule {rule!r} "
                             f"does not use it (got {feedback_points!r})")
        self.rule, self.loss_name, self.feedback_points = rule, loss, feedback_points
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        input_shape = tuple(int(n) for n in np.atleast_1d(input_shape))
        if len(input_shape) not in (1, 3) or min(input_shape) < 1:
            raise ValueError(f"input_shape must be (C, H, W) or (n,) with positive sizes, got {input_shape}")
        self.input_shape = input_shape

        if not isinstance(layers, (list, tuple)) or not layers:
            raise ValueError("layers must be a non-empty list; a network ends with a dense layer")
        self.layers = _build_layers(layers, input_shape, "")
        self.last = self.layers[-1]
        if self.last.kind != "dense" or self.last.act != "identity":
            raise ValueError(f"the last layer must be dense with act='identity' (its output is the logits), "
                             f"got {self.last.where} with act={self.last.act!r}")
        self.n_outputs = self.last.n_out
        self.training = True

        # Where each rule's feedback acts.
        self._fa_feedback = {}   # weight layer path -> whether it has an FA-style B
        self._mark_upstream(self.layers, False)
        self.points = self._feedback_points() if rule in DFA_STYLE else []   # [(owner, run), ...]

        dt = self.dtype
        B_shapes = self.feedback_shapes()
        for layer in _walk(self.layers):
            if layer.is_weight:
                layer.W = np.zeros(layer.W_shape, dt)
                layer.b = np.zeros(layer.out_shape[:1], dt) if layer.has_bias else None
            if layer.kind == "batchnorm":
                layer.gamma, layer.beta = np.ones(layer.c, dt), np.zeros(layer.c, dt)
                layer.running_mean, layer.running_var = np.zeros(layer.c, dt), np.ones(layer.c, dt)
            if layer.path in B_shapes:
                layer.B = np.zeros(B_shapes[layer.path], dt)
        self._velocity = {}   # (path, array name) -> SGD-with-momentum velocity, created at the first step

    # -- structure ----------------------------------------------------------------

    def _mark_upstream(self, layers, upstream):
        """Walk a list in forward order knowing whether a trainable layer lies between the network
        input and the list's input; a weight layer gets an FA-style B iff one does. Returns the same
        for the list's output."""
        for layer in layers:
            if layer.is_weight:
                self._fa_feedback[layer.path] = upstream
            if layer.kind == "residual":
                out_main = self._mark_upstream(layer.main, upstream)
                out_short = self._mark_upstream(layer.shortcut, upstream) if isinstance(layer.shortcut, list) \
                    else upstream
                upstream = out_main or out_short
            elif layer.trainable:
                upstream = True
        return upstream

    def _feedback_points(self):
        """The DFA feedback points as ``(owner, run)``: ``run`` is the owner (a weight layer, or a
        top-level residual under "block") and the batchnorm/activation/dropout items directly
        following it in its list; the point is at the run's output."""
        points = []

        def run_of(items, i):
            run = [items[i]]
            for item in items[i + 1:]:
                if item.kind not in RUN_LAYERS:
                    break
                run.append(item)
            return run

        def visit(items):  # each list on its own: a residual's main and shortcut are separate lists
            for i, layer in enumerate(items):
                if layer.kind == "residual" and self.feedback_points == "block":
                    points.append((layer, run_of(items, i)))  # only top-level blocks: we never go inside one
                elif layer.kind == "residual":
                    visit(layer.main)
                    if isinstance(layer.shortcut, list):
                        visit(layer.shortcut)
                elif layer.is_weight and layer is not self.last:
                    points.append((layer, run_of(items, i)))

        visit(self.layers)
        return points

    def named_layers(self):
        """``(path, layer)`` for every layer, depth-first, a residual before its main path and its
        main path before its shortcut (PyTorch's named_modules order)."""
        return [(layer.path, layer) for layer in _walk(self.layers)]

    def layer(self, path):
        """The layer at ``path`` (e.g. ``"3.main.0"``)."""
        for p, layer in self.named_layers():
            if p == path:
                return layer
        raise KeyError(f"no layer {path!r}; the paths are {[p for p, _ in self.named_layers()]}")

    def named_arrays(self):
        """``(path, name, array)`` for every array a layer holds (W, b, B, gamma, beta,
        running_mean, running_var, in that order per layer), in :meth:`named_layers` order."""
        return [(path, name, getattr(layer, name)) for path, layer in self.named_layers()
                for name in ARRAY_NAMES if getattr(layer, name) is not None]

    def feedback_shapes(self):
        """``{path: shape}`` of every B the rule needs (layers without one are left out)."""
        shapes = {}
        if self.rule in FA_STYLE:
            for layer in _walk(self.layers):
                if layer.is_weight and self._fa_feedback[layer.path]:
                    shapes[layer.path] = (layer.n_out, layer.n_in) if layer.kind == "dense" else layer.W_shape
        elif self.rule in DFA_STYLE:
            for owner, run in self.points:
                shapes[owner.path] = (self.n_outputs, int(np.prod(run[-1].out_shape)))
        return shapes

    def __repr__(self):
        body = "\n".join(f"  {layer.describe()}" for layer in _walk(self.layers))
        points = f", feedback_points={self.feedback_points!r}" if self.feedback_points else ""
        return (f"ReferenceNet(rule={self.rule!r}, loss={self.loss_name!r}{points}, input {self.input_shape}, "
                f"{'train' if self.training else 'eval'} mode)\n{body}")

    def train(self):
        """Training mode: batch statistics, dropout masks. Returns self."""
        self.training = True
        return self

    def eval(self):
        """Evaluation mode: running statistics, no dropout. Returns self."""
        self.training = False
        return self

    def init_random(self, rng, bias_std=0.1, affine_std=0.0):
        """Per layer in :meth:`named_layers` order: W ~ N(0, 1/fan_in), b ~ N(0, bias_std^2), B ~
        N(0, 1/fan) (fan: the size it multiplies, as in ReferenceChain.init_random), and for
        batchnorm gamma = 1 + N(0, affine_std^2), beta ~ N(0, affine_std^2) (affine_std=0 keeps
        PyTorch's 1 and 0), drawn from the NumPy Generator ``rng``. Running statistics are left
        alone. Returns self."""
        dt = self.dtype
        for layer in _walk(self.layers):
            if layer.is_weight:
                fan_in = int(np.prod(layer.W_shape[1:])) if layer.kind == "conv" else layer.n_in
                layer.W = rng.normal(0, fan_in ** -0.5, layer.W_shape).astype(dt)
                if layer.has_bias:
                    layer.b = rng.normal(0, bias_std, layer.b.shape).astype(dt)
            if layer.B is not None:
                shape = layer.B.shape
                fan = shape[0] if len(shape) == 2 else int(np.prod(shape)) // shape[1]
                layer.B = rng.normal(0, fan ** -0.5, shape).astype(dt)
            if layer.kind == "batchnorm" and affine_std > 0:
                layer.gamma = (1 + rng.normal(0, affine_std, layer.c)).astype(dt)
                layer.beta = rng.normal(0, affine_std, layer.c).astype(dt)
        return self

    # -- checks -------------------------------------------------------------------

    def _expected_arrays(self, layer, B_shapes):
        """{name: shape or None} for the seven array attributes of a layer (``B_shapes``: the
        network's feedback_shapes())."""
        shapes = dict.fromkeys(ARRAY_NAMES)
        if layer.is_weight:
            shapes["W"] = layer.W_shape
            shapes["b"] = layer.out_shape[:1] if layer.has_bias else None
        if layer.kind == "batchnorm":
            for name in ("gamma", "beta", "running_mean", "running_var"):
                shapes[name] = (layer.c,)
        shapes["B"] = B_shapes.get(layer.path)
        return shapes

    def _check_parameters(self):
        """Every array must still have the shape and dtype the network was built with."""
        B_shapes = self.feedback_shapes()
        for path, layer in self.named_layers():
            for name, shape in self._expected_arrays(layer, B_shapes).items():
                arr = getattr(layer, name)
                if shape is None:
                    if arr is not None:
                        raise ValueError(f"{layer.where}: {name} must be None (the layer has no {name} under "
                                         f"rule {self.rule!r})")
                elif not isinstance(arr, np.ndarray) or arr.shape != tuple(shape) or arr.dtype != self.dtype:
                    got = (arr.shape, arr.dtype) if isinstance(arr, np.ndarray) else type(arr).__name__
                    raise ValueError(f"{layer.where}: {name} must be a {self.dtype} array of shape {tuple(shape)}, "
                                     f"got {got}")

    def _as_input(self, X):
        X = np.asarray(X, dtype=self.dtype)
        if X.shape[1:] != self.input_shape or X.shape[0] == 0:
            raise ValueError(f"X must have shape (m, {', '.join(map(str, self.input_shape))}) with m >= 1, "
                             f"got {X.shape}")
        return X

    def _check_batch(self, m, masks, training):
        """Before any work: batch norm needs n > 1 values per channel in training mode, and every
        dropout layer with p > 0 its mask (m, *shape) of 0 and 1/(1-p). Returns the masks by path."""
        masks = {} if masks is None else dict(masks)
        dropouts = {path: layer for path, layer in self.named_layers() if layer.kind == "dropout"}
        unknown = sorted(set(masks) - set(dropouts))
        if unknown:
            raise ValueError(f"masks for {unknown}, which are not dropout layers (those are {sorted(dropouts)})")
        if not training:
            return {}
        for path, layer in self.named_layers():
            if layer.kind == "batchnorm":
                n = m * int(np.prod(layer.in_shape[1:]))
                if n < 2:
                    raise ValueError(f"{layer.where}: expected more than 1 value per channel in training mode, "
                                     f"got input shape {(m,) + layer.in_shape} (PyTorch refuses it too)")
        checked = {}
        for path, layer in dropouts.items():
            if path not in masks:
                if layer.p > 0:
                    raise ValueError(f"{layer.where}: training mode needs masks[{path!r}], an array of shape "
                                     f"{(m,) + layer.in_shape} of 0 and 1/(1-p) = {1 / (1 - layer.p):g}")
                checked[path] = np.ones((m,) + layer.in_shape, self.dtype)
                continue
            mask = np.asarray(masks[path], dtype=np.float64)
            if mask.shape != (m,) + layer.in_shape:
                raise ValueError(f"{layer.where}: masks[{path!r}] must have shape {(m,) + layer.in_shape}, "
                                 f"got {mask.shape}")
            keep = 1 / (1 - layer.p)
            if not np.all((mask == 0) | np.isclose(mask, keep, rtol=1e-6, atol=0)):
                raise ValueError(f"{layer.where}: masks[{path!r}] may hold only 0 and 1/(1-p) = {keep:g}")
            checked[path] = mask.astype(self.dtype)
        return checked

    def _prepare(self, X, y, masks, training):
        self._check_parameters()
        X = self._as_input(X)
        y = None if y is None else _as_target(self.loss_name, y, X.shape[0], self.n_outputs, self.dtype)
        return X, y, self._check_batch(X.shape[0], masks, training)

    # -- forward ------------------------------------------------------------------

    def _forward_list(self, layers, h, run):
        for layer in layers:
            h = self._forward_layer(layer, h, run)
        return h

    def _forward_layer(self, layer, x, run):
        kind, saved = layer.kind, {"x": x}
        run.saved[layer.path] = saved
        if kind == "conv":
            a = conv2d(x, layer.W, layer.b, layer.stride, layer.pad)
            out = _activate(layer.act, a)
            saved["a"] = a
        elif kind == "dense":
            a = x @ layer.W
            if layer.b is not None:
                a = a + layer.b
            out = _activate(layer.act, a)
            saved["a"] = a
        elif kind in ACTIVATIONS:
            out = _activate(kind, x)
        elif kind == "maxpool":
            out, saved["first"] = max_pool2d(x, layer.k, layer.stride)
        elif kind == "meanpool":
            out = mean_pool2d(x, layer.k, layer.stride)
        elif kind == "flatten":
            out = x.reshape(x.shape[0], -1)
        elif kind == "gap":
            out = global_avg_pool(x)
        elif kind == "batchnorm":
            if run.training:
                mean, var, n = batch_statistics(x)
                run.batch[layer.path] = (mean, var, n)
            else:
                mean, var = layer.running_mean, layer.running_var
            out, saved["xhat"], saved["std"] = batch_norm(x, layer.gamma, layer.beta, mean, var)
        elif kind == "dropout":
            out = x * run.masks[layer.path] if run.training else x
        else:  # residual
            main = self._forward_list(layer.main, x, run)
            if layer.shortcut is None:
                short = x
            elif layer.shortcut == "pad":
                short = option_a_shortcut(x, layer.out_shape[0], layer.pad_stride)
            else:
                short = self._forward_list(layer.shortcut, x, run)
            out = main + short
        saved["out"] = out
        return out

    def _run_forward(self, X, masks, training):
        run = _Pass(training, masks)
        z = self._forward_list(self.layers, X, run)
        return run, z

    def forward(self, X, masks=None):
        """The logits z (m, n_outputs) in the current mode (training mode needs the dropout masks)."""
        X, _, masks = self._prepare(X, None, masks, self.training)
        return self._run_forward(X, masks, self.training)[1]

    def outputs(self, X, masks=None):
        """``{path: output}`` of every layer on the batch X, in the current mode."""
        X, _, masks = self._prepare(X, None, masks, self.training)
        run = self._run_forward(X, masks, self.training)[0]
        return {path: run.saved[path]["out"] for path, _ in self.named_layers()}

    def loss(self, X, y, masks=None):
        """The mean loss over the batch (X, y) in the current mode, as a Python float."""
        X, y, masks = self._prepare(X, y, masks, self.training)
        z = self._run_forward(X, masks, self.training)[1]
        return _loss_and_error(self.loss_name, z, y, self.dtype)[0]

    # -- backward -----------------------------------------------------------------

    def _feedback(self, layer):
        """What an FA-style weight layer carries its delta back through: B, or for the
        sign-symmetric rules |B| with the current signs of W (dense: W.T). None without a B."""
        if layer.B is None:
            return None
        if self.rule in SIGN_SYMMETRIC:
            W = layer.W.T if layer.kind == "dense" else layer.W
            return np.copysign(np.abs(layer.B), W)
        return layer.B

    def _backward_list(self, layers, g, run, exact, to_input=False):
        """Carry the error ``g`` at a list's output back to its input, layer by layer; None once a
        weight layer without B (FA style) stops it (no trainable layer lies further back), unless
        ``to_input``: then such a layer carries it with its W."""
        for layer in reversed(layers):
            g = self._backward_layer(layer, g, run, exact, to_input)
            if g is None:
                return None
        return g

    def _backward_layer(self, layer, g, run, exact, to_input=False):
        """The error at the layer's input given the error ``g`` at its output, recording the layer's
        parameter gradients. ``exact``: weight layers carry back with W (bp, DFA runs); otherwise
        with their feedback (FA style)."""
        run.errors[layer.path] = g
        kind, saved = layer.kind, run.saved[layer.path]
        x = saved["x"]
        if kind in WEIGHT_LAYERS:
            delta = g * _derivative(layer.act, saved["a"], saved["out"])
            if kind == "dense":
                dW, db = x.T @ delta, delta.sum(axis=0)
            else:
                dW = conv2d_weight_gradient(x, delta, layer.k, layer.stride, layer.pad)
                db = delta.sum(axis=(0, 2, 3))
            run.grads[layer.path] = (dW, db if layer.has_bias else None)
            F = layer.W if exact else self._feedback(layer)
            if F is None and to_input:
                F, exact = layer.W, True
            if F is None:
                return None
            if kind == "dense":
                return delta @ (F.T if exact else F)
            return conv2d_transpose(delta, F, layer.stride, layer.pad, layer.in_shape[1:])
        if kind in ACTIVATIONS:
            return g * _derivative(kind, x, saved["out"])
        if kind == "maxpool":
            return max_pool2d_backward(g, saved["first"], layer.k, layer.stride, layer.in_shape[1:])
        if kind == "meanpool":
            return mean_pool2d_backward(g, layer.k, layer.stride, layer.in_shape[1:])
        if kind == "flatten":
            return g.reshape((g.shape[0],) + layer.in_shape)
        if kind == "gap":
            return global_avg_pool_backward(g, layer.in_shape[1:])
        if kind == "batchnorm":
            dx, dgamma, dbeta = batch_norm_backward(g, saved["xhat"], layer.gamma, saved["std"], run.training)
            run.grads[layer.path] = (dgamma, dbeta)
            return dx
        if kind == "dropout":
            return g * run.masks[layer.path] if run.training else g
        # residual: the output's error goes down both paths; the input's error is their sum.
        g_main = self._backward_list(layer.main, g, run, exact, to_input)
        if layer.shortcut is None:
            g_short = g
        elif layer.shortcut == "pad":
            g_short = option_a_shortcut_backward(g, layer.in_shape[0], layer.pad_stride, layer.in_shape[1:])
        else:
            g_short = self._backward_list(layer.shortcut, g, run, exact, to_input)
        return None if g_main is None or g_short is None else g_main + g_short

    def _output_signal(self, e, y):
        """What a DFA-style rule projects to its feedback points: e (dfa), sign(e)/m (sdfa),
        -onehot(y)/m (drtp)."""
        m = e.shape[0]
        if self.rule == "dfa":
            return e
        if self.rule == "sdfa":
            return np.sign(e) / m
        return -np.eye(self.n_outputs, dtype=self.dtype)[y] / m

    def _backward(self, X, y, masks, training):
        """Forward and backward on one batch: ``(loss, run, input_error)``."""
        run, z = self._run_forward(X, masks, training)
        loss, e = _loss_and_error(self.loss_name, z, y, self.dtype)
        input_error = None
        if self.rule == "bp":
            input_error = self._backward_list(self.layers, e, run, exact=True)
        elif self.rule in FA_STYLE:
            input_error = self._backward_list(self.layers, e, run, exact=False)
        elif self.rule == "shallow":
            self._backward_layer(self.last, e, run, exact=True)
        else:  # DFA style: the last layer learns from e, each point from the projected signal
            self._backward_layer(self.last, e, run, exact=True)
            s = self._output_signal(e, y)
            for owner, layers in self.points:
                g = (s @ owner.B).reshape((X.shape[0],) + layers[-1].out_shape)
                self._backward_list(layers, g, run, exact=True)   # what reaches the owner's input stops there
        return loss, run, input_error

    def _gradient_dict(self, run):
        grads = {}
        for path, layer in self.named_layers():
            if path in run.grads:
                grads[path] = run.grads[path]
            elif layer.is_weight:  # no signal reached it: zero gradients
                grads[path] = (np.zeros_like(layer.W), None if layer.b is None else np.zeros_like(layer.b))
            elif layer.kind == "batchnorm":
                grads[path] = (np.zeros_like(layer.gamma), np.zeros_like(layer.beta))
            else:
                grads[path] = (None, None)
        return grads

    def gradients(self, X, y, masks=None):
        """``{path: grads}`` for every layer in :meth:`named_layers` order, in the current mode:
        weight layers ``(dW, db)`` (db None without bias), batchnorm ``(dgamma, dbeta)``, every
        other layer ``(None, None)``. Nothing changes (running statistics included)."""
        X, y, masks = self._prepare(X, y, masks, self.training)
        return self._gradient_dict(self._backward(X, y, masks, self.training)[1])

    def output_errors(self, X, y, masks=None):
        """``{path: error}``: the error that reached each layer's output under the rule (None where
        none did), in the current mode."""
        X, y, masks = self._prepare(X, y, masks, self.training)
        run = self._backward(X, y, masks, self.training)[1]
        return {path: run.errors.get(path) for path, _ in self.named_layers()}

    def input_error(self, X, y, masks=None):
        """The error the rule carries back to the network input (bp: dL/dX exactly; FA style: with
        each B in its W's place, None when the first weight layers have no B; None for the DFA-style
        rules and shallow), in the current mode."""
        X, y, masks = self._prepare(X, y, masks, self.training)
        return self._backward(X, y, masks, self.training)[2]

    def input_gradient(self, X, y, through="weights"):
        """dL/dX of the mean loss over (X, y), shape of X, in evaluation mode (running statistics,
        no dropout) whatever the mode.

        ``through="weights"``: backprop to the input, with every W. ``through="feedback"``: what the
        rule carries back, continued to the input: bp as "weights"; FA style with each B (sign-
        symmetric: |B| with W's signs) in its W's place, a weight layer without B with its W;
        DFA style: the signal projected to the feedback point of the network's first trainable
        top-level item, carried back exactly through its run (W for the weight layer) and through
        the parameterless layers before it; shallow: zeros (no error leaves the last layer)."""
        if through not in ("weights", "feedback"):
            raise ValueError(f"through must be 'weights' or 'feedback', got {through!r}")
        X, y, masks = self._prepare(X, y, None, False)
        run, z = self._run_forward(X, masks, False)
        _, e = _loss_and_error(self.loss_name, z, y, self.dtype)
        if through == "weights" or self.rule == "bp":
            return self._backward_list(self.layers, e, run, exact=True)
        if self.rule in FA_STYLE:
            return self._backward_list(self.layers, e, run, exact=False, to_input=True)
        if self.rule == "shallow":
            return np.zeros_like(X)
        first = next(k for k, item in enumerate(self.layers) if any(l.trainable for l in _walk([item])))
        for owner, layers in self.points:
            if layers[0] is self.layers[first]:
                g = (self._output_signal(e, y) @ owner.B).reshape((X.shape[0],) + layers[-1].out_shape)
                g = self._backward_list(layers, g, run, exact=True)
                return self._backward_list(self.layers[:first], g, run, exact=True)
        raise ValueError(f"no feedback point at the first trainable layer, {self.layers[first].where}")

    # -- training -----------------------------------------------------------------

    def _check_mirror_noise(self, noise, lead):
        """``noise`` as ``{path: array}`` for exactly the weight layers with a B, each of shape
        ``lead + (batchsize,) + input shape``."""
        noise = dict(noise)
        wanted = [p for p, l in self.named_layers() if l.is_weight and l.B is not None]
        if sorted(noise) != sorted(wanted):
            raise ValueError(f"mirror noise needs one entry per layer with a B, {wanted}; got {sorted(noise)}")
        checked = {}
        for path in wanted:
            layer = self.layer(path)
            x = np.asarray(noise[path], dtype=self.dtype)
            if x.ndim != len(lead) + 1 + len(layer.in_shape) or x.shape[len(lead) + 1:] != layer.in_shape \
                    or min(x.shape[:len(lead) + 1]) < 1:
                want = ("steps",) * len(lead) + ("batchsize",) + layer.in_shape
                raise ValueError(f"{layer.where}: mirror noise must have shape {want}, got {x.shape}")
            checked[path] = x
        return checked

    def mirror(self, noise, lr=0.01, decay=1.0):
        """One weight-mirror step on every weight layer with a B (``noise``: ``{path: x}``, x a
        batch of the layer's input shape), as ReferenceChain.mirror: y = (layer without bias)(x),
        dense ``B += lr * (y.T @ x / mb - decay * B)``, conv
        ``B += lr * (conv2d_weight_gradient(x, y) / (mb * oh * ow) - decay * B)``."""
        noise = self._check_mirror_noise(noise, ())
        lr, decay = float(lr), float(decay)
        for path, x in noise.items():
            layer, mb = self.layer(path), x.shape[0]
            if layer.kind == "dense":
                y = x @ layer.W
                layer.B += lr * (y.T @ x / mb - decay * layer.B)
            else:
                y = conv2d(x, layer.W, None, layer.stride, layer.pad)
                oh, ow = layer.out_shape[1:]
                layer.B += lr * (conv2d_weight_gradient(x, y, layer.k, layer.stride, layer.pad) / (mb * oh * ow)
                                 - decay * layer.B)

    def _sgd(self, layer, name, grad, lr, momentum, weight_decay):
        """PyTorch's SGD on one array: ``v = momentum * v + (grad + weight_decay * p); p -= lr * v``."""
        p = getattr(layer, name)
        key = (layer.path, name)
        self._velocity[key] = momentum * self._velocity.get(key, 0) + (grad + weight_decay * p)
        p -= lr * self._velocity[key]

    def step(self, X, y, lr, momentum=0.0, weight_decay=0.0, masks=None, mirror_noise=None, mirror_lr=0.01,
             mirror_decay=1.0):
        """One SGD(-with-momentum) update on the batch (X, y) with a training-mode forward pass
        (whatever the mode; the mode is left as it was); returns the loss before it.

        Per array (every weight layer and batchnorm; only the last layer under ``"shallow"``):
        ``v = momentum * v + (grad + wd * p); p -= lr * v`` with ``wd = weight_decay`` for conv and
        dense W and 0 for b, gamma and beta. ``"kp"``: each B likewise with grad dW.T (dense) or dW
        (conv) and ``wd * B``. Then each batchnorm's running statistics take the batch's:
        ``running_mean = 0.9 * running_mean + 0.1 * mean``, ``running_var = 0.9 * running_var +
        0.1 * var * n / (n - 1)``. Sign-symmetric rules set B = |B| with W's new signs (W.T for
        dense); ``"wm"`` then makes ``steps`` mirror steps with ``mirror_noise`` (``{path: array
        (steps, batchsize, *input shape)}`` for every weight layer with a B).
        """
        X, y, masks = self._prepare(X, y, masks, True)
        lr, momentum, weight_decay = float(lr), float(momentum), float(weight_decay)
        steps = 0
        if self.rule == "wm":  # checked before anything changes
            if mirror_noise is None:
                raise ValueError("rule 'wm' needs mirror_noise: {path: (steps, batchsize, *input shape)} for every "
                                 "weight layer with a B")
            mirror_noise = self._check_mirror_noise(mirror_noise, (1,))
            counts = {len(x) for x in mirror_noise.values()}
            if len(counts) > 1:
                raise ValueError(f"every mirror_noise entry needs the same number of steps, got {sorted(counts)}")
            steps = counts.pop() if counts else 0
        loss, run, _ = self._backward(X, y, masks, training=True)
        grads = self._gradient_dict(run)
        for path, layer in self.named_layers():
            if self.rule == "shallow" and layer is not self.last:
                continue
            if layer.is_weight:
                dW, db = grads[path]
                self._sgd(layer, "W", dW, lr, momentum, weight_decay)
                if layer.b is not None:
                    self._sgd(layer, "b", db, lr, momentum, 0.0)
                if self.rule == "kp" and layer.B is not None:  # Kolen-Pollack: B gets W's update
                    self._sgd(layer, "B", dW.T if layer.kind == "dense" else dW, lr, momentum, weight_decay)
            elif layer.kind == "batchnorm":
                dgamma, dbeta = grads[path]
                self._sgd(layer, "gamma", dgamma, lr, momentum, 0.0)
                self._sgd(layer, "beta", dbeta, lr, momentum, 0.0)
        for path, (mean, var, n) in run.batch.items():
            layer = self.layer(path)
            layer.running_mean[...] = (1 - BN_MOMENTUM) * layer.running_mean + BN_MOMENTUM * mean
            layer.running_var[...] = (1 - BN_MOMENTUM) * layer.running_var + BN_MOMENTUM * var * (n / (n - 1))
        if self.rule in SIGN_SYMMETRIC:  # B follows W's new signs
            for _, layer in self.named_layers():
                if layer.is_weight and layer.B is not None:
                    layer.B = self._feedback(layer).astype(self.dtype, copy=False)
        for s in range(steps):
            self.mirror({path: x[s] for path, x in mirror_noise.items()}, mirror_lr, mirror_decay)
        return loss
