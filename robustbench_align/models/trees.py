"""Tree-ensemble model families (XGBoost, random forests, gradient boosting) and their library-independent parse.

Three sklearn-style estimators (`XGBoostModel`, `RandomForestModel`, `GradientBoostingModel`) satisfy
the Model contract with the library's own `predict_proba`/`predict`, and expose `tree_ensemble()`: a
parsed `TreeEnsemble` (split feature, float32 threshold, comparison rule, children, leaf values per
output, bias) that the exact attacks solve against without touching the library.

Parsing rules (spec `tree-attacks-and-data.md` §2.2-§2.4):
- XGBoost is read from `json.loads(bytearray(booster.save_raw('json')))`. Left iff float32(x) < thr
  (`strict=True`); the leaf value is `split_conditions[leaf]`; tree i feeds output `tree_info[i]`;
  boosted rounds, `num_parallel_tree` forests (XGBRF) and DART weights all sum. The intercept is not
  taken from `base_score` (probability or margin space depending on objective and version) but
  measured: bias = library margin − Σ parsed leaves on probe points placed at, just below and just
  above every threshold, and it must be the same on every probe (within float32 rounding), which
  also checks the parse itself. Categorical splits and multi-output trees are refused.
- scikit-learn compares float32(x) <= thr64. The stored float32 threshold is the largest float32
  <= thr64, so `x32 <= t32` holds exactly when sklearn's `x32 <= thr64` does (`strict=False`).
  Forests (RandomForest, ExtraTrees, a single DecisionTree) average per-leaf class fractions
  (combine "mean", link "identity", one output per class even for binary). Gradient boosting has
  the learning rate folded into the leaf values and the init estimator's raw prediction measured
  as the bias, like XGBoost; for `loss='exponential'` raw values are doubled so that the logistic
  link gives sklearn's probabilities.
- Missing values are not supported: XGBoost's `default_left` and sklearn's missing-value routing
  are ignored, and every Model here rejects NaN/inf inputs (impute first).

Ties at the decision boundary can differ from the library's own `predict` (sklearn GBDT predicts
class 1 at raw == 0, XGBoost compares a float32 probability with 0.5); the models' `predict` is
always the library's, and attacks re-check candidates with it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator

from ..errors import DataError, ModelError
from .base import Model, FittedModel, Tree, TreeEnsemble, check_training_data

log = logging.getLogger(__name__)

XGB_FILE = "xgboost.json"  # not "model.json": that name is the persistence manifest
SKOPS_FILE = "estimator.skops"
META_FILE = "trees.json"
ENSEMBLE_FORMAT = "robustbench_align.tree_ensemble"
ENSEMBLE_FORMAT_VERSION = 1
XGB_OBJECTIVES = ("binary:logistic", "binary:logitraw", "multi:softprob", "multi:softmax")
_EPS32 = float(np.finfo(np.float32).eps)
_N_PROBES = 256


# ----------------------------------------------------------------------------------------
# Shared numerics
# ----------------------------------------------------------------------------------------
def float32_floor(values: Any) -> np.ndarray:
    """Largest float32 <= each float64 value, so `float32(x) <= result` iff `float32(x) <= value`."""
    v = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        t = v.astype(np.float32)
    over = t.astype(np.float64) > v
    t[over] = np.nextafter(t[over], np.float32(-np.inf))
    return t


def probe_points(trees: tuple[Tree, ...] | list[Tree], n_features: int, n: int = _N_PROBES, seed: int = 0) -> np.ndarray:
    """Random rows whose coordinates are thresholds of the ensemble or their float32 neighbours (0 if unsplit).

    Used to measure intercepts and to check a parse against the library: rows sit exactly on
    comparison boundaries, so a wrong `<`/`<=` rule or threshold rounding changes their leaves.
    Returned as float64 holding float32-exact values.
    """
    feats = np.concatenate([t.feature[t.left >= 0] for t in trees]) if trees else np.zeros(0, np.int64)
    thrs = np.concatenate([t.threshold[t.left >= 0] for t in trees]) if trees else np.zeros(0, np.float32)
    rng = np.random.default_rng(seed)
    P = np.zeros((n, n_features), dtype=np.float64)
    for f in np.unique(feats):
        t = np.unique(thrs[feats == f].astype(np.float32))
        cands = np.concatenate([t, np.nextafter(t, np.float32(-np.inf)), np.nextafter(t, np.float32(np.inf))])
        cands = cands[np.isfinite(cands)]
        if cands.size:
            P[:, f] = rng.choice(cands, size=n).astype(np.float64)
    return P


def _path_magnitude(ens: TreeEnsemble, X: np.ndarray) -> np.ndarray:
    """Per row and output: Σ_t |leaf value| (the scale that bounds float32 summation error)."""
    X32 = np.asarray(X, dtype=np.float32)
    acc = np.zeros((X32.shape[0], ens.n_outputs))
    for t in ens.trees:
        acc += np.abs(t.value[t.leaf_index(X32, ens.strict)])
    return acc


def _measure_bias(ens: TreeEnsemble, X: np.ndarray, library_raw: np.ndarray, who: str, rel: float) -> np.ndarray:
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
    bias = np.median(diff, axis=0)
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


# ----------------------------------------------------------------------------------------
# XGBoost JSON
# ----------------------------------------------------------------------------------------
def _int_array(x: Any, what: str) -> np.ndarray:
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise ModelError(f"XGBoost JSON: {what} is not a list of integers; the model file is malformed") from None
    if a.ndim != 1 or not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
        raise ModelError(f"XGBoost JSON: {what} is not a list of integers; the model file is malformed")
    return a.astype(np.int64)


def _float_array(x: Any, what: str) -> np.ndarray:
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
    if not isinstance(tj, dict):
        raise ModelError(f"XGBoost JSON: tree {index} is not an object; the model file is malformed")
    try:
        left = _int_array(tj["left_children"], f"tree {index} left_children")
        right = _int_array(tj["right_children"], f"tree {index} right_children")
        split_idx = _int_array(tj["split_indices"], f"tree {index} split_indices")
        cond = _float_array(tj["split_conditions"], f"tree {index} split_conditions")
    except KeyError as exc:
        raise ModelError(f"XGBoost JSON: tree {index} lacks {exc.args[0]!r}; the model file is malformed") from None
    n = left.size
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
        st = _int_array(stype, f"tree {index} split_type")
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


def _parse_xgboost_doc(doc: Any, n_iterations: int | None = None, source: str = "xgboost") -> TreeEnsemble:
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
        raise ModelError(f"XGBoost JSON: missing or invalid field ({type(exc).__name__}: {exc}); the model file is malformed") from None
    if objective not in XGB_OBJECTIVES:
        raise ModelError(f"XGBoost objective {objective!r} is not supported; use one of {', '.join(XGB_OBJECTIVES)} (a classifier)")
    if booster_name == "gblinear":
        raise ModelError("XGBoost booster 'gblinear' is a linear model, not a tree ensemble; use booster='gbtree'")
    weights = None
    try:
        if booster_name == "dart":
            model = gb["gbtree"]["model"]
            weights = _float_array(gb["weight_drop"], "weight_drop")
        elif booster_name == "gbtree":
            model = gb["model"]
        else:
            raise ModelError(f"XGBoost booster {booster_name!r} is not supported; use 'gbtree' or 'dart'")
        trees_json = model["trees"]
        tree_info = _int_array(model["tree_info"], "tree_info")
        n_features = int(mp["num_feature"])
        num_class = int(mp.get("num_class", "0"))
        num_target = int(mp.get("num_target", "1"))
        indptr = model.get("iteration_indptr")
    except ModelError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelError(f"XGBoost JSON: missing or invalid field ({type(exc).__name__}: {exc}); the model file is malformed") from None
    if num_target > 1:
        raise ModelError("XGBoost model has several targets; only single-target classifiers are supported")
    if not isinstance(trees_json, list) or len(trees_json) == 0:
        raise ModelError("XGBoost model has no trees; train it first")
    if n_features < 1:
        raise ModelError(f"XGBoost JSON: num_feature is {n_features}; the model file is malformed")
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
        ip = _int_array(indptr, "iteration_indptr")
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
    _check_reachable(ens.validate())
    return ens


def _check_reachable(ens: TreeEnsemble) -> TreeEnsemble:
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


# ----------------------------------------------------------------------------------------
# Library-independent JSON (persistence, tests)
# ----------------------------------------------------------------------------------------
def tree_ensemble_to_json(ens: TreeEnsemble) -> dict[str, Any]:
    """A JSON-ready dict of a TreeEnsemble; thresholds and values round-trip bit-exactly."""
    return {
        "format": ENSEMBLE_FORMAT,
        "version": ENSEMBLE_FORMAT_VERSION,
        "n_features": int(ens.n_features),
        "n_classes": int(ens.n_classes),
        "n_outputs": int(ens.n_outputs),
        "strict": bool(ens.strict),
        "combine": ens.combine,
        "link": ens.link,
        "bias": [float(b) for b in np.asarray(ens.bias, dtype=np.float64).ravel()],
        "source": ens.source,
        "meta": json.loads(json.dumps(ens.meta, default=str)),
        "trees": [
            {
                "feature": t.feature.astype(int).tolist(),
                "threshold": t.threshold.astype(np.float64).tolist(),
                "left": t.left.astype(int).tolist(),
                "right": t.right.astype(int).tolist(),
                "value": t.value.astype(np.float64).tolist(),
            }
            for t in ens.trees
        ],
    }


def tree_ensemble_from_json(doc: Any) -> TreeEnsemble:
    """A validated TreeEnsemble from `tree_ensemble_to_json` output or from an XGBoost model JSON.

    For XGBoost JSON the bias comes from `base_score` (no library at hand to measure it); use
    `parse_xgboost` on a loaded booster for the measured intercept. Raises ModelError on any
    malformed structure (cycles, out-of-range children or features, NaN thresholds, ...).
    """
    if isinstance(doc, dict) and "learner" in doc:
        return _parse_xgboost_doc(doc, source="xgboost-json")
    if not isinstance(doc, dict) or doc.get("format") != ENSEMBLE_FORMAT:
        raise ModelError(f"not a tree-ensemble JSON: expected an XGBoost model or format {ENSEMBLE_FORMAT!r}")
    if doc.get("version") != ENSEMBLE_FORMAT_VERSION:
        raise ModelError(f"tree-ensemble JSON version {doc.get('version')!r} is not supported (expected {ENSEMBLE_FORMAT_VERSION})")
    try:
        n_outputs = int(doc["n_outputs"])
        trees = []
        for i, tj in enumerate(doc["trees"]):
            value = np.asarray(tj["value"], dtype=np.float64)
            feature = _int_array(tj["feature"], f"tree {i} feature")
            if value.ndim != 2 or value.shape != (feature.size, n_outputs):
                raise ModelError(f"tree-ensemble JSON: tree {i} value must have shape ({feature.size}, {n_outputs})")
            thr = np.asarray(tj["threshold"], dtype=np.float64)
            if thr.shape != feature.shape:
                raise ModelError(f"tree-ensemble JSON: tree {i} threshold has the wrong length")
            with np.errstate(over="ignore", invalid="ignore"):
                thr32 = thr.astype(np.float32)
            left, right = _int_array(tj["left"], f"tree {i} left"), _int_array(tj["right"], f"tree {i} right")
            if not (left.size == right.size == feature.size):
                raise ModelError(f"tree-ensemble JSON: tree {i} node arrays have different lengths")
            trees.append(Tree(feature=feature, threshold=thr32, left=left, right=right, value=value))
        combine, link = str(doc["combine"]), str(doc["link"])
        if combine not in ("sum", "mean") or link not in ("logistic", "softmax", "identity"):
            raise ModelError(f"tree-ensemble JSON: combine {combine!r} / link {link!r} not recognised")
        bias = np.asarray(doc["bias"], dtype=np.float64).ravel()
        if bias.size != n_outputs or not np.all(np.isfinite(bias)):
            raise ModelError(f"tree-ensemble JSON: bias must hold {n_outputs} finite numbers")
        ens = TreeEnsemble(
            trees=tuple(trees), n_features=int(doc["n_features"]), n_classes=int(doc["n_classes"]), n_outputs=n_outputs,
            strict=bool(doc["strict"]), bias=bias, combine=combine, link=link,  # type: ignore[arg-type]
            source=str(doc.get("source", "")), meta=dict(doc.get("meta") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ModelError):
            raise
        raise ModelError(f"tree-ensemble JSON: missing or invalid field ({type(exc).__name__}: {exc}); the file is malformed") from None
    if not ens.trees:
        raise ModelError("tree-ensemble JSON: no trees")
    if ens.n_outputs not in (1, ens.n_classes) or ens.n_classes < 2:
        raise ModelError(f"tree-ensemble JSON: n_outputs={ens.n_outputs} does not fit n_classes={ens.n_classes}")
    return _check_reachable(ens.validate())


# ----------------------------------------------------------------------------------------
# XGBoost objects
# ----------------------------------------------------------------------------------------
def _xgb() -> Any:
    try:
        import xgboost
    except ImportError:  # pragma: no cover
        raise ModelError("XGBoost models need xgboost: pip install xgboost-cpu") from None
    return xgboost


def _xgb_parts(obj: Any) -> tuple[Any, Any, int | None]:
    """(booster, classifier or None, iterations used by predict or None) of an XGBoost object."""
    xgb = _xgb()
    if isinstance(obj, xgb.XGBModel):
        if not isinstance(obj, xgb.XGBClassifier):
            raise ModelError(f"{type(obj).__name__} is not a classifier; wrap an XGBClassifier, XGBRFClassifier or a classification Booster")
        if not obj.__sklearn_is_fitted__():
            raise ModelError(f"{type(obj).__name__} is not fitted; fit it first")
        missing = getattr(obj, "missing", np.nan)
        if missing is not None and not (_is_num_or_nan(missing) and math.isnan(float(missing))):
            raise ModelError(
                f"{type(obj).__name__} treats the value {missing!r} as missing, which routes it by default_left; "
                "only missing=nan (and finite inputs) is supported"
            )
        booster = obj.get_booster()
        try:
            n_iter: int | None = int(obj.best_iteration) + 1  # the sklearn API predicts with the best iteration
        except AttributeError:
            n_iter = None
        return booster, obj, n_iter
    if isinstance(obj, xgb.Booster):
        try:
            rounds = obj.num_boosted_rounds()
        except xgb.core.XGBoostError:
            rounds = 0
        if rounds == 0:
            raise ModelError("the XGBoost Booster has no trees; train it first (xgboost.train) or load a model")
        return obj, None, None
    raise ModelError(f"cannot read a {type(obj).__name__} as an XGBoost model; pass an XGBClassifier or a Booster")


def _is_num_or_nan(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _xgb_objective(booster: Any) -> tuple[str, int]:
    cfg = json.loads(booster.save_config())
    learner = cfg["learner"]
    objective = str(learner["objective"]["name"])
    k = int(learner["learner_model_param"].get("num_class", "0"))
    return objective, (k if objective.startswith("multi:") else 2)


def _xgb_margin(booster: Any, clf: Any, X: np.ndarray) -> np.ndarray:
    if clf is not None:
        m = clf.predict(X, output_margin=True)
    else:
        m = booster.inplace_predict(X, predict_type="margin", validate_features=False)
    return np.asarray(m, dtype=np.float64).reshape(X.shape[0], -1)


def parse_xgboost(obj: Any) -> TreeEnsemble:
    """Parse an XGBClassifier/XGBRFClassifier or classification Booster into a validated TreeEnsemble.

    The intercept is measured against the library's margins on probe rows around every threshold
    and must be constant there (within float32 summation error), which also checks the parse.
    """
    booster, clf, n_iter = _xgb_parts(obj)
    doc = json.loads(bytearray(booster.save_raw("json")))
    xgb = _xgb()
    source = f"xgboost.{type(obj).__name__}"
    ens = _parse_xgboost_doc(doc, n_iterations=n_iter, source=source)
    P = probe_points(ens.trees, ens.n_features)
    bias = _measure_bias(ens, P, _xgb_margin(booster, clf, P), f"parse_xgboost({type(obj).__name__})", rel=_EPS32)
    gap = float(np.abs(bias - ens.bias).max())
    if gap > 1e-5:
        log.debug("parse_xgboost: measured intercept differs from base_score by %.3g (objective %s)", gap, ens.meta["objective"])
    meta = {**ens.meta, "library_version": xgb.__version__, "base_score_bias": [float(b) for b in ens.bias]}
    return dataclasses.replace(ens, bias=bias, meta=meta).validate()


def _xgb_predict_proba(booster: Any, clf: Any, objective: str, X: np.ndarray) -> np.ndarray:
    if clf is not None:
        return np.asarray(clf.predict_proba(X), dtype=np.float64)
    if objective == "binary:logistic":
        p1 = np.asarray(booster.inplace_predict(X, validate_features=False), dtype=np.float64).reshape(-1)
        return np.stack([1.0 - p1, p1], axis=1)
    if objective == "multi:softprob":
        return np.asarray(booster.inplace_predict(X, validate_features=False), dtype=np.float64).reshape(X.shape[0], -1)
    m = _xgb_margin(booster, None, X)
    if objective == "binary:logitraw":
        p1 = 1.0 / (1.0 + np.exp(-m[:, 0]))
        return np.stack([1.0 - p1, p1], axis=1)
    z = np.exp(m - m.max(axis=1, keepdims=True))  # multi:softmax: the library returns labels only
    return z / z.sum(axis=1, keepdims=True)


def _xgb_predict(booster: Any, clf: Any, objective: str, X: np.ndarray) -> np.ndarray:
    if clf is not None:
        return np.asarray(clf.predict(X)).astype(np.int64)
    p = _xgb_predict_proba(booster, None, objective, X)
    if p.shape[1] == 2:
        return (p[:, 1] > 0.5).astype(np.int64)
    return np.argmax(p, axis=1).astype(np.int64)


class WrappedXGBoost(Model):
    """A fitted XGBClassifier/XGBRFClassifier or classification Booster: library predictions plus `tree_ensemble()`."""

    def __init__(self, obj: Any, name: str | None = None):
        booster, clf, _ = _xgb_parts(obj)
        objective, k = _xgb_objective(booster)
        if objective not in XGB_OBJECTIVES:
            raise ModelError(f"XGBoost objective {objective!r} is not a supported classifier objective; use one of {', '.join(XGB_OBJECTIVES)}")
        self.obj, self.booster, self.clf, self.objective = obj, booster, clf, objective
        self._d = int(booster.num_features())
        self._c = int(k)
        self.name = name or type(obj).__name__
        self._ensemble: TreeEnsemble | None = None

    @property
    def n_features(self) -> int:
        return self._d

    @property
    def n_classes(self) -> int:
        return self._c

    def predict_proba(self, X: Any) -> np.ndarray:
        return _xgb_predict_proba(self.booster, self.clf, self.objective, self._check_X(X))

    def predict(self, X: Any) -> np.ndarray:
        return _xgb_predict(self.booster, self.clf, self.objective, self._check_X(X))

    def decision_function(self, X: Any) -> np.ndarray:
        """The library's margins, shape (n, 1) for binary and (n, K) for multiclass."""
        X = self._check_X(X)
        return _xgb_margin(self.booster, self.clf, X)

    def tree_ensemble(self) -> TreeEnsemble:
        if self._ensemble is None:
            self._ensemble = parse_xgboost(self.obj)
        return self._ensemble


