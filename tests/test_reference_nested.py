"""Tests of the NumPy reference for nested networks (tests/reference.py: ReferenceNet, with batch norm,
activation and dropout layers, global average pooling and residual blocks), against central finite
differences, hand calculations, explicit slicing and ReferenceChain. NumPy only: the oracle is
imported as a plain module from the tests folder, and pyjlfa is never needed."""

import math
import re

import numpy as np
import pytest

import reference as ref

ReferenceNet = ref.ReferenceNet
ReferenceChain = ref.ReferenceChain
EPS = 1e-5

# A small residual network: a conv/BN/ReLU stem, a block with He et al.'s option-A ("pad") shortcut,
# a block with a 1x1-conv + BN projection shortcut whose main path holds a nested residual block,
# global average pooling, flatten, dropout and the dense output layer. The odd input size makes
# the strided convs and the option-A slicing round up.
RESNET_INPUT = (2, 7, 7)
RESNET = [
    ("conv", dict(cin=2, cout=4, k=3, pad=1, bias=False)),                       # 0 -> (4, 7, 7)
    ("batchnorm", dict(c=4)),                                                    # 1
    ("relu", {}),                                                                # 2
    ("residual", dict(main=[                                                     # 3 -> (8, 4, 4)
        ("conv", dict(cin=4, cout=8, k=3, stride=2, pad=1, bias=False)),         # 3.main.0
        ("batchnorm", dict(c=8)),                                                # 3.main.1
        ("relu", {}),                                                            # 3.main.2
        ("conv", dict(cin=8, cout=8, k=3, pad=1)),                               # 3.main.3
        ("batchnorm", dict(c=8)),                                                # 3.main.4
    ], shortcut="pad")),
    ("relu", {}),                                                                # 4
    ("residual", dict(main=[                                                     # 5 -> (6, 2, 2)
        ("conv", dict(cin=8, cout=6, k=3, stride=2, pad=1, bias=False)),         # 5.main.0
        ("batchnorm", dict(c=6)),                                                # 5.main.1
        ("tanh", {}),                                                            # 5.main.2
        ("residual", dict(main=[                                                 # 5.main.3
            ("conv", dict(cin=6, cout=6, k=3, pad=1)),                           # 5.main.3.main.0
            ("batchnorm", dict(c=6)),                                            # 5.main.3.main.1
        ])),
    ], shortcut=[
        ("conv", dict(cin=8, cout=6, k=1, stride=2, bias=False)),                # 5.shortcut.0
        ("batchnorm", dict(c=6)),                                                # 5.shortcut.1
    ])),
    ("relu", {}),                                                                # 6
    ("gap", {}),                                                                 # 7 -> (6, 1, 1)
    ("flatten", {}),                                                             # 8 -> (6,)
    ("dropout", dict(p=0.25)),                                                   # 9
    ("dense", dict(n_in=6, n_out=3)),                                            # 10
]
RESNET_PATHS = ["0", "1", "2", "3", "3.main.0", "3.main.1", "3.main.2", "3.main.3", "3.main.4", "4",
                "5", "5.main.0", "5.main.1", "5.main.2", "5.main.3", "5.main.3.main.0", "5.main.3.main.1",
                "5.shortcut.0", "5.shortcut.1", "6", "7", "8", "9", "10"]


def resnet(rule="bp", seed=0, feedback_points=None, loss="cross_entropy"):
    net = ReferenceNet(RESNET, RESNET_INPUT, rule, loss=loss, feedback_points=feedback_points)
    return net.init_random(np.random.default_rng(seed), affine_std=0.3)


def resnet_batch(m=4, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m,) + RESNET_INPUT)
    y = rng.integers(0, 3, m)
    masks = {"9": (rng.random((m, 6)) >= 0.25) / 0.75}
    return X, y, masks


def parameter_names(layer):
    """The trained arrays of a layer, in the order gradients() gives their gradients."""
    if layer.is_weight:
        return ["W"] + (["b"] if layer.b is not None else [])
    return ["gamma", "beta"] if layer.kind == "batchnorm" else []


def sample_indices(shape, count, rng):
    """A few entries of an array of this shape (all of them when it is small)."""
    every = list(np.ndindex(shape))
    if len(every) <= count:
        return every
    return [every[i] for i in rng.choice(len(every), count, replace=False)]


def central_difference(f, arr, idx, h=1e-6):
    old = arr[idx]
    arr[idx] = old + h
    up = f()
    arr[idx] = old - h
    down = f()
    arr[idx] = old
    return (up - down) / (2 * h)


def snapshot(net):
    return {(path, name): arr.copy() for path, name, arr in net.named_arrays()}


def assert_same(net, before):
    after = snapshot(net)
    assert after.keys() == before.keys()
    for key, arr in before.items():
        np.testing.assert_array_equal(after[key], arr, err_msg=str(key))


def softmax_error(z, y):
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return (p - np.eye(z.shape[1])[y]) / len(y)


# ---------------------------------------------------------------------------
# Structure: paths, order, where each rule's feedback lives
# ---------------------------------------------------------------------------

