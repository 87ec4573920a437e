"""Identical models from one seed: the engine's initial parameters and shuffled epochs equal those the
NumPy reference computes from the seeds alone (tests/reference.py: initial_parameters, SplitMix64)."""

import numpy as np
import pytest

import pyjlfa
from reference import ReferenceNetwork, SplitMix64, initial_parameters

from conftest import RULES, batch


def test_block_draws_equal_one_at_a_time_draws():
    one, block = SplitMix64.stream(2**64 - 1, 2), SplitMix64.stream(2**64 - 1, 2)
    expected = [one.next() for _ in range(1000)]
    got = np.concatenate([block.next_block(1), block.next_block(999)])
    assert got.tolist() == expected
    assert one.state == block.state
    assert block.uniforms(3).tolist() == [(one.next() >> 11) * 2.0**-53 for _ in range(3)]


def test_splitmix64_known_values():
    # SplitMix64 from state 0: the reference values of Vigna's splitmix64.c (first three outputs).
    r = SplitMix64(0)
    assert [r.next() for _ in range(3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("seed,feedback_seed", [(0, None), (7, 123), (2**64 - 1, 0)])
def test_initial_model_equals_the_reference_to_the_last_bit(dtype, rule, seed, feedback_seed):
    sizes = [13, 9, 7, 4]
    net = pyjlfa.Network(sizes, rule=rule, seed=seed, feedback_seed=feedback_seed, dtype=dtype)
    Ws, bs, Bs = initial_parameters(sizes, rule, seed, feedback_seed, dtype)
    for layer, W, b, B in zip(net.layers, Ws, bs, Bs):
        assert layer.W.dtype == W.dtype and layer.W.tobytes() == W.tobytes()
        assert layer.b.tobytes() == b.tobytes()
        assert (layer.B is None) == (B is None)
        if B is not None:
            assert layer.B.tobytes() == B.tobytes()


def test_fashion_mnist_sized_model_equals_the_reference():
    net = pyjlfa.Network([784, 256, 256, 10], rule="fa", seed=0)
    Ws, _, Bs = initial_parameters([784, 256, 256, 10], "fa", 0)
    for layer, W, B in zip(net.layers, Ws, Bs):
        np.testing.assert_array_equal(layer.W, W)
        if B is not None:
            np.testing.assert_array_equal(layer.B, B)


@pytest.mark.parametrize("rule", RULES)
def test_one_shuffled_epoch_equals_the_reference_built_from_the_seed(rule):
    """The reference starts from initial_parameters (not from the engine's arrays) and shuffles with
    SplitMix64.stream(seed, 3): the whole epoch, order included, must agree to 1e-10."""
    sizes, seed = [8, 16, 12, 5], 42
    net = pyjlfa.Network(sizes, rule=rule, seed=seed, feedback_seed=9, dtype="float64")
    X, y = batch(net, 203, seed=3)
    hist = net.fit(X, y, epochs=1, batch_size=16, optimizer=pyjlfa.SGD(lr=0.1, momentum=0.9))
    ref = ReferenceNetwork(*initial_parameters(sizes, rule, seed, 9, "float64"), activation="tanh", rule=rule)
    order = SplitMix64.stream(seed, 3).permutation(203)
    expected = ref.train_epoch(X, y, batch_size=16, lr=0.1, momentum=0.9, order=order)
    assert hist["loss"][0] == pytest.approx(expected, rel=1e-10)
    for layer, W, b in zip(net.layers, ref.Ws, ref.bs):
        np.testing.assert_allclose(layer.W, W, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.b, b, rtol=1e-10, atol=1e-12)