def wrap_xgboost(obj: Any, name: str | None = None) -> Model:
    """A Model for a fitted XGBClassifier/XGBRFClassifier or Booster (library predictions, tree_ensemble())."""
    return WrappedXGBoost(obj, name=name)


# ----------------------------------------------------------------------------------------
# scikit-learn
# ----------------------------------------------------------------------------------------
def _sk_tree(tree_: Any, n_outputs: int, value: np.ndarray) -> Tree:
    left = np.asarray(tree_.children_left, dtype=np.int64)
    right = np.asarray(tree_.children_right, dtype=np.int64)
    internal = left >= 0
    feature = np.where(internal, np.asarray(tree_.feature, dtype=np.int64), -1)
    threshold = np.where(internal, float32_floor(np.where(internal, tree_.threshold, 0.0)), np.float32(0)).astype(np.float32)
    v = np.zeros((left.size, n_outputs), dtype=np.float64)
    v[~internal] = value[~internal]
    return Tree(feature=feature, threshold=threshold, left=np.where(internal, left, -1), right=np.where(internal, right, -1), value=v)


def _require_sk_fitted(est: Any) -> None:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(est)
    except NotFittedError:
        raise ModelError(f"{type(est).__name__} is not fitted; fit it first") from None


def _leaf_fractions(tree_: Any, k: int) -> np.ndarray:
    """Per-node class fractions as sklearn's predict_proba returns them (counts normalised if needed)."""
    v = np.asarray(tree_.value, dtype=np.float64)[:, 0, :k]
    s = v.sum(axis=1, keepdims=True)
    leaves = np.asarray(tree_.children_left) < 0
    if np.allclose(s[leaves], 1.0, rtol=0, atol=1e-9):
        return v.copy()  # fractions (scikit-learn >= 1.4.1): used as stored
    log.debug("leaf values are class counts (scikit-learn < 1.4.1); normalising them as predict_proba does")
    s = np.where(s == 0.0, 1.0, s)
    return v / s


