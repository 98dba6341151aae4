"""Saving and loading fitted models without executing pickle.

A saved model is a directory: `model.json` (format version, estimator class, parameters) plus the
family's own pickle-free state (torch state_dict loaded with weights_only=True, RFM `.npz` loaded
with allow_pickle=False, XGBoost JSON, scikit-learn through skops with an allow-list of types).
Single files are accepted too: an XGBoost `.json` model or a `.skops` scikit-learn model.
Pickle files are refused unless the caller passes trust_pickle=True explicitly.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError, first_line
from ..guards import file_kind
from ..jsonable import jsonable
from .base import FittedModel, Model
from .registry import build, get_spec, list_models

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "model.json"

# Only the registry's estimator classes may be instantiated from a manifest (derived, so a new
# registry family is loadable without an edit here).
ALLOWED_CLASSES: frozenset[str] = frozenset(get_spec(name).cls for name in list_models())

_PICKLE_SUFFIXES = {".pkl", ".pickle", ".joblib", ".sav", ".p"}


def _class_path(obj: Any) -> str | None:
    """The registry's "module:Class" path of obj's class (as written in manifests), or None.

    The registry's path is the public one (e.g. `models.trees:XGBoostModel`), which stays valid
    when the class moves between the package's modules; only names that match are imported.
    """
    cls = type(obj)
    for path in sorted(ALLOWED_CLASSES):
        module, _, attr = path.partition(":")
        if attr == cls.__qualname__ and getattr(importlib.import_module(module), attr, None) is cls:
            return path
    return None


def _looks_like_pickle(path: Path) -> bool:
    """A pickle by suffix or by its protocol-2..5 header bytes."""
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _read_json(path: Path, who: str) -> Any:
    """Parse a JSON file; ModelError (one line) for unreadable, non-UTF-8, malformed or absurdly nested files."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError, OSError) as exc:
        raise ModelError(f"{who}: not a readable JSON file ({first_line(exc)})") from None


def save_model(model: Any, directory: str | os.PathLike[str], *, extra: dict[str, Any] | None = None) -> Path:
    """Save a fitted registry estimator to `directory` atomically (write to a temp dir, then rename).

    `extra` is stored verbatim in the manifest (e.g. the fit time, for cached fits).
    """
    directory = Path(directory)
    cls = _class_path(model)
    if cls is None or not hasattr(model, "_save_state"):
        raise ModelError(
            f"cannot save a {type(model).__name__}: only registry estimators are saved; save library models in their own format (XGBoost JSON, skops)"
        )
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
    """JSON for the parameter values json cannot write itself (numpy scalars and arrays, sets), through `jsonable`.

    Only called for values json does not encode natively, so what json writes itself (and hence every existing
    params hash) is unchanged; a value `jsonable` cannot convert either is refused with TypeError.
    """
    value = jsonable(o)
    if value is o:
        raise TypeError(f"parameter value {o!r} is not JSON-serialisable")
    return value


def load_model(path: str | os.PathLike[str], *, trust_pickle: bool = False, name: str | None = None) -> Model:
    """Load a model saved by `save_model`, an XGBoost JSON file or a skops file, never executing pickle.

    A path that is missing, a directory without a manifest, or a FIFO/socket/device is refused with a
    one-line ModelError saying which (a FIFO is never opened, so loading cannot block on it).
    The model carries the SHA-256 of the bytes it was read from (`source_sha256_`): its identity
    in the store, so two different files with one name never share results.
    """
    from ..fingerprint import SOURCE_ATTR, file_digest

    path = Path(path)
    before = _stat_or_none(path)
    model = _load_model(path, trust_pickle=trust_pickle, name=name)
    digest = file_digest(path)
    if before is None or _stat_or_none(path) != before:
        raise ModelError(f"model path {str(path)!r} changed while it was being read; load it again once it is written")
    setattr(model, SOURCE_ATTR, digest)
    return model


