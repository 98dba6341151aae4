"""Fitted scikit-learn tree classifiers → a validated TreeEnsemble.

scikit-learn compares float32(x) <= thr64. The stored float32 threshold is the largest float32
<= thr64 (`float32_floor`), so `x32 <= t32` holds exactly when sklearn's `x32 <= thr64` does
(`strict=False`). Forests (RandomForest, ExtraTrees, a single DecisionTree) average per-leaf class
fractions (combine "mean", link "identity", one output per class even for binary). Gradient
boosting has the learning rate folded into the leaf values and the init estimator's raw
prediction measured as the bias; for `loss='exponential'` raw values are doubled so that the
logistic link gives sklearn's probabilities. Missing-value routing is ignored: inputs must be finite.
"""
from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Any

import numpy as np

from ...errors import ModelError
from ..base import Tree, TreeEnsemble
from .checks import check_tree_caps, measure_bias, probe_points

log = logging.getLogger(__name__)


def float32_floor(values: Any) -> np.ndarray:
    """Largest float32 <= each float64 value, so `float32(x) <= result` iff `float32(x) <= value`."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        t = v.astype(np.float32)
    over = t.astype(np.float64) > v
    t[over] = np.nextafter(t[over], np.float32(-np.inf))
    return t


def _sk_tree(tree_: Any, n_outputs: int, value: np.ndarray) -> Tree:
    """One sklearn `tree_` as a Tree with float32-floored thresholds and the given per-node values at its leaves."""
    left = np.asarray(tree_.children_left, dtype=np.int64)
    right = np.asarray(tree_.children_right, dtype=np.int64)
    internal = left >= 0
    feature = np.where(internal, np.asarray(tree_.feature, dtype=np.int64), -1)
    threshold = np.where(internal, float32_floor(np.where(internal, tree_.threshold, 0.0)), np.float32(0)).astype(np.float32)
    v = np.zeros((left.size, n_outputs), dtype=np.float64)
    v[~internal] = value[~internal]
    return Tree(feature=feature, threshold=threshold, left=np.where(internal, left, -1), right=np.where(internal, right, -1), value=v)


def require_sk_fitted(est: Any) -> None:
    """ModelError "... is not fitted" unless scikit-learn considers `est` fitted."""
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(est)
    except NotFittedError:
        raise ModelError(f"{type(est).__name__} is not fitted; fit it first") from None


def _leaf_fractions(tree_: Any, k: int) -> np.ndarray:
    """Per-node class fractions as sklearn's predict_proba returns them (counts normalised if needed)."""
    v = np.asarray(tree_.value, dtype=np.float64)[:, 0, :k]
    s = v.sum(axis=1, keepdims=True)
    leaves = np.asarray(tree_.children_left) < 0
    if np.allclose(s[leaves], 1.0, rtol=0, atol=1e-9):
        fractions: np.ndarray = v.copy()  # fractions (scikit-learn >= 1.4.1): used as stored
        return fractions
    log.debug("leaf values are class counts (scikit-learn < 1.4.1); normalising them as predict_proba does")
    s = np.where(s == 0.0, 1.0, s)
    return v / s


def parse_sklearn_forest(est: Any) -> TreeEnsemble:
    """RandomForest/ExtraTrees classifier (or one DecisionTreeClassifier) as a mean of leaf class fractions."""
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    if not isinstance(est, (RandomForestClassifier, ExtraTreesClassifier, DecisionTreeClassifier)):
        raise ModelError(f"parse_sklearn_forest: {type(est).__name__} is not a RandomForest/ExtraTrees/DecisionTree classifier")
    require_sk_fitted(est)
    if int(getattr(est, "n_outputs_", 1)) != 1:
        raise ModelError(f"{type(est).__name__} predicts several outputs; only single-output classifiers are supported")
    members = [est] if isinstance(est, DecisionTreeClassifier) else list(est.estimators_)
    k = int(est.n_classes_)
    d = int(est.n_features_in_)
    trees = tuple(_sk_tree(m.tree_, k, _leaf_fractions(m.tree_, k)) for m in members)
    import sklearn

    ens = TreeEnsemble(
        trees=trees, n_features=d, n_classes=k, n_outputs=k, strict=False, bias=np.zeros(k), combine="mean",
        link="identity", source=f"sklearn.{type(est).__name__}",
        meta={"library": "scikit-learn", "library_version": sklearn.__version__, "classes": [str(c) for c in est.classes_]},
    ).validate()
    check_tree_caps(ens)
    P = probe_points(ens.trees, d)
    bias = measure_bias(ens, P, quiet(est.predict_proba, P), f"parse_sklearn_forest({type(est).__name__})", rel=1e-12)
    if np.abs(bias).max() > 1e-9:
        raise ModelError(f"parse_sklearn_forest: {type(est).__name__} probabilities are not the mean of its leaf fractions; not supported")
    return ens


