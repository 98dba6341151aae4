"""Exact minimal perturbations for tree ensembles: the Kantchelian MILP and a Veritas-based search.

Both attacks work on the library-independent `TreeEnsemble` a model exposes through its
`tree_ensemble()` capability, so one implementation serves XGBoost, random forests and gradient
boosting alike.

Floating-point semantics. The libraries compare float32(x) against float32 thresholds, with `<`
(XGBoost, `strict`) or `<=` (scikit-learn). Along one feature the distinct thresholds cut the line
into intervals; a coordinate that has to move into another interval moves to the closest float32
value inside it (the threshold itself or its float32 neighbour, depending on the side and the
comparison), and an unmoved coordinate keeps its exact value. "Minimal" is meant over such points:
the distance an attack reports is the float64 norm of a point the model's own `predict` flips, and
the certified lower bound is a bound over all such points.

Decisions. With a single output (binary margin) the ensemble says class 1 iff raw > 0; otherwise
it takes the argmax with ties to the lowest class index. Leaving class y for class k means raising
the margin M = raw_k - raw_y (or -raw / +raw with one output) to M >= 0 where the tie already goes
to k (k < y, or raw <= 0 for a point of class 1) and to M > 0 otherwise; the strict case is solved
as M >= 1e-8 times the ensemble's output scale. Certified bounds refer to this rule (the
TreeEnsemble contract). Every decoded point is re-predicted by the model; if one does not flip (a
library that breaks exact ties differently, e.g. scikit-learn's gradient boosting at raw == 0, or
solver round-off), the point is solved again with a guard M >= g of growing size (up to 1e-3 of
the output scale), the retry is counted in `flags["guard_retries"]`, and the found distance may
then exceed the certified bound.

Result flags: guard_retries, timeouts (points that hit a time limit), milp_fallback (Veritas points
handed to the MILP), point_time (seconds per point), ensemble_mismatch (clean points where the
parsed ensemble and the model disagree; a warning is logged).
"""
from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from ..errors import AttackError
from ..models.base import Model, TreeEnsemble
from .base import AttackResult, MinimalAttack, finalize

log = logging.getLogger(__name__)

_F32_INF = np.float32(np.inf)
# Margin guards (times the ensemble's output scale) added on retries; strict flips need _STRICT_EPS.
_GUARD_STEPS = (0.0, 1e-9, 1e-7, 1e-5, 1e-3)
_STRICT_EPS = 1e-8
_HIGHS_TOL = {"mip_feasibility_tolerance": 1e-9, "primal_feasibility_tolerance": 1e-9}


def _next32(v: Any) -> np.float32:
    return np.nextafter(np.float32(v), _F32_INF)


def _prev32(v: Any) -> np.float32:
    return np.nextafter(np.float32(v), -_F32_INF)


# ----------------------------------------------------------------------------------------
# Margins to reach: one "target" per class the point may be moved to
# ----------------------------------------------------------------------------------------
@dataclass
class _Target:
    """M(x) = c0 + sum_t w_t[leaf_t(x)]: the decision leaves y for k iff M >= 0 (tie_ok) or M > 0."""

    k: int
    y: int
    tie_ok: bool
    w: list[np.ndarray]  # per tree, per node (zeros at internal nodes); already divided by T for "mean"
    c0: float
    scale: float

    def guard(self, level: int) -> float:
        return ((0.0 if self.tie_ok else _STRICT_EPS) + _GUARD_STEPS[level]) * self.scale


def _targets(ens: TreeEnsemble, y: int) -> list[_Target]:
    """The margins whose reaching flips a point of class y, one per alternative class."""
    agg = float(len(ens.trees)) if ens.combine == "mean" else 1.0
    bias = np.asarray(ens.bias, dtype=np.float64).reshape(-1)
    if bias.size == 1 and ens.n_outputs > 1:
        bias = np.full(ens.n_outputs, bias[0])
    if ens.n_outputs == 1:
        sign = -1.0 if y == 1 else 1.0
        specs = [(1 - y, y == 1, [sign * t.value[:, 0] / agg for t in ens.trees], sign * float(bias[0]))]
    else:
        specs = []
        for k in range(ens.n_outputs):
            if k == y:
                continue
            specs.append((k, k < y, [(t.value[:, k] - t.value[:, y]) / agg for t in ens.trees], float(bias[k] - bias[y])))
    out = []
    for k, tie_ok, w, c0 in specs:
        scale = abs(c0) + sum(float(np.abs(wt[t.is_leaf]).max()) for wt, t in zip(w, ens.trees))
        out.append(_Target(k=k, y=y, tie_ok=bool(tie_ok), w=w, c0=c0, scale=max(scale, 1e-300)))
    return out


