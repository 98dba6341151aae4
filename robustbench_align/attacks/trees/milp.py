"""The Kantchelian MILP: exact minimal linf/l1/l2 perturbations of a tree ensemble, solved by HiGHS.

Kantchelian, Tygar and Joseph, "Evasion and Hardening of Tree Ensemble Classifiers", ICML 2016.
`MilpStructure` is the point-independent program of one target margin (see `margins`),
`MilpSolver` caches those per model and solves one point, retrying with a larger margin guard
when a decoded point does not flip the model, and `KantchelianMILP` is the attack.
"""
from __future__ import annotations

import logging
import time
import warnings
from typing import Any, cast

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from ...errors import AttackError
from ...models.base import Model, Tree, TreeEnsemble
from ..base import Candidates, MinimalAttack, Norm
from .flat import FlatEnsemble
from .grid import Grid, point_distance
from .local_search import LocalSearch
from .margins import N_LEVELS, Target, targets_of
from .points import DEFAULT_SAFETY_SECONDS, PointOutcome, check_budget, ensemble_of, run_points

log = logging.getLogger(__name__)

_HIGHS_TOL = {"mip_feasibility_tolerance": 1e-9, "primal_feasibility_tolerance": 1e-9}
DEFAULT_NODES = 100  # branch-and-bound nodes per MILP solve
DEFAULT_CUTS = 2  # band leaf combinations resolved (each one more MILP solve) per target


def _leaves_under(t: Tree, leaf_col: dict[int, int]) -> dict[int, list[int]]:
    """Per node of t, the columns of the leaves below it (left subtree first)."""
    under: dict[int, list[int]] = {}

    def collect(n: int) -> list[int]:
        if t.left[n] < 0:
            under[n] = [leaf_col[n]]
        else:
            under[n] = collect(int(t.left[n])) + collect(int(t.right[n]))
        return under[n]

    collect(0)
    return under


