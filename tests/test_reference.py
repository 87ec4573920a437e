"""Tests of the plain NumPy reference implementation (tests/reference.py).

These tests need nothing but NumPy and pytest: the oracle is a plain module in
the tests folder (pytest puts that folder on sys.path), so the ``pyjlfa``
package is never imported for it.
"""

import math

import numpy as np
import pytest

import reference as ref

ReferenceNetwork = ref.ReferenceNetwork


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------

def random_params(sizes, rule, rng, scale=0.5, dtype=np.float64):
    """Random Ws, bs and Bs (with the shapes feedback_shapes asks for)."""
    Ws = [rng.normal(0, scale, (sizes[k], sizes[k + 1])).astype(dtype) for k in range(len(sizes) - 1)]
    bs = [rng.normal(0, scale, sizes[k + 1]).astype(dtype) for k in range(len(sizes) - 1)]
    Bs = [None if shape is None else rng.normal(0, scale, shape).astype(dtype)
          for shape in ref.feedback_shapes(sizes, rule)]
    return Ws, bs, Bs


def random_targets(loss, m, n_out, rng):
    if loss == "cross_entropy":
        return rng.integers(0, n_out, m)
    return rng.normal(0, 1, (m, n_out))


def hidden_preactivations(net, X):
    """All hidden pre-activations a_k, computed independently of the module."""
    out = []
    h = X
    for k in range(len(net.Ws) - 1):
        a = h @ net.Ws[k] + net.bs[k]
        out.append(a)
        h = {
            "tanh": np.tanh,
            "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
            "relu": lambda x: np.maximum(x, 0),
            "leaky_relu": lambda x: np.where(x > 0, x, 0.01 * x),
            "identity": lambda x: x,
        }[net.activation](a)
    return out


def finite_difference_gradients(net, X, y, eps=1e-6):
    """Central differences of net.loss with respect to every parameter."""
    grads = []
    for k in range(len(net.Ws)):
        pair = []
        for P in (net.Ws[k], net.bs[k]):
            G = np.zeros_like(P)
            for idx in np.ndindex(P.shape):
                old = P[idx]
                P[idx] = old + eps
                up = net.loss(X, y)
                P[idx] = old - eps
                down = net.loss(X, y)
                P[idx] = old
                G[idx] = (up - down) / (2 * eps)
            pair.append(G)
        grads.append(tuple(pair))
    return grads


def assert_grads_close(got, expected, **tol):
    assert len(got) == len(expected)
    for k, ((dW, db), (eW, eb)) in enumerate(zip(got, expected)):
        np.testing.assert_allclose(dW, eW, err_msg=f"dW[{k}]", **tol)
        np.testing.assert_allclose(db, eb, err_msg=f"db[{k}]", **tol)


def separable_problem(rng, n=60):
    """Two classes in 2-D split by the line x0 + x1 = 0, with a margin."""
    X = rng.normal(0, 1, (n, 2))
    y = (X[:, 0] + X[:, 1] > 0).astype(np.int64)
    X = X + 0.5 * np.where(y[:, None] == 1, 1.0, -1.0)  # push the classes apart
    return X, y


# ---------------------------------------------------------------------------
# feedback_shapes and construction
# ---------------------------------------------------------------------------

def test_feedback_shapes():
    sizes = [5, 4, 3, 2]
    assert ref.feedback_shapes(sizes, "bp") == [None, None, None]
    assert ref.feedback_shapes(sizes, "fa") == [None, (3, 4), (2, 3)]
    assert ref.feedback_shapes(sizes, "dfa") == [(2, 4), (2, 3), None]
    # A network without hidden layers has no feedback at all.
    for rule in ref.RULES:
        assert ref.feedback_shapes([3, 2], rule) == [None]
    with pytest.raises(ValueError):
        ref.feedback_shapes(sizes, "backprop")


def test_constants():
    assert ref.ACTIVATIONS == ("tanh", "sigmoid", "relu", "leaky_relu", "identity")
    assert ref.RULES == ("bp", "fa", "dfa", "usf", "frsf", "brsf", "kp", "wm", "drtp", "sdfa", "shallow")
    assert ref.LOSSES == ("cross_entropy", "mse")