def test_paths_order_shapes_and_feedback_shapes():
    net = resnet()
    assert [p for p, _ in net.named_layers()] == RESNET_PATHS
    assert [l.path for l in net.layers] == [str(i) for i in range(11)]
    block = net.layers[5]
    assert block.main[3].main[0] is net.layer("5.main.3.main.0")
    assert block.shortcut[0].path == "5.shortcut.0" and net.layers[3].shortcut == "pad"
    assert net.layer("3").out_shape == (8, 4, 4) and net.layer("5").out_shape == (6, 2, 2)
    assert net.layer("10").b is not None and net.layer("0").b is None and net.layer("3.main.3").b is not None
    assert list(net.gradients(*resnet_batch())) == RESNET_PATHS
    with pytest.raises(KeyError):
        net.layer("3.main.9")

    # FA style: a weight layer has a B iff a trainable layer lies between the input and it, so the
    # stem conv has none and every other conv (the 1x1 shortcut conv too) has one.
    fa = ReferenceNet(RESNET, RESNET_INPUT, "fa").feedback_shapes()
    assert fa == {"3.main.0": (8, 4, 3, 3), "3.main.3": (8, 8, 3, 3), "5.main.0": (6, 8, 3, 3),
                  "5.main.3.main.0": (6, 6, 3, 3), "5.shortcut.0": (6, 8, 1, 1), "10": (3, 6)}
    # A batch norm upstream is enough; a parameter-free layer is not.
    assert ReferenceNet([("batchnorm", dict(c=4)), ("dense", dict(n_in=4, n_out=2))], (4,), "fa").feedback_shapes() \
        == {"1": (2, 4)}
    assert ReferenceNet([("relu", {}), ("dense", dict(n_in=4, n_out=2))], (4,), "fa").feedback_shapes() == {}
    assert ReferenceNet(RESNET, RESNET_INPUT, "bp").feedback_shapes() == {}
    assert ReferenceNet(RESNET, RESNET_INPUT, "shallow").feedback_shapes() == {}

    # DFA style: a point per weight layer but the last ("layer"), or per top-level block ("block"),
    # at the end of its run; B is (n_outputs, size of the point).
    layer = ReferenceNet(RESNET, RESNET_INPUT, "dfa")
    assert layer.feedback_points == "layer"
    assert [(o.path, [l.path for l in run]) for o, run in layer.points] == [
        ("0", ["0", "1", "2"]), ("3.main.0", ["3.main.0", "3.main.1", "3.main.2"]),
        ("3.main.3", ["3.main.3", "3.main.4"]), ("5.main.0", ["5.main.0", "5.main.1", "5.main.2"]),
        ("5.main.3.main.0", ["5.main.3.main.0", "5.main.3.main.1"]), ("5.shortcut.0", ["5.shortcut.0", "5.shortcut.1"])]
    assert layer.feedback_shapes() == {"0": (3, 196), "3.main.0": (3, 128), "3.main.3": (3, 128),
                                       "5.main.0": (3, 24), "5.main.3.main.0": (3, 24), "5.shortcut.0": (3, 24)}
    block = ReferenceNet(RESNET, RESNET_INPUT, "drtp", feedback_points="block")
    assert [(o.path, [l.path for l in run]) for o, run in block.points] == [
        ("0", ["0", "1", "2"]), ("3", ["3", "4"]), ("5", ["5", "6"])]
    assert block.feedback_shapes() == {"0": (3, 196), "3": (3, 128), "5": (3, 24)}
    assert block.layer("3").B.shape == (3, 128) and block.layer("3.main.0").B is None


def test_init_random_and_defaults():
    net = ReferenceNet(RESNET, RESNET_INPUT, "fa")
    bn = net.layer("3.main.1")
    np.testing.assert_array_equal(bn.gamma, 1)
    np.testing.assert_array_equal(bn.beta, 0)
    np.testing.assert_array_equal(bn.running_mean, 0)
    np.testing.assert_array_equal(bn.running_var, 1)
    assert net.training
    net.init_random(np.random.default_rng(0))
    np.testing.assert_array_equal(bn.gamma, 1)  # affine_std=0 keeps PyTorch's initial values
    assert np.all(net.layer("5.shortcut.0").B != 0) and np.all(net.layer("0").W != 0)
    assert net.eval() is net and not net.training and net.train().training
    f32 = ReferenceNet(RESNET, RESNET_INPUT, "kp", dtype="float32").init_random(np.random.default_rng(0),
                                                                                 affine_std=0.1)
    assert all(arr.dtype == np.float32 for _, _, arr in f32.named_arrays())
    X, y, masks = resnet_batch()
    assert f32.forward(X, masks).dtype == np.float32
    f32.step(X, y, 0.1, momentum=0.9, weight_decay=1e-3, masks=masks)
    assert all(arr.dtype == np.float32 for _, _, arr in f32.named_arrays())
    assert all(g.dtype == np.float32 for pair in f32.gradients(X, y, masks).values() for g in pair if g is not None)


# ---------------------------------------------------------------------------
# BP against finite differences
# ---------------------------------------------------------------------------

def check_bp_against_finite_differences(net, X, y, masks):
    grads = net.gradients(X, y, masks)
    rng = np.random.default_rng(5)
    loss = lambda: net.loss(X, y, masks)  # noqa: E731  (same batch, masks and mode every time)
    checked = 0
    for path, layer in net.named_layers():
        for k, name in enumerate(parameter_names(layer)):
            arr = getattr(layer, name)
            for idx in sample_indices(arr.shape, 4, rng):
                fd = central_difference(loss, arr, idx)
                assert math.isclose(grads[path][k][idx], fd, rel_tol=1e-6, abs_tol=1e-9), (path, name, idx)
                checked += 1
    dX = net.input_error(X, y, masks)
    assert dX.shape == X.shape
    for idx in sample_indices(X.shape, 8, rng):
        assert math.isclose(dX[idx], central_difference(loss, X, idx), rel_tol=1e-6, abs_tol=1e-9), idx
    return checked


def test_bp_gradients_match_finite_differences_in_training_mode():
    net = resnet("bp")
    X, y, masks = resnet_batch()
    before = snapshot(net)
    assert check_bp_against_finite_differences(net, X, y, masks) > 80
    assert_same(net, before)  # gradients, loss and input_error change nothing, running statistics included


def test_bp_gradients_match_finite_differences_in_evaluation_mode():
    net = resnet("bp", loss="mse")
    rng = np.random.default_rng(3)
    for _, layer in net.named_layers():
        if layer.kind == "batchnorm":
            layer.running_mean = rng.normal(0, 0.5, layer.c)
            layer.running_var = rng.uniform(0.5, 2.0, layer.c)
    X, _, _ = resnet_batch()
    y = rng.normal(size=(4, 3))
    net.eval()
    check_bp_against_finite_differences(net, X, y, None)  # no masks: dropout is the identity


def test_mse_loss_and_error():
    net = resnet("bp", loss="mse")
    X, _, masks = resnet_batch()
    y = np.random.default_rng(2).normal(size=(4, 3))
    z = net.forward(X, masks)
    assert math.isclose(net.loss(X, y, masks), 0.5 * ((z - y) ** 2).sum() / 4, rel_tol=1e-13)
    np.testing.assert_allclose(net.output_errors(X, y, masks)["10"], (z - y) / 4, rtol=1e-13)


# ---------------------------------------------------------------------------
# The layers on their own, by hand
# ---------------------------------------------------------------------------

