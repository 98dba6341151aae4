"""LightGBM `Booster.dump_model()` (a dict, or a JSON file of it) → a validated float64 TreeEnsemble.

Semantics encoded, from the LightGBM docs (Advanced Topics › "Missing Value Handle"; Parameters ›
`zero_as_missing`, `use_missing`, `boosting=rf`, `sigmoid`, `objective`; Python API ›
`Booster.dump_model`) and checked against the library (the rule is `Tree::NumericalDecision` in
LightGBM's include/LightGBM/tree.h):

- inputs are float64 and every numerical split is `x <= threshold` against a float64 threshold
  ("decision_type": "<="), so the ensemble has `threshold_dtype="float64"`, `strict=False`;
- the prediction path reads a dense row as sparse pairs and drops values with
  |x| <= kZeroThreshold = 1.0000000180025095e-35 (float(1e-35f)), so such a value is compared as 0;
- "missing_type": "Zero" sends |x| <= kZeroThreshold to the `default_left` side; "NaN" and
  "None" only concern NaN, which the suite rejects (finite inputs only). Both are encoded with
  extra `<=` splits at -kZeroThreshold's lower neighbour and at kZeroThreshold;
- leaf values already include the learning rate (`shrinkage`) and the boost-from-average init
  score (added to the first tree), so raw = Σ leaves, or their mean with `average_output`
  (random-forest mode, LightGBM's `boosting="rf"`);
- objectives: "binary" (sigmoid(s·raw), class 1 iff raw > 0), "multiclass" (softmax over
  num_class outputs, tree i feeding output i mod num_tree_per_iteration) and "multiclassova"
  (per-class sigmoid(s·raw), argmax; parsed with the same argmax). The sigmoid parameter s is
  folded into the leaf values.

Categorical splits ("=="), linear trees (`linear_tree`), and non-classification objectives are
refused with a one-line ModelError.
"""
from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

from ...errors import ModelError, first_line
from ..base import Tree, TreeEnsemble
from .checks import check_reachable, check_tree_caps

K_ZERO_THRESHOLD = 1.0000000180025095e-35  # LightGBM's kZeroThreshold: (double)1e-35f
BELOW_ZERO_REGION = float(np.nextafter(-K_ZERO_THRESHOLD, -np.inf))  # the largest float64 < -kZeroThreshold
CLASSIFIER_OBJECTIVES = ("binary", "multiclass", "multiclassova")
REGRESSION_OBJECTIVES = frozenset({
    "regression", "regression_l2", "l2", "mean_squared_error", "mse", "l2_root", "root_mean_squared_error", "rmse",
    "regression_l1", "l1", "mean_absolute_error", "mae", "huber", "fair", "poisson", "quantile", "mape",
    "mean_absolute_percentage_error", "gamma", "tweedie", "cross_entropy", "xentropy", "cross_entropy_lambda", "xentlambda",
})
RANKING_OBJECTIVES = frozenset({"lambdarank", "rank_xendcg", "xendcg", "xe_ndcg", "xe_ndcg_mart", "xendcg_mart"})
MAX_NODES = 2_000_000  # bound on the parsed size (the Zero-missing encoding can copy subtrees)


def parse_objective(text: Any, who: str = "LightGBM model") -> tuple[str, int, float]:
    """(objective, number of classes, sigmoid) from a dump's "objective" string, e.g. "binary sigmoid:1".

    Raises ModelError for regression/ranking objectives (the suite evaluates classifiers) and for
    anything else it does not know.
    """
    parts = str(text).split()
    name = parts[0] if parts else ""
    params: dict[str, str] = dict(p.split(":", 1) for p in parts[1:] if ":" in p)
    if name in REGRESSION_OBJECTIVES:
        raise ModelError(f"{who} has objective {name!r}: it is a regression model; the suite evaluates classifiers")
    if name in RANKING_OBJECTIVES:
        raise ModelError(f"{who} has objective {name!r}: it is a ranking model; the suite evaluates classifiers")
    if name not in CLASSIFIER_OBJECTIVES:
        raise ModelError(f"{who} has objective {name or 'none'!r}, not supported; use one of {', '.join(CLASSIFIER_OBJECTIVES)}")
    try:
        sigmoid = float(params.get("sigmoid", "1"))
        k = int(params.get("num_class", "2")) if name != "binary" else 2
    except ValueError:
        raise ModelError(f"{who}: objective {str(text)!r} has a malformed parameter; the model file is malformed") from None
    if not (math.isfinite(sigmoid) and sigmoid > 0) or k < 2:
        raise ModelError(f"{who}: objective {str(text)!r} has sigmoid <= 0 or fewer than 2 classes; not a usable classifier")
    return name, k, sigmoid