def test_constructor_copies_and_keeps_dtype():
    rng = np.random.default_rng(0)
    sizes = [3, 4, 2]
    for dtype in (np.float32, np.float64):
        Ws, bs, Bs = random_params(sizes, "fa", rng, dtype=dtype)
        net = ReferenceNetwork(Ws, bs, Bs, activation="relu", rule="fa", loss="mse")
        assert (net.activation, net.rule, net.loss_name) == ("relu", "fa", "mse")
        # Copies, not views.
        Ws[0][0, 0] += 1.0
        bs[1][0] += 1.0
        Bs[1][0, 0] += 1.0
        assert net.Ws[0][0, 0] != Ws[0][0, 0]
        assert net.bs[1][0] != bs[1][0]
        assert net.Bs[1][0, 0] != Bs[1][0, 0]
        # Everything computed in the dtype of Ws[0], even from float64 inputs.
        X = rng.normal(0, 1, (5, 3))
        Y = rng.normal(0, 1, (5, 2))
        assert net.forward(X).dtype == dtype
        for dW, db in net.gradients(X, Y):
            assert dW.dtype == dtype and db.dtype == dtype
        net.step(X, Y, lr=np.float64(0.1), momentum=np.float64(0.9))
        assert all(W.dtype == dtype for W in net.Ws)
        assert all(b.dtype == dtype for b in net.bs)
        assert isinstance(net.loss(X, Y), float)


def test_constructor_validates():
    rng = np.random.default_rng(1)
    sizes = [3, 4, 5, 2]
    Ws, bs, Bs_fa = random_params(sizes, "fa", rng)
    _, _, Bs_dfa = random_params(sizes, "dfa", rng)
    ReferenceNetwork(Ws, bs, None, rule="bp")
    ReferenceNetwork(Ws, bs, [None, None, None], rule="bp")
    ReferenceNetwork(Ws, bs, Bs_fa, rule="fa")
    ReferenceNetwork(Ws, bs, Bs_dfa, rule="dfa")
    with pytest.raises(ValueError):
        ReferenceNetwork(Ws, bs, None, rule="fa")  # FA needs feedback
    with pytest.raises(ValueError):
        ReferenceNetwork(Ws, bs, Bs_dfa, rule="fa")  # wrong shapes
    with pytest.raises(ValueError):
        ReferenceNetwork(Ws, bs, Bs_fa, rule="dfa")  # wrong shapes
    with pytest.raises(ValueError):
        ReferenceNetwork(Ws, bs, Bs_fa[:2], rule="fa")  # too few entries
    with pytest.raises(ValueError):
        ReferenceNetwork(Ws, bs, [Ws[0].T] + Bs_fa[1:], rule="fa")  # B[0] must be None
    with pytest.raises(ValueError):
        ReferenceNetwork(Ws, bs, Bs_fa, rule="bp")  # BP takes no feedback
    with pytest.raises(ValueError):
        ReferenceNetwork([Ws[0], Ws[2], Ws[1]], bs, None, rule="bp")  # layers do not chain
    with pytest.raises(ValueError):
        ReferenceNetwork(Ws, bs[:2], None, rule="bp")
    with pytest.raises(ValueError):
        ReferenceNetwork(Ws, [bs[0], bs[0], bs[2]], None, rule="bp")
    with pytest.raises(ValueError):
        ReferenceNetwork(Ws, bs, None, rule="bp", activation="softplus")
    with pytest.raises(ValueError):
        ReferenceNetwork(Ws, bs, None, rule="bp", loss="hinge")
    with pytest.raises(TypeError):
        ReferenceNetwork([W.astype(np.int64) for W in Ws], bs, None, rule="bp")

    net = ReferenceNetwork(Ws, bs, None, rule="bp")
    X = rng.normal(0, 1, (4, 3))
    with pytest.raises(ValueError):
        net.loss(X, np.array([0, 1, 2, 1]))  # label out of range
    with pytest.raises(ValueError):
        net.loss(X, np.array([0, 1, 1]))  # wrong number of labels
    with pytest.raises(ValueError):
        net.forward(X[:, :2])  # wrong number of features