def parse_sklearn_gbdt(est: Any) -> TreeEnsemble:
    """GradientBoostingClassifier: learning rate folded into leaves, init raw prediction measured as the bias."""
    from sklearn.ensemble import GradientBoostingClassifier

    if not isinstance(est, GradientBoostingClassifier):
        raise ModelError(f"parse_sklearn_gbdt: {type(est).__name__} is not a GradientBoostingClassifier")
    require_sk_fitted(est)
    k = int(est.n_classes_)
    d = int(est.n_features_in_)
    stages = np.asarray(est.estimators_, dtype=object)
    per = stages.shape[1]
    n_outputs = 1 if k == 2 else k
    if per != n_outputs:
        raise ModelError(f"{type(est).__name__}: {per} trees per stage for {k} classes; this layout is not supported")
    scale = 2.0 if est.loss == "exponential" else 1.0  # sklearn: p = expit(2 raw) for the exponential loss
    lr = float(est.learning_rate)
    trees = []
    for i in range(stages.shape[0]):
        for j in range(per):
            t = stages[i, j].tree_
            v = np.zeros((t.node_count, n_outputs))
            v[:, j] = (lr * np.asarray(t.value, dtype=np.float64)[:, 0, 0]) * scale
            trees.append(_sk_tree(t, n_outputs, v))
    import sklearn

    ens = TreeEnsemble(
        trees=tuple(trees), n_features=d, n_classes=k, n_outputs=n_outputs, strict=False, bias=np.zeros(n_outputs),
        combine="sum", link="logistic" if n_outputs == 1 else "softmax", source=f"sklearn.{type(est).__name__}",
        meta={"library": "scikit-learn", "library_version": sklearn.__version__, "loss": str(est.loss), "raw_scale": scale,
              "classes": [str(c) for c in est.classes_]},
    ).validate()
    check_tree_caps(ens)
    P = probe_points(ens.trees, d)
    raw = np.asarray(quiet(est.decision_function, P), dtype=np.float64).reshape(P.shape[0], -1) * scale
    bias = measure_bias(ens, P, raw, f"parse_sklearn_gbdt({type(est).__name__})", rel=1e-13)
    return dataclasses.replace(ens, bias=bias).validate()


def parse_sklearn(est: Any) -> TreeEnsemble:
    """Dispatch a fitted scikit-learn tree classifier to its parser."""
    from sklearn.ensemble import AdaBoostClassifier, GradientBoostingClassifier, HistGradientBoostingClassifier

    if isinstance(est, GradientBoostingClassifier):
        return parse_sklearn_gbdt(est)
    if isinstance(est, HistGradientBoostingClassifier):
        from .histgb_parse import parse_sklearn_histgb

        return parse_sklearn_histgb(est)
    if isinstance(est, AdaBoostClassifier):
        from .adaboost_parse import parse_sklearn_adaboost

        return parse_sklearn_adaboost(est)
    return parse_sklearn_forest(est)


def is_sk_tree_classifier(est: Any) -> bool:
    """True for the scikit-learn classifiers `parse_sklearn` reads (forests, extra trees, one tree, gradient boosting,
    histogram gradient boosting, AdaBoost; the last two may still refuse, see `parse_refusable`)."""
    from sklearn.ensemble import ExtraTreesClassifier, GradientBoostingClassifier, RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    return isinstance(est, (RandomForestClassifier, ExtraTreesClassifier, DecisionTreeClassifier, GradientBoostingClassifier)) or parse_refusable(est)


def parse_refusable(est: Any) -> bool:
    """True for the types whose parse can refuse a fitted model (HistGB: categorical splits; AdaBoost: non-tree members)."""
    from sklearn.ensemble import AdaBoostClassifier, HistGradientBoostingClassifier

    return isinstance(est, (HistGradientBoostingClassifier, AdaBoostClassifier))


def quiet(fn: Any, X: np.ndarray) -> Any:
    """Call an sklearn method on a plain array without the 'no feature names' warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        return fn(X)


__all__ = [
    "float32_floor", "is_sk_tree_classifier", "parse_refusable", "parse_sklearn", "parse_sklearn_forest", "parse_sklearn_gbdt", "quiet",
    "require_sk_fitted",
]
