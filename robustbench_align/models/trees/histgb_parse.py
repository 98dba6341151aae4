"""scikit-learn's `HistGradientBoostingClassifier` → a validated TreeEnsemble with float64 thresholds.

The semantics encoded (scikit-learn's `_predictor._predict_one_from_raw_data` and `_raw_predict`):

- the input is validated as float64 (`X_DTYPE`) and compared as it is: a numeric node sends a
  row left iff `x[feature_idx] <= num_threshold` (float64), so the ensemble declares
  `threshold_dtype="float64"`, `strict=False`. NaN routing (`missing_go_to_left`) is not encoded:
  inputs are finite here. A node whose threshold is `+inf` (the "missing vs. the rest" split that
  scikit-learn stores as `num_threshold = inf`) sends every finite value left, so it is replaced by
  its left subtree (a non-finite threshold that is not `+inf` sends every finite value right);
- `est._predictors` holds one TreePredictor per iteration and per output (1 for binary,
  K for multiclass); leaf `value`s already include the learning rate (the grower's shrinkage);
- raw[:, k] = `_baseline_prediction[0, k]` + Σ_iterations leaf values, summed in that order. The
  baseline is folded into the leaves of the first iteration's tree k (bias stays 0), so the
  ensemble's float64 sum repeats the library's additions in the library's order;
- decision: binary class 1 iff raw > 0 (probability expit(raw), link "logistic"); multiclass
  argmax(raw) with ties to the lowest index (probabilities softmax(raw)).

Categorical splits (bitset membership on ordinal-encoded categories, with the preprocessor's
column reordering) have no threshold form: such a model is refused with a one-line ModelError,
and the adapter falls back to the black box.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ModelError
from ..base import Tree, TreeEnsemble
from .checks import check_tree_caps, probe_points
from .sklearn_parse import quiet, require_sk_fitted

PROBA_TOL = 1e-9  # parse vs predict_proba on boundary probes (the raw sums agree to the bit; exp/softmax round-off only)


def _resolve(nodes: np.ndarray, i: int) -> int:
    """Follow nodes whose threshold sends every finite value one way (+inf: left, -inf/NaN: right) to the first real node."""
    while not nodes["is_leaf"][i] and not np.isfinite(nodes["num_threshold"][i]):
        i = int(nodes["left"][i]) if nodes["num_threshold"][i] == np.inf else int(nodes["right"][i])
    return i


def _hist_tree(nodes: np.ndarray, column: int, n_outputs: int, offset: float) -> Tree:
    """One TreePredictor's `nodes` as a Tree (breadth-first renumbering) with leaf values (+ offset) in `column`."""
    order = [_resolve(nodes, 0)]
    left: list[int] = []
    right: list[int] = []
    k = 0
    while k < len(order):
        i = order[k]
        if nodes["is_leaf"][i]:
            left.append(-1)
            right.append(-1)
        else:
            for child, out in ((int(nodes["left"][i]), left), (int(nodes["right"][i]), right)):
                out.append(len(order))
                order.append(_resolve(nodes, child))
        k += 1
    idx = np.asarray(order, dtype=np.int64)
    leaf = nodes["is_leaf"][idx].astype(bool)
    feature = np.where(leaf, -1, nodes["feature_idx"][idx].astype(np.int64))
    threshold = np.where(leaf, 0.0, nodes["num_threshold"][idx]).astype(np.float64)
    value = np.zeros((idx.size, n_outputs), dtype=np.float64)
    value[leaf, column] = nodes["value"][idx][leaf].astype(np.float64) + offset
    return Tree(feature=feature, threshold=threshold, left=np.asarray(left, dtype=np.int64), right=np.asarray(right, dtype=np.int64), value=value)