def test_batch_norm_by_hand():
    # One feature, four samples 1, 2, 3, 6: mean 3, biased variance (4 + 1 + 0 + 9) / 4 = 3.5.
    x = np.array([[1.0], [2.0], [3.0], [6.0]])
    mean, var, n = ref.batch_statistics(x)
    assert (mean[0], var[0], n) == (3.0, 3.5, 4)
    std = math.sqrt(3.5 + EPS)
    y, xhat, s = ref.batch_norm(x, np.array([2.0]), np.array([0.5]), mean, var)
    assert math.isclose(s[0], std, rel_tol=1e-15)
    np.testing.assert_allclose(xhat[:, 0], [-2 / std, -1 / std, 0, 3 / std], rtol=1e-15)
    np.testing.assert_allclose(y[:, 0], [0.5 - 4 / std, 0.5 - 2 / std, 0.5, 0.5 + 6 / std], rtol=1e-15)
    # g = (1, 0, 0, 0): mean(g) = 1/4, mean(g * xhat) = -2/std / 4 = -1/(2 std), so
    # dx_i = 2/std * (g_i - 1/4 + xhat_i / (2 std)); dgamma = xhat_0 = -2/std; dbeta = 1.
    g = np.array([[1.0], [0.0], [0.0], [0.0]])
    dx, dgamma, dbeta = ref.batch_norm_backward(g, xhat, np.array([2.0]), s, training=True)
    expected = [2 / std * (gi - 0.25 + (xi / std) / (2 * std)) for gi, xi in zip([1, 0, 0, 0], [-2, -1, 0, 3])]
    np.testing.assert_allclose(dx[:, 0], expected, rtol=1e-14)
    assert math.isclose(dgamma[0], -2 / std, rel_tol=1e-14) and dbeta[0] == 1.0
    # Evaluation mode: the statistics are constants, dx = gamma/std * g.
    dx, dgamma, dbeta = ref.batch_norm_backward(g, xhat, np.array([2.0]), s, training=False)
    np.testing.assert_allclose(dx[:, 0], [2 / std, 0, 0, 0], rtol=1e-15)
    assert math.isclose(dgamma[0], -2 / std, rel_tol=1e-14) and dbeta[0] == 1.0


def test_batch_norm_of_images_by_loops():
    # Per channel over (N, H, W): the statistics written out value by value.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 2, 2, 3))
    gamma, beta, g = np.array([1.5, -0.5]), np.array([0.1, 0.2]), rng.normal(size=x.shape)
    mean, var, n = ref.batch_statistics(x)
    y, xhat, std = ref.batch_norm(x, gamma, beta, mean, var)
    dx, dgamma, dbeta = ref.batch_norm_backward(g, xhat, gamma, std, training=True)
    assert n == 18
    for c in range(2):
        values = [x[i, c, h, w] for i in range(3) for h in range(2) for w in range(3)]
        grads = [g[i, c, h, w] for i in range(3) for h in range(2) for w in range(3)]
        mu = sum(values) / 18
        v = sum((a - mu) ** 2 for a in values) / 18
        sd = math.sqrt(v + EPS)
        xh = [(a - mu) / sd for a in values]
        mg, mgx = sum(grads) / 18, sum(gi * xi for gi, xi in zip(grads, xh)) / 18
        assert math.isclose(mean[c], mu, rel_tol=1e-14) and math.isclose(var[c], v, rel_tol=1e-13)
        np.testing.assert_allclose(y[:, c].ravel(), [gamma[c] * a + beta[c] for a in xh], rtol=1e-13)
        np.testing.assert_allclose(dx[:, c].ravel(), [gamma[c] / sd * (gi - mg - xi * mgx)
                                                      for gi, xi in zip(grads, xh)], rtol=1e-11, atol=1e-14)
        assert math.isclose(dgamma[c], mgx * 18, rel_tol=1e-12) and math.isclose(dbeta[c], mg * 18, rel_tol=1e-12)


def test_global_average_pool_by_hand():
    x = np.arange(12.0).reshape(1, 2, 2, 3)
    np.testing.assert_array_equal(ref.global_avg_pool(x), [[[[2.5]], [[8.5]]]])
    g = np.array([[[[6.0]], [[-12.0]]]])
    np.testing.assert_array_equal(ref.global_avg_pool_backward(g, (2, 3)),
                                  np.concatenate([np.full((1, 1, 2, 3), 1.0), np.full((1, 1, 2, 3), -2.0)], axis=1))


@pytest.mark.parametrize("cin,cout,stride,size", [(2, 6, 2, (5, 5)), (2, 6, 2, (4, 6)), (4, 4, 1, (3, 3)),
                                                  (3, 5, 1, (4, 4))])
