"""The library-independent tree-ensemble JSON format (persistence, tests), read and written bit-exactly.

`tree_ensemble_from_json` also accepts an XGBoost model JSON (structure only, bias from base_score).
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

from ...errors import ModelError, first_line
from ..base import Tree, TreeEnsemble
from .checks import check_node_count, check_reachable, check_tree_caps
from .xgboost_json import int_array, parse_xgboost_doc

ENSEMBLE_FORMAT = "robustbench_align.tree_ensemble"
ENSEMBLE_FORMAT_VERSION = 1


def tree_ensemble_to_json(ens: TreeEnsemble) -> dict[str, Any]:
    """A JSON-ready dict of a TreeEnsemble; thresholds and values round-trip bit-exactly.

    "threshold_dtype" is written for float64 ensembles only (a file without it is float32), so
    float32 ensembles serialise as before.
    """
    doc: dict[str, Any] = {
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
    if ens.threshold_dtype != "float32":
        doc["threshold_dtype"] = ens.threshold_dtype
    return doc


def tree_ensemble_from_json(doc: Any) -> TreeEnsemble:
    """A validated TreeEnsemble from `tree_ensemble_to_json` output or from an XGBoost model JSON.

    For XGBoost JSON the bias comes from `base_score` (no library at hand to measure it); use
    `parse_xgboost` on a loaded booster for the measured intercept. Raises ModelError on any
    malformed structure (cycles, out-of-range children or features, NaN thresholds, ...).
    """
    if isinstance(doc, dict) and "learner" in doc:
        return parse_xgboost_doc(doc, source="xgboost-json")
    if not isinstance(doc, dict) or doc.get("format") != ENSEMBLE_FORMAT:
        raise ModelError(f"not a tree-ensemble JSON: expected an XGBoost model or format {ENSEMBLE_FORMAT!r}")
    if doc.get("version") != ENSEMBLE_FORMAT_VERSION:
        raise ModelError(f"tree-ensemble JSON version {doc.get('version')!r} is not supported (expected {ENSEMBLE_FORMAT_VERSION})")
    tdtype = doc.get("threshold_dtype", "float32")
    if tdtype not in ("float32", "float64"):
        raise ModelError(f"tree-ensemble JSON: threshold_dtype {tdtype!r} not recognised (expected 'float32' or 'float64')")
    try:
        n_outputs = int(doc["n_outputs"])
        trees = []
        for i, tj in enumerate(doc["trees"]):
            value = np.asarray(tj["value"], dtype=np.float64)
            feature = int_array(tj["feature"], f"tree {i} feature")
            check_node_count(feature.size, i, "tree-ensemble JSON")
            if value.ndim != 2 or value.shape != (feature.size, n_outputs):
                raise ModelError(f"tree-ensemble JSON: tree {i} value must have shape ({feature.size}, {n_outputs})")
            thr = np.asarray(tj["threshold"], dtype=np.float64)
            if thr.shape != feature.shape:
                raise ModelError(f"tree-ensemble JSON: tree {i} threshold has the wrong length")
            with np.errstate(over="ignore", invalid="ignore"):
                thr32 = thr if tdtype == "float64" else thr.astype(np.float32)
            left, right = int_array(tj["left"], f"tree {i} left"), int_array(tj["right"], f"tree {i} right")
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
            source=str(doc.get("source", "")), meta=dict(doc.get("meta") or {}), threshold_dtype=tdtype,
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ModelError):
            raise
        raise ModelError(f"tree-ensemble JSON: missing or invalid field ({first_line(exc)}); the file is malformed") from None
    if not ens.trees:
        raise ModelError("tree-ensemble JSON: no trees")
    if ens.n_outputs not in (1, ens.n_classes) or ens.n_classes < 2:
        raise ModelError(f"tree-ensemble JSON: n_outputs={ens.n_outputs} does not fit n_classes={ens.n_classes}")
    return check_reachable(check_tree_caps(ens.validate()))


__all__ = ["ENSEMBLE_FORMAT", "ENSEMBLE_FORMAT_VERSION", "tree_ensemble_from_json", "tree_ensemble_to_json"]
