"""The scikit-learn estimators: scikit-learn's own estimator checks, agreement with the NumPy
reference, MLPClassifier's stopping rules, pickling in a fresh process, and sklearn's tools."""

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sklearn.base import clone
from sklearn.datasets import make_blobs
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler, scale
from sklearn.utils.estimator_checks import _regression_dataset, parametrize_with_checks

import pyjlfa
from reference import ReferenceNetwork, SplitMix64
from pyjlfa.sklearn import FeedbackAlignmentClassifier, FeedbackAlignmentRegressor

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning"),
              # the checks' data sets are smaller than the regressor's batch_size (fine: it is clipped)
              pytest.mark.filterwarnings("ignore:batch_size=.* is larger than:UserWarning")]

# Checks expected to fail, each with its reason (also listed in the README).
EXPECTED_FAILURES = {}


def _expected_failures(estimator):
    return EXPECTED_FAILURES.get(type(estimator), {})


# Small networks and few epochs keep the checks fast.
# random_state is fixed because some checks (check_regressor_multioutput) do not set it, and a seed
# drawn from NumPy's global generator would make them depend on the tests that ran before.
@parametrize_with_checks([
    FeedbackAlignmentClassifier(hidden_layer_sizes=(16,), learning_rate_init=0.1, max_iter=20, random_state=0),
    FeedbackAlignmentRegressor(hidden_layer_sizes=(16,), rule="dfa", learning_rate_init=0.005, batch_size=32,
                               max_iter=30, random_state=0),
], expected_failed_checks=_expected_failures, xfail_strict=True)
# Some checks (check_fit_idempotent, check_n_features_in, ...) fit on unscaled data centred at 100: the first
# epoch's loss is then huge at any learning rate, and pyjlfa's warning saying so is expected there.
@pytest.mark.filterwarnings("ignore:the mean training loss of epoch:RuntimeWarning")
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_regressor_trains_on_the_checks_data():
    """check_regressors_train without its alpha=0.01: same data, lists as input, R^2 > 0.5."""
    X, y = _regression_dataset()
    y = scale(y)
    reg = FeedbackAlignmentRegressor(hidden_layer_sizes=(16,), rule="dfa", learning_rate_init=0.005, batch_size=32,
                                     max_iter=30, random_state=0)
    with pytest.raises(ValueError):
        reg.fit(X, y[:-1])
    reg.fit(X, y)
    pred = reg.predict(X)
    np.testing.assert_array_equal(reg.fit(X.tolist(), y.tolist()).predict(X), pred)
    assert pred.shape == y.shape
    assert reg.score(X, y) > 0.5


# -- the estimators train exactly as the documented reference does ---------------------------------
def _reference_from_seed(sizes, activation, rule, loss, seed):
    """The NumPy reference holding the initial parameters pyjlfa draws from ``seed``."""
    with pyjlfa.Network(sizes, activation=activation, rule=rule, loss=loss, seed=seed, dtype="float64") as net:
        return ReferenceNetwork([l.W.copy() for l in net.layers], [l.b.copy() for l in net.layers],
                                [None if l.B is None else l.B.copy() for l in net.layers],
                                activation=activation, rule=rule, loss=loss)