def test_option_a_shortcut_against_explicit_slicing(cin, cout, stride, size):
    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, cin) + size)
    out = ref.option_a_shortcut(x, cout, stride)
    lo = (cout - cin) // 2
    H, W = -(-size[0] // stride), -(-size[1] // stride)
    assert out.shape == (2, cout, H, W)
    for n in range(2):
        for c in range(cout):
            for i in range(H):
                for j in range(W):
                    want = x[n, c - lo, i * stride, j * stride] if lo <= c < lo + cin else 0.0
                    assert out[n, c, i, j] == want
    # The backward pass is the adjoint of the forward one.
    g = rng.normal(size=out.shape)
    assert math.isclose(np.sum(out * g), np.sum(x * ref.option_a_shortcut_backward(g, cin, stride, size)),
                        rel_tol=1e-13)


@pytest.mark.parametrize("stride", [1, 2])
def test_pad_shortcut_inside_a_network(stride):
    # main: one conv 2 -> 6 channels; the block adds x[:, :, ::s, ::s] padded with 2 zero channels
    # on each side, s = 2 exactly when main changes the spatial size.
    layers = [("residual", dict(main=[("conv", dict(cin=2, cout=6, k=3, stride=stride, pad=1))], shortcut="pad")),
              ("flatten", {}), ("dense", dict(n_in=6 * (3 if stride == 2 else 5) ** 2, n_out=2))]
    net = ReferenceNet(layers, (2, 5, 5), "bp").init_random(np.random.default_rng(7))
    x = np.random.default_rng(8).normal(size=(3, 2, 5, 5))
    out = net.outputs(x)["0"]
    conv = net.outputs(x)["0.main.0"]
    expected = conv.copy()
    expected[:, 2:4] += x[:, :, ::stride, ::stride]
    np.testing.assert_array_equal(out, expected)
    assert net.layer("0").pad_stride == stride


def test_dropout_masks_in_training_and_identity_in_evaluation():
    layers = [("dense", dict(n_in=3, n_out=4, act="tanh")), ("dropout", dict(p=0.5)), ("dense", dict(n_in=4, n_out=2))]
    net = ReferenceNet(layers, (3,), "bp").init_random(np.random.default_rng(9))
    rng = np.random.default_rng(10)
    X, y = rng.normal(size=(5, 3)), rng.integers(0, 2, 5)
    mask = (rng.random((5, 4)) < 0.5) * 2.0
    h = np.tanh(X @ net.layer("0").W + net.layer("0").b)
    W2, b2 = net.layer("2").W, net.layer("2").b
    np.testing.assert_allclose(net.forward(X, {"1": mask}), (h * mask) @ W2 + b2, rtol=1e-14)
    # Backward: the error at the dropout's input is the one at its output times the same mask.
    errors = net.output_errors(X, y, {"1": mask})
    e = softmax_error((h * mask) @ W2 + b2, y)
    np.testing.assert_allclose(errors["1"], e @ W2.T, rtol=1e-13)
    np.testing.assert_allclose(errors["0"], (e @ W2.T) * mask, rtol=1e-13)
    net.eval()
    np.testing.assert_allclose(net.forward(X), h @ W2 + b2, rtol=1e-14)
    np.testing.assert_allclose(net.forward(X, {"1": mask}), h @ W2 + b2, rtol=1e-14)  # masks are ignored
    # p = 0 needs no mask.
    net0 = ReferenceNet([("dropout", dict(p=0.0)), ("dense", dict(n_in=3, n_out=2))], (3,), "bp")
    net0.init_random(np.random.default_rng(0))
    np.testing.assert_allclose(net0.forward(X), X @ net0.layer("1").W + net0.layer("1").b, rtol=1e-14)


# ---------------------------------------------------------------------------
# Running statistics and the two modes
# ---------------------------------------------------------------------------

BN_NET = [("conv", dict(cin=1, cout=2, k=2)), ("batchnorm", dict(c=2)), ("relu", {}), ("flatten", {}),
          ("dense", dict(n_in=18, n_out=3))]


def test_running_statistics_after_steps_follow_the_formula():
    net = ReferenceNet(BN_NET, (1, 4, 4), "fa").init_random(np.random.default_rng(11))
    bn = net.layer("1")
    rng = np.random.default_rng(12)
    mean, var = np.zeros(2), np.ones(2)
    for step in range(4):
        X, y = rng.normal(size=(5, 1, 4, 4)), rng.integers(0, 3, 5)
        a = net.outputs(X)["0"]  # the batch norm's input under the current weights
        before = snapshot(net)
        net.gradients(X, y)
        net.loss(X, y)
        net.forward(X)
        assert_same(net, before)  # only step changes anything
        net.step(X, y, 0.1, momentum=0.5)
        for c in range(2):
            values = a[:, c].ravel()  # n = 5 * 3 * 3 = 45 values
            mean[c] = 0.9 * mean[c] + 0.1 * values.mean()
            var[c] = 0.9 * var[c] + 0.1 * values.var(ddof=1)  # the unbiased variance
        np.testing.assert_allclose(bn.running_mean, mean, rtol=1e-13)
        np.testing.assert_allclose(bn.running_var, var, rtol=1e-13)
    # step trains whatever the mode, and leaves the mode as it was.
    net.eval()
    X, y = rng.normal(size=(5, 1, 4, 4)), rng.integers(0, 3, 5)
    a = net.outputs(X)["0"]
    net.step(X, y, 0.1)
    assert not net.training
    np.testing.assert_allclose(bn.running_mean, 0.9 * mean + 0.1 * a.mean(axis=(0, 2, 3)), rtol=1e-13)


def test_evaluation_mode_normalises_with_the_running_statistics():
    net = ReferenceNet(BN_NET, (1, 4, 4), "bp").init_random(np.random.default_rng(13), affine_std=0.5)
    bn = net.layer("1")
    bn.running_mean = np.array([0.3, -0.2])
    bn.running_var = np.array([2.0, 0.5])
    rng = np.random.default_rng(14)
    X = rng.normal(size=(3, 1, 4, 4))
    a = net.outputs(X)["0"]  # the conv does not depend on the mode
    net.eval()
    shape = (1, 2, 1, 1)
    u = (a - bn.running_mean.reshape(shape)) / np.sqrt(bn.running_var.reshape(shape) + EPS)
    h = np.maximum(bn.gamma.reshape(shape) * u + bn.beta.reshape(shape), 0).reshape(3, -1)
    expected = h @ net.layer("4").W + net.layer("4").b
    np.testing.assert_allclose(net.forward(X), expected, rtol=1e-13)
    # Each sample on its own gives the same (in training mode the batch would matter, and one
    # sample would not even be allowed).
    np.testing.assert_allclose(net.forward(X[1:2]), expected[1:2], rtol=1e-13)
    net.train()
    assert not np.allclose(net.forward(X), expected)


# ---------------------------------------------------------------------------
# The rules on nested networks, by hand
# ---------------------------------------------------------------------------

# dense 4->5, relu, residual(main = dense 5->5 + tanh, identity shortcut), dense 5->3.
FA_NET = [("dense", dict(n_in=4, n_out=5)), ("relu", {}),
          ("residual", dict(main=[("dense", dict(n_in=5, n_out=5)), ("tanh", {})])), ("dense", dict(n_in=5, n_out=3))]


@pytest.mark.parametrize("rule", ["bp", "fa", "usf", "kp"])
def test_fa_style_on_a_nested_net_by_hand(rule):
    net = ReferenceNet(FA_NET, (4,), rule).init_random(np.random.default_rng(15))
    rng = np.random.default_rng(16)
    X, y = rng.normal(size=(6, 4)), rng.integers(0, 3, 6)
    (W0, W2, W3) = (net.layer(p).W for p in ("0", "2.main.0", "3"))
    (b0, b2, b3) = (net.layer(p).b for p in ("0", "2.main.0", "3"))
    if rule == "bp":
        F2, F3 = W2.T, W3.T
        assert net.layer("3").B is None
    else:
        assert net.layer("0").B is None  # nothing trainable lies before the first layer
        F2, F3 = net.layer("2.main.0").B, net.layer("3").B
        if rule == "usf":
            F2, F3 = np.copysign(np.abs(F2), W2.T), np.copysign(np.abs(F3), W3.T)
    a0 = X @ W0 + b0
    h = np.maximum(a0, 0)
    t = np.tanh(h @ W2 + b2)
    r = t + h
    z = r @ W3 + b3
    e = softmax_error(z, y)
    g_r = e @ F3                                 # the last layer carries e back through B (W.T for bp)
    delta2 = g_r * (1 - t * t)                   # through tanh, exactly
    g_h = delta2 @ F2 + g_r                      # main path through B, plus the exact identity path
    delta0 = g_h * (a0 > 0)
    expected = {"3": (r.T @ e, e.sum(0)), "2.main.0": (h.T @ delta2, delta2.sum(0)), "0": (X.T @ delta0, delta0.sum(0))}
    grads = net.gradients(X, y)
    for path, (dW, db) in expected.items():
        np.testing.assert_allclose(grads[path][0], dW, rtol=1e-12, atol=1e-15, err_msg=path)
        np.testing.assert_allclose(grads[path][1], db, rtol=1e-12, atol=1e-15, err_msg=path)
    assert grads["1"] == (None, None) and grads["2"] == (None, None) and grads["2.main.1"] == (None, None)
    errors = net.output_errors(X, y)
    np.testing.assert_allclose(errors["1"], g_h, rtol=1e-12)
    np.testing.assert_allclose(errors["2.main.1"], g_r, rtol=1e-12)
    if rule == "bp":
        np.testing.assert_allclose(net.input_error(X, y), delta0 @ W0.T, rtol=1e-12)
    else:
        assert net.input_error(X, y) is None  # the first layer has no B: nothing is carried to the input


# dense 4->5, batchnorm, relu, residual(main = dense 5->5 tanh, dense 5->5; identity), relu, dense 5->3.
DFA_NET = [("dense", dict(n_in=4, n_out=5)), ("batchnorm", dict(c=5)), ("relu", {}),
           ("residual", dict(main=[("dense", dict(n_in=5, n_out=5, act="tanh")), ("dense", dict(n_in=5, n_out=5))])),
           ("relu", {}), ("dense", dict(n_in=5, n_out=3))]


def dfa_by_hand(net, X, y):
    """The forward pass of DFA_NET, e and the projected signal s of the net's rule."""
    W0, W1, W2, W5 = (net.layer(p).W for p in ("0", "3.main.0", "3.main.1", "5"))
    b0, b1, b2, b5 = (net.layer(p).b for p in ("0", "3.main.0", "3.main.1", "5"))
    bn = net.layer("1")
    m = len(X)
    f = dict(a0=X @ W0 + b0)
    mean, var = f["a0"].mean(0), f["a0"].var(0)
    f["std"] = np.sqrt(var + EPS)
    f["xh"] = (f["a0"] - mean) / f["std"]
    f["u"] = bn.gamma * f["xh"] + bn.beta
    f["h"] = np.maximum(f["u"], 0)
    f["t"] = np.tanh(f["h"] @ W1 + b1)
    f["r"] = f["t"] @ W2 + b2 + f["h"]
    f["q"] = np.maximum(f["r"], 0)
    e = softmax_error(f["q"] @ W5 + b5, y)
    s = {"dfa": e, "sdfa": np.sign(e) / m, "drtp": -np.eye(3)[y] / m}[net.rule]
    return f, e, s


def stem_by_hand(net, X, f, s):
    """The stem's point sits after its relu (run: dense 0, batchnorm 1, relu 2): carried back exactly."""
    gamma = net.layer("1").gamma
    gu = (s @ net.layer("0").B) * (f["u"] > 0)
    da0 = gamma / f["std"] * (gu - gu.mean(0) - f["xh"] * (gu * f["xh"]).mean(0))
    return {"0": (X.T @ da0, da0.sum(0)), "1": ((gu * f["xh"]).sum(0), gu.sum(0))}


def assert_grads(grads, expected):
    for path, pair in expected.items():
        for got, want in zip(grads[path], pair):
            np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-14, err_msg=path)


