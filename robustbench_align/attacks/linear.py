"""The exact minimal adversarial of a linear classifier, in closed form (linf, l2, l1).

A model with the "linear" capability decides by argmax of s(x) = W x + b (ties to the lowest index).
A correctly classified point x of class y leaves class y first through the nearest half-space
{s_k >= s_y}: the minimal radius is

    r(x) = min_{k != y} (s_y - s_k) / ||w_y - w_k||_q,   q the dual norm (linf -> l1, l2 -> l2, l1 -> linf),

attained along the dual direction of a = w_y - w_k: a / ||a||_2 (l2), sign(a) (linf), the signed unit
vector of the coordinate of largest |a_i| (l1). The attack steps just past r along that direction,
growing the overshoot a few times until the model's own `predict` flips (its float64 round-off and
tie rule decide, not ours), and reports as `lower_bound` the closed form minus a rigorous float64
round-off allowance, so the certificate holds against any verified adversarial: (g - E) / ||a||_q
shrunk by a relative (d + 4)-ulp factor, where E bounds the error of our scores and of the library's
at any point within r (a few ulps times d times the magnitudes |w| . |x| + |b| + ||w||_q r).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, cast, runtime_checkable

import numpy as np

from ..errors import AttackError
from ..models.base import Model
from .base import NORMS, Candidates, MinimalAttack, Norm, clean_correct_rows
from .params import int_arg

if TYPE_CHECKING:
    from ..models.adapters.sklearn_linear import HasLinearScores

_EPS = float(np.finfo(np.float64).eps)
_FLOOR = 1e-200  # an absolute overshoot for exact ties at the origin (no relative scale to grow from)


def dual_direction(A: np.ndarray, norm: Norm) -> np.ndarray:
    """Per row, a unit-norm (in `norm`) direction u with a . u = ||a||_q (zero rows give zero)."""
    if norm.p == np.inf:
        sgn: np.ndarray = np.sign(A)
        return sgn
    if norm.p == 2.0:
        n = np.linalg.norm(A, axis=1, keepdims=True)
        out: np.ndarray = np.divide(A, n, out=np.zeros_like(A), where=n > 0)
        return out
    U = np.zeros_like(A)
    j = np.argmax(np.abs(A), axis=1)
    rows = np.arange(A.shape[0])
    U[rows, j] = np.sign(A[rows, j])
    return U


@runtime_checkable
class HasScoreMagnitudes(Protocol):
    """A linear model whose own arithmetic is not X @ W.T + b (e.g. a scaler Pipeline before a linear classifier):
    it bounds the magnitudes of the terms it adds, per point and class, and says how many extra rounding steps it takes."""

    def linear_score_magnitudes(self, X: np.ndarray) -> tuple[np.ndarray, int]: ...


def closed_form(W: np.ndarray, b: np.ndarray, X: np.ndarray, y: np.ndarray, norm: Norm,
                magnitudes: tuple[np.ndarray, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per point (radius, certified lower bound, target class, round-off allowance E / ||a||_q) of the linear rule.

    radius = min_{k != y} (s_y - s_k) / ||w_y - w_k||_q in float64 (inf when no class is reachable).
    """
    n, d = X.shape
    K = W.shape[0]
    rows = np.arange(n)
    S = X @ W.T + b
    M = np.abs(X) @ np.abs(W).T + np.abs(b)  # magnitudes of the terms of each score
    extra_steps = 0
    if magnitudes is not None:  # the model's own arithmetic (e.g. scaling before the dot product) adds terms and roundings
        M = np.maximum(M, np.asarray(magnitudes[0], dtype=np.float64))
        extra_steps = int(magnitudes[1])
    q = norm.dual
    pair = np.stack([q.norms(W[j] - W) for j in range(K)])  # ||w_j - w_k||_q, (K, K)
    nw = q.norms(W)
    g = S[rows, y][:, None] - S
    Np = pair[y]
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(Np > 0, g / np.where(Np > 0, Np, 1.0), np.inf)
    r[rows, y] = np.inf
    gamma = 2.2 * (d + 2 + extra_steps) * _EPS  # our scores and the library's, each within gamma_{d+1} of the exact ones
    r_fin = np.where(np.isfinite(r), np.maximum(r, 0.0), 0.0)
    err = gamma * (M[rows, y][:, None] + M + (nw[y][:, None] + nw[None, :]) * r_fin) + _EPS * np.abs(g) + _FLOOR
    shrink = 1.0 - 4.0 * (d + 4) * _EPS  # ||a||_q and the verified distance, each within (d + 2) ulps
    with np.errstate(divide="ignore", invalid="ignore"):
        lb_k = np.where(Np > 0, np.maximum(g - err, 0.0) / np.where(Np > 0, Np, 1.0) * shrink, np.inf)
        slack = np.where(Np > 0, err / np.where(Np > 0, Np, 1.0), np.inf)
    lb_k[rows, y] = np.inf
    k_star = np.argmin(r, axis=1)
    radius = r[rows, k_star]
    lower = lb_k.min(axis=1)
    # a model that predicts y while its own linear scores put another class clearly ahead is not linear as declared
    off = (g < -err) & (np.arange(K)[None, :] != y[:, None])
    lower[off.any(axis=1)] = 0.0
    return radius, lower, k_star, slack[rows, k_star]