def test_classifier_trains_as_the_reference_does():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 6))
    names = np.array(["cat", "ant", "bee"])  # classes_ is the sorted order: ant, bee, cat
    y = names[rng.integers(0, 3, size=40)]
    clf = FeedbackAlignmentClassifier(hidden_layer_sizes=(5, 4), activation="logistic", rule="fa", random_state=11,
                                      learning_rate_init=0.3, momentum=0.5, batch_size=7, max_iter=3).fit(X, y)

    ref = _reference_from_seed([6, 5, 4, 3], "sigmoid", "fa", "cross_entropy", seed=11)
    feedback = [None if B is None else B.copy() for B in ref.Bs]
    labels = np.searchsorted(["ant", "bee", "cat"], y)
    order = SplitMix64.stream(11, 3)  # pyjlfa's shuffling stream
    losses = [ref.train_epoch(X, labels, batch_size=7, lr=0.3, momentum=0.5, order=order.permutation(40))
              for _ in range(3)]

    np.testing.assert_array_equal(clf.classes_, ["ant", "bee", "cat"])
    np.testing.assert_allclose(clf.loss_curve_, losses, rtol=1e-10)
    for W, b, B, rW, rb, rB in zip(clf.coefs_, clf.intercepts_, clf.feedback_matrices_, ref.Ws, ref.bs, feedback):
        np.testing.assert_allclose(W, rW, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(b, rb, rtol=1e-10, atol=1e-12)
        assert (B is None and rB is None) or np.array_equal(B, rB)
    proba = ref.predict_proba(X)
    np.testing.assert_allclose(clf.predict_proba(X), proba, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(clf.predict(X), np.array(["ant", "bee", "cat"])[proba.argmax(axis=1)])
    assert clf.n_iter_ == 3 and clf.t_ == 120 and clf.loss_ == clf.loss_curve_[-1]
    assert clf.best_loss_ == min(losses) and clf.validation_scores_ is None


def test_regressor_trains_as_the_reference_does():
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(40, 6)), rng.normal(size=(40, 2))
    reg = FeedbackAlignmentRegressor(hidden_layer_sizes=(5,), activation="tanh", rule="dfa", random_state=4,
                                     learning_rate_init=0.05, momentum=0.9, batch_size=8, max_iter=2,
                                     shuffle=False).fit(X, Y)
    ref = _reference_from_seed([6, 5, 2], "tanh", "dfa", "mse", seed=4)
    losses = [ref.train_epoch(X, Y, batch_size=8, lr=0.05, momentum=0.9) for _ in range(2)]
    np.testing.assert_allclose(reg.loss_curve_, losses, rtol=1e-10)
    np.testing.assert_allclose(reg.predict(X), ref.forward(X), rtol=1e-10, atol=1e-12)
    one = FeedbackAlignmentRegressor(hidden_layer_sizes=(5,), max_iter=1, random_state=0).fit(X, Y[:, 0])
    assert one.predict(X).shape == (40,)


# -- stopping rules, as MLPClassifier's ---------------------------------------------------------------
@pytest.mark.parametrize("early_stopping", [False, True])
def test_stops_after_the_same_number_of_epochs_as_mlp(early_stopping):
    """With a tol no epoch can beat, both stop after n_iter_no_change + 2 epochs."""
    X, y = make_blobs(60, random_state=0)
    params = dict(hidden_layer_sizes=(8,), tol=1e9, n_iter_no_change=3, max_iter=50, early_stopping=early_stopping,
                  random_state=0, momentum=0.0)
    ours = FeedbackAlignmentClassifier(**params).fit(X, y)
    mlp = MLPClassifier(solver="sgd", **params).fit(X, y)
    assert ours.n_iter_ == mlp.n_iter_ == 5
    assert len(ours.loss_curve_) == 5
    assert (ours.validation_scores_ is None) == (not early_stopping)


def test_early_stopping_keeps_the_best_epoch():
    X, y = make_blobs(200, centers=3, cluster_std=2.0, random_state=2)
    clf = FeedbackAlignmentClassifier(hidden_layer_sizes=(32,), learning_rate_init=0.1, batch_size=150, max_iter=15,
                                      n_iter_no_change=15, early_stopping=True, validation_fraction=0.25,
                                      random_state=5).fit(X, y)
    # The same split the estimator made: an integer random_state seeds it.
    _, X_val, _, y_val = train_test_split(X, y, random_state=np.random.RandomState(5), test_size=0.25, stratify=y)
    assert len(clf.validation_scores_) == clf.n_iter_ == 15
    assert clf.best_validation_score_ == max(clf.validation_scores_)
    assert clf.validation_scores_[-1] < clf.best_validation_score_  # so the restore is exercised
    assert clf.score(X_val, y_val) == clf.best_validation_score_
    assert clf.best_loss_ is None


# -- continuing: partial_fit and warm_start continue the same run ------------------------------------
def _params_equal(a, b):
    for x, y in zip(a.coefs_ + a.intercepts_, b.coefs_ + b.intercepts_):
        np.testing.assert_array_equal(x, y)


def test_partial_fit_epochs_equal_fit_epochs():
    X, y = make_blobs(50, random_state=1)
    params = dict(hidden_layer_sizes=(8,), learning_rate_init=0.05, random_state=3, batch_size=16)
    fitted = FeedbackAlignmentClassifier(max_iter=3, **params).fit(X, y)
    partial = FeedbackAlignmentClassifier(**params)
    with pytest.raises(ValueError, match="classes must be passed"):
        partial.partial_fit(X, y)
    W = partial.partial_fit(X, y, classes=[0, 1, 2]).coefs_[0]
    address = W.ctypes.data
    partial.partial_fit(X, y).partial_fit(X, y)
    assert partial.coefs_[0].ctypes.data == address  # trained in place, in Julia's memory
    assert partial.n_iter_ == 1 and partial.t_ == 150
    np.testing.assert_array_equal(partial.loss_curve_, fitted.loss_curve_)
    _params_equal(partial, fitted)
    with pytest.raises(ValueError, match="previously unseen labels"):
        partial.partial_fit(X, y + 5)
    with pytest.raises(ValueError, match="not the same as on last call"):
        partial.partial_fit(X, y, classes=[0, 1, 2, 3])


def test_warm_start_continues_the_run():
    X, y = make_blobs(50, random_state=1)
    params = dict(hidden_layer_sizes=(8,), learning_rate_init=0.05, random_state=3, tol=0.0, n_iter_no_change=99)
    whole = FeedbackAlignmentClassifier(max_iter=5, **params).fit(X, y)
    warm = FeedbackAlignmentClassifier(max_iter=2, warm_start=True, **params).fit(X, y)
    warm.set_params(max_iter=3).fit(X, y)
    assert warm.n_iter_ == 3
    np.testing.assert_array_equal(warm.loss_curve_, whole.loss_curve_)
    _params_equal(warm, whole)
    with pytest.raises(ValueError, match="rule is 'fa'"):
        warm.set_params(rule="bp").fit(X, y)
    warm.set_params(rule="fa", early_stopping=True, max_iter=2).fit(X, y)  # switching early stopping on
    assert len(warm.validation_scores_) == 2 and warm.best_loss_ is None and len(warm.loss_curve_) == 7
    cold = clone(warm).set_params(warm_start=False, early_stopping=False, max_iter=5).fit(X, y)
    _params_equal(cold, whole)


# -- labels, dtypes, reproducibility ------------------------------------------------------------------
@pytest.mark.parametrize("labels", [["pear", "apple", "fig"], [10, -3, 7]])
def test_labels_and_predict_proba_columns_follow_classes(labels):
    X, y = make_blobs(150, centers=[[-6, 0], [0, 6], [6, 0]], random_state=0)
    labels = np.array(labels)
    clf = FeedbackAlignmentClassifier(hidden_layer_sizes=(8,), learning_rate_init=0.05, max_iter=10,
                                      random_state=0).fit(X, labels[y])
    np.testing.assert_array_equal(clf.classes_, np.sort(labels))
    proba = clf.predict_proba([[-6, 0], [0, 6], [6, 0]])  # one point at each centre
    np.testing.assert_array_equal(clf.classes_[proba.argmax(axis=1)], labels)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert clf.score(X, labels[y]) > 0.95


def test_classifier_refuses_one_class_and_multilabel_targets():
    X = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ValueError, match="at least 2 classes"):
        FeedbackAlignmentClassifier().fit(X, ["a"] * 10)
    with pytest.raises(ValueError):
        FeedbackAlignmentClassifier().fit(X, np.eye(10, 2, dtype=int))


