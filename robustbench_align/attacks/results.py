"""Results of the attack ensemble: per-point minimal radii with the robust-accuracy curve, and fixed-eps results.

`RadiusResult` is an `AttackResult` of a minimal-radius run with the helpers a leaderboard needs
(curve, normalised AUC, AttackBench optimality of each attack, median radius); `FixedEpsResult`
holds one `AttackResult` per eps of a fixed-eps (AutoAttack-style) run.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import AttackError
from .base import AttackResult


def _eps_values(eps: Any, what: str = "eps", *, zero: bool = True) -> np.ndarray:
    """`eps` (one number or a flat list) as a 1-d float64 array, each value finite and >= 0 (> 0 unless `zero`).

    Anything else raises a one-line AttackError naming the first bad value and its position.
    """
    try:
        arr = np.asarray(eps, dtype=np.float64)
    except (TypeError, ValueError):
        raise AttackError(f"{what} must be a number or a flat list of numbers, got {str(eps)[:60]!r}") from None
    if arr.ndim > 1:
        raise AttackError(f"{what} must be a number or a flat list of numbers, got an array of shape {arr.shape}")
    e = np.atleast_1d(arr)
    bad = np.flatnonzero(~np.isfinite(e) | ((e < 0) if zero else (e <= 0)))
    if bad.size:
        where = f" at position {int(bad[0])} of {e.size}" if e.size > 1 else ""
        bound = ">= 0" if zero else "> 0"
        raise AttackError(f"{what} must be finite and {bound}, got {float(e[bad[0]])!r}{where}; pass radii {bound}")
    return e


@dataclass
class RadiusResult(AttackResult):
    """An AttackResult of a minimal-radius run, with the robust-accuracy curve helpers.

    per_attack[name] holds each attack's own verified distances (NaN where it did not run, inf
    where it found nothing); attack_times its wall time; clean_correct the clean correctness.
    path: the strongest kind of attack that ran ("exact", "gradient" or "black-box"; see `attack_path`).
    exact: per point, the bracket is closed (lower_bound == distance, proved); None when not certified.
    certifier: per point, what gave the lower bound ("veritas", "crown", "milp", ...) or why there is none.
    """

    clean_correct: np.ndarray | None = None
    path: str = ""
    attacks_used: list[str] = field(default_factory=list)
    attack_times: dict[str, float] = field(default_factory=dict)
    attack_rejected: dict[str, int] = field(default_factory=dict)
    per_attack: dict[str, np.ndarray] = field(default_factory=dict)
    exact: np.ndarray | None = None
    certifier: np.ndarray | None = None

    def certified_accuracy(self, eps: float | Sequence[float] | np.ndarray) -> np.ndarray:
        """Certified robust accuracy at each eps: the share of points that are clean-correct with lower_bound > eps.

        A proved lower bound on the true robust accuracy (robust_accuracy is the empirical upper
        bound). Zero everywhere when nothing was certified.
        """
        e = _eps_values(eps, zero=False)
        if self.n == 0:
            return np.full(e.size, np.nan)
        cc = np.ones(self.n, dtype=bool) if self.clean_correct is None else self.clean_correct
        lb = np.zeros(self.n) if self.lower_bound is None else np.asarray(self.lower_bound, dtype=np.float64)
        out: np.ndarray = np.array([float(np.mean(cc & (lb > v))) for v in e])
        return out

    def robust_accuracy(self, eps: Any) -> np.ndarray:
        """Fraction of points whose verified minimal distance exceeds each eps (at eps 0: the clean-correct share).

        eps: one number or a flat list, each finite and >= 0; NaN, negative or infinite values raise
        AttackError naming the value.
        """
        return super().robust_accuracy(_eps_values(eps))

    def curve(self, eps_grid: Sequence[float] | None = None) -> Any:
        """Robust accuracy vs eps as a DataFrame (eps, robust_accuracy); eps 0 gives the clean accuracy."""
        import pandas as pd

        from .registry import default_eps_grid

        e = _eps_values(default_eps_grid(self.norm) if eps_grid is None else eps_grid, "eps grid")
        if e.size == 0:
            raise AttackError("eps grid is empty; pass at least one radius >= 0")
        return pd.DataFrame({"eps": e, "robust_accuracy": self.robust_accuracy(e)})

    def auc(self, max_eps: float | None = None) -> float:
        """Normalised area under the robust-accuracy curve on [0, max_eps] (1 = robust at every eps there).

        Exact for the step curve: (1/max_eps) * integral of RA = mean over points of min(d, max_eps)/max_eps.
        """
        from .registry import default_eps_grid

        e = _eps_values(max(default_eps_grid(self.norm)) if max_eps is None else max_eps, "max_eps", zero=False)
        if e.size != 1:
            raise AttackError(f"max_eps must be one number, got {max_eps!r}")
        m = float(e[0])
        if self.n == 0:
            return float("nan")
        return float(np.mean(np.minimum(self.distance, m)) / m)

    def optimality(self, max_eps: float | None = None) -> dict[str, float]:
        """AttackBench's optimality of each attack against the ensemble's per-point best, on [0, max_eps].

        1 - (area_a - area_best) / (clean_acc * max_eps - area_best), with area the integral of the
        robust-accuracy curve; 1 = the attack alone matches the ensemble. Points an attack did not
        run on (certified or misclassified earlier) count at the ensemble's distance.
        """
        from .registry import default_eps_grid

        e = _eps_values(max(default_eps_grid(self.norm)) if max_eps is None else max_eps, "max_eps", zero=False)
        if e.size != 1:
            raise AttackError(f"max_eps must be one number, got {max_eps!r}")
        m = float(e[0])
        if self.n == 0:
            return {k: float("nan") for k in self.per_attack}
        cc = np.ones(self.n, dtype=bool) if self.clean_correct is None else self.clean_correct
        best_area = float(np.mean(np.minimum(self.distance, m)))
        worst = float(np.mean(cc)) * m
        out = {}
        for name, d in self.per_attack.items():
            d = np.where(np.isnan(d), self.distance, d)
            area = float(np.mean(np.minimum(d, m)))
            out[name] = float(1.0 - (area - best_area) / (worst - best_area)) if worst > best_area else float("nan")
        return out

    @property
    def median(self) -> float:
        """Median radius over the correctly classified points (0 when there are none)."""
        cc = np.ones(self.n, dtype=bool) if self.clean_correct is None else self.clean_correct
        return float(np.median(self.distance[cc])) if cc.any() else 0.0

    @property
    def clean_accuracy(self) -> float:
        if self.clean_correct is None or self.n == 0:
            return float("nan")
        return float(np.mean(self.clean_correct))


@dataclass
class FixedEpsResult:
    """Robust accuracy at fixed eps values: one AttackResult per eps (distance inf = robust there)."""

    eps: np.ndarray
    results: dict[float, AttackResult]
    clean_correct: np.ndarray
    norm: str
    attacks_used: list[str] = field(default_factory=list)
    attack_times: dict[str, float] = field(default_factory=dict)
    rejected: int = 0
    flags: dict[str, str] = field(default_factory=dict)
    path: str = ""

    def _at(self, eps: float) -> AttackResult:
        """The result at `eps`, one of `self.eps`; AttackError naming it otherwise (NaN, negative, not attacked)."""
        e = _eps_values(eps, zero=False)
        if e.size != 1:
            raise AttackError(f"eps must be one number, got {e.size} values")
        r = self.results.get(float(e[0]))
        if r is None:
            have = ", ".join(f"{float(x):g}" for x in self.eps)[:80]
            raise AttackError(f"eps {float(e[0])!r} was not attacked in this result (eps: {have}); pass one of those")
        return r

    def robust(self, eps: float) -> np.ndarray:
        """Per-point: True where no verified adversarial within eps was found (eps: one of `self.eps`, else AttackError)."""
        return ~self._at(eps).success

    def certified(self, eps: float) -> np.ndarray:
        """Per-point: True where an exact attack's lower bound proves robustness at eps (eps: one of `self.eps`)."""
        r = self._at(eps)
        return ~r.success & (r.lower_bound > float(eps)) if r.lower_bound is not None else np.zeros(r.n, dtype=bool)

    @property
    def robust_accuracy(self) -> np.ndarray:
        return np.array([self.robust(e).mean() if self.clean_correct.size else np.nan for e in self.eps])

    @property
    def clean_accuracy(self) -> float:
        return float(self.clean_correct.mean()) if self.clean_correct.size else float("nan")


__all__ = ["FixedEpsResult", "RadiusResult"]
