"""The Dataset record, stratified splits and train-only standardisation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Dataset:
    """A standardised tabular classification task with a fixed split.

    X_* are float64, standardised with mean/std fitted on the training split only; y_* are integer
    labels 0..n_classes-1. X_val/y_val hold a validation split when the source defines one
    (UCI-121), else None (models that need one carve it from the training split).
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    feature_names: list[str]
    n_classes: int
    X_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    class_names: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.X_train.shape[0]}, test={self.X_test.shape[0]}, "
            f"d={self.n_features}, classes={self.n_classes})"
        )