def parse_sklearn_forest(est: Any) -> TreeEnsemble:
    """RandomForest/ExtraTrees classifier (or one DecisionTreeClassifier) as a mean of leaf class fractions."""
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    if not isinstance(est, (RandomForestClassifier, ExtraTreesClassifier, DecisionTreeClassifier)):
        raise ModelError(f"parse_sklearn_forest: {type(est).__name__} is not a RandomForest/ExtraTrees/DecisionTree classifier")
    _require_sk_fitted(est)
    if int(getattr(est, "n_outputs_", 1)) != 1:
        raise ModelError(f"{type(est).__name__} predicts several outputs; only single-output classifiers are supported")
    members = [est] if isinstance(est, DecisionTreeClassifier) else list(est.estimators_)
    k = int(est.n_classes_)
    d = int(est.n_features_in_)
    trees = tuple(_sk_tree(m.tree_, k, _leaf_fractions(m.tree_, k)) for m in members)
    import sklearn

    ens = TreeEnsemble(
        trees=trees, n_features=d, n_classes=k, n_outputs=k, strict=False, bias=np.zeros(k), combine="mean",
        link="identity", source=f"sklearn.{type(est).__name__}",
        meta={"library": "scikit-learn", "library_version": sklearn.__version__, "classes": [str(c) for c in est.classes_]},
    ).validate()
    P = probe_points(ens.trees, d)
    bias = _measure_bias(ens, P, _quiet(est.predict_proba, P), f"parse_sklearn_forest({type(est).__name__})", rel=1e-12)
    if np.abs(bias).max() > 1e-9:
        raise ModelError(f"parse_sklearn_forest: {type(est).__name__} probabilities are not the mean of its leaf fractions; not supported")
    return ens


