"""Plain NumPy reference implementation of pyjlfa's training math.

This module exists for two reasons only:

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
"""

import numpy as np

__all__ = [
    "ACTIVATIONS",
    "RULES",
    "LOSSES",
    "feedback_shapes",
    "ReferenceNetwork",
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
        n_out = self.sizes[-1]
        if self.loss_name == "cross_entropy":
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
        y = np.asarray(y, dtype=self.dtype)
        if y.shape != (m, n_out):
            raise ValueError(f"y must have shape {(m, n_out)}, got {y.shape}")
        return y

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
        m = z.shape[0]
        if self.loss_name == "cross_entropy":
            log_p = _log_softmax(z)
            loss = -log_p[np.arange(m), y].mean()
            onehot = np.zeros_like(z)
            onehot[np.arange(m), y] = 1
            e = (np.exp(log_p) - onehot) / m
        else:  # mse
            diff = z - y
            loss = (0.5 * (diff * diff).sum(axis=1)).mean()
            e = diff / m
        return float(loss), e.astype(self.dtype, copy=False)

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
