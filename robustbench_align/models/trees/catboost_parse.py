"""CatBoost classifiers (model JSON or a live CatBoostClassifier) → a validated TreeEnsemble.

Semantics (CatBoost docs, "Model values calculation" / "JSON model format",
https://catboost.ai/docs/en/concepts/output-data_model-value-output and
https://catboost.ai/docs/en/features/export-model-to-json): features are float32, a float split
sends x to the right child when x > border (left iff float32(x) <= border, `strict=False`), and
an oblivious (symmetric) tree of depth D evaluates all D splits: leaf = sum_i [x > border_i] << i.
Leaf values are stored leaf-major, `leaf_values[leaf * dims + k]`; raw = scale * Σ leaves + bias
(`scale_and_bias`). Logloss/CrossEntropy: P(class 1) = sigmoid(raw); MultiClass: softmax(raw).
Non-symmetric trees (grow_policy Depthwise/Lossguide, the JSON "trees" key) use the same rule.
Categorical, one-hot, ctr, text and embedding features and other losses are refused
(`CatBoostUnsupported`, a ModelError carrying a one-line `reason`); NaN modes do not matter
because inputs must be finite.
"""
from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ...errors import ModelError, first_line
from ..base import Tree, TreeEnsemble
from .checks import check_reachable, check_tree_caps, probe_points

log = logging.getLogger(__name__)

CATBOOST_LOSSES: dict[str, Literal["logistic", "softmax"]] = {"Logloss": "logistic", "CrossEntropy": "logistic", "MultiClass": "softmax"}
ZERO32 = np.float32(0)
MAX_DEPTH = 64  # bound on nesting of non-symmetric trees (a deeper document is malformed)
INSTALL = 'CatBoost models need catboost: pip install "robustbench-align[catboost]"'