class MilpStructure:
    """The point-independent part of the MILP for one target: predicates, leaves, tree constraints.

    Variables: p (binary, one per distinct (feature, threshold) of the trees that matter
    for this target; p = 1 means "goes left"), l (continuous leaf indicators), b (linf bound).
    """

    def __init__(self, ens: TreeEnsemble, target: Target) -> None:
        self.target = target
        c0 = target.c0
        active: list[tuple[Tree, np.ndarray]] = []
        for t, w in zip(ens.trees, target.w, strict=True):
            lv = w[t.is_leaf]
            if t.left[0] < 0 or np.all(lv == lv[0]):
                c0 += float(lv[0])
            else:
                active.append((t, w))
        self.c0 = c0
        self.grid = Grid.of_trees([t for t, _ in active], ens.strict, ens.dtype)
        n_p = self.grid.n_pred
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        lo: list[float] = []
        hi: list[float] = []
        r = 0
        # thermometer code: p_r <= p_{r+1} on one feature
        for i in range(len(self.grid.features)):
            a, b_ = int(self.grid.offset[i]), int(self.grid.offset[i + 1])
            for q in range(a, b_ - 1):
                rows += [r, r]
                cols += [q, q + 1]
                vals += [1.0, -1.0]
                lo.append(-np.inf)
                hi.append(0.0)
                r += 1
        leaf_cols: list[int] = []
        leaf_w: list[float] = []
        col = n_p
        self.active_index = [i for i, (t, w) in enumerate(zip(ens.trees, target.w, strict=True))
                             if not (t.left[0] < 0 or np.all(w[t.is_leaf] == w[t.is_leaf][0]))]
        self.leaf_col_of: list[np.ndarray] = []  # per active tree: node -> column (-1 at internal nodes)
        for t, w in active:
            leaf_col: dict[int, int] = {}
            cols_of = np.full(t.n_nodes, -1, dtype=np.int64)
            for leaf in np.flatnonzero(t.is_leaf):
                leaf_col[int(leaf)] = col
                cols_of[leaf] = col
                leaf_cols.append(col)
                leaf_w.append(float(w[leaf]))
                col += 1
            self.leaf_col_of.append(cols_of)
            under = _leaves_under(t, leaf_col)
            for node in np.flatnonzero(~t.is_leaf):
                n = int(node)
                q = self.grid.pred_index(int(t.feature[n]), t.threshold[n])
                left, right = under[int(t.left[n])], under[int(t.right[n])]
                root = n == 0
                # sum(left leaves) - p (= 0 at the root, <= 0 elsewhere)
                rows += [r] * (len(left) + 1)
                cols += left + [q]
                vals += [1.0] * len(left) + [-1.0]
                lo.append(0.0 if root else -np.inf)
                hi.append(0.0)
                r += 1
                # sum(right leaves) + p (= 1 at the root, <= 1 elsewhere)
                rows += [r] * (len(right) + 1)
                cols += right + [q]
                vals += [1.0] * len(right) + [1.0]
                lo.append(1.0 if root else -np.inf)
                hi.append(1.0)
                r += 1
        self.n_p = n_p
        self.n_l = col - n_p
        self.n_var = col + 1  # + b
        self.b_col = col
        self.A = sp.csr_matrix((vals, (rows, cols)), shape=(r, self.n_var))
        self.A_lo = np.asarray(lo, dtype=np.float64)
        self.A_hi = np.asarray(hi, dtype=np.float64)
        self.margin_row = sp.csr_matrix((leaf_w, ([0] * len(leaf_cols), leaf_cols)), shape=(1, self.n_var))
        self.integrality = np.zeros(self.n_var, dtype=np.int8)
        self.integrality[:n_p] = 1
        self.n_active = len(active)

    def leaf_columns(self, ens: TreeEnsemble, xa: np.ndarray) -> np.ndarray:
        """The leaf-indicator columns of the leaves xa reaches in the active trees (for a no-good cut)."""
        X32 = ens.cast(xa[None])
        return np.array([int(self.leaf_col_of[j][ens.trees[i].leaf_index(X32, ens.strict)[0]])
                         for j, i in enumerate(self.active_index)], dtype=np.int64)

    def solve(self, x: np.ndarray, norm: Norm, upper: float, guard: float, rel_gap: float, node_limit: int,
              time_limit: float, cuts: list[np.ndarray] | None = None) -> dict[str, Any]:
        """Minimise the distance (linf, l1 or squared l2) to a point whose margin reaches `guard`.

        `upper` (a verified distance, or inf) prunes intervals that cost more on their own and caps
        the objective; it is sound because the optimum is never above it. `cuts` are leaf
        combinations (columns from `leaf_columns`) excluded by no-good cuts: combinations the model
        was seen not to flip, which is sound because every input with the same leaves gets the same
        library output. `node_limit` (branch-and-bound nodes) is the work budget; `time_limit`
        (seconds) only a safety net. Returns status ("optimal", "limit", "infeasible", "error"),
        whether the time limit was what stopped it, the decoded point (or None), its objective value
        and the certified lower bound, both in distance units.
        """
        grid = self.grid
        j0, pts, dists = grid.intervals(x)
        n_p = self.n_p
        sq = norm.p == 2
        linf = norm.p == np.inf
        cost = [np.square(d) if sq else d for d in dists]
        ucost = (upper * upper if sq else upper) * (1 + 1e-9) + 1e-300 if np.isfinite(upper) else np.inf
        pos = np.concatenate([c[c > 0] for c in cost]) if cost else np.zeros(0)
        pos = pos[np.isfinite(pos)]
        ref = ucost if np.isfinite(ucost) else (float(np.median(pos)) if pos.size else 1.0)  # objective ~ 1
        sigma = 1.0 / max(ref, 1e-300)
        lb_p = np.zeros(n_p)
        ub_p = np.ones(n_p)
        c = np.zeros(self.n_var)
        const = 0.0
        extra_rows: list[int] = []
        extra_cols: list[int] = []
        extra_vals: list[float] = []
        extra_lo: list[float] = []
        row = 0
        for i in range(len(grid.features)):
            a = int(grid.offset[i])
            d = cost[i]
            m = len(d) - 1
            for r in range(m):
                q = a + r
                if r >= j0[i]:  # going right of thr r costs at least d[r+1]
                    if d[r + 1] > ucost or not np.isfinite(d[r + 1]):
                        lb_p[q] = 1.0
                    elif linf:
                        extra_rows += [row, row]
                        extra_cols += [self.b_col, q]
                        extra_vals += [1.0, sigma * d[r + 1]]
                        extra_lo.append(sigma * d[r + 1])
                        row += 1
                else:  # staying left of thr r costs at least d[r]
                    if d[r] > ucost or not np.isfinite(d[r]):
                        ub_p[q] = 0.0
                    elif linf:
                        extra_rows += [row, row]
                        extra_cols += [self.b_col, q]
                        extra_vals += [1.0, -sigma * d[r]]
                        extra_lo.append(0.0)
                        row += 1
            if not linf:
                dd = np.where(np.isfinite(d), d, 0.0)  # infinite intervals are fixed away above
                const += dd[m]
                c[a:a + m] = sigma * (dd[:m] - dd[1:])
        if np.any(lb_p > ub_p):
            return {"status": "infeasible", "x": None, "obj": np.inf, "lb": np.inf}
        lb = np.zeros(self.n_var)
        ub = np.ones(self.n_var)
        lb[:n_p], ub[:n_p] = lb_p, ub_p
        ub[self.b_col] = sigma * ucost if (linf and np.isfinite(ucost)) else np.inf
        if linf:
            c[self.b_col] = 1.0
        else:
            # b is fixed to 1 and carries the constant, so HiGHS sees (and gaps) the true distance
            lb[self.b_col] = ub[self.b_col] = 1.0
            c[self.b_col] = sigma * const
        cons = [LinearConstraint(self.A, self.A_lo, self.A_hi), LinearConstraint(self.margin_row, guard - self.c0, np.inf)]
        if row:
            cons.append(LinearConstraint(sp.csr_matrix((extra_vals, (extra_rows, extra_cols)), shape=(row, self.n_var)), np.asarray(extra_lo), np.inf))
        if not linf and np.isfinite(ucost):
            cons.append(LinearConstraint(sp.csr_matrix(c[None, :]), -np.inf, sigma * ucost + 1e-9))
        for cut in cuts or []:  # sum of the combination's leaf indicators <= (number of trees) - 1
            cons.append(LinearConstraint(sp.csr_matrix((np.ones(cut.size), (np.zeros(cut.size, dtype=np.int64), cut)),
                                                       shape=(1, self.n_var)), -np.inf, cut.size - 1.0))
        # the HiGHS tolerances and mip_abs_gap are outside scipy's typed option keys; scipy passes them on verbatim.
        # Presolve stays off: on these programs it costs seconds at the root that no node budget bounds
        opts: dict[str, Any] = {"time_limit": max(float(time_limit), 1e-3), "node_limit": int(node_limit), "mip_rel_gap": rel_gap,
                                "presolve": False, "mip_abs_gap": 1e-9, **_HIGHS_TOL}
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            # Any: the stubs tie a solution x to status 0, but a time-out (status 1) can return one too
            res: Any = milp(c, constraints=cons, integrality=self.integrality, bounds=Bounds(lb, ub), options=cast(Any, opts))
        time_hit = bool(res.status == 1 and time.perf_counter() - t0 >= 0.99 * time_limit)

        def to_dist(v: float) -> float:
            v = v / sigma
            return float(np.sqrt(max(v, 0.0))) if sq else float(max(v, 0.0))

        if res.status == 2:
            return {"status": "infeasible", "x": None, "obj": np.inf, "lb": np.inf, "time_hit": False}
        dual = res.get("mip_dual_bound")
        # the objective is scaled to about 1; HiGHS' bound is good to its tolerances (~1e-9), no better
        lbd = to_dist(dual - 1e-9 * max(abs(dual), 1e-3)) if dual is not None and np.isfinite(dual) else 0.0
        if res.x is None:
            return {"status": "limit" if res.status == 1 else "error", "x": None, "obj": np.inf, "lb": lbd, "message": res.message,
                    "time_hit": time_hit}
        p = res.x[:n_p] > 0.5
        choice: list[int] = []
        for i in range(len(grid.features)):
            a, b_ = int(grid.offset[i]), int(grid.offset[i + 1])
            choice.append(int(np.count_nonzero(~p[a:b_])))
        xa = grid.point(x, choice, pts)
        obj = to_dist(res.fun)
        status = "optimal" if res.status == 0 else "limit"
        if dual is None and status == "optimal":
            lbd = to_dist(res.fun - 1e-9 * max(abs(res.fun), 1e-3))
        return {"status": status, "x": xa, "obj": obj, "lb": lbd, "time_hit": time_hit}


