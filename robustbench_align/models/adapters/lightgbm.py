"""Adapter for LightGBM classifiers (LGBMClassifier, classification Booster) and LightGBM model files.

Predictions are LightGBM's own (`num_threads=1`); `tree_ensemble()` is the exact parse of
`Booster.dump_model()` (`trees.lightgbm_parse`), checked against the library on probe rows at,
and one float64 ulp either side of, every threshold and around zero. A model the parse cannot
express exactly (categorical splits, linear trees, ...) is still wrapped, as a black box: a
warning is logged and `path_note` says why ("exact path refused: ...").

Files: a LightGBM text model (`booster.save_model("model.txt")`) loads into a Booster; a JSON dump
(`json.dump(booster.dump_model(), f)`) has no LightGBM loader, so its Model evaluates the parse.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ModelError, first_line
from ..base import Model, TreeEnsemble, WrappedModel, argmax_rows, check_width, display_name, softmax_rows
from ..trees.checks import measure_bias, probe_points
from ..trees.lightgbm_parse import K_ZERO_THRESHOLD, is_lightgbm_dump, parse_lightgbm_dump, parse_objective

log = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "robustbench-align[lightgbm]"'


def import_lightgbm() -> Any:
    """The lightgbm module, or ModelError naming the extra to install (lightgbm is untyped here: Any)."""
    try:
        import lightgbm
    except ImportError:
        raise ModelError(f"LightGBM models need lightgbm: {INSTALL_HINT}") from None
    return lightgbm


def lgb_parts(obj: Any) -> tuple[Any, Any]:
    """(booster, classifier or None) of a fitted LGBMClassifier or a trained Booster; ModelError otherwise."""
    lgb = import_lightgbm()
    if isinstance(obj, lgb.LGBMModel):
        kind = "ranking" if isinstance(obj, lgb.LGBMRanker) else "regression"
        if not isinstance(obj, lgb.LGBMClassifier):
            raise ModelError(f"{type(obj).__name__} is a {kind} model; the suite evaluates classifiers (use LGBMClassifier)")
        if not obj.__sklearn_is_fitted__():
            raise ModelError(f"{type(obj).__name__} is not fitted; fit it first")
        return obj.booster_, obj
    if isinstance(obj, lgb.Booster):
        if obj.current_iteration() == 0 or obj.num_trees() == 0:
            raise ModelError("the LightGBM Booster has no trees; train it first (lightgbm.train) or load a model")
        return obj, None
    raise ModelError(f"cannot read a {type(obj).__name__} as a LightGBM model; pass an LGBMClassifier or a Booster")


def _num_iteration(booster: Any) -> int | None:
    """The iterations LightGBM predicts with by default: the best iteration when one is recorded, else all."""
    best = int(getattr(booster, "best_iteration", 0) or 0)
    return best if best > 0 else None


def _ova(p: np.ndarray) -> np.ndarray:
    """LightGBM's multiclassova probabilities (independent sigmoids) normalised to sum to 1 per row."""
    s = p.sum(axis=1, keepdims=True)
    out: np.ndarray = p / np.where(s > 0, s, 1.0)
    return out


class WrappedLightGBM(WrappedModel):
    """A fitted LGBMClassifier or classification Booster with LightGBM's own predictions (a black box).

    `predict` is LightGBM's (argmax of its probabilities, ties to the lowest index); for
    "multiclassova" it is the argmax of LightGBM's raw scores, which is the same except where two
    float64 sigmoids saturate to an exact tie. `path_note` says why the exact path is absent, if so.
    """

    path_note: str = ""

    def __init__(self, obj: Any, name: str | None = None, n_features: int | None = None, doc: dict[str, Any] | None = None) -> None:
        booster, clf = lgb_parts(obj)
        who = name or type(obj).__name__
        if doc is None:
            doc = booster.dump_model(num_iteration=_num_iteration(booster))
        objective, k, _ = parse_objective(doc.get("objective", ""), who=display_name(who))
        self.obj, self.booster, self.clf, self.objective = obj, booster, clf, objective
        self._d = int(booster.num_feature())
        if n_features is not None and check_width(n_features, who) != self._d:
            raise ModelError(f"wrap: n_features={n_features} but the LightGBM model was trained on {self._d} features")
        self._c = int(k)
        self.name = str(who)
        self.num_iteration = _num_iteration(booster)

    def _library(self, X: np.ndarray, raw: bool = False) -> np.ndarray:
        """LightGBM's probabilities (or raw scores), single-threaded, shaped (n, K) or (n, 1)."""
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="X does not have valid feature names")
                if self.clf is not None:
                    out = self.clf.predict_proba(X, raw_score=raw, num_threads=1)
                else:
                    out = self.booster.predict(X, raw_score=raw, num_iteration=self.num_iteration, num_threads=1)
        except Exception as exc:  # noqa: BLE001 - LightGBMError and friends, one line
            raise ModelError(f"{display_name(self.name)}: LightGBM refused the input ({first_line(exc)[:160]})") from None
        a = np.asarray(out, dtype=np.float64)
        return a.reshape(X.shape[0], -1)

    def predict_proba(self, X: Any) -> np.ndarray:
        X = self._check_X(X)
        p = self._library(X)
        if p.shape[1] == 1:  # a Booster's binary output is P(class 1)
            p = np.concatenate([1.0 - p, p], axis=1)
        if self.objective == "multiclassova":
            p = _ova(p)
        return p

    def predict(self, X: Any) -> np.ndarray:
        X = self._check_X(X)
        if self.objective == "multiclassova":
            return argmax_rows(self._library(X, raw=True))
        return argmax_rows(self.predict_proba(X))

    def decision_function(self, X: Any) -> np.ndarray:
        """LightGBM's raw scores, shape (n, 1) for binary and (n, K) for multiclass."""
        return self._library(self._check_X(X), raw=True)


