"""The 121 UCI datasets of Fernández-Delgado et al. (JMLR 15:3133, 2014), read from their original layout.

Layout of one dataset directory (as distributed in the authors' data.tar.gz)::

    <root>/<name>/<name>_R.dat          tab-separated; a header line "<tab>f1<tab>...<tab>clase";
                                        each row: a row number, the features, then the integer class
    <root>/<name>/conxuntos.dat         2 lines of 0-based row indices: search-train half, validation half
    <root>/<name>/conxuntos_kfold.dat   8 lines: for each of the 4 folds a train line then a test line
    <root>/<name>/<name>.txt            optional metadata ("fich1= <data file>", "n_clases= K", ...)

Datasets that come with a separate test file name their training file in `<name>.txt`
(`fich1= <name>_train_R.dat`); the index files refer to that file's rows, as in the original
protocol, and the separate test file is not used.

The collection is already preprocessed by its providers, so features are NOT re-standardised
by default (`standardize=False`); with `standardize=True` the fold's training rows give the
mean/std. The root directory comes from `root=` (or `uci_dir=`) or the environment variable
RBA_UCI121_DIR. Nothing is downloaded or written.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from ..errors import DataError
from ..fingerprint import file_digest
from .tabular import Dataset, apply_standardizer, check_finite_features, encode_labels, fit_standardizer, short_list

log = logging.getLogger(__name__)

ENV_VAR = "RBA_UCI121_DIR"
VAL_FILE = "conxuntos.dat"
KFOLD_FILE = "conxuntos_kfold.dat"
LABEL_COLUMN = "clase"
N_FOLDS = 4
LAYOUT = "expected <root>/<name>/<name>_R.dat, conxuntos.dat (2 index lines) and conxuntos_kfold.dat (8 index lines)"
VAL_MODES = ("conxuntos", "none")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class UCITable:
    """One dataset as stored: all rows, the index lines of both split files and the metadata file."""

    name: str
    directory: Path
    data_file: Path
    X: np.ndarray
    labels: np.ndarray
    feature_names: list[str]
    search_split: tuple[np.ndarray, np.ndarray]
    folds: list[tuple[np.ndarray, np.ndarray]]
    info: dict[str, str] = field(default_factory=dict)


def resolve_root(root: str | os.PathLike | None = None) -> Path:
    """The collection's root directory: the argument, else $RBA_UCI121_DIR; DataError if neither is usable."""
    if root is None or str(root) == "":
        env = os.environ.get(ENV_VAR, "")
        if not env:
            raise DataError(f"uci121: no data directory; pass root=<dir> or set {ENV_VAR} ({LAYOUT})")
        root = env
    p = Path(os.path.expanduser(str(root)))
    if not p.is_dir():
        raise DataError(f"uci121: data directory {p} does not exist; pass root=<dir> or set {ENV_VAR} ({LAYOUT})")
    return p


def _is_dataset_dir(d: Path) -> bool:
    return d.is_dir() and (d / KFOLD_FILE).is_file() and (d / VAL_FILE).is_file() and (
        (d / f"{d.name}_R.dat").is_file() or (d / f"{d.name}.txt").is_file()
    )


def list_uci121(root: str | os.PathLike | None = None) -> list[str]:
    """Sorted names of the dataset directories under `root` that have the index files and a data file."""
    base = resolve_root(root)
    return sorted(d.name for d in base.iterdir() if _is_dataset_dir(d))


def read_info(path: Path) -> dict[str, str]:
    """Parse a `<name>.txt` metadata file ("key= value" per line) into {key: value}."""
    info: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].endswith("="):
            info[parts[0][:-1]] = parts[1]
    return info


