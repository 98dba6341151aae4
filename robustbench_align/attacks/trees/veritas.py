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
from .grid import Grid, edge_down, edge_up, next32, point_distance, prev32
from .local_search import LocalSearch
from .margins import Target, margin_of_raw
from .milp import DEFAULT_NODES, MilpSolver
from .points import DEFAULT_SAFETY_SECONDS, PointOutcome, check_budget, ensemble_of, run_points

DEFAULT_QUERY_STEPS = 20000  # Veritas expansions per box query
DEFAULT_BAND_CHECKS = 32  # band leaf combinations resolved per query (each one model predict)


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


class _Labels:
    """The model's own predict of single points, memoised on their exact float64 bytes (one point's search).

    The bisection decodes the same leaf combinations (and the local search the same moves) at
    several radii; predict is a pure function of the input, so each distinct point is asked once.
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        self._seen: dict[bytes, int] = {}
        self.calls = 0  # model predicts made (for tests)

    def many(self, points: list[np.ndarray]) -> None:
        """Predict the points not seen yet in one batch (the library's per-call overhead paid once)."""
        rows = {}
        for xa in points:
            row = np.ascontiguousarray(xa, dtype=np.float64)
            key = row.tobytes()
            if key not in self._seen:
                rows[key] = row
        if len(rows) > 1:
            pred = self.model.predict(np.stack(list(rows.values())))
            self.calls += 1
            for key, p in zip(rows, pred, strict=True):
                self._seen[key] = int(p)

    def __call__(self, xa: np.ndarray) -> int:
        row = np.ascontiguousarray(xa, dtype=np.float64)
        key = row.tobytes()
        hit = self._seen.get(key)
        if hit is None:
            hit = self._seen[key] = int(self.model.predict(row[None])[0])
            self.calls += 1
        return hit


class _LinfSearch(LocalSearch):
    """`LocalSearch` with the same ascent, its move scores shared between the radii of one point.

    The bisection asks `within` at every radius, so the ascent is the hot loop of the attack. Its
    path is a function of the allowed moves only: at each step it takes the first best-scoring
    allowed move from the current point. The scores of every finite move from a point reached by a
    given sequence of moves are computed once per point (with `FlatEnsemble.raw_moves`, bit-identical
    to `raw`, descending only the trees that split on the moved feature) and looked up by every
    later radius; the argmax over a subset is then taken exactly as `LocalSearch.ascent` takes it,
    so every choice, comparison and return value is the original's (tests/test_trees_speed.py
    checks it against `LocalSearch`).
    """

    def __init__(self, flat: Any, grid: Grid, model: Model, x: np.ndarray, y: int, deadline: float = np.inf) -> None:
        super().__init__(flat, grid, model, x, y, deadline)
        self._x_margin = float(margin_of_raw(flat.raw(np.array(self.x, dtype=np.float64, copy=True)[None]), y)[0])
        # move sequence -> per candidate the margin of that move from the point the sequence reaches (NaN: not a move)
        self._scores: dict[tuple[int, ...], np.ndarray] = {}
        self._leaves: dict[tuple[int, ...], np.ndarray] = {}  # ... and the leaves of that point
        self._root: tuple[np.ndarray, np.ndarray | None] = (np.array(self.x, dtype=np.float64, copy=True), flat.leaves(self.x))
        self.evaluations = 0  # raw_moves batches (for tests)
        self.label = _Labels(model)

    def verified(self, choice: np.ndarray | None) -> np.ndarray | None:
        """The point of `choice` if the model's own predict says it flips, else None (predicts memoised)."""
        if choice is None:
            return None
        p = self.point(choice)
        return p if self.label(p) != self.y else None

    def _scored(self, path: tuple[int, ...], cur: np.ndarray, cur_leaves: np.ndarray | None, idx: np.ndarray) -> np.ndarray:
        """The margins of the moves `idx` from the point `path` reaches (each computed on first use)."""
        dense = self._scores.get(path)
        if dense is None:
            dense = self._scores[path] = np.full(self.cand_val.size, np.nan)
        todo = idx[np.isnan(dense[idx])]
        if todo.size:
            if cur_leaves is None:
                cur_leaves = self._leaves.get(path)
                if cur_leaves is None:
                    cur_leaves = self._leaves[path] = self.flat.leaves(cur, self.deadline)
            dense[todo] = margin_of_raw(self.flat.raw_moves(cur, self.cols[todo], self.cand_val[todo], cur_leaves, self.deadline), self.y)
            self.evaluations += 1
        out: np.ndarray = dense[idx]
        return out

    def _ascent(self, allowed: np.ndarray, max_iter: int | None = None) -> np.ndarray | None:
        """Best-improvement moves (largest margin) among `allowed` intervals until the decision flips (guarded by `ascent`)."""
        if self.cand_val.size == 0:
            return None
        choice = np.array(self.j0, dtype=np.int64)
        cur, cur_leaves = self._root[0], self._root[1]
        cur_m = self._x_margin
        path: tuple[int, ...] = ()
        allowed = allowed & self.finite
        for _ in range(max_iter or 2 * len(choice) + 2):
            if time.perf_counter() > self.deadline:
                return None
            idx = np.flatnonzero(allowed & (self.int_of != choice[self.feat_of]))
            if idx.size == 0:
                return None
            m = self._scored(path, cur, cur_leaves, idx)
            k = int(np.argmax(m))
            if m[k] <= cur_m:
                return None
            g = int(idx[k])
            choice[self.feat_of[g]] = self.int_of[g]
            cur = cur.copy()
            cur[self.cols[g]] = self.cand_val[g]
            cur_leaves = None  # looked up (or descended once) when a move from the new point needs scoring
            path = (*path, g)
            cur_m = float(m[k])
            if cur_m >= 0:
                return choice
        return None


def _interval(veritas: Any, lo: float, hi: float) -> Any:
    """The Veritas interval [lo, hi) with infinite ends left open; None for the whole line."""
    if np.isfinite(lo) and np.isfinite(hi):
        return veritas.Interval(lo, hi)
    if np.isfinite(lo):
        return veritas.Interval.from_lo(lo)
    if np.isfinite(hi):
        return veritas.Interval.from_hi(hi)
    return None


class VeritasLinf(MinimalAttack):
    """Exact minimal linf perturbation by a search over candidate radii with Veritas' output bounds.

    The optimum is one of finitely many radii (the distances from x to the interval ends), so the
    search bisects over that sorted list; each step asks Veritas (Devos et al., "Versatile
    Verification of Tree Ensembles", ICML 2021) for the leaf combinations whose target margin reaches
    the certification band M >= -delta (see `margins`) inside the exact box of float32 points
    reachable at that radius, best first. An upper bound below -delta certifies "no adversarial at
    this radius"; each combination found is decoded to its closest point and checked with the model's
    own predict: a flip lowers the radius, a non-flip is resolved (every input with the same leaves
    gets the same library output) and the enumeration goes on. A cheap local search answers the easy
    "yes" questions first.

    Speed without changing a result: the local search scores its moves once per point and radius
    path (`_LinfSearch`), the model's predict is memoised per point and the band combinations of a
    query are predicted in batches and replayed in the one-by-one order (`_search`), and the box of
    a radius is built from flat arrays (`_box_fast`); the Veritas models, the grid and the flat
    evaluator are built once per run. Every answer, count and flag is the straightforward loop's
    (tests/test_trees_speed.py).

    Work budgets (deterministic): `query_steps` Veritas expansions and `max_cuts` resolved band
    combinations per query; a point whose query is not settled within them goes to the MILP with the
    best point found so far (`node_limit` nodes per solve; counted in flags["milp_fallback"]).
    `time_limit` (seconds per point) is only a safety net. `focal_eps` is Veritas' focal search
    parameter (1 = plain best-first A*).
    """

    name = "veritas"
    requires = frozenset({"tree_ensemble"})
    norms = ("linf",)
    exact = True
    install_hint = "pip install dtai-veritas==0.3.1, or use attack 'milp'"

    def __init__(
        self,
        query_steps: int = DEFAULT_QUERY_STEPS,
        max_cuts: int = DEFAULT_BAND_CHECKS,
        node_limit: int = DEFAULT_NODES,
        time_limit: float = DEFAULT_SAFETY_SECONDS,
        focal_eps: float = 1.0,
        max_memory_mb: int = 1024,
        seed: int = 0,
    ) -> None:
        if not time_limit > 0:
            raise AttackError(f"veritas: time_limit must be > 0 seconds, got {time_limit!r}")
        if not 0 < focal_eps <= 1:
            raise AttackError(f"veritas: focal_eps must be in (0, 1], got {focal_eps!r}")
        self.query_steps = check_budget("veritas", "query_steps", query_steps)
        self.max_cuts = check_budget("veritas", "max_cuts", max_cuts, minimum=0)
        self.node_limit = check_budget("veritas", "node_limit", node_limit)
        self.focal_eps = float(focal_eps)
        self.time_limit = float(time_limit)
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
        milp_solver = MilpSolver(ens, model, norm, 1e-6, self.node_limit, time_limit=self.time_limit)
        vts: dict[tuple[int, int], _VeritasTarget] = {}

        def vt_of(t: Target) -> _VeritasTarget:
            key = (t.k, t.y)
            if key not in vts:
                vts[key] = _VeritasTarget(ens, t)
            return vts[key]

        return run_points(self.name, model, ens, X, y, lambda x, yi: self._solve_point(ens, model, milp_solver, vt_of, x, yi))

    def _query(self, vt: _VeritasTarget, box: dict[int, Any], x: np.ndarray, y: int, model: Model,
               out: PointOutcome, label: Callable[[np.ndarray], int] | None = None,
               deadline: float = np.inf) -> tuple[str, np.ndarray | None]:
        """Is an input the model moves off class y reachable in `box` through this target?

        ("adv", point): a verified adversarial; ("none", None): certified: no leaf combination in the
        box reaches M >= -delta except ones the model was seen not to flip; ("unknown", None): not
        settled within the work budgets, or `deadline` (perf_counter) passed during the search
        (then `out.time_hit` is set).
        """
        guard = vt.target.guard(0)
        lab = label if label is not None else _Labels(model)
        if vt.empty:  # the margin is a constant
            if vt.c0 < guard:
                return "none", None
            if lab(x) != y:
                return "adv", x.copy()
            return "none", None  # the constant combination (this point's) does not flip
        return self._search(vt, box, x, y, model, guard, out, lab, deadline)

    def _search(self, vt: _VeritasTarget, box: dict[int, Any], x: np.ndarray, y: int, model: Model, guard: float,
                out: PointOutcome, label: Callable[[np.ndarray], int] | None = None,
                deadline: float = np.inf) -> tuple[str, np.ndarray | None]:
        """Enumerate the box's leaf combinations with margin >= guard, best first (answers as in `_query`).

        The deadline is checked before every batch of search steps: once it has passed the answer
        is ("unknown", None) with `out.time_hit` set, as when it passes between queries.
        """
        import veritas

        lab = label if label is not None else _Labels(model)
        cfg = veritas.Config(veritas.HeuristicType.MAX_OUTPUT)
        cfg.stop_when_optimal = False
        cfg.ignore_state_when_worse_than = guard
        cfg.stop_when_num_new_solutions_exceeds = 0  # hand every new combination back to be checked
        cfg.max_memory = self.max_memory
        cfg.focal_eps = self.focal_eps
        s = cfg.get_search(vt.at, [box.get(f, veritas.Interval()) for f in range(vt.n_feat)])
        seen = resolved = 0
        chunk = min(1000, self.query_steps)
        want = 1  # band combinations to collect before one batched predict (doubles while none flips)
        while True:
            # Run the search ahead (the same steps() calls the one-by-one check makes), recording per
            # call its new combinations and whether the one-by-one loop would stop after it; then
            # predict them in one batch and replay the record in order: the answer, the counts and
            # the flags are the one-by-one loop's. The search never runs past a stopping call.
            events: list[tuple[list[np.ndarray], str | None]] = []
            n_new = 0
            while True:
                if time.perf_counter() > deadline:
                    out.time_hit = True
                    return "unknown", None
                reason = s.steps(chunk)
                found = []
                for i in range(seen, s.num_solutions()):
                    q = s.get_solution(i)
                    if q.output >= guard:
                        found.append(self._closest(x, q.box()))
                seen = s.num_solutions()
                end: str | None = None
                if reason == veritas.StopReason.NO_MORE_OPEN or s.num_open() == 0 or s.current_bounds().top_of_open < guard:
                    end = "none"
                elif reason == veritas.StopReason.OUT_OF_MEMORY or int(s.stats.num_steps) >= self.query_steps:
                    end = "unknown"
                events.append((found, end))
                n_new += len(found)
                if end is not None or n_new >= want:
                    break
            if isinstance(lab, _Labels):
                lab.many([xa for found, _ in events for xa in found])
            for found, end in events:
                for xa in found:
                    if lab(xa) != y:
                        return "adv", xa
                    resolved += 1
                    out.retries += 1
                    if resolved > self.max_cuts:
                        out.limited = True
                        return "unknown", None
                if end == "none":
                    return "none", None
                if end == "unknown":
                    out.limited = True
                    return "unknown", None
            want = max(1, min(2 * want, self.max_cuts + 1 - resolved))

    @staticmethod
    def _closest(x: np.ndarray, box: dict[int, Any]) -> np.ndarray:
        """The closest point to x inside a Veritas box [lo, hi) of float32 values (a rounding edge where moved)."""
        out = np.array(x, dtype=np.float64, copy=True)
        for f, iv in box.items():
            x32 = np.float32(x[f])
            lo, hi = iv.lo, iv.hi
            if np.isfinite(lo) and x32 < lo:
                out[f] = float(edge_up(np.float32(lo)))
            elif np.isfinite(hi) and x32 >= hi:
                out[f] = float(edge_down(prev32(hi)))
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
            iv = _interval(veritas, lo, hi)
            if iv is not None:
                box[f] = iv
        return box

    @staticmethod
    def _box_fast(grid: Grid, search: LocalSearch, delta: float) -> dict[int, Any]:
        """`_box_at(grid, search.dists, delta)` without a Python pass over every interval (the same box)."""
        import veritas

        ok = np.flatnonzero(search.cand_d <= delta)
        feats, first = np.unique(search.feat_of[ok], return_index=True)
        if feats.size != len(grid.features):  # a feature without a reachable interval: let the reference raise
            return VeritasLinf._box_at(grid, search.dists, delta)
        last = np.append(first[1:], ok.size) - 1
        lo_i = search.int_of[ok[first]]
        hi_i = search.int_of[ok[last]]
        m = np.diff(grid.offset)
        split_at = grid.offset[:-1]
        box = {}
        for i, f in enumerate(grid.features):
            li, hi_ = int(lo_i[i]), int(hi_i[i])
            lo = float(grid.split_flat[split_at[i] + li - 1]) if li > 0 else -np.inf
            hi = float(grid.split_flat[split_at[i] + hi_]) if hi_ < m[i] else np.inf
            iv = _interval(veritas, lo, hi)
            if iv is not None:
                box[f] = iv
        return box

    def _solve_point(self, ens: TreeEnsemble, model: Model, milp_solver: MilpSolver,
                     vt_of: Callable[[Target], _VeritasTarget], x: np.ndarray, y: int) -> PointOutcome:
        """Bisection over the candidate radii of x; the MILP takes over when a query stays undecided."""
        deadline = time.perf_counter() + self.time_limit
        out = PointOutcome()
        grid = milp_solver.grid
        search = _LinfSearch(milp_solver.flat, grid, model, x, y, deadline)
        C = search.radii
        targets = milp_solver.targets(y)
        if len(targets) > 1:
            clean = ens.raw(x[None])[0]
            targets = sorted(targets, key=lambda t: -(clean[t.k] - clean[t.y]))

        def query(delta: float) -> tuple[str, np.ndarray | None]:
            """("adv", point), ("none", None) (certified) or ("unknown", None) at radius delta."""
            quick = search.within(delta)
            if quick is not None:
                return "adv", quick
            box = self._box_fast(grid, search, delta)
            status = "none"
            for t in targets:
                if time.perf_counter() > deadline:
                    out.time_hit = True
                    return "unknown", None
                r, xa = self._query(vt_of(t), box, x, y, model, out, search.label, deadline)
                out.solves += 1
                if r == "adv":
                    return "adv", xa
                if r != "none":
                    status = "unknown"
            return status, None

        lo = 0
        hi = int(np.searchsorted(C, out.dist)) if np.isfinite(out.dist) else C.size
        undecided = False
        while lo < hi:
            mid = (lo + hi) // 2
            r, xa = query(float(C[mid]))
            if r == "adv" and xa is not None:
                d = point_distance(x, xa, LINF)
                if d < out.dist:
                    out.x_adv, out.dist = xa, d
                hi = min(mid, int(np.searchsorted(C, d)))
            elif r == "none":
                lo = mid + 1
            else:
                undecided = True
                break
        # no adversarial within any radius below C[lo]; C[0] is the cheapest move
        out.lower = min(float(C[lo]) if lo < C.size else np.inf, out.dist)
        if undecided:
            fb = milp_solver.solve_point(x, y, best=out.x_adv, deadline=max(deadline, time.perf_counter() + 1.0))
            out.solves += fb.solves
            out.retries += fb.retries
            out.limited |= fb.limited
            out.time_hit |= fb.time_hit
            if fb.x_adv is not None and fb.dist < out.dist:
                out.x_adv, out.dist = fb.x_adv, fb.dist
            out.lower = min(max(out.lower, fb.lower), out.dist)
            out.fell_back = True
        return out


__all__ = ["VeritasLinf"]
