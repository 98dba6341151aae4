"""Checks of a parsed tree ensemble: structural (every node reachable), size caps, and against the library itself.

Every parser refuses a tree deeper than $RBA_MAX_TREE_DEPTH levels (default 500) or larger than
$RBA_MAX_TREE_NODES nodes (default 2**22) with a one-line ModelError naming the cap.

The library check places probe rows exactly on split boundaries (each coordinate a threshold or
its float32 neighbour), where a wrong `<`/`<=` rule or a wrong threshold rounding changes leaves,
and measures the intercept there: bias = library raw output − Σ parsed leaves, which must be the
same constant on every probe (within floating-point summation error) or the parse is refused.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ...errors import ModelError
from ...guards import env_cap
from ..base import Tree, TreeEnsemble

EPS32 = float(np.finfo(np.float32).eps)
N_PROBES = 256

# Per-tree caps, checked when a model is parsed. Library defaults grow trees of depth 6 (XGBoost),
# 16 at most (CatBoost), about 30 (LightGBM's 31 leaves); a fully grown scikit-learn tree on
# millions of rows is some tens of levels deep. 500 levels leave a wide margin and keep each
# exact-attack pass short: a node row of the MILP lists every leaf below it, so a chain-shaped
# tree of depth D gives a program with ~D^2/2 entries that the solver reads without a time check.
# 2**22 nodes per tree is a fully grown tree on some millions of training rows.
MAX_DEPTH_ENV = "RBA_MAX_TREE_DEPTH"
MAX_NODES_ENV = "RBA_MAX_TREE_NODES"
DEFAULT_MAX_DEPTH = 500
DEFAULT_MAX_NODES = 1 << 22


def probe_points(trees: tuple[Tree, ...] | list[Tree], n_features: int, n: int = N_PROBES, seed: int = 0,
                 dtype: type[np.floating[Any]] = np.float32) -> np.ndarray:
    """Random rows whose coordinates are thresholds of the ensemble or their neighbours in `dtype` (0 if unsplit).

    Used to measure intercepts and to check a parse against the library: rows sit exactly on
    comparison boundaries, so a wrong `<`/`<=` rule or threshold rounding changes their leaves.
    Returned as float64 holding `dtype`-exact values (the ensemble's comparison dtype).
    """
    feats = np.concatenate([t.feature[t.left >= 0] for t in trees]) if trees else np.zeros(0, np.int64)
    thrs = np.concatenate([t.threshold[t.left >= 0] for t in trees]) if trees else np.zeros(0, dtype)
    rng = np.random.default_rng(seed)
    P = np.zeros((n, n_features), dtype=np.float64)
    for f in np.unique(feats):
        t = np.unique(thrs[feats == f].astype(dtype))
        cands = np.concatenate([t, np.nextafter(t, dtype(-np.inf)), np.nextafter(t, dtype(np.inf))])
        cands = cands[np.isfinite(cands)]
        if cands.size:
            P[:, f] = rng.choice(cands, size=n).astype(np.float64)
    return P


def _path_magnitude(ens: TreeEnsemble, X: np.ndarray) -> np.ndarray:
    """Per row and output: Σ_t |leaf value| (the scale that bounds float32 summation error)."""
    X32 = ens.cast(X)
    acc = np.zeros((X32.shape[0], ens.n_outputs))
    for t in ens.trees:
        acc += np.abs(t.value[t.leaf_index(X32, ens.strict)])
    return acc


def measure_bias(ens: TreeEnsemble, X: np.ndarray, library_raw: Any, who: str, rel: float) -> np.ndarray:
    """Bias = library raw − Σ parsed leaves, required constant over rows (error bound `rel` × scale).

    A non-constant difference means the parse does not describe the library's model (an
    unsupported feature, or a non-constant init estimator), so it raises ModelError.
    """
    zero = dataclasses.replace(ens, bias=np.zeros(ens.n_outputs))
    sums = zero.raw(X)
    lib = np.asarray(library_raw, dtype=np.float64).reshape(X.shape[0], -1)
    if lib.shape[1] != ens.n_outputs:
        raise ModelError(f"{who}: the library returned {lib.shape[1]} raw outputs, the parse has {ens.n_outputs}; this model layout is not supported")
    diff = lib - sums
    bias: np.ndarray = np.median(diff, axis=0)
    n_terms = len(ens.trees) + 2
    tol = 1e-9 + rel * n_terms * (np.abs(lib) + _path_magnitude(zero, X) + np.abs(bias))
    bad = np.abs(diff - bias) > tol
    if bad.any() or not np.all(np.isfinite(bias)):
        worst = float(np.nanmax(np.abs(diff - bias)))
        raise ModelError(
            f"{who}: the library's raw output is not a constant plus the parsed leaves (deviation {worst:.3g} on "
            f"{int(bad.any(axis=1).sum())} of {X.shape[0]} probe rows); the model uses a feature this parser does not support"
        )
    return bias


def tree_caps() -> tuple[int, int]:
    """The per-tree (depth, node) caps: $RBA_MAX_TREE_DEPTH (default 500) and $RBA_MAX_TREE_NODES (default 2**22)."""
    return env_cap(MAX_DEPTH_ENV, DEFAULT_MAX_DEPTH), env_cap(MAX_NODES_ENV, DEFAULT_MAX_NODES)


def check_node_count(n_nodes: int, index: int, who: str = "", cap: int | None = None) -> None:
    """ModelError (one line) when tree `index` has more nodes than the node cap; cheap, so parsers call it first."""
    cap = env_cap(MAX_NODES_ENV, DEFAULT_MAX_NODES) if cap is None else cap
    if n_nodes > cap:
        pre = f"{who}: " if who else ""
        raise ModelError(
            f"{pre}tree {index} has {n_nodes} nodes, above the cap of {cap} per tree ({MAX_NODES_ENV}); "
            f"no real model needs that many, so the file is likely malformed; set {MAX_NODES_ENV} higher to load it anyway"
        )


def tree_depth_over(t: Tree, cap: int) -> int:
    """The depth (edges on the longest root-to-leaf path) of a validated tree, or cap + 1 once it is deeper than `cap`.

    Level by level, so the work is bounded by the nodes within cap + 1 levels of the root.
    """
    level = np.zeros(1, dtype=np.int64)
    depth = 0
    while True:
        level = level[t.left[level] >= 0]
        if level.size == 0:
            return depth
        depth += 1
        if depth > cap:
            return depth
        level = np.concatenate([t.left[level], t.right[level]])


def check_tree_caps(ens: TreeEnsemble, who: str = "") -> TreeEnsemble:
    """ModelError (one line) naming the cap when a tree is deeper or larger than the caps (see `tree_caps`); returns ens.

    Call after `validate()` (the depth walk follows children, which must be in range and acyclic).
    """
    max_depth, max_nodes = tree_caps()
    pre = f"{who}: " if who else ""
    for ti, t in enumerate(ens.trees):
        check_node_count(t.n_nodes, ti, who, max_nodes)
        if tree_depth_over(t, max_depth) > max_depth:
            raise ModelError(
                f"{pre}tree {ti} is deeper than the cap of {max_depth} levels ({MAX_DEPTH_ENV}); real models stay far below it, "
                f"so the file is likely malformed; set {MAX_DEPTH_ENV} higher to load it anyway"
            )
    return ens


def check_reachable(ens: TreeEnsemble) -> TreeEnsemble:
    """Every node must hang below the root (validate() checks paths from the root; this catches orphan cycles)."""
    for ti, t in enumerate(ens.trees):
        seen = np.zeros(t.n_nodes, dtype=bool)
        frontier = np.array([0], dtype=np.int64)
        while frontier.size:
            seen[frontier] = True
            frontier = frontier[t.left[frontier] >= 0]
            frontier = np.concatenate([t.left[frontier], t.right[frontier]])
            frontier = frontier[~seen[frontier]]
        if not seen.all():
            raise ModelError(
                f"tree {ti}: {int((~seen).sum())} node(s) cannot be reached from the root (orphan or cyclic nodes); the model file is malformed"
            )
    return ens


__all__ = [
    "DEFAULT_MAX_DEPTH", "DEFAULT_MAX_NODES", "EPS32", "MAX_DEPTH_ENV", "MAX_NODES_ENV", "N_PROBES", "check_node_count", "check_reachable",
    "check_tree_caps", "measure_bias", "probe_points", "tree_caps", "tree_depth_over",
]