class MilpSolver:
    """Per-model cache of MILP structures (one per (target class, true class)) and the per-point search.

    node_limit: branch-and-bound nodes per MILP solve; max_cuts: leaf combinations in the
    certification band that may be resolved (and cut off) per target; time_limit: the safety net in
    seconds per point (hitting it is counted in `PointOutcome.time_hit`).
    """

    def __init__(self, ens: TreeEnsemble, model: Model, norm: Norm, rel_gap: float, node_limit: int = DEFAULT_NODES,
                 max_cuts: int = DEFAULT_CUTS, time_limit: float = DEFAULT_SAFETY_SECONDS) -> None:
        self.ens, self.model, self.norm, self.rel_gap = ens, model, norm, rel_gap
        self.node_limit, self.max_cuts, self.time_limit = int(node_limit), int(max_cuts), float(time_limit)
        self.grid = Grid.of_trees(list(ens.trees), ens.strict, ens.dtype)
        self.flat = FlatEnsemble(ens)
        self._targets: dict[int, list[Target]] = {}
        self._structs: dict[tuple[int, int], MilpStructure] = {}

    def targets(self, y: int) -> list[Target]:
        """The target margins of class y (cached)."""
        if y not in self._targets:
            self._targets[y] = targets_of(self.ens, y)
        return self._targets[y]

    def structure(self, t: Target) -> MilpStructure:
        """The MILP structure of one target (cached)."""
        key = (t.k, t.y)
        if key not in self._structs:
            self._structs[key] = MilpStructure(self.ens, t)
        return self._structs[key]

    def floor(self, x: np.ndarray) -> float:
        """A trivial certified bound: any flip moves at least one feature across a threshold."""
        _, _, dists = self.grid.intervals(x)
        pos = [d[(d > 0) & np.isfinite(d)] for d in dists]
        pos = [p.min() for p in pos if p.size]
        return float(min(pos)) if pos else np.inf

    def flips(self, xa: np.ndarray, y: int) -> bool:
        """xa is finite and the model's own predict moves it off class y."""
        return bool(np.all(np.isfinite(xa))) and int(self.model.predict(xa[None])[0]) != y

    def solve_point(self, x: np.ndarray, y: int, best: np.ndarray | None = None, deadline: float | None = None) -> PointOutcome:
        """The minimal verified adversarial of x and its certified bound, within the work budgets.

        `best` is a verified adversarial to start from (else the local search finds one). Targets are
        solved nearest first (largest clean margin). Per target: certify M >= -delta; a decoded point
        in the band that does not flip the model is cut off (its leaf combination never flips) and the
        MILP solved again, up to `max_cuts` times; if no flipping point came out, the search goes on
        with growing margin guards (the certificate stays the one proved). `deadline` (perf_counter)
        is the safety net; default: now + time_limit.
        """
        out = PointOutcome()
        deadline = time.perf_counter() + self.time_limit if deadline is None else deadline
        if best is None:
            best = LocalSearch(self.flat, self.grid, self.model, x, y, deadline).upper(self.norm)
        if best is not None:
            out.x_adv, out.dist = best, point_distance(x, best, self.norm)
        clean = self.ens.raw(x[None])[0]
        targets = self.targets(y)
        if len(targets) > 1:
            targets = sorted(targets, key=lambda t: -(clean[t.k] - clean[t.y]))
        lows: list[float] = []

        def solve(st: MilpStructure, guard: float, cuts: list[np.ndarray] | None = None) -> dict[str, Any] | None:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                out.time_hit = True
                return None
            r = st.solve(x, self.norm, out.dist, guard, self.rel_gap, self.node_limit, remaining, cuts)
            out.solves += 1
            out.time_hit |= bool(r["time_hit"])
            out.limited |= r["status"] == "limit"
            return r

        def take(xa: np.ndarray) -> None:
            d = point_distance(x, xa, self.norm)
            if d < out.dist:
                out.x_adv, out.dist = xa, d

        for t in targets:
            st = self.structure(t)
            low_t = 0.0
            cuts: list[np.ndarray] = []
            found = False
            for _ in range(self.max_cuts + 1):
                r = solve(st, t.guard(0), cuts)
                if r is None:
                    break
                low_t = max(low_t, float(r["lb"]))  # sound: only combinations seen not to flip were cut off
                if r["x"] is None:
                    found = True  # nothing (else) reachable within the incumbent: nothing to search for
                    break
                if self.flips(r["x"], y):
                    take(r["x"])
                    found = True
                    break
                cuts.append(st.leaf_columns(self.ens, r["x"]))
                out.retries += 1
                log.debug("milp: band point did not flip the model; cutting its leaf combination off")
            if not found:
                for level in range(1, N_LEVELS):
                    r = solve(st, t.guard(level))
                    if r is None or r["x"] is None:
                        break
                    if self.flips(r["x"], y):
                        take(r["x"])
                        break
                    out.retries += 1
            lows.append(low_t)
        # every target's bound (inf: unreachable or costlier than the incumbent), floored by the
        # cheapest single move (the point itself is not adversarial)
        lower = min(lows) if lows else 0.0
        out.lower = min(max(lower, self.floor(x)), out.dist)
        return out