def parse_sklearn_gbdt(est: Any) -> TreeEnsemble:
    """GradientBoostingClassifier: learning rate folded into leaves, init raw prediction measured as the bias."""
    from sklearn.ensemble import GradientBoostingClassifier

    if not isinstance(est, GradientBoostingClassifier):
        raise ModelError(f"parse_sklearn_gbdt: {type(est).__name__} is not a GradientBoostingClassifier")
    _require_sk_fitted(est)
    k = int(est.n_classes_)
    d = int(est.n_features_in_)
    stages = np.asarray(est.estimators_, dtype=object)
    per = stages.shape[1]
    n_outputs = 1 if k == 2 else k
    if per != n_outputs:
        raise ModelError(f"{type(est).__name__}: {per} trees per stage for {k} classes; this layout is not supported")
    scale = 2.0 if est.loss == "exponential" else 1.0  # sklearn: p = expit(2 raw) for the exponential loss
    lr = float(est.learning_rate)
    trees = []
    for i in range(stages.shape[0]):
        for j in range(per):
            t = stages[i, j].tree_
            v = np.zeros((t.node_count, n_outputs))
            v[:, j] = (lr * np.asarray(t.value, dtype=np.float64)[:, 0, 0]) * scale
            trees.append(_sk_tree(t, n_outputs, v))
    import sklearn

    ens = TreeEnsemble(
        trees=tuple(trees), n_features=d, n_classes=k, n_outputs=n_outputs, strict=False, bias=np.zeros(n_outputs),
        combine="sum", link="logistic" if n_outputs == 1 else "softmax", source=f"sklearn.{type(est).__name__}",
        meta={"library": "scikit-learn", "library_version": sklearn.__version__, "loss": str(est.loss), "raw_scale": scale,
              "classes": [str(c) for c in est.classes_]},
    ).validate()
    P = probe_points(ens.trees, d)
    raw = np.asarray(_quiet(est.decision_function, P), dtype=np.float64).reshape(P.shape[0], -1) * scale
    bias = _measure_bias(ens, P, raw, f"parse_sklearn_gbdt({type(est).__name__})", rel=1e-13)
    return dataclasses.replace(ens, bias=bias).validate()