# ----------------------------------------------------------------------------------------
# Thresholds per feature and the closest point of every interval
# ----------------------------------------------------------------------------------------
class _Grid:
    """Distinct float32 thresholds per feature (sorted) with a global predicate numbering.

    Predicate r of feature f is "x_f goes left of thr_f[r]"; interval i of feature f lies between
    thresholds i-1 and i (interval 0 below all, interval m above all).
    """

    def __init__(self, per_feature: dict[int, np.ndarray], strict: bool):
        self.strict = strict
        self.features = sorted(f for f, v in per_feature.items() if len(v))
        self.thr = [np.unique(np.asarray(per_feature[f], dtype=np.float32)) for f in self.features]
        sizes = [len(t) for t in self.thr]
        self.offset = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n_pred = int(self.offset[-1])
        # split values for engines that only know "x < s": s = thr (strict) or next float32 (<=)
        self.split = [t if strict else np.nextafter(t, _F32_INF) for t in self.thr]
        self._index = {f: i for i, f in enumerate(self.features)}

    @classmethod
    def of_trees(cls, trees: list, strict: bool) -> "_Grid":
        per: dict[int, list[np.ndarray]] = {}
        for t in trees:
            internal = t.left >= 0
            for f in np.unique(t.feature[internal]):
                per.setdefault(int(f), []).append(t.threshold[internal & (t.feature == f)])
        return cls({f: np.concatenate(v) for f, v in per.items()}, strict)

    def pred_index(self, f: int, thr: np.float32) -> int:
        i = self._index[f]
        r = int(np.searchsorted(self.thr[i], np.float32(thr)))
        return int(self.offset[i]) + r

    def intervals(self, x: np.ndarray) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
        """Per grid feature: the interval of x, the closest point of every interval, its distance."""
        j0s, pts, dists = [], [], []
        for i, f in enumerate(self.features):
            t = self.thr[i]
            xf = float(x[f])
            x32 = np.float32(xf)
            m = len(t)
            j0 = int(np.searchsorted(t, x32, side="right" if self.strict else "left"))
            idx = np.arange(m + 1)
            up, down = idx > j0, idx < j0
            c = np.empty(m + 1, dtype=np.float64)
            if self.strict:  # right of "x < t" starts at t; left of it ends just below t
                c[up] = t[idx[up] - 1]
                c[down] = np.nextafter(t[idx[down]], -_F32_INF)
            else:  # right of "x <= t" starts just above t; left of it ends at t
                c[up] = np.nextafter(t[idx[up] - 1], _F32_INF)
                c[down] = t[idx[down]]
            c[j0] = xf
            d = np.abs(c - xf)
            bad = ~np.isfinite(c)
            d[bad] = np.inf
            j0s.append(j0)
            pts.append(c)
            dists.append(d)
        return j0s, pts, dists

    def point(self, x: np.ndarray, choice: list[int], pts: list[np.ndarray]) -> np.ndarray:
        out = np.array(x, dtype=np.float64, copy=True)
        for i, f in enumerate(self.features):
            out[f] = pts[i][choice[i]]
        return out


def _norm_dist(x: np.ndarray, xa: np.ndarray, norm: str) -> float:
    diff = np.asarray(xa, dtype=np.float64) - np.asarray(x, dtype=np.float64)
    return float(np.linalg.norm(diff, ord={"linf": np.inf, "l1": 1, "l2": 2}[norm]))


