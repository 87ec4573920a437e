"""scikit-learn estimators on pyjlfa networks: drop-in cousins of MLPClassifier and MLPRegressor.

    from pyjlfa.sklearn import FeedbackAlignmentClassifier
    clf = FeedbackAlignmentClassifier(hidden_layer_sizes=(256, 256), rule="dfa", random_state=0)
    clf.fit(X, y).predict(X_test)

The learned state lives in NumPy arrays on the estimator: ``coefs_``, ``intercepts_`` and
``feedback_matrices_``. While the estimator is in use they are the zero-copy views of a private
:class:`pyjlfa.Network` that does all the arithmetic in Julia (training updates them in place);
pickling (and ``copy.deepcopy``) stores them as plain arrays, and the network is rebuilt from them
whenever they are not its views (after unpickling, or when you assign new arrays).

Needs scikit-learn (``pip install pyjlfa[sklearn]``).
"""

import math
import numbers
import sys
import threading
import warnings

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelEncoder
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets, unique_labels
from sklearn.utils.validation import check_is_fitted, validate_data

from . import _runtime, _schema
from .layers import _layer_list, from_text
from .network import Network
from .optimizers import SGD, Adam

__all__ = ["FeedbackAlignmentClassifier", "FeedbackAlignmentRegressor"]

# solver name -> the pyjlfa optimizer it means, built from the estimator's parameters and the
# batch size. scikit-learn's L2 term adds alpha * W / batch_size to each batch's gradient, which is
# pyjlfa's (coupled) weight_decay = alpha / batch_size; like scikit-learn, it spares the biases.
_SOLVERS = {
    "sgd": lambda est, batch: SGD(lr=est.learning_rate_init, momentum=est.momentum,
                                  nesterov=bool(est.nesterovs_momentum and est.momentum > 0),
                                  weight_decay=est.alpha / batch),
    "adam": lambda est, batch: Adam(lr=est.learning_rate_init, beta1=est.beta_1, beta2=est.beta_2,
                                    eps=est.epsilon, weight_decay=est.alpha / batch),
}
# scikit-learn's activation names that pyjlfa spells differently; others pass through to Network.
_ACTIVATION_ALIASES = {"logistic": "sigmoid"}


def _check_thread():
    """Refuse, before any work, a call from a thread that cannot enter Julia, or that would bind Julia to itself.

    Julia before 1.9 stays bound to the thread that starts it. In a search on joblib's "threading"
    backend, the first worker to start Julia would make it unusable for the other workers and, once
    joblib discards that worker, for the whole process. Refusing every such fold makes scikit-learn
    stop the search ("All the ... fits failed") instead of reporting NaN scores for some folds.
    """
    engine = _runtime._engine
    if engine is not None:
        engine.check_thread()
    elif threading.current_thread() is not threading.main_thread() and not _in_dask_worker():
        raise RuntimeError(
            f"pyjlfa's estimators do not start Julia from a thread other than the main one (this call came from "
            f"{threading.current_thread().name!r}): Julia before 1.9 stays bound to the thread that starts it, and "
            "a worker thread (joblib's 'threading' backend) is discarded after the search. Use a process-based "
            "backend (joblib's default, loky, with n_jobs) or n_jobs=1; to bind Julia to this thread on purpose, "
            "call pyjlfa.start_julia() on it first.")


