"""Tests of the NumPy reference for layer chains (tests/reference.py: ReferenceChain and its conv and
pooling functions), against finite differences, explicit loops, hand calculations and the dense
ReferenceNetwork. Like tests/test_reference.py, the oracle is imported as a plain module from the
tests folder."""

import math

import numpy as np
import pytest

import reference as ref

ReferenceChain = ref.ReferenceChain
ReferenceNetwork = ref.ReferenceNetwork
FA_STYLE = ("fa", "usf", "frsf", "brsf", "kp", "wm")

# conv k3 pad1 stride1 -> maxpool 2 -> conv k3 stride 2 pad 1 -> meanpool -> flatten -> dense -> dense,
# with a non-square first kernel, leftover rows under the pools and an overlapping mean pool.
SMALL_INPUT = (2, 10, 10)
SMALL_CHAIN = [
    ("conv", dict(cin=2, cout=3, k=(3, 2), stride=(1, 1), pad=(1, 0), act="tanh")),   # -> (3, 10, 9)
    ("maxpool", dict(k=(2, 2), stride=(2, 2))),                                        # -> (3, 5, 4)
    ("conv", dict(cin=3, cout=2, k=(3, 3), stride=(2, 2), pad=(1, 1), act="leaky_relu")),  # -> (2, 3, 2)
    ("meanpool", dict(k=(2, 2), stride=(1, 1))),                                       # -> (2, 2, 1)
    ("flatten", {}),                                                                   # -> (4,)
    ("dense", dict(n_in=4, n_out=5, act="sigmoid")),
    ("dense", dict(n_in=5, n_out=3, act="identity")),
]


def small_chain(rule, loss="cross_entropy", seed=0):
    return ReferenceChain(SMALL_CHAIN, SMALL_INPUT, rule, loss=loss).init_random(np.random.default_rng(seed))


def targets(loss, m, n_out, rng):
    return rng.integers(0, n_out, m) if loss == "cross_entropy" else rng.normal(0, 1, (m, n_out))


def assert_grads_close(got, expected, **tol):
    assert len(got) == len(expected)
    for i, ((dW, db), (eW, eb)) in enumerate(zip(got, expected)):
        if eW is None:
            assert dW is None and db is None
            continue
        np.testing.assert_allclose(dW, eW, err_msg=f"dW[{i}]", **tol)
        np.testing.assert_allclose(db, eb, err_msg=f"db[{i}]", **tol)


def conv_by_loops(x, W, b, stride, pad):
    """PyTorch's conv2d written out pixel by pixel."""
    (sh, sw), (ph, pw) = stride, pad
    m, cin, H, Wd = x.shape
    cout, _, kh, kw = W.shape
    xpad = np.zeros((m, cin, H + 2 * ph, Wd + 2 * pw))
    xpad[:, :, ph:ph + H, pw:pw + Wd] = x
    oh, ow = (H + 2 * ph - kh) // sh + 1, (Wd + 2 * pw - kw) // sw + 1
    out = np.zeros((m, cout, oh, ow))
    for n in range(m):
        for o in range(cout):
            for y in range(oh):
                for xx in range(ow):
                    out[n, o, y, xx] = b[o] + np.sum(xpad[n, :, y * sh:y * sh + kh, xx * sw:xx * sw + kw] * W[o])
    return out, xpad


# ---------------------------------------------------------------------------
# Convolution and pooling on their own
# ---------------------------------------------------------------------------

def test_conv_by_hand():
    # W = [[1, 0], [0, -1]] computes x[y, x] - x[y+1, x+1]: -4 everywhere on 1..9 (plus the bias).
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    W = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])
    np.testing.assert_array_equal(ref.conv2d(x, W, np.array([0.5])), [[[[-3.5, -3.5], [-3.5, -3.5]]]])
    # Padding 1 and stride 2: windows at padded rows/cols 0 and 2, i.e. pixel pairs
    # (pad, x[0,0]) (pad, x[0,2]) / (x[1,0]... ): out[y, x] = xpad[2y, 2x] - xpad[2y+1, 2x+1].
    out = ref.conv2d(x, W, None, stride=(2, 2), pad=(1, 1))
    np.testing.assert_array_equal(out, [[[[0 - 1, 0 - 3], [0 - 7, 5 - 9]]]])


@pytest.mark.parametrize("stride,pad,kernel", [((1, 1), (0, 0), (3, 3)), ((2, 1), (1, 2), (3, 2)),
                                               ((2, 3), (2, 0), (1, 4)), ((3, 3), (1, 1), (5, 5))])
