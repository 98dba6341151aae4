"""A flat evaluator of a tree ensemble: raw outputs of many candidate points in one vectorised pass.

The local search scores hundreds of one-coordinate moves per step; descending every tree for
every candidate with numpy, instead of tree by tree, keeps that cheap. `raw_moves` scores such
moves without descending the trees that do not split on the moved feature (their leaves are the
base point's), and gives bit-identical outputs to `raw` of the moved rows.

Each descent takes one vectorised step per level of the deepest tree; given a `deadline`
(perf_counter) it checks the clock every few tens of levels and raises DeadlinePassed once the
deadline has passed (the searches then stop as at any other deadline check). Without a deadline,
or before it passes, the outputs are the same.
"""
from __future__ import annotations

import time

import numpy as np

from ...models.base import Tree, TreeEnsemble

_LEVELS_PER_CHECK = 64  # descent levels between two looks at the clock


class DeadlinePassed(Exception):
    """Raised inside a long pass when the point's deadline (perf_counter) has passed; the caller reports a time-limit hit."""


def check_deadline(deadline: float) -> None:
    """Raise DeadlinePassed once time.perf_counter() is past `deadline`."""
    if time.perf_counter() > deadline:
        raise DeadlinePassed


def _tick(level: int, deadline: float) -> None:
    """The deadline check of a descent, made every _LEVELS_PER_CHECK levels."""
    if level % _LEVELS_PER_CHECK == _LEVELS_PER_CHECK - 1:
        check_deadline(deadline)


def _tree_depth(t: Tree) -> int:
    """The number of edges on the longest root-to-leaf path."""
    stack = [(0, 0)]
    best = 0
    while stack:
        n, d = stack.pop()
        best = max(best, d)
        if t.left[n] >= 0:
            stack.append((int(t.left[n]), d + 1))
            stack.append((int(t.right[n]), d + 1))
    return best


