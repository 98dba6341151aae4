"""User tables from CSV or Parquet files (`csv:<path>`, `parquet:<path>`), read with pandas.

One column is the label (the `target` parameter, else the first column named target, label,
class or y); every other column, apart from those listed in `drop`, must be numeric. The table
then goes through the shared pipeline in `tabular.build_dataset` (stratified split by seed,
train-only standardisation). Nothing is written.

The path must be a regular file (a directory, FIFO or device is named as such and never opened),
and a file with more than $RBA_MAX_COLUMNS columns (default 20,000) is refused from its header or
schema, before it is parsed.
"""
from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, first_line
from ..guards import env_cap, file_kind
from .tabular import DEFAULT_TEST_SIZE, Dataset, build_dataset, one_line, short_list

TARGET_CANDIDATES = ("target", "label", "class", "y")
FORMATS = ("csv", "parquet")
FORMAT_NAMES = {"csv": "CSV", "parquet": "Parquet"}
MAX_COLUMNS_ENV = "RBA_MAX_COLUMNS"
DEFAULT_MAX_COLUMNS = 20_000  # columns in the file (features, target and dropped ones)


def read_table(kind: str, path: str | os.PathLike) -> Any:
    """Read a CSV or Parquet file into a pandas DataFrame; DataError with one line if that fails."""
    import pandas as pd

    if kind not in FORMATS:
        raise DataError(f"unknown table format {kind!r}; use one of {', '.join(FORMATS)}")
    p = Path(os.path.expanduser(str(path)))
    who = one_line(f"{kind}:{path}")
    if not str(path):
        raise DataError(f"{kind}: no path given; write {kind}:<path to the file>")
    check_regular_file(p, who, f"a {FORMAT_NAMES[kind]} file")
    cap = env_cap(MAX_COLUMNS_ENV, DEFAULT_MAX_COLUMNS)
    try:
        if kind == "csv":
            header = _csv_header(p)
            _check_columns(len(header), cap, who)
            dup = _duplicates(header)
            if dup:
                raise DataError(f"{who}: duplicate column names {short_list(dup)}; rename them")
            data, digest = _read_bytes(p)
            frame = pd.read_csv(io.BytesIO(data))
        else:
            try:
                import pyarrow.parquet as pq
            except ImportError:
                raise DataError(f"{who}: reading Parquet needs pyarrow; pip install 'robustbench-align[parquet]'") from None
            data, digest = _read_bytes(p)
            _check_columns(len(pq.read_schema(io.BytesIO(data)).names), cap, who)
            frame = pd.read_parquet(io.BytesIO(data))
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure becomes one clear line
        raise DataError(f"{who}: could not be read as {kind} ({first_line(exc)})") from None
    if frame.shape[0] == 0:
        raise DataError(f"{who}: the table has no rows")
    frame.attrs["sha256"] = digest  # the identity of exactly the bytes parsed
    return frame


def _read_bytes(path: Path) -> tuple[bytes, str]:
    """The file's bytes (read once, so the digest is of exactly what is parsed) and their SHA-256."""
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


def check_regular_file(path: Path, who: str, wanted: str) -> None:
    """DataError (one line) unless `path` is an existing regular file (after symlinks): it says what the path is instead.

    A FIFO or device is refused without opening it (reading one could block or never end).
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        broken = " (a broken symbolic link)" if path.is_symlink() else ""
        raise DataError(f"{who}: no such file{broken} ({one_line(path.resolve())}); give {wanted}") from None
    except OSError as exc:
        raise DataError(f"{who}: cannot be inspected ({first_line(exc)}); give {wanted}") from None
    kind = file_kind(mode)
    if kind is not None:
        raise DataError(f"{who}: is {kind} ({one_line(path.resolve())}); give {wanted}")


def _check_columns(n_columns: int, cap: int, who: str) -> None:
    """DataError when a table has more columns than the column cap (checked from the header, before parsing)."""
    if n_columns > cap:
        raise DataError(
            f"{who}: {n_columns} columns exceed the column cap of {cap} ({MAX_COLUMNS_ENV}); drop unused columns from the file, "
            f"or set {MAX_COLUMNS_ENV} to a larger number to load it anyway"
        )


def _duplicates(names: Sequence[Any]) -> list[str]:
    """The names that occur more than once, sorted (linear time: headers can be very wide)."""
    counts = Counter(names)
    return sorted(str(c) for c, k in counts.items() if k > 1)


def _csv_header(path: Path) -> list[str]:
    """The raw names in a CSV file's first record (pandas renames duplicates to a.1, so look first)."""
    import csv

    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:
            return next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []  # pandas reports the problem with the file itself


