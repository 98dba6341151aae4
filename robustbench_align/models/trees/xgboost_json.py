"""XGBoost model JSON → TreeEnsemble, without the xgboost library (also the structural check before loading a file).

The document is `json.loads(bytearray(booster.save_raw('json')))` or a file written by
`booster.save_model('model.json')`. Rules: left iff float32(x) < thr (`strict=True`); the leaf
value is `split_conditions[leaf]`; tree i feeds output `tree_info[i]`; boosted rounds,
`num_parallel_tree` forests (XGBRF) and DART weights all sum. The bias here comes from
`base_score` (probability or margin space depending on objective); `parse_xgboost` replaces it by
the intercept measured against the library. Categorical splits, vector leaves and multi-target
models are refused; `default_left` (missing-value routing) is ignored: inputs must be finite.
"""
from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ...errors import ModelError, first_line
from ..base import Tree, TreeEnsemble
from .checks import check_node_count, check_reachable, check_tree_caps

XGB_OBJECTIVES = ("binary:logistic", "binary:logitraw", "multi:softprob", "multi:softmax")


def int_array(x: Any, what: str) -> np.ndarray:
    """A JSON list of integers as int64, else ModelError naming `what` (the file is malformed)."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ModelError(f"XGBoost JSON: {what} is not a list of integers; the model file is malformed") from None
    if a.ndim != 1 or not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
        raise ModelError(f"XGBoost JSON: {what} is not a list of integers; the model file is malformed")
    return a.astype(np.int64)


def float_array(x: Any, what: str) -> np.ndarray:
    """A flat JSON list of numbers as float64, else ModelError naming `what`."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ModelError(f"XGBoost JSON: {what} is not a list of numbers; the model file is malformed") from None
    if a.ndim != 1:
        raise ModelError(f"XGBoost JSON: {what} is not a flat list of numbers; the model file is malformed")
    return a


def _parse_base_score(text: Any, objective: str, n_outputs: int) -> np.ndarray:
    """The intercept implied by `base_score` (only a fallback: parse_xgboost measures it)."""
    s = str(text).strip().strip("[]")
    try:
        vals = np.array([float(v) for v in s.split(",") if v.strip()], dtype=np.float64)
    except ValueError:
        raise ModelError(f"XGBoost JSON: base_score {text!r} is not a number or a list of numbers") from None
    if vals.size == 1:
        vals = np.repeat(vals, n_outputs)
    if vals.size != n_outputs:
        raise ModelError(f"XGBoost JSON: base_score has {vals.size} values for {n_outputs} outputs")
    if objective.startswith("binary:"):
        p = np.clip(vals, 1e-16, 1 - 1e-16)  # probability space for the logistic objectives
        vals = np.log(p) - np.log1p(-p)
    return vals


def _xgb_tree(tj: Any, index: int, out: int, n_outputs: int, weight: float) -> Tree:
    """Tree `index` of the JSON, its leaves feeding output `out` scaled by the DART `weight`."""
    if not isinstance(tj, dict):
        raise ModelError(f"XGBoost JSON: tree {index} is not an object; the model file is malformed")
    try:
        left = int_array(tj["left_children"], f"tree {index} left_children")
        right = int_array(tj["right_children"], f"tree {index} right_children")
        split_idx = int_array(tj["split_indices"], f"tree {index} split_indices")
        cond = float_array(tj["split_conditions"], f"tree {index} split_conditions")
    except KeyError as exc:
        raise ModelError(f"XGBoost JSON: tree {index} lacks {exc.args[0]!r}; the model file is malformed") from None
    n = left.size
    check_node_count(n, index, "XGBoost JSON")
    if not (right.size == split_idx.size == cond.size == n) or n == 0:
        raise ModelError(f"XGBoost JSON: tree {index} has node arrays of different lengths; the model file is malformed")
    tp = tj.get("tree_param")
    tp = tp if isinstance(tp, dict) else {}
    if "num_nodes" in tp and str(tp["num_nodes"]).strip() != str(n):
        raise ModelError(f"XGBoost JSON: tree {index} declares {tp['num_nodes']} nodes but stores {n}; the model file is malformed")
    if str(tp.get("size_leaf_vector", "1")).strip() not in ("0", "1"):
        raise ModelError(f"XGBoost JSON: tree {index} has vector leaves (multi_strategy='multi_output_tree'); only one-output trees are supported")
    internal = left >= 0
    stype = tj.get("split_type")
    if stype is not None:
        st = int_array(stype, f"tree {index} split_type")
        if st.size != n:
            raise ModelError(f"XGBoost JSON: tree {index} split_type has the wrong length; the model file is malformed")
        if np.any(st[internal] != 0):
            raise ModelError("XGBoost model has categorical splits, which are not supported; one-hot encode categorical features and refit")
    feature = np.where(internal, split_idx, -1).astype(np.int64)
    right = np.where(internal, right, -1).astype(np.int64)
    left = np.where(internal, left, -1).astype(np.int64)
    with np.errstate(over="ignore", invalid="ignore"):
        c32 = cond.astype(np.float32)
    threshold = np.where(internal, c32, np.float32(0)).astype(np.float32)
    value = np.zeros((n, n_outputs), dtype=np.float64)
    value[~internal, out] = c32[~internal].astype(np.float64) * weight
    return Tree(feature=feature, threshold=threshold, left=left, right=right, value=value)


