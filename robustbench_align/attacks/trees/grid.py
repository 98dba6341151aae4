"""The threshold grid: where along each feature a point can move, and what the move costs.

Tree libraries compare float32(x) against float32 thresholds, with `<` (XGBoost, `strict`) or
`<=` (scikit-learn); LightGBM compares the float64 input against float64 thresholds with `<=`
(the ensemble's `threshold_dtype`). Along one feature the distinct thresholds cut the line into
intervals. A coordinate that has to move into another interval moves to the closest float64 value
whose conversion to the comparison dtype lands inside it: for float32 that is the rounding edge
halfway between the interval's end and its float32 neighbour outside (`edge_up`, `edge_down`),
up to half a float32 spacing closer to x than the end itself; for float64 it is the end. An unmoved
coordinate keeps its exact value. The exact attacks search over such points only, so their radii
and lower bounds are over float64 inputs as the libraries round them (round to nearest, ties to
even, as numpy and C conversions do).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ...models.base import Tree
from ..base import Norm

F32_INF = np.float32(np.inf)


def next32(v: Any) -> np.float32:
    """The next float32 above float32(v)."""
    out: np.float32 = np.nextafter(np.float32(v), F32_INF)
    return out


def prev32(v: Any) -> np.float32:
    """The next float32 below float32(v)."""
    out: np.float32 = np.nextafter(np.float32(v), -F32_INF)
    return out


def next_up(v: Any, dtype: type[np.floating[Any]] = np.float32) -> np.floating[Any]:
    """The next value of `dtype` above dtype(v) (next32 for float32)."""
    out: np.floating[Any] = np.nextafter(dtype(v), dtype(np.inf))
    return out


def next_down(v: Any, dtype: type[np.floating[Any]] = np.float32) -> np.floating[Any]:
    """The next value of `dtype` below dtype(v) (prev32 for float32)."""
    out: np.floating[Any] = np.nextafter(dtype(v), dtype(-np.inf))
    return out


def _is_even(t: np.ndarray) -> np.ndarray:
    """Whether the last significand bit of each float32 value is 0 (the tie-break of round-to-even)."""
    out: np.ndarray = (np.asarray(t, dtype=np.float32).view(np.uint32) & np.uint32(1)) == 0
    return out


def edge_up(t: Any, dtype: type[np.floating[Any]] = np.float32) -> np.ndarray:
    """The smallest float64 whose conversion to `dtype` is >= t, per value of t (t in `dtype`).

    For float32: the midpoint m between t and the float32 below it when the tie rounds up to t
    (t even), else the float64 just above m. For float64: t itself. Non-finite t stay as they are.
    """
    t = np.asarray(t, dtype=dtype)
    if dtype is not np.float32:
        same: np.ndarray = t.astype(np.float64)
        return same
    t64 = t.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        below = np.nextafter(t, -F32_INF).astype(np.float64)
        above = np.nextafter(t, F32_INF).astype(np.float64)
        half = np.where(np.isfinite(below), (t64 - below) / 2, (above - t64) / 2)  # exact in float64
        m = t64 - half
    out = np.where(_is_even(t), m, np.nextafter(m, np.inf))
    edge: np.ndarray = np.where(np.isfinite(t64), out, t64)
    return edge


def edge_down(s: Any, dtype: type[np.floating[Any]] = np.float32) -> np.ndarray:
    """The largest float64 whose conversion to `dtype` is <= s, per value of s (s in `dtype`).

    The mirror of `edge_up`: the midpoint between s and the float32 above it when the tie rounds
    down to s (s even), else the float64 just below that midpoint; s itself for float64.
    """
    s = np.asarray(s, dtype=dtype)
    if dtype is not np.float32:
        same: np.ndarray = s.astype(np.float64)
        return same
    s64 = s.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        above = np.nextafter(s, F32_INF).astype(np.float64)
        below = np.nextafter(s, -F32_INF).astype(np.float64)
        half = np.where(np.isfinite(above), (above - s64) / 2, (s64 - below) / 2)
        m = s64 + half
    out = np.where(_is_even(s), m, np.nextafter(m, -np.inf))
    edge: np.ndarray = np.where(np.isfinite(s64), out, s64)
    return edge


def point_distance(x: np.ndarray, xa: np.ndarray, norm: Norm) -> float:
    """The norm of xa - x for one point (a 1-D vector), in float64.

    The searches compare and prune with this one function, so equal points always give equal
    distances. (The result's reported distance is recomputed by the base class's verification.)
    """
    diff = np.asarray(xa, dtype=np.float64) - np.asarray(x, dtype=np.float64)
    return float(np.linalg.norm(diff, ord=norm.p))


class Grid:
    """Distinct thresholds per feature (sorted, in the comparison dtype) with a global predicate numbering.

    Predicate r of feature f is "x_f goes left of thr_f[r]"; interval i of feature f lies between
    thresholds i-1 and i (interval 0 below all, interval m above all). `dtype` is the ensemble's
    comparison type (np.float32, or np.float64 for LightGBM): neighbours are taken in it.
    """

    def __init__(self, per_feature: dict[int, np.ndarray], strict: bool, dtype: type[np.floating[Any]] = np.float32) -> None:
        self.strict = strict
        self.dtype = dtype
        inf = dtype(np.inf)
        self.features = sorted(f for f, v in per_feature.items() if len(v))
        self.thr = [np.unique(np.asarray(per_feature[f], dtype=dtype)) for f in self.features]
        sizes = [len(t) for t in self.thr]
        self.offset = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n_pred = int(self.offset[-1])
        # split values for engines that only know "x < s": s = thr (strict) or the next value (<=)
        self.split = [t if strict else np.nextafter(t, inf) for t in self.thr]
        self.split_flat = np.concatenate(self.split) if self.split else np.zeros(0, dtype=dtype)
        self._index = {f: i for i, f in enumerate(self.features)}
        # flat per-interval tables for `intervals` (interval j of feature i sits at int_off[i] + j)
        n_f = len(self.features)
        self._feat_arr = np.asarray(self.features, dtype=np.int64)
        self.int_off = (self.offset + np.arange(n_f + 1)).astype(np.int64)
        self._thr_feat = np.repeat(np.arange(n_f, dtype=np.int64), sizes)
        self._thr_flat = np.concatenate(self.thr) if n_f else np.zeros(0, dtype=dtype)
        self._int_feat = np.repeat(np.arange(n_f, dtype=np.int64), [m + 1 for m in sizes])
        self._int_j = np.concatenate([np.arange(m + 1, dtype=np.int64) for m in sizes]) if n_f else np.zeros(0, dtype=np.int64)
        self._int_col = self._feat_arr[self._int_feat]
        for shared_arr in (self._int_feat, self._int_j, self._int_col):  # shared with every LocalSearch: read-only
            shared_arr.flags.writeable = False
        up = np.full(self._int_j.size, np.nan)  # closest point of interval j coming from below: right of thr j-1
        down = np.full(self._int_j.size, np.nan)  # ... coming from above: left of thr j
        for i, t in enumerate(self.thr):
            a = int(self.int_off[i])
            m = len(t)
            if strict:  # right of "x < t" starts at t; left of it ends just below t
                up[a + 1:a + m + 1] = edge_up(t, dtype)
                down[a:a + m] = edge_down(np.nextafter(t, -inf), dtype)
            else:  # right of "x <= t" starts just above t; left of it ends at t
                up[a + 1:a + m + 1] = edge_up(np.nextafter(t, inf), dtype)
                down[a:a + m] = edge_down(t, dtype)
        self._up, self._down = up, down
        self._thr_nan = bool(np.isnan(self._thr_flat).any())

    @classmethod
    def of_trees(cls, trees: Sequence[Tree], strict: bool, dtype: type[np.floating[Any]] = np.float32) -> Grid:
        """The grid of every split threshold in `trees` (compared in `dtype`)."""
        per: dict[int, list[np.ndarray]] = {}
        for t in trees:
            internal = t.left >= 0
            for f in np.unique(t.feature[internal]):
                per.setdefault(int(f), []).append(t.threshold[internal & (t.feature == f)])
        return cls({f: np.concatenate(v) for f, v in per.items()}, strict, dtype)

    def pred_indices(self, features: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
        """The global numbers of the predicates "x_f goes left of thr", per (feature, threshold) pair (one searchsorted per feature)."""
        features = np.asarray(features, dtype=np.int64)
        th = np.asarray(thresholds).astype(self.dtype)
        out = np.empty(features.size, dtype=np.int64)
        for f in np.unique(features).tolist():
            m = features == f
            i = self._index[int(f)]
            out[m] = int(self.offset[i]) + np.searchsorted(self.thr[i], th[m])
        return out

    def intervals(self, x: np.ndarray) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
        """Per grid feature: the interval of x, the closest point of every interval (a rounding edge), its distance.

        One vectorised pass over the flat interval tables (`intervals_flat`, split per feature); the
        same values as `intervals_loop` (which handles NaN inputs, where searchsorted and comparisons disagree).
        """
        if not self.features:
            return [], [], []
        j0, c, d = self.intervals_flat(x)
        cut = self.int_off[1:-1]
        return [int(v) for v in j0], np.split(c, cut), np.split(d, cut)

    def intervals_flat(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`intervals` as flat arrays: x's interval per feature, and the closest point and distance of
        every interval in (feature, interval) order (interval j of feature i at int_off[i] + j)."""
        if not self.features:
            return np.zeros(0, dtype=np.int64), np.zeros(0), np.zeros(0)
        xs = np.asarray(x, dtype=np.float64)[self._feat_arr]
        if self._thr_nan or np.isnan(xs).any():
            j0s, pts, dists = self.intervals_loop(x)
            return np.asarray(j0s, dtype=np.int64), np.concatenate(pts), np.concatenate(dists)
        x32 = xs.astype(self.dtype)
        xt = x32[self._thr_feat]
        below = (self._thr_flat <= xt) if self.strict else (self._thr_flat < xt)
        j0 = np.bincount(self._thr_feat, weights=below, minlength=len(self.features)).astype(np.int64)
        jg = j0[self._int_feat]
        xg = xs[self._int_feat]
        c = np.where(self._int_j > jg, self._up, np.where(self._int_j < jg, self._down, xg))
        d = np.abs(c - xg)
        d[~np.isfinite(c)] = np.inf
        return j0, c, d

    @property
    def interval_feature(self) -> np.ndarray:
        """Per flat interval, the index of its feature in `features`."""
        return self._int_feat

    @property
    def interval_column(self) -> np.ndarray:
        """Per flat interval, its feature's column in the input."""
        return self._int_col

    @property
    def interval_index(self) -> np.ndarray:
        """Per flat interval, its number j within its feature."""
        return self._int_j

    def intervals_loop(self, x: np.ndarray) -> tuple[list[int], list[np.ndarray], list[np.ndarray]]:
        """`intervals`, feature by feature (the reference implementation)."""
        j0s: list[int] = []
        pts: list[np.ndarray] = []
        dists: list[np.ndarray] = []
        inf = self.dtype(np.inf)
        for i, f in enumerate(self.features):
            t = self.thr[i]
            xf = float(x[f])
            x32 = self.dtype(xf)
            m = len(t)
            j0 = int(np.searchsorted(t, x32, side="right" if self.strict else "left"))
            idx = np.arange(m + 1)
            up, down = idx > j0, idx < j0
            c = np.empty(m + 1, dtype=np.float64)
            if self.strict:  # right of "x < t" starts at t; left of it ends just below t
                c[up] = edge_up(t[idx[up] - 1], self.dtype)
                c[down] = edge_down(np.nextafter(t[idx[down]], -inf), self.dtype)
            else:  # right of "x <= t" starts just above t; left of it ends at t
                c[up] = edge_up(np.nextafter(t[idx[up] - 1], inf), self.dtype)
                c[down] = edge_down(t[idx[down]], self.dtype)
            c[j0] = xf
            d = np.abs(c - xf)
            bad = ~np.isfinite(c)
            d[bad] = np.inf
            j0s.append(j0)
            pts.append(c)
            dists.append(d)
        return j0s, pts, dists

    def point(self, x: np.ndarray, choice: Sequence[int], pts: list[np.ndarray]) -> np.ndarray:
        """x with every grid feature moved to the closest point of its chosen interval."""
        out = np.array(x, dtype=np.float64, copy=True)
        for i, f in enumerate(self.features):
            out[f] = pts[i][choice[i]]
        return out


__all__ = ["F32_INF", "Grid", "edge_down", "edge_up", "next32", "next_down", "next_up", "point_distance", "prev32"]