# ----------------------------------------------------------------------------------------
# Cheap verified upper bounds: local search over interval moves
# ----------------------------------------------------------------------------------------
class _Flat:
    """All trees in one node array, so that a batch of rows descends every tree at once.

    Leaves loop to themselves, so `depth` rounds of "go left or right" land every row in its leaf.
    """

    def __init__(self, ens: TreeEnsemble):
        sizes = [t.n_nodes for t in ens.trees]
        offs = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        feat, thr, left, right, val = [], [], [], [], []
        depth = 0
        for t, o in zip(ens.trees, offs[:-1]):
            leaf = t.is_leaf
            own = np.arange(t.n_nodes) + o
            feat.append(np.where(leaf, 0, t.feature))
            thr.append(np.where(leaf, np.float32(0), t.threshold).astype(np.float32))
            left.append(np.where(leaf, own, t.left + o))
            right.append(np.where(leaf, own, t.right + o))
            val.append(t.value)
            depth = max(depth, _depth(t))
        self.feature = np.concatenate(feat).astype(np.int64)
        self.threshold = np.concatenate(thr)
        self.left = np.concatenate(left).astype(np.int64)
        self.right = np.concatenate(right).astype(np.int64)
        agg = float(len(ens.trees)) if ens.combine == "mean" else 1.0
        self.value = np.concatenate(val) / agg
        self.roots = offs[:-1]
        self.depth = depth
        self.strict = ens.strict
        self.bias = np.asarray(ens.bias, dtype=np.float64).reshape(-1)
        self.n_outputs = ens.n_outputs

    def raw(self, X: np.ndarray) -> np.ndarray:
        X32 = np.asarray(X, dtype=np.float32)
        node = np.broadcast_to(self.roots, (X32.shape[0], self.roots.size)).copy()
        rows = np.arange(X32.shape[0])[:, None]
        for _ in range(self.depth):
            xv = X32[rows, self.feature[node]]
            go_left = (xv < self.threshold[node]) if self.strict else (xv <= self.threshold[node])
            node = np.where(go_left, self.left[node], self.right[node])
        return self.value[node].sum(axis=1) + self.bias


def _depth(t: Any) -> int:
    stack = [(0, 0)]
    best = 0
    while stack:
        n, d = stack.pop()
        best = max(best, d)
        if t.left[n] >= 0:
            stack.append((int(t.left[n]), d + 1))
            stack.append((int(t.right[n]), d + 1))
    return best


def _margin_of_raw(raw: np.ndarray, y: int) -> np.ndarray:
    """Per row the best margin over alternative classes, shifted so that >= 0 means 'left y'."""
    tiny = np.finfo(np.float64).tiny
    if raw.shape[1] == 1:
        return -raw[:, 0] if y == 1 else raw[:, 0] - tiny
    other = np.delete(raw, y, axis=1) - raw[:, [y]]
    ks = np.delete(np.arange(raw.shape[1]), y)
    other[:, ks > y] -= tiny
    return other.max(axis=1)