# A split to emit: ("test", feature, s, left, right) meaning left iff x <= s, or ("node", lightgbm_node_dict).
_Task = tuple[Any, ...]


def _decision(node: dict[str, Any], where: str) -> _Task:
    """A LightGBM internal node as `<=` tests that reproduce it on finite float64 inputs (see the module docstring)."""
    dt = node.get("decision_type", "<=")
    if dt == "==":
        raise ModelError("LightGBM model has categorical splits, which are not supported exactly; one-hot encode the feature or use the black-box path")
    if dt != "<=":
        raise ModelError(f"LightGBM {where}: decision_type {dt!r} is not supported")
    try:
        f = int(node["split_feature"])
        t = float(node["threshold"])
        left, right = node["left_child"], node["right_child"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"LightGBM {where}: missing or invalid split field ({first_line(exc)}); the model file is malformed") from None
    if not math.isfinite(t):
        raise ModelError(f"LightGBM {where}: threshold {t!r} is not finite; the model file is malformed")
    missing = str(node.get("missing_type", "None"))
    if missing not in ("None", "NaN", "Zero"):
        raise ModelError(f"LightGBM {where}: missing_type {missing!r} is not supported")
    L, R = ("node", left), ("node", right)
    kz, nz = K_ZERO_THRESHOLD, BELOW_ZERO_REGION
    # where the zero region Z = [-kz, kz] goes: the default side for "Zero", else as the value 0 does
    z_left = bool(node.get("default_left", True)) if missing == "Zero" else t >= 0.0
    if t >= kz:  # the plain test sends all of Z left
        return ("test", f, t, L, R) if z_left else ("test", f, nz, L, ("test", f, kz, R, ("test", f, t, L, R)))
    if t < -kz:  # the plain test sends all of Z right
        return ("test", f, t, L, R) if not z_left else ("test", f, t, L, ("test", f, nz, R, ("test", f, kz, L, R)))
    # -kz <= t < kz: outside Z the test is x < -kz ⇒ left, x > kz ⇒ right; Z goes as a whole
    return ("test", f, kz if z_left else nz, L, R)


def _lgb_tree(tj: Any, index: int, out: int, n_outputs: int, scale: float, n_features: int) -> Tree:
    """Tree `index` of the dump as a Tree (leaves feeding output `out`, times `scale`); splits on a
    feature whose side is already decided by an ancestor are dropped (keeps the Zero encoding small)."""
    if not isinstance(tj, dict) or not isinstance(tj.get("tree_structure"), dict):
        raise ModelError(f"LightGBM dump: tree {index} has no tree_structure; the model file is malformed")
    if int(tj.get("num_cat", 0) or 0) > 0:
        raise ModelError("LightGBM model has categorical splits, which are not supported exactly; one-hot encode the feature or use the black-box path")
    feature: list[int] = []
    threshold: list[float] = []
    left: list[int] = []
    right: list[int] = []
    leaf_val: list[float] = []
    # (task, bounds {feature: (lo, hi)} meaning lo < x <= hi, parent index, True if left child)
    stack: list[tuple[_Task, dict[int, tuple[float, float]], int, bool]] = [(("node", tj["tree_structure"]), {}, -1, True)]
    where = f"tree {index}"
    while stack:
        task, bounds, parent, is_left = stack.pop()
        while True:  # resolve the task to a leaf or an undecided test
            if task[0] == "node":
                nd = task[1]
                if not isinstance(nd, dict):
                    raise ModelError(f"LightGBM {where}: a node is not an object; the model file is malformed")
                if "split_feature" not in nd and "leaf_value" in nd:
                    break
                task = _decision(nd, where)
                continue
            _, f, s, lt, rt = task
            lo, hi = bounds.get(f, (-math.inf, math.inf))
            if hi <= s:
                task = lt
            elif lo >= s:
                task = rt
            else:
                break
        i = len(feature)
        if i >= MAX_NODES:
            raise ModelError(f"LightGBM {where}: more than {MAX_NODES} nodes after encoding zero-as-missing splits; too large for the exact path")
        if parent >= 0:
            (left if is_left else right)[parent] = i
        if task[0] == "node":
            leaf = task[1]
            if "leaf_coeff" in leaf or "leaf_features" in leaf:
                raise ModelError("LightGBM model has linear trees (linear_tree=True), which are not supported exactly; use the black-box path")
            try:
                v = float(leaf["leaf_value"])
            except (TypeError, ValueError):
                raise ModelError(f"LightGBM {where}: leaf_value is not a number; the model file is malformed") from None
            feature.append(-1)
            threshold.append(0.0)
            left.append(-1)
            right.append(-1)
            leaf_val.append(v)
            continue
        _, f, s, lt, rt = task
        if not 0 <= f < n_features:
            raise ModelError(f"LightGBM {where}: split feature {f} out of range [0, {n_features}); the model file is malformed")
        feature.append(f)
        threshold.append(s)
        left.append(-1)
        right.append(-1)
        leaf_val.append(0.0)
        lo, hi = bounds.get(f, (-math.inf, math.inf))
        stack.append((rt, {**bounds, f: (max(lo, s), hi)}, i, False))
        stack.append((lt, {**bounds, f: (lo, min(hi, s))}, i, True))
    n = len(feature)
    value = np.zeros((n, n_outputs), dtype=np.float64)
    value[:, out] = np.asarray(leaf_val, dtype=np.float64) * scale if scale != 1.0 else np.asarray(leaf_val, dtype=np.float64)
    feat = np.asarray(feature, dtype=np.int64)
    value[feat >= 0] = 0.0
    return Tree(feature=feat, threshold=np.asarray(threshold, dtype=np.float64), left=np.asarray(left, dtype=np.int64),
                right=np.asarray(right, dtype=np.int64), value=value)


