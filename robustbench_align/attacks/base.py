"""Attack contracts (in the spirit of Foolbox 3) and the verification every candidate passes.

A `MinimalAttack` returns, per point, the smallest perturbation it found (one run gives the whole
robust-accuracy-vs-eps curve); a `FixedEpsAttack` looks for any adversarial inside an eps-ball.
No candidate counts until `verify` has re-predicted it with the model's own `predict` and checked
its norm against the budget.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..errors import AttackError
from ..models.base import Model, check_features

NORMS = ("linf", "l2", "l1")
_ORD = {"linf": np.inf, "l2": 2, "l1": 1}
BUDGET_RTOL = 1e-6


def check_norm(norm: str) -> str:
    n = str(norm).lower()
    if n not in NORMS:
        raise AttackError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
    return n


def check_eps(eps: Any) -> np.ndarray:
    """One eps or a list of them: finite and > 0, else AttackError."""
    e = np.atleast_1d(np.asarray(eps, dtype=np.float64))
    if e.size == 0 or not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise AttackError(f"eps must be finite and > 0, got {eps!r}")
    return e


def check_inputs(model: Model, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """X of the model's width, finite; y integer labels in range. Raises AttackError."""
    try:
        X = check_features(X, model.n_features, who=model.name)
    except Exception as exc:  # re-raise as an attack error with the same message
        raise AttackError(str(exc)) from None
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise AttackError(f"y must be 1-D with {X.shape[0]} labels, got shape {y.shape}")
    try:
        yf = y.astype(np.float64)
    except (TypeError, ValueError):
        raise AttackError("labels must be integers 0..n_classes-1 (got non-numeric labels); encode them first") from None
    if y.size and (not np.all(np.isfinite(yf)) or np.any(yf != np.round(yf))):
        raise AttackError("labels must be integers 0..n_classes-1")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= model.n_classes):
        raise AttackError(f"labels out of range: the model has {model.n_classes} classes (0..{model.n_classes - 1})")
    return X, y


def distances(X: np.ndarray, X_adv: np.ndarray, norm: str) -> np.ndarray:
    """Per-row norm of X_adv - X in float64."""
    diff = np.asarray(X_adv, dtype=np.float64) - np.asarray(X, dtype=np.float64)
    if diff.shape[0] == 0:
        return np.zeros(0)
    return np.linalg.norm(diff, ord=_ORD[norm], axis=1)


@dataclass
class AttackResult:
    """Per-point outcome of an attack on (X, y).

    distance is 0 for points the model already misclassifies, np.inf where no adversarial was
    found; x_adv holds the verified adversarial (or the clean point where none was found).
    lower_bound is a certified lower bound on the minimal distance (exact attacks only, else None).
    """

    x_adv: np.ndarray
    distance: np.ndarray
    success: np.ndarray
    norm: str
    attack: str
    lower_bound: np.ndarray | None = None
    queries: np.ndarray | None = None
    wall_time: float = 0.0
    rejected: int = 0
    by_attack: np.ndarray | None = None  # name of the attack that found each point's best adversarial
    flags: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.distance.shape[0])

    def robust_accuracy(self, eps: Any) -> np.ndarray:
        """Fraction of points whose (verified) minimal distance exceeds each eps.

        Uses the same tolerance as `verify`: an adversarial at eps·(1+1e-6) counts as within eps.
        """
        e = np.atleast_1d(np.asarray(eps, dtype=np.float64))
        if self.n == 0:
            return np.full(e.shape, np.nan)
        return np.array([(self.distance > x * (1 + BUDGET_RTOL)).mean() for x in e])

    def is_exact(self, rtol: float = 1e-6) -> np.ndarray:
        """Points whose distance is certified optimal (lower bound meets the found distance)."""
        if self.lower_bound is None:
            return np.zeros(self.n, dtype=bool)
        return np.isfinite(self.distance) & (self.lower_bound >= self.distance * (1 - rtol) - 1e-12)