@pytest.mark.parametrize("rule", ["dfa", "sdfa", "drtp"])
def test_dfa_layer_points_by_hand(rule):
    net = ReferenceNet(DFA_NET, (4,), rule).init_random(np.random.default_rng(17), affine_std=0.3)
    rng = np.random.default_rng(18)
    X, y = rng.normal(size=(6, 4)), rng.integers(0, 3, 6)
    f, e, s = dfa_by_hand(net, X, y)
    delta1 = (s @ net.layer("3.main.0").B) * (1 - f["t"] ** 2)   # point after the fused tanh
    delta2 = s @ net.layer("3.main.1").B                           # point at the dense's output
    expected = stem_by_hand(net, X, f, s)
    expected.update({"3.main.0": (f["h"].T @ delta1, delta1.sum(0)), "3.main.1": (f["t"].T @ delta2, delta2.sum(0)),
                     "5": (f["q"].T @ e, e.sum(0))})                # the last layer learns from e
    grads = net.gradients(X, y)
    assert_grads(grads, expected)
    assert net.input_error(X, y) is None


@pytest.mark.parametrize("rule", ["dfa", "sdfa", "drtp"])
def test_dfa_block_points_by_hand(rule):
    net = ReferenceNet(DFA_NET, (4,), rule, feedback_points="block")
    net.init_random(np.random.default_rng(19), affine_std=0.3)
    assert net.layer("3").B.shape == (3, 5) and net.layer("3.main.0").B is None
    rng = np.random.default_rng(20)
    X, y = rng.normal(size=(6, 4)), rng.integers(0, 3, 6)
    f, e, s = dfa_by_hand(net, X, y)
    # The block's point is after the relu that follows it; from there back exactly, with the true W.
    G = (s @ net.layer("3").B) * (f["r"] > 0)
    delta2 = G
    delta1 = (G @ net.layer("3.main.1").W.T) * (1 - f["t"] ** 2)
    expected = stem_by_hand(net, X, f, s)
    expected.update({"3.main.0": (f["h"].T @ delta1, delta1.sum(0)), "3.main.1": (f["t"].T @ delta2, delta2.sum(0)),
                     "5": (f["q"].T @ e, e.sum(0))})
    grads = net.gradients(X, y)
    assert_grads(grads, expected)
    # Nothing crosses the block's input: the error at the stem's relu is its own point's alone,
    # and the stem learns the same whatever the block's B.
    errors = net.output_errors(X, y)
    np.testing.assert_allclose(errors["2"], s @ net.layer("0").B, rtol=1e-13)
    net.layer("3").B = np.random.default_rng(21).normal(size=(3, 5))
    assert_grads(net.gradients(X, y), stem_by_hand(net, X, f, s))


