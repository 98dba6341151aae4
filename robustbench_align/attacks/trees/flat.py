"""A flat evaluator of a tree ensemble: raw outputs of many candidate points in one vectorised pass.

The local search scores hundreds of one-coordinate moves per step; descending every tree for
every candidate with numpy, instead of tree by tree, keeps that cheap.
"""
from __future__ import annotations

import numpy as np

from ...models.base import Tree, TreeEnsemble


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

    def raw(self, X: np.ndarray) -> np.ndarray:
        """Raw outputs (n, n_outputs) of the rows of X, compared in the ensemble's dtype like the libraries."""
        X32 = np.asarray(X, dtype=self.dtype)
        node = np.broadcast_to(self.roots, (X32.shape[0], self.roots.size)).copy()
        rows = np.arange(X32.shape[0])[:, None]
        for _ in range(self.depth):
            xv = X32[rows, self.feature[node]]
            go_left = (xv < self.threshold[node]) if self.strict else (xv <= self.threshold[node])
            node = np.where(go_left, self.left[node], self.right[node])
        out: np.ndarray = self.value[node].sum(axis=1) + self.bias
        return out


__all__ = ["FlatEnsemble"]