def _stat_or_none(path: Path) -> Any:
    from ..fingerprint import stat_key

    try:
        if path.is_dir():
            return sorted((str(q), stat_key(q)) for q in path.rglob("*") if q.is_file())
        return stat_key(path)
    except OSError:
        return None


def _load_model(path: Path, *, trust_pickle: bool, name: str | None) -> Model:
    wanted = "give a model file or a directory written by save_model"
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        broken = " (a broken symbolic link)" if path.is_symlink() else ""
        raise ModelError(f"model path {str(path)!r} does not exist{broken}; {wanted}") from None
    except OSError as exc:
        raise ModelError(f"model path {str(path)!r} cannot be inspected ({first_line(exc)}); {wanted}") from None
    if stat.S_ISDIR(mode):
        if not (path / MANIFEST).is_file():
            raise ModelError(f"model path {str(path)!r} is a directory without {MANIFEST}, not a saved model; {wanted}")
        return _load_dir(path, name)
    kind = file_kind(mode)
    if kind is not None:
        raise ModelError(f"model path {str(path)!r} is {kind}, not a model file; {wanted}")
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
    for fmt in FILE_FORMATS:
        if suffix in fmt.suffixes and (fmt.sniff is None or fmt.sniff(path)):
            return fmt.load(path, name)
    accepted = ", ".join(f.description for f in FILE_FORMATS)
    raise ModelError(f"cannot load {path.name!r}: accepted formats are a saved model directory, {accepted}")


@dataclass(frozen=True)
class FileFormat:
    """A model file format `load_model` (and `rba evaluate FILE`) accepts: tried in order, the first whose
    suffix matches and whose `sniff(path)` (None: always) accepts the file loads it with `load(path, name)`."""

    name: str
    suffixes: tuple[str, ...]
    load: Callable[[Path, str | None], Model]
    description: str
    sniff: Callable[[Path], bool] | None = None


def register_file_format(fmt: FileFormat, *, before: str | None = None) -> None:
    """Add a model file format (before the entry named `before`, else at the end)."""
    if any(f.name == fmt.name for f in FILE_FORMATS):
        raise ModelError(f"register_file_format: a format named {fmt.name!r} exists already")
    idx = next((i for i, f in enumerate(FILE_FORMATS) if f.name == before), len(FILE_FORMATS))
    FILE_FORMATS.insert(idx, fmt)


def _load_dir(path: Path, name: str | None) -> FittedModel:
    """A registry estimator from a saved directory: manifest checked, class allow-listed, state loaded by the class."""
    mf = path / MANIFEST
    who = repr(str(mf))
    if not mf.is_file():
        raise ModelError(f"{str(path)!r} is not a saved model: {MANIFEST} is missing")
    manifest = _read_json(mf, who)
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise ModelError(f"{who}: unsupported format version {version!r}; re-save the model with this version")
    cls_path = manifest.get("class")
    if not isinstance(cls_path, str) or cls_path not in ALLOWED_CLASSES:
        raise ModelError(f"{who}: class {cls_path!r} is not an allowed model class")
    mod, _, attr = cls_path.partition(":")
    cls = getattr(importlib.import_module(mod), attr)
    params = manifest.get("params") or {}
    if not isinstance(params, dict) or not all(isinstance(k, str) for k in params):
        raise ModelError(f"{who}: 'params' must be an object")
    extra = manifest.get("extra") or {}
    if not isinstance(extra, dict):
        raise ModelError(f"{who}: 'extra' must be an object")
    try:
        model: FittedModel = cls._load_state(path, params)
    except ModelError as exc:
        if len(str(exc).splitlines()) > 1:
            raise ModelError(first_line(exc, with_type=False)) from None
        raise
    except Exception as exc:  # noqa: BLE001 - corrupted or planted state files (torch refuses pickles with UnpicklingError)
        raise ModelError(f"cannot load model state from {str(path)!r} ({first_line(exc)}); re-save or refit the model") from None
    model.name = str(name or manifest.get("name") or attr)
    if manifest.get("family"):
        model.family = str(manifest["family"])
    model.saved_extra_ = extra
    return model


