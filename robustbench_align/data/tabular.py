"""The Dataset record, stratified splits and train-only standardisation.

Every loader ends in `build_dataset`, so all datasets share one pipeline: check the features are
finite numbers, encode the labels 0..K-1 (numeric labels that look continuous are refused as a
regression target), split by seed with stratification, then fit the standardisation on the
training split only and apply it to test (and validation) rows.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError

DEFAULT_TEST_SIZE = 0.3
_LIST_LIMIT = 20


@dataclass
class Dataset:
    """A standardised tabular classification task with a fixed split.

    X_* are float64, standardised with mean/std fitted on the training split only; y_* are integer
    labels 0..n_classes-1. X_val/y_val hold a validation split when the source defines one
    (UCI-121), else None (models that need one carve it from the training split).
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    feature_names: list[str]
    n_classes: int
    X_val: np.ndarray | None = None
    y_val: np.ndarray | None = None
    class_names: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.X_train.shape[0]}, test={self.X_test.shape[0]}, "
            f"d={self.n_features}, classes={self.n_classes})"
        )

    def unstandardize(self, X: np.ndarray) -> np.ndarray:
        """Map standardised rows back to the source's feature units (identity when not standardised)."""
        X = np.asarray(X, dtype=np.float64)
        mean, std = self.meta.get("mean"), self.meta.get("std")
        if mean is None or std is None:
            return X.copy()
        return X * np.asarray(std) + np.asarray(mean)

    def fingerprint(self) -> str:
        """A short hash of the name and every array, so caches can tell two contents apart."""
        h = hashlib.sha256(self.name.encode())
        for arr in (self.X_train, self.y_train, self.X_test, self.y_test, self.X_val, self.y_val):
            if arr is None:
                h.update(b"none")
                continue
            a = np.ascontiguousarray(arr)
            h.update(str((a.dtype.str, a.shape)).encode())
            h.update(a.tobytes())
        return h.hexdigest()[:16]


def one_line(value: Any) -> str:
    """`value` as text that stays on one line: control characters (newline, tab, ...) become escapes.

    Column names, labels and paths come from user files and may hold line breaks; error messages
    must stay single-line (the CLI prints one line), so names are shown escaped.
    """
    s = str(value)
    if s.isprintable():
        return s
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in s)


def short_list(items: Sequence[Any], limit: int = _LIST_LIMIT) -> str:
    """Comma-joined names for an error message (one line; empty names as ''), cut after `limit`."""
    items = [one_line(i) if str(i) != "" else "''" for i in items]
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f", ... ({len(items) - limit} more)"


def check_finite_features(X: Any, who: str, feature_names: Sequence[str] | None = None) -> np.ndarray:
    """Return X as a 2-D float64 array; DataError naming the columns that hold NaN or inf."""
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{who}: features must be numeric ({exc}); convert or drop the non-numeric columns") from None
    if X.ndim != 2:
        raise DataError(f"{who}: features must be a 2-D table (rows, columns), got shape {X.shape}")
    if X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{who}: no data (shape {X.shape}); need at least one feature column and some rows")
    bad = ~np.isfinite(X)
    if bad.any():
        cols = np.flatnonzero(bad.any(axis=0))
        names = [feature_names[int(c)] if feature_names is not None else str(c) for c in cols]
        raise DataError(
            f"{who}: features contain NaN or inf in {int(bad.any(axis=1).sum())} rows "
            f"(columns: {short_list(names)}); impute or drop them first"
        )
    return X