def read_index_lines(path: Path, expected: int, n_rows: int, who: str) -> list[np.ndarray]:
    """The first `expected` non-empty lines of an index file as int64 arrays, range-checked."""
    if not path.is_file():
        raise DataError(f"{who}: missing file {path}; {LAYOUT}")
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    if len(lines) < expected:
        raise DataError(f"{who}: {path.name} has {len(lines)} index lines, expected {expected}; {LAYOUT}")
    out = []
    for i, ln in enumerate(lines[:expected], start=1):
        try:
            idx = np.array([int(t) for t in ln.split()], dtype=np.int64)
        except ValueError:
            raise DataError(f"{who}: {path.name} line {i} holds a non-integer index; expected 0-based row numbers") from None
        if idx.size == 0:
            raise DataError(f"{who}: {path.name} line {i} is empty")
        if idx.min() < 0 or idx.max() >= n_rows:
            raise DataError(
                f"{who}: {path.name} line {i} has index {int(idx.max() if idx.max() >= n_rows else idx.min())} "
                f"outside 0..{n_rows - 1} (the data file has {n_rows} rows)"
            )
        out.append(idx)
    return out


def _data_file(directory: Path, name: str, who: str) -> tuple[Path, dict[str, str]]:
    info_path = directory / f"{name}.txt"
    info = read_info(info_path) if info_path.is_file() else {}
    fname = info.get("fich1", f"{name}_R.dat")
    if "/" in fname or "\\" in fname or fname.startswith(".."):
        raise DataError(f"{who}: {info_path.name} names an unusable data file {fname!r}")
    path = directory / fname
    if not path.is_file():
        raise DataError(f"{who}: missing file {path}; {LAYOUT}")
    return path, info


def read_uci121(name: str, root: str | os.PathLike | None = None) -> UCITable:
    """Read one dataset directory (data file, both index files, optional metadata), checking the layout."""
    base = resolve_root(root)
    who = f"uci121:{name}"
    if not _SAFE_NAME.match(name or ""):
        raise DataError(f"{who}: not a dataset directory name; see list_uci121() for the names under {base}")
    directory = base / name
    if not directory.is_dir():
        import difflib

        names = list_uci121(base)
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise DataError(f"{who}: unknown dataset (no directory {directory}){hint} available ({len(names)}): {short_list(names)}")
    for fname in (VAL_FILE, KFOLD_FILE):
        if not (directory / fname).is_file():
            raise DataError(f"{who}: missing file {directory / fname}; {LAYOUT}")
    path, info = _data_file(directory, name, who)
    X, labels, feats = _read_data_file(path, who)
    n = X.shape[0]
    if "n_patrons1" in info and info["n_patrons1"].isdigit() and int(info["n_patrons1"]) != n:
        log.warning("%s: %s says %s rows but %s has %d", who, f"{name}.txt", info["n_patrons1"], path.name, n)
    search = read_index_lines(directory / VAL_FILE, 2, n, who)
    kfold = read_index_lines(directory / KFOLD_FILE, 2 * N_FOLDS, n, who)
    folds = [(kfold[2 * f], kfold[2 * f + 1]) for f in range(N_FOLDS)]
    for f, (tr, te) in enumerate(folds):
        both = np.intersect1d(tr, te)
        if both.size:
            log.warning("%s: fold %d has %d rows in both train and test", who, f, both.size)
    return UCITable(name, directory, path, X, labels, feats, (search[0], search[1]), folds, info)


