"""Exact minimal linf perturbations of a tree ensemble with Veritas' output bounds.

Devos, Meert and Davis, "Versatile Verification of Tree Ensembles", ICML 2021 (the `dtai-veritas`
package): a best-first search over the leaves of an additive tree ensemble that bounds the
maximum of its output over a box. The linf optimum is one of finitely many radii (the distances
from x to the interval ends of the threshold grid, see `grid`), so asking "can the margin be
reached in this box" at each radius of a gallop and bisection finds it exactly. Veritas stores
split values in float64, so float32 (XGBoost, scikit-learn, CatBoost) and float64 (LightGBM,
HistGradientBoosting) thresholds are both represented exactly.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ...errors import AttackError
from ...models.base import Model, TreeEnsemble
from ..base import LINF, Candidates, MinimalAttack, Norm
from .grid import Grid, edge_down, edge_up, next_down, next_up, point_distance
from .local_search import LocalSearch
from .margins import ExactVotes, Target, margin_of_raw, shifted
from .milp import DEFAULT_NODES, MilpSolver
from .points import DEFAULT_SAFETY_SECONDS, PointOutcome, check_budget, ensemble_of, run_points, shared

DEFAULT_QUERY_STEPS = 20000  # Veritas expansions per box query
DEFAULT_BAND_CHECKS = 32  # band leaf combinations resolved per query (each one model predict)


class _VeritasTarget:
    """A single-output Veritas AddTree computing one target margin M, built from our parsed trees.

    With `votes` and `shift` > 0 the Veritas margin is the `shifted` one: M' = M + shift per
    fractional leaf of the combination, searched from the guard shift - delta, which leaves out
    the exact ties (they do not flip a target that is not tie_ok) and keeps everything else a
    library could flip (see `margins.shifted`; found combinations are re-scored in `VeritasLinf._kind`).
    """

    def __init__(self, ens: TreeEnsemble, target: Target, votes: ExactVotes | None = None, shift: float = 0.0) -> None:
        import veritas

        self.target = target
        self.votes = votes
        self.shift = float(shift) if votes is not None else 0.0
        model_target = shifted(target, votes.per_tree, self.shift) if votes is not None and self.shift > 0 else target
        at = veritas.AddTree(1, veritas.AddTreeType.REGR)
        dt = ens.dtype  # Veritas stores float64 split values: float32 and float64 thresholds are both exact
        c0 = model_target.c0
        for t, w in zip(ens.trees, model_target.w, strict=True):
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
                thr = dt(t.threshold[n])
                s = thr if ens.strict else next_up(thr, dt)  # x <= t  <=>  x < the next value of the dtype
                vt.split(m, int(t.feature[n]), float(s))
                stack.append((int(t.right[n]), vt.right(m)))
                stack.append((int(t.left[n]), vt.left(m)))
        at.set_base_score(0, float(c0))
        self.at: Any = at
        self.empty = len(at) == 0
        self.dtype = dt
        self.configs: dict[tuple[float, int, float], Any] = {}  # Veritas search settings per guard
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

    def seen(self, xa: np.ndarray) -> bool:
        """Whether the model's predict of this exact point is known."""
        return np.ascontiguousarray(xa, dtype=np.float64).tobytes() in self._seen

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
        self._x_margin = np.nan  # the margin and leaves of x, computed on the first ascent
        self._root: tuple[np.ndarray, np.ndarray | None] | None = None
        # move sequence -> per candidate the margin of that move from the point the sequence reaches (NaN: not a move)
        self._scores: dict[tuple[int, ...], np.ndarray] = {}
        self._leaves: dict[tuple[int, ...], np.ndarray] = {}  # ... and the leaves of that point
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
        if self._root is None:
            x0 = np.array(self.x, dtype=np.float64, copy=True)
            self._x_margin = float(margin_of_raw(self.flat.raw(x0[None]), self.y)[0])
            self._root = (x0, self.flat.leaves(self.x))
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