class CatBoostUnsupported(ModelError):
    """The model is a valid CatBoost classifier, but the exact path cannot encode it; `reason` says why (one line)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"CatBoost model: exact path refused: {reason}")
        self.reason = reason


def import_catboost() -> Any:
    """The catboost module, or ModelError naming the extra to install (catboost is untyped here: Any)."""
    try:
        import catboost
    except ImportError:
        raise ModelError(INSTALL) from None
    return catboost


def _malformed(what: str) -> ModelError:
    return ModelError(f"CatBoost JSON: {what}; the model file is malformed")


def _float_feature_map(features_info: dict[str, Any]) -> tuple[dict[int, int], int]:
    """(float_feature_index → input column, number of input columns) from `features_info`."""
    for kind, label in (("categorical_features", "categorical features"), ("text_features", "text features"),
                        ("embedding_features", "embedding features")):
        if features_info.get(kind):
            raise CatBoostUnsupported(label)
    floats = features_info.get("float_features") or []
    if not isinstance(floats, list):
        raise _malformed("features_info.float_features is not a list")
    mapping: dict[int, int] = {}
    width = 0
    for pos, ff in enumerate(floats):
        if not isinstance(ff, dict):
            raise _malformed(f"float feature {pos} is not an object")
        try:
            idx = int(ff.get("feature_index", pos))
            flat = int(ff.get("flat_feature_index", idx))
        except (TypeError, ValueError):
            raise _malformed(f"float feature {pos} has a non-integer index") from None
        if idx < 0 or flat < 0 or idx in mapping:
            raise _malformed(f"float feature {pos} has an invalid or repeated index")
        mapping[idx] = flat
        width = max(width, flat + 1)
    return mapping, width


def _split(s: Any, fmap: dict[int, int], where: str) -> tuple[int, np.float32]:
    """(input column, float32 border) of one split; non-float splits are refused."""
    if not isinstance(s, dict):
        raise _malformed(f"{where}: a split is not an object")
    kind = s.get("split_type", "FloatFeature")
    if kind != "FloatFeature":
        raise CatBoostUnsupported(f"{kind} splits (categorical / one-hot / ctr features)")
    try:
        f = fmap[int(s["float_feature_index"])]
        border = float(s["border"])
    except (KeyError, TypeError, ValueError):
        raise _malformed(f"{where}: a split lacks a valid float_feature_index/border") from None
    b32 = np.float32(border)
    if not np.isfinite(b32):
        raise _malformed(f"{where}: non-finite border {border!r}")
    return f, b32


class _Builder:
    """Accumulates the node arrays of one Tree (node 0 is the first node added: the root)."""

    def __init__(self, n_outputs: int) -> None:
        self.n_outputs = n_outputs
        self.feature: list[int] = []
        self.threshold: list[np.float32] = []
        self.left: list[int] = []
        self.right: list[int] = []
        self.value: list[np.ndarray] = []

    def add(self, feature: int = -1, threshold: np.float32 = ZERO32, value: np.ndarray | None = None) -> int:
        self.feature.append(feature)
        self.threshold.append(threshold)
        self.left.append(-1)
        self.right.append(-1)
        self.value.append(np.zeros(self.n_outputs) if value is None else value)
        return len(self.feature) - 1

    def tree(self) -> Tree:
        return Tree(feature=np.asarray(self.feature, dtype=np.int64), threshold=np.asarray(self.threshold, dtype=np.float32),
                    left=np.asarray(self.left, dtype=np.int64), right=np.asarray(self.right, dtype=np.int64),
                    value=np.asarray(self.value, dtype=np.float64).reshape(len(self.feature), self.n_outputs))


def _oblivious_tree(tj: Any, index: int, fmap: dict[int, int], dims: int, scale: float) -> Tree:
    """One oblivious tree expanded into a binary tree; splits already decided by the path are skipped."""
    where = f"oblivious tree {index}"
    if not isinstance(tj, dict) or not isinstance(tj.get("splits", []), list):
        raise _malformed(f"{where} is not an object with a list of splits")
    splits = [_split(s, fmap, where) for s in tj.get("splits", [])]
    depth = len(splits)
    if depth > 30:
        raise _malformed(f"{where} has depth {depth}")
    try:
        leaves = np.asarray(tj["leaf_values"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise _malformed(f"{where} lacks numeric leaf_values") from None
    if leaves.ndim != 1 or leaves.size != dims << depth:
        raise _malformed(f"{where} has {leaves.size} leaf values, expected {dims} x 2^{depth}")
    leaves = scale * leaves.reshape(1 << depth, dims)  # leaf-major: leaf_values[leaf * dims + k]
    b = _Builder(dims)

    def grow(level: int, leaf: int, lo: dict[int, np.float32], hi: dict[int, np.float32]) -> int:
        # the path so far confines feature f to (lo[f], hi[f]]; bit `level` of the leaf index is [x_f > border]
        while level < depth:
            f, thr = splits[level]
            if f in hi and thr >= hi[f]:
                level += 1  # x <= hi <= thr: always left (bit 0)
            elif f in lo and thr <= lo[f]:
                leaf |= 1 << level  # x > lo >= thr: always right (bit 1)
                level += 1
            else:
                break
        if level == depth:
            return b.add(value=leaves[leaf])
        f, thr = splits[level]
        node = b.add(feature=f, threshold=thr)
        b.left[node] = grow(level + 1, leaf, lo, {**hi, f: thr})
        b.right[node] = grow(level + 1, leaf | (1 << level), {**lo, f: thr}, hi)
        return node

    grow(0, 0, {}, {})
    return b.tree()


def _nonsymmetric_tree(tj: Any, index: int, fmap: dict[int, int], dims: int, scale: float) -> Tree:
    """One non-symmetric tree ({"split", "left", "right"} nodes, {"value"} leaves) as a Tree."""
    where = f"tree {index}"
    b = _Builder(dims)

    def grow(node: Any, depth: int) -> int:
        if not isinstance(node, dict) or depth > MAX_DEPTH:
            raise _malformed(f"{where}: a node is not an object (or the tree is deeper than {MAX_DEPTH})")
        if "split" not in node:
            try:
                v = np.asarray(node["value"], dtype=np.float64).reshape(-1)
            except (KeyError, TypeError, ValueError):
                raise _malformed(f"{where}: a leaf lacks a numeric value") from None
            if v.size != dims:
                raise _malformed(f"{where}: a leaf has {v.size} values, expected {dims}")
            return b.add(value=scale * v)
        f, thr = _split(node["split"], fmap, where)
        i = b.add(feature=f, threshold=thr)
        if "left" not in node or "right" not in node:
            raise _malformed(f"{where}: a split node lacks a child")
        b.left[i] = grow(node["left"], depth + 1)
        b.right[i] = grow(node["right"], depth + 1)
        return i

    grow(tj, 0)
    return b.tree()


def catboost_loss(doc: dict[str, Any]) -> str | None:
    """The loss function's name recorded in the model JSON (`model_info.params.loss_function.type`), or None."""
    info = doc.get("model_info")
    params = info.get("params") if isinstance(info, dict) else None
    if isinstance(params, str):
        try:
            params = json.loads(params)
        except ValueError:
            params = None
    loss = params.get("loss_function") if isinstance(params, dict) else None
    if isinstance(loss, dict):
        loss = loss.get("type")
    return str(loss) if isinstance(loss, str) else None


