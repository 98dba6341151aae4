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
- milp_gurobi_solves, milp_highs_solves: MILP solves answered by each backend (see `mip`);
- point_time: seconds spent on each point (0 for clean-misclassified points);
- ensemble_mismatch: clean points where the parsed ensemble and the model disagree (a warning is
  logged; their results may be missing).
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

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
    gurobi: int = 0  # MILP solves Gurobi answered
    highs: int = 0  # MILP solves HiGHS answered
    verified: bool = True  # x_adv was checked with the model's own predict (else run_points checks it)


_T = TypeVar("_T")
_SHARED: OrderedDict[int, tuple[weakref.ref[TreeEnsemble], dict[Any, Any]]] = OrderedDict()
_SHARED_LOCK = threading.Lock()
_SHARED_KEEP = 4  # parsed ensembles whose structures are kept


def shared(ens: TreeEnsemble, key: Any, build: Callable[[], _T]) -> _T:
    """A structure derived from a parsed ensemble (grid, flat evaluator, Veritas models), built once per ensemble object.

    The exact attacks of one run (and the runs of one process on the same model: `veritas`, then
    `milp` on the points it left open) share them. Keyed by the object itself (a weak reference,
    so an ensemble that is gone is never matched by a reused id); the last few ensembles are kept.
    """
    with _SHARED_LOCK:
        entry = _SHARED.get(id(ens))
        if entry is None or entry[0]() is not ens:
            entry = (weakref.ref(ens), {})
            _SHARED[id(ens)] = entry
            while len(_SHARED) > _SHARED_KEEP:
                _SHARED.popitem(last=False)
        _SHARED.move_to_end(id(ens))
        store = entry[1]
        if key in store:
            return cast(_T, store[key])
    value = build()  # outside the lock: building can take a while; a concurrent duplicate is harmless
    with _SHARED_LOCK:
        return cast(_T, store.setdefault(key, value))


def ensemble_of(model: Model, who: str) -> TreeEnsemble:
    """The model's parsed ensemble; AttackError when tree_ensemble() returns something else.

    The base class has already checked the capability (`requires = {"tree_ensemble"}`).
    """
    ens: object = cast(HasTreeEnsemble, model).tree_ensemble()  # object: a foreign model may break the contract
    if not isinstance(ens, TreeEnsemble):
        raise AttackError(f"attack {who!r}: {model.name!r}.tree_ensemble() returned {type(ens).__name__}, not a TreeEnsemble")
    return ens


def run_points(attack: str, model: Model, ens: TreeEnsemble, X: np.ndarray, y: np.ndarray,
               solve: Callable[[np.ndarray, int], PointOutcome],
               recheck: Callable[[np.ndarray, int], PointOutcome] | None = None) -> Candidates:
    """Skip clean-misclassified points, `solve(x, y)` the rest one by one, collect the candidates.

    Points whose outcome is not `verified` are predicted in one batch at the end; one the model
    does not flip is solved again with `recheck` (a careful search that predicts every answer),
    or loses its point and keeps only its certified bound when there is none.
    """
    n = X.shape[0]
    cand = np.array(X, dtype=np.float64, copy=True)
    wrong = model.predict(X) != y if n else np.zeros(0, dtype=bool)
    if n:
        mismatch = int(np.count_nonzero(ens.predict(X[~wrong]) != y[~wrong]))
        if mismatch:
            log.warning("%s: the parsed ensemble disagrees with %r on %d clean point(s); their results may be missing", attack, model.name, mismatch)
    else:
        mismatch = 0
    outcomes: dict[int, PointOutcome] = {}
    point_time = np.zeros(n)
    for i in np.flatnonzero(~wrong).tolist():
        ts = time.perf_counter()
        outcomes[i] = solve(X[i], int(y[i]))
        point_time[i] = time.perf_counter() - ts
    todo = [i for i, o in outcomes.items() if o.x_adv is not None and not o.verified]
    if todo:
        pred = model.predict(np.stack([cast(np.ndarray, outcomes[i].x_adv) for i in todo]))
        bad = [i for i, p in zip(todo, pred, strict=True) if int(p) == int(y[i])]
        if bad:
            log.warning("%s: %d point(s) found on the parsed ensemble do not flip %r; solving them again predicting every answer",
                        attack, len(bad), model.name)
        for j in bad:
            ts = time.perf_counter()
            if recheck is not None:
                outcomes[j] = recheck(X[j], int(y[j]))
            else:
                o = outcomes[j]
                o.x_adv, o.dist, o.lower = None, np.inf, min(o.lower, o.dist)
            point_time[j] += time.perf_counter() - ts
    lower = np.zeros(n)
    queries = np.zeros(n, dtype=np.int64)
    retries = limited = time_hit = fallbacks = gurobi = highs = 0
    for i, o in outcomes.items():
        if o.x_adv is not None:
            cand[i] = o.x_adv
        lower[i] = o.lower
        queries[i] = o.solves
        retries += o.retries
        limited += int(o.limited)
        time_hit += int(o.time_hit)
        fallbacks += int(o.fell_back)
        gurobi += o.gurobi
        highs += o.highs
    if time_hit:
        log.warning("%s: %d point(s) stopped by the wall-clock safety net; their bounds depend on machine speed", attack, time_hit)
    return Candidates(x_adv=cand, lower_bound=lower, queries=queries, flags={
        "guard_retries": retries, "budget_exhausted": limited, "time_limit_hit": time_hit, "milp_fallback": fallbacks,
        "milp_gurobi_solves": gurobi, "milp_highs_solves": highs,
        "point_time": point_time, "ensemble_mismatch": mismatch,
    })


__all__ = ["DEFAULT_SAFETY_SECONDS", "PointOutcome", "check_budget", "ensemble_of", "run_points", "shared"]
