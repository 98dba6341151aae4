"""Cheap verified upper bounds for the exact searches: greedy interval moves around one point.

Every point it returns is re-predicted by the model and flips it; it never certifies anything.
"""
from __future__ import annotations

import time

import numpy as np

from ...models.base import Model
from ..base import LINF, Norm
from .flat import DeadlinePassed, FlatEnsemble
from .grid import Grid, point_distance
from .margins import margin_of_raw


class LocalSearch:
    """Single-feature interval moves around one point x: cheap, verified adversarial points.

    They give the exact searches an upper bound to prune with, a fallback answer when a work budget
    runs out, and answer the easy "is there an adversarial within this box" questions without a
    solver. Every loop is bounded by a move count, so the result does not depend on machine speed;
    `deadline` (perf_counter) is only a safety net: checked between moves and inside each descent
    of the trees, and once it has passed a search returns what it has (None from a move search).
    """

    def __init__(self, flat: FlatEnsemble, grid: Grid, model: Model, x: np.ndarray, y: int, deadline: float = np.inf) -> None:
        self.flat, self.grid, self.model, self.x, self.y, self.deadline = flat, grid, model, x, y, deadline
        j0, self.cand_val, self.cand_d = grid.intervals_flat(x)  # every interval's closest point and its distance
        self.j0 = [int(v) for v in j0]
        self.feat_of = grid.interval_feature  # per interval: its feature's index in grid.features ...
        self.int_of = grid.interval_index  # ... and its number within that feature
        self.cols = grid.interval_column
        self.finite = np.isfinite(self.cand_d)
        pos = self.cand_d[self.finite & (self.cand_d > 0)]
        self.radii = np.unique(pos)  # every linf optimum is one of these
        self._split: tuple[list[np.ndarray], list[np.ndarray]] | None = None

    @property
    def pts(self) -> list[np.ndarray]:
        """Per grid feature, the closest point of each of its intervals."""
        return self._per_feature()[0]

    @property
    def dists(self) -> list[np.ndarray]:
        """Per grid feature, the distance from x to each of its intervals."""
        return self._per_feature()[1]

    def _per_feature(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        if self._split is None:
            cut = self.grid.int_off[1:-1]
            self._split = (np.split(self.cand_val, cut), np.split(self.cand_d, cut)) if self.grid.features else ([], [])
        return self._split

    def margin(self, X: np.ndarray) -> np.ndarray:
        """The best margin of each row of X (>= 0: the ensemble has left class y); DeadlinePassed after the deadline."""
        return margin_of_raw(self.flat.raw(X, self.deadline), self.y)

    def point(self, choice: np.ndarray) -> np.ndarray:
        """The point of one interval per grid feature."""
        return self.grid.point(self.x, list(choice), self.pts)

    def verified(self, choice: np.ndarray | None) -> np.ndarray | None:
        """The point of `choice` if the model's own predict says it flips, else None."""
        if choice is None:
            return None
        p = self.point(choice)
        return p if int(self.model.predict(p[None])[0]) != self.y else None

    def ascent(self, allowed: np.ndarray, max_iter: int | None = None) -> np.ndarray | None:
        """Best-improvement moves (largest margin) among `allowed` intervals until the decision flips (None past the deadline)."""
        try:
            return self._ascent(allowed, max_iter)
        except DeadlinePassed:
            return None

    def _ascent(self, allowed: np.ndarray, max_iter: int | None = None) -> np.ndarray | None:
        """`ascent` without the deadline guard (a descent may raise DeadlinePassed)."""
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
        lo, hi = 0, int(np.searchsorted(C, point_distance(self.x, best, LINF)))
        while lo < hi and time.perf_counter() < self.deadline:
            mid = (lo + hi) // 2
            p = self.within(float(C[mid]))
            if p is None:
                lo = mid + 1
            else:
                best = p
                hi = min(mid, int(np.searchsorted(C, point_distance(self.x, p, LINF))))
        return best

    def ratio(self, norm: Norm, max_iter: int = 60) -> np.ndarray | None:
        """Moves with the most margin gain per unit of added cost (l1/l2), until the decision flips (None past the deadline)."""
        try:
            return self._ratio(norm, max_iter)
        except DeadlinePassed:
            return None

    def _ratio(self, norm: Norm, max_iter: int = 60) -> np.ndarray | None:
        """`ratio` without the deadline guard (a descent may raise DeadlinePassed)."""
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
            if norm.p == 1:
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
        hits_at: list[int] = []
        for i, f in enumerate(self.grid.features):
            hits = np.flatnonzero(self.pts[i] == point[f])
            hits_at.append(int(hits[0]) if hits.size else self.j0[i])
        choice = np.array(hits_at, dtype=np.int64)
        if not np.array_equal(self.point(choice), point):
            return point
        dist = np.array([self.dists[i][c] for i, c in enumerate(choice)])
        for i in np.argsort(-dist):
            while choice[i] != self.j0[i] and time.perf_counter() < self.deadline:
                trial = choice.copy()
                trial[i] += -1 if choice[i] > self.j0[i] else 1
                tp = self.point(trial)
                try:
                    still = self.margin(tp[None])[0] >= 0 and int(self.model.predict(tp[None])[0]) != self.y
                except DeadlinePassed:
                    return self.point(choice)
                if still:
                    choice = trial
                else:
                    break
        return self.point(choice)

    def upper(self, norm: Norm) -> np.ndarray | None:
        """The best verified adversarial the heuristics find for `norm` (None if none)."""
        if norm.p == np.inf:
            p = self.linf()
            return None if p is None else self.polish(p)
        found = [self.verified(self.ratio(norm))]
        if found[0] is None:
            found.append(self.within(float(self.radii[-1])) if self.radii.size else None)
        polished = [self.polish(p) for p in found if p is not None]
        if not polished:
            return None
        return min(polished, key=lambda p: point_distance(self.x, p, norm))


__all__ = ["LocalSearch"]