@pytest.mark.parametrize("dtype,expected", [(np.float32, np.float32), (np.float64, np.float64), (np.int64, np.float64)])
def test_network_dtype_follows_the_training_data(dtype, expected):
    X, y = make_blobs(30, random_state=0)
    clf = FeedbackAlignmentClassifier(hidden_layer_sizes=(4,), max_iter=2).fit(X.astype(dtype), y)
    assert clf.coefs_[0].dtype == expected and clf.predict_proba(X).dtype == expected


def test_random_state_makes_fits_reproducible():
    X, y = make_blobs(60, random_state=0)
    make = lambda **kw: FeedbackAlignmentClassifier(hidden_layer_sizes=(8, 8), max_iter=3, **kw).fit(X, y)
    a, b, c = make(random_state=3), make(random_state=3), make(random_state=4)
    _params_equal(a, b)
    assert not np.array_equal(a.coefs_[0], c.coefs_[0])
    # feedback_seed draws the feedback matrices from their own seed (default: the network's)
    d = make(random_state=3, feedback_seed=9)
    for clf, feedback_seed in ((a, None), (d, 9)):
        with pyjlfa.Network([2, 8, 8, 3], activation="relu", rule="fa", seed=3, feedback_seed=feedback_seed,
                            dtype="float64") as net:
            for B, layer in zip(clf.feedback_matrices_[1:], net.layers[1:]):
                np.testing.assert_array_equal(B, layer.B)  # fixed: training does not change them
    assert not np.array_equal(a.feedback_matrices_[1], d.feedback_matrices_[1])
    e = FeedbackAlignmentClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=np.random.RandomState(0))
    assert e.fit(X, y).n_iter_ == 2


