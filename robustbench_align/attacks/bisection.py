"""Turn any fixed-eps attack into a minimal one by per-point bisection on eps.

Per point the search keeps a bracket (lo, hi]: lo the largest eps at which the attack failed, hi
the smallest *verified distance* of an adversarial it found. First eps doubles from `eps_init`
until the attack succeeds (or halves until it fails), then the bracket is bisected for `steps`
rounds or until (hi - lo) <= rtol * hi. The reported distance is the verified distance of the best
adversarial found (after an optional bisection along its own ray, which uses `predict` only),
never a bisection eps; lo is not a certified bound (the attack may just have missed), so it is not
reported as a lower bound.

Attacks that take one eps per point (`FixedEpsAttack.per_point_eps`) are called once per
round with the whole eps vector. Any other FixedEpsAttack (black-box ones too) is called once per
distinct eps value; to keep that affordable, a round tests each point at any eps in the central
half of its bracket rather than exactly the midpoint, and points whose central halves overlap share
one eps (greedy interval stabbing), at most `max_groups` calls per round; such a test shrinks a
bracket to at most 3/4, so those points get steps * log 2 / log(4/3) (about 2.4 * steps) tests.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from ..errors import AttackError
from ..models.base import Model
from .base import Candidates, FixedEpsAttack, MinimalAttack, Norm, clean_correct_rows, wrapped_fixed_eps
from .candidates import refine_along_ray

log = logging.getLogger(__name__)

_EPS0 = 0.1  # first eps: 0.1 per feature of standardised data (linf 0.1, l2 0.1 sqrt(d), l1 0.1 d)


def stab_groups(a: np.ndarray, b: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """Fewest values hitting every interval [a_i, b_i]: (value, member indices) per group.

    Greedy by right end: the right end of the first unhit interval hits every interval that starts
    at or before it. Optimal for intervals on a line.
    """
    order = np.argsort(b, kind="stable")
    groups: list[tuple[float, np.ndarray]] = []
    done = np.zeros(a.size, dtype=bool)
    for i in order:
        if done[i]:
            continue
        v = float(b[i])
        members = np.flatnonzero(~done & (a <= v) & (b >= v))
        done[members] = True
        groups.append((v, members))
    return groups


class MinimalByBisection(MinimalAttack):
    """A MinimalAttack from a FixedEpsAttack by vectorised per-point bisection on eps."""

    name = "bisection"

    def __init__(self, fixed_eps_attack: FixedEpsAttack, steps: int = 12, rtol: float = 1e-3, eps_init: float | None = None,
                 max_doublings: int = 20, max_groups: int = 16, time_limit: float | None = None, refine: bool = True) -> None:
        self.inner = wrapped_fixed_eps(self, fixed_eps_attack, "bisection", "bisect")
        for val, nm in ((steps, "steps"), (max_doublings, "max_doublings"), (max_groups, "max_groups")):
            if int(val) != val or int(val) < 1:
                raise AttackError(f"bisection: {nm} must be an integer >= 1, got {val!r}")
        if not (np.isfinite(rtol) and 0 < rtol < 1):
            raise AttackError(f"bisection: rtol must be in (0, 1), got {rtol!r}")
        if eps_init is not None and not (np.isfinite(eps_init) and eps_init > 0):
            raise AttackError(f"bisection: eps_init must be > 0, got {eps_init!r}")
        if time_limit is not None and not (time_limit > 0):
            raise AttackError(f"bisection: time_limit must be > 0 seconds, got {time_limit!r}")
        self.steps = int(steps)
        self.rtol = float(rtol)
        self.eps_init = None if eps_init is None else float(eps_init)
        self.max_doublings = int(max_doublings)
        self.max_groups = int(max_groups)
        self.time_limit = time_limit
        self.refine = bool(refine)

    def __repr__(self) -> str:
        return f"MinimalByBisection({self.inner!r}, steps={self.steps}, rtol={self.rtol})"

    def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm) -> Candidates:
        t0 = time.perf_counter()
        n, d = X.shape
        best = X.copy()
        best_d = np.full(n, np.inf)
        lo = np.zeros(n)
        queries = np.zeros(n, dtype=np.int64)
        todo = clean_correct_rows(model, X, y)
        # 0.1 per feature: the norm of the all-0.1 vector (linf 0.1, l2 0.1 sqrt(d), l1 0.1 d)
        eps0 = self.eps_init or _EPS0 * float(norm.norms(np.ones((1, d)))[0])
        n_bracket = np.zeros(n, dtype=np.int64)
        n_bisect = np.zeros(n, dtype=np.int64)
        vectorised = self.inner.per_point_eps
        # a grouped test anywhere in the central half shrinks the bracket to at most 3/4 (not 1/2)
        bisect_budget = self.steps if vectorised else int(np.ceil(self.steps * np.log(2.0) / np.log(4.0 / 3.0)))
        calls = rounds = 0
        max_rounds = 4 * (self.max_doublings + self.steps)
        while rounds < max_rounds:
            if self.time_limit is not None and time.perf_counter() - t0 > self.time_limit:
                log.info("%s: time limit reached after %d rounds", self.name, rounds)
                break
            hi = best_d
            bracketed = (lo > 0) & np.isfinite(hi)
            converged = bracketed & (hi - lo <= self.rtol * hi)
            active = todo[~converged[todo] & np.where(bracketed[todo], n_bisect[todo] < bisect_budget, n_bracket[todo] < self.max_doublings)]
            if active.size == 0:
                break
            # the acceptable eps band [a, b] of each active point
            lo_a, hi_a = lo[active], hi[active]
            no_success, no_failure = np.isinf(hi_a), lo_a == 0
            width = np.where(no_success | no_failure, 0.0, hi_a - lo_a)
            centre = np.where(no_success, np.where(lo_a > 0, 2.0 * lo_a, eps0),  # double from the last failure
                              np.where(no_failure, 0.5 * hi_a, lo_a + 0.5 * width))  # halve, or bisect
            if vectorised:
                calls_now = [(active, centre)]
            else:
                a, b = centre - 0.25 * width, centre + 0.25 * width
                groups = sorted(stab_groups(a, b), key=lambda g: -g[1].size)[: self.max_groups]
                calls_now = [(active[mem], np.full(mem.size, v)) for v, mem in groups]
            for rows, eps in calls_now:
                res = self.inner.run(model, X[rows], y[rows], norm, eps if vectorised else float(eps[0]))
                calls += 1
                ok = res.success & np.isfinite(res.distance) & (res.distance > 0)
                better = ok & (res.distance < best_d[rows])
                best[rows[better]] = res.x_adv[better]
                best_d[rows[better]] = res.distance[better]
                failed = ~res.success
                lo[rows[failed]] = np.maximum(lo[rows[failed]], eps[failed])
                if res.queries is not None:
                    queries[rows] += np.asarray(res.queries, dtype=np.int64)
                was_bracketed = (lo[rows] > 0) & np.isfinite(best_d[rows])
                n_bisect[rows] += was_bracketed
                n_bracket[rows] += ~was_bracketed
            # a failure above a found distance (the attack is not monotone in eps) closes the bracket
            lo = np.minimum(lo, np.where(np.isfinite(best_d), best_d, np.inf))
            rounds += 1
        if self.refine:  # shrink each best perturbation along its ray to the boundary (predict only)
            found = np.flatnonzero(np.isfinite(best_d))
            best = refine_along_ray(model, X, y, best, found)
        return Candidates(x_adv=best, queries=queries, flags={"inner": self.inner.name, "calls": calls, "rounds": rounds})


__all__ = ["MinimalByBisection", "stab_groups"]
