"""Adapter for CatBoost classifiers: CatBoost's own predictions plus `tree_ensemble()` (the parse in `trees.catboost_parse`).

`wrap(CatBoostClassifier)` parses the model at wrap time. A model the exact path cannot encode
(categorical/text/embedding features, a loss other than Logloss/CrossEntropy/MultiClass) is
attacked as a black box instead: a warning is logged and the Model's `path_note` says why.
Also the loaders of `.cbm` and CatBoost `.json` files (registered in `models.persistence`).
"""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ModelError, first_line
from ..base import Model, TreeEnsemble, WrappedModel, argmax_rows, display_name
from ..trees.catboost_parse import CatBoostUnsupported, catboost_parts, import_catboost, parse_catboost, parse_catboost_doc

log = logging.getLogger(__name__)

MULTILABEL_LOSSES = ("MultiLogloss", "MultiCrossEntropy")


class WrappedCatBoost(WrappedModel):
    """A fitted CatBoost classifier attacked as a black box: predict_proba is CatBoost's own (one thread), predict its argmax.

    `path_note` says why the exact path was refused (None when it was not tried or not refused).
    """

    path_note: str | None

    def __init__(self, obj: Any, name: str | None = None) -> None:
        loss, d = catboost_parts(obj)
        if loss in MULTILABEL_LOSSES:
            raise ModelError(f"{type(obj).__name__} is a multi-label model (loss {loss}); wrap a single-label classifier")
        self.obj: Any = obj
        self.loss = loss
        for getter, label in (("get_text_feature_indices", "text"), ("get_embedding_feature_indices", "embedding")):
            fn = getattr(obj, getter, None)
            if callable(fn) and len(fn()) > 0:
                raise ModelError(f"{type(obj).__name__} uses {label} features, which numeric feature arrays cannot feed; wrap a model on numeric features")
        self._cat = [int(i) for i in obj.get_cat_feature_indices()]
        self._d = int(d)
        self.name = name or type(obj).__name__
        self.path_note = None
        self._normalise = loss == "MultiClassOneVsAll"  # per-class sigmoids: rows are rescaled to sum to 1 (argmax unchanged)
        p = self._library_proba(np.zeros((1, self._d)))
        if p.ndim != 2 or p.shape[1] < 2:
            raise ModelError(f"{type(obj).__name__}: CatBoost returned probabilities of shape {p.shape}; a classifier needs at least two classes")
        self._c = int(p.shape[1])
        try:
            thr = float(obj.get_probability_threshold()) if self._c == 2 else 0.5
        except Exception:  # noqa: BLE001 - older CatBoost or a model without one: predict uses 0.5
            thr = 0.5
        if thr != 0.5:
            log.warning("%s: CatBoost's predict uses probability_threshold=%g; this Model predicts the argmax of predict_proba",
                        display_name(self.name), thr)

    def _library_input(self, X: np.ndarray) -> Any:
        """X as CatBoost takes it: the array itself, or a Pool whose categorical columns hold integer codes (else the value's text)."""
        if not self._cat:
            return X
        import pandas as pd

        cb = import_catboost()
        cols: dict[str, Any] = {}
        for j, name in enumerate(self.obj.feature_names_):
            col = X[:, j]
            if j in self._cat:
                col = col.astype(np.int64) if np.all(col == np.round(col)) else col.astype(str)
            cols[str(name)] = col
        return cb.Pool(pd.DataFrame(cols), cat_features=self._cat)

    def _library_proba(self, X: np.ndarray) -> np.ndarray:
        try:
            p = self.obj.predict(self._library_input(X), prediction_type="Probability", thread_count=1)
        except Exception as exc:  # noqa: BLE001 - CatBoostError and friends, one line
            raise ModelError(f"{display_name(self.name)}: CatBoost refused the input ({first_line(exc, with_type=False)[:160]})") from None
        out: np.ndarray = np.asarray(p, dtype=np.float64).reshape(X.shape[0], -1)
        if self._normalise:
            out = out / out.sum(axis=1, keepdims=True)
        return out

    def predict_proba(self, X: Any) -> np.ndarray:
        X = self._check_X(X)
        p = self._library_proba(X)
        if p.shape != (X.shape[0], self._c):
            raise ModelError(f"{display_name(self.name)}: CatBoost returned shape {p.shape}, expected {(X.shape[0], self._c)}")
        return p

    def predict(self, X: Any) -> np.ndarray:
        """Class index 0..K-1 (argmax of predict_proba, ties to the lowest), shape (n,): CatBoost's own predict returns labels, (n, 1) for multiclass."""
        return argmax_rows(self.predict_proba(X)).astype(np.int64)

    def decision_function(self, X: Any) -> np.ndarray:
        """CatBoost's raw formula values, shape (n, 1) for binary and (n, K) for multiclass."""
        X = self._check_X(X)
        raw = self.obj.predict(self._library_input(X), prediction_type="RawFormulaVal", thread_count=1)
        return np.asarray(raw, dtype=np.float64).reshape(X.shape[0], -1)


class WrappedCatBoostTrees(WrappedCatBoost):
    """A CatBoost classifier whose parse passed the library check: CatBoost's predictions plus `tree_ensemble()`."""

    def __init__(self, obj: Any, name: str | None = None, ensemble: TreeEnsemble | None = None) -> None:
        super().__init__(obj, name=name)
        self._ensemble = ensemble if ensemble is not None else parse_catboost(obj)
        if (self._ensemble.n_features, self._ensemble.n_classes) != (self._d, self._c):
            raise ModelError(f"{display_name(self.name)}: the parsed ensemble's shape differs from CatBoost's; the model is inconsistent")

    def tree_ensemble(self) -> TreeEnsemble:
        """The parsed ensemble (parsed and checked against CatBoost at wrap time)."""
        return self._ensemble