# -- state in NumPy arrays: pickle, deepcopy, clone, assignment ---------------------------------------
@pytest.mark.subprocess
def test_pickled_estimator_predicts_identically_in_a_fresh_process(tmp_path):
    X, y = make_blobs(80, random_state=0)
    labels = np.array(["b", "a", "c"])[y]
    clf = FeedbackAlignmentClassifier(hidden_layer_sizes=(8, 8), rule="dfa", max_iter=5, learning_rate_init=0.05,
                                      random_state=0).fit(X, labels)
    state = clf.__getstate__()
    assert "_net" not in state
    assert not any(np.shares_memory(a, b) for a, b in zip(state["coefs_"], clf.coefs_))
    (tmp_path / "clf.pkl").write_bytes(pickle.dumps(clf))
    np.save(tmp_path / "X.npy", X)
    script = ("import pickle, sys, numpy as np\n"
              "clf = pickle.load(open(sys.argv[1], 'rb'))\n"
              "X = np.load(sys.argv[2])\n"
              "np.save(sys.argv[3], clf.predict_proba(X)); np.save(sys.argv[4], clf.predict(X))\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path / "clf.pkl"), str(tmp_path / "X.npy"),
                             str(tmp_path / "proba.npy"), str(tmp_path / "labels.npy")],
                            capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "proba.npy"), clf.predict_proba(X))
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), clf.predict(X))


def test_unpickled_and_copied_estimators_are_independent_and_keep_training():
    X, y = make_blobs(60, random_state=0)
    reg = FeedbackAlignmentRegressor(hidden_layer_sizes=(6,), max_iter=3, random_state=0).fit(X, y.astype(float))
    for other in (pickle.loads(pickle.dumps(reg)), copy.deepcopy(reg)):
        np.testing.assert_array_equal(other.predict(X), reg.predict(X))
        other.partial_fit(X, y.astype(float))  # continues on a network rebuilt from the arrays
        assert not np.array_equal(other.coefs_[0], reg.coefs_[0])
        assert len(other.loss_curve_) == 4 and len(reg.loss_curve_) == 3
    fresh = clone(reg)
    assert fresh.get_params() == reg.get_params() and not hasattr(fresh, "coefs_")
    with pytest.raises(NotFittedError):
        fresh.predict(X)


def test_assigned_arrays_rebuild_the_network():
    X, y = make_blobs(40, random_state=0)
    clf = FeedbackAlignmentClassifier(hidden_layer_sizes=(5,), activation="tanh", max_iter=2, random_state=0).fit(X, y)
    assert np.shares_memory(clf.coefs_[0], clf._net.layers[0].W)  # the arrays are the network's views
    clf.coefs_[1] = np.linspace(-1, 1, 15).reshape(5, 3)
    ref = ReferenceNetwork([np.array(W) for W in clf.coefs_], [np.array(b) for b in clf.intercepts_],
                           [None if B is None else np.array(B) for B in clf.feedback_matrices_],
                           activation="tanh", rule="fa", loss="cross_entropy")
    np.testing.assert_allclose(clf.predict_proba(X), ref.predict_proba(X), rtol=1e-10, atol=1e-12)
    assert np.shares_memory(clf.coefs_[1], clf._net.layers[1].W)
    clf.coefs_[0] = np.zeros((3, 5))
    with pytest.raises(ValueError, match=r"coefs_\[0\] has shape \(3, 5\)"):
        clf.predict(X)