def _in_dask_worker():
    """Whether this thread runs a Dask worker's task (joblib's "dask" backend): the worker's own
    process, whose task thread stays (one thread per worker, as pyjlfa.sweep's clusters have), may
    start Julia on it."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.get_worker()
        return True
    except ValueError:
        return False


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _with_parameters(net):
    """The layers that hold a W (Linear, Conv2d), depth first: those of coefs_ and intercepts_."""
    return [layer for _, layer in net.named_layers() if layer.W is not None]


def _copies(net, skip=()):
    """Copies of the network's arrays by layer path (for early stopping's best epoch, and pickles)."""
    return {path: {name: a.copy() for name, a in layer.arrays.items() if name not in skip}
            for path, layer in net.named_layers() if layer.arrays}


def _restore(net, copies):
    layers = dict(net.named_layers())
    for path, arrays in copies.items():
        for name, a in arrays.items():
            layers[path].arrays[name][...] = a


class _BaseFeedbackAlignment(BaseEstimator):
    """What the classifier and the regressor share; see their docstrings."""

    _loss = None  # the pyjlfa loss: "cross_entropy" or "mse"
    _auto_batch_size = 200  # what batch_size="auto" means (up to the number of samples)

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, rule="fa", feedback_seed=None,
                 solver="sgd", alpha=0.0, batch_size="auto", learning_rate_init=0.001, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=False, early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, layers=None):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.rule = rule
        self.feedback_seed = feedback_seed
        self.solver = solver
        self.alpha = alpha
        self.batch_size = batch_size
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.shuffle = shuffle
        self.random_state = random_state
        self.tol = tol
        self.verbose = verbose
        self.warm_start = warm_start
        self.momentum = momentum
        self.nesterovs_momentum = nesterovs_momentum
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.n_iter_no_change = n_iter_no_change
        self.layers = layers

    # -- parameters -----------------------------------------------------------------------------
    def _hidden_sizes(self):
        sizes = self.hidden_layer_sizes
        sizes = [sizes] if _is_int(sizes) else sizes
        if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__") \
                or not all(_is_int(s) and s > 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes must be a positive integer or a sequence of them, "
                             f"got {self.hidden_layer_sizes!r}")
        return [int(s) for s in sizes]

    def _layer_list(self):
        """``layers`` as a list of pyjlfa.layers (given as such or as their text), or None (dense)."""
        if self.layers is None:
            return None
        if isinstance(self.layers, str):
            return from_text(self.layers, "layers")
        return list(_layer_list(self.layers, "layers"))

    def _n_layers(self, net=None):
        return len(self._hidden_sizes()) + 2 if self.layers is None else len(_with_parameters(net)) + 1

    def _check_parameters(self):
        """Refuse what pyjlfa cannot do, with a clear message, before any work."""
        if self.solver not in _SOLVERS:
            raise ValueError(f"solver={self.solver!r} is not available in pyjlfa; available solvers: "
                             f"{', '.join(map(repr, _SOLVERS))}")
        # the bounds of the optimizer parameters these become (alpha is weight_decay), from the engine's schema
        bound = {f: _schema.param("optimizers", "adam" if f.startswith("beta") or f == "eps" else "sgd", f)
                 for f in ("weight_decay", "lr", "momentum", "beta1", "beta2", "eps")}
        ok = {f: (lambda x, p=p: _is_real(x) and _schema.within(p, x)) for f, p in bound.items()}
        if not ok["weight_decay"](self.alpha):
            raise ValueError(f"alpha must be {bound['weight_decay']['expected']}, got {self.alpha!r}")
        if not ok["lr"](self.learning_rate_init):
            raise ValueError(f"learning_rate_init must be {bound['lr']['expected']}, got {self.learning_rate_init!r}")
        if not ok["momentum"](self.momentum):
            raise ValueError(f"momentum must be {bound['momentum']['expected']}, got {self.momentum!r}")
        if self.solver == "adam" and not (ok["beta1"](self.beta_1) and ok["beta2"](self.beta_2)):
            raise ValueError(f"beta_1 and beta_2 must be numbers in {_schema.interval(bound['beta1'])}, "
                             f"got {self.beta_1!r}, {self.beta_2!r}")
        if self.solver == "adam" and not ok["eps"](self.epsilon):
            raise ValueError(f"epsilon must be {bound['eps']['expected']}, got {self.epsilon!r}")
        if not (self.batch_size == "auto" or (_is_int(self.batch_size) and self.batch_size > 0)):
            raise ValueError(f"batch_size must be 'auto' or a positive integer, got {self.batch_size!r}")
        if not (_is_int(self.max_iter) and self.max_iter > 0):
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not (_is_real(self.tol) and self.tol >= 0):
            raise ValueError(f"tol must be a non-negative number, got {self.tol!r}")
        if not ((_is_int(self.n_iter_no_change) and self.n_iter_no_change > 0) or self.n_iter_no_change == np.inf):
            raise ValueError(f"n_iter_no_change must be a positive integer or np.inf, got {self.n_iter_no_change!r}")
        if self.early_stopping and not (_is_real(self.validation_fraction) and 0 < self.validation_fraction < 1):
            raise ValueError(f"validation_fraction must be in (0, 1), got {self.validation_fraction!r}")
        self._hidden_sizes()
        self._layer_list()

    def _seeds(self):
        """The network's seed and a RandomState for the validation split, both from random_state."""
        rng = check_random_state(self.random_state)
        # An integer random_state is the network's seed itself, so it matches Network(seed=...).
        seed = int(self.random_state) if _is_int(self.random_state) else int(rng.randint(np.iinfo(np.int64).max))
        return seed, rng

    def _network_config(self, sample_shape, n_outputs, dtype, seed):
        common = dict(rule=self.rule, loss=self._loss, seed=seed, feedback_seed=self.feedback_seed,
                      dtype=np.dtype(dtype).name)
        if self.layers is not None:   # one sample's shape, e.g. (C, H, W), comes from X
            return dict(layers=self._layer_list(), input_shape=tuple(sample_shape), **common)
        return dict(layers=[sample_shape[0]] + self._hidden_sizes() + [n_outputs],
                    activation=_ACTIVATION_ALIASES.get(self.activation, self.activation), **common)

    # -- the network behind the arrays ----------------------------------------------------------
    def _adopt(self, net):
        """Make the estimator's arrays the views of ``net``'s parameters."""
        self._net = net
        layers = _with_parameters(net)
        self.coefs_ = [layer.W for layer in layers]
        self.intercepts_ = [layer.b for layer in layers]
        self.feedback_matrices_ = [layer.B for layer in layers]

    def _network(self):
        """The Julia network whose parameter views are coefs_, intercepts_ and feedback_matrices_.

        Rebuilt from those arrays when they are not its views: after unpickling or deepcopy
        (which carry plain arrays), or when arrays were assigned. A rebuilt network's momentum
        and shuffling stream start afresh.
        """
        net = getattr(self, "_net", None)
        if net is not None and all(len(arrays) == len(_with_parameters(net)) and all(
                a is getattr(layer, which) for a, layer in zip(arrays, _with_parameters(net)))
                for _, which, arrays in self._parameter_lists()):
            return net
        net = Network(**self._config)
        layers = _with_parameters(net)
        for name, which, arrays in self._parameter_lists():
            if len(arrays) != len(layers):
                raise ValueError(f"{name} has {len(arrays)} entries; this network has {len(layers)} layers")
            for k, (value, layer) in enumerate(zip(arrays, layers)):
                view = getattr(layer, which)
                if (view is None) != (value is None) or (view is not None and np.shape(value) != view.shape):
                    raise ValueError(f"{name}[{k}] has shape {np.shape(value)}; this network needs "
                                     f"{None if view is None else view.shape}")
                if view is not None:
                    view[...] = value
        _restore(net, getattr(self, "_other_arrays", {}))   # batch norm's, when pickled
        self._adopt(net)
        return net

    def _parameter_lists(self):
        return (("coefs_", "W", self.coefs_), ("intercepts_", "b", self.intercepts_),
                ("feedback_matrices_", "B", self.feedback_matrices_))

    def __getstate__(self):
        # Pickles carry plain NumPy copies of the parameters, never the Julia network.
        state = dict(super().__getstate__())
        net = state.pop("_net", None)
        if net is not None and self.layers is not None:   # arrays beyond W, b, B (batch norm's)
            state["_other_arrays"] = _copies(net, skip=("W", "b", "B"))
        for name in ("coefs_", "intercepts_", "feedback_matrices_"):
            if name in state:
                state[name] = [None if a is None else np.array(a) for a in state[name]]
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._net = None  # rebuilt from the arrays at first use

    # -- training -------------------------------------------------------------------------------
    def _fit(self, X, y, incremental, classes=None):
        _check_thread()
        self._check_parameters()
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        first = not hasattr(self, "coefs_") or not (self.warm_start or incremental)
        X, y, fitted = self._validate_training_data(X, y, first, incremental, classes)
        seed, rng = self._seeds()
        config = self._network_config(X.shape[1:], fitted["n_outputs_"], X.dtype, seed)
        if first:
            net = Network(**config)  # validates rule and activation before anything is set
            fitted["n_layers_"] = self._n_layers(net)
            self.__dict__.update(fitted)
            self._config = config
            self._adopt(net)
            self._initialize_progress()
        else:
            changed = [k for k in ("layers", "activation", "input_shape", "rule")
                       if config.get(k) != self._config.get(k)]
            if changed:
                raise ValueError("warm_start and partial_fit continue the fitted network, whose "
                                 + ", ".join(f"{k} is {self._config[k]!r} (now {config[k]!r})" for k in changed)
                                 + "; fit with warm_start=False to start a new one")
            net = self._network()
            if self.early_stopping != (self.validation_scores_ is not None):
                self._reset_stopping()  # warm start with early_stopping switched on or off

        if self.early_stopping:
            stratify = y if self._loss == "cross_entropy" else None
            X, X_val, y, y_val = train_test_split(X, y, random_state=rng, test_size=self.validation_fraction,
                                                  stratify=stratify)
            if X_val.shape[0] < 2:
                raise ValueError("The validation set is too small. Increase 'validation_fraction' "
                                 "or the size of your dataset.")
        n = X.shape[0]
        if self.batch_size == "auto":
            batch_size = min(self._auto_batch_size, n)
        else:
            if self.batch_size > n:
                warnings.warn(f"batch_size={self.batch_size} is larger than the {n} training samples; "
                              f"using {n}", stacklevel=3)
            batch_size = min(self.batch_size, n)
        optimizer = _SOLVERS[self.solver](self, batch_size)

        self.n_iter_ = 0
        for _ in range(1 if incremental else self.max_iter):
            history = net.fit(X, y, epochs=1, batch_size=batch_size, optimizer=optimizer, shuffle=self.shuffle)
            self.n_iter_ += 1
            self.t_ += n
            self.loss_ = history["loss"][0]
            self.loss_curve_.append(self.loss_)
            if self.verbose:
                print(f"Iteration {self.n_iter_}, loss = {self.loss_:.8f}")
            if self.early_stopping:
                self._track_validation(net, X_val, y_val)
            else:
                self._track_loss()
            if self._no_improvement_count > self.n_iter_no_change:
                if self.verbose:
                    what = "Validation score" if self.early_stopping else "Training loss"
                    print(f"{what} did not improve more than tol={self.tol} for "
                          f"{self.n_iter_no_change} consecutive epochs. Stopping.")
                break
            if not incremental and self.n_iter_ == self.max_iter:
                warnings.warn(f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the "
                              "optimization hasn't converged yet.", ConvergenceWarning, stacklevel=3)
        if self.early_stopping:  # keep the parameters of the best validation score
            _restore(net, self._best_parameters)
        return self

    def _initialize_progress(self):
        self.n_iter_, self.t_ = 0, 0
        self.loss_curve_ = []
        self._reset_stopping()

    def _reset_stopping(self):
        """The stopping rule's record: of validation scores with early_stopping, else of the loss."""
        self._no_improvement_count = 0
        if self.early_stopping:
            self.validation_scores_ = []
            self.best_validation_score_ = -np.inf
            self.best_loss_ = None
            self._best_parameters = self._copy_parameters()
        else:
            self.validation_scores_ = None
            self.best_validation_score_ = None
            self.best_loss_ = np.inf

    def _copy_parameters(self):
        return _copies(self._network(), skip=("B",))

    def _track_loss(self):
        """As MLP*: count epochs whose training loss is not ``tol`` below the best so far."""
        loss = self.loss_curve_[-1]
        self._no_improvement_count = self._no_improvement_count + 1 if loss > self.best_loss_ - self.tol else 0
        self.best_loss_ = min(self.best_loss_, loss)

    def _track_validation(self, net, X_val, y_val):
        """As MLP*: count epochs whose validation score is not ``tol`` above the best so far."""
        score = self._validation_score(net, X_val, y_val)
        self.validation_scores_.append(score)
        if self.verbose:
            print(f"Validation score: {score:.6f}")
        stalled = score < self.best_validation_score_ + self.tol
        self._no_improvement_count = self._no_improvement_count + 1 if stalled else 0
        if score > self.best_validation_score_:
            self.best_validation_score_ = score
            self._best_parameters = self._copy_parameters()

    def __sklearn_is_fitted__(self):
        # Fitted once the parameters exist (validate_data sets n_features_in_ earlier).
        return hasattr(self, "coefs_")

    def _input_dtype(self, first):
        # A first fit keeps float32 or float64 inputs as they are (and makes a network of that
        # dtype); later calls convert to the fitted network's dtype.
        return (np.float64, np.float32) if first else np.dtype(self._config["dtype"])

    def _validated_inputs(self, X):
        check_is_fitted(self)
        _check_thread()
        return validate_data(self, X, reset=False, dtype=self._input_dtype(False), order="C",
                             allow_nd=self.layers is not None)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = False
        tags.input_tags.allow_nan = False
        return tags


