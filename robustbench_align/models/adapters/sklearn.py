"""Adapter for scikit-learn classifiers (and any object with `predict_proba`): black boxes, except that
RandomForest/ExtraTrees/GradientBoosting/DecisionTree/HistGradientBoosting/AdaBoost classifiers also get
`tree_ensemble()` (the tree parse hook).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from ...errors import ModelError, first_line
from ..base import Model, TreeEnsemble, WrappedModel, argmax_rows, display_name
from ..trees.sklearn_parse import is_sk_tree_classifier, parse_refusable, parse_sklearn, quiet, require_sk_fitted

log = logging.getLogger(__name__)


def _label_indices(classes: np.ndarray, labels: Any, who: str) -> np.ndarray:
    """Map predicted labels to their index in `classes` (the predict_proba column order)."""
    labels = np.asarray(labels)
    order = np.argsort(classes, kind="stable")
    pos = np.searchsorted(classes, labels, sorter=order)
    pos = np.clip(pos, 0, classes.size - 1)
    idx = order[pos]
    if not np.all(classes[idx] == labels):
        raise ModelError(f"{who}: predict returned labels that are not in classes_; the estimator is inconsistent")
    out: np.ndarray = idx.astype(np.int64)
    return out


_CONTROLLER: Any = None


def _openmp_controller() -> Any:
    """One threadpoolctl controller for the process: `threadpool_limits` rescans the loaded libraries on every
    call (milliseconds, more than a small predict itself); the libraries an estimator uses are loaded once it exists."""
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


def call_sklearn(method: Any, X: np.ndarray, name: str, *, who: str = "the library", hint: str = "", openmp: bool = False) -> Any:
    """method(X) without scikit-learn's feature-name warning, its ValueError as a one-line ModelError
    ("<name>: <who> refused the input (<reason>)<hint>"). openmp=True pins OpenMP to one thread around the call:
    OpenMP predictors (HistGradientBoosting) spin-wait on an oversubscribed machine, one thread is far faster there."""
    try:
        if openmp:
            with _openmp_controller().limit(limits=1, user_api="openmp"):
                return quiet(method, X)
        return quiet(method, X)
    except ValueError as exc:  # e.g. finite float64 values beyond float32 range
        raise ModelError(f"{display_name(name)}: {who} refused the input ({first_line(exc, with_type=False)[:160]}){hint}") from None


class WrappedSklearn(WrappedModel):
    """A fitted scikit-learn classifier with predict_proba, attacked as a black box.

    `predict` is the estimator's own, mapped to class indices 0..K-1 in `classes_` order (the
    column order of predict_proba).
    """

    def __init__(self, est: Any, name: str | None = None, n_features: int | None = None) -> None:
        # HistGradientBoosting predicts with OpenMP threads (one per core): pinned to one around each library call
        self._openmp = type(est).__name__ in ("HistGradientBoostingClassifier",)
        if isinstance(est, BaseEstimator):
            require_sk_fitted(est)
        if not callable(getattr(est, "predict_proba", None)):
            raise ModelError(
                f"{type(est).__name__} has no predict_proba; enable it (e.g. SVC(probability=True)) or wrap a predict_proba callable with n_features="
            )
        d = getattr(est, "n_features_in_", None)
        if d is None:
            d = n_features
        elif n_features is not None and int(n_features) != int(d):
            raise ModelError(f"wrap: n_features={n_features} but the estimator was fitted on {d} features")
        if d is None:
            raise ModelError(f"wrap: cannot tell how many features {type(est).__name__} takes; pass n_features=")
        self.est = est
        self._d = int(d)
        self.classes_: np.ndarray | None
        classes = getattr(est, "classes_", None)
        if classes is not None:
            if isinstance(classes, list) or np.asarray(classes).ndim != 1:
                raise ModelError(f"{type(est).__name__} has several outputs; only single-output classifiers are supported")
            self.classes_ = np.asarray(classes)
            self._c = int(self.classes_.size)
        else:
            self.classes_ = None
            p = np.asarray(quiet(est.predict_proba, np.zeros((1, self._d))))
            if p.ndim != 2 or p.shape[1] < 2:
                raise ModelError(f"{type(est).__name__}.predict_proba must return (n, n_classes>=2), got shape {p.shape}")
            self._c = int(p.shape[1])
        if self._c < 2:
            raise ModelError(f"{type(est).__name__} knows a single class; a classifier needs at least two")
        self.name = name or type(est).__name__

    def _library(self, method: Any, X: np.ndarray) -> Any:
        return call_sklearn(method, X, self.name, hint="; keep features within float32 range", openmp=self._openmp)

    def predict_proba(self, X: Any) -> np.ndarray:
        X = self._check_X(X)
        p = self._proba_checked(self._library(self.est.predict_proba, X), X.shape[0])
        return p

    def predict(self, X: Any) -> np.ndarray:
        X = self._check_X(X)
        if self.classes_ is None or not callable(getattr(self.est, "predict", None)):
            return argmax_rows(self.predict_proba(X))
        return _label_indices(self.classes_, self._library(self.est.predict, X), display_name(self.name))


class WrappedSklearnTrees(WrappedSklearn):
    """A fitted RandomForest/ExtraTrees/GradientBoosting/DecisionTree/HistGradientBoosting/AdaBoost classifier: library predictions plus `tree_ensemble()`."""

    def __init__(self, est: Any, name: str | None = None, n_features: int | None = None) -> None:
        super().__init__(est, name=name, n_features=n_features)
        self._ensemble: TreeEnsemble | None = None

    def tree_ensemble(self) -> TreeEnsemble:
        """The parsed ensemble (`trees.sklearn_parse`), parsed once, then cached."""
        if self._ensemble is None:
            self._ensemble = parse_sklearn(self.est)
        return self._ensemble


def _is_regressor(obj: Any) -> bool:
    """scikit-learn's own test (estimator tags), false for anything it cannot classify."""
    from sklearn.base import is_regressor

    try:
        return bool(is_regressor(obj))
    except Exception:  # noqa: BLE001 - a foreign object without sklearn tags is simply not a regressor
        return False


def wrap_sklearn(obj: Any, name: str | None = None, n_features: int | None = None) -> Model:
    """A Model for a fitted scikit-learn classifier: tree ensembles get tree_ensemble(), others are black boxes.

    HistGradientBoosting/AdaBoost are parsed when wrapped: a parse the model refuses (categorical
    splits, non-tree members) leaves a black box whose `path_note` says why.
    """
    if _is_regressor(obj):
        raise ModelError(f"{type(obj).__name__} is a regression model; the suite evaluates classifiers")
    if is_sk_tree_classifier(obj):
        model = WrappedSklearnTrees(obj, name=name, n_features=n_features)
        if not parse_refusable(obj):
            return model
        try:
            model.tree_ensemble()
            return model
        except ModelError as exc:
            reason = first_line(exc, with_type=False)
            bb = WrappedSklearn(obj, name=name, n_features=n_features)
            bb.path_note = f"exact path refused: {reason}"
            log.warning("%s: %s; attacked as a black box", bb.name, bb.path_note)
            return bb
    return WrappedSklearn(obj, name=name, n_features=n_features)


def adapt(obj: Any, *, n_features: int | None = None, n_classes: int | None = None, name: str | None = None) -> Model:
    """The table's factory for scikit-learn objects and other objects with predict_proba."""
    return wrap_sklearn(obj, name=name, n_features=n_features)


__all__ = ["WrappedSklearn", "WrappedSklearnTrees", "adapt", "call_sklearn", "wrap_sklearn"]