# -- scikit-learn's tools -------------------------------------------------------------------------------
@pytest.mark.slow
def test_pipeline_grid_search_and_cross_val_score():
    X, y = make_blobs(120, centers=3, n_features=4, random_state=1)
    X = X * [1, 10, 100, 1000]  # needs the scaler
    pipe = make_pipeline(StandardScaler(), FeedbackAlignmentClassifier(hidden_layer_sizes=(8,), learning_rate_init=0.05,
                                                                       max_iter=20, random_state=0))
    assert pipe.fit(X, y).score(X, y) > 0.9
    search = GridSearchCV(pipe, {"feedbackalignmentclassifier__rule": ["bp", "fa", "dfa"]}, cv=3).fit(X, y)
    assert search.best_params_["feedbackalignmentclassifier__rule"] in ("bp", "fa", "dfa")
    assert np.all(search.cv_results_["mean_test_score"] > 0.9)
    scores = cross_val_score(pipe, X, y, cv=3)
    assert scores.shape == (3,) and np.all(scores > 0.9)


# -- what pyjlfa cannot do is refused clearly ----------------------------------------------------------
@pytest.mark.parametrize("params,message", [
    (dict(solver="lbfgs"), r"solver='lbfgs' is not available in pyjlfa; available solvers: 'sgd', 'adam'"),
    (dict(alpha=-1.0), r"alpha must be a number >= 0, got -1.0"),
    (dict(solver="adam", beta_1=1.0), r"beta_1 and beta_2 must be numbers in \[0, 1\)"),
    (dict(rule="nope"), r"unknown rule 'nope'"),
    (dict(activation="nope"), r"unknown activation 'nope'"),
    (dict(hidden_layer_sizes=(4, 0)), r"hidden_layer_sizes"),
    (dict(batch_size=0), r"batch_size"),
])
def test_unavailable_or_bad_parameters_raise_before_fitting(params, message):
    clf = FeedbackAlignmentClassifier(**params)
    with pytest.raises(ValueError, match=message):
        clf.fit([[0.0, 1.0], [1.0, 0.0]], [0, 1])
    with pytest.raises(NotFittedError):
        clf.predict([[0.0, 1.0]])


def test_verbose_prints_the_loss(capsys):
    X, y = make_blobs(30, random_state=0)
    clf = FeedbackAlignmentClassifier(hidden_layer_sizes=(4,), max_iter=2, verbose=True, random_state=0).fit(X, y)
    out = capsys.readouterr().out
    assert f"Iteration 2, loss = {clf.loss_curve_[1]:.8f}" in out