def _load_xgboost_json(path: Path, name: str | None) -> Model:
    """A wrapped Booster from an XGBoost .json file, structurally checked before xgboost reads it."""
    try:
        import xgboost as xgb
    except ImportError:  # pragma: no cover
        raise ModelError("loading an XGBoost model needs xgboost: pip install xgboost-cpu") from None
    doc = _read_json(path, repr(path.name))
    if not isinstance(doc, dict) or "learner" not in doc:
        raise ModelError(f"{path.name}: not an XGBoost model JSON (no 'learner' key); save it with booster.save_model('model.json')")
    from .adapters.xgboost import wrap_xgboost
    from .trees.ensemble_json import tree_ensemble_from_json

    ens = tree_ensemble_from_json(doc)  # structural validation before handing the file to xgboost
    booster = xgb.Booster()
    try:
        booster.load_model(str(path))
    except Exception as exc:  # noqa: BLE001 - XGBoostError and friends, one line
        raise ModelError(f"{path.name!r}: XGBoost could not load it ({first_line(exc)})") from None
    model = wrap_xgboost(booster, name=name or path.stem)
    if ens.n_features != model.n_features:
        raise ModelError(f"{path.name}: inconsistent feature count in the model JSON")
    return model


def _lgb() -> Any:
    """The LightGBM adapter module (its loaders and sniffers), imported only when a .json/.txt file arrives."""
    return importlib.import_module("robustbench_align.models.adapters.lightgbm")


def _load_skops(path: Path, name: str | None) -> Model:
    """A wrapped scikit-learn estimator from a .skops file, trusting only scikit-learn classes."""
    try:
        import skops.io as sio
    except ImportError:  # pragma: no cover
        raise ModelError("loading a .skops model needs skops: pip install skops") from None
    from .base import wrap

    untrusted = skops_trusted_types(path)
    try:
        est = sio.load(str(path), trusted=untrusted)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"{path.name!r}: skops could not load it ({first_line(exc)})") from None
    return wrap(est, name=name or path.stem)


def skops_trusted_types(path: str | os.PathLike[str]) -> list[str]:
    """The types to pass as `trusted=` when loading the skops file at `path`, after vetting them.

    skops reports the names it does not trust by default; each must be a class defined in
    scikit-learn, else ModelError (one line). Functions such as `builtins.exec` or `numpy.load`
    are refused: skops calls the objects a file names, so trusting them would run code.
    """
    import skops.io as sio

    path = Path(path)
    try:
        untrusted = sio.get_untrusted_types(file=str(path))
    except Exception as exc:  # noqa: BLE001 - not a zip, no schema, malformed schema ...
        raise ModelError(f"{path.name!r}: not a readable skops file ({type(exc).__name__})") from None
    bad = [t for t in untrusted if not _trusted_sklearn_class(t)]
    if bad:
        raise ModelError(
            f"{path.name!r}: refusing to load: it references {', '.join(map(repr, bad[:5]))}, which are not scikit-learn classes "
            "(only skops' default types and scikit-learn classes are trusted)"
        )
    return list(untrusted)


def _trusted_sklearn_class(type_name: Any) -> bool:
    """True for 'sklearn.<module>.<Class>' naming a class defined in scikit-learn.

    skops lets a file name any importable object and calls it (its "constructor from reduce"
    node), so trusting a name prefix would trust functions such as `builtins.exec` or
    `numpy.load` (which unpickles with allow_pickle=True). Only classes defined in scikit-learn
    itself are accepted beyond skops' own default-trusted types.
    """
    if not isinstance(type_name, str) or not type_name.startswith("sklearn."):
        return False
    module, _, attr = type_name.rpartition(".")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except Exception:  # noqa: BLE001 - a name that does not resolve is not trusted
        return False
    return isinstance(obj, type) and str(getattr(obj, "__module__", "")).startswith("sklearn.")