def parse_catboost_doc(doc: Any, *, n_features: int | None = None, loss: str | None = None, source: str = "catboost-json") -> TreeEnsemble:
    """A CatBoost model JSON (`save_model(path, format="json")`) → a validated TreeEnsemble, without the library.

    `loss` overrides the loss name in the document (a live model knows its own); `n_features` the
    input width (default: the highest flat feature index + 1). Raises CatBoostUnsupported for what the
    exact path cannot encode, ModelError for a malformed document.
    """
    if not isinstance(doc, dict) or not ("oblivious_trees" in doc or "trees" in doc):
        raise _malformed("not a CatBoost model JSON (no 'oblivious_trees' or 'trees' key)")
    fi = doc.get("features_info")
    if not isinstance(fi, dict):
        raise _malformed("'features_info' is missing")
    if doc.get("ctr_data") or doc.get("ctrs"):
        raise CatBoostUnsupported("ctr (categorical target statistics) features")
    fmap, width = _float_feature_map(fi)
    d = width if n_features is None else int(n_features)
    if d < max(width, 1):
        raise _malformed(f"the model uses {width} feature columns, more than the declared {d}")
    try:
        sb = doc.get("scale_and_bias", [1.0, [0.0]])
        scale = float(sb[0])
        bias = np.asarray(sb[1], dtype=np.float64).reshape(-1)
    except (TypeError, ValueError, IndexError):
        raise _malformed("scale_and_bias is not [scale, [bias, ...]]") from None
    if not (np.isfinite(scale) and np.all(np.isfinite(bias))) or bias.size == 0:
        raise _malformed("scale_and_bias is not finite")
    dims = int(bias.size)
    loss = loss or catboost_loss(doc)
    if loss is None:
        loss = "Logloss" if dims == 1 else "MultiClass"
        log.debug("parse_catboost_doc: no loss function recorded; assuming %s from %d output(s)", loss, dims)
    if loss not in CATBOOST_LOSSES:
        raise CatBoostUnsupported(f"loss function {loss} (only {', '.join(CATBOOST_LOSSES)} are encoded exactly)")
    link = CATBOOST_LOSSES[loss]
    if (link == "logistic") != (dims == 1):
        raise _malformed(f"{loss} model with {dims} outputs")
    cp = doc.get("model_info", {}).get("class_params") if isinstance(doc.get("model_info"), dict) else None
    names = cp.get("class_names") if isinstance(cp, dict) else None
    k = 2 if dims == 1 else dims
    if isinstance(names, list) and names and len(names) != k:
        raise _malformed(f"{len(names)} class names for {k} classes")
    if "oblivious_trees" in doc:
        raw_trees, build, kind = doc["oblivious_trees"], _oblivious_tree, "oblivious"
    else:
        raw_trees, build, kind = doc["trees"], _nonsymmetric_tree, "non-symmetric"
    if not isinstance(raw_trees, list) or not raw_trees:
        raise _malformed("the model has no trees")
    trees = tuple(build(tj, i, fmap, dims, scale) for i, tj in enumerate(raw_trees))
    meta = {
        "loss": loss, "tree_kind": kind, "n_trees": len(trees), "scale": scale,
        "max_depth": max((len(t.get("splits", [])) for t in raw_trees), default=0) if kind == "oblivious" else None,
        "nan_modes": sorted({str(ff.get("nan_value_treatment", "AsIs")) for ff in fi.get("float_features") or []}),
        "class_names": [str(c) for c in names] if isinstance(names, list) else None,
    }
    ens = TreeEnsemble(trees=trees, n_features=d, n_classes=k, n_outputs=dims, strict=False, bias=bias, combine="sum",
                       link=link, source=source, meta=meta)
    return check_reachable(check_tree_caps(ens.validate()))


def catboost_parts(obj: Any) -> tuple[str, int]:
    """(loss function, input width) of a fitted CatBoost classifier; ModelError for anything else."""
    cb = import_catboost()
    name = type(obj).__name__
    if isinstance(obj, cb.CatBoostRegressor):
        raise ModelError(f"{name} is a regression model; wrap a fitted CatBoostClassifier")
    if isinstance(obj, cb.CatBoostRanker):
        raise ModelError(f"{name} is a ranking model; wrap a fitted CatBoostClassifier")
    if not isinstance(obj, cb.CatBoost):
        raise ModelError(f"cannot read a {name} as a CatBoost model; pass a fitted CatBoostClassifier")
    if not obj.is_fitted():
        raise ModelError(f"{name} is not fitted; call fit(X, y) or load_model(path) first")
    try:
        loss = obj.get_all_params().get("loss_function")
    except Exception:  # noqa: BLE001 - a model loaded without training params
        loss = None
    if loss is None:
        try:
            loss = obj.get_params().get("loss_function")
        except Exception:  # noqa: BLE001
            loss = None
    loss_name = str(loss).split(":")[0] if loss is not None else ""
    if loss_name and loss_name not in CATBOOST_LOSSES and loss_name in {"RMSE", "MAE", "Quantile", "Poisson", "Tweedie", "MAPE", "Huber",
                                                                          "Lq", "Expectile", "LogLinQuantile", "MultiRMSE", "RMSEWithUncertainty"}:
        raise ModelError(f"{name} was trained with the regression loss {loss_name}; wrap a CatBoostClassifier")
    return loss_name, len(obj.feature_names_)