def test_conv_forward_and_weight_gradient_match_loops(stride, pad, kernel):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 7, 8))
    W = rng.normal(size=(4, 3) + kernel)
    b = rng.normal(size=4)
    expected, xpad = conv_by_loops(x, W, b, stride, pad)
    out = ref.conv2d(x, W, b, stride, pad)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    # dW[o, c, i, j] = sum_{n,y,x} delta[n, o, y, x] * xpad[n, c, y*sh + i, x*sw + j], by loops.
    delta = rng.normal(size=out.shape)
    (sh, sw), (kh, kw) = stride, kernel
    dW = np.zeros_like(W)
    for n, o, y, xx in np.ndindex(delta.shape):
        dW[o] += delta[n, o, y, xx] * xpad[n, :, y * sh:y * sh + kh, xx * sw:xx * sw + kw]
    np.testing.assert_allclose(ref.conv2d_weight_gradient(x, delta, kernel, stride, pad), dW, rtol=1e-12, atol=1e-12)


def test_conv_forward_matches_scipy():
    signal = pytest.importorskip("scipy.signal")
    rng = np.random.default_rng(2)
    x, W = rng.normal(size=(2, 3, 9, 7)), rng.normal(size=(2, 3, 3, 4))
    out = ref.conv2d(x, W, None, stride=(2, 1), pad=(1, 1))
    for n in range(2):
        for o in range(2):
            full = sum(signal.correlate2d(np.pad(x[n, c], 1), W[o, c], mode="valid") for c in range(3))
            np.testing.assert_allclose(out[n, o], full[::2, :], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride,pad,kernel,size", [((1, 1), (1, 1), (3, 3), (6, 6)), ((2, 2), (1, 1), (3, 3), (7, 6)),
                                                    ((2, 3), (0, 2), (2, 3), (9, 8)), ((1, 2), (2, 0), (5, 1), (5, 5))])
def test_transposed_conv_is_the_adjoint_of_conv(stride, pad, kernel, size):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3) + size)
    W = rng.normal(size=(4, 3) + kernel)
    y = rng.normal(size=ref.conv2d(x, W, None, stride, pad).shape)
    xT = ref.conv2d_transpose(y, W, stride, pad, size)
    assert xT.shape == x.shape
    lhs = np.sum(ref.conv2d(x, W, None, stride, pad) * y)
    rhs = np.sum(x * xT)
    assert math.isclose(lhs, rhs, rel_tol=1e-12), (lhs, rhs)


def test_max_pool_by_hand_first_maximum_in_row_major_order():
    # Windows 2x2, stride 2. Top-left [[1, 3], [3, 0]]: the first 3 in row-major order is (0, 1)
    # (column-major order would pick (1, 0)); top-right all ties but one: (0, 2); bottom-left
    # [[0, 5], [5, 1]]: (2, 1); bottom-right all 4: (2, 2).
    x = np.array([[1, 3, 2, 2],
                  [3, 0, 2, 1],
                  [0, 5, 4, 4],
                  [5, 1, 4, 4]], dtype=float).reshape(1, 1, 4, 4)
    out, first = ref.max_pool2d(x, (2, 2), (2, 2))
    np.testing.assert_array_equal(out, [[[[3, 2], [5, 4]]]])
    g = np.array([[10.0, 20.0], [30.0, 40.0]]).reshape(1, 1, 2, 2)
    expected = np.zeros((4, 4))
    expected[0, 1], expected[0, 2], expected[2, 1], expected[2, 2] = 10, 20, 30, 40
    np.testing.assert_array_equal(ref.max_pool2d_backward(g, first, (2, 2), (2, 2), (4, 4))[0, 0], expected)


def test_max_pool_overlapping_windows_accumulate():
    # Windows 2x2, stride 1 on 3x3: (0,0) -> 4 at (0,0); (0,1) -> 5 at (1,2); (1,0) -> 3 at (1,1);
    # (1,1) -> 5 at (1,2) again, so (1,2) collects 2 + 4.
    x = np.array([[4, 2, 0], [0, 3, 5], [2, 1, 0]], dtype=float).reshape(1, 1, 3, 3)
    out, first = ref.max_pool2d(x, (2, 2), (1, 1))
    np.testing.assert_array_equal(out, [[[[4, 5], [3, 5]]]])
    g = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    np.testing.assert_array_equal(ref.max_pool2d_backward(g, first, (2, 2), (1, 1), (3, 3))[0, 0],
                                  [[1, 0, 0], [0, 3, 6], [0, 0, 0]])