class _LocalSearch:
    """Single-feature interval moves around one point x: cheap, verified adversarial points.

    They give the exact searches an upper bound to prune with, a fallback answer on time-outs,
    and answer the easy "is there an adversarial within this box" questions without a solver.
    """

    def __init__(self, flat: _Flat, grid: _Grid, model: Model, x: np.ndarray, y: int, deadline: float):
        self.flat, self.grid, self.model, self.x, self.y, self.deadline = flat, grid, model, x, y, deadline
        self.j0, self.pts, self.dists = grid.intervals(x)
        sizes = [len(p) for p in self.pts]
        self.feat_of = np.repeat(np.arange(len(sizes)), sizes).astype(np.int64)
        self.int_of = np.concatenate([np.arange(n) for n in sizes]).astype(np.int64) if sizes else np.zeros(0, dtype=np.int64)
        self.cand_val = np.concatenate(self.pts) if sizes else np.zeros(0)
        self.cand_d = np.concatenate(self.dists) if sizes else np.zeros(0)
        self.cols = np.asarray(grid.features, dtype=np.int64)[self.feat_of] if sizes else np.zeros(0, dtype=np.int64)
        self.finite = np.isfinite(self.cand_d)
        pos = self.cand_d[self.finite & (self.cand_d > 0)]
        self.radii = np.unique(pos)  # every linf optimum is one of these

    def margin(self, X: np.ndarray) -> np.ndarray:
        return _margin_of_raw(self.flat.raw(X), self.y)

    def point(self, choice: np.ndarray) -> np.ndarray:
        return self.grid.point(self.x, list(choice), self.pts)

    def verified(self, choice: np.ndarray | None) -> np.ndarray | None:
        if choice is None:
            return None
        p = self.point(choice)
        return p if int(self.model.predict(p[None])[0]) != self.y else None

    def ascent(self, allowed: np.ndarray, max_iter: int | None = None) -> np.ndarray | None:
        """Best-improvement moves (largest margin) among `allowed` intervals until the decision flips."""
        if self.cand_val.size == 0:
            return None
        choice = np.array(self.j0, dtype=np.int64)
        cur = np.array(self.x, dtype=np.float64, copy=True)
        cur_m = float(self.margin(cur[None])[0])
        allowed = allowed & self.finite
        for _ in range(max_iter or 2 * len(choice) + 2):
            if time.perf_counter() > self.deadline:
                return None
            idx = np.flatnonzero(allowed & (self.int_of != choice[self.feat_of]))
            if idx.size == 0:
                return None
            cand = np.repeat(cur[None], idx.size, axis=0)
            cand[np.arange(idx.size), self.cols[idx]] = self.cand_val[idx]
            m = self.margin(cand)
            k = int(np.argmax(m))
            if m[k] <= cur_m:
                return None
            choice[self.feat_of[idx[k]]] = self.int_of[idx[k]]
            cur = cand[k]
            cur_m = float(m[k])
            if cur_m >= 0:
                return choice
        return None

    def within(self, delta: float) -> np.ndarray | None:
        """A verified adversarial within linf radius delta found by ascent, or None (not a certificate)."""
        return self.verified(self.ascent(self.cand_d <= delta))

    def linf(self) -> np.ndarray | None:
        """Bisection over the candidate radii with `within`: a small verified linf adversarial."""
        C = self.radii
        if C.size == 0:
            return None
        best = self.within(float(C[-1]))
        if best is None:
            return None
        lo, hi = 0, int(np.searchsorted(C, _norm_dist(self.x, best, "linf")))
        while lo < hi and time.perf_counter() < self.deadline:
            mid = (lo + hi) // 2
            p = self.within(float(C[mid]))
            if p is None:
                lo = mid + 1
            else:
                best = p
                hi = min(mid, int(np.searchsorted(C, _norm_dist(self.x, p, "linf"))))
        return best

    def ratio(self, norm: str, max_iter: int = 60) -> np.ndarray | None:
        """Moves with the most margin gain per unit of added cost (l1/l2), until the decision flips."""
        if self.cand_val.size == 0:
            return None
        choice = np.array(self.j0, dtype=np.int64)
        cur = np.array(self.x, dtype=np.float64, copy=True)
        cur_d = np.zeros(len(choice))
        cur_m = float(self.margin(cur[None])[0])
        for _ in range(max_iter):
            if time.perf_counter() > self.deadline:
                return None
            idx = np.flatnonzero(self.finite & (self.int_of != choice[self.feat_of]))
            if idx.size == 0:
                return None
            cand = np.repeat(cur[None], idx.size, axis=0)
            cand[np.arange(idx.size), self.cols[idx]] = self.cand_val[idx]
            m = self.margin(cand)
            gain = m - cur_m
            old = cur_d[self.feat_of[idx]]
            new = self.cand_d[idx]
            if norm == "l1":
                extra = new - old
            else:
                extra = np.square(new) - np.square(old)
            ok = gain > 0
            if not ok.any():
                return None
            flips = ok & (m >= 0)
            if flips.any():
                k = int(np.flatnonzero(flips)[np.argmin(extra[flips])])
            else:
                k = int(np.flatnonzero(ok)[np.argmax(gain[ok] / np.maximum(extra[ok], 1e-300))])
            f = self.feat_of[idx[k]]
            choice[f] = self.int_of[idx[k]]
            cur = cand[k]
            cur_d[f] = new[k]
            cur_m = float(m[k])
            if cur_m >= 0:
                return choice
        return None

    def polish(self, point: np.ndarray) -> np.ndarray:
        """Move coordinates back towards x one interval at a time while the point stays adversarial."""
        choice = []
        for i, f in enumerate(self.grid.features):
            hits = np.flatnonzero(self.pts[i] == point[f])
            choice.append(int(hits[0]) if hits.size else self.j0[i])
        choice = np.array(choice, dtype=np.int64)
        if not np.array_equal(self.point(choice), point):
            return point
        dist = np.array([self.dists[i][c] for i, c in enumerate(choice)])
        for i in np.argsort(-dist):
            while choice[i] != self.j0[i] and time.perf_counter() < self.deadline:
                trial = choice.copy()
                trial[i] += -1 if choice[i] > self.j0[i] else 1
                tp = self.point(trial)
                if self.margin(tp[None])[0] >= 0 and int(self.model.predict(tp[None])[0]) != self.y:
                    choice = trial
                else:
                    break
        return self.point(choice)

    def upper(self, norm: str) -> np.ndarray | None:
        """The best verified adversarial the heuristics find for `norm` (None if none)."""
        if norm == "linf":
            p = self.linf()
            return None if p is None else self.polish(p)
        found = [self.verified(self.ratio(norm))]
        if found[0] is None:
            found.append(self.within(float(self.radii[-1])) if self.radii.size else None)
        found = [self.polish(p) for p in found if p is not None]
        if not found:
            return None
        return min(found, key=lambda p: _norm_dist(self.x, p, norm))