def _label_name(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return str(int(v)) if float(v).is_integer() else repr(float(v))
    return str(v)


def encode_labels(y: Any, who: str, class_names: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Encode labels as int64 codes 0..K-1 (sorted unique values) and return them with the class names.

    `class_names`, when given, names the codes of integer labels that are already 0..K-1
    (scikit-learn's `target_names`). Raises DataError for missing labels or a single class.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise DataError(f"{who}: labels must be one column, got shape {y.shape}")
    if y.size == 0:
        raise DataError(f"{who}: no rows")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise DataError(f"{who}: {int((~np.isfinite(y)).sum())} labels are missing (NaN); drop those rows first")
    if y.dtype.kind == "O" and any(v is None or (isinstance(v, float) and math.isnan(v)) for v in y):
        raise DataError(f"{who}: some labels are missing; drop those rows first")
    try:
        values, codes = np.unique(y, return_inverse=True)
    except TypeError:
        values, codes = np.unique(y.astype(str), return_inverse=True)
    if values.size < 2:
        raise DataError(f"{who}: only one class ({one_line(_label_name(values[0]))}) in the labels; a classifier needs at least two")
    if class_names is not None and values.dtype.kind in "iu" and len(class_names) >= values.size \
            and np.array_equal(values, np.arange(values.size)):
        names = [str(class_names[int(v)]) for v in values]
    else:
        names = [_label_name(v) for v in values]
    return codes.astype(np.int64).reshape(-1), names


CONTINUOUS_MIN_VALUES = 20  # more distinct numeric labels than this, some seen once: a regression target


def check_not_continuous(y: Any, who: str, target: str | None = None) -> None:
    """DataError (one line, reason and fix) when numeric labels look like a regression target.

    The labels look continuous when some value occurs only once (so no stratified split exists
    anyway) and the values are fractional or more than CONTINUOUS_MIN_VALUES distinct ones; labels
    a split can use are never refused here.
    """
    y = np.asarray(y)
    if y.ndim != 1 or y.size == 0 or y.dtype.kind not in "biuf":
        return
    values, counts = np.unique(y, return_counts=True)
    once = int(np.count_nonzero(counts < 2))
    fractional = y.dtype.kind == "f" and bool(np.any(values != np.round(values)))
    if not once or not (fractional or values.size > CONTINUOUS_MIN_VALUES):
        return
    what = f"target column {one_line(target)!r}" if target is not None else "the labels"
    examples = ", ".join(_label_name(v) for v in values[:: max(1, values.size // 3)][:3])
    fix = "bin it into classes (e.g. by quantiles) or pass target=<a class column>" if target is not None else "bin it into classes"
    raise DataError(
        f"{who}: {what} looks continuous ({values.size} distinct values in {y.size} rows, {once} of them seen once, e.g. "
        f"{examples}): a regression target, and the suite evaluates classifiers; {fix}"
    )


def check_split_feasible(y: np.ndarray, test_size: float, who: str, class_names: Sequence[str] | None = None) -> None:
    """DataError unless a stratified split with this test fraction can hold every class on both sides."""
    n = int(y.shape[0])
    counts = np.bincount(y)
    k = int(counts.size)
    if n < k:
        raise DataError(f"{who}: {n} rows for {k} classes; need at least 2 rows per class for a train/test split")
    rare = np.flatnonzero(counts < 2)
    if rare.size:
        names = [class_names[int(c)] if class_names is not None else str(c) for c in rare]
        raise DataError(
            f"{who}: class {short_list(names, limit=10)} has fewer than 2 rows; a stratified train/test split needs at least "
            f"2 rows per class (drop or merge rare classes)"
        )
    n_test = math.ceil(test_size * n)
    n_train = n - n_test
    if n_test < k or n_train < k:
        side, m = ("test", n_test) if n_test < k else ("train", n_train)
        raise DataError(
            f"{who}: test_size={test_size} of {n} rows leaves {m} {side} rows for {k} classes; a stratified split "
            f"needs at least one row per class on each side (use more rows or change test_size)"
        )


def check_test_size(test_size: Any, who: str) -> float:
    """The test fraction as a float strictly between 0 and 1, else DataError."""
    try:
        t = float(test_size)
    except (TypeError, ValueError):
        raise DataError(f"{who}: test_size must be a number in (0, 1), got {test_size!r}") from None
    if not 0.0 < t < 1.0:
        raise DataError(f"{who}: test_size must be in (0, 1), got {test_size!r}")
    return t


def stratified_split(y: np.ndarray, test_size: float, seed: int, who: str = "dataset",
                     class_names: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, test) of a seeded stratified shuffle split (same seed -> same split)."""
    from sklearn.model_selection import train_test_split

    check_split_feasible(y, test_size, who, class_names)
    idx = np.arange(y.shape[0])
    tr, te = train_test_split(idx, test_size=test_size, random_state=int(seed), shuffle=True, stratify=y)
    return np.asarray(tr, dtype=np.int64), np.asarray(te, dtype=np.int64)


def fit_standardizer(X_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and std (ddof=0) of the training rows; constant columns get std 1.

    Columns constant only up to rounding (relative spread below 1e-12 but not zero) are divided
    by max(1, |mean|) instead, so their rounding noise stays below 1e-12 after scaling even at
    magnitudes like 1e30. Columns whose plain sums overflow float64 (magnitudes near 1e308) are
    measured on the column divided by its largest magnitude, so the statistics stay finite.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        mean = X_train.mean(axis=0)
        std = X_train.std(axis=0)
    bad = ~(np.isfinite(mean) & np.isfinite(std))
    if bad.any():
        scale = np.max(np.abs(X_train[:, bad]), axis=0)
        scale = np.where(scale > 0, scale, 1.0)
        Z = X_train[:, bad] / scale
        mean[bad] = Z.mean(axis=0) * scale
        std[bad] = Z.std(axis=0) * scale
    unit = np.maximum(1.0, np.abs(mean))
    constant = std <= 1e-12 * unit
    std = np.where(constant, np.where(std == 0, 1.0, unit), std)
    return mean, std


def apply_standardizer(X: np.ndarray, mean: np.ndarray, std: np.ndarray, who: str,
                       feature_names: Sequence[str] | None = None, part: str = "rows") -> np.ndarray:
    """(X - mean) / std, finite or DataError naming the columns that overflow float64.

    Entries whose plain difference overflows are recomputed in units of max(|mean|, std); what
    is still not finite (a value astronomically far from the training spread) is refused.
    """
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        Z = (X - mean) / std
        bad = ~np.isfinite(Z)
        if bad.any():
            unit = np.maximum(np.abs(mean), std)
            Z = np.where(bad, (X / unit - mean / unit) / (std / unit), Z)
    bad = ~np.isfinite(Z)
    if bad.any():
        cols = np.flatnonzero(bad.any(axis=0))
        names = [feature_names[int(c)] if feature_names is not None else str(c) for c in cols]
        raise DataError(
            f"{who}: standardising the {part} with the training rows' mean/std overflows float64 in columns "
            f"{short_list(names)}; rescale those columns or pass standardize=False"
        )
    return Z


def build_dataset(
    name: str,
    X: Any,
    y: Any,
    *,
    seed: int,
    feature_names: Sequence[str] | None = None,
    class_names: Sequence[str] | None = None,
    test_size: float = DEFAULT_TEST_SIZE,
    standardize: bool = True,
    meta: dict[str, Any] | None = None,
) -> Dataset:
    """Validate, encode, split (stratified, by seed) and standardise (train statistics only) one table.

    `meta` is copied into the Dataset's meta, which also records the split indices into the input
    rows, the seed, the test fraction and the mean/std used (None when not standardised).
    """
    who = f"dataset {name!r}"
    d = np.asarray(X).shape[1] if np.asarray(X).ndim == 2 else 0
    names = [str(f) for f in feature_names] if feature_names is not None else [f"x{i + 1}" for i in range(d)]
    X = check_finite_features(X, who, names)
    if len(names) != X.shape[1]:
        raise DataError(f"{who}: {len(names)} feature names for {X.shape[1]} columns")
    codes, cls = encode_labels(y, who, class_names)
    check_not_continuous(y, who, (meta or {}).get("target"))
    if codes.shape[0] != X.shape[0]:
        raise DataError(f"{who}: {X.shape[0]} feature rows but {codes.shape[0]} labels")
    test_size = check_test_size(test_size, who)
    tr, te = stratified_split(codes, test_size, seed, who, cls)
    X_train, X_test = X[tr], X[te]
    mean = std = None
    if standardize:
        mean, std = fit_standardizer(X_train)
        X_train = apply_standardizer(X_train, mean, std, who, names, "training rows")
        X_test = apply_standardizer(X_test, mean, std, who, names, "test rows")
    info = dict(meta or {})
    info.update({
        "seed": int(seed), "test_size": test_size, "standardize": bool(standardize), "mean": mean, "std": std,
        "train_index": tr, "test_index": te, "n_rows": int(X.shape[0]),
        "class_counts": np.bincount(codes, minlength=len(cls)).tolist(),
    })
    return Dataset(
        name=name, X_train=np.ascontiguousarray(X_train), y_train=codes[tr], X_test=np.ascontiguousarray(X_test),
        y_test=codes[te], feature_names=names, n_classes=len(cls), class_names=cls, meta=info,
    )