def test_max_pool_non_square_windows_channels_and_leftovers():
    # Windows 1x3, stride (1, 2) on a 2x6 map: columns 0-2 and 2-4 (column 5 is never read).
    x = np.array([[1, 7, 7, 2, 0, 9], [6, 6, 1, 8, 3, 9]], dtype=float)
    X = np.stack([x, -x])[None]  # one sample, two channels
    out, first = ref.max_pool2d(X, (1, 3), (1, 2))
    np.testing.assert_array_equal(out[0, 0], [[7, 7], [6, 8]])
    np.testing.assert_array_equal(out[0, 1], [[-1, 0], [-1, -1]])
    g = np.ones((1, 2, 2, 2))
    back = ref.max_pool2d_backward(g, first, (1, 3), (1, 2), (2, 6))
    np.testing.assert_array_equal(back[0, 0], [[0, 1, 1, 0, 0, 0], [1, 0, 0, 1, 0, 0]])
    np.testing.assert_array_equal(back[0, 1], [[1, 0, 0, 0, 1, 0], [0, 0, 2, 0, 0, 0]])


def test_mean_pool_by_hand():
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    np.testing.assert_array_equal(ref.mean_pool2d(x, (2, 2), (1, 1)), [[[[2, 3], [5, 6]]]])
    g = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    np.testing.assert_allclose(ref.mean_pool2d_backward(g, (2, 2), (1, 1), (3, 3))[0, 0],
                               np.array([[1, 3, 2], [4, 10, 6], [3, 7, 4]]) / 4, rtol=1e-15)
    # Non-overlapping, leftover row and column ignored.
    x = np.arange(20.0).reshape(1, 1, 4, 5)
    np.testing.assert_array_equal(ref.mean_pool2d(x, (2, 2), (2, 2)), [[[[3, 5], [13, 15]]]])


@pytest.mark.parametrize("k,stride,size", [((2, 2), (2, 2), (5, 7)), ((3, 2), (1, 2), (6, 5)), ((2, 3), (2, 1), (4, 4))])
def test_pool_backward_is_the_adjoint_of_the_local_linear_map(k, stride, size):
    # Mean pooling is linear; max pooling is linear for a fixed choice of maxima.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 3) + size)
    out = ref.mean_pool2d(x, k, stride)
    g = rng.normal(size=out.shape)
    assert math.isclose(np.sum(out * g), np.sum(x * ref.mean_pool2d_backward(g, k, stride, size)), rel_tol=1e-12)
    out, first = ref.max_pool2d(x, k, stride)
    assert math.isclose(np.sum(out * g), np.sum(x * ref.max_pool2d_backward(g, first, k, stride, size)), rel_tol=1e-12)


# ---------------------------------------------------------------------------
# The chain: shapes, construction, validation
# ---------------------------------------------------------------------------

def test_chain_shapes_and_feedback_shapes():
    chain = ReferenceChain(SMALL_CHAIN, SMALL_INPUT, "fa")
    assert chain.out_shapes == [(3, 10, 9), (3, 5, 4), (2, 3, 2), (2, 2, 1), (4,), (5,), (3,)]
    assert chain.parametric == [0, 2, 5, 6]
    assert [None if W is None else W.shape for W in chain.W] == [(3, 2, 3, 2), None, (2, 3, 3, 3), None, None,
                                                                  (4, 5), (5, 3)]
    assert [None if b is None else b.shape for b in chain.b] == [(3,), None, (2,), None, None, (5,), (3,)]
    assert chain.feedback_shapes() == [None, None, (2, 3, 3, 3), None, None, (5, 4), (3, 5)]
    assert ReferenceChain(SMALL_CHAIN, SMALL_INPUT, "sdfa").feedback_shapes() == [
        (3, 270), None, (3, 12), None, None, (3, 5), None]
    for rule in ("bp", "shallow"):
        assert ReferenceChain(SMALL_CHAIN, SMALL_INPUT, rule).feedback_shapes() == [None] * 7
    assert [B is None for B in ReferenceChain(SMALL_CHAIN, SMALL_INPUT, "kp").B] == [
        True, True, False, True, True, False, False]