def dfa_runs_by_finite_differences(net, X, y, masks):
    """Each point's run learns as backprop of sum(G * run output) with G = (s @ B) fixed: check
    every parameter of every run by central differences; layers in no run get zero gradients."""
    grads = net.gradients(X, y, masks)
    z = net.forward(X, masks)
    s = softmax_error(z, y)  # the rule is dfa: s = e
    rng = np.random.default_rng(22)
    covered = {"10"}
    for owner, run in net.points:
        end = run[-1].path
        G = (s @ owner.B).reshape(net.outputs(X, masks)[end].shape)
        phi = lambda: np.sum(G * net.outputs(X, masks)[end])  # noqa: E731
        inside = [l for top in run for l in [top] + [c for _, c in _named(top)]]
        for layer in inside:
            covered.add(layer.path)
            for k, name in enumerate(parameter_names(layer)):
                arr = getattr(layer, name)
                for idx in sample_indices(arr.shape, 3, rng):
                    fd = central_difference(phi, arr, idx)
                    assert math.isclose(grads[layer.path][k][idx], fd, rel_tol=1e-6, abs_tol=1e-9), \
                        (owner.path, layer.path, name, idx)
    for path, layer in net.named_layers():
        if path not in covered:
            assert all(g is None or not np.any(g) for g in grads[path]), path
    return covered


def _named(layer):
    """The layers inside a residual layer, depth-first."""
    return [(l.path, l) for l in ref._walk(layer.children())]


@pytest.mark.parametrize("points", ["layer", "block"])
def test_dfa_points_on_the_resnet_are_backprop_of_their_runs(points):
    net = resnet("dfa", feedback_points=points)
    X, y, masks = resnet_batch()
    covered = dfa_runs_by_finite_differences(net, X, y, masks)
    assert {p for p, l in net.named_layers() if l.trainable} <= covered


def test_dfa_batch_norm_outside_every_run_gets_zero_gradients():
    # The batch norm after a pool is in no weight layer's run: no signal reaches it.
    layers = [("conv", dict(cin=1, cout=2, k=2)), ("maxpool", dict(k=2)), ("batchnorm", dict(c=2)), ("flatten", {}),
              ("dense", dict(n_in=2, n_out=2))]
    net = ReferenceNet(layers, (1, 3, 3), "dfa").init_random(np.random.default_rng(23), affine_std=0.3)
    X, y = np.random.default_rng(24).normal(size=(4, 1, 3, 3)), np.array([0, 1, 1, 0])
    grads = net.gradients(X, y)
    assert not np.any(grads["2"][0]) and not np.any(grads["2"][1])
    assert np.any(grads["0"][0]) and np.any(grads["4"][0])
    bp = ReferenceNet(layers, (1, 3, 3), "bp").init_random(np.random.default_rng(23), affine_std=0.3)
    assert np.any(bp.gradients(X, y)["2"][0])


def test_shallow_trains_only_the_last_layer_but_running_statistics_still_move():
    net = resnet("shallow")
    X, y, masks = resnet_batch()
    grads = net.gradients(X, y, masks)
    bp = resnet("bp").gradients(X, y, masks)
    for path, layer in net.named_layers():
        if path == "10":
            for got, want in zip(grads[path], bp[path]):
                np.testing.assert_allclose(got, want, rtol=1e-13)
        elif layer.trainable:
            assert not any(np.any(g) for g in grads[path] if g is not None), path
    before = snapshot(net)
    net.step(X, y, 0.1, momentum=0.9, weight_decay=0.1, masks=masks)
    after = snapshot(net)
    for (path, name), arr in before.items():
        changed = not np.array_equal(after[(path, name)], arr)
        assert changed == (path == "10" or name.startswith("running_")), (path, name)


# ---------------------------------------------------------------------------
# Updates
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("rule", ["kp", "usf", "bp"])
def test_sgd_momentum_weight_decay_by_hand(rule):
    net = resnet(rule)
    lr, mu, wd = 0.05, 0.9, 0.01
    batches = [resnet_batch(seed=s) for s in (30, 31)]
    velocity = {}
    for X, y, masks in batches:
        grads = net.gradients(X, y, masks)
        before = snapshot(net)
        loss = net.loss(X, y, masks)
        assert net.step(X, y, lr, momentum=mu, weight_decay=wd, masks=masks) == loss
        for path, layer in net.named_layers():
            updates = []
            if layer.is_weight:
                dW, db = grads[path]
                updates += [("W", dW + wd * before[(path, "W")])]    # weight decay on W only
                if layer.b is not None:
                    updates += [("b", db)]
                if rule == "kp" and layer.B is not None:            # Kolen-Pollack: B gets W's update
                    updates += [("B", (dW.T if layer.kind == "dense" else dW) + wd * before[(path, "B")])]
            elif layer.kind == "batchnorm":
                updates += [("gamma", grads[path][0]), ("beta", grads[path][1])]   # no decay
            for name, g in updates:
                velocity[(path, name)] = mu * velocity.get((path, name), 0) + g
                np.testing.assert_allclose(getattr(layer, name), before[(path, name)] - lr * velocity[(path, name)],
                                           rtol=1e-12, atol=1e-15, err_msg=f"{path} {name}")
            if rule == "usf" and layer.B is not None:  # B follows the new signs of W
                W = layer.W.T if layer.kind == "dense" else layer.W
                np.testing.assert_array_equal(layer.B, np.copysign(np.abs(before[(path, "B")]), W))


