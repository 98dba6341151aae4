"""The decision rule as margins: one target margin per class a point of class y may be moved to.

With a single output (binary margin) the ensemble says class 1 iff raw > 0; otherwise it takes
the argmax with ties to the lowest class index (the TreeEnsemble contract). Leaving class y for
class k means raising the margin M = raw_k - raw_y (-raw or +raw with one output) to M >= 0 where
the tie already goes to k (k < y, or raw <= 0 for a point of class 1) and to M > 0 otherwise; the
strict case is solved as M >= STRICT_EPS times the ensemble's output scale.

Soundness in the library's arithmetic. The libraries do not compute M exactly: they sum the
leaf values of every tree in their own order and type (float32 in XGBoost and ONNX runtimes,
float64 in scikit-learn and LightGBM), may map the sums to probabilities (a sigmoid or softmax,
whose rounding can turn a tiny margin into an exact tie) and break ties by their own rule. A
certificate therefore asks for more than the rule: it certifies that no point reaches M >= -delta
(`Target.delta`, `decision_tolerance`), a rigorous bound on the difference between the exact
margin and anything a library can compute from the same leaves. Candidates inside the band
[-delta, 0] are *resolved* with the model's own `predict`: every input with the same leaves gets
the same library output (the same summands in the same order), so checking one point of a leaf
combination settles all of them. No certificate depends on a summation order.

Guards. Searching for an adversarial (not certifying) may need more than the rule when the decoded
point does not flip the model (a tie broken differently, solver round-off): the point is solved
again with a guard M >= g of growing size (GUARD_STEPS, up to 1e-3 of the output scale).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...models.base import TreeEnsemble

# Margin guards (times the ensemble's output scale) added on retries; strict flips need STRICT_EPS.
GUARD_STEPS = (0.0, 1e-9, 1e-7, 1e-5, 1e-3)
STRICT_EPS = 1e-8
# guard levels: 0 certifies (M >= -delta), 1.. search with GUARD_STEPS[level - 1]
N_LEVELS = len(GUARD_STEPS) + 1

_U32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff of the least precise type a library sums in
# libraries that accumulate tree outputs in float64 (TreeEnsemble.source prefixes); any other source
# (XGBoost, ONNX runtimes, hand-built ensembles) is assumed to sum in float32
FLOAT64_SOURCES = ("sklearn.", "lightgbm", "catboost.")
_U64 = float(np.finfo(np.float64).eps) / 2


def _gamma(n: int, u: float) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of an n-term sum in any order."""
    nu = n * u
    return nu / (1.0 - nu) if nu < 0.5 else 1.0


def decision_tolerance(ens: TreeEnsemble) -> float:
    """A bound on |exact margin - any margin a library computes from the same leaves|, in raw units.

    Each class's raw output is a sum of T leaf values and a bias; a library sums them in float64
    (FLOAT64_SOURCES) or float32 (any other source) in some order (bounded by gamma_{2T+4} in float32 times the sum of magnitudes, which also
    covers leaf values stored one rounding away from ours and the division of a mean), twice for a
    difference of two outputs; a probability link (sigmoid, softmax) adds a few units of float32
    roundoff in logit units (equal probabilities after rounding are a tie); our own float64
    evaluation adds gamma_{T+4} in float64.
    """
    agg = float(len(ens.trees)) if ens.combine == "mean" else 1.0
    mags = sum(float(np.abs(t.value[t.is_leaf]).max()) / agg for t in ens.trees if t.value.size)
    S = mags + float(np.abs(np.asarray(ens.bias, dtype=np.float64)).max(initial=0.0))
    T = len(ens.trees)
    u = _U64 if ens.source.startswith(FLOAT64_SOURCES) else _U32
    link = 0.0 if ens.link == "identity" else 64.0 * u
    return 2.0 * _gamma(2 * T + 4, u) * S + _gamma(T + 4, _U64) * S + link


@dataclass
class Target:
    """M(x) = c0 + sum_t w_t[leaf_t(x)]: the decision leaves y for k iff M >= 0 (tie_ok) or M > 0.

    delta: the certification band (see `decision_tolerance`): no library can flip a point whose
    exact M is below -delta.
    """

    k: int
    y: int
    tie_ok: bool
    w: list[np.ndarray]  # per tree, per node (zeros at internal nodes); already divided by T for "mean"
    c0: float
    scale: float
    delta: float = 0.0

    def guard(self, level: int) -> float:
        """The margin to reach at `level`: 0 certifies (-delta), 1.. search (the rule plus GUARD_STEPS[level - 1])."""
        if level == 0:
            return -self.delta
        return ((0.0 if self.tie_ok else STRICT_EPS) + GUARD_STEPS[level - 1]) * self.scale


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
    delta = decision_tolerance(ens)
    for k, tie_ok, w, c0 in specs:
        scale = abs(c0) + sum(float(np.abs(wt[t.is_leaf]).max()) for wt, t in zip(w, ens.trees, strict=True))
        out.append(Target(k=k, y=y, tie_ok=bool(tie_ok), w=w, c0=c0, scale=max(scale, 1e-300), delta=delta))
    return out


