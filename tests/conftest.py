"""Shared test set-up: one torch thread (2-core machines run faster and far less noisily with one),
and small fitted models and data that several test modules use."""
from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


def tabular_data(n: int = 200, d: int = 5, classes: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small standardised make_classification problem (X float64, y int64)."""
    from sklearn.datasets import make_classification

    X, y = make_classification(n, d, n_informative=min(d, 3), n_redundant=0, n_classes=classes, n_clusters_per_class=1,
                               random_state=seed)
    X = (X - X.mean(0)) / X.std(0)
    return X.astype(np.float64), y.astype(np.int64)


@pytest.fixture(scope="session")
def binary_data() -> tuple[np.ndarray, np.ndarray]:
    return tabular_data(200, 5, 2, seed=0)


@pytest.fixture(scope="session")
def multiclass_data() -> tuple[np.ndarray, np.ndarray]:
    return tabular_data(240, 5, 3, seed=1)