class WrappedLightGBMTrees(WrappedLightGBM):
    """A WrappedLightGBM whose parse passed the library check: `tree_ensemble()` gives the exact attacks."""

    def __init__(self, obj: Any, ensemble: TreeEnsemble, name: str | None = None, n_features: int | None = None,
                 doc: dict[str, Any] | None = None) -> None:
        super().__init__(obj, name=name, n_features=n_features, doc=doc)
        self._ensemble = ensemble

    def tree_ensemble(self) -> TreeEnsemble:
        """The parsed float64 ensemble (checked against LightGBM when wrapped)."""
        return self._ensemble


def zero_probes(P: np.ndarray, seed: int = 1) -> np.ndarray:
    """Probe rows with about a third of the coordinates set to 0, ±kZeroThreshold, their neighbours or ±1e-36."""
    kz = K_ZERO_THRESHOLD
    special = np.array([0.0, kz, -kz, np.nextafter(kz, np.inf), -np.nextafter(kz, np.inf), np.nextafter(kz, 0.0), 1e-36, -1e-36])
    rng = np.random.default_rng(seed)
    Q = P.copy()
    mask = rng.random(Q.shape) < 1 / 3
    Q[mask] = rng.choice(special, size=int(mask.sum()))
    return Q


def parse_lightgbm(obj: Any, doc: dict[str, Any] | None = None) -> TreeEnsemble:
    """Parse an LGBMClassifier or classification Booster and check the parse against LightGBM itself.

    Probe rows sit on every threshold, one float64 ulp either side and around zero; the library's
    raw scores there must equal the parsed sums (up to float64 summation error), else ModelError.
    """
    booster, _ = lgb_parts(obj)
    lgb = import_lightgbm()
    n_iter = _num_iteration(booster)
    if doc is None:
        doc = booster.dump_model(num_iteration=n_iter)
    ens = parse_lightgbm_dump(doc, source=f"lightgbm.{type(obj).__name__}")
    if ens.n_features != int(booster.num_feature()):
        raise ModelError(f"parse_lightgbm: the dump has {ens.n_features} features, the booster {booster.num_feature()}; not supported")
    P0 = probe_points(ens.trees, ens.n_features, dtype=np.float64)
    P = np.concatenate([P0, zero_probes(P0)])
    raw = np.asarray(booster.predict(P, raw_score=True, num_iteration=n_iter, num_threads=1), dtype=np.float64).reshape(P.shape[0], -1)
    sig = float(ens.meta["sigmoid"]) if ens.meta["objective"] != "multiclass" else 1.0
    who = f"parse_lightgbm({type(obj).__name__})"
    if ens.combine == "mean":  # raw_score=True gives the sum over trees in rf mode (4.x); probabilities use the mean
        iters = len(ens.trees) // max(ens.n_outputs, 1)
        try:
            bias = measure_bias(ens, P, raw * sig / iters, who, rel=1e-13)
        except ModelError:
            bias = measure_bias(ens, P, raw * sig, who, rel=1e-13)
    else:
        bias = measure_bias(ens, P, raw * sig, who, rel=1e-13)
    if np.abs(bias).max() > 1e-9:
        raise ModelError(f"parse_lightgbm: LightGBM's raw score is the parsed sum plus {float(np.abs(bias).max()):.3g}; this model layout is not supported")
    meta = {**ens.meta, "library_version": lgb.__version__, "num_iteration": n_iter}
    return dataclasses.replace(ens, meta=meta).validate()