def catboost_json(obj: Any) -> dict[str, Any]:
    """The model's JSON document (exported through a temporary file); CatBoostUnsupported when CatBoost cannot export it."""
    cb = import_catboost()
    with tempfile.TemporaryDirectory(prefix="rba-catboost-") as tmp:
        path = Path(tmp) / "model.json"
        try:
            obj.save_model(str(path), format="json")
        except cb.CatBoostError as exc:
            raise CatBoostUnsupported(f"CatBoost cannot export it as JSON ({first_line(exc, with_type=False)[:120]})") from None
        try:  # names are only labels here: undecodable bytes in them (a damaged file) do not matter, the trees are checked below
            doc = json.loads(path.read_text(encoding="utf-8", errors="replace"))
        except (ValueError, RecursionError) as exc:
            raise ModelError(f"CatBoost model: its JSON export is unreadable ({first_line(exc)}); the model is damaged") from None
    if not isinstance(doc, dict):
        raise ModelError("CatBoost model: its JSON export is not an object; the model is damaged")
    return doc


def catboost_raw(obj: Any, X: np.ndarray) -> np.ndarray:
    """CatBoost's own raw formula values (n, dims), one thread."""
    try:
        raw = obj.predict(X, prediction_type="RawFormulaVal", thread_count=1)
    except Exception as exc:  # noqa: BLE001 - CatBoostError (e.g. a damaged model), one line
        raise ModelError(f"CatBoost model: CatBoost cannot predict with it ({first_line(exc, with_type=False)[:160]})") from None
    return np.asarray(raw, dtype=np.float64).reshape(X.shape[0], -1)


def parse_catboost(obj: Any) -> TreeEnsemble:
    """Parse a fitted CatBoostClassifier into a validated TreeEnsemble, checked against the library.

    The check evaluates CatBoost's raw values on probe rows at every border and its float32
    neighbours (plus random rows) and requires the parse to match to 1e-9 (relative to the leaf scale).
    """
    cb = import_catboost()
    loss, d = catboost_parts(obj)
    for getter, label in (("get_cat_feature_indices", "categorical features"), ("get_text_feature_indices", "text features"),
                          ("get_embedding_feature_indices", "embedding features")):
        fn = getattr(obj, getter, None)
        if callable(fn) and len(fn()) > 0:
            raise CatBoostUnsupported(label)
    doc = catboost_json(obj)
    ens = parse_catboost_doc(doc, n_features=d, loss=loss or None, source=f"catboost.{type(obj).__name__}")
    with np.errstate(over="ignore"):  # nan_mode=Min puts a border at -FLT_MAX, whose lower float32 neighbour overflows
        P = probe_points(ens.trees, ens.n_features)
    rng = np.random.default_rng(1)
    P = np.vstack([P, rng.normal(scale=2.0, size=(64, ens.n_features))])
    lib = catboost_raw(obj, P)
    if lib.shape[1] != ens.n_outputs:
        raise CatBoostUnsupported(f"the library returns {lib.shape[1]} raw outputs, the parse has {ens.n_outputs}")
    mine = ens.raw(P)
    mag = sum(np.abs(t.value[t.leaf_index(P.astype(np.float32), False)]) for t in ens.trees) + np.abs(ens.bias)
    gap = np.abs(mine - lib)
    if np.any(gap > 1e-9 * (1.0 + mag)):
        raise CatBoostUnsupported(f"the parse does not reproduce CatBoost's raw values (deviation {float(gap.max()):.3g})")
    meta = {**ens.meta, "library_version": cb.__version__, "check_max_raw_deviation": float(gap.max())}
    return TreeEnsemble(trees=ens.trees, n_features=ens.n_features, n_classes=ens.n_classes, n_outputs=ens.n_outputs, strict=False,
                        bias=ens.bias, combine="sum", link=ens.link, source=ens.source, meta=meta)


__all__ = ["CATBOOST_LOSSES", "CatBoostUnsupported", "catboost_json", "catboost_loss", "catboost_parts", "catboost_raw",
           "import_catboost", "parse_catboost", "parse_catboost_doc"]