def wrap_catboost(obj: Any, name: str | None = None) -> Model:
    """A Model for a fitted CatBoost classifier: the exact path when the parse encodes it, else a black box with `path_note`."""
    try:
        ens = parse_catboost(obj)
    except CatBoostUnsupported as exc:
        model = WrappedCatBoost(obj, name=name)  # raises for what is not a usable classifier at all
        model.path_note = f"exact path refused: {exc.reason}"
        log.warning("%s: %s; attacking it as a black box", display_name(model.name), model.path_note)
        return model
    return WrappedCatBoostTrees(obj, name=name, ensemble=ens)


def adapt(obj: Any, *, n_features: int | None = None, n_classes: int | None = None, name: str | None = None) -> Model:
    """The table's factory for CatBoost objects (widths come from the model itself)."""
    model = wrap_catboost(obj, name=name)
    if n_features is not None and int(n_features) != model.n_features:
        raise ModelError(f"wrap: n_features={n_features} but the CatBoost model takes {model.n_features} features")
    if n_classes is not None and int(n_classes) != model.n_classes:
        raise ModelError(f"wrap: n_classes={n_classes} but the CatBoost model has {model.n_classes} classes")
    return model


# ----------------------------------------------------------------------------------------
# Files: .cbm (CatBoost binary) and CatBoost .json (registered in models.persistence)
# ----------------------------------------------------------------------------------------
def _load_into_classifier(path: Path, fmt: str) -> Any:
    cb = import_catboost()
    clf = cb.CatBoostClassifier()
    try:
        clf.load_model(str(path), format=fmt)
    except Exception as exc:  # noqa: BLE001 - CatBoostError for truncated/corrupt files, one line
        raise ModelError(f"{path.name!r}: CatBoost could not load it ({first_line(exc, with_type=False)[:160]})") from None
    return clf


def _wrap_loaded(clf: Any, path: Path, name: str | None) -> Model:
    """wrap_catboost for a model read from `path`; anything CatBoost raises about it becomes a one-line ModelError."""
    try:
        return wrap_catboost(clf, name=name or path.stem)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file CatBoost loaded but cannot use
        raise ModelError(f"{path.name!r}: CatBoost loaded it but cannot use it ({first_line(exc, with_type=False)[:160]})") from None


def load_catboost_cbm(path: Path, name: str | None = None) -> Model:
    """A wrapped CatBoostClassifier from a `.cbm` file (ModelError, one line, for a corrupt or truncated file)."""
    with Path(path).open("rb") as fh:
        head = fh.read(4)
    if head != b"CBM1":
        raise ModelError(f"{Path(path).name!r}: not a CatBoost .cbm file (no CBM1 header); save it with model.save_model('model.cbm')")
    return _wrap_loaded(_load_into_classifier(Path(path), "cbm"), Path(path), name)


def _read_doc(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError, OSError) as exc:
        raise ModelError(f"{Path(path).name!r}: not a readable JSON file ({first_line(exc)})") from None


def is_catboost_json(doc: Any) -> bool:
    """A CatBoost model JSON: an object with "oblivious_trees" (or non-symmetric "trees" with "features_info"), not XGBoost/LightGBM."""
    if not isinstance(doc, dict) or "learner" in doc or "tree_info" in doc:
        return False
    return "oblivious_trees" in doc or ("trees" in doc and "features_info" in doc)


def sniff_catboost_json(path: Path) -> bool:
    """Whether the `.json` file at `path` is a CatBoost model (an unreadable file is left to the other formats)."""
    try:
        return is_catboost_json(json.loads(Path(path).read_text(encoding="utf-8")))
    except (ValueError, UnicodeDecodeError, RecursionError, OSError):
        return False


def load_catboost_json(path: Path, name: str | None = None) -> Model:
    """A wrapped CatBoostClassifier from a CatBoost `.json` file, structurally checked before CatBoost reads it."""
    path = Path(path)
    doc = _read_doc(path)
    if not is_catboost_json(doc):
        raise ModelError(f"{path.name}: not a CatBoost model JSON (no 'oblivious_trees'); save it with model.save_model(path, format='json')")
    with contextlib.suppress(CatBoostUnsupported):  # a valid model the exact path cannot encode: wrap_catboost makes it a black box
        parse_catboost_doc(doc)  # malformed documents are refused here, before CatBoost parses them
    return _wrap_loaded(_load_into_classifier(path, "json"), path, name)


def sniff_file(path: Path) -> bool:
    """The persistence sniffer: every `.cbm` file (the loader checks it), and `.json` files that are CatBoost model JSON."""
    return Path(path).suffix.lower() == ".cbm" or sniff_catboost_json(path)


def load_file(path: Path, name: str | None = None) -> Model:
    """The persistence loader: a `.cbm` or CatBoost `.json` file as a wrapped CatBoostClassifier."""
    if Path(path).suffix.lower() == ".cbm":
        return load_catboost_cbm(path, name)
    return load_catboost_json(path, name)


__all__ = ["WrappedCatBoost", "WrappedCatBoostTrees", "adapt", "is_catboost_json", "load_catboost_cbm", "load_catboost_json", "load_file",
           "sniff_catboost_json", "sniff_file", "wrap_catboost"]