def _refuse_categorical(est: Any) -> None:
    """ModelError when the model has categorical features or splits (no `<=` threshold form)."""
    is_cat = getattr(est, "is_categorical_", None)
    if is_cat is not None and np.any(is_cat):
        cols = ", ".join(str(int(c)) for c in np.flatnonzero(is_cat)[:5])
        raise ModelError(f"categorical features (column {cols}) split by category sets, not thresholds")
    for it in est._predictors:
        for p in it:
            if np.any(p.nodes["is_categorical"][~p.nodes["is_leaf"].astype(bool)]):
                raise ModelError("categorical splits (category sets, not thresholds)")


def parse_sklearn_histgb(est: Any) -> TreeEnsemble:
    """HistGradientBoostingClassifier as a float64-threshold boosted ensemble (see the module docstring); ModelError if refused."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    if not isinstance(est, HistGradientBoostingClassifier):
        raise ModelError(f"parse_sklearn_histgb: {type(est).__name__} is not a HistGradientBoostingClassifier")
    require_sk_fitted(est)
    _refuse_categorical(est)
    k = len(est.classes_)
    d = int(est.n_features_in_)
    n_outputs = int(est.n_trees_per_iteration_)
    if n_outputs != (1 if k == 2 else k):
        raise ModelError(f"{type(est).__name__}: {n_outputs} trees per iteration for {k} classes; this layout is not supported")
    baseline = np.asarray(est._baseline_prediction, dtype=np.float64).reshape(-1)
    if baseline.shape != (n_outputs,):
        raise ModelError(f"{type(est).__name__}: baseline prediction of shape {baseline.shape}, expected ({n_outputs},)")
    trees = []
    for i, predictors in enumerate(est._predictors):
        if len(predictors) != n_outputs:
            raise ModelError(f"{type(est).__name__}: iteration {i} has {len(predictors)} trees, expected {n_outputs}")
        for j, p in enumerate(predictors):
            trees.append(_hist_tree(p.nodes, j, n_outputs, float(baseline[j]) if i == 0 else 0.0))
    if not trees:
        raise ModelError(f"{type(est).__name__} has no trees")
    import sklearn

    ens = TreeEnsemble(
        trees=tuple(trees), n_features=d, n_classes=k, n_outputs=n_outputs, strict=False, bias=np.zeros(n_outputs),
        combine="sum", link="logistic" if n_outputs == 1 else "softmax", source=f"sklearn.{type(est).__name__}",
        meta={"library": "scikit-learn", "library_version": sklearn.__version__, "loss": str(getattr(est, "loss", "")),
              "n_iter": int(est.n_iter_), "baseline": [float(b) for b in baseline], "baseline_folded_into_first_iteration": True,
              "classes": [str(c) for c in est.classes_]},
        threshold_dtype="float64",
    ).validate()
    check_tree_caps(ens)
    check_against_library(ens, est, type(est).__name__)
    return ens


def check_against_library(ens: TreeEnsemble, est: Any, who: str) -> None:
    """Raw sums, predictions and probabilities of the parse must be the library's on float64 boundary probes, else ModelError."""
    P = probe_points(ens.trees, ens.n_features, dtype=np.float64)
    lib_raw = np.asarray(quiet(est.decision_function, P), dtype=np.float64).reshape(P.shape[0], -1)
    raw = ens.raw(P)
    scale = 1.0 + np.abs(lib_raw)
    dev = float(np.max(np.abs(raw - lib_raw) / scale))
    if not dev <= 1e-12 * len(ens.trees):
        raise ModelError(f"{who}: the parsed raw output differs from decision_function by {dev:.3g} on boundary probes; not supported")
    pred = np.asarray(quiet(est.predict, P))
    if not np.array_equal(np.asarray(est.classes_)[ens.predict(P)], pred):
        raise ModelError(f"{who}: the parsed decision differs from predict on boundary probes; not supported")
    perr = float(np.max(np.abs(ens.predict_proba(P) - np.asarray(quiet(est.predict_proba, P), dtype=np.float64))))
    if not perr <= PROBA_TOL:
        raise ModelError(f"{who}: the parsed probabilities differ from predict_proba by {perr:.3g}; the loss/link is not supported")


__all__ = ["check_against_library", "parse_sklearn_histgb"]