class _Edges:
    """Per grid split value s (Veritas' `x < s`), the closest float64 points on either side, looked up by (feature, s).

    The ends of a Veritas box are split values, so decoding a box to its closest point is a few
    dictionary lookups: `up[(f, s)]` is the smallest input whose conversion to the dtype is >= s,
    `down[(f, s)]` the largest whose conversion is < s (`grid.edge_up`, `grid.edge_down`).
    """

    def __init__(self, grid: Grid) -> None:
        self.up: dict[tuple[int, float], float] = {}
        self.down: dict[tuple[int, float], float] = {}
        self.dtype = dt = grid.dtype
        for f, sp in zip(grid.features, grid.split, strict=True):
            ups = edge_up(sp, dt).tolist()
            downs = edge_down(np.nextafter(sp, dt(-np.inf)), dt).tolist()
            for v, u, d in zip(sp.astype(np.float64).tolist(), ups, downs, strict=True):
                self.up[(f, v)] = u
                self.down[(f, v)] = d

    def closest(self, x: np.ndarray, xd: list[float], box: dict[int, Any]) -> np.ndarray:
        """`VeritasLinf._closest(x, box, dtype)`, with xd = x converted to the dtype (as float64 values)."""
        out = np.array(x, dtype=np.float64, copy=True)
        for f, iv in box.items():
            v = xd[f]
            lo = iv.lo
            if v < lo:
                e = self.up.get((f, lo))
                out[f] = e if e is not None else float(edge_up(self.dtype(lo), self.dtype))
            else:
                hi = iv.hi
                if v >= hi:
                    e = self.down.get((f, hi))
                    out[f] = e if e is not None else float(edge_down(next_down(hi, self.dtype), self.dtype))
        return out