# ---------------------------------------------------------------------------
# Forward pass and loss
# ---------------------------------------------------------------------------

def test_activations_in_forward():
    # With W[0] = I, b[0] = 0, W[1] = I, b[1] = 0 the output is f(X) itself.
    x = np.array([[-2.0, -0.5, 0.0, 0.5, 3.0]])
    eye = np.eye(5)
    expected = {
        "tanh": np.tanh(x),
        "sigmoid": 1 / (1 + np.exp(-x)),
        "relu": np.array([[0.0, 0.0, 0.0, 0.5, 3.0]]),
        "leaky_relu": np.array([[-0.02, -0.005, 0.0, 0.5, 3.0]]),
        "identity": x,
    }
    for name in ref.ACTIVATIONS:
        net = ReferenceNetwork([eye, eye], [np.zeros(5), np.zeros(5)], None,
                               activation=name, rule="bp", loss="mse")
        np.testing.assert_allclose(net.forward(x), expected[name], rtol=1e-15, atol=1e-15,
                                   err_msg=name)


def test_sigmoid_does_not_overflow():
    eye = np.eye(2)
    net = ReferenceNetwork([eye, eye], [np.zeros(2), np.zeros(2)], None,
                           activation="sigmoid", rule="bp", loss="mse")
    with np.errstate(over="raise"):
        z = net.forward(np.array([[-1000.0, 1000.0]]))
    np.testing.assert_array_equal(z, [[0.0, 1.0]])


def test_cross_entropy_is_stable_and_probabilities_sum_to_one():
    # A single linear layer (no hidden layer), huge logits.
    W = np.array([[1000.0, 0.0, -1000.0]])
    net = ReferenceNetwork([W], [np.zeros(3)], None, rule="bp")
    X = np.array([[1.0], [-1.0]])
    y = np.array([0, 1])
    # Sample 1: z = (1000, 0, -1000), label 0 -> loss ~ 0.
    # Sample 2: z = (-1000, 0, 1000), label 1 -> loss ~ 1000.
    assert math.isclose(net.loss(X, y), 500.0, rel_tol=1e-12)
    P = net.predict_proba(X)
    assert np.all(np.isfinite(P))
    np.testing.assert_allclose(P.sum(axis=1), 1.0)
    for dW, db in net.gradients(X, y):
        assert np.all(np.isfinite(dW)) and np.all(np.isfinite(db))

    mse_net = ReferenceNetwork([W], [np.zeros(3)], None, rule="bp", loss="mse")
    with pytest.raises(ValueError):
        mse_net.predict_proba(X)


# ---------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("activation", ref.ACTIVATIONS)
def test_bp_gradients_match_finite_differences(activation, loss):
    sizes = [5, 4, 3, 3]
    m = 6
    # Look for a draw whose hidden pre-activations all keep away from 0, so the
    # kinks of relu and leaky_relu do not spoil the finite differences.
    for seed in range(100):
        rng = np.random.default_rng(seed)
        Ws, bs, _ = random_params(sizes, "bp", rng)
        net = ReferenceNetwork(Ws, bs, None, activation=activation, rule="bp", loss=loss)
        X = rng.normal(0, 1, (m, sizes[0]))
        y = random_targets(loss, m, sizes[-1], rng)
        margin = min(np.abs(a).min() for a in hidden_preactivations(net, X))
        if margin > 1e-3:
            break
    else:
        pytest.fail("no random draw kept the pre-activations away from 0")

    got = net.gradients(X, y)
    expected = finite_difference_gradients(net, X, y)
    assert_grads_close(got, expected, rtol=1e-6, atol=1e-9)
    # The gradients are not trivially zero.
    assert max(np.abs(dW).max() for dW, _ in got) > 1e-3


