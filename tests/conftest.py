"""Shared test set-up: one torch thread (2-core machines run faster and far less noisily with one),
and small fitted models and data that several test modules use."""
from __future__ import annotations

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


def _bisect_edge(inside, outside, rounds_inside) -> float:
    """The float64 nearest `outside` that still rounds inside, by bisection on the float64 line."""
    a, b = float(inside), float(outside)  # rounds_inside(a), not rounds_inside(b)
    with np.errstate(over="ignore"):
        return _bisect(a, b, rounds_inside)


def _bisect(a: float, b: float, rounds_inside) -> float:
    while True:
        m = a + (b - a) / 2
        if m in (a, b):
            return a
        if rounds_inside(m):
            a = m
        else:
            b = m


def rounding_edge_up(t) -> float:
    """The smallest float64 v with float32(v) >= t (t a float32), found by bisection: an oracle for the grid's edges."""
    t = np.float32(t)
    with np.errstate(over="ignore"):
        below = np.nextafter(t, np.float32(-np.inf))
    outside = float(below) if np.isfinite(below) else -(2.0**128)  # beyond the largest float32: 2^128, one spacing on
    return _bisect_edge(t, outside, lambda v: np.float32(v) >= t)


def rounding_edge_down(s) -> float:
    """The largest float64 v with float32(v) <= s (s a float32), by bisection."""
    s = np.float32(s)
    with np.errstate(over="ignore"):
        above = np.nextafter(s, np.float32(np.inf))
    outside = float(above) if np.isfinite(above) else 2.0**128
    return _bisect_edge(s, outside, lambda v: np.float32(v) <= s)


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
