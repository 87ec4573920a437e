import os

import numpy as np
import pytest

# scikit-learn's estimator checks include an array-API input check that runs (rather than skips)
# only with scipy's array-API mode on, which must be set before scipy is first imported.
os.environ.setdefault("SCIPY_ARRAY_API", "1")

import pyjlfa
from reference import ReferenceNetwork

ACTIVATIONS = ("tanh", "sigmoid", "relu", "leaky_relu", "identity")
RULES = ("bp", "fa", "dfa")
LOSSES = ("cross_entropy", "mse")
# float64 must agree to 1e-10 relative; float32 to 1e-4 (its epsilon is 1.2e-7, and Julia's
# float32 tanh is a rational approximation, NumPy's is libm's).
TOLERANCE = {"float64": dict(rtol=1e-10, atol=1e-12), "float32": dict(rtol=1e-4, atol=1e-5)}


def reference_of(net):
    """A NumPy reference network holding copies of a pyjlfa network's current parameters."""
    return ReferenceNetwork([l.W.copy() for l in net.layers], [l.b.copy() for l in net.layers],
                            [None if l.B is None else l.B.copy() for l in net.layers],
                            activation=net.activation, rule=net.rule, loss=net.loss)


def batch(net, m, seed=1):
    """Random inputs and targets of the right kind for `net`."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(m, net.n_features)).astype(net.dtype)
    if net.loss == "cross_entropy":
        y = rng.integers(0, net.n_outputs, size=m)
    else:
        y = rng.normal(size=(m, net.n_outputs)).astype(net.dtype)
    return X, y


def snapshot(net):
    return [(l.W.copy(), l.b.copy(), None if l.B is None else l.B.copy()) for l in net.layers]


def assert_unchanged(net, before):
    for (W, b, B), layer in zip(before, net.layers):
        np.testing.assert_array_equal(layer.W, W)
        np.testing.assert_array_equal(layer.b, b)
        if B is not None:
            np.testing.assert_array_equal(layer.B, B)


# Module fixtures that start a julia process (shared by their module's tests).
SPAWNING_FIXTURES = {"julia_session", "round_trips", "mutation_run"}


def pytest_collection_modifyitems(config, items):
    """Tests that use a process-starting fixture are marked `subprocess`. Tests that need the system image run
    last: a build started by scripts/setup.sh then has the whole run to finish in the background first."""
    for item in items:
        if SPAWNING_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.subprocess)
    items.sort(key=lambda item: item.get_closest_marker("image") is not None)   # stable: order kept otherwise


@pytest.fixture
def small_net():
    with pyjlfa.Network([6, 5, 4, 3], activation="tanh", rule="fa", seed=3, dtype="float64") as net:
        yield net