def params_hash(spec_name: str, params: dict[str, Any]) -> str:
    """A short stable hash of (spec, parameters): part of the fit-cache key."""
    blob = json.dumps({"spec": spec_name, "params": params}, sort_keys=True, default=_json_default)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_dir_for(root: str | os.PathLike[str], spec_name: str, params: dict[str, Any], dataset: str, seed: int,
                  content: str = "") -> Path:
    """Where the fit of (spec, params, dataset, seed) is cached under `root`.

    `content` is the fingerprint of the training data (`Dataset.fingerprint`): a dataset whose file
    changed gets another entry, never the fit of the old content.
    """
    safe_ds = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in dataset)[:80]
    ds_hash = hashlib.sha256(f"{dataset}\0{content}".encode()).hexdigest()[:12]
    return Path(root) / spec_name / f"{safe_ds}-{ds_hash}" / f"seed{seed}-{params_hash(spec_name, params)}"


def fit_cached(spec_name: str, dataset: Any, seed: int, cache_root: str | os.PathLike[str] | None = None, **overrides: Any) -> tuple[Model, bool, float]:
    """Fit registry model `spec_name` on `dataset` (a Dataset) with random_state=seed, reusing a cached fit.

    Returns (model, was_cached, fit_seconds) where fit_seconds is the original fit's time.
    A corrupted cache entry is refitted, never trusted.
    """
    import time

    est: Any = build(spec_name, random_state=seed, **overrides)
    if cache_root is not None:
        where = cache_dir_for(cache_root, spec_name, est.get_params(), dataset.name, seed, dataset.fingerprint())
        if (where / MANIFEST).exists():
            try:
                model = _load_dir(where, name=spec_name)
                model.family = getattr(est, "family", None)
                fit_time = model.saved_extra_.get("fit_time")
                return model, True, float(fit_time) if isinstance(fit_time, (int, float)) and not isinstance(fit_time, bool) else float("nan")
            except ModelError as exc:
                log.warning("cached fit %s is unusable (%s); refitting", where, exc)
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
    """True when est.fit takes X_val/y_val (the dataset's validation split is then passed)."""
    import inspect

    try:
        return "X_val" in inspect.signature(est.fit).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


# The file formats, in the order they are tried (one line per format; sniffers tell apart formats sharing a suffix).
FILE_FORMATS: list[FileFormat] = []
register_file_format(FileFormat("xgboost-json", (".json",), lambda p, n: _load_xgboost_json(p, n), "an XGBoost .json file"))
register_file_format(FileFormat("skops", (".skops",), lambda p, n: _load_skops(p, n), "a scikit-learn .skops file"))
register_file_format(FileFormat("lightgbm-json", (".json",), lambda p, n: _lgb().load_lightgbm_json(p, n), "a LightGBM JSON dump (.json)",
    lambda p: _lgb().sniff_lightgbm_json(p)), before="xgboost-json")
register_file_format(FileFormat("lightgbm-text", (".txt",), lambda p, n: _lgb().load_lightgbm_text(p, n), "a LightGBM .txt model",
    lambda p: _lgb().sniff_lightgbm_text(p)))
register_file_format(FileFormat("catboost", (".cbm", ".json"), lambda p, n: importlib.import_module(".adapters.catboost", __package__).load_file(p, n),
    "a CatBoost .cbm or .json file", lambda p: importlib.import_module(".adapters.catboost", __package__).sniff_file(p)), before="xgboost-json")
register_file_format(FileFormat("onnx", (".onnx",), lambda p, n: importlib.import_module(".adapters.onnx", __package__).load_onnx(p, n), "an ONNX .onnx file"))