# ----------------------------------------------------------------------------------------
# The Kantchelian MILP
# ----------------------------------------------------------------------------------------
class _MilpStructure:
    """The point-independent part of the MILP for one target: predicates, leaves, tree constraints.

    Variables: p (binary, one per distinct (feature, float32 threshold) of the trees that matter
    for this target; p = 1 means "goes left"), l (continuous leaf indicators), b (linf bound).
    """

    def __init__(self, ens: TreeEnsemble, target: _Target):
        self.target = target
        c0 = target.c0
        active = []
        for t, w in zip(ens.trees, target.w):
            lv = w[t.is_leaf]
            if t.left[0] < 0 or np.all(lv == lv[0]):
                c0 += float(lv[0])
            else:
                active.append((t, w))
        self.c0 = c0
        self.grid = _Grid.of_trees([t for t, _ in active], ens.strict)
        n_p = self.grid.n_pred
        rows, cols, vals, lo, hi = [], [], [], [], []
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
        leaf_cols, leaf_w = [], []
        col = n_p
        for t, w in active:
            leaf_col = {}
            for n in np.flatnonzero(t.is_leaf):
                leaf_col[int(n)] = col
                leaf_cols.append(col)
                leaf_w.append(float(w[n]))
                col += 1
            under: dict[int, list[int]] = {}

            def collect(n: int) -> list[int]:
                if t.left[n] < 0:
                    under[n] = [leaf_col[n]]
                else:
                    under[n] = collect(int(t.left[n])) + collect(int(t.right[n]))
                return under[n]

            collect(0)
            for n in np.flatnonzero(~t.is_leaf):
                n = int(n)
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

    def solve(self, x: np.ndarray, norm: str, upper: float, guard: float, time_limit: float, rel_gap: float) -> dict[str, Any]:
        """Minimise the distance (linf, l1 or squared l2) to a point whose margin reaches `guard`.

        `upper` (a verified distance, or inf) prunes intervals that cost more on their own and caps
        the objective; it is sound because the optimum is never above it. Returns status
        ("optimal", "time", "infeasible", "error"), the decoded point (or None), its objective
        value and the certified lower bound, both in distance units.
        """
        grid = self.grid
        j0, pts, dists = grid.intervals(x)
        n_p = self.n_p
        sq = norm == "l2"
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
        extra_rows, extra_cols, extra_vals, extra_lo = [], [], [], []
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
                    elif norm == "linf":
                        extra_rows += [row, row]
                        extra_cols += [self.b_col, q]
                        extra_vals += [1.0, sigma * d[r + 1]]
                        extra_lo.append(sigma * d[r + 1])
                        row += 1
                else:  # staying left of thr r costs at least d[r]
                    if d[r] > ucost or not np.isfinite(d[r]):
                        ub_p[q] = 0.0
                    elif norm == "linf":
                        extra_rows += [row, row]
                        extra_cols += [self.b_col, q]
                        extra_vals += [1.0, -sigma * d[r]]
                        extra_lo.append(0.0)
                        row += 1
            if norm != "linf":
                dd = np.where(np.isfinite(d), d, 0.0)  # infinite intervals are fixed away above
                const += dd[m]
                c[a:a + m] = sigma * (dd[:m] - dd[1:])
        if np.any(lb_p > ub_p):
            return {"status": "infeasible", "x": None, "obj": np.inf, "lb": np.inf}
        lb = np.zeros(self.n_var)
        ub = np.ones(self.n_var)
        lb[:n_p], ub[:n_p] = lb_p, ub_p
        ub[self.b_col] = sigma * ucost if (norm == "linf" and np.isfinite(ucost)) else np.inf
        if norm == "linf":
            c[self.b_col] = 1.0
        else:
            # b is fixed to 1 and carries the constant, so HiGHS sees (and gaps) the true distance
            lb[self.b_col] = ub[self.b_col] = 1.0
            c[self.b_col] = sigma * const
        cons = [LinearConstraint(self.A, self.A_lo, self.A_hi), LinearConstraint(self.margin_row, guard - self.c0, np.inf)]
        if row:
            cons.append(LinearConstraint(sp.csr_matrix((extra_vals, (extra_rows, extra_cols)), shape=(row, self.n_var)), np.asarray(extra_lo), np.inf))
        if norm != "linf" and np.isfinite(ucost):
            cons.append(LinearConstraint(sp.csr_matrix(c[None, :]), -np.inf, sigma * ucost + 1e-9))
        # HiGHS' presolve does not stop at the time limit (about 1 s on 3000 columns), so skip it when time is short
        opts = {"time_limit": max(float(time_limit), 1e-3), "mip_rel_gap": rel_gap, "presolve": bool(time_limit >= 2.0), "mip_abs_gap": 1e-9, **_HIGHS_TOL}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = milp(c, constraints=cons, integrality=self.integrality, bounds=Bounds(lb, ub), options=opts)

        def to_dist(v: float) -> float:
            v = v / sigma
            return float(np.sqrt(max(v, 0.0))) if sq else float(max(v, 0.0))

        if res.status == 2:
            return {"status": "infeasible", "x": None, "obj": np.inf, "lb": np.inf}
        dual = res.get("mip_dual_bound")
        # the objective is scaled to about 1; HiGHS' bound is good to its tolerances (~1e-9), no better
        lbd = to_dist(dual - 1e-9 * max(abs(dual), 1e-3)) if dual is not None and np.isfinite(dual) else 0.0
        if res.x is None:
            return {"status": "time" if res.status == 1 else "error", "x": None, "obj": np.inf, "lb": lbd, "message": res.message}
        p = res.x[:n_p] > 0.5
        choice = []
        for i in range(len(grid.features)):
            a, b_ = int(grid.offset[i]), int(grid.offset[i + 1])
            choice.append(int(np.count_nonzero(~p[a:b_])))
        xa = grid.point(x, choice, pts)
        obj = to_dist(res.fun)
        status = "optimal" if res.status == 0 else "time"
        if dual is None and status == "optimal":
            lbd = to_dist(res.fun - 1e-9 * max(abs(res.fun), 1e-3))
        return {"status": status, "x": xa, "obj": obj, "lb": lbd}


