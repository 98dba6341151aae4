"""The per-point driver the exact tree attacks share: one search per clean-correct point.

It returns raw `Candidates` (the base class verifies them) with the certified lower bounds, the
solver calls per point as queries, and these flags:

- guard_retries: solves repeated with a larger margin guard because the decoded point did not flip
  the model (see `margins`);
- timeouts: points that hit a time limit (their lower bound is what was certified by then);
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

from ...errors import AttackError
from ...models.base import HasTreeEnsemble, Model, TreeEnsemble
from ..base import Candidates

log = logging.getLogger(__name__)


@dataclass
class PointOutcome:
    """What one point's search found: its best verified point, distance, certified bound and counts."""

    x_adv: np.ndarray | None = None
    dist: float = np.inf
    lower: float = 0.0
    solves: int = 0
    retries: int = 0
    timed_out: bool = False
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
    retries = timeouts = fallbacks = 0
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
        timeouts += int(o.timed_out)
        fallbacks += int(o.fell_back)
    return Candidates(x_adv=cand, lower_bound=lower, queries=queries, flags={
        "guard_retries": retries, "timeouts": timeouts, "milp_fallback": fallbacks,
        "point_time": point_time, "ensemble_mismatch": mismatch,
    })


__all__ = ["PointOutcome", "ensemble_of", "run_points"]
