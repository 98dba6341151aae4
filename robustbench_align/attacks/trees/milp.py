"""The Kantchelian MILP: exact minimal linf/l1/l2 perturbations of a tree ensemble, solved by HiGHS or Gurobi (`mip`).

Kantchelian, Tygar and Joseph, "Evasion and Hardening of Tree Ensemble Classifiers", ICML 2016.
`MilpStructure` is the point-independent program of one target margin (see `margins`),
`MilpSolver` caches those per model and solves one point, retrying with a larger margin guard
when a decoded point does not flip the model, and `KantchelianMILP` is the attack.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from ...errors import AttackError
from ...models.base import Model, Tree, TreeEnsemble
from ..base import Candidates, MinimalAttack, Norm
from .flat import DeadlinePassed, FlatEnsemble, check_deadline
from .grid import Grid, point_distance
from .local_search import LocalSearch
from .margins import N_LEVELS, ExactVotes, Target, shifted, targets_of
from .mip import check_solver, solve_mip
from .points import DEFAULT_SAFETY_SECONDS, PointOutcome, check_budget, ensemble_of, run_points, shared

log = logging.getLogger(__name__)

DEFAULT_NODES = 100  # branch-and-bound nodes per MILP solve
DEFAULT_CUTS = 2  # band leaf combinations resolved (each one more MILP solve) per target


_CHECK_EVERY = 1024  # nodes between deadline checks while a structure is built


class MilpTopology:
    """The part of a MILP structure that depends only on its trees: grid, leaves, their paths, node rows.

    Targets whose non-constant trees are the same (every class pair of a forest, and a target and
    its `shifted` form) share one (`MilpStructure` takes it from the ensemble's shared cache). Building it
    walks every node of every tree (and lists the leaves under each node), so it checks `deadline`
    (perf_counter) every few hundred nodes and raises DeadlinePassed once it has passed.
    """

    def __init__(self, trees: list[Tree], strict: bool, dtype: type[np.floating[Any]], deadline: float = np.inf) -> None:
        self.grid = grid = Grid.of_trees(trees, strict, dtype)
        self.n_p = grid.n_pred
        n_f = len(grid.features)
        # fine interval i of grid feature g is number ioff[g] + i of the concatenated interval list
        self.ioff = (grid.offset[:-1] + np.arange(n_f)).astype(np.int64)
        self.pred_feat = np.repeat(np.arange(n_f), np.diff(grid.offset)).astype(np.int64)
        self.pred_r = (np.arange(self.n_p) - grid.offset[self.pred_feat]).astype(np.int64)
        gidx = {f: g for g, f in enumerate(grid.features)}
        leaf_tree: list[int] = []
        pair_leaf: list[int] = []  # a leaf's path restricts grid feature pair_feat to fine intervals [pair_lo, pair_hi]
        pair_feat: list[int] = []
        pair_lo: list[int] = []
        pair_hi: list[int] = []
        row_q: list[int] = []  # node rows: predicate, side (0: leaves under the left child), entries
        row_side: list[int] = []
        ent_row: list[int] = []
        ent_leaf: list[int] = []
        self.leaf_col_of: list[np.ndarray] = []  # per active tree: node -> leaf number (-1 at internal nodes)
        for j, t in enumerate(trees):
            cols_of = np.full(t.n_nodes, -1, dtype=np.int64)
            leaves = np.flatnonzero(t.is_leaf)
            cols_of[leaves] = len(leaf_tree) + np.arange(leaves.size)
            leaf_tree += [j] * leaves.size
            self.leaf_col_of.append(cols_of)
            internal = t.left >= 0
            q_of = np.full(t.n_nodes, -1, dtype=np.int64)  # global predicate of each internal node
            q_of[internal] = grid.pred_indices(t.feature[internal], t.threshold[internal])
            under: dict[int, list[int]] = {}
            stack: list[tuple[int, dict[int, tuple[int, int]]]] = [(0, {})]
            order: list[int] = []
            while stack:
                n, box = stack.pop()
                order.append(n)
                if len(order) % _CHECK_EVERY == 0:
                    check_deadline(deadline)
                if t.left[n] < 0:
                    for g, (lo_, hi_) in box.items():
                        pair_leaf.append(int(cols_of[n]))
                        pair_feat.append(g)
                        pair_lo.append(lo_)
                        pair_hi.append(hi_)
                    continue
                g = gidx[int(t.feature[n])]
                r = int(q_of[n]) - int(grid.offset[g])
                lo_, hi_ = box.get(g, (0, int(grid.offset[g + 1] - grid.offset[g])))
                stack.append((int(t.right[n]), {**box, g: (max(lo_, r + 1), hi_)}))
                stack.append((int(t.left[n]), {**box, g: (lo_, min(hi_, r))}))
            for seen, n in enumerate(reversed(order)):  # children before parents
                if seen % _CHECK_EVERY == 0:
                    check_deadline(deadline)
                if t.left[n] < 0:
                    under[n] = [int(cols_of[n])]
                    continue
                q = int(q_of[n])
                for side, child in ((0, int(t.left[n])), (1, int(t.right[n]))):
                    ent_leaf += under[child]
                    ent_row += [len(row_q)] * len(under[child])
                    row_q.append(q)
                    row_side.append(side)
                under[n] = under[int(t.left[n])] + under[int(t.right[n])]
        self.n_active = len(trees)
        self.n_l = len(leaf_tree)
        self.leaf_tree = np.asarray(leaf_tree, dtype=np.int64)
        self.pair_leaf = np.asarray(pair_leaf, dtype=np.int64)
        self.pair_feat = np.asarray(pair_feat, dtype=np.int64)
        self.pair_lo = np.asarray(pair_lo, dtype=np.int64)
        self.pair_hi = np.asarray(pair_hi, dtype=np.int64)
        self.row_q = np.asarray(row_q, dtype=np.int64)
        self.row_side = np.asarray(row_side, dtype=np.int64)
        self.ent_row = np.asarray(ent_row, dtype=np.int64)
        self.ent_leaf = np.asarray(ent_leaf, dtype=np.int64)
        # a leaf whose path contradicts itself (x_f < 1 then x_f > 2) is reached by no input
        self.leaf_empty = np.zeros(self.n_l, dtype=bool)
        self.leaf_empty[self.pair_leaf[self.pair_lo > self.pair_hi]] = True


class MilpStructure:
    """The point-independent part of the MILP for one target: trees, leaves, paths, node constraints.

    Per point (`solve`) the program is restricted to what is reachable within the incumbent
    distance u (see `solve`); its variables are p (binary, one per kept (feature, threshold) of the
    trees that matter for this target; p = 1 means "goes left"), l (continuous leaf indicators) and
    b (the linf bound, or the constant 1 carrying the l1/l2 objective's constant).

    Its tree part (`MilpTopology`) is built once per set of non-constant trees and shared through
    the ensemble's cache; building one checks `deadline` (perf_counter) and raises DeadlinePassed
    once it has passed (nothing is cached then); without a deadline the structure is the same.
    """

    def __init__(self, ens: TreeEnsemble, target: Target, deadline: float = np.inf) -> None:
        self.target = target
        c0 = target.c0
        active: list[tuple[Tree, np.ndarray]] = []
        self.active_index: list[int] = []
        for i, (t, w) in enumerate(zip(ens.trees, target.w, strict=True)):
            lv = w[t.is_leaf]
            if t.left[0] < 0 or np.all(lv == lv[0]):
                c0 += float(lv[0])
            else:
                active.append((t, w))
                self.active_index.append(i)
        self.c0 = c0
        trees = [t for t, _ in active]
        topo = shared(ens, ("milp-topology", tuple(self.active_index)), lambda: MilpTopology(trees, ens.strict, ens.dtype, deadline))
        self.topology = topo
        self.grid = topo.grid
        self.n_p = topo.n_p
        self.ioff = topo.ioff
        self.pred_feat = topo.pred_feat
        self.pred_r = topo.pred_r
        self.leaf_col_of = topo.leaf_col_of
        self.n_active = topo.n_active
        self.n_l = topo.n_l
        self.leaf_tree = topo.leaf_tree
        self.pair_leaf = topo.pair_leaf
        self.pair_feat = topo.pair_feat
        self.pair_lo = topo.pair_lo
        self.pair_hi = topo.pair_hi
        self.row_q = topo.row_q
        self.row_side = topo.row_side
        self.ent_row = topo.ent_row
        self.ent_leaf = topo.ent_leaf
        self.leaf_empty = topo.leaf_empty
        # leaf values in the topology's leaf order (per tree, its leaves in node order)
        self.leaf_w = np.concatenate([w[t.is_leaf] for t, w in active]).astype(np.float64) if active else np.zeros(0)

    def leaf_columns(self, ens: TreeEnsemble, xa: np.ndarray) -> np.ndarray:
        """The leaves (numbers, one per active tree) xa reaches: the combination a no-good cut excludes."""
        X32 = ens.cast(xa[None])
        return np.array([int(self.leaf_col_of[j][ens.trees[i].leaf_index(X32, ens.strict)[0]])
                         for j, i in enumerate(self.active_index)], dtype=np.int64)

    def solve(self, x: np.ndarray, norm: Norm, upper: float, guard: float, rel_gap: float, node_limit: int,
              time_limit: float, cuts: list[np.ndarray] | None = None, solver: str = "auto") -> dict[str, Any]:
        """Minimise the distance (linf, l1 or squared l2) to a point whose margin reaches `guard`.

        `upper` (a verified distance, or inf) restricts the program to what is reachable within it,
        which is exact because the optimum is never above it: a leaf whose box (the intervals its
        path allows) is farther than `upper` from x is left out (every point in it costs more); a
        tree left with one reachable leaf, or (without cuts) with one reachable value, is a
        constant; a node row whose predicate cannot be crossed within `upper` on its own is
        implied by the others; and only the thresholds of the remaining node rows are variables
        (their intervals merged, each represented by its point closest to x, which is the one
        the decoding returns). Every point of the full program within `upper` has its leaves,
        margin and distance in the restricted one, and every solution of the restricted one
        decodes to a point of the full one with the same leaves in the kept trees and the same
        distance. The objective is also capped at `upper`.

        `cuts` are leaf combinations (from `leaf_columns`) excluded by no-good cuts: combinations
        the model was seen not to flip, which is sound because every input with the same leaves
        gets the same library output. `node_limit` (branch-and-bound nodes) is the work budget;
        `time_limit` (seconds, building the program included) only a safety net; when it passes before
        the solver starts, the answer is a time-limit hit without a point. `solver` is the backend (`mip.solve_mip`).
        Returns status ("optimal", "limit", "infeasible", "error"), whether the time limit was what stopped
        it, the decoded point (or None), its objective value and the certified lower bound, both in
        distance units, and the backend that answered ("solver"; absent when no solver ran).
        """
        t_start = time.perf_counter()
        grid = self.grid
        infeasible: dict[str, Any] = {"status": "infeasible", "x": None, "obj": np.inf, "lb": np.inf, "time_hit": False}
        j0, pts, dists = grid.intervals(x)
        sq = norm.p == 2
        linf = norm.p == np.inf
        n_f = len(grid.features)
        cost = [np.square(d) if sq else d for d in dists]
        ucost = (upper * upper if sq else upper) * (1 + 1e-9) + 1e-300 if np.isfinite(upper) else np.inf
        fcost = np.concatenate(cost) if cost else np.zeros(0)
        fcost = np.where(np.isfinite(fcost), fcost, np.inf)
        pos = fcost[np.isfinite(fcost) & (fcost > 0)]
        ref = ucost if np.isfinite(ucost) else (float(np.median(pos)) if pos.size else 1.0)  # objective ~ 1
        sigma = 1.0 / max(ref, 1e-300)
        j0a = np.asarray(j0, dtype=np.int64)
        ok_int = fcost <= ucost  # fine intervals reachable on their own
        # the cheapest point of each leaf's box: per path feature the allowed interval closest to x
        pc = fcost[self.ioff[self.pair_feat] + np.clip(j0a[self.pair_feat], self.pair_lo, self.pair_hi)] if self.pair_leaf.size else np.zeros(0)
        leaf_cost = np.zeros(self.n_l)
        if linf:
            np.maximum.at(leaf_cost, self.pair_leaf, pc)
        else:
            np.add.at(leaf_cost, self.pair_leaf, pc)
        reach = (leaf_cost <= ucost) & ~self.leaf_empty
        n_t = self.n_active
        n_reach = np.bincount(self.leaf_tree, weights=reach, minlength=n_t)
        wmax = np.full(n_t, -np.inf)
        wmin = np.full(n_t, np.inf)
        np.maximum.at(wmax, self.leaf_tree[reach], self.leaf_w[reach])
        np.minimum.at(wmin, self.leaf_tree[reach], self.leaf_w[reach])
        if np.any(n_reach == 0):
            return infeasible  # not even x's own leaf: nothing is within upper
        const_tree = (n_reach == 1) | ((wmax == wmin) & (not cuts))
        c0 = self.c0 + float(np.sum(wmax[const_tree]))
        kept_tree = ~const_tree
        if c0 + float(np.sum(wmax[kept_tree])) < guard - 1e-7 * max(self.target.scale, 1.0):
            return infeasible  # no reachable leaf combination reaches the guard
        keep_leaf = reach & kept_tree[self.leaf_tree]
        # node rows with a kept leaf under them whose predicate can be crossed both ways within upper
        q = self.row_q
        rq_ok = ok_int[self.ioff[self.pred_feat[q]] + self.pred_r[q]] & ok_int[self.ioff[self.pred_feat[q]] + self.pred_r[q] + 1]
        ent_ok = keep_leaf[self.ent_leaf]
        rows_alive = np.zeros(q.size, dtype=bool)
        rows_alive[self.ent_row[ent_ok]] = True
        rows_alive &= rq_ok
        kept_q = np.unique(q[rows_alive])
        n_pk = kept_q.size
        leaf_var = np.full(self.n_l, -1, dtype=np.int64)
        leaf_var[keep_leaf] = n_pk + np.arange(int(np.count_nonzero(keep_leaf)))
        n_lk = int(np.count_nonzero(keep_leaf))
        b_col = n_pk + n_lk
        n_var = b_col + 1
        pvar = np.full(self.n_p, -1, dtype=np.int64)
        pvar[kept_q] = np.arange(n_pk)
        # per grid feature: the merged intervals between its kept thresholds, each at its point closest to x
        c = np.zeros(n_var)
        const = 0.0
        rows: list[np.ndarray] = []
        cols: list[np.ndarray] = []
        vals: list[np.ndarray] = []
        lo: list[np.ndarray] = []
        hi: list[np.ndarray] = []
        r_next = 0
        feat_of_k = self.pred_feat[kept_q]
        choice_of: list[np.ndarray] = []  # per grid feature: fine interval of each merged interval
        starts = np.searchsorted(feat_of_k, np.arange(n_f + 1))
        for g in range(n_f):
            a, e = int(starts[g]), int(starts[g + 1])
            rs = self.pred_r[kept_q[a:e]]
            m = int(grid.offset[g + 1] - grid.offset[g])
            lo_k = np.concatenate([[0], rs + 1])
            hi_k = np.concatenate([rs, [m]])
            ch = np.clip(j0a[g], lo_k, hi_k)
            choice_of.append(ch)
            if e == a:
                continue
            D = sigma * fcost[self.ioff[g] + ch]
            K = e - a
            vk = np.arange(a, e)
            if K > 1:  # thermometer code: p_k <= p_{k+1} on one feature
                nr = K - 1
                rr = r_next + np.arange(nr)
                rows += [rr, rr]
                cols += [vk[:-1], vk[1:]]
                vals += [np.ones(nr), -np.ones(nr)]
                lo.append(np.full(nr, -np.inf))
                hi.append(np.zeros(nr))
                r_next += nr
            if linf:
                J0 = int(np.searchsorted(hi_k, j0a[g]))  # the merged interval of x
                kk = np.arange(K)
                right = kk >= J0  # going right of threshold k costs D[k+1], staying left of it D[k]
                rr = r_next + kk
                coef = np.where(right, D[kk + 1], -D[kk])
                rows += [rr, rr]
                cols += [np.full(K, b_col), vk]
                vals += [np.ones(K), coef]
                lo.append(np.where(right, D[kk + 1], 0.0))
                hi.append(np.full(K, np.inf))
                r_next += K
            else:
                const += float(D[K])
                c[vk] = D[:K] - D[1:]
        # trees: exactly one kept leaf each
        kl = np.flatnonzero(keep_leaf)
        tree_row = np.cumsum(kept_tree) - 1
        rows.append(r_next + tree_row[self.leaf_tree[kl]])
        cols.append(leaf_var[kl])
        vals.append(np.ones(kl.size))
        n_kt = int(np.count_nonzero(kept_tree))
        lo.append(np.ones(n_kt))
        hi.append(np.ones(n_kt))
        r_next += n_kt
        # nodes: sum(left leaves) <= p and sum(right leaves) <= 1 - p
        alive = np.flatnonzero(rows_alive)
        new_row = np.full(q.size, -1, dtype=np.int64)
        new_row[alive] = r_next + np.arange(alive.size)
        ent = ent_ok & rows_alive[self.ent_row]
        rows += [new_row[self.ent_row[ent]], new_row[alive]]
        cols += [leaf_var[self.ent_leaf[ent]], pvar[q[alive]]]
        side = self.row_side[alive]
        vals += [np.ones(int(np.count_nonzero(ent))), np.where(side == 0, -1.0, 1.0)]
        lo.append(np.full(alive.size, -np.inf))
        hi.append(side.astype(np.float64))
        r_next += alive.size
        lb = np.zeros(n_var)
        ub = np.ones(n_var)
        if linf:
            c[b_col] = 1.0
            ub[b_col] = sigma * ucost if np.isfinite(ucost) else np.inf
        else:
            # b is fixed to 1 and carries the constant, so the solver sees (and gaps) the true distance
            lb[b_col] = ub[b_col] = 1.0
            c[b_col] = const
        blocks = [sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r_next, n_var)),
                  sp.csr_matrix((self.leaf_w[kl], (np.zeros(kl.size, dtype=np.int64), leaf_var[kl])), shape=(1, n_var))]
        lo += [np.array([guard - c0])]
        hi += [np.array([np.inf])]
        if not linf and np.isfinite(ucost):
            blocks.append(sp.csr_matrix(c[None, :]))
            lo.append(np.array([-np.inf]))
            hi.append(np.array([sigma * ucost + 1e-9]))
        for cut in cuts or []:  # sum of the combination's leaf indicators <= (number of trees) - 1
            if not np.all(reach[cut]):
                continue  # the combination is out of reach anyway
            vs = leaf_var[cut[kept_tree[self.leaf_tree[cut]]]]  # the constant trees' leaves are always taken
            if vs.size == 0:
                return infeasible  # the one reachable combination is cut off
            blocks.append(sp.csr_matrix((np.ones(vs.size), (np.zeros(vs.size, dtype=np.int64), vs)), shape=(1, n_var)))
            lo.append(np.array([-np.inf]))
            hi.append(np.array([vs.size - 1.0]))
        integrality = np.zeros(n_var, dtype=np.int8)
        integrality[:n_pk] = 1
        left = float(time_limit) - (time.perf_counter() - t_start)  # building the program counts against the limit
        if left <= 0:
            return {"status": "limit", "x": None, "obj": np.inf, "lb": 0.0, "time_hit": True,
                    "message": "the time limit passed while the program was built"}
        ans = solve_mip(c, sp.csr_matrix(sp.vstack(blocks)), np.concatenate(lo), np.concatenate(hi), lb, ub, integrality,
                        node_limit, left, rel_gap, solver=solver)

        def to_dist(v: float) -> float:
            v = v / sigma
            return float(np.sqrt(max(v, 0.0))) if sq else float(max(v, 0.0))

        if ans.status == "infeasible":
            return {**infeasible, "solver": ans.solver}
        dual = ans.bound
        # the objective is scaled to about 1; the solver's bound is good to its tolerances (~1e-9), no better
        lbd = to_dist(dual - 1e-9 * max(abs(dual), 1e-3)) if dual is not None else 0.0
        if ans.x is None:
            return {"status": ans.status, "x": None, "obj": np.inf, "lb": lbd, "message": ans.message, "time_hit": ans.time_hit,
                    "solver": ans.solver}
        p = ans.x[:n_pk] > 0.5
        choice = [int(choice_of[g][int(np.count_nonzero(~p[starts[g]:starts[g + 1]]))]) for g in range(n_f)]
        xa = grid.point(x, choice, pts)
        obj = to_dist(ans.fun)
        status = ans.status
        time_hit = ans.time_hit
        if dual is None and status == "optimal":
            lbd = to_dist(ans.fun - 1e-9 * max(abs(ans.fun), 1e-3))
        return {"status": status, "x": xa, "obj": obj, "lb": lbd, "time_hit": time_hit, "solver": ans.solver}


class MilpSolver:
    """Per-model cache of MILP structures (one per (target class, true class)) and the per-point search.

    node_limit: branch-and-bound nodes per MILP solve; max_cuts: leaf combinations in the
    certification band that may be resolved (and cut off) per target; time_limit: the safety net in
    seconds per point (hitting it is counted in `PointOutcome.time_hit`); solver: the MILP backend
    ("auto", "highs", "gurobi", see `mip`).
    """

    def __init__(self, ens: TreeEnsemble, model: Model, norm: Norm, rel_gap: float, node_limit: int = DEFAULT_NODES,
                 max_cuts: int = DEFAULT_CUTS, time_limit: float = DEFAULT_SAFETY_SECONDS, solver: str = "auto") -> None:
        self.ens, self.model, self.norm, self.rel_gap = ens, model, norm, rel_gap
        self.solver = check_solver("milp", solver)
        self.node_limit, self.max_cuts, self.time_limit = int(node_limit), int(max_cuts), float(time_limit)
        self.grid = shared(ens, "grid", lambda: Grid.of_trees(list(ens.trees), ens.strict, ens.dtype))
        self.flat = shared(ens, "flat", lambda: FlatEnsemble(ens))
        self._targets: dict[int, list[Target]] = shared(ens, "targets", dict)
        self._structs: dict[tuple[int, int, float], MilpStructure] = shared(ens, "milp-structures", dict)
        # pure-leaf combinations decided exactly (scikit-learn forests only; None elsewhere)
        self.votes: ExactVotes | None = shared(ens, "exact-votes", lambda: ExactVotes(ens, self.flat) if ExactVotes.applies(ens) else None)

    def targets(self, y: int) -> list[Target]:
        """The target margins of class y (cached)."""
        if y not in self._targets:
            self._targets[y] = targets_of(self.ens, y)
        return self._targets[y]

    def structure(self, t: Target, deadline: float = np.inf, shift: float = 0.0) -> MilpStructure:
        """The MILP structure of one target (cached); DeadlinePassed when `deadline` passes while it is built.

        `shift` > 0 (vote forests only, see `certifying`): the structure of the `shifted` target.
        """
        key = (t.k, t.y, shift)
        if key not in self._structs:
            target = shifted(t, self.votes.per_tree, shift) if shift > 0 and self.votes is not None else t
            self._structs[key] = MilpStructure(self.ens, target, deadline)
        return self._structs[key]

    def certifying(self, t: Target) -> float:
        """The margin shift of the certification program of a target (0: none).

        On a forest whose pure-leaf combinations are decided exactly (`ExactVotes`), a target that
        a tie does not flip is certified on its `shifted` margin from guard shift - delta: the exact
        ties are not candidates, so they are neither found, predicted and cut one by one nor left to
        weaken the certificate.
        """
        if self.votes is None or t.tie_ok:
            return 0.0
        # HiGHS accepts a row violated by its feasibility tolerance (1e-9), so a shift of the band's size (about
        # 1e-14) would not keep the ties out: any shift between delta and the vote step 1/T works (`shifted`), so
        # take one far above the tolerance and far below the step
        step = 1.0 / len(self.ens.trees)  # integer vote sums: integer-leaf margins move in steps of 1/T
        shift = min(max(1.5 * t.delta, 1e-6 * t.scale), 0.25 * step)
        return shift if shift >= 1.5 * t.delta else 0.0  # none fits between the band and the step: no shift

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
            r = st.solve(x, self.norm, out.dist, guard, self.rel_gap, self.node_limit, remaining, cuts, self.solver)
            out.solves += 1
            out.gurobi += int(r.get("solver") == "gurobi")
            out.highs += int(r.get("solver") == "highs")
            out.time_hit |= bool(r["time_hit"])
            out.limited |= r["status"] == "limit"
            return r

        def take(xa: np.ndarray) -> None:
            d = point_distance(x, xa, self.norm)
            if d < out.dist:
                out.x_adv, out.dist = xa, d

        for t in targets:
            shift = self.certifying(t)
            try:  # past the deadline every solve below returns None: the same bound (0) without building anything
                check_deadline(deadline)
                st = self.structure(t, deadline, shift)
            except DeadlinePassed:
                out.time_hit = True
                lows.append(0.0)
                continue
            low_t = 0.0
            cuts: list[np.ndarray] = []
            found = False
            for _ in range(self.max_cuts + 1):
                r = solve(st, t.guard(0) + shift, cuts)
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
                if shift:
                    try:
                        st = self.structure(t, deadline)  # the search levels ask the target's own margin
                    except DeadlinePassed:
                        out.time_hit = True
                        lows.append(low_t)
                        continue
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
    """Exact minimal linf/l1/l2 perturbation of a tree ensemble (Kantchelian et al. 2016), a MILP solved by HiGHS or Gurobi.

    One binary predicate per distinct (feature, threshold in the ensemble's dtype), thermometer-coded, leaf
    indicators tied to them by the tree structure, and the decision flip as a linear margin
    constraint (one MILP per alternative class, trees that cannot change that margin left out).
    The structure (leaves, their paths, node rows) is built once per class pair. A local search
    first finds a verified adversarial; per point the program is then restricted to what is
    reachable within its distance (see `MilpStructure.solve`): leaves whose box is farther, trees
    left constant, node rows implied on their own and thresholds no remaining row uses drop out.
    That is exact (the optimum is never above the incumbent) and shrinks the problem a lot.

    Work budgets, so that results do not depend on machine speed: `node_limit` branch-and-bound
    nodes per MILP solve and `max_cuts` band resolutions per target (see `MilpSolver`);
    `time_limit` (seconds per point) is only a safety net, counted in flags["time_limit_hit"].
    `lower_bound` is certified for the model's own arithmetic (see `margins`): the optimum when
    solved, the solver's dual bound (min over classes) when the node budget runs out, and never below the
    cheapest single threshold crossing. `mip_rel_gap` is the solver's relative gap.

    `solver`: "auto" (Gurobi when gurobipy is installed and licensed for the program, else HiGHS;
    program by program), "highs", or "gurobi" (refused when Gurobi cannot run; a program its licence
    refuses still goes to HiGHS; see `mip`). flags["milp_gurobi_solves"] and
    flags["milp_highs_solves"] count the solves each answered.
    """

    name = "milp"
    requires = frozenset({"tree_ensemble"})
    norms = ("linf", "l2", "l1")
    exact = True

    def __init__(self, node_limit: int = DEFAULT_NODES, max_cuts: int = DEFAULT_CUTS, time_limit: float = DEFAULT_SAFETY_SECONDS,
                 mip_rel_gap: float = 1e-6, solver: str = "auto", seed: int = 0) -> None:
        if not time_limit > 0:
            raise AttackError(f"milp: time_limit must be > 0 seconds, got {time_limit!r}")
        if not 0 <= mip_rel_gap < 1:
            raise AttackError(f"milp: mip_rel_gap must be in [0, 1), got {mip_rel_gap!r}")
        self.node_limit = check_budget("milp", "node_limit", node_limit)
        self.max_cuts = check_budget("milp", "max_cuts", max_cuts, minimum=0)
        self.time_limit = float(time_limit)
        self.mip_rel_gap = float(mip_rel_gap)
        self.solver = check_solver("milp", solver)
        self.seed = seed

    def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm) -> Candidates:
        """Solve every clean-correct point within its work budgets."""
        ens = ensemble_of(model, self.name)
        solver = MilpSolver(ens, model, norm, self.mip_rel_gap, self.node_limit, self.max_cuts, self.time_limit, self.solver)
        return run_points(self.name, model, ens, X, y, lambda x, yi: solver.solve_point(x, yi))


__all__ = ["KantchelianMILP", "MilpSolver", "MilpStructure"]