def find_target(columns: Sequence[str], who: str, target: str | None = None) -> str:
    """The label column: `target` if given, else the first of target/label/class/y (exact, then any case)."""
    cols = [str(c) for c in columns]
    if target is not None:
        if str(target) not in cols:
            raise DataError(f"{who}: target column {target!r} not found; available columns: {short_list(cols)}")
        return str(target)
    for cand in TARGET_CANDIDATES:
        if cand in cols:
            return cand
    lower = {c.lower(): c for c in reversed(cols)}
    for cand in TARGET_CANDIDATES:
        if cand in lower:
            return lower[cand]
    raise DataError(
        f"{who}: no target column (looked for {', '.join(TARGET_CANDIDATES)}); pass target=<column>; "
        f"available columns: {short_list(cols)}"
    )


def load_table(
    kind: str,
    path: str,
    seed: int = 0,
    *,
    target: str | None = None,
    drop: Sequence[str] | str | None = None,
    test_size: float = DEFAULT_TEST_SIZE,
    standardize: bool = True,
) -> Dataset:
    """Load `csv:<path>` or `parquet:<path>` as a Dataset (numeric features, any label values).

    `drop` names columns to ignore (an id column, say). Non-numeric feature columns, a missing
    target, missing values, a single class or too few rows per class raise DataError.
    """
    import pandas as pd

    who = one_line(f"{kind}:{path}")
    frame = read_table(kind, path)
    digest = frame.attrs.get("sha256")
    frame.columns = [str(c) for c in frame.columns]
    if len(set(frame.columns)) != len(frame.columns):
        dup = _duplicates(list(frame.columns))
        raise DataError(f"{who}: duplicate column names {short_list(dup)}; rename them")
    tcol = find_target(frame.columns, who, target)
    drops = [drop] if isinstance(drop, str) else list(drop or [])
    missing = [c for c in drops if c not in frame.columns]
    if missing:
        raise DataError(f"{who}: drop names unknown columns {short_list(missing)}; available columns: {short_list(list(frame.columns))}")
    if tcol in drops:
        raise DataError(f"{who}: the target column {tcol!r} is also listed in drop")
    feats = [c for c in frame.columns if c != tcol and c not in drops]
    if not feats:
        raise DataError(f"{who}: no feature columns besides the target {tcol!r}")
    dtypes = dict(zip(frame.columns, frame.dtypes, strict=True))
    bad = [c for c in feats if not pd.api.types.is_numeric_dtype(dtypes[c])]
    if bad:
        raise DataError(
            f"{who}: non-numeric feature columns {short_list(bad)}; encode them as numbers or list them in drop"
        )
    yser = frame[tcol]
    n_missing = int(yser.isna().sum())
    if n_missing:
        raise DataError(f"{who}: target column {tcol!r} has {n_missing} missing values; drop those rows first")
    X = frame[feats].to_numpy(dtype=np.float64, na_value=np.nan)
    y = yser.to_numpy()
    if y.dtype.kind not in "biuf":
        y = yser.astype(str).to_numpy(dtype=object)
    resolved = Path(os.path.expanduser(path)).resolve()
    meta = {
        "source": f"{kind} file {resolved}", "path": str(resolved), "sha256": digest, "target": tcol, "dropped": drops,
        "params": {"target": tcol, "drop": drops, "test_size": test_size, "standardize": standardize},
    }
    return build_dataset(f"{kind}:{path}", X, y, seed=seed, feature_names=feats, test_size=test_size,
                         standardize=standardize, meta=meta)