def test_gradients_do_not_change_the_network():
    rng = np.random.default_rng(2)
    sizes = [4, 3, 3, 2]
    Ws, bs, Bs = random_params(sizes, "fa", rng)
    net = ReferenceNetwork(Ws, bs, Bs, rule="fa")
    X = rng.normal(0, 1, (5, 4))
    y = rng.integers(0, 2, 5)
    before = net.loss(X, y)
    g1 = net.gradients(X, y)
    g2 = net.gradients(X, y)
    assert net.loss(X, y) == before
    for W, W0 in zip(net.Ws, Ws):
        np.testing.assert_array_equal(W, W0)
    assert_grads_close(g1, g2, rtol=0, atol=0)


@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_fa_with_transposed_weights_is_bp(activation, loss):
    rng = np.random.default_rng(3)
    sizes = [6, 5, 4, 3]
    Ws, bs, _ = random_params(sizes, "bp", rng)
    Bs = [None] + [W.T.copy() for W in Ws[1:]]
    bp = ReferenceNetwork(Ws, bs, None, activation=activation, rule="bp", loss=loss)
    fa = ReferenceNetwork(Ws, bs, Bs, activation=activation, rule="fa", loss=loss)
    X = rng.normal(0, 1, (7, 6))
    y = random_targets(loss, 7, 3, rng)
    assert_grads_close(fa.gradients(X, y), bp.gradients(X, y), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid"])
def test_dfa_with_one_hidden_layer_and_transposed_weights_is_bp(activation, loss):
    rng = np.random.default_rng(4)
    sizes = [6, 5, 3]
    Ws, bs, _ = random_params(sizes, "bp", rng)
    Bs = [Ws[1].T.copy(), None]
    bp = ReferenceNetwork(Ws, bs, None, activation=activation, rule="bp", loss=loss)
    dfa = ReferenceNetwork(Ws, bs, Bs, activation=activation, rule="dfa", loss=loss)
    X = rng.normal(0, 1, (7, 6))
    y = random_targets(loss, 7, 3, rng)
    assert_grads_close(dfa.gradients(X, y), bp.gradients(X, y), rtol=1e-12, atol=1e-15)


def test_deep_dfa_sends_the_output_error_directly():
    # With linear hidden layers BP's delta_0 is e @ W[2].T @ W[1].T, so DFA with
    # B[1] = W[2].T and B[0] = W[2].T @ W[1].T must reproduce BP; if DFA fed
    # delta_1 instead of e to layer 0 it would not.
    rng = np.random.default_rng(5)
    sizes = [6, 5, 4, 3]
    Ws, bs, _ = random_params(sizes, "bp", rng)
    Bs = [Ws[2].T @ Ws[1].T, Ws[2].T.copy(), None]
    bp = ReferenceNetwork(Ws, bs, None, activation="identity", rule="bp")
    dfa = ReferenceNetwork(Ws, bs, Bs, activation="identity", rule="dfa")
    X = rng.normal(0, 1, (7, 6))
    y = rng.integers(0, 3, 7)
    assert_grads_close(dfa.gradients(X, y), bp.gradients(X, y), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("rule", ["fa", "dfa"])
def test_random_feedback_changes_only_hidden_gradients(rule):
    rng = np.random.default_rng(6)
    sizes = [6, 5, 4, 3]
    Ws, bs, Bs = random_params(sizes, rule, rng)
    bp = ReferenceNetwork(Ws, bs, None, rule="bp")
    other = ReferenceNetwork(Ws, bs, Bs, rule=rule)
    X = rng.normal(0, 1, (7, 6))
    y = rng.integers(0, 3, 7)
    g_bp = bp.gradients(X, y)
    g = other.gradients(X, y)
    # The output layer learns from e under every rule.
    np.testing.assert_array_equal(g[-1][0], g_bp[-1][0])
    np.testing.assert_array_equal(g[-1][1], g_bp[-1][1])
    # The hidden layers follow the random feedback instead of W.T.
    for k in range(len(sizes) - 2):
        assert not np.allclose(g[k][0], g_bp[k][0])


# ---------------------------------------------------------------------------
# Hand calculations
# ---------------------------------------------------------------------------

def test_hand_calculation_cross_entropy_bp():
    # sizes [2, 2, 2], identity activation, two samples, BP.
    X = [[1.0, 2.0], [0.5, -1.0]]
    W0 = [[0.1, -0.2], [0.3, 0.4]]
    b0 = [0.01, -0.02]
    W1 = [[0.5, -0.6], [0.7, 0.8]]
    b1 = [0.1, 0.0]
    y = [0, 1]
    m = 2

    # Hidden layer (identity): h = a = x @ W0 + b0, worked out by hand.
    #   sample 0: [1*0.1 + 2*0.3 + 0.01, 1*(-0.2) + 2*0.4 - 0.02]   = [0.71, 0.58]
    #   sample 1: [0.5*0.1 - 1*0.3 + 0.01, 0.5*(-0.2) - 1*0.4 - 0.02] = [-0.24, -0.52]
    h = [[0.71, 0.58], [-0.24, -0.52]]
    # Logits z = h @ W1 + b1.
    z = [[h[i][0] * W1[0][c] + h[i][1] * W1[1][c] + b1[c] for c in range(2)] for i in range(2)]
    #   sample 0: [0.71*0.5 + 0.58*0.7 + 0.1, 0.71*(-0.6) + 0.58*0.8] = [0.861, 0.038]
    assert math.isclose(z[0][0], 0.861) and math.isclose(z[0][1], 0.038)
    # Softmax and loss.
    p = []
    for i in range(2):
        s = math.exp(z[i][0]) + math.exp(z[i][1])
        p.append([math.exp(z[i][0]) / s, math.exp(z[i][1]) / s])
    expected_loss = -(math.log(p[0][y[0]]) + math.log(p[1][y[1]])) / m
    # e = (p - onehot(y)) / m.
    e = [[(p[i][c] - (1.0 if c == y[i] else 0.0)) / m for c in range(2)] for i in range(2)]
    # Output layer: dW1[j][c] = sum_i h[i][j] e[i][c];  db1[c] = sum_i e[i][c].
    dW1 = [[h[0][j] * e[0][c] + h[1][j] * e[1][c] for c in range(2)] for j in range(2)]
    db1 = [e[0][c] + e[1][c] for c in range(2)]
    # Hidden layer (BP, f' = 1): delta0[i][j] = sum_c e[i][c] W1[j][c].
    d0 = [[e[i][0] * W1[j][0] + e[i][1] * W1[j][1] for j in range(2)] for i in range(2)]
    dW0 = [[X[0][r] * d0[0][j] + X[1][r] * d0[1][j] for j in range(2)] for r in range(2)]
    db0 = [d0[0][j] + d0[1][j] for j in range(2)]

    net = ReferenceNetwork([np.array(W0), np.array(W1)], [np.array(b0), np.array(b1)], None,
                           activation="identity", rule="bp", loss="cross_entropy")
    Xa, ya = np.array(X), np.array(y)
    assert math.isclose(net.loss(Xa, ya), expected_loss, rel_tol=1e-12)
    np.testing.assert_allclose(net.forward(Xa), z, rtol=1e-12)
    np.testing.assert_allclose(net.predict_proba(Xa), p, rtol=1e-12)
    (gW0, gb0), (gW1, gb1) = net.gradients(Xa, ya)
    np.testing.assert_allclose(gW1, dW1, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gb1, db1, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gW0, dW0, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(gb0, db0, rtol=1e-12, atol=1e-15)

    # One SGD step: W -= lr * dW, and step returns the loss before the update.
    lr = 0.5
    assert math.isclose(net.step(Xa, ya, lr), expected_loss, rel_tol=1e-12)
    np.testing.assert_allclose(net.Ws[0], [[W0[r][j] - lr * dW0[r][j] for j in range(2)] for r in range(2)],
                               rtol=1e-12)
    np.testing.assert_allclose(net.bs[1], [b1[c] - lr * db1[c] for c in range(2)], rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("rule", ["fa", "dfa"])
def test_hand_calculation_mse_feedback(rule):
    # sizes [2, 2, 2], identity activation, one sample, MSE. With one hidden
    # layer FA's B[1] and DFA's B[0] are both (2, 2) and play the same role.
    x = np.array([[2.0, 1.0]])
    W0 = np.array([[0.5, -1.0], [1.0, 0.5]])
    b0 = np.array([0.0, 0.5])
    W1 = np.array([[1.0, 0.5], [-1.0, 2.0]])
    b1 = np.array([0.5, 0.0])
    B = np.array([[1.0, 2.0], [0.0, -1.0]])
    target = np.array([[3.0, 0.0]])
    Bs = [None, B] if rule == "fa" else [B, None]
    net = ReferenceNetwork([W0, W1], [b0, b1], Bs, activation="identity", rule=rule, loss="mse")

    # a0 = [2*0.5 + 1*1 + 0, 2*(-1) + 1*0.5 + 0.5] = [2, -1] = h0
    # z  = [2*1 + (-1)*(-1) + 0.5, 2*0.5 + (-1)*2 + 0] = [3.5, -1]
    # z - y = [0.5, -1];  loss = 0.5 * (0.25 + 1) = 0.625;  e = [0.5, -1] (m = 1)
    np.testing.assert_allclose(net.forward(x), [[3.5, -1.0]])
    assert math.isclose(net.loss(x, target), 0.625)
    (gW0, gb0), (gW1, gb1) = net.gradients(x, target)
    # dW1 = h0.T @ e = [[2*0.5, 2*(-1)], [(-1)*0.5, (-1)*(-1)]]
    np.testing.assert_allclose(gW1, [[1.0, -2.0], [-0.5, 1.0]])
    np.testing.assert_allclose(gb1, [0.5, -1.0])
    # delta0 = e @ B = [0.5*1 + (-1)*0, 0.5*2 + (-1)*(-1)] = [0.5, 2]
    # (BP would give e @ W1.T = [0, -2.5].)
    # dW0 = x.T @ delta0 = [[2*0.5, 2*2], [1*0.5, 1*2]]
    np.testing.assert_allclose(gW0, [[1.0, 4.0], [0.5, 2.0]])
    np.testing.assert_allclose(gb0, [0.5, 2.0])

    # After one step with lr = 0.1: W0 - 0.1 * dW0, and B stays fixed.
    net.step(x, target, lr=0.1)
    np.testing.assert_allclose(net.Ws[0], [[0.4, -1.4], [0.95, 0.3]])
    np.testing.assert_allclose(net.bs[0], [-0.05, 0.3])
    np.testing.assert_allclose(net.Ws[1], [[0.9, 0.7], [-0.95, 1.9]])
    np.testing.assert_array_equal(net.Bs[1 if rule == "fa" else 0], B)


def test_hand_calculation_leaky_relu_derivative():
    # Same numbers as above with BP and leaky_relu: a0 = [2, -1], so
    # h0 = [2, -0.01] and f'(a0) = [1, 0.01].
    x = np.array([[2.0, 1.0]])
    W0 = np.array([[0.5, -1.0], [1.0, 0.5]])
    b0 = np.array([0.0, 0.5])
    W1 = np.array([[1.0, 0.5], [-1.0, 2.0]])
    b1 = np.array([0.5, 0.0])
    target = np.array([[3.0, 0.0]])
    net = ReferenceNetwork([W0, W1], [b0, b1], None, activation="leaky_relu", rule="bp", loss="mse")
    # z = [2*1 + (-0.01)*(-1) + 0.5, 2*0.5 + (-0.01)*2] = [2.51, 0.98]
    # e = z - y = [-0.49, 0.98];  loss = 0.5 * (0.2401 + 0.9604) = 0.60025
    assert math.isclose(net.loss(x, target), 0.60025)
    (gW0, gb0), (gW1, gb1) = net.gradients(x, target)
    # dW1 = h0.T @ e = [[2*(-0.49), 2*0.98], [(-0.01)*(-0.49), (-0.01)*0.98]]
    np.testing.assert_allclose(gW1, [[-0.98, 1.96], [0.0049, -0.0098]])
    # e @ W1.T = [-0.49*1 + 0.98*0.5, -0.49*(-1) + 0.98*2] = [0, 2.45]
    # delta0 = [0 * 1, 2.45 * 0.01] = [0, 0.0245];  dW0 = x.T @ delta0
    np.testing.assert_allclose(gb0, [0.0, 0.0245], atol=1e-15)
    np.testing.assert_allclose(gW0, [[0.0, 0.049], [0.0, 0.0245]], atol=1e-15)


def test_relu_derivative_at_zero_is_the_negative_side():
    # x = 0 and b0 = 0 make the hidden pre-activation exactly 0; by convention
    # f'(0) is the slope of the negative side: 0 for relu, 0.01 for leaky_relu.
    # z = 0, target 1: e = -1, delta0 = e * W1 * f'(0), db0 = delta0.
    x = np.array([[0.0]])
    target = np.array([[1.0]])
    for activation, slope in (("relu", 0.0), ("leaky_relu", 0.01)):
        net = ReferenceNetwork([np.array([[1.0]]), np.array([[1.0]])], [np.zeros(1), np.zeros(1)],
                               None, activation=activation, rule="bp", loss="mse")
        (gW0, gb0), (gW1, gb1) = net.gradients(x, target)
        np.testing.assert_array_equal(gb1, [-1.0])
        np.testing.assert_allclose(gb0, [-slope], rtol=1e-15, err_msg=activation)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("loss", ref.LOSSES)
@pytest.mark.parametrize("rule", ("bp", "fa", "dfa"))  # the rest of the family: test_rules.py
def test_step_decreases_the_loss(rule, loss):
    rng = np.random.default_rng(7)
    X, labels = separable_problem(rng)
    y = labels if loss == "cross_entropy" else np.eye(2)[labels]
    sizes = [2, 8, 8, 2]
    Ws, bs, Bs = random_params(sizes, rule, rng)
    net = ReferenceNetwork(Ws, bs, Bs, activation="tanh", rule=rule, loss=loss)
    losses = [net.step(X, y, lr=0.2) for _ in range(60)]
    final = net.loss(X, y)
    assert losses[3] < losses[0]  # it goes down within a few steps
    assert final < 0.5 * losses[0]
    accuracy = np.mean(net.forward(X).argmax(axis=1) == labels)
    assert accuracy >= 0.95


def test_step_returns_the_loss_before_the_update_and_applies_minus_lr_grad():
    rng = np.random.default_rng(8)
    sizes = [3, 4, 2]
    Ws, bs, Bs = random_params(sizes, "dfa", rng)
    net = ReferenceNetwork(Ws, bs, Bs, activation="sigmoid", rule="dfa")
    X = rng.normal(0, 1, (5, 3))
    y = rng.integers(0, 2, 5)
    before = net.loss(X, y)
    grads = net.gradients(X, y)
    assert net.step(X, y, lr=0.3) == before
    for k, (dW, db) in enumerate(grads):
        np.testing.assert_allclose(net.Ws[k], Ws[k] - 0.3 * dW, rtol=1e-15)
        np.testing.assert_allclose(net.bs[k], bs[k] - 0.3 * db, rtol=1e-15)
    np.testing.assert_array_equal(net.Bs[0], Bs[0])


@pytest.mark.parametrize("rule", ("bp", "fa", "dfa"))  # the rest of the family: test_rules.py
def test_momentum_two_steps_by_hand(rule):
    rng = np.random.default_rng(9)
    sizes = [3, 4, 4, 2]
    Ws, bs, Bs = random_params(sizes, rule, rng)
    X1, X2 = rng.normal(0, 1, (5, 3)), rng.normal(0, 1, (4, 3))
    y1, y2 = rng.integers(0, 2, 5), rng.integers(0, 2, 4)
    lr, mu = 0.1, 0.9

    net = ReferenceNetwork(Ws, bs, Bs, activation="tanh", rule=rule)
    # Step 1: v1 = g1 (velocity starts at 0), W1 = W0 - lr * g1.
    g1 = net.gradients(X1, y1)
    net.step(X1, y1, lr, momentum=mu)
    W1 = [W - lr * dW for W, (dW, _) in zip(Ws, g1)]
    b1 = [b - lr * db for b, (_, db) in zip(bs, g1)]
    for k in range(3):
        np.testing.assert_allclose(net.Ws[k], W1[k], rtol=1e-14)
        np.testing.assert_allclose(net.bs[k], b1[k], rtol=1e-14)
    # Step 2: g2 is the gradient at (W1, b1); v2 = mu * g1 + g2; W2 = W1 - lr * v2.
    g2 = ReferenceNetwork(W1, b1, Bs, activation="tanh", rule=rule).gradients(X2, y2)
    net.step(X2, y2, lr, momentum=mu)
    for k in range(3):
        vW = mu * g1[k][0] + g2[k][0]
        vb = mu * g1[k][1] + g2[k][1]
        np.testing.assert_allclose(net.Ws[k], W1[k] - lr * vW, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(net.bs[k], b1[k] - lr * vb, rtol=1e-12, atol=1e-15)
        # ...which differs from plain SGD.
        assert not np.allclose(net.Ws[k], W1[k] - lr * g2[k][0])


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_train_epoch_equals_steps_on_slices(momentum):
    rng = np.random.default_rng(10)
    sizes = [3, 5, 3]
    Ws, bs, Bs = random_params(sizes, "fa", rng)
    n, batch_size, lr = 10, 4, 0.2
    X = rng.normal(0, 1, (n, 3))
    y = rng.integers(0, 3, n)
    order = rng.permutation(n)

    a = ReferenceNetwork(Ws, bs, Bs, activation="relu", rule="fa")
    b = ReferenceNetwork(Ws, bs, Bs, activation="relu", rule="fa")
    epoch_loss = a.train_epoch(X, y, batch_size, lr, momentum=momentum, order=order)

    batch_losses = []
    for start in (0, 4, 8):  # batches of 4, 4 and 2
        idx = order[start:start + batch_size]
        batch_losses.append(b.step(X[idx], y[idx], lr, momentum=momentum))
    expected = (4 * batch_losses[0] + 4 * batch_losses[1] + 2 * batch_losses[2]) / 10
    assert math.isclose(epoch_loss, expected, rel_tol=1e-12)
    for k in range(2):
        np.testing.assert_allclose(a.Ws[k], b.Ws[k], rtol=1e-14, atol=1e-15)
        np.testing.assert_allclose(a.bs[k], b.bs[k], rtol=1e-14, atol=1e-15)
    # The order matters (so the test above can tell orders apart).
    c = ReferenceNetwork(Ws, bs, Bs, activation="relu", rule="fa")
    c.train_epoch(X, y, batch_size, lr, momentum=momentum)
    assert not np.allclose(c.Ws[0], a.Ws[0])


def test_train_epoch_default_order_and_validation():
    rng = np.random.default_rng(11)
    sizes = [3, 4, 2]
    Ws, bs, Bs = random_params(sizes, "dfa", rng)
    X = rng.normal(0, 1, (7, 3))
    Y = rng.normal(0, 1, (7, 2))
    a = ReferenceNetwork(Ws, bs, Bs, rule="dfa", loss="mse")
    b = ReferenceNetwork(Ws, bs, Bs, rule="dfa", loss="mse")
    la = a.train_epoch(X, Y, 3, 0.1)
    lb = b.train_epoch(X, Y, 3, 0.1, order=np.arange(7))
    assert la == lb
    for k in range(2):
        np.testing.assert_array_equal(a.Ws[k], b.Ws[k])
    # A batch as large as the data set is a single full-batch step.
    c = ReferenceNetwork(Ws, bs, Bs, rule="dfa", loss="mse")
    d = ReferenceNetwork(Ws, bs, Bs, rule="dfa", loss="mse")
    assert c.train_epoch(X, Y, 100, 0.1) == d.step(X, Y, 0.1)
    np.testing.assert_array_equal(c.Ws[0], d.Ws[0])
    with pytest.raises(ValueError):
        a.train_epoch(X, Y, 3, 0.1, order=[0, 1, 2, 3, 4, 5, 5])
    with pytest.raises(ValueError):
        a.train_epoch(X, Y, 3, 0.1, order=np.arange(6))
    with pytest.raises(ValueError):
        a.train_epoch(X, Y, 0, 0.1)
