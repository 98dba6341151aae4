"""Saving and loading fitted models without executing pickle.

A saved model is a directory: `model.json` (format version, estimator class, parameters) plus the
family's own pickle-free state (torch state_dict loaded with weights_only=True, RFM `.npz` loaded
with allow_pickle=False, XGBoost JSON, scikit-learn through skops with an allow-list of types).
Single files are accepted too: an XGBoost `.json` model or a `.skops` scikit-learn model.
Pickle files are refused unless the caller passes trust_pickle=True explicitly.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ModelError
from .base import Model

FORMAT_VERSION = 1
MANIFEST = "model.json"

# Only these classes may be instantiated from a manifest.
ALLOWED_CLASSES = {
    "robustbench_align.models.mlp:MLP",
    "robustbench_align.models.grokalign:GrokAlignMLP",
    "robustbench_align.models.rfm:RFM",
    "robustbench_align.models.rfm:RFAM",
    "robustbench_align.models.trees:XGBoostModel",
    "robustbench_align.models.trees:RandomForestModel",
    "robustbench_align.models.trees:GradientBoostingModel",
}

_PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib", ".sav", ".p"}


def _class_path(obj: Any) -> str:
    return f"{type(obj).__module__}:{type(obj).__qualname__}"


def _looks_like_pickle(path: Path) -> bool:
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        return True
    try:
        head = path.open("rb").read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def save_model(model: Any, directory: str | os.PathLike, *, extra: dict[str, Any] | None = None) -> Path:
    """Save a fitted registry estimator to `directory` atomically (write to a temp dir, then rename).

    `extra` is stored verbatim in the manifest (e.g. the fit time, for cached fits).
    """
    directory = Path(directory)
    cls = _class_path(model)
    if cls not in ALLOWED_CLASSES or not hasattr(model, "_save_state"):
        raise ModelError(f"cannot save a {type(model).__name__}: only registry estimators are saved; save library models in their own format (XGBoost JSON, skops)")
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory.parent))
    try:
        model._save_state(tmp)
        manifest = {
            "format_version": FORMAT_VERSION,
            "class": cls,
            "params": model.get_params(),
            "name": getattr(model, "name", None),
            "family": getattr(model, "family", None),
            "extra": extra or {},
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=_json_default))
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def _json_default(o: Any) -> Any:
    if isinstance(o, tuple):
        return list(o)
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
    except ImportError:  # pragma: no cover
        pass
    raise TypeError(f"parameter value {o!r} is not JSON-serialisable")


def load_model(path: str | os.PathLike, *, trust_pickle: bool = False, name: str | None = None) -> Model:
    """Load a model saved by `save_model`, an XGBoost JSON file or a skops file, never executing pickle."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model path {str(path)!r} does not exist")
    if path.is_dir():
        return _load_dir(path, name)
    if _looks_like_pickle(path):
        if not trust_pickle:
            raise ModelError(
                f"refusing to load {path.name!r}: it is a pickle, which can execute code; save the model as XGBoost JSON or skops, "
                "or pass trust_pickle=True (CLI: --trust-pickle) if you trust its author"
            )
        import pickle

        from .base import wrap

        with path.open("rb") as fh:
            return wrap(pickle.load(fh), name=name or path.stem)  # noqa: S301 - explicitly trusted by the caller
    suffix = path.suffix.lower()
    if suffix == ".json":
        return _load_xgboost_json(path, name)
    if suffix == ".skops":
        return _load_skops(path, name)
    raise ModelError(f"cannot load {path.name!r}: accepted formats are a saved model directory, an XGBoost .json file or a scikit-learn .skops file")


