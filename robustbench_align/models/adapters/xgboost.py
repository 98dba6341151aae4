"""Adapter for XGBoost objects (XGBClassifier, XGBRFClassifier, classification Booster): library predictions plus `tree_ensemble()`."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ModelError
from ..base import Model, TreeEnsemble, WrappedModel, argmax_rows
from ..trees.xgboost_json import XGB_OBJECTIVES
from ..trees.xgboost_parse import parse_xgboost, xgb_margin, xgb_objective, xgb_parts


def _xgb_predict_proba(booster: Any, clf: Any, objective: str, X: np.ndarray) -> np.ndarray:
    """The library's probabilities (n, K); for a bare Booster derived from the objective's output."""
    if clf is not None:
        return np.asarray(clf.predict_proba(X), dtype=np.float64)
    if objective == "binary:logistic":
        p1 = np.asarray(booster.inplace_predict(X, validate_features=False), dtype=np.float64).reshape(-1)
        return np.stack([1.0 - p1, p1], axis=1)
    if objective == "multi:softprob":
        return np.asarray(booster.inplace_predict(X, validate_features=False), dtype=np.float64).reshape(X.shape[0], -1)
    m = xgb_margin(booster, None, X)
    if objective == "binary:logitraw":
        p1 = 1.0 / (1.0 + np.exp(-m[:, 0]))
        return np.stack([1.0 - p1, p1], axis=1)
    z = np.exp(m - m.max(axis=1, keepdims=True))  # multi:softmax: the library returns labels only
    p: np.ndarray = z / z.sum(axis=1, keepdims=True)
    return p


def _xgb_predict(booster: Any, clf: Any, objective: str, X: np.ndarray) -> np.ndarray:
    """The library's class indices: the classifier's predict, else thresholded/argmax probabilities."""
    if clf is not None:
        return np.asarray(clf.predict(X)).astype(np.int64)
    p = _xgb_predict_proba(booster, None, objective, X)
    if p.shape[1] == 2:
        return (p[:, 1] > 0.5).astype(np.int64)
    return argmax_rows(p).astype(np.int64)


class WrappedXGBoost(WrappedModel):
    """A fitted XGBClassifier/XGBRFClassifier or classification Booster: library predictions plus `tree_ensemble()`."""

    def __init__(self, obj: Any, name: str | None = None) -> None:
        booster, clf, _ = xgb_parts(obj)
        objective, k = xgb_objective(booster)
        if objective not in XGB_OBJECTIVES:
            raise ModelError(f"XGBoost objective {objective!r} is not a supported classifier objective; use one of {', '.join(XGB_OBJECTIVES)}")
        self.obj, self.booster, self.clf, self.objective = obj, booster, clf, objective
        self._d = int(booster.num_features())
        self._c = int(k)
        self.name = name or type(obj).__name__
        self._ensemble: TreeEnsemble | None = None

    def predict_proba(self, X: Any) -> np.ndarray:
        return _xgb_predict_proba(self.booster, self.clf, self.objective, self._check_X(X))

    def predict(self, X: Any) -> np.ndarray:
        return _xgb_predict(self.booster, self.clf, self.objective, self._check_X(X))

    def decision_function(self, X: Any) -> np.ndarray:
        """The library's margins, shape (n, 1) for binary and (n, K) for multiclass."""
        X = self._check_X(X)
        return xgb_margin(self.booster, self.clf, X)

    def tree_ensemble(self) -> TreeEnsemble:
        """The parsed ensemble with the intercept measured against the library (parsed once, then cached)."""
        if self._ensemble is None:
            self._ensemble = parse_xgboost(self.obj)
        return self._ensemble


def wrap_xgboost(obj: Any, name: str | None = None) -> Model:
    """A Model for a fitted XGBClassifier/XGBRFClassifier or Booster (library predictions, tree_ensemble())."""
    return WrappedXGBoost(obj, name=name)


def adapt(obj: Any, *, n_features: int | None = None, n_classes: int | None = None, name: str | None = None) -> Model:
    """The table's factory for XGBoost objects (widths come from the booster itself)."""
    return WrappedXGBoost(obj, name=name)


__all__ = ["WrappedXGBoost", "adapt", "wrap_xgboost"]
