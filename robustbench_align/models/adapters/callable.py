"""Adapter for a `predict_proba`-style callable: a black box with only the `predict_proba` capability."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ...errors import ModelError, first_line
from ..base import Model, WrappedModel, check_n_classes, check_width, display_name


class ProbaModel(WrappedModel):
    """Any `predict_proba`-style callable (black box): only the `predict_proba` capability."""

    def __init__(self, fn: Callable[[np.ndarray], Any], n_features: int, n_classes: int | None = None, name: str = "black-box") -> None:
        self._fn = fn
        self.name = str(name)
        self._d = check_width(n_features, self.name)
        if n_classes is None:
            p = self._call(np.zeros((1, self._d)))
            if p.ndim != 2 or p.shape[1] < 2:
                raise ModelError(f"{display_name(self.name)}: callable must return (n, n_classes>=2) probabilities, got shape {p.shape}")
            n_classes = p.shape[1]
        self._c = check_n_classes(n_classes, self.name)

    def _call(self, X: np.ndarray) -> np.ndarray:
        who = display_name(self.name)
        try:
            out = self._fn(X)
        except Exception as exc:
            raise ModelError(f"{who}: the predict_proba callable failed on X of shape {X.shape} ({first_line(exc)})") from exc
        try:
            return np.asarray(out, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{who}: the predict_proba callable returned a {type(out).__name__} that is not numeric ({first_line(exc)})") from None

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = self._check_X(X)
        p = self._call(X)
        who = display_name(self.name)
        if p.shape != (X.shape[0], self._c):
            raise ModelError(f"{who}: predict_proba returned shape {p.shape}, expected {(X.shape[0], self._c)}")
        if not np.all(np.isfinite(p)):
            raise ModelError(
                f"{who}: predict_proba returned NaN or inf for {int((~np.isfinite(p)).any(axis=1).sum())} of {p.shape[0]} rows; "
                "a black box must return finite probabilities"
            )
        return p


def adapt(obj: Any, *, n_features: int | None = None, n_classes: int | None = None, name: str | None = None) -> Model:
    """The table's factory for callables: n_features= is required (a function has no declared width)."""
    if n_features is None:
        raise ModelError("wrap: a predict_proba callable needs n_features=; pass the input width")
    return ProbaModel(obj, n_features, n_classes, name=str(name or getattr(obj, "__name__", "black-box")))


__all__ = ["ProbaModel", "adapt"]