_PARAMETERS_DOC = """
    Parameters
    ----------
    hidden_layer_sizes : int or sequence of int, default=(100,)
        Widths of the hidden layers.
    layers : list of pyjlfa.layers, or its text, default=None
        Any network instead of the dense one of hidden_layer_sizes and activation, e.g.
        ``[Conv2d(1, 6, 5), ReLU(), MaxPool2d(2), Flatten(), Linear(6 * 12 * 12, 10)]``; X then
        holds samples of the shape the first layer takes, such as images (n, C, H, W). coefs_,
        intercepts_ and feedback_matrices_ list the layers with weights (Linear, Conv2d), depth first.
    activation : {"relu", "tanh", "logistic", "sigmoid", "leaky_relu", "identity"}, default="relu"
        Hidden-layer activation ("logistic" is scikit-learn's name for "sigmoid").
    rule : str, default="fa"
        How hidden layers get their error: "bp" (backpropagation), "fa" (feedback alignment),
        "dfa" (direct feedback alignment), or any other rule name pyjlfa.Network accepts.
    feedback_seed : int or None, default=None
        Seed of the fixed random feedback matrices; None uses the network's seed.
    solver : {"sgd", "adam"}, default="sgd"
        The optimizer: pyjlfa.SGD (momentum, Nesterov) or pyjlfa.Adam (beta_1, beta_2, epsilon).
    alpha : float, default=0.0
        L2 penalty as in scikit-learn: alpha * W / batch_size is added to each batch's gradient
        (pyjlfa's weight_decay = alpha / batch_size); biases are not penalised.
    batch_size : int or "auto", default="auto"
        Minibatch size; "auto" is min(AUTO_BATCH, n_samples).
    learning_rate_init : float, default=LR_DEFAULT
        The (constant) learning rate.
    max_iter : int, default=200
        Maximum number of epochs.
    shuffle : bool, default=True
        Shuffle the samples every epoch (with the network's own random stream).
    random_state : int, RandomState instance or None, default=None
        An integer is the network's seed (weights and shuffling) and seeds the validation split.
    tol, n_iter_no_change : float, int
        Stop when the training loss (or, with early_stopping, the validation score) has not
        improved by at least tol for more than n_iter_no_change epochs, as in MLPClassifier.
    verbose : bool, default=False
        Print the loss after every epoch.
    warm_start : bool, default=False
        Continue from the fitted network in the next call to fit.
    momentum : float, default=0.9
        SGD momentum in [0, 1) (PyTorch's form: v = momentum*v + dW; W -= lr*v).
    nesterovs_momentum : bool, default=False
        Nesterov momentum for the sgd solver (when momentum > 0).
    early_stopping : bool, default=False
        Hold out validation_fraction of the training data, stop when its score stops improving
        and keep the parameters of the best epoch.
    validation_fraction : float, default=0.1
        The fraction of the training data held out with early_stopping.
    beta_1, beta_2, epsilon : float, default=0.9, 0.999, 1e-8
        Adam's moment decay rates and epsilon (solver="adam"; the sgd solver ignores them).

    Attributes
    ----------
    coefs_, intercepts_ : lists of arrays; layer k computes ``h @ coefs_[k] + intercepts_[k]``.
    feedback_matrices_ : list of arrays or None, the fixed feedback matrix of each layer (None
        where the rule has none).
    n_features_in_, n_outputs_, n_layers_, out_activation_, n_iter_, t_, loss_, loss_curve_,
    best_loss_, validation_scores_, best_validation_score_ : as in MLPClassifier.
"""


