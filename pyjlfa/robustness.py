"""Adversarial robustness of a trained network: L-infinity attacks and robust accuracy.

The arithmetic runs in Julia (``FeedbackAlignment.fgsm``, ``pgd``, ``square``); this module checks
the arguments and hands over the arrays, which Julia reads and writes in place.

    from pyjlfa import robustness
    X_adv = robustness.pgd(net, X, y, eps=0.03, steps=20, through="weights")
    robustness.evaluate(net, X, y, attack="pgd", eps=[0, 0.01, 0.03, 0.1])["robust_accuracy"]

``bounds`` is the valid pixel range in the units the network sees: (0, 1) for images scaled to
[0, 1]; for images standardised as ``(x - mean) / std``, ``((0 - mean) / std, (1 - mean) / std)``,
and eps in those units is the pixel eps divided by std. Inputs outside ``bounds`` are refused.
"""

import math
import numbers

import numpy as np

__all__ = ["fgsm", "pgd", "square", "evaluate", "ATTACKS"]

ATTACKS = ("fgsm", "pgd", "square")
_CODES = {"fgsm": 0, "pgd": 1, "square": 2}
_THROUGH = ("weights", "feedback")


def _real(value, name, minimum=0.0, strict=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < minimum or (strict and value == minimum):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {relation} {minimum:g}, got {value!r}")
    return float(value)


def _integer(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _bounds(bounds):
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a pair (lo, hi), the valid pixel range, got {bounds!r}") from None
    for v in (lo, hi):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v):
            raise ValueError(f"bounds must hold two finite numbers, got {bounds!r}")
    if not lo < hi:
        raise ValueError(f"bounds must have lo < hi, got {bounds!r}")
    return float(lo), float(hi)


def _check(net, X, y, bounds):
    """(X, y, (lo, hi)) checked and as Julia reads them, before any work."""
    if net.loss != "cross_entropy":
        raise ValueError(f"attacks are scored by accuracy, so they need a classifier (loss='cross_entropy'); "
                         f"this network is a regression network (loss={net.loss!r})")
    lo, hi = _bounds(bounds)
    X, y = net._data(X, y)
    outside = (X < X.dtype.type(lo)) | (X > X.dtype.type(hi))
    if outside.any():
        where = np.unravel_index(int(np.flatnonzero(outside)[0]), X.shape)
        raise ValueError(f"X lies outside bounds ({lo:g}, {hi:g}): X[{', '.join(map(str, where))}] = {X[where]:g} "
                         "(give the pixel range as the network sees it, after any normalisation)")
    return X, y, (lo, hi)


def _through(through):
    if through not in _THROUGH:
        raise ValueError(f"through must be 'weights' or 'feedback', got {through!r}")
    return _THROUGH.index(through)


def _run(net, code, X, y, eps, bounds, out, used, through=0, steps=0, step_size=0.0, restarts=1, queries=1,
         p_init=0.05, seed=0):
    net._call("fa_attack", net._id(), code, X.ctypes.data, X.shape[0], net.n_features, y.ctypes.data,
              eps, bounds[0], bounds[1], through, steps, step_size, restarts, queries, p_init, seed,
              out.ctypes.data, None if used is None else used.ctypes.data)
    return out


def _pgd_settings(eps, steps, step_size, restarts, seed):
    steps = _integer(steps, "steps", 1)
    step_size = 2.5 * eps / steps if step_size is None else _real(step_size, "step_size")
    return steps, step_size, _integer(restarts, "restarts", 1), _integer(seed, "seed", 0)


def _square_settings(queries, p_init, seed):
    p_init = _real(p_init, "p_init", 0.0, strict=True)
    if p_init > 1:
        raise ValueError(f"p_init must be in (0, 1], got {p_init!r}")
    return _integer(queries, "queries", 1), p_init, _integer(seed, "seed", 0)


def fgsm(net, X, y, eps, through="weights", bounds=(0.0, 1.0)):
    """Fast gradient sign method (Goodfellow et al. 2015), L-infinity: ``clip(X + eps *
    sign(grad), *bounds)``, with the gradient of the mean loss through the weights or through the
    rule's feedback (see :meth:`pyjlfa.Network.input_gradient`; for "bp" both are the same).
    Returns the adversarial inputs (a new array of X's shape).

    Parameters
    ----------
    net : Network
        A trained classifier (cross-entropy loss).
    X : ndarray
        Inputs, shape (n, *input_shape), in the units the network sees.
    y : array_like
        Class labels, one per sample.
    eps : float
        The L-infinity radius, in the units of X (>= 0).
    through : {"weights", "feedback"}
        The gradient the attack follows: the true one, or the one the rule's own feedback carries.
    bounds : (float, float)
        The valid range of every input value (default [0, 1]); X must lie inside it.
    """
    eps = _real(eps, "eps")
    code = _through(through)
    X, y, bounds = _check(net, X, y, bounds)
    return _run(net, 0, X, y, eps, bounds, np.empty_like(X), None, through=code)


def pgd(net, X, y, eps, steps=10, step_size=None, restarts=1, seed=0, through="weights", bounds=(0.0, 1.0)):
    """Projected gradient descent (Madry et al. 2018), L-infinity, with a random start.

    From X plus uniform noise in [-eps, eps] (clipped to ``bounds``), ``steps`` steps
    ``x = clip(clip(x + step_size * sign(grad), X - eps, X + eps), *bounds)``; ``step_size``
    defaults to 2.5 * eps / steps. With ``restarts > 1`` a sample keeps the first restart's input
    that the network misclassifies (else the first restart's). The noise comes from ``seed`` alone.
    ``through`` as for :func:`fgsm`. Returns the adversarial inputs.

    Parameters
    ----------
    net : Network
        A trained classifier (cross-entropy loss).
    X : ndarray
        Inputs, shape (n, *input_shape), in the units the network sees.
    y : array_like
        Class labels, one per sample.
    eps : float
        The L-infinity radius, in the units of X (>= 0).
    steps : int
        Gradient steps per restart.
    step_size : float or None
        The size of each step (default 2.5 * eps / steps).
    restarts : int
        Random starts per sample.
    seed : int
        Seed of the random starts.
    through : {"weights", "feedback"}
        The gradient the attack follows: the true one, or the one the rule's own feedback carries.
    bounds : (float, float)
        The valid range of every input value (default [0, 1]); X must lie inside it.
    """
    eps = _real(eps, "eps")
    steps, step_size, restarts, seed = _pgd_settings(eps, steps, step_size, restarts, seed)
    code = _through(through)
    X, y, bounds = _check(net, X, y, bounds)
    return _run(net, 1, X, y, eps, bounds, np.empty_like(X), None, through=code, steps=steps, step_size=step_size,
                restarts=restarts, seed=seed)


def square(net, X, y, eps, queries=1000, p_init=0.05, seed=0, bounds=(0.0, 1.0), return_queries=False):
    """The Square attack (Andriushchenko et al. 2020), L-infinity, score-based: it only reads the
    network's outputs, never a gradient.

    A sample is attacked until the network misclassifies it or it has used ``queries``
    predictions (every prediction on it counts, the clean one too). The start is vertical stripes
    of +-eps; each iteration tries a random square window of +-eps per channel on every sample
    still classified correctly, kept when it lowers the margin (correct class's logit minus the
    largest other); the window's share of the image starts at ``p_init`` and halves on
    Andriushchenko et al.'s schedule. Vector inputs are images one pixel high. Returns the
    adversarial inputs, and with ``return_queries`` also each sample's number of predictions.

    Parameters
    ----------
    net : Network
        A trained classifier (cross-entropy loss).
    X : ndarray
        Inputs, shape (n, *input_shape), in the units the network sees.
    y : array_like
        Class labels, one per sample.
    eps : float
        The L-infinity radius, in the units of X (>= 0).
    queries : int
        The most predictions per sample.
    p_init : float
        The first windows' share of the image, in (0, 1].
    seed : int
        Seed of the windows and signs.
    bounds : (float, float)
        The valid range of every input value (default [0, 1]); X must lie inside it.
    return_queries : bool
        Also return each sample's number of predictions.
    """
    eps = _real(eps, "eps")
    queries, p_init, seed = _square_settings(queries, p_init, seed)
    X, y, bounds = _check(net, X, y, bounds)
    used = np.empty(X.shape[0], dtype=np.int64)
    out = _run(net, 2, X, y, eps, bounds, np.empty_like(X), used, queries=queries, p_init=p_init, seed=seed)
    return (out, used) if return_queries else out


def evaluate(net, X, y, attack="pgd", eps=(0.0, 0.01, 0.02, 0.03, 0.05, 0.1), bounds=(0.0, 1.0), **settings):
    """Robust accuracy: the network's accuracy on the attack's adversarial inputs, at each eps, on
    the whole set (X, y). eps 0 gives the clean accuracy.

    ``settings`` are the attack's own keywords: fgsm ``through``; pgd ``steps``, ``step_size``,
    ``restarts``, ``seed``, ``through``; square ``queries``, ``p_init``, ``seed``. Returns a dict
    with "attack", "eps", "robust_accuracy" (one per eps), "bounds", "n_samples", the settings used
    and, for square, "queries" (the mean predictions per sample, per eps). Everything is checked
    before the first attack runs.

    Parameters
    ----------
    net : Network
        A trained classifier (cross-entropy loss).
    X : ndarray
        Inputs, shape (n, *input_shape), in the units the network sees.
    y : array_like
        Class labels, one per sample.
    attack : {"fgsm", "pgd", "square"}
        The attack.
    eps : float or sequence of float
        The L-infinity radii, in the units of X.
    bounds : (float, float)
        The valid range of every input value (default [0, 1]); X must lie inside it.
    **settings
        The attack's own keywords (above).
    """
    if attack not in ATTACKS:
        raise ValueError(f"attack must be one of {', '.join(map(repr, ATTACKS))}, got {attack!r}")
    if isinstance(eps, (str, bytes)) or not hasattr(eps, "__iter__"):
        eps = [eps]
    eps = [_real(e, "eps") for e in eps]
    if not eps:
        raise ValueError("eps must list at least one value")
    allowed = {"fgsm": ("through",), "pgd": ("steps", "step_size", "restarts", "seed", "through"),
               "square": ("queries", "p_init", "seed")}[attack]
    unknown = sorted(set(settings) - set(allowed))
    if unknown:
        raise TypeError(f"{attack} has no setting {', '.join(unknown)}; its settings are {', '.join(allowed)}")
    X, y, bounds = _check(net, X, y, bounds)
    used = np.empty(X.shape[0], dtype=np.int64) if attack == "square" else None
    if attack == "fgsm":
        through = settings.get("through", "weights")
        used_settings, args = {"through": through}, dict(through=_through(through))
    elif attack == "pgd":
        through = settings.get("through", "weights")
        code = _through(through)
        steps = settings.get("steps", 10)
        _pgd_settings(1.0, steps, settings.get("step_size"), settings.get("restarts", 1), settings.get("seed", 0))
        used_settings = {"steps": steps, "step_size": settings.get("step_size"), "restarts": settings.get("restarts", 1),
                         "seed": settings.get("seed", 0), "through": through}
        args = None
    else:
        queries, p_init, seed = _square_settings(settings.get("queries", 1000), settings.get("p_init", 0.05),
                                                 settings.get("seed", 0))
        used_settings, args = {"queries": queries, "p_init": p_init, "seed": seed}, dict(queries=queries, p_init=p_init,
                                                                                          seed=seed)
    adversarial = np.empty_like(X)
    accuracy, mean_queries = [], []
    for e in eps:
        if attack == "pgd":
            steps, step_size, restarts, seed = _pgd_settings(e, used_settings["steps"], used_settings["step_size"],
                                                             used_settings["restarts"], used_settings["seed"])
            args = dict(through=code, steps=steps, step_size=step_size, restarts=restarts, seed=seed)
        _run(net, _CODES[attack], X, y, e, bounds, adversarial, used, **args)
        accuracy.append(net._evaluate(adversarial, y)["accuracy"])
        if used is not None:
            mean_queries.append(float(used.mean()))
    result = {"attack": attack, "eps": eps, "robust_accuracy": accuracy, "bounds": bounds, "n_samples": int(X.shape[0]),
              **used_settings}
    if attack == "square":
        result["queries_mean"] = mean_queries
    return result