class _RadiusBoxes:
    """The Veritas boxes of one point at its candidate radii C[k], by a few array operations per radius.

    Along each grid feature the intervals reachable within a radius are a contiguous run around
    x's own interval, growing as the radius grows. Every interval's distance is one of the radii
    (or 0, or inf), so its rank k in C says from which radius C[k] on it is reachable; per feature,
    the intervals below x (and above it) are kept in order of distance, keyed by (feature, rank),
    so one `searchsorted` over all features counts how far the run reaches on each side.
    `at(k)` equals `VeritasLinf._box_at(grid, dists, C[k])` (tests/test_trees_speed.py).
    """

    def __init__(self, grid: Grid, search: LocalSearch, pad: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        import veritas

        self.Interval = veritas.Interval
        self.grid = grid
        self.n_box = grid.features[-1] + 1 if grid.features else 0
        C = search.radii
        n_f = len(grid.features)
        self.j0 = np.asarray(search.j0, dtype=np.int64)
        rank = np.searchsorted(C, search.cand_d)  # a finite positive distance is C[rank]; inf -> C.size
        W = C.size + 2
        self.wide = np.arange(n_f, dtype=np.int64) * W
        own = self.j0[search.feat_of]
        below = search.int_of < own
        above = search.int_of > own
        # below x: intervals j0-1, j0-2, ... (distance non-decreasing); above: j0+1, j0+2, ...
        ib = np.flatnonzero(below)
        ib = ib[np.lexsort((-search.int_of[ib], search.feat_of[ib]))]
        ia = np.flatnonzero(above)  # already in (feature, interval) order
        self.key_below = search.feat_of[ib] * W + rank[ib]
        self.key_above = search.feat_of[ia] * W + rank[ia]
        self.start_below = np.searchsorted(self.key_below, self.wide)
        self.start_above = np.searchsorted(self.key_above, self.wide)
        self.pad_at, self.padded = pad if pad is not None else self.padding(grid)

    @staticmethod
    def padding(grid: Grid) -> tuple[np.ndarray, np.ndarray]:
        """Per grid feature its split values padded with -inf in front and +inf behind, and where each feature starts.

        The lower end of a run starting at interval j of feature i is padded[at[i] + j], the
        upper end of one ending at interval j is padded[at[i] + j + 1]. Built once per grid.
        """
        n_f = len(grid.features)
        sizes = np.diff(grid.offset)
        at = grid.offset[:-1] + 2 * np.arange(n_f, dtype=np.int64)
        padded = np.empty(int(grid.offset[-1]) + 2 * n_f)
        for i, s in enumerate(grid.split):
            a = int(at[i])
            padded[a] = -np.inf
            padded[a + 1:a + 1 + sizes[i]] = s
            padded[a + 1 + sizes[i]] = np.inf
        return at, padded

    def at(self, k: int) -> list[Any]:
        """The box (per feature id an Interval [lo, hi)) of the grid points within radius C[k]."""
        q = self.wide + k
        lo_i = self.j0 - (self.key_below.searchsorted(q, side="right") - self.start_below)
        hi_i = self.j0 + (self.key_above.searchsorted(q, side="right") - self.start_above)
        lo = self.padded[self.pad_at + lo_i]
        hi = self.padded[self.pad_at + hi_i + 1]
        box = [self.Interval()] * self.n_box
        for f, a, b in zip(self.grid.features, lo.tolist(), hi.tolist(), strict=True):
            box[f] = self.Interval(a, b)
        return box


class VeritasLinf(MinimalAttack):
    """Exact minimal linf perturbation by a search over candidate radii with Veritas' output bounds.

    The optimum is one of finitely many radii (the distances from x to the interval ends), so the
    search gallops up the sorted list from the cheapest move and bisects the bracket; each step asks
    Veritas (Devos et al., "Versatile Verification of Tree Ensembles", ICML 2021) for the leaf
    combinations whose target margin reaches the certification band M >= -delta (see `margins`)
    inside the exact box of points reachable at that radius (in the ensemble's own threshold dtype:
    Veritas keeps float64 split values, so LightGBM and HistGradientBoosting are exact too), best
    first. An upper bound below -delta certifies "no adversarial at this radius". A combination
    whose margin is above +delta flips every library that computes from those leaves, so it is an
    adversarial as found; one inside the band is decoded to its closest point and checked with the
    model's own predict: a flip lowers the radius, a non-flip is resolved (every input with the same
    leaves gets the same library output) and the enumeration goes on. On scikit-learn forests,
    combinations of pure leaves are decided exactly (`ExactVotes`) and, for a class that a tie does
    not flip, exact ties are shifted out of the search (`_VeritasTarget`), so tied votes are neither
    enumerated nor predicted.

    The point each search keeps is checked with the model's predict at the end of the run, all
    points in one call; a point that does not flip the model (the parsed ensemble and the model
    disagree) is solved again on the careful path. `careful=True` takes that path for every point:
    every combination predicted, and a local search answering the easy "yes" radii first (the
    previous algorithm, kept as the reference: tests/test_veritas_fast.py).

    Speed: the box of a radius comes from a few array operations (`_RadiusBoxes`), Veritas returns
    after each new combination rather than after each step, the search settings are made once per
    target, band combinations of a query are predicted in batches and replayed in order, and the
    Veritas models, the grid and the flat evaluator are built once per run.

    Work budgets (deterministic): `query_steps` Veritas expansions and `max_cuts` resolved band
    combinations per query; a point whose query is not settled within them goes to the MILP with the
    best verified point found so far (`node_limit` nodes per solve; counted in flags["milp_fallback"]).
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
        careful: bool = False,
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
        self.careful = bool(careful)
        self.seed = seed

    @classmethod
    def refuses(cls, model: Model) -> str | None:
        """None: Veritas stores float64 split values, so float32 and float64 (LightGBM, HistGradientBoosting) thresholds are both exact."""
        ensemble_of(model, cls.name)
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
        """Solve every clean-correct point; the Veritas models of the class pairs are built once.

        Each point is solved on the fast path (combinations whose margin clears the certification
        band count as adversarial without a predict); the found points are then checked with the
        model's own predict in one batch, and a point whose adversarial does not flip the model
        (the parsed ensemble disagrees with the model there) is solved again on the careful path,
        where every combination is predicted.
        """
        ens = ensemble_of(model, self.name)
        milp_solver = MilpSolver(ens, model, norm, 1e-6, self.node_limit, time_limit=self.time_limit)
        votes = milp_solver.votes
        vts: dict[tuple[int, int, bool], _VeritasTarget] = shared(ens, "veritas-targets", dict)

        def vt_of(t: Target, careful: bool = False) -> _VeritasTarget:
            """The Veritas model of a target: on the fast path of a vote forest, exact ties of a strict target shifted out."""
            fast = votes is not None and not careful
            key = (t.k, t.y, fast)
            if key not in vts:
                vt = _VeritasTarget(ens, t, votes if fast else None, 1.5 * t.delta if fast and not t.tie_ok else 0.0)
                if vt.empty and vt.shift:
                    vt = _VeritasTarget(ens, t, votes)
                vts[key] = vt
            return vts[key]

        pad = shared(ens, "veritas-padding", lambda: _RadiusBoxes.padding(milp_solver.grid))
        edges = shared(ens, "veritas-edges", lambda: _Edges(milp_solver.grid))
        return run_points(self.name, model, ens, X, y,
                          lambda x, yi: self._solve_point(ens, model, milp_solver, vt_of, x, yi, self.careful, pad, edges),
                          recheck=lambda x, yi: self._solve_point(ens, model, milp_solver, vt_of, x, yi, True, pad, edges))

    def _query(self, vt: _VeritasTarget, box: list[Any], x: np.ndarray, y: int, model: Model,
               out: PointOutcome, label: Callable[[np.ndarray], int] | None = None,
               deadline: float = np.inf, sure: float = np.inf,
               decode: Callable[[dict[int, Any]], np.ndarray] | None = None) -> tuple[str, np.ndarray | None]:
        """Is an input the model moves off class y reachable in `box` through this target?

        ("adv", point): an adversarial, verified by the model's predict unless its margin is above
        `sure` (see `_search`); ("none", None): certified: no leaf combination in the
        box reaches M >= -delta except ones the model was seen not to flip; ("unknown", None): not
        settled within the work budgets, or `deadline` (perf_counter) passed during the search
        (then `out.time_hit` is set).
        """
        # a shifted model (see `_VeritasTarget`): shift - delta lies between its exact ties and everything else
        guard = vt.target.guard(0) + vt.shift
        lab = label if label is not None else _Labels(model)
        if vt.empty:  # the margin is a constant
            if vt.c0 < guard:
                return "none", None
            if lab(x) != y:
                return "adv", x.copy()
            return "none", None  # the constant combination (this point's) does not flip
        return self._search(vt, box, x, y, model, guard, out, lab, deadline, sure, decode)

    def _search(self, vt: _VeritasTarget, box: list[Any], x: np.ndarray, y: int, model: Model, guard: float,
                out: PointOutcome, label: Callable[[np.ndarray], int] | None = None,
                deadline: float = np.inf, sure: float = np.inf,
                decode: Callable[[dict[int, Any]], np.ndarray] | None = None) -> tuple[str, np.ndarray | None]:
        """Enumerate the box's leaf combinations with margin >= guard, best first (answers as in `_query`).

        A combination whose Veritas margin is above `sure` (the certification band delta: no
        library can compute a margin <= 0 from those leaves, Veritas' own float64 sum included) is
        returned without a predict; the caller verifies the point it keeps. With the default
        (inf) every combination is predicted. Either way the answer is the first combination in
        the search order that flips the model, provided the parsed ensemble is the model's.
        The deadline is checked before every batch of search steps: once it has passed the answer
        is ("unknown", None) with `out.time_hit` set, as when it passes between queries.
        """
        import veritas

        lab = label if label is not None else _Labels(model)
        key = (guard, self.max_memory, self.focal_eps)
        cfg = vt.configs.get(key)
        if cfg is None:  # the same settings for every query of this target: made once
            cfg = vt.configs[key] = veritas.Config(veritas.HeuristicType.MAX_OUTPUT)
            cfg.stop_when_optimal = False
            cfg.ignore_state_when_worse_than = guard
            # return after each new combination (Veritas stops once the new ones reach this count; 0
            # would return after every single step)
            cfg.stop_when_num_new_solutions_exceeds = 1
            cfg.max_memory = self.max_memory
            cfg.focal_eps = self.focal_eps
        s = cfg.get_search(vt.at, box[:vt.n_feat] if len(box) >= vt.n_feat else box + [veritas.Interval()] * (vt.n_feat - len(box)))
        seen = resolved = 0
        chunk = min(1000, self.query_steps)
        want = 1  # band combinations to collect before one batched predict (doubles while none flips)
        while True:
            # Run the search ahead (the same steps() calls the one-by-one check makes), recording per
            # call its new combinations and whether the one-by-one loop would stop after it; then
            # predict them in one batch and replay the record in order: the answer, the counts and
            # the flags are the one-by-one loop's. The search never runs past a stopping call.
            events: list[tuple[list[tuple[np.ndarray, str]], str | None]] = []
            n_new = 0
            while True:
                if time.perf_counter() > deadline:
                    out.time_hit = True
                    return "unknown", None
                # never past the step budget: the search state where it runs out is the one-step loop's
                reason = s.steps(max(1, min(chunk, self.query_steps - int(s.stats.num_steps))))
                found = []
                for i in range(seen, s.num_solutions()):
                    q = s.get_solution(i)
                    if q.output >= guard:
                        xa = decode(q.box()) if decode is not None else self._closest(x, q.box(), vt.dtype)
                        kind = self._kind(vt, xa, float(q.output), y, sure)
                        if kind != "skip":
                            found.append((xa, kind))
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
                lab.many([xa for found, _ in events for xa, kind in found if kind == "band"])
            for found, end in events:
                for xa, kind in found:
                    if kind == "flip" or (kind == "band" and lab(xa) != y):
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
    def _kind(vt: _VeritasTarget, xa: np.ndarray, output: float, y: int, sure: float) -> str:
        """What a combination found at point xa is: "flip", "noflip" (both decided exactly), "band" (to predict) or "skip".

        Integer-leaf combinations are decided by `ExactVotes`; otherwise the margin is Veritas'
        output, or on a shifted model (`_VeritasTarget.shift`) the margin recomputed at xa: above
        `sure` (delta) no library computes a margin <= 0 from those leaves, below -delta none
        computes one >= 0 (such a combination only cleared the shifted guard), in between the
        model's predict decides.
        """
        if vt.votes is not None:
            p = vt.votes.decide(xa)
            if p is not None:
                return "flip" if p != y else "noflip"
        if vt.shift and vt.votes is not None:  # a shifted model always has its votes
            raw = vt.votes.flat.raw(xa[None])[0]
            output = float(raw[vt.target.k] - raw[vt.target.y])
            if output < -vt.target.delta:
                return "skip"
        return "flip" if output > sure else "band"

    @staticmethod
    def _closest(x: np.ndarray, box: dict[int, Any], dtype: type[np.floating[Any]] = np.float32) -> np.ndarray:
        """The closest point to x inside a Veritas box [lo, hi) of `dtype` values (a rounding edge where moved, see `grid`)."""
        out = np.array(x, dtype=np.float64, copy=True)
        if not box:
            return out
        fs = np.fromiter(box.keys(), dtype=np.int64, count=len(box))
        lo = np.fromiter((iv.lo for iv in box.values()), dtype=np.float64, count=len(box))
        hi = np.fromiter((iv.hi for iv in box.values()), dtype=np.float64, count=len(box))
        xd = out[fs].astype(dtype).astype(np.float64)
        up = np.isfinite(lo) & (xd < lo)
        down = ~up & np.isfinite(hi) & (xd >= hi)
        if up.any():
            out[fs[up]] = edge_up(lo[up].astype(dtype), dtype)
        if down.any():
            out[fs[down]] = edge_down(np.nextafter(hi[down].astype(dtype), dtype(-np.inf)), dtype)
        return out

    @staticmethod
    def _box_at(grid: Grid, dists: list[np.ndarray], delta: float) -> list[Any]:
        """The Veritas box (per feature id an Interval [lo, hi)) of the grid points within linf radius delta."""
        import veritas

        box = [veritas.Interval()] * (grid.features[-1] + 1 if grid.features else 0)
        for i, f in enumerate(grid.features):
            ok = np.flatnonzero(dists[i] <= delta)
            lo_i, hi_i = int(ok.min()), int(ok.max())
            s = grid.split[i]
            lo = float(s[lo_i - 1]) if lo_i > 0 else -np.inf
            hi = float(s[hi_i]) if hi_i < len(s) else np.inf
            box[f] = veritas.Interval(lo, hi)
        return box

    def _solve_point(self, ens: TreeEnsemble, model: Model, milp_solver: MilpSolver,
                     vt_of: Callable[..., _VeritasTarget], x: np.ndarray, y: int, careful: bool = False,
                     pad: tuple[np.ndarray, np.ndarray] | None = None, edges: _Edges | None = None,
                     deadline: float | None = None) -> PointOutcome:
        """A search over the candidate radii of x; the careful path, then the MILP, take over when a query stays undecided.

        Fast path (default): a gallop from the cheapest radius and a bisection, every radius one
        Veritas query per target, and combinations whose margin clears the band count as
        adversarial unpredicted (`out.verified` says whether the kept point was predicted; the
        caller checks the rest). A point it cannot settle within the work budgets is solved again
        on the careful path (within the same `deadline`, perf_counter). Careful path: a bisection
        over the whole list, a local search answering the easy "yes" radii first, every
        combination predicted, and the MILP for what stays undecided.
        """
        deadline = time.perf_counter() + self.time_limit if deadline is None else deadline
        out = PointOutcome()
        grid = milp_solver.grid
        search = _LinfSearch(milp_solver.flat, grid, model, x, y, deadline)
        C = search.radii
        boxes = _RadiusBoxes(grid, search, pad)
        edges = edges if edges is not None else _Edges(grid)
        xd = np.asarray(x, dtype=np.float64).astype(grid.dtype).astype(np.float64).tolist()

        def decode(b: dict[int, Any]) -> np.ndarray:
            return edges.closest(x, xd, b)

        targets = milp_solver.targets(y)
        if len(targets) > 1:
            clean = ens.raw(x[None])[0]
            targets = sorted(targets, key=lambda t: -(clean[t.k] - clean[t.y]))

        def query(k: int) -> tuple[str, np.ndarray | None]:
            """("adv", point), ("none", None) (certified) or ("unknown", None) at radius C[k]."""
            if careful:
                quick = search.within(float(C[k]))
                if quick is not None:
                    return "adv", quick
            box = boxes.at(k)
            status = "none"
            for t in targets:
                if time.perf_counter() > deadline:
                    out.time_hit = True
                    return "unknown", None
                r, xa = self._query(vt_of(t, careful), box, x, y, model, out, search.label, deadline, np.inf if careful else t.delta, decode)
                out.solves += 1
                if r == "adv":
                    return "adv", xa
                if r != "none":
                    status = "unknown"
            return status, None

        lo, hi = 0, C.size  # every radius below C[lo] is certified; an adversarial at C[hi] is known
        undecided = False

        def ask(i: int) -> bool:
            """Query C[i]: update lo/hi and the best point; False when the query stays undecided."""
            nonlocal lo, hi
            r, xa = query(i)
            if r == "adv" and xa is not None:
                d = point_distance(x, xa, LINF)
                if d < out.dist:
                    out.x_adv, out.dist = xa, d
                hi = min(i, int(np.searchsorted(C, d)))
            elif r == "none":
                lo = i + 1
            else:
                return False
            return True

        # fast path: gallop up from the cheapest move (small boxes are cheap queries), then bisect the
        # bracket; careful path: bisect the whole list
        step = 1
        i = 0
        while not careful and lo < hi and i < hi:
            if not ask(i):
                undecided = True
                break
            if hi <= i:
                break
            i = lo + step - 1
            step *= 2
        while not undecided and lo < hi:
            if not ask((lo + hi) // 2):
                undecided = True
        if undecided and not careful:
            # a query the fast path could not settle within its budgets: the careful path (local search
            # first, bisection from the top) asks other radii and often settles them; the MILP follows
            # only where it cannot either
            again = self._solve_point(ens, model, milp_solver, vt_of, x, y, True, pad, edges, deadline)
            again.solves += out.solves
            again.retries += out.retries
            again.time_hit |= out.time_hit
            return again
        # no adversarial within any radius below C[lo]; C[0] is the cheapest move
        out.lower = min(float(C[lo]) if lo < C.size else np.inf, out.dist)
        if undecided:
            fb = milp_solver.solve_point(x, y, best=out.x_adv, deadline=max(deadline, time.perf_counter() + 1.0))
            out.solves += fb.solves
            out.retries += fb.retries
            out.gurobi += fb.gurobi
            out.highs += fb.highs
            out.limited |= fb.limited
            out.time_hit |= fb.time_hit
            if fb.x_adv is not None and fb.dist < out.dist:
                out.x_adv, out.dist = fb.x_adv, fb.dist
            out.lower = min(max(out.lower, fb.lower), out.dist)
            out.fell_back = True
        out.verified = out.x_adv is None or search.label.seen(out.x_adv)
        return out


__all__ = ["VeritasLinf"]