@pytest.mark.parametrize("layers,input_shape,kwargs,match", [
    ([("pool", dict(k=2)), ("dense", dict(n_in=4, n_out=2))], (1, 4, 4), {}, "unknown layer kind"),
    ([("conv", dict(cin=1, cout=2, k=3)), ("dense", dict(n_in=8, n_out=2))], (1, 4, 4), {}, r"add \('flatten'"),
    ([("conv", dict(cin=2, cout=2, k=3)), "flatten", ("dense", dict(n_in=8, n_out=2))], (1, 4, 4), {},
     "cin=2 but its input has 1 channels"),
    ([("conv", dict(cin=1, cout=2, k=5)), "flatten", ("dense", dict(n_in=8, n_out=2))], (1, 4, 4), {}, "does not fit"),
    ([("conv", dict(cin=1, cout=2, k=3, padding=1)), "flatten", ("dense", dict(n_in=8, n_out=2))], (1, 4, 4), {},
     r"unknown options \['padding'\]"),
    (["flatten", ("dense", dict(n_in=16, n_out=2, act="tanh"))], (1, 4, 4), {}, "must be dense with act='identity'"),
    (["flatten", ("dense", dict(n_in=16, n_out=2))], (1, 4, 4), dict(loss="mse", rule="drtp"), "needs loss='cross_entropy'"),
    ([("dense", dict(n_in=3, n_out=2, act="softplus"))], (3,), {}, "unknown activation"),
    ([("conv", dict(cin=1, cout=2, k=2.5)), "flatten", ("dense", dict(n_in=18, n_out=2))], (1, 4, 4), {},
     r"k must be an int or a pair of ints, got 2.5"),
    ([("meanpool", dict(k=(2, 2, 2))), "flatten", ("dense", dict(n_in=4, n_out=2))], (1, 4, 4), {},
     r"k must be an int or a pair of ints"),
    ([("maxpool", dict(k=2)), "flatten", ("dense", dict(n_in=4, n_out=2))], (4,), {}, r"needs an image input"),
])
def test_chain_construction_errors(layers, input_shape, kwargs, match):
    kwargs = dict(dict(rule="fa"), **kwargs)
    with pytest.raises(ValueError, match=match):
        ReferenceChain(layers, input_shape, **kwargs)


def test_chain_checks_parameters_inputs_and_noise():
    chain = small_chain("wm")
    rng = np.random.default_rng(5)
    X, y = rng.normal(size=(4,) + SMALL_INPUT), np.array([0, 1, 2, 0])
    with pytest.raises(ValueError, match=r"X must have shape \(m, 2, 10, 10\)"):
        chain.forward(X[:, :1])
    with pytest.raises(ValueError, match="class labels must lie in"):
        chain.gradients(X, np.array([0, 1, 3, 0]))
    with pytest.raises(ValueError, match="rule 'wm' needs mirror_noise"):
        chain.step(X, y, 0.1)
    noise = [None, None, np.zeros((1, 2, 3, 4, 5)), None, None, np.zeros((1, 2, 4)), np.zeros((1, 2, 5))]
    with pytest.raises(ValueError, match=r"mirror_noise\[2\] must have shape \(steps, batchsize, 3, 5, 4\)"):
        chain.step(X, y, 0.1, mirror_noise=noise)
    chain.W[2] = chain.W[2][:1]
    with pytest.raises(ValueError, match=r"W\[2\] of layer 2 \(conv\) must be a float64 array of shape \(2, 3, 3, 3\)"):
        chain.forward(X)
    chain = small_chain("fa")
    chain.B[0] = np.zeros((3, 2, 3, 2))
    with pytest.raises(ValueError, match=r"B\[0\] must be None"):
        chain.forward(X)


def test_float32_chain_stays_float32():
    chain = ReferenceChain(SMALL_CHAIN, SMALL_INPUT, "kp", dtype="float32").init_random(np.random.default_rng(6))
    rng = np.random.default_rng(7)
    X, y = rng.normal(size=(3,) + SMALL_INPUT), np.array([0, 2, 1])
    assert chain.forward(X).dtype == np.float32
    for dW, db in chain.gradients(X, y):
        assert dW is None or (dW.dtype == np.float32 and db.dtype == np.float32)
    chain.step(X, y, np.float64(0.1), momentum=np.float64(0.9), weight_decay=np.float64(0.01))
    assert all(A.dtype == np.float32 for A in chain.W + chain.b + chain.B if A is not None)


# ---------------------------------------------------------------------------
# Backpropagation against finite differences
# ---------------------------------------------------------------------------

def kink_margin(chain, X):
    """How close the forward pass comes to a kink: leaky_relu pre-activations near 0, or the top two
    values of a max-pool window near a tie."""
    inputs, pre, _, _ = chain._forward(X)
    margin = np.inf
    for i, layer in enumerate(chain.layers):
        if layer.kind in ("conv", "dense") and layer.act in ("relu", "leaky_relu"):
            margin = min(margin, np.abs(pre[i]).min())
        if layer.kind == "maxpool":
            w = np.lib.stride_tricks.sliding_window_view(inputs[i], layer.k, axis=(2, 3))[:, :, ::layer.stride[0],
                                                                                      ::layer.stride[1]]
            top2 = np.sort(w.reshape(w.shape[:4] + (-1,)), axis=-1)[..., -2:]
            margin = min(margin, (top2[..., 1] - top2[..., 0]).min())
    return margin