def test_alpha_nesterov_and_adam_map_to_pyjlfa_optimisers():
    """alpha is scikit-learn's L2 term (alpha * W / batch_size added to the gradient, biases spared):
    one epoch of one full batch equals a hand-computed step; adam and Nesterov SGD train."""
    from reference import ReferenceNetwork
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(20, 3)), rng.normal(size=20)
    reg = FeedbackAlignmentRegressor(hidden_layer_sizes=(4,), rule="fa", alpha=0.5, batch_size=20,
                                     learning_rate_init=0.1, max_iter=1, shuffle=False, random_state=0)
    init = FeedbackAlignmentRegressor(hidden_layer_sizes=(4,), rule="fa", batch_size=20, learning_rate_init=1e-12,
                                      max_iter=1, shuffle=False, random_state=0).fit(X, y)
    ref = ReferenceNetwork([W.copy() for W in init.coefs_], [b.copy() for b in init.intercepts_],
                           [None if B is None else B.copy() for B in init.feedback_matrices_],
                           activation="relu", rule="fa", loss="mse")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reg.fit(X, y)
    grads = ref.gradients(X, y.reshape(-1, 1))
    for W, b, (dW, db), W0, b0 in zip(reg.coefs_, reg.intercepts_, grads, init.coefs_, init.intercepts_):
        np.testing.assert_allclose(W, W0 - 0.1 * (dW + 0.5 / 20 * W0), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(b, b0 - 0.1 * db, rtol=1e-6, atol=1e-9)
    for params in (dict(solver="adam", learning_rate_init=0.01), dict(learning_rate_init=0.1, momentum=0.9, nesterovs_momentum=True)):
        clf = FeedbackAlignmentClassifier(hidden_layer_sizes=(16,), max_iter=100, batch_size=20, random_state=0, **params)
        Xc = rng.normal(size=(120, 2))
        yc = (Xc[:, 0] + Xc[:, 1] > 0).astype(int)
        assert clf.fit(Xc, yc).score(Xc, yc) > 0.9


# -- issue 16: installation, threads and defaults -------------------------------------------------------
def _version(text):
    return tuple(int(p) for p in text.split(".")[:2])


def test_scikit_learn_is_a_tested_range_not_one_pinned_version():
    import re
    import sklearn
    pyproject = (ROOT / "pyproject.toml").read_text()
    requirements = re.findall(r'"scikit-learn([^"]*)"', pyproject)
    assert len(requirements) == 2   # the sklearn and test extras
    for spec in requirements:
        assert "==" not in spec, spec
        low, high = re.fullmatch(r">=([\d.]+),<([\d.]+)", spec).groups()
        assert _version(low) <= _version(sklearn.__version__) < _version(high), (spec, sklearn.__version__)
        assert _version(low) < _version(high)


def test_choosing_the_openblas_kernel_closes_proc_cpuinfo(monkeypatch):
    import gc
    import warnings
    from pyjlfa import _runtime
    if not os.path.exists("/proc/cpuinfo"):
        pytest.skip("no /proc/cpuinfo here")
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)   # restored afterwards
    monkeypatch.setattr(_runtime.platform, "system", lambda: "Linux")
    monkeypatch.setattr(_runtime.platform, "machine", lambda: "x86_64")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _runtime._choose_openblas_coretype()
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


_THREAD_SEARCH = """
import threading, warnings, numpy as np, pyjlfa._runtime as runtime
from joblib import parallel_backend
from sklearn.datasets import make_blobs
from sklearn.model_selection import cross_val_score
from pyjlfa.sklearn import FeedbackAlignmentClassifier
X, y = make_blobs(90, random_state=0)
clf = FeedbackAlignmentClassifier(hidden_layer_sizes=(8,), max_iter=3, random_state=0)
warnings.simplefilter("ignore")
try:
    with parallel_backend("threading", n_jobs=2):
        print("scores", cross_val_score(clf, X, y, cv=3))
except ValueError as e:
    print("search failed:", " ".join(str(e).split()))
print("julia running:", runtime._engine is not None)
print("main thread fits:", clf.fit(X, y).n_iter_)
"""