def verify(
    model: Model,
    X: np.ndarray,
    y: np.ndarray,
    X_adv: np.ndarray,
    norm: str,
    eps: float | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-predict candidates with the model's own `predict` and check the budget.

    Returns (ok, distance): ok[i] when X_adv[i] is finite, misclassified by the model, and (if eps
    is given) within eps·(1+1e-6). distance is the float64 norm of X_adv - X (inf where not ok).
    """
    X_adv = np.asarray(X_adv, dtype=np.float64)
    if X_adv.shape[0] == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    finite = np.all(np.isfinite(X_adv), axis=1)
    pred = np.full(X_adv.shape[0], -1, dtype=np.int64)
    if finite.any():
        pred[finite] = model.predict(X_adv[finite])
    dist = distances(X, np.where(finite[:, None], X_adv, X), norm)
    ok = finite & (pred != y)
    if eps is not None:
        ok &= dist <= np.asarray(eps, dtype=np.float64) * (1 + BUDGET_RTOL)
    return ok, np.where(ok, dist, np.inf)


class Attack:
    """Base of all attacks: a name, the capability it needs, the norms it supports."""

    name: ClassVar[str] = "attack"
    requires: ClassVar[frozenset[str]] = frozenset({"predict_proba"})
    norms: ClassVar[tuple[str, ...]] = NORMS
    exact: ClassVar[bool] = False

    def applicable(self, model: Model, norm: str) -> bool:
        return self.requires <= model.capabilities and norm in self.norms

    def _check(self, model: Model, X: Any, y: Any, norm: str) -> tuple[np.ndarray, np.ndarray, str]:
        norm = check_norm(norm)
        if norm not in self.norms:
            raise AttackError(f"attack {self.name!r} does not support norm {norm!r}; it supports {', '.join(self.norms)}")
        missing = self.requires - model.capabilities
        if missing:
            raise AttackError(
                f"attack {self.name!r} needs the {', '.join(sorted(missing))} capability, which {model.name!r} lacks; "
                f"applicable attacks: {', '.join(applicable_names(model, norm)) or 'none'}"
            )
        X, y = check_inputs(model, X, y)
        return X, y, norm

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MinimalAttack(Attack):
    """Find, per point, the smallest perturbation that changes the model's decision."""

    def run(self, model: Model, X: np.ndarray, y: np.ndarray, norm: str) -> AttackResult:  # pragma: no cover
        raise NotImplementedError


class FixedEpsAttack(Attack):
    """Find, per point, any perturbation of norm <= eps that changes the model's decision."""

    def run(self, model: Model, X: np.ndarray, y: np.ndarray, norm: str, eps: float) -> AttackResult:  # pragma: no cover
        raise NotImplementedError


def empty_result(X: np.ndarray, norm: str, attack: str) -> AttackResult:
    """A result with no adversarial found for any point (distance inf)."""
    n = X.shape[0]
    return AttackResult(
        x_adv=np.array(X, dtype=np.float64, copy=True),
        distance=np.full(n, np.inf),
        success=np.zeros(n, dtype=bool),
        norm=norm,
        attack=attack,
        queries=np.zeros(n, dtype=np.int64),
    )


def finalize(
    model: Model,
    X: np.ndarray,
    y: np.ndarray,
    candidates: np.ndarray,
    norm: str,
    attack: str,
    *,
    eps: float | None = None,
    t0: float | None = None,
    lower_bound: np.ndarray | None = None,
    queries: np.ndarray | None = None,
    claimed: np.ndarray | None = None,
) -> AttackResult:
    """Verify raw candidates and package them: clean-misclassified points get distance 0.

    `claimed` marks the candidates the attack itself reported as adversarial (default: every finite
    candidate that differs from its clean point); claimed candidates that fail verification are
    counted in `rejected`.
    """
    res = empty_result(X, norm, attack)
    clean_wrong = model.predict(X) != y if X.shape[0] else np.zeros(0, dtype=bool)
    ok, dist = verify(model, X, y, candidates, norm, eps)
    if claimed is None:
        claimed = np.all(np.isfinite(candidates), axis=1) & np.any(candidates != X, axis=1)
    rejected = int((np.asarray(claimed, dtype=bool) & ~clean_wrong & ~ok).sum())
    ok &= ~clean_wrong
    res.x_adv[ok] = candidates[ok]
    res.distance[ok] = dist[ok]
    res.distance[clean_wrong] = 0.0
    res.success = ok | clean_wrong
    res.rejected = rejected
    if lower_bound is not None:
        lb = np.asarray(lower_bound, dtype=np.float64).copy()
        lb[clean_wrong] = 0.0
        res.lower_bound = np.minimum(lb, res.distance)
    if queries is not None:
        res.queries = np.asarray(queries)
    if t0 is not None:
        res.wall_time = time.perf_counter() - t0
    return res


def applicable_names(model: Model, norm: str) -> list[str]:
    from .registry import list_attacks, get_attack

    return [n for n in list_attacks() if get_attack(n).applicable(model, norm)]
