"""Candidate bookkeeping that needs only the model's `predict`: keep, polish and shrink adversarials.

Attacks that run several passes (restarts, target classes, binary-search rounds over a constant)
offer each pass's candidates to a `Keeper`, which verifies them with `base.verify` and keeps the
per-point smallest verified perturbation. `polish` first fixes what float rounding does to a
candidate on the decision boundary: `push_over` lengthens candidates that landed a hair on the wrong
side, and `refine_along_ray` bisects each perturbation along its own ray down to the boundary, which
removes an attack's overshoot (DeepFool's 2 %, FAB's eta) without changing its direction. Nothing
here needs gradients, so the gradient, bisection and decision-based attacks all use it.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..models.base import Model
from .base import Candidates, Norm, verify

PUSH_FACTORS: tuple[float, ...] = (1 + 1e-7, 1 + 1e-6, 1 + 1e-5, 1 + 1e-4, 1 + 1e-3, 1.01, 1.03)


def chunks(rows: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Consecutive slices of `rows` of at most `size` entries."""
    size = max(1, int(size))
    for i in range(0, rows.shape[0], size):
        yield rows[i:i + size]


def push_over(model: Model, X: np.ndarray, y: np.ndarray, X_adv: np.ndarray, rows: np.ndarray, norm: Norm,
              eps: np.ndarray | None = None, factors: Sequence[float] = PUSH_FACTORS) -> np.ndarray:
    """Lengthen candidates that sit on the boundary but on the wrong side (float rounding).

    For each row in `rows` whose candidate is not yet adversarial, try X + f * (X_adv - X) for the
    growing factors, keeping the first that the model misclassifies (and that stays within eps).
    """
    X_adv = X_adv.copy()
    todo = np.asarray(rows, dtype=np.int64)
    if todo.size:
        todo = todo[model.predict(X_adv[todo]) == y[todo]]
    for f in factors:
        if todo.size == 0:
            break
        trial = X[todo] + f * (X_adv[todo] - X[todo])
        ok = model.predict(trial) != y[todo]
        if eps is not None:
            ok &= norm.norms(trial - X[todo]) <= eps[todo]
        X_adv[todo[ok]] = trial[ok]
        todo = todo[~ok]
    return X_adv


def refine_along_ray(model: Model, X: np.ndarray, y: np.ndarray, X_adv: np.ndarray, rows: np.ndarray,
                     steps: int = 40, rtol: float = 1e-9) -> np.ndarray:
    """Shrink each adversarial perturbation along its own ray to the decision boundary.

    Bisection on t in [0, 1] for X + t * (X_adv - X), keeping the adversarial end; rows must be
    adversarial at t = 1. Vectorised over rows; removes overshoot without changing the direction.
    The result sits within float rounding of the boundary, so a model whose arithmetic depends on
    the batch it is given (float32 matrix products: one row alone is computed differently from the
    same row in a larger batch) may read it on the other side when it is verified in another batch.
    """
    X_adv = X_adv.copy()
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return X_adv
    D = X_adv[rows] - X[rows]
    lo = np.zeros(rows.size)
    hi = np.ones(rows.size)
    for _ in range(int(steps)):
        act = (hi - lo) > rtol
        if not act.any():
            break
        a = np.flatnonzero(act)
        mid = 0.5 * (lo[a] + hi[a])
        adv = model.predict(X[rows[a]] + mid[:, None] * D[a]) != y[rows[a]]
        hi[a] = np.where(adv, mid, hi[a])
        lo[a] = np.where(adv, lo[a], mid)
    X_adv[rows] = X[rows] + hi[:, None] * D
    return X_adv


class Keeper:
    """Per-point best verified adversarial over several candidate batches (smallest distance wins)."""

    def __init__(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm, eps: np.ndarray | None = None) -> None:
        self.model, self.X, self.y, self.norm, self.eps = model, X, y, norm, eps
        self.best = np.array(X, dtype=np.float64, copy=True)
        self.dist = np.full(X.shape[0], np.inf)
        self.failed_claims = np.zeros(X.shape[0], dtype=bool)

    def offer(self, rows: np.ndarray, cand: np.ndarray, claimed: np.ndarray | None = None) -> np.ndarray:
        """Verify candidates for `rows`; keep those that beat the current best. Returns the ok mask."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros(0, dtype=bool)
        eps = None if self.eps is None else self.eps[rows]
        ok, d = verify(self.model, self.X[rows], self.y[rows], cand, self.norm, eps)
        better = ok & (d < self.dist[rows])
        self.best[rows[better]] = cand[better]
        self.dist[rows[better]] = d[better]
        if claimed is not None:
            self.failed_claims[rows[np.asarray(claimed, dtype=bool) & ~ok]] = True
        return ok

    @property
    def found(self) -> np.ndarray:
        """Points with a verified adversarial kept."""
        out: np.ndarray = np.isfinite(self.dist)
        return out

    def rejected(self) -> int:
        """Claimed candidates of points for which no verified adversarial was kept."""
        return int((self.failed_claims & ~self.found).sum())

    def candidates(self, queries: np.ndarray | None = None, flags: dict[str, Any] | None = None) -> Candidates:
        """The kept adversarials for the base class to verify once more, with the claims that never verified."""
        return Candidates(x_adv=self.best, queries=queries, rejected=self.rejected(), flags=dict(flags or {}))


def polish(model: Model, keeper: Keeper, rows: np.ndarray, cand: np.ndarray, claimed: np.ndarray, norm: Norm,
           refine: bool = True, eps: np.ndarray | None = None) -> np.ndarray:
    """Push claimed-but-unverified candidates over the boundary, shrink them along their ray, offer them.

    Returns the mask (over rows) of candidates that verified as adversarial.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.zeros(0, dtype=bool)
    X, y = keeper.X, keeper.y
    full = X.copy()
    full[rows] = cand
    cl = rows[np.asarray(claimed, dtype=bool)]
    full = push_over(model, X, y, full, cl, norm, eps)
    if refine and cl.size:
        adv = cl[model.predict(full[cl]) != y[cl]]
        full = refine_along_ray(model, X, y, full, adv)
    return keeper.offer(rows, full[rows], claimed)


__all__ = ["PUSH_FACTORS", "Keeper", "chunks", "polish", "push_over", "refine_along_ray"]