# ---------------------------------------------------------------------------
# Plain chains: the same as ReferenceChain
# ---------------------------------------------------------------------------

SMALL_INPUT = (2, 10, 10)
SMALL_CHAIN = [
    ("conv", dict(cin=2, cout=3, k=(3, 2), stride=(1, 1), pad=(1, 0), act="tanh")),
    ("maxpool", dict(k=(2, 2), stride=(2, 2))),
    ("conv", dict(cin=3, cout=2, k=(3, 3), stride=(2, 2), pad=(1, 1), act="leaky_relu")),
    ("meanpool", dict(k=(2, 2), stride=(1, 1))),
    ("flatten", {}),
    ("dense", dict(n_in=4, n_out=5, act="sigmoid")),
    ("dense", dict(n_in=5, n_out=3, act="identity")),
]
CHAIN_RULES = ["bp", "fa", "dfa", "usf", "frsf", "brsf", "kp", "wm", "drtp", "sdfa", "shallow"]


def split_activations(chain_layers):
    """The chain with each fused activation written as its own layer, and the path of each chain layer."""
    layers, paths = [], []
    for kind, opts in chain_layers:
        opts = dict(opts)
        act = opts.pop("act", "identity")
        paths.append(str(len(layers)))
        layers.append((kind, opts))
        if act != "identity":
            layers.append((act, {}))
    return layers, paths


def chain_and_net(rule, split, loss="cross_entropy"):
    chain = ReferenceChain(SMALL_CHAIN, SMALL_INPUT, rule, loss=loss).init_random(np.random.default_rng(40))
    layers, paths = split_activations(SMALL_CHAIN) if split else (SMALL_CHAIN, [str(i) for i in range(7)])
    net = ReferenceNet(layers, SMALL_INPUT, rule, loss=loss)
    shapes = net.feedback_shapes()
    for i, path in enumerate(paths):
        layer = net.layer(path)
        assert (shapes.get(path) is None) == (chain.B[i] is None), path
        if chain.W[i] is not None:
            layer.W, layer.b = chain.W[i].copy(), chain.b[i].copy()
        if chain.B[i] is not None:
            assert shapes[path] == chain.B[i].shape
            layer.B = chain.B[i].copy()
    return chain, net, paths


def assert_matches_chain(chain, net, paths, grads_chain, grads_net, **tol):
    assert len(grads_net) == len(net.named_layers())
    for i, path in enumerate(paths):
        for got, want in zip(grads_net[path], grads_chain[i]):
            if want is None:
                assert got is None, path
            else:
                np.testing.assert_allclose(got, want, err_msg=path, **tol)


@pytest.mark.parametrize("split", [False, True], ids=["fused", "separate-activations"])
@pytest.mark.parametrize("rule", CHAIN_RULES)
def test_plain_chains_equal_reference_chain(rule, split):
    loss = "mse" if rule in ("usf", "dfa", "shallow") else "cross_entropy"  # both losses, one per rule
    chain, net, paths = chain_and_net(rule, split, loss)
    rng = np.random.default_rng(41)
    batches = []
    for m in (5, 3):
        X = rng.normal(size=(m,) + SMALL_INPUT)
        batches.append((X, rng.integers(0, 3, m) if loss == "cross_entropy" else rng.normal(size=(m, 3))))
    X, y = batches[0]
    np.testing.assert_allclose(net.forward(X), chain.forward(X), rtol=1e-13)
    assert math.isclose(net.loss(X, y), chain.loss(X, y), rel_tol=1e-13)
    assert_matches_chain(chain, net, paths, chain.gradients(X, y), net.gradients(X, y), rtol=1e-11, atol=1e-14)

    # Steps with momentum and weight decay (wm with the same mirror noise in both).
    for k, (X, y) in enumerate(batches + batches):
        extra_chain, extra_net = {}, {}
        if rule == "wm":
            noise = [None if B is None else np.random.default_rng(50 + k).normal(size=(2, 4) + shape)
                     for B, shape in zip(chain.B, chain.in_shapes)]
            extra_chain = dict(mirror_noise=noise, mirror_lr=0.05, mirror_decay=0.5)
            extra_net = dict(mirror_noise={paths[i]: x for i, x in enumerate(noise) if x is not None},
                             mirror_lr=0.05, mirror_decay=0.5)
        lc = chain.step(X, y, 0.1, momentum=0.9, weight_decay=0.01, **extra_chain)
        ln = net.step(X, y, 0.1, momentum=0.9, weight_decay=0.01, **extra_net)
        assert math.isclose(lc, ln, rel_tol=1e-12)
    for i, path in enumerate(paths):
        layer = net.layer(path)
        for name, want in (("W", chain.W[i]), ("b", chain.b[i]), ("B", chain.B[i])):
            got = getattr(layer, name)
            if want is None:
                assert got is None
            else:
                np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13, err_msg=f"{path} {name}")


def test_init_random_of_a_plain_chain_draws_as_reference_chain_does():
    for rule in ("fa", "dfa"):
        chain = ReferenceChain(SMALL_CHAIN, SMALL_INPUT, rule).init_random(np.random.default_rng(3))
        net = ReferenceNet(SMALL_CHAIN, SMALL_INPUT, rule).init_random(np.random.default_rng(3))
        for i in range(7):
            for name in ("W", "b", "B"):
                want, got = getattr(chain, name)[i], getattr(net.layer(str(i)), name)
                assert (want is None and got is None) or np.array_equal(want, got)


# ---------------------------------------------------------------------------
# Bad input: a clear error naming the layer, before anything changes
# ---------------------------------------------------------------------------

def conv(cin, cout, k=3, **kw):
    return ("conv", dict(cin=cin, cout=cout, k=k, **kw))


HEAD = [("gap", {}), ("flatten", {}), ("dense", dict(n_in=4, n_out=2))]


