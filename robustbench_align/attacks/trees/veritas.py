"""Exact minimal linf perturbations of a tree ensemble with Veritas' output bounds.

Devos, Meert and Davis, "Versatile Verification of Tree Ensembles", ICML 2021 (the `dtai-veritas`
package): a best-first search over the leaves of an additive tree ensemble that bounds the
maximum of its output over a box. The linf optimum is one of finitely many radii (the distances
from x to the interval ends of the float32 grid, see `grid`), so asking "can the margin be
reached in this box" at each radius of a bisection finds it exactly. Veritas splits on float32
values, so a float64-threshold ensemble (LightGBM) is refused with an AttackError: the ensemble
attack then relies on the MILP, which works in the ensemble's own dtype.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ...errors import AttackError
from ...models.base import Model, TreeEnsemble
from ..base import LINF, Candidates, MinimalAttack, Norm
from .grid import Grid, next32, point_distance, prev32
from .local_search import LocalSearch
from .margins import GUARD_STEPS, Target
from .milp import MilpSolver
from .points import PointOutcome, ensemble_of, run_points


class _VeritasTarget:
    """A single-output Veritas AddTree computing one target margin M, built from our parsed trees."""

    def __init__(self, ens: TreeEnsemble, target: Target) -> None:
        import veritas

        self.target = target
        at = veritas.AddTree(1, veritas.AddTreeType.REGR)
        c0 = target.c0
        for t, w in zip(ens.trees, target.w, strict=True):
            lv = w[t.is_leaf]
            if t.left[0] < 0 or np.all(lv == lv[0]):
                c0 += float(lv[0])
                continue
            vt = at.add_tree()
            stack = [(0, vt.root())]
            while stack:
                n, m = stack.pop()
                if t.left[n] < 0:
                    vt.set_leaf_value(m, 0, float(w[n]))
                    continue
                thr = np.float32(t.threshold[n])
                s = thr if ens.strict else next32(thr)  # x <= t  <=>  x < next float32 (x float32)
                vt.split(m, int(t.feature[n]), float(s))
                stack.append((int(t.right[n]), vt.right(m)))
                stack.append((int(t.left[n]), vt.left(m)))
        at.set_base_score(0, float(c0))
        self.at: Any = at
        self.empty = len(at) == 0
        self.n_feat: int = at.get_maximum_feat_id() + 1 if not self.empty else 0
        self.c0 = c0


class VeritasLinf(MinimalAttack):
    """Exact minimal linf perturbation by a search over candidate radii with Veritas' output bounds.

    The optimum is one of finitely many radii (the distances from x to the interval ends), so the
    search bisects over that sorted list; each step asks Veritas for the maximum of a target margin
    over the exact box of float32 points reachable at that radius. An upper bound below the guard
    certifies "no adversarial at this radius"; a solution above it is decoded to the closest
    point, verified with the model, and lowers the radius. A cheap local search answers the easy
    "yes" questions first. A point whose query Veritas cannot settle within `query_time_limit`
    seconds (or the point's `time_limit`) goes to the MILP with the best point found so far
    (`milp_time_limit` seconds; counted in flags["milp_fallback"]). `focal_eps` is Veritas' focal
    search parameter (1 = plain best-first A*).
    """

    name = "veritas"
    requires = frozenset({"tree_ensemble"})
    norms = ("linf",)
    exact = True
    install_hint = "pip install dtai-veritas==0.3.1, or use attack 'milp'"

    def __init__(
        self,
        time_limit: float = 30.0,
        milp_time_limit: float | None = None,
        query_time_limit: float = 1.0,
        focal_eps: float = 1.0,
        max_memory_mb: int = 1024,
        seed: int = 0,
    ) -> None:
        if not time_limit > 0:
            raise AttackError(f"veritas: time_limit must be > 0 seconds, got {time_limit!r}")
        if not 0 < focal_eps <= 1:
            raise AttackError(f"veritas: focal_eps must be in (0, 1], got {focal_eps!r}")
        if not query_time_limit > 0:
            raise AttackError(f"veritas: query_time_limit must be > 0 seconds, got {query_time_limit!r}")
        self.focal_eps = float(focal_eps)
        self.query_time_limit = float(query_time_limit)
        self.time_limit = float(time_limit)
        self.milp_time_limit = float(milp_time_limit) if milp_time_limit is not None else float(time_limit)
        self.max_memory = int(max_memory_mb) * 1024 * 1024
        self.seed = seed

    @classmethod
    def refuses(cls, model: Model) -> str | None:
        """Veritas splits in float32: an ensemble with float64 thresholds (LightGBM, HistGradientBoosting) goes to the MILP."""
        ens = ensemble_of(model, cls.name)
        if ens.threshold_dtype != "float32":
            return f"veritas splits in float32 only; {model.name!r} compares {ens.threshold_dtype} thresholds (use attack 'milp')"
        return None

    @classmethod
    def available(cls) -> bool:
        """True when the optional `dtai-veritas` package imports (a real import: its compiled core can fail to load)."""
        try:
            import veritas  # noqa: F401
        except ImportError:
            return False
        return True

    def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm) -> Candidates:
        """Solve every clean-correct point; the Veritas models of the class pairs are built once."""
        ens = ensemble_of(model, self.name)
        if ens.threshold_dtype != "float32":
            raise AttackError(f"veritas: {model.name!r} compares {ens.threshold_dtype} thresholds, Veritas splits in float32 only; use attack 'milp'")
        milp_solver = MilpSolver(ens, model, norm, 1e-6)
        vts: dict[tuple[int, int], _VeritasTarget] = {}

        def vt_of(t: Target) -> _VeritasTarget:
            key = (t.k, t.y)
            if key not in vts:
                vts[key] = _VeritasTarget(ens, t)
            return vts[key]

        return run_points(self.name, model, ens, X, y, lambda x, yi: self._solve_point(ens, model, milp_solver, vt_of, x, yi))

    def _query(self, vt: _VeritasTarget, box: dict[int, Any], x: np.ndarray, y: int, model: Model, guard: float,
               budget: float) -> tuple[str, np.ndarray | None]:
        """Ask whether margin >= guard is reachable in `box`.

        ("adv", point): a verified adversarial; ("none", None): certified unreachable; ("numeric",
        None): reachable by the ensemble's rule but no decoded point flips the model (retry with a
        larger guard); ("unknown", None): not settled within `budget` seconds.
        """
        if vt.empty:  # the margin is a constant
            if vt.c0 >= guard and int(model.predict(x[None])[0]) != y:
                return "adv", x.copy()
            return ("none", None) if vt.c0 < guard else ("numeric", None)
        return self._search(vt, box, x, y, model, guard, budget)

    def _search(self, vt: _VeritasTarget, box: dict[int, Any], x: np.ndarray, y: int, model: Model, guard: float,
                budget: float) -> tuple[str, np.ndarray | None]:
        """One Veritas search for margin >= guard in `box` (answers as in `_query`)."""
        import veritas

        cfg = veritas.Config(veritas.HeuristicType.MAX_OUTPUT)
        cfg.stop_when_optimal = True
        cfg.ignore_state_when_worse_than = guard
        cfg.stop_when_atleast_bound_better_than = guard
        cfg.max_memory = self.max_memory
        cfg.focal_eps = self.focal_eps
        s = cfg.get_search(vt.at, [box.get(f, veritas.Interval()) for f in range(vt.n_feat)])
        reason = s.step_for(max(budget, 1e-3), 100)
        sols = [s.get_solution(i) for i in range(min(s.num_solutions(), 20))]
        sols = [q for q in sols if q.output >= guard]
        for q in sols:
            xa = self._closest(x, q.box())
            if int(model.predict(xa[None])[0]) != y:
                return "adv", xa
        if sols:
            return "numeric", None
        if reason in (veritas.StopReason.NO_MORE_OPEN, veritas.StopReason.OPTIMAL) or s.current_bounds().best < guard:
            return "none", None
        return "unknown", None

    @staticmethod
    def _closest(x: np.ndarray, box: dict[int, Any]) -> np.ndarray:
        """The closest point to x (float32 coordinates where moved) inside a Veritas box [lo, hi)."""
        out = np.array(x, dtype=np.float64, copy=True)
        for f, iv in box.items():
            x32 = np.float32(x[f])
            lo, hi = iv.lo, iv.hi
            if np.isfinite(lo) and x32 < lo:
                out[f] = float(np.float32(lo))
            elif np.isfinite(hi) and x32 >= hi:
                out[f] = float(prev32(hi))
        return out

    @staticmethod
    def _box_at(grid: Grid, dists: list[np.ndarray], delta: float) -> dict[int, Any]:
        """The Veritas box (per feature an Interval [lo, hi)) of the grid points within linf radius delta."""
        import veritas

        box = {}
        for i, f in enumerate(grid.features):
            ok = np.flatnonzero(dists[i] <= delta)
            lo_i, hi_i = int(ok.min()), int(ok.max())
            s = grid.split[i]
            lo = float(s[lo_i - 1]) if lo_i > 0 else -np.inf
            hi = float(s[hi_i]) if hi_i < len(s) else np.inf
            if np.isfinite(lo) and np.isfinite(hi):
                box[f] = veritas.Interval(lo, hi)
            elif np.isfinite(lo):
                box[f] = veritas.Interval.from_lo(lo)
            elif np.isfinite(hi):
                box[f] = veritas.Interval.from_hi(hi)
        return box

    def _solve_point(self, ens: TreeEnsemble, model: Model, milp_solver: MilpSolver,
                     vt_of: Callable[[Target], _VeritasTarget], x: np.ndarray, y: int) -> PointOutcome:
        """Bisection over the candidate radii of x; the MILP takes over when a query stays undecided."""
        t_start = time.perf_counter()
        deadline = t_start + self.time_limit
        out = PointOutcome()
        grid = milp_solver.grid
        search = LocalSearch(milp_solver.flat, grid, model, x, y, deadline)
        dists = search.dists
        C = search.radii
        targets = milp_solver.targets(y)
        if len(targets) > 1:
            clean = ens.raw(x[None])[0]
            targets = sorted(targets, key=lambda t: -(clean[t.k] - clean[t.y]))
        levels = {(t.k, t.y): 0 for t in targets}

        def query(delta: float) -> tuple[str, np.ndarray | None, bool]:
            """("adv", point) / ("none", None) / ("unknown", None) at radius delta, and whether a
            "none" is certified (every target answered without a raised guard)."""
            quick = search.within(delta)
            if quick is not None:
                return "adv", quick, False
            box = self._box_at(grid, dists, delta)
            status, certified = "none", True
            for t in targets:
                key = (t.k, t.y)
                while True:
                    budget = min(deadline - time.perf_counter(), self.query_time_limit)
                    if budget <= 0:
                        return "unknown", None, False
                    r, xa = self._query(vt_of(t), box, x, y, model, t.guard(levels[key]), budget)
                    out.solves += 1
                    if r == "numeric" and levels[key] + 1 < len(GUARD_STEPS):
                        levels[key] += 1
                        out.retries += 1
                        continue
                    break
                if r == "adv":
                    return "adv", xa, False
                if r != "none":
                    status = "unknown"
                certified &= levels[key] == 0
            return status, None, certified

        lo = lo_cert = 0
        hi = int(np.searchsorted(C, out.dist)) if np.isfinite(out.dist) else C.size
        undecided = False
        while lo < hi:
            mid = (lo + hi) // 2
            r, xa, certified = query(float(C[mid]))
            if r == "adv" and xa is not None:
                d = point_distance(x, xa, LINF)
                if d < out.dist:
                    out.x_adv, out.dist = xa, d
                hi = min(mid, int(np.searchsorted(C, d)))
            elif r == "none":
                lo = mid + 1
                if certified:
                    lo_cert = lo
            else:
                undecided = True
                break
        # no adversarial within any radius below C[lo_cert]; C[0] is the cheapest move
        out.lower = min(float(C[lo_cert]) if lo_cert < C.size else np.inf, out.dist)
        if undecided:
            out.timed_out = True
            fb = milp_solver.solve_point(x, y, time.perf_counter() + self.milp_time_limit, best=out.x_adv)
            out.solves += fb.solves
            out.retries += fb.retries
            if fb.x_adv is not None and fb.dist < out.dist:
                out.x_adv, out.dist = fb.x_adv, fb.dist
            out.lower = min(max(out.lower, fb.lower), out.dist)
            out.fell_back = True
        return out


__all__ = ["VeritasLinf"]