def parse_sklearn(est: Any) -> TreeEnsemble:
    """Dispatch a fitted scikit-learn tree classifier to its parser."""
    from sklearn.ensemble import GradientBoostingClassifier

    if isinstance(est, GradientBoostingClassifier):
        return parse_sklearn_gbdt(est)
    return parse_sklearn_forest(est)


def _is_sk_tree_classifier(est: Any) -> bool:
    from sklearn.ensemble import ExtraTreesClassifier, GradientBoostingClassifier, RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier

    return isinstance(est, (RandomForestClassifier, ExtraTreesClassifier, DecisionTreeClassifier, GradientBoostingClassifier))


def _quiet(fn: Any, X: np.ndarray) -> Any:
    """Call an sklearn method on a plain array without the 'no feature names' warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="X does not have valid feature names")
        return fn(X)


def _label_indices(classes: np.ndarray, labels: Any, who: str) -> np.ndarray:
    """Map predicted labels to their index in `classes` (the predict_proba column order)."""
    labels = np.asarray(labels)
    order = np.argsort(classes, kind="stable")
    pos = np.searchsorted(classes, labels, sorter=order)
    pos = np.clip(pos, 0, classes.size - 1)
    idx = order[pos]
    if not np.all(classes[idx] == labels):
        raise ModelError(f"{who}: predict returned labels that are not in classes_; the estimator is inconsistent")
    return idx.astype(np.int64)


class WrappedSklearn(Model):
    """A fitted scikit-learn classifier with predict_proba, attacked as a black box.

    `predict` is the estimator's own, mapped to class indices 0..K-1 in `classes_` order (the
    column order of predict_proba).
    """

    def __init__(self, est: Any, name: str | None = None, n_features: int | None = None):
        if isinstance(est, BaseEstimator):
            _require_sk_fitted(est)
        if not callable(getattr(est, "predict_proba", None)):
            raise ModelError(
                f"{type(est).__name__} has no predict_proba; enable it (e.g. SVC(probability=True)) or wrap a predict_proba callable with n_features="
            )
        d = getattr(est, "n_features_in_", None)
        if d is None:
            d = n_features
        elif n_features is not None and int(n_features) != int(d):
            raise ModelError(f"wrap: n_features={n_features} but the estimator was fitted on {d} features")
        if d is None:
            raise ModelError(f"wrap: cannot tell how many features {type(est).__name__} takes; pass n_features=")
        self.est = est
        self._d = int(d)
        classes = getattr(est, "classes_", None)
        if classes is not None:
            if isinstance(classes, list) or np.asarray(classes).ndim != 1:
                raise ModelError(f"{type(est).__name__} has several outputs; only single-output classifiers are supported")
            self.classes_ = np.asarray(classes)
            self._c = int(self.classes_.size)
        else:
            self.classes_ = None
            p = np.asarray(_quiet(est.predict_proba, np.zeros((1, self._d))))
            if p.ndim != 2 or p.shape[1] < 2:
                raise ModelError(f"{type(est).__name__}.predict_proba must return (n, n_classes>=2), got shape {p.shape}")
            self._c = int(p.shape[1])
        if self._c < 2:
            raise ModelError(f"{type(est).__name__} knows a single class; a classifier needs at least two")
        self.name = name or type(est).__name__

    @property
    def n_features(self) -> int:
        return self._d

    @property
    def n_classes(self) -> int:
        return self._c

    def _library(self, method: Any, X: np.ndarray) -> Any:
        try:
            return _quiet(method, X)
        except ValueError as exc:  # e.g. finite float64 values beyond float32 range
            raise ModelError(f"{self.name}: the library refused the input ({str(exc).splitlines()[0][:160]}); keep features within float32 range") from None

    def predict_proba(self, X: Any) -> np.ndarray:
        X = self._check_X(X)
        p = np.asarray(self._library(self.est.predict_proba, X), dtype=np.float64)
        if p.shape != (X.shape[0], self._c):
            raise ModelError(f"{self.name}: predict_proba returned shape {p.shape}, expected {(X.shape[0], self._c)}")
        return p

    def predict(self, X: Any) -> np.ndarray:
        X = self._check_X(X)
        if self.classes_ is None or not callable(getattr(self.est, "predict", None)):
            return np.argmax(self.predict_proba(X), axis=1)
        return _label_indices(self.classes_, self._library(self.est.predict, X), self.name)


class WrappedSklearnTrees(WrappedSklearn):
    """A fitted RandomForest/ExtraTrees/GradientBoosting/DecisionTree classifier: library predictions plus `tree_ensemble()`."""

    def __init__(self, est: Any, name: str | None = None, n_features: int | None = None):
        super().__init__(est, name=name, n_features=n_features)
        self._ensemble: TreeEnsemble | None = None

    def tree_ensemble(self) -> TreeEnsemble:
        if self._ensemble is None:
            self._ensemble = parse_sklearn(self.est)
        return self._ensemble


def wrap_sklearn(obj: Any, name: str | None = None, n_features: int | None = None) -> Model:
    """A Model for a fitted scikit-learn classifier: tree ensembles get tree_ensemble(), others are black boxes."""
    if _is_sk_tree_classifier(obj):
        return WrappedSklearnTrees(obj, name=name, n_features=n_features)
    return WrappedSklearn(obj, name=name, n_features=n_features)


# ----------------------------------------------------------------------------------------
# Estimators of the registry
# ----------------------------------------------------------------------------------------
def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(float(v))


class _TreeEstimator(BaseEstimator, FittedModel):
    """Shared fit checks, Model contract and cached tree_ensemble() of the three tree families."""

    _fitted_attr = "estimator_"

    name = "trees"

    def _check_params(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _fit_library(self, X: np.ndarray, y: np.ndarray, k: int) -> Any:  # pragma: no cover - overridden
        raise NotImplementedError

    def _parse(self) -> TreeEnsemble:  # pragma: no cover - overridden
        raise NotImplementedError

    def fit(self, X: Any, y: Any) -> "_TreeEstimator":
        """Fit the library model on (X, y); labels are integers 0..K-1, every class present."""
        self._check_params()
        who = type(self).__name__
        X, y, k = check_training_data(X, y, f"{who}.fit")
        missing = sorted(set(range(k)) - set(np.unique(y).tolist()))
        if missing:
            raise DataError(f"{who}.fit: class(es) {missing[:5]} of 0..{k - 1} have no training rows; re-encode labels as 0..K-1 without gaps")
        self.__dict__.pop("_ensemble", None)
        self.estimator_ = self._fit_library(X, y, k)
        self.n_features_in_ = int(X.shape[1])
        self.n_classes_ = int(k)
        self.classes_ = np.arange(k)
        return self

    def tree_ensemble(self) -> TreeEnsemble:
        """The parsed, validated ensemble of the fitted model (parsed once, then cached)."""
        self._require_fitted()
        ens = self.__dict__.get("_ensemble")
        if ens is None:
            ens = self._parse()
            self.__dict__["_ensemble"] = ens
        return ens

    def _write_meta(self, directory: Path, library: str, version: str) -> None:
        meta = {"n_features": self.n_features, "n_classes": self.n_classes, "library": library, "library_version": version}
        (Path(directory) / META_FILE).write_text(json.dumps(meta))

    @classmethod
    def _read_meta(cls, directory: Path) -> tuple[int, int]:
        path = Path(directory) / META_FILE
        if not path.exists():
            raise ModelError(f"{str(directory)!r}: {META_FILE} is missing; re-save the model")
        try:
            meta = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{path}: not valid JSON ({exc})") from None
        d, k = (meta.get("n_features"), meta.get("n_classes")) if isinstance(meta, dict) else (None, None)
        if not (_is_int(d) and d >= 1 and _is_int(k) and k >= 2):
            raise ModelError(f"{path}: n_features/n_classes missing or invalid; re-save the model")
        return int(d), int(k)

    @classmethod
    def _new(cls, params: dict) -> Any:
        try:
            est = cls(**params)
        except TypeError as exc:
            raise ModelError(f"parameters do not match {cls.__name__} ({exc})") from None
        est._check_params()
        return est

    def _restore(self, library_model: Any, d: int, k: int) -> None:
        self.estimator_ = library_model
        self.n_features_in_ = d
        self.n_classes_ = k
        self.classes_ = np.arange(k)


class XGBoostModel(_TreeEstimator):
    """XGBoost classifier (boosted trees, or a random forest with rf=True) with the exact-attack parse.

    `learning_rate=None` means the library default (0.3 boosting, 1.0 for rf=True); `None` for
    subsample/colsample_bynode/min_child_weight/reg_lambda likewise. `num_parallel_tree` grows
    that many trees per boosting round; `rf=True` fits an XGBRFClassifier with `n_estimators`
    trees in one round. `xgb_params` passes further XGBoost parameters verbatim.
    """

    name = "xgb"

    def __init__(
        self,
        n_estimators: int = 100,
        max_depth: int = 4,
        learning_rate: float | None = 0.3,
        rf: bool = False,
        num_parallel_tree: int = 1,
        subsample: float | None = None,
        colsample_bynode: float | None = None,
        min_child_weight: float | None = None,
        reg_lambda: float | None = None,
        tree_method: str = "hist",
        xgb_params: dict | None = None,
        n_jobs: int = 1,
        random_state: int | None = 0,
    ):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.rf = rf
        self.num_parallel_tree = num_parallel_tree
        self.subsample = subsample
        self.colsample_bynode = colsample_bynode
        self.min_child_weight = min_child_weight
        self.reg_lambda = reg_lambda
        self.tree_method = tree_method
        self.xgb_params = xgb_params
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _check_params(self) -> None:
        who = type(self).__name__
        if not (_is_int(self.n_estimators) and self.n_estimators >= 1):
            raise ModelError(f"{who}: n_estimators must be an integer >= 1, got {self.n_estimators!r}")
        if not (_is_int(self.max_depth) and self.max_depth >= 1):
            raise ModelError(f"{who}: max_depth must be an integer >= 1, got {self.max_depth!r}")
        if self.learning_rate is not None and not (_is_num(self.learning_rate) and self.learning_rate > 0):
            raise ModelError(f"{who}: learning_rate must be a positive number or None, got {self.learning_rate!r}")
        if not isinstance(self.rf, (bool, np.bool_)):
            raise ModelError(f"{who}: rf must be True or False, got {self.rf!r}")
        if not (_is_int(self.num_parallel_tree) and self.num_parallel_tree >= 1):
            raise ModelError(f"{who}: num_parallel_tree must be an integer >= 1, got {self.num_parallel_tree!r}")
        if self.rf and self.num_parallel_tree != 1:
            raise ModelError(f"{who}: with rf=True the forest has n_estimators trees; leave num_parallel_tree=1")
        for key in ("subsample", "colsample_bynode"):
            v = getattr(self, key)
            if v is not None and not (_is_num(v) and 0 < v <= 1):
                raise ModelError(f"{who}: {key} must be in (0, 1] or None, got {v!r}")
        for key in ("min_child_weight", "reg_lambda"):
            v = getattr(self, key)
            if v is not None and not (_is_num(v) and v >= 0):
                raise ModelError(f"{who}: {key} must be a number >= 0 or None, got {v!r}")
        if self.tree_method not in ("hist", "approx", "exact"):
            raise ModelError(f"{who}: tree_method must be 'hist', 'approx' or 'exact', got {self.tree_method!r}")
        if self.xgb_params is not None:
            if not isinstance(self.xgb_params, dict) or not all(isinstance(k, str) for k in self.xgb_params):
                raise ModelError(f"{who}: xgb_params must be a dict of XGBoost parameter names to values")
            try:
                json.dumps(self.xgb_params)
            except (TypeError, ValueError):
                raise ModelError(f"{who}: xgb_params must hold JSON values (numbers, strings, lists)") from None
            if self.xgb_params.get("enable_categorical"):
                raise ModelError(f"{who}: categorical splits are not supported; one-hot encode instead of enable_categorical")
        if not (_is_int(self.n_jobs) and self.n_jobs >= 1):
            raise ModelError(f"{who}: n_jobs must be an integer >= 1, got {self.n_jobs!r}")
        if self.random_state is not None and not _is_int(self.random_state):
            raise ModelError(f"{who}: random_state must be an integer or None, got {self.random_state!r}")

    def _make_classifier(self) -> Any:
        xgb = _xgb()
        kw: dict[str, Any] = {
            "n_estimators": int(self.n_estimators),
            "max_depth": int(self.max_depth),
            "tree_method": self.tree_method,
            "n_jobs": int(self.n_jobs),
            "random_state": None if self.random_state is None else int(self.random_state),
        }
        for key in ("learning_rate", "subsample", "colsample_bynode", "min_child_weight", "reg_lambda"):
            v = getattr(self, key)
            if v is not None:
                kw[key] = float(v)
        if not self.rf and self.num_parallel_tree != 1:
            kw["num_parallel_tree"] = int(self.num_parallel_tree)
        kw.update(self.xgb_params or {})
        cls = xgb.XGBRFClassifier if self.rf else xgb.XGBClassifier
        try:
            return cls(**kw)
        except TypeError as exc:
            raise ModelError(f"{type(self).__name__}: invalid XGBoost parameters ({exc})") from None

    def _fit_library(self, X: np.ndarray, y: np.ndarray, k: int) -> Any:
        clf = self._make_classifier()
        try:
            clf.fit(X, y)
        except Exception as exc:  # xgboost reports bad parameters as XGBoostError/ValueError
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelError(f"{type(self).__name__}.fit: XGBoost failed ({first})") from None
        _xgb_objective_ok(clf)
        return clf

    def _parse(self) -> TreeEnsemble:
        return parse_xgboost(self.estimator_)

    def predict_proba(self, X: Any) -> np.ndarray:
        """The XGBClassifier's own probabilities, as float64."""
        self._require_fitted()
        return np.asarray(self.estimator_.predict_proba(self._check_X(X)), dtype=np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """The XGBClassifier's own predictions (class indices)."""
        self._require_fitted()
        return np.asarray(self.estimator_.predict(self._check_X(X))).astype(np.int64)

    def decision_function(self, X: Any) -> np.ndarray:
        """The library's margins, shape (n, 1) for binary and (n, K) for multiclass."""
        self._require_fitted()
        X = self._check_X(X)
        return _xgb_margin(self.estimator_.get_booster(), self.estimator_, X)

    def _save_state(self, directory: Path) -> None:
        """Write the booster as XGBoost JSON (`xgboost.json`) and the shapes (`trees.json`)."""
        self._require_fitted()
        self.estimator_.save_model(str(Path(directory) / XGB_FILE))
        self._write_meta(directory, "xgboost", _xgb().__version__)

    @classmethod
    def _load_state(cls, directory: Path, params: dict) -> "XGBoostModel":
        """Rebuild from `xgboost.json` after a structural check of the JSON (never pickle)."""
        directory = Path(directory)
        path = directory / XGB_FILE
        if not path.exists():
            raise ModelError(f"{str(directory)!r}: {XGB_FILE} is missing; re-save the model")
        est = cls._new(params)
        d, k = cls._read_meta(directory)
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{path}: not valid JSON ({exc})") from None
        ens = tree_ensemble_from_json(doc)
        if ens.n_features != d or ens.n_classes != k:
            raise ModelError(f"{path}: the model has {ens.n_features} features/{ens.n_classes} classes, {META_FILE} says {d}/{k}")
        clf = est._make_classifier()
        try:
            clf.load_model(str(path))
        except Exception as exc:
            raise ModelError(f"{path}: XGBoost could not load it ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        est._restore(clf, d, k)
        return est


def _xgb_objective_ok(clf: Any) -> None:
    objective, _ = _xgb_objective(clf.get_booster())
    if objective not in XGB_OBJECTIVES:
        raise ModelError(f"XGBoost objective {objective!r} is not supported; use one of {', '.join(XGB_OBJECTIVES)}")


class _SklearnTreeEstimator(_TreeEstimator):
    """Shared predictions and skops persistence of the scikit-learn tree families."""

    _library_classes: tuple[str, ...] = ()

    def predict_proba(self, X: Any) -> np.ndarray:
        """The scikit-learn estimator's own probabilities."""
        self._require_fitted()
        return np.asarray(self.estimator_.predict_proba(self._check_X(X)), dtype=np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """The scikit-learn estimator's own predictions (labels are already 0..K-1)."""
        self._require_fitted()
        return np.asarray(self.estimator_.predict(self._check_X(X))).astype(np.int64)

    def _parse(self) -> TreeEnsemble:
        return parse_sklearn(self.estimator_)

    def _save_state(self, directory: Path) -> None:
        """Write the fitted estimator with skops (`estimator.skops`) and the shapes (`trees.json`)."""
        import sklearn
        import skops.io as sio

        self._require_fitted()
        sio.dump(self.estimator_, str(Path(directory) / SKOPS_FILE))
        self._write_meta(directory, "scikit-learn", sklearn.__version__)

    @classmethod
    def _load_state(cls, directory: Path, params: dict) -> Any:
        """Rebuild from `estimator.skops`, trusting only scikit-learn and numpy types."""
        try:
            import skops.io as sio
        except ImportError:  # pragma: no cover
            raise ModelError("loading a scikit-learn model needs skops: pip install skops") from None
        directory = Path(directory)
        path = directory / SKOPS_FILE
        if not path.exists():
            raise ModelError(f"{str(directory)!r}: {SKOPS_FILE} is missing; re-save the model")
        from .persistence import skops_trusted_types

        est = cls._new(params)
        d, k = cls._read_meta(directory)
        untrusted = skops_trusted_types(path)  # only scikit-learn classes; functions such as numpy.load are refused
        try:
            lib = sio.load(str(path), trusted=list(untrusted))
        except Exception as exc:
            raise ModelError(f"{path}: skops could not load it ({type(exc).__name__}: {exc})") from None
        lib_cls = f"{type(lib).__module__.split('.')[0]}.{type(lib).__name__}"
        if lib_cls not in cls._library_classes:
            raise ModelError(f"{path}: holds a {type(lib).__name__}, expected one of {', '.join(cls._library_classes)}")
        if int(getattr(lib, "n_features_in_", -1)) != d or int(getattr(lib, "n_classes_", -1)) != k:
            raise ModelError(f"{path}: the estimator's shape does not match {META_FILE}; re-save the model")
        est._restore(lib, d, k)
        return est


class RandomForestModel(_SklearnTreeEstimator):
    """scikit-learn random forest (or extremely randomised trees with extra_trees=True) with the exact-attack parse."""

    name = "rf"
    _library_classes = ("sklearn.RandomForestClassifier", "sklearn.ExtraTreesClassifier")

    def __init__(
        self,
        n_estimators: int = 100,
        max_depth: int | None = None,
        min_samples_leaf: int = 1,
        max_features: str | float | int | None = "sqrt",
        criterion: str = "gini",
        bootstrap: bool = True,
        extra_trees: bool = False,
        class_weight: str | None = None,
        n_jobs: int = 1,
        random_state: int | None = 0,
    ):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.criterion = criterion
        self.bootstrap = bootstrap
        self.extra_trees = extra_trees
        self.class_weight = class_weight
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _check_params(self) -> None:
        who = type(self).__name__
        if not (_is_int(self.n_estimators) and self.n_estimators >= 1):
            raise ModelError(f"{who}: n_estimators must be an integer >= 1, got {self.n_estimators!r}")
        if self.max_depth is not None and not (_is_int(self.max_depth) and self.max_depth >= 1):
            raise ModelError(f"{who}: max_depth must be an integer >= 1 or None, got {self.max_depth!r}")
        if not (_is_int(self.min_samples_leaf) and self.min_samples_leaf >= 1):
            raise ModelError(f"{who}: min_samples_leaf must be an integer >= 1, got {self.min_samples_leaf!r}")
        mf = self.max_features
        if not (mf is None or mf in ("sqrt", "log2") or (_is_int(mf) and mf >= 1) or (_is_num(mf) and not _is_int(mf) and 0 < mf <= 1)):
            raise ModelError(f"{who}: max_features must be 'sqrt', 'log2', None, an integer >= 1 or a fraction in (0, 1], got {mf!r}")
        if self.criterion not in ("gini", "entropy", "log_loss"):
            raise ModelError(f"{who}: criterion must be 'gini', 'entropy' or 'log_loss', got {self.criterion!r}")
        for key in ("bootstrap", "extra_trees"):
            if not isinstance(getattr(self, key), (bool, np.bool_)):
                raise ModelError(f"{who}: {key} must be True or False, got {getattr(self, key)!r}")
        if self.class_weight not in (None, "balanced", "balanced_subsample"):
            raise ModelError(f"{who}: class_weight must be None, 'balanced' or 'balanced_subsample', got {self.class_weight!r}")
        if not (_is_int(self.n_jobs) and self.n_jobs >= 1):
            raise ModelError(f"{who}: n_jobs must be an integer >= 1, got {self.n_jobs!r}")
        if self.random_state is not None and not _is_int(self.random_state):
            raise ModelError(f"{who}: random_state must be an integer or None, got {self.random_state!r}")

    def _fit_library(self, X: np.ndarray, y: np.ndarray, k: int) -> Any:
        from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

        cls = ExtraTreesClassifier if self.extra_trees else RandomForestClassifier
        return cls(
            n_estimators=int(self.n_estimators), max_depth=self.max_depth, min_samples_leaf=int(self.min_samples_leaf),
            max_features=self.max_features, criterion=self.criterion, bootstrap=bool(self.bootstrap),
            class_weight=self.class_weight, n_jobs=int(self.n_jobs), random_state=self.random_state,
        ).fit(X, y)


class GradientBoostingModel(_SklearnTreeEstimator):
    """scikit-learn gradient boosting (log-loss or exponential loss) with the exact-attack parse."""

    name = "gbdt"
    _library_classes = ("sklearn.GradientBoostingClassifier",)

    def __init__(
        self,
        n_estimators: int = 100,
        max_depth: int = 3,
        learning_rate: float = 0.1,
        subsample: float = 1.0,
        min_samples_leaf: int = 1,
        max_features: str | float | int | None = None,
        loss: str = "log_loss",
        random_state: int | None = 0,
    ):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.loss = loss
        self.random_state = random_state

    def _check_params(self) -> None:
        who = type(self).__name__
        if not (_is_int(self.n_estimators) and self.n_estimators >= 1):
            raise ModelError(f"{who}: n_estimators must be an integer >= 1, got {self.n_estimators!r}")
        if not (_is_int(self.max_depth) and self.max_depth >= 1):
            raise ModelError(f"{who}: max_depth must be an integer >= 1, got {self.max_depth!r}")
        if not (_is_num(self.learning_rate) and self.learning_rate > 0):
            raise ModelError(f"{who}: learning_rate must be a positive number, got {self.learning_rate!r}")
        if not (_is_num(self.subsample) and 0 < self.subsample <= 1):
            raise ModelError(f"{who}: subsample must be in (0, 1], got {self.subsample!r}")
        if not (_is_int(self.min_samples_leaf) and self.min_samples_leaf >= 1):
            raise ModelError(f"{who}: min_samples_leaf must be an integer >= 1, got {self.min_samples_leaf!r}")
        mf = self.max_features
        if not (mf is None or mf in ("sqrt", "log2") or (_is_int(mf) and mf >= 1) or (_is_num(mf) and not _is_int(mf) and 0 < mf <= 1)):
            raise ModelError(f"{who}: max_features must be 'sqrt', 'log2', None, an integer >= 1 or a fraction in (0, 1], got {mf!r}")
        if self.loss not in ("log_loss", "exponential"):
            raise ModelError(f"{who}: loss must be 'log_loss' or 'exponential', got {self.loss!r}")
        if self.random_state is not None and not _is_int(self.random_state):
            raise ModelError(f"{who}: random_state must be an integer or None, got {self.random_state!r}")

    def _fit_library(self, X: np.ndarray, y: np.ndarray, k: int) -> Any:
        from sklearn.ensemble import GradientBoostingClassifier

        if self.loss == "exponential" and k > 2:
            raise ModelError(f"{type(self).__name__}: loss='exponential' is for two classes, got {k}; use loss='log_loss'")
        return GradientBoostingClassifier(
            n_estimators=int(self.n_estimators), max_depth=int(self.max_depth), learning_rate=float(self.learning_rate),
            subsample=float(self.subsample), min_samples_leaf=int(self.min_samples_leaf), max_features=self.max_features,
            loss=self.loss, random_state=self.random_state,
        ).fit(X, y)

    def decision_function(self, X: Any) -> np.ndarray:
        """The library's raw predictions, shape (n, 1) for binary and (n, K) for multiclass."""
        self._require_fitted()
        X = self._check_X(X)
        return np.asarray(self.estimator_.decision_function(X), dtype=np.float64).reshape(X.shape[0], -1)


__all__ = [
    "XGBoostModel",
    "RandomForestModel",
    "GradientBoostingModel",
    "WrappedXGBoost",
    "WrappedSklearn",
    "WrappedSklearnTrees",
    "parse_xgboost",
    "parse_sklearn_forest",
    "parse_sklearn_gbdt",
    "parse_sklearn",
    "tree_ensemble_from_json",
    "tree_ensemble_to_json",
    "wrap_xgboost",
    "wrap_sklearn",
    "float32_floor",
    "probe_points",
]
