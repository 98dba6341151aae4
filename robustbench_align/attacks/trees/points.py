"""The per-point driver the exact tree attacks share: one search per clean-correct point.

It returns raw `Candidates` (the base class verifies them) with the certified lower bounds, the
solver calls per point as queries, and these flags:

- guard_retries: candidates in the certification band that did not flip the model and were
  resolved (cut off), or solves repeated with a larger margin guard (see `margins`);
- budget_exhausted: points where a work budget (solver nodes, search steps, band resolutions) ran
  out: their lower bound is what was certified by then, deterministically;
- time_limit_hit: points stopped by the wall-clock safety net (their results may depend on machine
  speed; raise the time limit or lower the work budgets);
- milp_fallback: Veritas points handed to the MILP;
- point_time: seconds spent on each point (0 for clean-misclassified points);
- ensemble_mismatch: clean points where the parsed ensemble and the model disagree (a warning is
  logged; their results may be missing).
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import numpy as np

from ...errors import AttackError, BudgetError
from ...models.base import HasTreeEnsemble, Model, TreeEnsemble
from ..base import Candidates

log = logging.getLogger(__name__)

# The wall-clock safety net of the exact tree searches, seconds per point: far above what the work
# budgets need, so that it does not decide results on a loaded machine.
DEFAULT_SAFETY_SECONDS = 300.0


def check_budget(who: str, what: str, value: object, minimum: int = 1) -> int:
    """A whole-number work budget >= minimum; BudgetError (a ConfigError and an AttackError) naming the fix otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise BudgetError(f"{who}: {what} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


@dataclass
class PointOutcome:
    """What one point's search found: its best verified point, distance, certified bound and counts."""

    x_adv: np.ndarray | None = None
    dist: float = np.inf
    lower: float = 0.0
    solves: int = 0
    retries: int = 0
    limited: bool = False  # a work budget ran out
    time_hit: bool = False  # the wall-clock safety net stopped the search
    fell_back: bool = False  # a Veritas point handed to the MILP


def ensemble_of(model: Model, who: str) -> TreeEnsemble:
    """The model's parsed ensemble; AttackError when tree_ensemble() returns something else.

    The base class has already checked the capability (`requires = {"tree_ensemble"}`).
    """
    ens: object = cast(HasTreeEnsemble, model).tree_ensemble()  # object: a foreign model may break the contract
    if not isinstance(ens, TreeEnsemble):
        raise AttackError(f"attack {who!r}: {model.name!r}.tree_ensemble() returned {type(ens).__name__}, not a TreeEnsemble")
    return ens


def run_points(attack: str, model: Model, ens: TreeEnsemble, X: np.ndarray, y: np.ndarray,
               solve: Callable[[np.ndarray, int], PointOutcome]) -> Candidates:
    """Skip clean-misclassified points, `solve(x, y)` the rest one by one, collect the candidates."""
    n = X.shape[0]
    cand = np.array(X, dtype=np.float64, copy=True)
    lower = np.zeros(n)
    queries = np.zeros(n, dtype=np.int64)
    retries = limited = time_hit = fallbacks = 0
    point_time = np.zeros(n)
    wrong = model.predict(X) != y if n else np.zeros(0, dtype=bool)
    if n:
        mismatch = int(np.count_nonzero(ens.predict(X[~wrong]) != y[~wrong]))
        if mismatch:
            log.warning("%s: the parsed ensemble disagrees with %r on %d clean point(s); their results may be missing", attack, model.name, mismatch)
    else:
        mismatch = 0
    for i in np.flatnonzero(~wrong):
        ts = time.perf_counter()
        o = solve(X[i], int(y[i]))
        point_time[i] = time.perf_counter() - ts
        if o.x_adv is not None:
            cand[i] = o.x_adv
        lower[i] = o.lower
        queries[i] = o.solves
        retries += o.retries
        limited += int(o.limited)
        time_hit += int(o.time_hit)
        fallbacks += int(o.fell_back)
    if time_hit:
        log.warning("%s: %d point(s) stopped by the wall-clock safety net; their bounds depend on machine speed", attack, time_hit)
    return Candidates(x_adv=cand, lower_bound=lower, queries=queries, flags={
        "guard_retries": retries, "budget_exhausted": limited, "time_limit_hit": time_hit, "milp_fallback": fallbacks,
        "point_time": point_time, "ensemble_mismatch": mismatch,
    })


__all__ = ["DEFAULT_SAFETY_SECONDS", "PointOutcome", "check_budget", "ensemble_of", "run_points"]