class KantchelianMILP(MinimalAttack):
    """Exact minimal linf/l1/l2 perturbation of a tree ensemble (Kantchelian et al. 2016), HiGHS MILP.

    One binary predicate per distinct (feature, threshold in the ensemble's dtype), thermometer-coded, leaf
    indicators tied to them by the tree structure, and the decision flip as a linear margin
    constraint (one MILP per alternative class, trees that cannot change that margin left out).
    The structure is built once per class pair; per point only the objective (distances of the
    decoded points, squared for l2) and the bounds change. A local search first finds a verified
    adversarial; its distance fixes every predicate whose crossing alone would cost more, which
    is sound (the optimum is never above it) and shrinks the problem a lot.

    Work budgets, so that results do not depend on machine speed: `node_limit` branch-and-bound
    nodes per MILP solve and `max_cuts` band resolutions per target (see `MilpSolver`);
    `time_limit` (seconds per point) is only a safety net, counted in flags["time_limit_hit"].
    `lower_bound` is certified for the model's own arithmetic (see `margins`): the optimum when
    solved, HiGHS' dual bound (min over classes) when the node budget runs out, and never below the
    cheapest single threshold crossing. `mip_rel_gap` is HiGHS' relative gap.
    """

    name = "milp"
    requires = frozenset({"tree_ensemble"})
    norms = ("linf", "l2", "l1")
    exact = True

    def __init__(self, node_limit: int = DEFAULT_NODES, max_cuts: int = DEFAULT_CUTS, time_limit: float = DEFAULT_SAFETY_SECONDS,
                 mip_rel_gap: float = 1e-6, seed: int = 0) -> None:
        if not time_limit > 0:
            raise AttackError(f"milp: time_limit must be > 0 seconds, got {time_limit!r}")
        if not 0 <= mip_rel_gap < 1:
            raise AttackError(f"milp: mip_rel_gap must be in [0, 1), got {mip_rel_gap!r}")
        self.node_limit = check_budget("milp", "node_limit", node_limit)
        self.max_cuts = check_budget("milp", "max_cuts", max_cuts, minimum=0)
        self.time_limit = float(time_limit)
        self.mip_rel_gap = float(mip_rel_gap)
        self.seed = seed

    def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm) -> Candidates:
        """Solve every clean-correct point within its work budgets."""
        ens = ensemble_of(model, self.name)
        solver = MilpSolver(ens, model, norm, self.mip_rel_gap, self.node_limit, self.max_cuts, self.time_limit)
        return run_points(self.name, model, ens, X, y, lambda x, yi: solver.solve_point(x, yi))


__all__ = ["KantchelianMILP", "MilpSolver", "MilpStructure"]
