"""Arrays cross the boundary as views: parameters are Julia's memory, inputs are the caller's."""

import gc

import numpy as np
import pytest

import pyjlfa
from pyjlfa._runtime import engine

from conftest import batch, reference_of


def addresses(net):
    return [(l.W.ctypes.data, l.b.ctypes.data, None if l.B is None else l.B.ctypes.data) for l in net.layers]


@pytest.mark.parametrize("rule", ["bp", "fa", "dfa"])
def test_parameters_are_updated_in_place_by_fit_and_step(rule):
    net = pyjlfa.Network([6, 5, 4, 3], rule=rule, seed=0, dtype="float64")
    before, W0 = addresses(net), net.layers[0].W.copy()
    X, y = batch(net, 20)
    net.fit(X, y, epochs=2, batch_size=4, optimizer=pyjlfa.SGD(lr=0.1, momentum=0.9))
    net.step(X, y, pyjlfa.SGD(lr=0.1))
    assert addresses(net) == before
    assert not np.array_equal(net.layers[0].W, W0)  # the views saw the update
    # A fresh view from Julia is the same memory.
    assert np.shares_memory(net._array(0, "W"), net.layers[0].W)


def test_writing_a_view_changes_the_julia_model():
    net = pyjlfa.Network([6, 5, 3], rule="fa", seed=0, dtype="float64")
    X, _ = batch(net, 5)
    net.layers[1].W[:] = 0.0
    net.layers[1].b[:] = [1.0, 2.0, 3.0]
    np.testing.assert_array_equal(net.outputs(X), np.tile([1.0, 2.0, 3.0], (5, 1)))
    # And a Kolen-Pollack-style experiment can set B = W.T through the view.
    net.layers[1].B[:] = net.layers[1].W.T
    assert np.shares_memory(net.layers[1].B, net._array(1, "B"))


def test_layout_is_the_keras_kernel_convention():
    net = pyjlfa.Network([4, 3, 2], rule="dfa", seed=0, dtype="float64")
    assert [l.W.shape for l in net.layers] == [(4, 3), (3, 2)]
    assert net.layers[0].B.shape == (2, 3) and net.layers[1].B is None  # DFA: (n_outputs, n_out)
    fa = pyjlfa.Network([4, 3, 2], rule="fa", seed=0)
    assert fa.layers[0].B is None and fa.layers[1].B.shape == (2, 3)  # FA: the shape of W.T
    assert all(l.W.flags.c_contiguous for l in net.layers)


class Spy:
    """Wraps an entry point and records the input address Julia was handed."""

    def __init__(self, net, name):
        self.fn, self.seen = net._engine._fn[name], []
        self.net, self.name = net, name
        net._engine._fn[name] = self

    def __call__(self, *args):
        self.seen.append(args[1])
        return self.fn(*args)

    def restore(self):
        self.net._engine._fn[self.name] = self.fn


@pytest.mark.parametrize("entry,call", [
    ("fa_train_epoch", lambda net, X, y: net.fit(X, y, epochs=2, batch_size=8)),
    ("fa_step", lambda net, X, y: net.step(X, y, pyjlfa.SGD())),
    ("fa_forward", lambda net, X, y: net.predict(X)),
    ("fa_evaluate", lambda net, X, y: net.evaluate(X, y)),
    ("fa_gradients", lambda net, X, y: net.gradients(X, y)),
])
def test_suitable_inputs_are_read_in_place(entry, call):
    net = pyjlfa.Network([6, 5, 3], seed=0, dtype="float32")
    X, y = batch(net, 32)
    spy = Spy(net, entry)
    try:
        call(net, X, y)
    finally:
        spy.restore()
    assert spy.seen and all(address == X.ctypes.data for address in spy.seen)


@pytest.mark.parametrize("convert", [
    lambda X: X.astype(np.float64),         # wrong dtype for a float32 model
    lambda X: np.asfortranarray(X),         # not C-contiguous
    lambda X: X.tolist(),                   # not an array at all
])
def test_other_inputs_are_converted_once_and_give_the_same_results(convert):
    net = pyjlfa.Network([6, 5, 3], seed=0, dtype="float32")
    X, y = batch(net, 32)
    expected = net.outputs(X)
    spy = Spy(net, "fa_forward")
    try:
        got = net.outputs(convert(X))
    finally:
        spy.restore()
    assert spy.seen[0] != X.ctypes.data
    np.testing.assert_array_equal(got, expected)


def test_gradients_are_written_into_fresh_arrays_and_change_nothing(small_net):
    X, y = batch(small_net, 10)
    ref = reference_of(small_net)
    g1 = small_net.gradients(X, y)
    g2 = small_net.gradients(X, y)
    assert not np.shares_memory(g1[0][0], g2[0][0])
    for (a, b), (c, d) in zip(g1, g2):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)
    np.testing.assert_array_equal(small_net.layers[0].W, ref.Ws[0])


def test_views_keep_the_julia_model_alive_after_close():
    eng = engine()
    gc.collect()
    live = eng.live_handles()
    net = pyjlfa.Network([6, 5, 3], seed=0, dtype="float64")
    W = net.layers[0].W
    expected = W.copy()
    assert eng.live_handles() == live + 1
    net.close()
    with pytest.raises(ValueError, match="closed"):
        net.predict(np.zeros((1, 6)))
    del net
    gc.collect()
    assert eng.live_handles() == live + 1  # W still points into Julia's array: not freed
    np.testing.assert_array_equal(W, expected)  # and still readable
    del W
    gc.collect()
    assert eng.live_handles() == live  # the last view gone, the handle is freed


def test_collecting_a_network_frees_its_handle():
    eng = engine()
    gc.collect()
    live = eng.live_handles()
    for _ in range(5):
        pyjlfa.Network([6, 5, 3])
    gc.collect()
    assert eng.live_handles() == live
    with pyjlfa.Network([6, 5, 3]) as net:
        assert eng.live_handles() == live + 1
    del net
    gc.collect()
    assert eng.live_handles() == live