def parse_xgboost_doc(doc: Any, n_iterations: int | None = None, source: str = "xgboost") -> TreeEnsemble:
    """Structure of an XGBoost model JSON as a validated TreeEnsemble, bias from base_score."""
    if not isinstance(doc, dict) or not isinstance(doc.get("learner"), dict):
        raise ModelError("not an XGBoost model JSON (no 'learner' object); save it with booster.save_model('model.json')")
    try:
        learner = doc["learner"]
        mp = learner["learner_model_param"]
        objective = str(learner["objective"]["name"])
        gb = learner["gradient_booster"]
        booster_name = str(gb["name"])
    except (KeyError, TypeError) as exc:
        raise ModelError(f"XGBoost JSON: missing or invalid field ({first_line(exc)}); the model file is malformed") from None
    if objective not in XGB_OBJECTIVES:
        raise ModelError(f"XGBoost objective {objective!r} is not supported; use one of {', '.join(XGB_OBJECTIVES)} (a classifier)")
    if booster_name == "gblinear":
        raise ModelError("XGBoost booster 'gblinear' is a linear model, not a tree ensemble; use booster='gbtree'")
    weights = None
    try:
        if booster_name == "dart":
            model = gb["gbtree"]["model"]
            weights = float_array(gb["weight_drop"], "weight_drop")
        elif booster_name == "gbtree":
            model = gb["model"]
        else:
            raise ModelError(f"XGBoost booster {booster_name!r} is not supported; use 'gbtree' or 'dart'")
        trees_json = model["trees"]
        tree_info = int_array(model["tree_info"], "tree_info")
        n_features = int(mp["num_feature"])
        num_class = int(mp.get("num_class", "0"))
        num_target = int(mp.get("num_target", "1"))
        indptr = model.get("iteration_indptr")
    except ModelError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelError(f"XGBoost JSON: missing or invalid field ({first_line(exc)}); the model file is malformed") from None
    if num_target > 1:
        raise ModelError("XGBoost model has several targets; only single-target classifiers are supported")
    if not isinstance(trees_json, list) or len(trees_json) == 0:
        raise ModelError("XGBoost model has no trees; train it first")
    if n_features < 1:
        raise ModelError(f"XGBoost JSON: num_feature is {n_features}; the model file is malformed")
    link: Literal["logistic", "softmax"]
    if objective.startswith("multi:"):
        if num_class < 2:
            raise ModelError(f"XGBoost JSON: objective {objective} with num_class={num_class}; the model file is malformed")
        n_classes, n_outputs, link = num_class, num_class, "softmax"
    else:
        n_classes, n_outputs, link = 2, 1, "logistic"
    n_trees = len(trees_json)
    if n_iterations is not None and n_iterations > 0:
        if indptr is None:
            raise ModelError("XGBoost JSON: no iteration_indptr, cannot keep only the best iteration's trees")
        ip = int_array(indptr, "iteration_indptr")
        if n_iterations >= ip.size or ip[n_iterations] > n_trees:
            raise ModelError(f"XGBoost JSON: best iteration {n_iterations - 1} is beyond the stored rounds")
        n_trees = int(ip[n_iterations])
    if tree_info.size < n_trees or (n_trees and (tree_info[:n_trees].min() < 0 or tree_info[:n_trees].max() >= n_outputs)):
        raise ModelError(f"XGBoost JSON: tree_info does not map every tree to an output in [0, {n_outputs}); the model file is malformed")
    if weights is not None and weights.size < n_trees:
        raise ModelError("XGBoost JSON: DART weight_drop has fewer weights than trees; the model file is malformed")
    trees = tuple(
        _xgb_tree(trees_json[i], i, int(tree_info[i]), n_outputs, 1.0 if weights is None else float(weights[i]))
        for i in range(n_trees)
    )
    bias = _parse_base_score(mp.get("base_score", "0.5"), objective, n_outputs)
    version = doc.get("version")
    ens = TreeEnsemble(
        trees=trees, n_features=n_features, n_classes=n_classes, n_outputs=n_outputs, strict=True, bias=bias,
        combine="sum", link=link, source=source,
        meta={"library": "xgboost", "objective": objective, "booster": booster_name,
              "model_version": ".".join(str(v) for v in version) if isinstance(version, list) else str(version)},
    )
    check_reachable(check_tree_caps(ens.validate(), "XGBoost JSON"))
    return ens


__all__ = ["XGB_OBJECTIVES", "float_array", "int_array", "parse_xgboost_doc"]
