"""Refinement: shrink known per-point radii with a fixed-eps attack (e.g. AutoAttack below FMN/FAB radii).

A minimal attack gives an upper bound on each point's radius; a strong fixed-eps attack asked for an
adversarial a little inside that bound either finds a closer one or fails, and the point's bracket
tightens. This is the ensemble's warm-start step (`RefiningAttack.run_from`).
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..errors import AttackError
from ..models.base import Model
from .base import Candidates, FixedEpsAttack, Norm, RefiningAttack, wrapped_fixed_eps


class Refine(RefiningAttack):
    """Shrinks known radii with a fixed-eps attack.

    Given each point's best distance so far (`run_from`), it asks the fixed-eps attack for an
    adversarial at eps a little below it, for `rounds` rounds, stopping for a point at its first
    failure. Attacks taking one eps per point run once per round; others once per group of points
    whose bands [shrink[0], shrink[1]] * radius share an eps, at most `max_groups` calls per round
    (largest groups first). Without known radii (`run`) it falls back to bisection.
    """

    name = "refine"

    def __init__(self, fixed_eps_attack: FixedEpsAttack, rounds: int = 1, shrink: tuple[float, float] = (0.8, 0.97),
                 max_groups: int = 4, time_limit: float | None = None):
        self.inner = wrapped_fixed_eps(self, fixed_eps_attack, "refine", "refine")
        lo, hi = (float(v) for v in shrink)
        if not (0 < lo <= hi < 1):
            raise AttackError(f"refine: shrink must satisfy 0 < lo <= hi < 1, got {shrink!r}")
        if int(rounds) != rounds or rounds < 1 or int(max_groups) != max_groups or max_groups < 1:
            raise AttackError("refine: rounds and max_groups must be integers >= 1")
        self.rounds, self.shrink, self.max_groups, self.time_limit = int(rounds), (lo, hi), int(max_groups), time_limit

    def __repr__(self) -> str:
        return f"Refine({self.inner!r}, rounds={self.rounds}, shrink={self.shrink}, max_groups={self.max_groups})"

    def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm) -> Candidates:
        from .bisection import MinimalByBisection

        res = MinimalByBisection(self.inner).run(model, X, y, norm)
        return Candidates(x_adv=res.x_adv, claimed=res.success & (res.distance > 0), queries=res.queries,
                          rejected=res.rejected, flags=dict(res.flags))

    def _attack_from(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm, upper: np.ndarray) -> Candidates:
        from .bisection import stab_groups

        t0 = time.perf_counter()
        n = X.shape[0]
        hi = upper.copy()
        best, best_d = X.copy(), np.full(n, np.inf)
        queries = np.zeros(n, dtype=np.int64)
        alive = np.isfinite(hi) & (hi > 0)
        per_point = self.inner.per_point_eps
        for _ in range(self.rounds):
            if self.time_limit is not None and time.perf_counter() - t0 > self.time_limit:
                break
            act = np.flatnonzero(alive)
            if act.size == 0:
                break
            a, b = self.shrink[0] * hi[act], self.shrink[1] * hi[act]
            if per_point:
                calls: list[tuple[np.ndarray, Any]] = [(act, b)]
            else:
                groups = sorted(stab_groups(a, b), key=lambda g: -g[1].size)[: self.max_groups]
                calls = [(act[mem], v) for v, mem in groups]
            for rows, eps in calls:
                res = self.inner.run(model, X[rows], y[rows], norm, eps)
                ok = np.asarray(res.success, dtype=bool) & np.isfinite(res.distance) & (np.asarray(res.distance) > 0)
                d = np.where(ok, res.distance, np.inf)
                better = d < best_d[rows]
                best[rows[better]] = np.asarray(res.x_adv, dtype=np.float64)[better]
                best_d[rows[better]] = d[better]
                hi[rows] = np.minimum(hi[rows], d)
                alive[rows[~ok]] = False
                if res.queries is not None and np.shape(res.queries) == (rows.size,):
                    queries[rows] += np.asarray(res.queries, dtype=np.int64)
                if self.time_limit is not None and time.perf_counter() - t0 > self.time_limit:
                    break
        found = np.isfinite(best_d)
        return Candidates(x_adv=np.where(found[:, None], best, X), claimed=found, queries=queries)


__all__ = ["Refine"]
