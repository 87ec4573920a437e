"""The reproductions: the teacher-student tasks against a NumPy replay, and their published qualitative results."""

import json
import math

import numpy as np
import pytest

from pyjlfa import experiments
from reference import ReferenceNetwork, SplitMix64

# experiments.jl's stream tags ("teach", "train", "test")
TEACHER, TRAIN, TEST = 0x7465616368, 0x747261696E, 0x74657374


def uniform(rng, shape, r):
    """Uniform in [-r, r), drawn in memory order, as experiments.jl's uniform!."""
    return np.array([(2 * ((rng.next() >> 11) * 2.0**-53) - 1) * r for _ in range(math.prod(shape))]).reshape(shape)


def gaussian(rng, shape):
    """Box-Muller in memory order, as experiments.jl's gaussian!."""
    n = math.prod(shape)
    out = []
    while len(out) < n:
        u1, u2 = (rng.next() >> 11) * 2.0**-53, (rng.next() >> 11) * 2.0**-53
        r, t = math.sqrt(-2 * math.log(1 - u1)), 2 * math.pi * u2
        out += [r * math.cos(t), r * math.sin(t)]
    return np.array(out[:n]).reshape(shape)


@pytest.mark.slow
def test_linear_task_matches_a_numpy_replay():
    """Same draws (SplitMix64), same FA training, same normalised error and W-vs-B angle."""
    seed, steps, every, lr, test_size = 3, 30, 10, 0.01, 200
    result = experiments.linear_task(rules=["fa"], steps=steps, record_every=every, lr=lr, seed=seed,
                                     test_size=test_size)
    run = result["runs"]["fa"]

    wrng, brng = SplitMix64.stream(seed, 1), SplitMix64.stream(seed, 2)
    Ws = [uniform(wrng, (30, 20), 0.01), uniform(wrng, (20, 10), 0.01)]
    Bs = [None, uniform(brng, (10, 20), 0.5)]
    T = uniform(SplitMix64.stream(seed, TEACHER), (30, 10), 1.0)
    net = ReferenceNetwork(Ws, [np.zeros(20), np.zeros(10)], Bs, activation="identity", rule="fa", loss="mse")
    Xtest = gaussian(SplitMix64.stream(seed, TEST), (test_size, 30))
    Ytest = Xtest @ T
    spread = 0.5 * ((Ytest - Ytest.mean(axis=0)) ** 2).sum(axis=1).mean()
    data = SplitMix64.stream(seed, TRAIN)
    errors, angles = [], []
    for s in range(steps + 1):
        if s % every == 0:
            errors.append(net.loss(Xtest, Ytest) / spread)
            W, B = net.Ws[1], net.Bs[1]
            angles.append(math.degrees(math.acos((W.T * B).sum() / np.linalg.norm(W) / np.linalg.norm(B))))
        if s < steps:
            x = gaussian(data, (1, 30))
            net.step(x, x @ T, lr)
            net.bs = [np.zeros(20), np.zeros(10)]   # the linear task's network has no biases
    np.testing.assert_allclose(run["error"], errors, rtol=1e-9)
    np.testing.assert_allclose(np.array(run["alignment"]["feedback_angle"])[:, 1], angles, rtol=1e-9)
    assert result["step"] == [0, 10, 20, 30]
    assert run["lr"] == lr


@pytest.mark.slow
def test_linear_task_fa_angle_falls_well_below_90_degrees_and_shallow_plateaus():
    result = experiments.linear_task(steps=1500, record_every=100)
    fa, bp, shallow = (result["runs"][r] for r in ("fa", "bp", "shallow"))
    angle = np.array(fa["alignment"]["delta_angle"])[:, 0]
    assert angle[0] > 75                       # random feedback starts near orthogonal ...
    assert angle[-1] < 45 and angle[3:].max() < 60   # ... and the hidden signal aligns with backprop's
    assert (np.array(fa["alignment"]["alignment_product"])[3:, 0] > 0).all()   # e^T W B e > 0
    assert fa["error"][-1] < 0.05 and bp["error"][-1] < 0.5
    # only the output layer learns: a random 20-d projection of 30-d inputs leaves ~1/3 of T unexplained
    assert 0.25 < shallow["error"][-1] < 0.5
    assert shallow["alignment"]["role"][-1] == ["no_signal", "output"]
    assert bp["alignment"]["role"][-1] == ["backprop", "output"]
    assert math.isnan(bp["alignment"]["delta_angle"][-1][0])


@pytest.mark.slow
def test_nonlinear_task_dfa_is_fa_with_one_hidden_layer_but_not_with_two():
    short = dict(steps=300, record_every=100)
    one = experiments.nonlinear_task(rules=["fa", "dfa"], **short)["runs"]
    assert one["fa"]["error"] == one["dfa"]["error"]            # same B, same maths
    assert one["fa"]["error"][-1] < 0.7 * one["fa"]["error"][0]  # and it learns
    two = experiments.nonlinear_task(rules=["fa", "dfa"], hidden=[20, 10], **short)["runs"]
    assert two["fa"]["error"] != two["dfa"]["error"]
    assert len(two["fa"]["alignment"]["role"][0]) == 3


def test_teacher_task_refuses_bad_arguments():
    with pytest.raises(ValueError, match="unknown rule 'no_such_rule'"):
        experiments.linear_task(rules=["no_such_rule"], steps=10)
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        experiments.linear_task(steps=0)
    with pytest.raises(ValueError, match="task must be"):
        experiments.teacher_task("cubic", ["fa"], 10, 5)
    with pytest.raises(ValueError, match="every hidden width must be a positive integer"):
        experiments.nonlinear_task(hidden=[20, 0], steps=10)


def test_results_are_written_as_json_and_csv(tmp_path):
    result = experiments.linear_task(rules=["fa", "shallow"], steps=40, record_every=20, out_dir=tmp_path, plot=False)
    saved = json.loads((tmp_path / "linear_task.json").read_text())   # strict JSON: NaN written as null
    assert saved["runs"]["fa"]["error"] == result["runs"]["fa"]["error"]
    assert saved["runs"]["shallow"]["alignment"]["delta_angle"][-1][0] is None
    rows = (tmp_path / "linear_task.csv").read_text().splitlines()
    assert rows[0].startswith("rule,step,normalised_error,layer0_role,layer0_delta_angle")
    assert len(rows) == 1 + 2 * 3