class FeedbackAlignmentClassifier(ClassifierMixin, _BaseFeedbackAlignment):
    # A class docstring must be a literal to be one: this one is built from the shared parameters' text.
    __doc__ = """A softmax classifier trained with feedback alignment (or BP, DFA, ...) in Julia.

    Like MLPClassifier, with the learning rule as a parameter. Labels may be any type
    unique_labels accepts (strings, integers); ``classes_`` is their sorted order, which is the
    column order of ``predict_proba``. Binary problems use two softmax outputs.

    Its defaults differ from the regressor's (and MLPClassifier's sgd ones) so that it does well
    on small tabular data as it comes: learning_rate_init=0.03, momentum 0.9 and batches of 32
    reach MLPClassifier's (adam) accuracy on load_digits in 20 epochs (see the table in docs/sklearn.md).
    """ + _PARAMETERS_DOC.replace("LR_DEFAULT", "0.03").replace("AUTO_BATCH", "32")

    _loss = "cross_entropy"
    _auto_batch_size = 32

    def __init__(self, hidden_layer_sizes=(100,), activation="relu", *, rule="fa", feedback_seed=None,
                 solver="sgd", alpha=0.0, batch_size="auto", learning_rate_init=0.03, max_iter=200,
                 shuffle=True, random_state=None, tol=1e-4, verbose=False, warm_start=False, momentum=0.9,
                 nesterovs_momentum=False, early_stopping=False, validation_fraction=0.1, beta_1=0.9,
                 beta_2=0.999, epsilon=1e-8, n_iter_no_change=10, layers=None):
        # The same parameters as the regressor, with defaults for classifying small tabular data.
        super().__init__(hidden_layer_sizes, activation, rule=rule, feedback_seed=feedback_seed, solver=solver,
                         alpha=alpha, batch_size=batch_size, learning_rate_init=learning_rate_init,
                         max_iter=max_iter, shuffle=shuffle, random_state=random_state, tol=tol,
                         verbose=verbose, warm_start=warm_start, momentum=momentum,
                         nesterovs_momentum=nesterovs_momentum, early_stopping=early_stopping,
                         validation_fraction=validation_fraction, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, n_iter_no_change=n_iter_no_change, layers=layers)

    def _validate_training_data(self, X, y, first, incremental, classes):
        X, y = validate_data(self, X, y, reset=first, dtype=self._input_dtype(first), order="C",
                             allow_nd=self.layers is not None)
        check_classification_targets(y)
        if first:
            classes = unique_labels(y if classes is None else classes)
        else:
            classes = self.classes_
            if not incremental and not np.array_equal(unique_labels(y), classes):
                raise ValueError("warm_start can only be used where `y` has the same classes as in the "
                                 f"previous call to fit. Previously got {classes}, `y` has {unique_labels(y)}")
        if len(classes) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes in the data, "
                             f"but the data contains only one class: {classes[0]!r}")
        y = LabelEncoder().fit(classes).transform(y)  # raises on labels outside classes
        return X, y, dict(classes_=classes, n_outputs_=len(classes), out_activation_="softmax")

    def _validation_score(self, net, X_val, y_val):
        return net.evaluate(X_val, y_val)["accuracy"]

    def fit(self, X, y):
        """Train on (X, y) for up to max_iter epochs (one call into Julia per epoch).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Class labels.

        Returns
        -------
        self
        """
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y, classes=None):
        """One epoch over (X, y). The first call must list all ``classes``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,)
            Class labels.
        classes : array-like, optional
            Every class label (required in the first call).

        Returns
        -------
        self
        """
        if not hasattr(self, "coefs_"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
        elif classes is not None and not np.array_equal(unique_labels(classes), self.classes_):
            raise ValueError(f"`classes={classes!r}` is not the same as on last call to partial_fit, "
                             f"was: {self.classes_!r}")
        return self._fit(X, y, incremental=True, classes=classes)

    def predict(self, X):
        """The most probable class of each sample, from ``classes_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        X = self._validated_inputs(X)
        return self.classes_[self._network().predict(X)]

    def predict_proba(self, X):
        """Class probabilities, columns in the order of ``classes_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        X = self._validated_inputs(X)
        return self._network().predict_proba(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = False
        return tags


class FeedbackAlignmentRegressor(RegressorMixin, _BaseFeedbackAlignment):
    __doc__ = """A regressor (linear output, half squared error) trained with feedback alignment in Julia.

    Like MLPRegressor, with the learning rule as a parameter. ``y`` may be 1-D or
    (n_samples, n_outputs); ``loss_curve_`` holds pyjlfa's mse, mean over samples of
    ½‖prediction − y‖² (MLPRegressor's is also averaged over outputs). Its learning rate stays
    small (0.001) because regression targets often come unscaled, where larger steps diverge.
    """ + _PARAMETERS_DOC.replace("LR_DEFAULT", "0.001").replace("AUTO_BATCH", "200")

    _loss = "mse"

    def _validate_training_data(self, X, y, first, incremental, classes):
        X, y = validate_data(self, X, y, reset=first, dtype=self._input_dtype(first), order="C",
                             multi_output=True, y_numeric=True, allow_nd=self.layers is not None)
        y = y.reshape(-1, 1) if y.ndim == 1 else y
        if not first and y.shape[1] != self.n_outputs_:
            raise ValueError(f"y has {y.shape[1]} outputs; the fitted network has {self.n_outputs_}")
        return X, y, dict(n_outputs_=y.shape[1], out_activation_="identity")

    def _validation_score(self, net, X_val, y_val):
        return r2_score(y_val, net.predict(X_val))

    def fit(self, X, y):
        """Train on (X, y) for up to max_iter epochs (one call into Julia per epoch).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets.

        Returns
        -------
        self
        """
        return self._fit(X, y, incremental=False)

    def partial_fit(self, X, y):
        """One epoch over (X, y).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : array-like of shape (n_samples,) or (n_samples, n_outputs)
            Targets.

        Returns
        -------
        self
        """
        return self._fit(X, y, incremental=True)

    def predict(self, X):
        """The network's outputs: shape (n_samples,) for one output, else (n_samples, n_outputs).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Samples.

        Returns
        -------
        ndarray
        """
        X = self._validated_inputs(X)
        out = self._network().predict(X)
        return out.ravel() if out.shape[1] == 1 else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