class FlatEnsemble:
    """All trees in one node array, so that a batch of rows descends every tree at once.

    Leaves loop to themselves, so `depth` rounds of "go left or right" land every row in its leaf.
    """

    def __init__(self, ens: TreeEnsemble) -> None:
        sizes = [t.n_nodes for t in ens.trees]
        offs = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        feat, thr, left, right, val = [], [], [], [], []
        depth = 0
        for t, o in zip(ens.trees, offs[:-1], strict=True):
            leaf = t.is_leaf
            own = np.arange(t.n_nodes) + o
            feat.append(np.where(leaf, 0, t.feature))
            thr.append(np.where(leaf, 0, t.threshold).astype(ens.dtype))
            left.append(np.where(leaf, own, t.left + o))
            right.append(np.where(leaf, own, t.right + o))
            val.append(t.value)
            depth = max(depth, _tree_depth(t))
        self.feature = np.concatenate(feat).astype(np.int64)
        self.threshold = np.concatenate(thr)
        self.left = np.concatenate(left).astype(np.int64)
        self.right = np.concatenate(right).astype(np.int64)
        agg = float(len(ens.trees)) if ens.combine == "mean" else 1.0
        self.value = np.concatenate(val) / agg
        self.roots = offs[:-1]
        self.depth = depth
        self.strict = ens.strict
        self.dtype = ens.dtype
        self.bias = np.asarray(ens.bias, dtype=np.float64).reshape(-1)
        self.n_outputs = ens.n_outputs
        # per feature, the trees that split on it (CSR: trees_of[ptr[f]:ptr[f + 1]])
        tree_of_node = np.repeat(np.arange(len(sizes), dtype=np.int64), sizes)
        internal = self.left != np.arange(self.left.size)
        pairs = np.unique(np.stack([self.feature[internal], tree_of_node[internal]], axis=1), axis=0).reshape(-1, 2)
        n_feat = int(pairs[:, 0].max()) + 1 if pairs.size else 0
        self.n_features_split = n_feat
        self.trees_of = pairs[:, 1].astype(np.int64)
        self.trees_ptr = np.concatenate([[0], np.cumsum(np.bincount(pairs[:, 0], minlength=n_feat))]).astype(np.int64)

    def raw(self, X: np.ndarray, deadline: float = np.inf) -> np.ndarray:
        """Raw outputs (n, n_outputs) of the rows of X, compared in the ensemble's dtype like the libraries."""
        X32 = np.asarray(X, dtype=self.dtype)
        node = np.broadcast_to(self.roots, (X32.shape[0], self.roots.size)).copy()
        rows = np.arange(X32.shape[0])[:, None]
        for level in range(self.depth):
            _tick(level, deadline)
            xv = X32[rows, self.feature[node]]
            go_left = (xv < self.threshold[node]) if self.strict else (xv <= self.threshold[node])
            node = np.where(go_left, self.left[node], self.right[node])
        out: np.ndarray = self.value[node].sum(axis=1) + self.bias
        return out

    def leaves(self, x: np.ndarray, deadline: float = np.inf) -> np.ndarray:
        """The leaf (flat node index) of one point in every tree, shape (n_trees,)."""
        x32 = np.asarray(x, dtype=self.dtype)
        node = self.roots.copy()
        for level in range(self.depth):
            _tick(level, deadline)
            xv = x32[self.feature[node]]
            go_left = (xv < self.threshold[node]) if self.strict else (xv <= self.threshold[node])
            node = np.where(go_left, self.left[node], self.right[node])
        return node

    def raw_moves(self, base: np.ndarray, cols: np.ndarray, vals: np.ndarray, base_leaves: np.ndarray | None = None,
                  deadline: float = np.inf) -> np.ndarray:
        """`raw` of the rows "base with coordinate cols[r] set to vals[r]", bit for bit (see `raw_moves_leaves`)."""
        return self.raw_moves_leaves(base, cols, vals, base_leaves, deadline)[0]

    def raw_moves_leaves(self, base: np.ndarray, cols: np.ndarray, vals: np.ndarray,
                         base_leaves: np.ndarray | None = None, deadline: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
        """Raw outputs and leaves (rows, trees) of the rows "base with coordinate cols[r] set to vals[r]".

        Only the trees that split on the moved feature are descended; the others keep the base
        point's leaves (`base_leaves`, from `leaves(base)` when not given). The leaf values are then
        summed exactly as `raw` sums them (same (rows, trees) array, same order), so the outputs
        are identical, not just close.
        """
        b32 = np.asarray(base, dtype=self.dtype)
        cols = np.asarray(cols, dtype=np.int64)
        v32 = np.asarray(vals, dtype=self.dtype)
        n = cols.size
        lv = self.leaves(base, deadline) if base_leaves is None else base_leaves
        node_all = np.broadcast_to(lv, (n, self.roots.size)).copy()
        if n and self.trees_of.size:
            f_ok = np.minimum(cols, max(self.n_features_split - 1, 0))
            counts = np.where(cols < self.n_features_split, self.trees_ptr[f_ok + 1] - self.trees_ptr[f_ok], 0)
            total = int(counts.sum())
            if total:
                row = np.repeat(np.arange(n, dtype=np.int64), counts)
                first = np.cumsum(counts) - counts
                tree = self.trees_of[np.repeat(self.trees_ptr[f_ok], counts) + (np.arange(total, dtype=np.int64) - np.repeat(first, counts))]
                col, val = cols[row], v32[row]
                node = self.roots[tree]
                for level in range(self.depth):
                    _tick(level, deadline)
                    f = self.feature[node]
                    xv = np.where(f == col, val, b32[f])
                    go_left = (xv < self.threshold[node]) if self.strict else (xv <= self.threshold[node])
                    node = np.where(go_left, self.left[node], self.right[node])
                node_all[row, tree] = node
        out: np.ndarray = self.value[node_all].sum(axis=1) + self.bias
        return out, node_all


__all__ = ["DeadlinePassed", "FlatEnsemble", "check_deadline"]
