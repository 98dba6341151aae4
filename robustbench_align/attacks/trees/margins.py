"""The decision rule as margins: one target margin per class a point of class y may be moved to.

With a single output (binary margin) the ensemble says class 1 iff raw > 0; otherwise it takes
the argmax with ties to the lowest class index (the TreeEnsemble contract). Leaving class y for
class k means raising the margin M = raw_k - raw_y (-raw or +raw with one output) to M >= 0 where
the tie already goes to k (k < y, or raw <= 0 for a point of class 1) and to M > 0 otherwise; the
strict case is solved as M >= STRICT_EPS times the ensemble's output scale.

Guards. Every decoded point is re-predicted by the model. If one does not flip (a library that
breaks exact ties differently, e.g. scikit-learn's gradient boosting at raw == 0, or solver
round-off), the point is solved again with a guard M >= g of growing size (GUARD_STEPS, up to 1e-3
of the output scale); the found distance may then exceed the certified bound, which refers to
the ensemble's rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...models.base import TreeEnsemble

# Margin guards (times the ensemble's output scale) added on retries; strict flips need STRICT_EPS.
GUARD_STEPS = (0.0, 1e-9, 1e-7, 1e-5, 1e-3)
STRICT_EPS = 1e-8


@dataclass
class Target:
    """M(x) = c0 + sum_t w_t[leaf_t(x)]: the decision leaves y for k iff M >= 0 (tie_ok) or M > 0."""

    k: int
    y: int
    tie_ok: bool
    w: list[np.ndarray]  # per tree, per node (zeros at internal nodes); already divided by T for "mean"
    c0: float
    scale: float

    def guard(self, level: int) -> float:
        """The margin to reach at retry `level` (0: the decision rule itself)."""
        return ((0.0 if self.tie_ok else STRICT_EPS) + GUARD_STEPS[level]) * self.scale


def targets_of(ens: TreeEnsemble, y: int) -> list[Target]:
    """The margins whose reaching flips a point of class y, one per alternative class."""
    agg = float(len(ens.trees)) if ens.combine == "mean" else 1.0
    bias = np.asarray(ens.bias, dtype=np.float64).reshape(-1)
    if bias.size == 1 and ens.n_outputs > 1:
        bias = np.full(ens.n_outputs, bias[0])
    specs: list[tuple[int, bool, list[np.ndarray], float]]
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
        scale = abs(c0) + sum(float(np.abs(wt[t.is_leaf]).max()) for wt, t in zip(w, ens.trees, strict=True))
        out.append(Target(k=k, y=y, tie_ok=bool(tie_ok), w=w, c0=c0, scale=max(scale, 1e-300)))
    return out


def margin_of_raw(raw: np.ndarray, y: int) -> np.ndarray:
    """Per row the best margin over alternative classes, shifted so that >= 0 means 'left y'."""
    tiny = np.finfo(np.float64).tiny
    if raw.shape[1] == 1:
        return -raw[:, 0] if y == 1 else raw[:, 0] - tiny
    other = np.delete(raw, y, axis=1) - raw[:, [y]]
    ks = np.delete(np.arange(raw.shape[1]), y)
    other[:, ks > y] -= tiny
    best: np.ndarray = other.max(axis=1)
    return best


__all__ = ["GUARD_STEPS", "STRICT_EPS", "Target", "margin_of_raw", "targets_of"]