@pytest.mark.subprocess
def test_a_threaded_search_fails_loudly_and_leaves_julia_usable():
    """Before: the first joblib worker started Julia, its folds scored, the others came back NaN with a warning,
    and Julia stayed bound to a discarded thread. Now every fold refuses and the search raises."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", _THREAD_SEARCH], capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "scores" not in out
    assert "search failed: All the 3 fits failed" in out and "do not start Julia from a thread other than the " \
        "main one" in out and "loky" in out, out
    assert "julia running: False" in out and "main thread fits: 3" in out


def test_a_search_on_threads_refuses_while_julia_runs_on_the_main_thread():
    X, y = make_blobs(60, random_state=0)
    clf = FeedbackAlignmentClassifier(hidden_layer_sizes=(4,), max_iter=2, random_state=0).fit(X, y)
    if pyjlfa._runtime.engine().julia_version >= (1, 9):
        pytest.skip("Julia 1.9+ adopts foreign threads")
    from joblib import parallel_backend
    with parallel_backend("threading", n_jobs=2), pytest.raises(ValueError, match="All the 3 fits failed") as failed:
        cross_val_score(clone(clf), X, y, cv=3)
    assert "can only be called from the thread that started it" in str(failed.value)
    assert "not 'threading'" in str(failed.value)


@pytest.mark.subprocess
def test_julia_bound_to_a_finished_thread_says_so():
    pyjlfa.start_julia()
    if pyjlfa._runtime.engine().julia_version >= (1, 9):
        pytest.skip("Julia 1.9+ adopts foreign threads")
    code = ("import threading, pyjlfa\n"
            "t = threading.Thread(target=pyjlfa.start_julia, name='starter'); t.start(); t.join()\n"
            "try:\n    pyjlfa.Network([3, 2])\nexcept RuntimeError as e:\n    print(e, flush=True)\n"
            # Julia's exit hook, too, would enter Julia from this (foreign) thread and crash: skip it
            "import os; os._exit(0)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bound to the thread that started it ('starter'), which has finished" in result.stdout
    assert "Start a new process" in result.stdout and "Call pyjlfa from that thread" not in result.stdout


def test_defaults_are_a_reasonable_drop_in_for_mlpclassifier_on_small_tabular_data():
    """load_digits with a StandardScaler pipeline: MLPClassifier(max_iter=20) scores 0.956 on this split;
    our defaults used to score 0.51 (lr 0.001, batches of 200)."""
    from sklearn.datasets import load_digits
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, random_state=0)
    clf = make_pipeline(StandardScaler(), FeedbackAlignmentClassifier(max_iter=20, random_state=0))
    assert clf.fit(X_train, y_train).score(X_test, y_test) > 0.94
    params = FeedbackAlignmentClassifier().get_params()
    assert params["learning_rate_init"] == 0.03 and params["momentum"] == 0.9 and params["batch_size"] == "auto"
    assert FeedbackAlignmentRegressor().get_params()["learning_rate_init"] == 0.001


# -- issue 26, item 4: any network, image input ------------------------------------------------------------
def _images(n=96, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 1, 8, 8))
    return X, X[:, 0, :3].sum(axis=2).argmax(axis=1)   # three classes by the brightest of three rows


def test_layers_train_on_images_as_a_network_does():
    """The estimator with layers=[...] on (n, C, H, W) input (it said "Found array with dim 4") is the
    Network it describes, trained epoch by epoch with the solver's optimizer."""
    from pyjlfa.layers import BatchNorm2d, Conv2d, Flatten, Linear, ReLU
    X, y = _images()
    layers = [Conv2d(1, 4, 3, padding="same", bias=False), BatchNorm2d(4), ReLU(), Flatten(), Linear(256, 3)]
    clf = FeedbackAlignmentClassifier(layers=layers, max_iter=4, random_state=3, n_iter_no_change=100).fit(X, y)
    with pyjlfa.Network(layers, input_shape=(1, 8, 8), rule="fa", seed=3, dtype="float64") as net:
        optimizer = pyjlfa.SGD(lr=0.03, momentum=0.9)
        losses = [net.fit(X, y, epochs=1, batch_size=32, optimizer=optimizer)["loss"][0] for _ in range(4)]
        np.testing.assert_array_equal(clf.predict_proba(X), net.predict_proba(X))
    assert clf.loss_curve_ == losses and clf.n_features_in_ == 1 and clf.n_layers_ == 3
    assert [W.shape for W in clf.coefs_] == [(4, 1, 3, 3), (256, 3)] and clf.intercepts_[0] is None
    # A pickle keeps batch norm's arrays too; the chain may also be given as its text.
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    text = FeedbackAlignmentClassifier(layers=repr(layers), max_iter=4, random_state=3, n_iter_no_change=100)
    np.testing.assert_array_equal(text.fit(X, y).predict_proba(X), clf.predict_proba(X))
    with pytest.raises(ValueError, match=r"X has 2 features, but FeedbackAlignmentClassifier is expecting 1"):
        clf.predict(X.reshape(len(X), 2, 32))


def test_layers_with_early_stopping_restore_batch_norm_too():
    from pyjlfa.layers import BatchNorm2d, Conv2d, Flatten, Linear, ReLU
    X, y = _images(200, seed=1)
    layers = [Conv2d(1, 4, 3, bias=False), BatchNorm2d(4), ReLU(), Flatten(), Linear(144, 3)]
    clf = FeedbackAlignmentClassifier(layers=layers, learning_rate_init=0.3, max_iter=12, n_iter_no_change=12,
                                      early_stopping=True, validation_fraction=0.25, random_state=5).fit(X, y)
    _, X_val, _, y_val = train_test_split(X, y, random_state=np.random.RandomState(5), test_size=0.25, stratify=y)
    assert clf.validation_scores_[-1] < clf.best_validation_score_   # so the restore is exercised
    assert clf.score(X_val, y_val) == clf.best_validation_score_