@dataclass
class _PointOutcome:
    x_adv: np.ndarray | None = None
    dist: float = np.inf
    lower: float = 0.0
    solves: int = 0
    retries: int = 0
    timed_out: bool = False
    fell_back: bool = False  # a Veritas point handed to the MILP


class _MilpSolver:
    """Per-model cache of MILP structures (one per (target class, true class))."""

    def __init__(self, ens: TreeEnsemble, model: Model, norm: str, rel_gap: float):
        self.ens, self.model, self.norm, self.rel_gap = ens, model, norm, rel_gap
        self.grid = _Grid.of_trees(list(ens.trees), ens.strict)
        self.flat = _Flat(ens)
        self._targets: dict[int, list[_Target]] = {}
        self._structs: dict[tuple[int, int], _MilpStructure] = {}

    def targets(self, y: int) -> list[_Target]:
        if y not in self._targets:
            self._targets[y] = _targets(self.ens, y)
        return self._targets[y]

    def structure(self, t: _Target) -> _MilpStructure:
        key = (t.k, t.y)
        if key not in self._structs:
            self._structs[key] = _MilpStructure(self.ens, t)
        return self._structs[key]

    def floor(self, x: np.ndarray) -> float:
        """A trivial certified bound: any flip moves at least one feature across a threshold."""
        _, _, dists = self.grid.intervals(x)
        pos = [d[(d > 0) & np.isfinite(d)] for d in dists]
        pos = [p.min() for p in pos if p.size]
        return float(min(pos)) if pos else np.inf

    def flips(self, xa: np.ndarray, y: int) -> bool:
        return bool(np.all(np.isfinite(xa))) and int(self.model.predict(xa[None])[0]) != y

    def solve_point(self, x: np.ndarray, y: int, deadline: float, best: np.ndarray | None = None) -> _PointOutcome:
        out = _PointOutcome()
        if best is None:
            heuristic_deadline = time.perf_counter() + 0.25 * max(deadline - time.perf_counter(), 0.0)
            best = _LocalSearch(self.flat, self.grid, self.model, x, y, heuristic_deadline).upper(self.norm)
        if best is not None:
            out.x_adv, out.dist = best, _norm_dist(x, best, self.norm)
        clean = self.ens.raw(x[None])[0]
        targets = self.targets(y)
        if len(targets) > 1:
            targets = sorted(targets, key=lambda t: -(clean[t.k] - clean[t.y]))
        lows = []
        for t in targets:
            st = self.structure(t)
            low_t = None
            for level in range(len(_GUARD_STEPS)):
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    out.timed_out = True
                    break
                r = st.solve(x, self.norm, out.dist, t.guard(level), remaining, self.rel_gap)
                out.solves += 1
                if level == 0:
                    low_t = r["lb"]
                if r["status"] == "time":
                    out.timed_out = True
                if r["x"] is None:
                    break
                if self.flips(r["x"], y):
                    d = _norm_dist(x, r["x"], self.norm)
                    if d < out.dist:
                        out.x_adv, out.dist = r["x"], d
                    break
                out.retries += 1
                log.debug("milp: decoded point did not flip (margin guard %.3g); retrying with a larger guard", t.guard(level))
            lows.append(low_t if low_t is not None else 0.0)
        # every target's bound (inf: unreachable or costlier than the incumbent), floored by the
        # cheapest single move (the point itself is not adversarial)
        lower = min(lows) if lows else 0.0
        out.lower = min(max(lower, self.floor(x)), out.dist)
        return out