def _load_dir(path: Path, name: str | None) -> Model:
    mf = path / MANIFEST
    if not mf.exists():
        raise ModelError(f"{str(path)!r} is not a saved model: {MANIFEST} is missing")
    try:
        manifest = json.loads(mf.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{mf}: not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        raise ModelError(f"{mf}: unsupported format version {manifest.get('format_version') if isinstance(manifest, dict) else None!r}; re-save the model with this version")
    cls_path = manifest.get("class")
    if cls_path not in ALLOWED_CLASSES:
        raise ModelError(f"{mf}: class {cls_path!r} is not an allowed model class")
    mod, _, attr = cls_path.partition(":")
    import importlib

    cls = getattr(importlib.import_module(mod), attr)
    params = manifest.get("params") or {}
    if not isinstance(params, dict):
        raise ModelError(f"{mf}: 'params' must be an object")
    try:
        model = cls._load_state(path, params)
    except ModelError:
        raise
    except Exception as exc:  # corrupted state files
        raise ModelError(f"cannot load model state from {str(path)!r}: {type(exc).__name__}: {exc}") from None
    model.name = name or manifest.get("name") or attr
    if manifest.get("family"):
        model.family = manifest["family"]
    model.saved_extra_ = manifest.get("extra") or {}
    return model


def _load_xgboost_json(path: Path, name: str | None) -> Model:
    try:
        import xgboost as xgb
    except ImportError:  # pragma: no cover
        raise ModelError("loading an XGBoost model needs xgboost: pip install xgboost-cpu") from None
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path.name}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or "learner" not in doc:
        raise ModelError(f"{path.name}: not an XGBoost model JSON (no 'learner' key); save it with booster.save_model('model.json')")
    from .trees import tree_ensemble_from_json, wrap_xgboost

    ens = tree_ensemble_from_json(doc)  # structural validation before handing the file to xgboost
    booster = xgb.Booster()
    try:
        booster.load_model(str(path))
    except Exception as exc:
        raise ModelError(f"{path.name}: XGBoost could not load it ({str(exc).splitlines()[0]})") from None
    model = wrap_xgboost(booster, name=name or path.stem)
    if ens.n_features != model.n_features:
        raise ModelError(f"{path.name}: inconsistent feature count in the model JSON")
    return model


def _load_skops(path: Path, name: str | None) -> Model:
    try:
        import skops.io as sio
    except ImportError:  # pragma: no cover
        raise ModelError("loading a .skops model needs skops: pip install skops") from None
    from .base import wrap

    try:
        untrusted = sio.get_untrusted_types(file=str(path))
    except Exception as exc:
        raise ModelError(f"{path.name}: not a readable skops file ({type(exc).__name__})") from None
    bad = [t for t in untrusted if not (t.startswith("sklearn.") or t.startswith("numpy.") or t.startswith("builtins."))]
    if bad:
        raise ModelError(f"{path.name}: refusing to load: it contains non-scikit-learn types {', '.join(bad[:5])}")
    try:
        est = sio.load(str(path), trusted=untrusted)
    except Exception as exc:
        raise ModelError(f"{path.name}: skops could not load it ({type(exc).__name__}: {exc})") from None
    return wrap(est, name=name or path.stem)


def params_hash(spec_name: str, params: dict[str, Any]) -> str:
    blob = json.dumps({"spec": spec_name, "params": params}, sort_keys=True, default=_json_default)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_dir_for(root: str | os.PathLike, spec_name: str, params: dict[str, Any], dataset: str, seed: int) -> Path:
    """Where the fit of (spec, params, dataset, seed) is cached under `root`."""
    safe_ds = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in dataset)[:80]
    ds_hash = hashlib.sha256(dataset.encode()).hexdigest()[:8]
    return Path(root) / spec_name / f"{safe_ds}-{ds_hash}" / f"seed{seed}-{params_hash(spec_name, params)}"


def fit_cached(spec_name: str, dataset: Any, seed: int, cache_root: str | os.PathLike | None = None, **overrides: Any) -> tuple[Model, bool, float]:
    """Fit registry model `spec_name` on `dataset` (a Dataset) with random_state=seed, reusing a cached fit.

    Returns (model, was_cached, fit_seconds) where fit_seconds is the original fit's time.
    A corrupted cache entry is refitted, never trusted.
    """
    import time

    from .registry import build

    est = build(spec_name, random_state=seed, **overrides)
    if cache_root is not None:
        where = cache_dir_for(cache_root, spec_name, est.get_params(), dataset.name, seed)
        if (where / MANIFEST).exists():
            try:
                model = load_model(where, name=spec_name)
                model.family = getattr(est, "family", None)
                return model, True, float(model.saved_extra_.get("fit_time", float("nan")))
            except ModelError:
                shutil.rmtree(where, ignore_errors=True)
    fit_kw: dict[str, Any] = {}
    if dataset.X_val is not None and _accepts_val(est):
        fit_kw = {"X_val": dataset.X_val, "y_val": dataset.y_val}
    t0 = time.perf_counter()
    est.fit(dataset.X_train, dataset.y_train, **fit_kw)
    fit_time = time.perf_counter() - t0
    if cache_root is not None:
        save_model(est, where, extra={"fit_time": fit_time})
    return est, False, fit_time


def _accepts_val(est: Any) -> bool:
    import inspect

    try:
        return "X_val" in inspect.signature(est.fit).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False