@pytest.mark.parametrize("loss", ref.LOSSES)
def test_bp_gradients_of_a_conv_chain_match_finite_differences(loss):
    m, eps = 4, 1e-6
    for seed in range(50):
        chain = small_chain("bp", loss, seed=seed)
        rng = np.random.default_rng(100 + seed)
        X = rng.normal(size=(m,) + SMALL_INPUT)
        y = targets(loss, m, 3, rng)
        if kink_margin(chain, X) > 1e-4:
            break
    else:
        pytest.fail("no random draw kept away from the kinks")
    got = chain.gradients(X, y)
    expected = []
    for i in range(len(chain.layers)):
        if chain.W[i] is None:
            expected.append((None, None))
            continue
        pair = []
        for P in (chain.W[i], chain.b[i]):
            G = np.zeros_like(P)
            for idx in np.ndindex(P.shape):
                old = P[idx]
                P[idx] = old + eps
                up = chain.loss(X, y)
                P[idx] = old - eps
                down = chain.loss(X, y)
                P[idx] = old
                G[idx] = (up - down) / (2 * eps)
            pair.append(G)
        expected.append(tuple(pair))
    assert_grads_close(got, expected, rtol=1e-6, atol=1e-9)
    for i in chain.parametric:  # every layer's gradient is far from trivially zero
        assert np.abs(got[i][0]).max() > 1e-4, i


# ---------------------------------------------------------------------------
# The rules on a chain
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("rule", FA_STYLE)
def test_fa_style_with_feedback_equal_to_the_weights_is_bp(rule, loss):
    bp = small_chain("bp", loss, seed=8)
    fa = ReferenceChain(SMALL_CHAIN, SMALL_INPUT, rule, loss=loss)
    fa.W, fa.b = [None if W is None else W.copy() for W in bp.W], [None if b is None else b.copy() for b in bp.b]
    for i in fa.parametric[1:]:
        fa.B[i] = bp.W[i].T.copy() if fa.kinds[i] == "dense" else bp.W[i].copy()
    rng = np.random.default_rng(9)
    X = rng.normal(size=(5,) + SMALL_INPUT)
    y = targets(loss, 5, 3, rng)
    assert_grads_close(fa.gradients(X, y), bp.gradients(X, y), rtol=1e-12, atol=1e-15)
    # ... and random feedback does not (so the check above can fail).
    other = small_chain(rule, loss, seed=8)
    assert not np.allclose(other.gradients(X, y)[0][0], bp.gradients(X, y)[0][0])


def test_dfa_signals_of_a_tiny_linear_chain_by_hand():
    # x = [[1, 2], [3, 4]] -> conv 1x1 (W = 2, b = 1): a0 = [[3, 5], [7, 9]] -> meanpool 2: 6 -> flatten
    # -> dense (W1 = [[1, -1]], b1 = [0, 1]): z = [6, -5].
    layers = [("conv", dict(cin=1, cout=1, k=1)), ("meanpool", dict(k=2)), "flatten", ("dense", dict(n_in=1, n_out=2))]
    X = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    B0 = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])

    def chain(rule, loss):
        c = ReferenceChain(layers, (1, 2, 2), rule, loss=loss)
        c.W[0][...], c.b[0][...] = 2.0, 1.0
        c.W[3][...], c.b[3][...] = [[1.0, -1.0]], [0.0, 1.0]
        if c.B[0] is not None:
            c.B[0][...] = B0
        return c

    target = np.array([[4.0, -5.0]])  # e = z - target = [2, 0], loss = 0.5 * 4 = 2
    dfa = chain("dfa", "mse")
    np.testing.assert_array_equal(dfa.forward(X), [[6.0, -5.0]])
    assert dfa.loss(X, target) == 2.0
    # DFA: signal0 = e @ B0 = [2, 4, 6, 8] in the C order of a0 (1, 1, 2, 2); the pool plays no part.
    np.testing.assert_array_equal(dfa.signals(X, target)[0], [[[[2.0, 4.0], [6.0, 8.0]]]])
    (dW0, db0), _, _, (dW1, db1) = dfa.gradients(X, target)
    np.testing.assert_array_equal(dW0, [[[[2 * 1 + 4 * 2 + 6 * 3 + 8 * 4]]]])  # sum of delta * x = 60
    np.testing.assert_array_equal(db0, [20.0])
    np.testing.assert_array_equal(dW1, [[12.0, 0.0]])  # h.T @ e = 6 * [2, 0]
    np.testing.assert_array_equal(db1, [2.0, 0.0])
    # BP instead: e @ W1.T = 2, shared by the mean pool: 0.5 per pixel; dW0 = 0.5 * (1+2+3+4) = 5.
    bp = chain("bp", "mse")
    np.testing.assert_array_equal(bp.signals(X, target)[0], np.full((1, 1, 2, 2), 0.5))
    np.testing.assert_array_equal(bp.gradients(X, target)[0][0], [[[[5.0]]]])
    # sDFA: s = sign(e)/m = [1, 0]: signal0 = [1, 2, 3, 4], dW0 = 30.
    sdfa = chain("sdfa", "mse")
    np.testing.assert_array_equal(sdfa.signals(X, target)[0], [[[[1.0, 2.0], [3.0, 4.0]]]])
    np.testing.assert_array_equal(sdfa.gradients(X, target)[0][0], [[[[30.0]]]])
    # DRTP, label 1: s = -onehot(1) = [0, -1]: signal0 = -[5, 6, 7, 8], dW0 = -(5 + 12 + 21 + 32) = -70;
    # the output layer still learns from e = softmax(z) - onehot(1).
    drtp = chain("drtp", "cross_entropy")
    label = np.array([1])
    np.testing.assert_array_equal(drtp.signals(X, label)[0], [[[[-5.0, -6.0], [-7.0, -8.0]]]])
    (dW0, db0), _, _, (dW1, _) = drtp.gradients(X, label)
    np.testing.assert_array_equal(dW0, [[[[-70.0]]]])
    np.testing.assert_array_equal(db0, [-26.0])
    p = np.exp([6.0, -5.0]) / np.exp([6.0, -5.0]).sum()
    np.testing.assert_allclose(dW1, [[6 * p[0], 6 * (p[1] - 1)]], rtol=1e-12)