def _ensemble_of(model: Model, who: str) -> TreeEnsemble:
    fn = getattr(model, "tree_ensemble", None)
    if not callable(fn):
        raise AttackError(f"attack {who!r} needs a model with tree_ensemble(); {model.name!r} has none")
    ens = fn()
    if not isinstance(ens, TreeEnsemble):
        raise AttackError(f"attack {who!r}: {model.name!r}.tree_ensemble() returned {type(ens).__name__}, not a TreeEnsemble")
    return ens


def _run_points(attack: str, model: Model, ens: TreeEnsemble | None, X: np.ndarray, y: np.ndarray, norm: str, solve: Any) -> AttackResult:
    """Shared driver: skip clean-misclassified points, solve the rest, verify and package."""
    t0 = time.perf_counter()
    n = X.shape[0]
    cand = np.array(X, dtype=np.float64, copy=True)
    lower = np.zeros(n)
    queries = np.zeros(n, dtype=np.int64)
    retries = timeouts = fallbacks = 0
    point_time = np.zeros(n)
    wrong = model.predict(X) != y if n else np.zeros(0, dtype=bool)
    if n and ens is not None:
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
    res = finalize(model, X, y, cand, norm, attack, t0=t0, lower_bound=lower, queries=queries)
    res.flags.update({
        "guard_retries": retries, "timeouts": timeouts, "milp_fallback": fallbacks,
        "point_time": point_time, "ensemble_mismatch": mismatch,
    })
    return res


class KantchelianMILP(MinimalAttack):
    """Exact minimal linf/l1/l2 perturbation of a tree ensemble (Kantchelian et al. 2016), HiGHS MILP.

    One binary predicate per distinct (feature, float32 threshold), thermometer-coded, leaf
    indicators tied to them by the tree structure, and the decision flip as a linear margin
    constraint (one MILP per alternative class, trees that cannot change that margin left out).
    The structure is built once per class pair; per point only the objective (distances of the
    decoded points, squared for l2) and the bounds change. A local search first finds a verified
    adversarial; its distance fixes every predicate whose crossing alone would cost more, which
    is sound (the optimum is never above it) and shrinks the problem a lot.

    `time_limit` is in seconds per point (about a quarter goes to the local search). `lower_bound`
    is certified: the optimum when solved, HiGHS' dual bound (min over classes) on a time-out, and
    never below the cheapest single threshold crossing. `mip_rel_gap` is HiGHS' relative gap.
    """

    name = "milp"
    requires = frozenset({"tree_ensemble"})
    norms = ("linf", "l2", "l1")
    exact = True

    def __init__(self, time_limit: float = 30.0, mip_rel_gap: float = 1e-6, seed: int = 0):
        if not time_limit > 0:
            raise AttackError(f"milp: time_limit must be > 0 seconds, got {time_limit!r}")
        if not 0 <= mip_rel_gap < 1:
            raise AttackError(f"milp: mip_rel_gap must be in [0, 1), got {mip_rel_gap!r}")
        self.time_limit = float(time_limit)
        self.mip_rel_gap = float(mip_rel_gap)
        self.seed = seed

    def run(self, model: Model, X: np.ndarray, y: np.ndarray, norm: str) -> AttackResult:
        X, y, norm = self._check(model, X, y, norm)
        ens = _ensemble_of(model, self.name)
        solver = _MilpSolver(ens, model, norm, self.mip_rel_gap)
        return _run_points(self.name, model, ens, X, y, norm, lambda x, yi: solver.solve_point(x, yi, time.perf_counter() + self.time_limit))