class LinearExact(MinimalAttack):
    """Closed-form exact minimal radius of a model with `linear_scores()`; linf/l2/l1, certified."""

    name = "linear"
    requires = frozenset({"linear"})
    norms = NORMS
    exact = True

    def __init__(self, max_push: int = 40) -> None:
        self.max_push = int_arg(max_push, "max_push")

    def __repr__(self) -> str:
        return f"LinearExact(max_push={self.max_push})"

    def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm) -> Candidates:
        W, b = cast("HasLinearScores", model).linear_scores()
        W, b = np.asarray(W, dtype=np.float64), np.asarray(b, dtype=np.float64).reshape(-1)
        n, d = X.shape
        if W.shape != (model.n_classes, d) or b.shape != (model.n_classes,):
            raise AttackError(f"attack 'linear': {model.name!r}.linear_scores() gave W {W.shape}, b {b.shape}; "
                              f"expected {(model.n_classes, d)} and {(model.n_classes,)}")
        x_adv = X.copy()
        lower = np.zeros(n)
        claimed = np.zeros(n, dtype=bool)
        queries = np.zeros(n, dtype=np.int64)
        rows = clean_correct_rows(model, X, y)
        if rows.size == 0:
            return Candidates(x_adv, claimed=claimed, lower_bound=lower, queries=queries, flags={"linear_unflipped": 0, "linear_pushes": 0})
        Xr, yr = X[rows], y[rows]
        mags = model.linear_score_magnitudes(Xr) if isinstance(model, HasScoreMagnitudes) else None
        radius, lb, k_star, slack = closed_form(W, b, Xr, yr, norm, mags)
        lower[rows] = lb
        U = dual_direction(W[yr] - W[k_star], norm)
        todo = np.flatnonzero(np.isfinite(radius))
        grow = 4.0 * (d + 4) * _EPS
        pushes = 0
        for j in range(self.max_push):
            if todo.size == 0:
                break
            f = 2.0 ** j
            t = (np.maximum(radius[todo], 0.0) + slack[todo] * f) * (1.0 + grow * f)
            cand = Xr[todo] - t[:, None] * U[todo]
            flip = model.predict(cand) != yr[todo]
            queries[rows[todo]] += 1
            pushes = j + 1
            done = todo[flip]
            x_adv[rows[done]] = cand[flip]
            claimed[rows[done]] = True
            todo = todo[~flip]
        return Candidates(x_adv, claimed=claimed, lower_bound=lower, queries=queries,
                          flags={"linear_unflipped": int(todo.size), "linear_pushes": pushes})


__all__ = ["LinearExact", "closed_form", "dual_direction"]