def _read_data_file(path: Path, who: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import pandas as pd

    try:
        frame = pd.read_csv(path, sep="\t", header=0, index_col=0)
    except Exception as exc:  # noqa: BLE001 - one clear line
        raise DataError(f"{who}: {path.name} could not be parsed as a tab-separated table ({type(exc).__name__}); {LAYOUT}") from None
    cols = [str(c) for c in frame.columns]
    if len(cols) < 2 or cols[-1].strip() != LABEL_COLUMN:
        raise DataError(
            f"{who}: {path.name} must have a header whose last column is {LABEL_COLUMN!r} after the features "
            f"(got {short_list(cols[-3:])}); {LAYOUT}"
        )
    if frame.shape[0] == 0:
        raise DataError(f"{who}: {path.name} has no rows")
    feats = cols[:-1]
    bad = [c for c in feats if not pd.api.types.is_numeric_dtype(frame[c])]
    if bad:
        raise DataError(f"{who}: {path.name} has non-numeric feature columns {short_list(bad)}")
    X = check_finite_features(frame[feats].to_numpy(dtype=np.float64, na_value=np.nan), f"{who} ({path.name})", feats)
    labels = frame.iloc[:, -1].to_numpy()
    return X, labels, feats


def load_uci121(
    name: str,
    seed: int = 0,
    *,
    root: str | os.PathLike | None = None,
    uci_dir: str | os.PathLike | None = None,
    fold: int | None = None,
    standardize: bool = False,
    val: str = "conxuntos",
) -> Dataset:
    """One UCI-121 dataset with the fold's train/test rows from conxuntos_kfold.dat.

    The fold is `fold` (0..3) if given, else `seed % 4`. X_val/y_val are the validation half of
    conxuntos.dat (`val="none"` leaves them None). As in the original protocol that half is
    drawn from all rows, so it overlaps the fold's test rows: use it for hyperparameter search
    the way the original experiments do, not as held-out data. Labels are encoded over the whole
    file, so every fold shares one class coding. Features are used as stored unless
    `standardize=True` (the collection is preprocessed already).
    """
    if root is not None and uci_dir is not None and str(root) != str(uci_dir):
        raise DataError(f"uci121:{name}: pass root= or uci_dir=, not both")
    table = read_uci121(name, root if root is not None else uci_dir)
    who = f"uci121:{name}"
    if fold is None:
        fold = int(seed) % N_FOLDS
    if isinstance(fold, bool) or not isinstance(cast(object, fold), (int, np.integer)) or not 0 <= int(fold) < N_FOLDS:  # untyped callers
        raise DataError(f"{who}: fold must be an integer 0..{N_FOLDS - 1}, got {fold!r}")
    fold = int(fold)
    if val not in VAL_MODES:
        raise DataError(f"{who}: val must be one of {', '.join(VAL_MODES)}, got {val!r}")
    codes, cls = encode_labels(table.labels, who)
    k = len(cls)
    tr, te = table.folds[fold]
    va = table.search_split[1]
    X_train, X_test = table.X[tr], table.X[te]
    X_val = table.X[va] if val == "conxuntos" else None
    mean = std = None
    if standardize:
        mean, std = fit_standardizer(X_train)
        feats = list(table.feature_names)
        X_train = apply_standardizer(X_train, mean, std, who, feats, "training rows")
        X_test = apply_standardizer(X_test, mean, std, who, feats, "test rows")
        X_val = None if X_val is None else apply_standardizer(X_val, mean, std, who, feats, "validation rows")
    missing = [cls[c] for c in range(k) if not np.any(codes[tr] == c)]
    if missing:
        log.warning("%s fold %d: classes %s have no training rows", who, fold, ", ".join(missing))
    meta: dict[str, Any] = {
        "source": f"UCI-121 collection (Fernández-Delgado et al. 2014), {table.data_file}",
        "root": str(table.directory.parent), "sha256": file_digest(table.directory), "data_file": table.data_file.name, "fold": fold, "seed": int(seed),
        "standardize": bool(standardize), "mean": mean, "std": std, "val": val,
        "train_index": tr, "test_index": te, "val_index": va if val == "conxuntos" else None,
        "search_train_index": table.search_split[0], "n_rows": int(table.X.shape[0]),
        "class_counts": np.bincount(codes, minlength=k).tolist(),
        "classes_missing_in_train": missing,
        "val_test_overlap": int(np.intersect1d(va, te).size) if val == "conxuntos" else 0,
        "info": dict(table.info),
        "params": {"root": str(table.directory.parent), "fold": fold, "standardize": bool(standardize), "val": val},
    }
    return Dataset(
        name=who, X_train=np.ascontiguousarray(X_train), y_train=codes[tr], X_test=np.ascontiguousarray(X_test),
        y_test=codes[te], feature_names=list(table.feature_names), n_classes=k,
        X_val=None if X_val is None else np.ascontiguousarray(X_val), y_val=codes[va] if val == "conxuntos" else None,
        class_names=cls, meta=meta,
    )