@pytest.mark.parametrize("loss", ref.LOSSES)
def test_dfa_on_a_linear_conv_chain_with_the_exact_jacobians_is_bp(loss):
    # With identity activations and mean pooling, z = a_p.reshape(m, -1) @ J_p + const for each
    # parametric layer p. DFA with B_p = J_p.T must then give BP's gradients exactly.
    layers = [("conv", dict(cin=2, cout=3, k=3, pad=1)), ("meanpool", dict(k=2)),
              ("conv", dict(cin=3, cout=2, k=(2, 3), stride=(1, 2))), "flatten",
              ("dense", dict(n_in=2 * 2 * 1, n_out=5)), ("dense", dict(n_in=5, n_out=3))]
    bp = ReferenceChain(layers, (2, 6, 8), "bp", loss=loss).init_random(np.random.default_rng(10))
    dfa = ReferenceChain(layers, (2, 6, 8), "dfa", loss=loss)
    dfa.W, dfa.b = bp.W, bp.b
    for p in dfa.parametric[:-1]:
        rest = ReferenceChain(layers[p + 1:], bp.out_shapes[p], "bp", loss=loss)
        rest.W = bp.W[p + 1:]  # the rest of the chain without biases: a linear map
        size = int(np.prod(bp.out_shapes[p]))
        J = rest.forward(np.eye(size).reshape((size,) + bp.out_shapes[p]))  # row k: the image of unit k
        dfa.B[p] = J.T.copy()
    rng = np.random.default_rng(11)
    X = rng.normal(size=(4, 2, 6, 8))
    y = targets(loss, 4, 3, rng)
    assert_grads_close(dfa.gradients(X, y), bp.gradients(X, y), rtol=1e-10, atol=1e-14)


def test_shallow_trains_only_the_last_layer_even_with_weight_decay():
    chain = small_chain("shallow", seed=12)
    before = [None if W is None else W.copy() for W in chain.W]
    rng = np.random.default_rng(13)
    X, y = rng.normal(size=(4,) + SMALL_INPUT), np.array([0, 1, 2, 1])
    g = chain.gradients(X, y)
    for i in chain.parametric[:-1]:
        assert not g[i][0].any() and not g[i][1].any()
    for _ in range(2):
        chain.step(X, y, 0.1, momentum=0.9, weight_decay=0.1)
    for i in chain.parametric[:-1]:
        np.testing.assert_array_equal(chain.W[i], before[i])
    assert not np.allclose(chain.W[-1], before[-1])


# ---------------------------------------------------------------------------
# Dense chains are ReferenceNetwork; 1x1 convolutions on 1x1 images are dense layers
# ---------------------------------------------------------------------------

SIZES = [6, 5, 4, 3]