# ----------------------------------------------------------------------------------------
# Veritas
# ----------------------------------------------------------------------------------------
class _VeritasTarget:
    """A single-output Veritas AddTree computing one target margin M, built from our parsed trees."""

    def __init__(self, ens: TreeEnsemble, target: _Target):
        import veritas

        self.target = target
        at = veritas.AddTree(1, veritas.AddTreeType.REGR)
        c0 = target.c0
        for t, w in zip(ens.trees, target.w):
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
                s = thr if ens.strict else _next32(thr)  # x <= t  <=>  x < next float32 (x float32)
                vt.split(m, int(t.feature[n]), float(s))
                stack.append((int(t.right[n]), vt.right(m)))
                stack.append((int(t.left[n]), vt.left(m)))
        at.set_base_score(0, float(c0))
        self.at = at
        self.empty = len(at) == 0
        self.n_feat = at.get_maximum_feat_id() + 1 if not self.empty else 0
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

    def __init__(
        self,
        time_limit: float = 30.0,
        milp_time_limit: float | None = None,
        query_time_limit: float = 1.0,
        focal_eps: float = 1.0,
        max_memory_mb: int = 1024,
        seed: int = 0,
    ):
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
    def available(cls) -> bool:
        """True when the optional `dtai-veritas` package imports."""
        try:
            import veritas  # noqa: F401
        except ImportError:
            return False
        return True

    def run(self, model: Model, X: np.ndarray, y: np.ndarray, norm: str) -> AttackResult:
        if not self.available():
            raise AttackError("veritas: the dtai-veritas package is not installed; pip install dtai-veritas==0.3.1, or use attack 'milp'")
        X, y, norm = self._check(model, X, y, norm)
        ens = _ensemble_of(model, self.name)
        milp_solver = _MilpSolver(ens, model, norm, 1e-6)
        vts: dict[tuple[int, int], _VeritasTarget] = {}

        def vt_of(t: _Target) -> _VeritasTarget:
            key = (t.k, t.y)
            if key not in vts:
                vts[key] = _VeritasTarget(ens, t)
            return vts[key]

        return _run_points(self.name, model, ens, X, y, norm, lambda x, yi: self._solve_point(ens, model, milp_solver, vt_of, x, yi))

    def _query(self, vt: _VeritasTarget, grid: _Grid, box: dict, x: np.ndarray, y: int, model: Model, guard: float, budget: float) -> tuple[str, np.ndarray | None]:
        """Ask whether margin >= guard is reachable in `box`: ("adv", point) / ("none", None) / ("unknown", None)."""
        import veritas

        if vt.empty:  # the margin is a constant
            if vt.c0 >= guard and int(model.predict(x[None])[0]) != y:
                return "adv", x.copy()
            return ("none", None) if vt.c0 < guard else ("numeric", None)
        return self._search(vt, box, x, y, model, guard, budget)

    def _search(self, vt: _VeritasTarget, box: dict, x: np.ndarray, y: int, model: Model, guard: float, budget: float) -> tuple[str, np.ndarray | None]:
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
    def _closest(x: np.ndarray, box: dict) -> np.ndarray:
        """The closest point to x (float32 coordinates where moved) inside a Veritas box [lo, hi)."""
        out = np.array(x, dtype=np.float64, copy=True)
        for f, iv in box.items():
            x32 = np.float32(x[f])
            lo, hi = iv.lo, iv.hi
            if np.isfinite(lo) and x32 < lo:
                out[f] = float(np.float32(lo))
            elif np.isfinite(hi) and x32 >= hi:
                out[f] = float(_prev32(hi))
        return out

    def _solve_point(self, ens: TreeEnsemble, model: Model, milp_solver: _MilpSolver, vt_of: Any, x: np.ndarray, y: int) -> _PointOutcome:
        import veritas

        t_start = time.perf_counter()
        deadline = t_start + self.time_limit
        out = _PointOutcome()
        grid = milp_solver.grid
        search = _LocalSearch(milp_solver.flat, grid, model, x, y, deadline)
        dists = search.dists
        C = search.radii
        targets = milp_solver.targets(y)
        if len(targets) > 1:
            clean = ens.raw(x[None])[0]
            targets = sorted(targets, key=lambda t: -(clean[t.k] - clean[t.y]))
        levels = {(t.k, t.y): 0 for t in targets}

        def box_at(delta: float) -> dict:
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

        def query(delta: float) -> tuple[str, np.ndarray | None, bool]:
            """("adv", point) / ("none", None) / ("unknown", None) at radius delta, and whether a
            "none" is certified (every target answered without a raised guard)."""
            quick = search.within(delta)
            if quick is not None:
                return "adv", quick, False
            box = box_at(delta)
            status, certified = "none", True
            for t in targets:
                key = (t.k, t.y)
                while True:
                    budget = min(deadline - time.perf_counter(), self.query_time_limit)
                    if budget <= 0:
                        return "unknown", None, False
                    r, xa = self._query(vt_of(t), grid, box, x, y, model, t.guard(levels[key]), budget)
                    out.solves += 1
                    if r == "numeric" and levels[key] + 1 < len(_GUARD_STEPS):
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
            if r == "adv":
                d = _norm_dist(x, xa, "linf")
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


__all__ = ["KantchelianMILP", "VeritasLinf"]