# forests whose predict is the argmax (ties to the first class) of the float64 sum of per-tree class
# fractions divided by the number of trees (scikit-learn's RandomForest/ExtraTrees/DecisionTree)
_VOTE_SOURCES = ("sklearn.RandomForestClassifier", "sklearn.ExtraTreesClassifier", "sklearn.DecisionTreeClassifier")
_VOTE_LIMIT = 2.0 ** 20  # integer class sums below this stay exact and distinct through float32/float64 sums and / T


class ExactVotes:
    """Leaf combinations of integer-valued leaves (a forest's pure leaves), decided exactly without a predict.

    scikit-learn's forests add the per-tree class fractions in float64 (in any order with several
    jobs), divide by the number of trees T and take the argmax, ties going to the first class. A
    pure leaf's fractions are exactly 0 and 1 (c/c and 0/c are exact). When every leaf of a
    combination is integer-valued, every partial sum is a small integer, so the library's sums
    are the exact sums whatever the order; dividing distinct integers below 2^20 by T keeps them
    distinct and ordered, and equal sums stay equal. The library's decision is then the argmax of
    the exact integer sums with ties to the lowest class, which is what `decide` computes. Any
    combination with a fractional leaf is left to the margin band and the model's predict.
    """

    def __init__(self, ens: TreeEnsemble, flat: Any) -> None:
        """`flat`: the ensemble's `FlatEnsemble` (its leaves are the flat node numbers used here)."""
        self.flat = flat
        self.values = np.concatenate([t.value for t in ens.trees])  # per flat node, before the division by T
        self.integer = np.all(self.values == np.round(self.values), axis=1)
        ends = np.cumsum([t.n_nodes for t in ens.trees])
        self.per_tree: list[np.ndarray] = np.split(self.integer, ends[:-1])  # the same mask per tree, per node (`shifted`)

    @staticmethod
    def applies(ens: TreeEnsemble) -> bool:
        """The library arithmetic the exact rule is proved for (see the class docstring)."""
        if ens.source not in _VOTE_SOURCES or (ens.meta or {}).get("library") != "scikit-learn":
            return False
        if ens.link != "identity" or ens.combine != "mean" or np.any(np.asarray(ens.bias, dtype=np.float64) != 0):
            return False
        top = sum(float(np.abs(t.value[t.is_leaf]).max()) for t in ens.trees if t.value.size)
        return top < _VOTE_LIMIT

    def decide(self, xa: np.ndarray) -> int | None:
        """The library's class at xa when all its leaves are integer-valued, else None."""
        leaves = self.flat.leaves(xa)
        if not self.integer[leaves].all():
            return None
        sums = self.values[leaves].sum(axis=0)  # exact: small integers
        return int(np.argmax(sums))


def shifted(target: Target, integer: list[np.ndarray], shift: float) -> Target:
    """The target with `shift` added to every fractional leaf (integer: per tree, per node, `ExactVotes.per_tree`).

    Its margin is M' = M + shift * (fractional leaves of the combination). With delta < shift and
    shift - delta < 1/T (the step of integer vote margins), asking M' >= shift - delta leaves out
    exactly the integer-leaf combinations with M = 0 (exact ties, which do not flip a target that is
    not `tie_ok`, see `ExactVotes`), and keeps every other combination a library could flip: integer
    ones with M >= 1/T and fractional ones with M >= -delta (M' >= M + shift). Veritas sums M' in
    float64 (shift 1.5 delta leaves room for that); a MILP solver's feasibility tolerance needs a
    shift well above it (`MilpSolver.certifying`).
    """
    w = [np.where(m, wt, wt + shift) for wt, m in zip(target.w, integer, strict=True)]
    return dataclasses.replace(target, w=w)


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


__all__ = ["GUARD_STEPS", "N_LEVELS", "STRICT_EPS", "ExactVotes", "Target", "decision_tolerance", "margin_of_raw", "shifted", "targets_of"]