@pytest.mark.parametrize("layers,kwargs,match", [
    ([("residual", dict(main=[conv(2, 4)]))] + HEAD, {},
     r"layer 0 \(residual\): main gives shape \(4, 3, 3\) but the identity shortcut gives \(2, 5, 5\)"),
    ([("residual", dict(main=[conv(2, 4)], shortcut=[conv(2, 4, k=1)]))] + HEAD, {},
     r"layer 0 \(residual\): main gives shape \(4, 3, 3\) but the shortcut gives \(4, 5, 5\)"),
    ([("residual", dict(main=[conv(2, 4, pad=1), ("residual", dict(main=[conv(4, 4)]))],
                        shortcut=[conv(2, 4, k=1)]))] + HEAD, {},
     r"layer 0\.main\.1 \(residual\): main gives shape \(4, 3, 3\) but the identity shortcut gives \(4, 5, 5\)"),
    ([("residual", dict(main=[conv(2, 4, stride=3, pad=1)], shortcut="pad"))] + HEAD, {},
     r"layer 0 \(residual\): main gives shape \(4, 2, 2\) but the 'pad' shortcut .* gives \(4, 3, 3\)"),
    ([("residual", dict(main=[conv(2, 5, pad=1)], shortcut="pad")), ("gap", {}), ("flatten", {}),
      ("dense", dict(n_in=5, n_out=2))], {}, r"layer 0 \(residual\): the 'pad' shortcut needs .* \(5, 5, 5\).*\(2, 5, 5\)"),
    ([conv(2, 4), ("batchnorm", dict(c=3))] + HEAD, {}, r"layer 1 \(batchnorm\): c=3 but its input has shape \(4, 3, 3\)"),
    ([("residual", dict(main=[("batchnorm", dict(c=4))]))] + HEAD, {}, r"layer 0\.main\.0 \(batchnorm\): c=4"),
    ([("dropout", dict(p=1.0))] + HEAD, {}, r"layer 0 \(dropout\): p must lie in \[0, 1\)"),
    ([("dropout", dict(p=-0.1))] + HEAD, {}, r"p must lie in \[0, 1\)"),
    ([conv(2, 4)] + HEAD, dict(rule="fa", feedback_points="layer"), "feedback_points .* rule 'fa' does not use it"),
    ([conv(2, 4)] + HEAD, dict(rule="bp", feedback_points="block"), "rule 'bp' does not use it"),
    ([conv(2, 4)] + HEAD, dict(rule="dfa", feedback_points="blocks"), "unknown feedback_points 'blocks'"),
    ([conv(2, 4)] + HEAD + [("relu", {})], {}, "the last layer must be dense"),
    ([conv(2, 4, bias=False, groups=2)] + HEAD, {}, r"layer 0 \(conv\): unknown options \['groups'\]"),
    ([("residual", dict(main=[], shortcut=None))] + HEAD, {}, "main must be a non-empty list"),
    ([("residual", dict(main=[conv(2, 2, pad=1)], shortcut="zeros"))] + HEAD, {}, "shortcut must be None, 'pad'"),
])
def test_construction_errors(layers, kwargs, match):
    kwargs = dict(dict(rule="bp"), **kwargs)
    with pytest.raises(ValueError, match=match):
        ReferenceNet(layers, (2, 5, 5), **kwargs)


@pytest.mark.parametrize("layers,shape,path", [
    ([("conv", dict(cin=1, cout=2, k=4)), ("batchnorm", dict(c=2)), ("flatten", {}), ("dense", dict(n_in=2, n_out=3))],
     (1, 4, 4), "1"),                                                     # (C, 1, 1): one value per channel
    ([("batchnorm", dict(c=3)), ("dense", dict(n_in=3, n_out=2))], (3,), "0"),   # (F,)
    ([("residual", dict(main=[("dense", dict(n_in=3, n_out=3)), ("batchnorm", dict(c=3))])),
      ("dense", dict(n_in=3, n_out=2))], (3,), "0.main.1"),
])
def test_one_value_per_channel_in_training_is_refused_before_anything_changes(layers, shape, path):
    net = ReferenceNet(layers, shape, "kp").init_random(np.random.default_rng(0), affine_std=0.2)
    X1, y1 = np.ones((1,) + shape), np.array([1])
    before = snapshot(net)
    message = rf"layer {re.escape(path)} \(batchnorm\): expected more than 1 value per channel"
    for call in (lambda: net.step(X1, y1, 0.1), lambda: net.gradients(X1, y1), lambda: net.forward(X1)):
        with pytest.raises(ValueError, match=message):
            call()
    assert_same(net, before)
    assert net._velocity == {}
    net.eval()
    net.forward(X1)  # evaluation mode takes one sample
    net.gradients(X1, y1)
    # Two samples are enough, and so is one sample of an image with several pixels per channel.
    net.train().step(np.ones((2,) + shape), np.array([0, 1]), 0.1)
    ReferenceNet(BN_NET, (1, 4, 4), "bp").step(np.ones((1, 1, 4, 4)), y1, 0.1)


def test_bad_masks_and_parameters_are_refused_before_anything_changes():
    net = resnet("fa")
    X, y, masks = resnet_batch()
    before = snapshot(net)
    bad = [({}, r"layer 9 \(dropout\): training mode needs masks\['9'\]"),
           ({"9": np.ones((4, 5))}, r"masks\['9'\] must have shape \(4, 6\)"),
           ({"9": np.full((4, 6), 2.0)}, r"may hold only 0 and 1/\(1-p\) = 1\.33333"),
           (dict(masks, **{"8": np.ones((4, 6))}), r"masks for \['8'\], which are not dropout layers")]
    for m, match in bad:
        with pytest.raises(ValueError, match=match):
            net.step(X, y, 0.1, masks=m)
    net.layer("3.main.1").gamma = np.ones(7)
    with pytest.raises(ValueError, match=r"layer 3\.main\.1 \(batchnorm\): gamma must be a float64 array of shape \(8,\)"):
        net.step(X, y, 0.1, masks=masks)
    net.layer("3.main.1").gamma = before[("3.main.1", "gamma")].copy()
    net.layer("0").B = np.ones((4, 2, 3, 3))
    with pytest.raises(ValueError, match=r"layer 0 \(conv\): B must be None"):
        net.gradients(X, y, masks)
    net.layer("0").B = None
    with pytest.raises(ValueError, match="X must have shape"):
        net.step(X[:, :1], y, 0.1, masks=masks)
    with pytest.raises(ValueError, match="rule 'wm' needs mirror_noise"):
        resnet("wm").step(X, y, 0.1, masks=masks)
    assert_same(net, before)
    assert net._velocity == {}