def dense_pair(rule, loss, seed=14):
    """A ReferenceNetwork and the equal dense chain."""
    rng = np.random.default_rng(seed)
    Ws = [rng.normal(0, 0.5, (SIZES[k], SIZES[k + 1])) for k in range(3)]
    bs = [rng.normal(0, 0.5, SIZES[k + 1]) for k in range(3)]
    Bs = [None if s is None else rng.normal(0, 0.5, s) for s in ref.feedback_shapes(SIZES, rule)]
    net = ReferenceNetwork(Ws, bs, Bs, activation="tanh", rule=rule, loss=loss)
    layers = [("dense", dict(n_in=SIZES[k], n_out=SIZES[k + 1], act="tanh" if k < 2 else "identity"))
              for k in range(3)]
    chain = ReferenceChain(layers, (SIZES[0],), rule, loss=loss)
    assert chain.feedback_shapes() == ref.feedback_shapes(SIZES, rule)
    chain.W, chain.b = [W.copy() for W in Ws], [b.copy() for b in bs]
    chain.B = [None if B is None else B.copy() for B in Bs]
    return net, chain


RULE_LOSS = [(r, l) for r in ref.RULES for l in ref.LOSSES if not (r == "drtp" and l == "mse")]


@pytest.mark.parametrize("rule,loss", RULE_LOSS)
def test_dense_chain_equals_reference_network(rule, loss):
    net, chain = dense_pair(rule, loss)
    rng = np.random.default_rng(15)
    batches = [(X, targets(loss, len(X), 3, rng)) for X in (rng.normal(size=(7, 6)), rng.normal(size=(5, 6)))]
    X, y = batches[0]
    np.testing.assert_allclose(chain.forward(X), net.forward(X), rtol=1e-14)
    assert math.isclose(chain.loss(X, y), net.loss(X, y), rel_tol=1e-14)
    assert_grads_close(chain.gradients(X, y), net.gradients(X, y), rtol=1e-12, atol=1e-15)

    if rule == "wm":  # ReferenceNetwork does not mirror: see test_dense_weight_mirror_by_hand
        return
    if rule == "brsf":  # the per-batch redraw is the caller's; with B kept, a brsf step is an frsf step
        net = dense_pair("frsf", loss)[0]
    for X, y in batches + batches:
        assert math.isclose(chain.step(X, y, 0.2, momentum=0.9), net.step(X, y, 0.2, momentum=0.9), rel_tol=1e-12)
    for k in range(3):
        np.testing.assert_allclose(chain.W[k], net.Ws[k], rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(chain.b[k], net.bs[k], rtol=1e-11, atol=1e-14)
        if net.Bs[k] is not None:
            np.testing.assert_allclose(chain.B[k], net.Bs[k], rtol=1e-11, atol=1e-14)


def test_weight_decay_and_kolen_pollack_by_hand():
    net, chain = dense_pair("kp", "cross_entropy")
    rng = np.random.default_rng(16)
    X, y = rng.normal(size=(5, 6)), rng.integers(0, 3, 5)
    grads = net.gradients(X, y)
    W0, b0, B0 = ([A.copy() for A in chain.W], [A.copy() for A in chain.b],
                  [None if A is None else A.copy() for A in chain.B])
    lr, wd = 0.1, 0.05
    chain.step(X, y, lr, weight_decay=wd)
    for k, (dW, db) in enumerate(grads):
        np.testing.assert_allclose(chain.W[k], W0[k] - lr * (dW + wd * W0[k]), rtol=1e-13)
        np.testing.assert_allclose(chain.b[k], b0[k] - lr * db, rtol=1e-13)  # biases do not decay
        if k > 0:
            np.testing.assert_allclose(chain.B[k], B0[k] - lr * (dW.T + wd * B0[k]), rtol=1e-13)


def test_dense_weight_mirror_by_hand():
    # W's update is FA's; then each B moves by lr_m * (y.T @ x / mb - decay * B) with y = x @ W (new W).
    net, chain = dense_pair("fa", "cross_entropy")
    _, wm = dense_pair("wm", "cross_entropy")
    wm.B = [None if B is None else B.copy() for B in chain.B]
    rng = np.random.default_rng(17)
    X, y = rng.normal(size=(5, 6)), rng.integers(0, 3, 5)
    noise = [None, rng.normal(size=(2, 8, 5)), rng.normal(size=(2, 8, 4))]  # 2 mirror steps of batch 8
    wm.step(X, y, 0.2, momentum=0.9, mirror_noise=noise, mirror_lr=0.05, mirror_decay=0.5)
    net.step(X, y, 0.2, momentum=0.9)
    for k in (1, 2):
        np.testing.assert_allclose(wm.W[k], net.Ws[k], rtol=1e-13)
        B = net.Bs[k].copy()
        for x in noise[k]:
            B = B + 0.05 * ((x @ net.Ws[k]).T @ x / 8 - 0.5 * B)
        np.testing.assert_allclose(wm.B[k], B, rtol=1e-12)


def as_conv_chain(chain):
    """The dense chain rewritten with 1x1 convolutions on 1x1 images, parameters carried over."""
    layers = []
    for k, layer in enumerate(chain.layers[:-1]):
        layers.append(("conv", dict(cin=layer.n_in, cout=layer.n_out, k=1, act=layer.act)))
    layers += ["flatten", ("dense", dict(n_in=chain.layers[-1].n_in, n_out=chain.n_outputs))]
    conv = ReferenceChain(layers, (chain.input_shape[0], 1, 1), chain.rule, loss=chain.loss_name)
    n = len(chain.layers) - 1
    for k in range(n):
        conv.W[k] = chain.W[k].T[:, :, None, None].copy()
        conv.b[k] = chain.b[k].copy()
        B = chain.B[k]
        if B is not None:  # FA style: dense (n_out, n_in) is conv (Cout, Cin); DFA style: same shape
            conv.B[k] = B[:, :, None, None].copy() if chain.rule in FA_STYLE else B.copy()
    conv.W[-1], conv.b[-1] = chain.W[-1].copy(), chain.b[-1].copy()
    conv.B[-1] = None if chain.B[-1] is None else chain.B[-1].copy()
    return conv


@pytest.mark.parametrize("rule,loss", RULE_LOSS)
def test_one_by_one_convolutions_are_dense_layers(rule, loss):
    """Checks the conv side of every rule against the dense side: B's orientation, sign symmetry with
    W (not W.T), Kolen-Pollack's dW (not dW.T), the DFA reshape and the mirror normalisation."""
    _, dense = dense_pair(rule, loss)
    conv = as_conv_chain(dense)
    rng = np.random.default_rng(18)
    X = rng.normal(size=(6, 6))
    y = targets(loss, 6, 3, rng)
    Xc = X[:, :, None, None]
    pairs = [(0, 0), (1, 1), (3, 2)]  # (conv chain layer, dense chain layer); conv layer 2 is the flatten
    conv_grads, dense_grads = conv.gradients(Xc, y), dense.gradients(X, y)
    for c, d in pairs:
        (cW, cb), (dW, db) = conv_grads[c], dense_grads[d]
        np.testing.assert_allclose(cW[:, :, 0, 0].T if c < 2 else cW, dW, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(cb, db, rtol=1e-12, atol=1e-15)
    noise = conv_noise = None
    if rule == "wm":  # one mirror step of batch 4 into layers 1 and 2 (dense) / 1 and 3 (conv)
        n1, n2 = rng.normal(size=(1, 4, 5)), rng.normal(size=(1, 4, 4))
        noise, conv_noise = [None, n1, n2], [None, n1[..., None, None], None, n2]
    for _ in range(2):
        kw = dict(momentum=0.9, weight_decay=0.01)
        a = conv.step(Xc, y, 0.1, mirror_noise=conv_noise, **kw)
        b = dense.step(X, y, 0.1, mirror_noise=noise, **kw)
        assert math.isclose(a, b, rel_tol=1e-12)
    for c, d in pairs:
        conv_W = conv.W[c][:, :, 0, 0].T if c < 2 else conv.W[c]
        np.testing.assert_allclose(conv_W, dense.W[d], rtol=1e-11, atol=1e-14)
        np.testing.assert_allclose(conv.b[c], dense.b[d], rtol=1e-11, atol=1e-14)
        if dense.B[d] is None:
            assert conv.B[c] is None
        else:
            conv_B = conv.B[c][:, :, 0, 0] if rule in FA_STYLE and c < 2 else conv.B[c]
            np.testing.assert_allclose(conv_B, dense.B[d], rtol=1e-11, atol=1e-14)


def test_conv_weight_mirror_estimates_w():
    # One mirror step with lr = 1 and decay = 1 sets B to the noise estimate
    # dWlike(x, conv(x, W)) / (mb * oh * ow), whose mean is W for unit-variance noise and no padding.
    # (The dense layer's mirror is checked by hand in test_dense_weight_mirror_by_hand.)
    layers = [("conv", dict(cin=1, cout=2, k=3)), ("conv", dict(cin=2, cout=3, k=(3, 2), stride=(1, 2))),
              "flatten", ("dense", dict(n_in=3 * 4 * 3, n_out=2))]
    chain = ReferenceChain(layers, (1, 8, 8), "wm").init_random(np.random.default_rng(19))
    rng = np.random.default_rng(20)
    noise = [None, rng.normal(size=(4000, 2, 6, 6)), None, rng.normal(size=(4000, 36))]
    chain.mirror(noise, lr=1.0, decay=1.0)
    np.testing.assert_allclose(chain.B[1], chain.W[1], atol=0.03)  # estimate's std: about 0.005
    assert np.abs(chain.W[1]).max() > 0.3  # so a wrong scale would show