def is_lightgbm_dump(doc: Any) -> bool:
    """True for a `Booster.dump_model()` dict (name "tree" with a "tree_info" list); never for XGBoost JSON."""
    return isinstance(doc, dict) and doc.get("name") == "tree" and isinstance(doc.get("tree_info"), list) and "learner" not in doc


def parse_lightgbm_dump(doc: Any, source: str = "lightgbm-json") -> TreeEnsemble:
    """A validated float64 TreeEnsemble from `Booster.dump_model()`; ModelError (one line) when not expressible."""
    if not is_lightgbm_dump(doc):
        raise ModelError("not a LightGBM model dump: expected Booster.dump_model() output (name 'tree' with 'tree_info')")
    objective, k, sigmoid = parse_objective(doc.get("objective", ""))
    try:
        n_features = int(doc["max_feature_idx"]) + 1
        per_iter = int(doc.get("num_tree_per_iteration", 1))
        num_class = int(doc.get("num_class", 1))
        average = bool(doc.get("average_output", False))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"LightGBM dump: missing or invalid field ({first_line(exc)}); the model file is malformed") from None
    trees_json = doc["tree_info"]
    if not trees_json:
        raise ModelError("LightGBM model has no trees; train it first")
    if n_features < 1:
        raise ModelError(f"LightGBM dump: max_feature_idx gives {n_features} features; the model file is malformed")
    link: Literal["logistic", "softmax"]
    if objective == "binary":
        n_outputs, link, scale = 1, "logistic", sigmoid
        if per_iter != 1:
            raise ModelError(f"LightGBM dump: binary objective with {per_iter} trees per iteration; the model file is malformed")
    else:
        n_outputs, link = k, "softmax"
        scale = sigmoid if objective == "multiclassova" else 1.0
        if per_iter != k or num_class != k:
            raise ModelError(f"LightGBM dump: {objective} with {k} classes but {per_iter} trees per iteration; the model file is malformed")
    if len(trees_json) % per_iter:
        raise ModelError(f"LightGBM dump: {len(trees_json)} trees is not a multiple of {per_iter} per iteration; the model file is truncated")
    if average and n_outputs > 1:
        scale *= n_outputs  # mean over all trees = (sum per class) / iterations
    trees = tuple(_lgb_tree(tj, i, i % per_iter if n_outputs > 1 else 0, n_outputs, scale, n_features) for i, tj in enumerate(trees_json))
    ens = TreeEnsemble(
        trees=trees, n_features=n_features, n_classes=k, n_outputs=n_outputs, strict=False, bias=np.zeros(n_outputs),
        combine="mean" if average else "sum", link=link, source=source, threshold_dtype="float64",
        meta={"library": "lightgbm", "objective": objective, "sigmoid": sigmoid, "average_output": average,
              "model_version": str(doc.get("version", "")),
              "probabilities": "per-class sigmoids normalised (LightGBM multiclassova); the parse's softmax has the same argmax"
              if objective == "multiclassova" else "as LightGBM"},
    )
    return check_reachable(check_tree_caps(ens.validate()))


__all__ = ["BELOW_ZERO_REGION", "CLASSIFIER_OBJECTIVES", "K_ZERO_THRESHOLD", "is_lightgbm_dump", "parse_lightgbm_dump", "parse_objective"]