def wrap_lightgbm(obj: Any, name: str | None = None, n_features: int | None = None) -> Model:
    """A Model for a fitted LGBMClassifier or Booster: exact-path (tree_ensemble) when the parse is exact, else a black box."""
    booster, _ = lgb_parts(obj)  # unfitted / regression estimator / empty: ModelError before anything else
    doc: dict[str, Any] = booster.dump_model(num_iteration=_num_iteration(booster))
    parse_objective(doc.get("objective", ""), who=display_name(name or type(obj).__name__))  # a regression Booster: ModelError
    try:
        ens = parse_lightgbm(obj, doc)
    except ModelError as exc:
        model = WrappedLightGBM(obj, name=name, n_features=n_features, doc=doc)
        model.path_note = f"exact path refused: {first_line(exc, with_type=False)}"
        log.warning("%s: %s; attacked as a black box through predict_proba", display_name(model.name), model.path_note)
        return model
    return WrappedLightGBMTrees(obj, ens, name=name, n_features=n_features, doc=doc)


def adapt(obj: Any, *, n_features: int | None = None, n_classes: int | None = None, name: str | None = None) -> Model:
    """The table's factory for LightGBM objects (widths come from the booster itself)."""
    model = wrap_lightgbm(obj, name=name, n_features=n_features)
    if n_classes is not None and int(n_classes) != model.n_classes:
        raise ModelError(f"wrap: n_classes={n_classes} but the LightGBM model has {model.n_classes} classes")
    return model


# ----------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------
class LightGBMDumpModel(WrappedModel):
    """A LightGBM JSON dump as a Model: predictions are the exact parse (LightGBM cannot load dumps)."""

    path_note: str = ""

    def __init__(self, ensemble: TreeEnsemble, name: str) -> None:
        self._ensemble = ensemble
        self._d, self._c = ensemble.n_features, ensemble.n_classes
        self.name = name

    def predict_proba(self, X: Any) -> np.ndarray:
        X = self._check_X(X)
        ens = self._ensemble
        if ens.meta.get("objective") == "multiclassova":
            with np.errstate(over="ignore"):
                return _ova(1.0 / (1.0 + np.exp(-ens.raw(X))))
        if ens.link == "softmax":
            return softmax_rows(ens.raw(X))
        return ens.predict_proba(X)

    def predict(self, X: Any) -> np.ndarray:
        return self._ensemble.predict(self._check_X(X))

    def tree_ensemble(self) -> TreeEnsemble:
        """The parsed float64 ensemble."""
        return self._ensemble


def _head(path: Path, n: int = 64) -> bytes:
    try:
        with path.open("rb") as fh:
            return fh.read(n)
    except OSError:
        return b""


def sniff_lightgbm_text(path: Path) -> bool:
    """A LightGBM text model starts with the line "tree"."""
    return _head(path).lstrip(b"\xef\xbb\xbf").split(b"\n", 1)[0].strip() == b"tree"


def sniff_lightgbm_json(path: Path) -> bool:
    """A JSON object holding a LightGBM dump (name "tree" and "tree_info"); XGBoost JSON is never taken."""
    head = _head(path, 4096)
    if b'"tree_info"' not in head and b'"name"' not in head:
        return False
    try:
        return is_lightgbm_dump(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, UnicodeDecodeError, RecursionError, OSError):
        return False


def load_lightgbm_text(path: Path, name: str | None) -> Model:
    """A wrapped Booster from a LightGBM text model file; one-line ModelError for a corrupt or truncated file."""
    lgb = import_lightgbm()
    text = path.read_text(encoding="utf-8", errors="replace")
    if "end of trees" not in text:
        raise ModelError(f"{path.name!r}: not a complete LightGBM text model (no 'end of trees' line); the file is truncated or corrupt")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            booster = lgb.Booster(model_file=str(path))
    except Exception as exc:  # noqa: BLE001 - LightGBMError and friends, one line
        raise ModelError(f"{path.name!r}: LightGBM could not load it ({first_line(exc)[:200]})") from None
    return wrap_lightgbm(booster, name=name or path.stem)


def load_lightgbm_json(path: Path, name: str | None) -> Model:
    """A LightGBM JSON dump (`Booster.dump_model()` written with json.dump) as a Model evaluating the parse."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError, OSError) as exc:
        raise ModelError(f"{path.name!r}: not a readable JSON file ({first_line(exc)})") from None
    ens = parse_lightgbm_dump(doc, source="lightgbm-json")
    return LightGBMDumpModel(ens, name=name or path.stem)


__all__ = [
    "INSTALL_HINT", "LightGBMDumpModel", "WrappedLightGBM", "WrappedLightGBMTrees", "adapt", "import_lightgbm", "lgb_parts",
    "load_lightgbm_json", "load_lightgbm_text", "parse_lightgbm", "sniff_lightgbm_json", "sniff_lightgbm_text", "wrap_lightgbm",
]
