"""Dataset registry: name -> loader, as plain data, and `load_dataset`.

Registered names are scikit-learn's bundled tables (`breast_cancer`, `wine`, `iris`, `digits`;
the `load_*` functions, which read files shipped in the wheel) and generated tasks
(`sparse_parity`, `xor`, `synthetic` and its presets `synthetic:easy|hard|multiclass`).
Three families take an argument after the colon: `uci121:<name>` (the UCI-121 collection in
its original layout, see `uci121.py`), `csv:<path>` and `parquet:<path>` (see `files.py`).

Every registered dataset goes through `tabular.build_dataset`: labels 0..K-1, a stratified
train/test split fixed by `seed` (`test_size`, default 0.3), and standardisation fitted on the
training rows only (`standardize`, default True; constant columns get std 1). Generated tasks
draw their rows with `data_seed` (default: `seed`), so a fixed `data_seed` keeps the rows and
varies only the split. Nothing is downloaded and nothing is written.
"""
from __future__ import annotations

import difflib
import inspect
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..errors import DataError
from .tabular import DEFAULT_TEST_SIZE, Dataset, build_dataset

FAMILIES = ("uci121", "csv", "parquet")
FAMILY_HELP = "uci121:<name>, csv:<path>, parquet:<path>"
COMMON_DEFAULTS: dict[str, Any] = {"test_size": DEFAULT_TEST_SIZE, "standardize": True}
# Parameters that say where data lives, not what it is: left out of the dataset's display name.
_LOCATION_PARAMS = ("root", "uci_dir")


@dataclass(frozen=True)
class Raw:
    """A table before splitting: features, labels and their names, plus where it came from."""

    X: np.ndarray
    y: np.ndarray
    feature_names: list[str]
    class_names: list[str] | None
    source: str


@dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset: how to make its raw table, its own parameters, and a card for listings."""

    name: str
    make: Callable[..., Raw]
    description: str
    source: str
    n: int
    d: int
    classes: int
    defaults: dict[str, Any] = field(default_factory=dict)
    generated: bool = False


# --- parameter checks ---------------------------------------------------------------


def _int(who: str, key: str, value: Any, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or (
        isinstance(value, float) and not value.is_integer()
    ):
        raise DataError(f"{who}: {key} must be an integer, got {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        rng = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise DataError(f"{who}: {key} must be {rng}, got {v}")
    return v


def _float(who: str, key: str, value: Any, lo: float, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(float(value)):
        raise DataError(f"{who}: {key} must be a finite number, got {value!r}")
    v = float(value)
    if v < lo or (hi is not None and v > hi):
        raise DataError(f"{who}: {key} must be in [{lo}, {'inf' if hi is None else hi}], got {v}")
    return v


def _bool(who: str, key: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise DataError(f"{who}: {key} must be true or false, got {value!r}")
    return bool(value)


def _seed(value: Any, who: str = "load_dataset") -> int:
    return _int(who, "seed", value, 0, 2**32 - 1)


# --- scikit-learn bundled tables ----------------------------------------------------------


def _sklearn(loader_name: str) -> Callable[..., Raw]:
    def make(seed: int) -> Raw:
        from sklearn import datasets as skd

        bunch = getattr(skd, loader_name)()
        return Raw(
            X=np.asarray(bunch.data, dtype=np.float64), y=np.asarray(bunch.target),
            feature_names=[str(f) for f in bunch.feature_names], class_names=[str(c) for c in bunch.target_names],
            source=f"sklearn.datasets.{loader_name} (bundled with scikit-learn)",
        )

    make.__name__ = f"make_{loader_name}"
    return make


# --- generated tasks ----------------------------------------------------------------


def _unique_sign_rows(rng: np.random.Generator, n: int, n_bits: int) -> np.ndarray:
    """n distinct ±1 vectors of length n_bits, in draw order (deterministic under rng)."""
    if n_bits <= 20 and 2**n_bits <= 4 * n:
        codes = rng.choice(2**n_bits, size=n, replace=False)
        bits = (codes[:, None] >> np.arange(n_bits)[None, :]) & 1
        return (2 * bits - 1).astype(np.int8)
    rows = np.empty((0, n_bits), dtype=np.int8)
    while rows.shape[0] < n:
        new = rng.choice(np.array([-1, 1], dtype=np.int8), size=(n - rows.shape[0], n_bits))
        both = np.concatenate([rows, new])
        _, first = np.unique(both, axis=0, return_index=True)
        rows = both[np.sort(first)]
    return rows


def make_sparse_parity(seed: int, n: int = 2000, n_bits: int = 43, k: int = 3) -> Raw:
    """Sparse parity: n distinct ±1 vectors of n_bits bits; label 1 iff the product of the first k bits is +1.

    The default (k = 3 parity bits + 40 noise bits, d = 43, n = 2000 unique vectors) is the
    sparse-parity grokking task of the seed paper, arXiv 2605.08464 (which splits 50/50: pass test_size=0.5 for that).
    """
    who = "dataset 'sparse_parity'"
    n_bits = _int(who, "n_bits", n_bits, 1, 4096)
    k = _int(who, "k", k, 1, n_bits)
    cap = 2**n_bits if n_bits < 63 else None
    n = _int(who, "n", n, 2, cap)
    X = _unique_sign_rows(np.random.default_rng(seed), n, n_bits)
    y = (np.prod(X[:, :k].astype(np.int64), axis=1) > 0).astype(np.int64)
    names = [f"parity{i + 1}" for i in range(k)] + [f"noise{i + 1}" for i in range(n_bits - k)]
    return Raw(X.astype(np.float64), y, names, ["product=-1", "product=+1"],
               f"generated: {n} unique ±1 vectors, label = prod(bits 1..{k}) > 0, {n_bits - k} noise bits")


def make_xor(seed: int, n: int = 1000, d: int = 10) -> Raw:
    """Continuous XOR: x ~ N(0, I_d), label 1 iff x1·x2 > 0; the other d-2 features are noise."""
    who = "dataset 'xor'"
    d = _int(who, "d", d, 2, 100_000)
    n = _int(who, "n", n, 4, 10_000_000)
    X = np.random.default_rng(seed).standard_normal((n, d))
    y = (X[:, 0] * X[:, 1] > 0).astype(np.int64)
    return Raw(X, y, [f"x{i + 1}" for i in range(d)], ["x1*x2<=0", "x1*x2>0"],
               f"generated: x ~ N(0, I_{d}), label = 1[x1*x2 > 0]")


SYNTHETIC_PRESETS: dict[str, dict[str, Any]] = {
    "synthetic": dict(n=1000, d=20, n_informative=10, n_redundant=4, n_classes=2, n_clusters_per_class=2,
                      class_sep=1.0, flip_y=0.01),
    "synthetic:easy": dict(n=1000, d=10, n_informative=5, n_redundant=2, n_classes=2, n_clusters_per_class=1,
                           class_sep=2.0, flip_y=0.0),
    "synthetic:hard": dict(n=2000, d=30, n_informative=8, n_redundant=8, n_classes=2, n_clusters_per_class=3,
                           class_sep=0.5, flip_y=0.05),
    "synthetic:multiclass": dict(n=1500, d=20, n_informative=10, n_redundant=4, n_classes=4, n_clusters_per_class=1,
                                 class_sep=1.0, flip_y=0.01),
}


def _synthetic(preset: str) -> Callable[..., Raw]:
    def make(seed: int, n: int, d: int, n_informative: int, n_redundant: int, n_classes: int,
             n_clusters_per_class: int, class_sep: float, flip_y: float) -> Raw:
        from sklearn.datasets import make_classification

        who = f"dataset {preset!r}"
        kw = dict(
            n_samples=_int(who, "n", n, 4, 10_000_000), n_features=_int(who, "d", d, 1, 100_000),
            n_informative=_int(who, "n_informative", n_informative, 1), n_redundant=_int(who, "n_redundant", n_redundant, 0),
            n_classes=_int(who, "n_classes", n_classes, 2), n_clusters_per_class=_int(who, "n_clusters_per_class", n_clusters_per_class, 1),
            class_sep=_float(who, "class_sep", class_sep, 0.0), flip_y=_float(who, "flip_y", flip_y, 0.0, 1.0),
        )
        try:
            X, y = make_classification(**kw, n_repeated=0, shuffle=True, random_state=seed)
        except ValueError as exc:
            raise DataError(f"{who}: invalid parameters ({exc})") from None
        return Raw(X, y, [f"f{i + 1}" for i in range(X.shape[1])], None,
                   "generated: sklearn.datasets.make_classification(" + ", ".join(f"{k}={v}" for k, v in kw.items()) + ")")

    make.__name__ = f"make_{preset.replace(':', '_')}"
    return make


# --- the registry (plain data) ----------------------------------------------------------

_SK = "scikit-learn (bundled)"
_GEN = "generated"
REGISTRY: dict[str, DatasetEntry] = {
    e.name: e
    for e in [
        DatasetEntry("breast_cancer", _sklearn("load_breast_cancer"), "Wisconsin diagnostic breast cancer (212 malignant, 357 benign)",
                     _SK, 569, 30, 2),
        DatasetEntry("wine", _sklearn("load_wine"), "Wine cultivars from chemical analysis", _SK, 178, 13, 3),
        DatasetEntry("iris", _sklearn("load_iris"), "Fisher's iris, 3 x 50 flowers", _SK, 150, 4, 3),
        DatasetEntry("digits", _sklearn("load_digits"), "8x8 handwritten digits, pixel counts 0-16", _SK, 1797, 64, 10),
        DatasetEntry("sparse_parity", make_sparse_parity, "±1 bits; label = parity of 3 bits, 40 noise bits (the seed paper's grokking task)",
                     _GEN, 2000, 43, 2, {"n": 2000, "n_bits": 43, "k": 3}, generated=True),
        DatasetEntry("xor", make_xor, "Gaussian features; label = 1 if x1*x2 > 0, d-2 noise features",
                     _GEN, 1000, 10, 2, {"n": 1000, "d": 10}, generated=True),
        *[
            DatasetEntry(name, _synthetic(name), desc, _GEN, p["n"], p["d"], p["n_classes"], dict(p), generated=True)
            for name, p, desc in [
                ("synthetic", SYNTHETIC_PRESETS["synthetic"], "make_classification: 10 informative of 20, moderate overlap"),
                ("synthetic:easy", SYNTHETIC_PRESETS["synthetic:easy"], "make_classification: well separated, 1 cluster per class"),
                ("synthetic:hard", SYNTHETIC_PRESETS["synthetic:hard"], "make_classification: low separation, 3 clusters, 5% label noise"),
                ("synthetic:multiclass", SYNTHETIC_PRESETS["synthetic:multiclass"], "make_classification: 4 classes"),
            ]
        ],
    ]
}


def list_datasets() -> list[str]:
    """Names of the registered datasets (the uci121/csv/parquet families take an argument and are not listed)."""
    return list(REGISTRY)


def describe_datasets() -> list[dict[str, Any]]:
    """One row per registered dataset with its default size: name, n, d, classes, source, description."""
    return [
        {"name": e.name, "n": e.n, "d": e.d, "classes": e.classes, "source": e.source, "description": e.description}
        for e in REGISTRY.values()
    ]


def _unknown(name: str) -> DataError:
    close = difflib.get_close_matches(name, list(REGISTRY), n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    return DataError(f"unknown dataset {name!r}{hint}; valid: {', '.join(REGISTRY)}, or {FAMILY_HELP}")


def _check_params(who: str, params: dict[str, Any], accepted: list[str]) -> None:
    extra = sorted(set(params) - set(accepted))
    if extra:
        raise DataError(f"{who} does not take parameter {', '.join(map(repr, extra))}; accepted: {', '.join(sorted(accepted))}")


def _display_name(name: str, given: dict[str, Any], defaults: dict[str, Any]) -> str:
    """`name`, plus `(k=v,...)` for the parameters that differ from the defaults (so caches keep them apart)."""
    diff = {k: v for k, v in sorted(given.items()) if k not in _LOCATION_PARAMS and (k not in defaults or defaults[k] != v)}
    if not diff:
        return name
    return f"{name}(" + ",".join(f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in diff.items()) + ")"


def _load_registered(entry: DatasetEntry, seed: int, params: dict[str, Any]) -> Dataset:
    who = f"dataset {entry.name!r}"
    accepted = list(entry.defaults) + list(COMMON_DEFAULTS) + (["data_seed"] if entry.generated else [])
    _check_params(who, params, accepted)
    own = {k: params.get(k, v) for k, v in entry.defaults.items()}
    test_size = params.get("test_size", COMMON_DEFAULTS["test_size"])
    standardize = _bool(who, "standardize", params.get("standardize", True))
    data_seed = seed
    if entry.generated and params.get("data_seed") is not None:
        data_seed = _int(who, "data_seed", params["data_seed"], 0, 2**32 - 1)
    raw = entry.make(data_seed, **own)
    effective = {**own, "test_size": test_size, "standardize": standardize}
    if entry.generated:
        effective["data_seed"] = data_seed
    meta = {"source": raw.source, "description": entry.description, "params": effective}
    ds = build_dataset(entry.name, raw.X, raw.y, seed=seed, feature_names=raw.feature_names, class_names=raw.class_names,
                       test_size=test_size, standardize=standardize, meta=meta)
    ds.name = _display_name(entry.name, params, {**entry.defaults, **COMMON_DEFAULTS})
    return ds


def _load_family(family: str, arg: str, seed: int, params: dict[str, Any]) -> Dataset:
    if family == "uci121":
        from .uci121 import load_uci121

        fn: Callable[..., Dataset] = load_uci121
        call: Callable[..., Dataset] = lambda **kw: load_uci121(arg, seed, **kw)  # noqa: E731
    else:
        from .files import load_table

        fn = load_table
        call = lambda **kw: load_table(family, arg, seed, **kw)  # noqa: E731
    sig = inspect.signature(fn)
    kwonly = {p.name: p.default for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    _check_params(f"{family}:{arg}", params, list(kwonly))
    ds = call(**params)
    loaded = ds.meta.get("params", {})
    given = {k: loaded.get(k, v) for k, v in params.items() if k not in _LOCATION_PARAMS}
    ds.meta["params"] = {**kwonly, **loaded, **given}
    ds.name = _display_name(f"{family}:{arg}", given, kwonly)
    return ds


def source_digest(name: str, **params: Any) -> str | None:
    """SHA-256 of the bytes a file-backed dataset (`csv:`, `parquet:`, `uci121:`) is read from, None for
    the bundled and generated ones (their content is fixed by name, parameters and library versions)
    or when the source cannot be read (loading it then reports why).

    It equals the `sha256` the loader records in `Dataset.meta` when the file has not changed in between.
    """
    from ..fingerprint import file_digest

    family, sep, arg = str(name).strip().partition(":")
    if not sep or family not in FAMILIES or not arg:
        return None
    try:
        if family == "uci121":
            from .uci121 import resolve_root

            root = params.get("root", params.get("uci_dir"))
            path = resolve_root(root) / arg
            if not path.is_dir():
                return None
        else:
            path = Path(os.path.expanduser(arg))
            if not path.is_file():
                return None
        return file_digest(path)
    except (OSError, DataError):
        return None


def load_dataset(name: str, seed: int = 0, **params: Any) -> Dataset:
    """Load a dataset by name with a split fixed by `seed`; same (name, seed, params) -> identical arrays.

    `params` are the dataset's own parameters (e.g. `xor`: n, d; `sparse_parity`: n, n_bits, k;
    `synthetic*`: n, d, n_informative, ...; generated tasks also data_seed) plus test_size and
    standardize; `uci121:<name>` takes root/uci_dir, fold, standardize and val; `csv:`/`parquet:`
    take target, drop, test_size and standardize. Unknown names or parameters raise DataError.
    """
    if not isinstance(cast(object, name), str) or not name.strip():  # typed str; untyped callers may pass anything
        raise DataError(f"dataset name must be a non-empty string, got {name!r}; valid: {', '.join(REGISTRY)}, or {FAMILY_HELP}")
    name = name.strip()
    seed = _seed(seed, f"dataset {name!r}")
    if name in REGISTRY:
        return _load_registered(REGISTRY[name], seed, params)
    family, sep, arg = name.partition(":")
    if sep and family in FAMILIES:
        if not arg:
            raise DataError(f"dataset {name!r}: missing the part after the colon; write {FAMILY_HELP}")
        return _load_family(family, arg, seed, params)
    raise _unknown(name)
