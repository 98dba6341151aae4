"""The SQLite result store: one row per run, one row per (run, point), versioned schema, WAL mode.

Only the driver process writes. A run and all its point rows go in one transaction, so a process
killed at any moment leaves either the whole run or nothing. Finished runs are never recomputed.
A lock file stops two drivers from writing the same store at once.
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from collections.abc import Hashable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import StoreError, first_line
from ..jsonable import jsonable
from ..metrics.registry import STORED_METRICS

SCHEMA_VERSION = 1

RUN_COLUMNS = [
    "run_id", "model", "family", "dataset", "threat", "norm", "seed", "status", "error", "config", "versions",
    "fit_time", "eval_time", "clean_accuracy", "n_points", "attacks", "flags", "rejected", "fit_cached", "created",
]
POINT_METRICS = [m.name for m in STORED_METRICS]  # one REAL column each, declared in `metrics.registry`
# columns added after the first schema, nullable (old rows read NULL): name -> SQL type
ADDED_POINT_COLUMNS = {"exact": "INTEGER", "cert": "TEXT"}
POINT_COLUMNS = ["run_id", "idx", "test_index", "y", "pred", "correct", "radius", "lower_bound", "by_attack", "robust_at",
                 *ADDED_POINT_COLUMNS, *POINT_METRICS]

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
  run_id TEXT PRIMARY KEY, model TEXT NOT NULL, family TEXT, dataset TEXT NOT NULL, threat TEXT NOT NULL,
  norm TEXT, seed INTEGER NOT NULL, status TEXT NOT NULL, error TEXT, config TEXT NOT NULL, versions TEXT,
  fit_time REAL, eval_time REAL, clean_accuracy REAL, n_points INTEGER, attacks TEXT, flags TEXT,
  rejected INTEGER, fit_cached INTEGER, created REAL
);
CREATE TABLE IF NOT EXISTS points (
  run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE, idx INTEGER NOT NULL, test_index INTEGER,
  y INTEGER, pred INTEGER, correct INTEGER, radius REAL, lower_bound REAL, by_attack TEXT, robust_at TEXT,
  {", ".join(f"{c} {t}" for c, t in ADDED_POINT_COLUMNS.items())},
  {", ".join(f"{m} REAL" for m in POINT_METRICS)},
  PRIMARY KEY (run_id, idx)
);
CREATE INDEX IF NOT EXISTS runs_by_cell ON runs (dataset, threat, model);
"""


@dataclass
class RunRecord:
    """A finished run and its per-point rows, as produced by a job (plain data: picklable, JSON-able)."""

    run: dict[str, Any]
    points: list[dict[str, Any]]


class RecordError(StoreError, sqlite3.IntegrityError):
    """A run record the store cannot hold (a required field missing, a point index repeated, ...).

    Also an sqlite3.IntegrityError, the constraint failure it reports; the run was rolled back.
    """


_INT64 = (-(2**63), 2**63 - 1)


JSON_COLUMNS = frozenset({"config", "versions", "attacks", "flags", "robust_at"})


def _clean(v: Any, column: str = "value", as_json: bool = False) -> Any:
    """SQLite-friendly scalar: numpy scalars to Python, NaN to NULL (inf is kept: SQLite stores it).

    Containers (and every value of a JSON column, `as_json`) become JSON text, so what is read
    back decodes; anything SQLite cannot hold exactly (integers beyond 64 bits, complex numbers,
    arbitrary objects) raises StoreError naming the column, before any write.
    """
    if v is None:
        return None
    if as_json and not isinstance(v, (dict, list, tuple, set, frozenset)):
        v = [v]  # encode through the container path, then unwrap the list
        text = _clean(v, column)
        return text[1:-1] if text not in ("[null]", "[NaN]") else None
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        try:
            v = v.item()
        except (ValueError, TypeError):  # a numpy array of several values: store it as a JSON list
            v = v.tolist() if hasattr(v, "tolist") else v
    if isinstance(v, float) and math.isnan(v):
        return None
    if isinstance(v, (dict, list, tuple, set, frozenset)):
        try:
            return json.dumps(jsonable(v), sort_keys=True, default=str)
        except (TypeError, ValueError, RecursionError) as exc:
            raise StoreError(f"{column}: cannot be stored as JSON ({first_line(exc)})") from None
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        if not _INT64[0] <= v <= _INT64[1]:
            raise StoreError(f"{column}: integer {v} is outside SQLite's 64-bit range")
        return v
    if isinstance(v, (float, str, bytes)):
        return v
    raise StoreError(f"{column}: a {type(v).__name__} cannot be stored; use numbers, text or JSON-able containers")


class Store:
    """A results database at `path` (created on first use)."""

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        if readonly and not self.path.exists():
            raise StoreError(f"no store at {str(self.path)!r}; run `rba run` first or pass --store")
        if self.path.exists() and not self.path.is_file():
            raise StoreError(f"{str(self.path)!r} is not a file; point --store at a result store file")
        try:
            if self.path.exists():
                self._check_header()
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot use {str(self.path)!r} as a result store ({first_line(exc)})") from None
        try:
            uri = f"file:{self.path}?mode=ro" if readonly else str(self.path)
            self.conn = sqlite3.connect(uri, uri=readonly, timeout=30, isolation_level=None)
            self.conn.execute("PRAGMA foreign_keys=ON")
            if not readonly:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
            self._init_schema()
        except (sqlite3.Error, UnicodeDecodeError, ValueError) as exc:  # damaged header pages, undecodable text
            raise StoreError(f"{str(self.path)!r} is not a usable result store ({first_line(exc)}); point --store at another file or delete it") from None

    def _check_header(self) -> None:
        size = self.path.stat().st_size
        if size == 0:
            return
        with self.path.open("rb") as fh:
            head = fh.read(100)
        if not head.startswith(b"SQLite format 3\x00"):
            raise StoreError(f"{str(self.path)!r} is not a result store (not an SQLite file); point --store at another file")
        page_size = int.from_bytes(head[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        n_pages = int.from_bytes(head[28:32], "big")
        if page_size and n_pages and size < page_size * n_pages and not Path(str(self.path) + "-wal").exists():
            raise StoreError(f"{str(self.path)!r} is truncated ({size} bytes, header says {page_size * n_pages}); restore it or delete it and re-run")

    def _init_schema(self) -> None:
        cur = self.conn.cursor()
        has_meta = cur.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if has_meta:
            row = cur.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            version = int(row[0]) if row else None
            if version is None:
                raise StoreError(f"{str(self.path)!r} has no schema version; it is not a result store")
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"{str(self.path)!r} has schema version {version}, newer than this version's {SCHEMA_VERSION}; upgrade robustbench-align"
                )
            ok = cur.execute("PRAGMA quick_check").fetchone()
            if not ok or ok[0] != "ok":
                detail = " ".join(str(ok[0]).split()) if ok else "no answer"
                raise StoreError(f"{str(self.path)!r} is corrupted ({detail[:200]}); restore it or delete it and re-run")
            if not self.readonly:
                self._add_metric_columns(cur)
            return
        tables = cur.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
        if tables:
            raise StoreError(f"{str(self.path)!r} is an SQLite file but not a result store (tables: {', '.join(t[0] for t in tables)[:80]})")
        if self.readonly:
            raise StoreError(f"{str(self.path)!r} is empty; run `rba run` first")
        # the schema text and SCHEMA_VERSION are module constants (metric columns from metrics.registry), not input
        cur.executescript("BEGIN;" + _SCHEMA + f"INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'); COMMIT;")  # noqa: S608

    def _add_metric_columns(self, cur: sqlite3.Cursor) -> None:
        """Give a store created before a metric (or a later point column) was declared that column (NULL in its old rows).

        Adding a nullable column keeps the schema readable by every version, so no version bump.
        """
        have = {row[1] for row in cur.execute("PRAGMA table_info(points)")}
        for name, kind in [*ADDED_POINT_COLUMNS.items(), *((m, "REAL") for m in POINT_METRICS)]:
            if have and name not in have:
                cur.execute(f"ALTER TABLE points ADD COLUMN {name} {kind}")

    # --- writing ---------------------------------------------------------------------
    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Cursor]:
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
        except BaseException:
            if self.conn.in_transaction:
                cur.execute("ROLLBACK")
            raise
        cur.execute("COMMIT")

    def write(self, records: Iterable[RunRecord]) -> int:
        """Insert runs with their points, each run atomically; an existing run_id is replaced.

        Every value is encoded before the transaction starts, so a run that cannot be stored
        raises StoreError (RecordError for constraint failures) and leaves the store as it was.
        """
        if self.readonly:
            raise StoreError(f"{str(self.path)!r} was opened read-only; open it without readonly=True to write")
        n = 0
        for rec in records:
            rid = rec.run.get("run_id")
            if not isinstance(rid, str) or not rid:
                raise RecordError(f"run record without a run_id (got {rid!r}); nothing was written for it")
            run = {k: _clean(rec.run.get(k), f"run {rid!r} {k}", k in JSON_COLUMNS) for k in RUN_COLUMNS}
            run["created"] = run["created"] or time.time()
            rows = [[_clean(p.get(k), f"run {rid!r} point {i} {k}", k in JSON_COLUMNS) if k != "run_id" else run["run_id"]
                     for k in POINT_COLUMNS] for i, p in enumerate(rec.points)]
            try:
                with self._tx() as cur:
                    cur.execute("DELETE FROM runs WHERE run_id=?", (run["run_id"],))
                    # column names are the module constants RUN_COLUMNS/POINT_COLUMNS (metric names declared in
                    # metrics.registry), never input; every value is bound through a ? placeholder
                    cur.execute(f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})",  # noqa: S608
                                [run[k] for k in RUN_COLUMNS])
                    if rows:
                        cur.executemany(f"INSERT INTO points ({', '.join(POINT_COLUMNS)}) VALUES ({', '.join('?' * len(POINT_COLUMNS))})",  # noqa: S608
                                        rows)
            except sqlite3.IntegrityError as exc:
                raise RecordError(f"run {rid!r} was not written: {first_line(exc)}") from None
            except sqlite3.Error as exc:
                raise StoreError(f"run {rid!r} was not written to {str(self.path)!r}: {first_line(exc)}") from None
            n += 1
        return n

    # --- reading ---------------------------------------------------------------------
    def _query(self, q: str, params: list[Any] | None = None) -> pd.DataFrame:
        """A query as a DataFrame; StoreError when the file turns out to be damaged while reading."""
        try:
            return pd.read_sql_query(q, self.conn, params=params or [])
        except (sqlite3.Error, pd.errors.DatabaseError, UnicodeDecodeError) as exc:
            raise StoreError(f"{str(self.path)!r} cannot be read ({first_line(exc)}); restore it or delete it and re-run") from None

    def _json_column(self, df: pd.DataFrame, col: str) -> None:
        def load(s: Any) -> Any:
            if not (isinstance(s, str) and s):
                return None
            try:
                return json.loads(s)
            except (ValueError, RecursionError):
                raise StoreError(f"{str(self.path)!r}: column {col} holds malformed JSON ({s[:40]!r}); the store is damaged") from None

        df[col] = df[col].map(load)

    def finished(self, include_failed: bool = True) -> set[str]:
        q = "SELECT run_id FROM runs" + ("" if include_failed else " WHERE status='ok'")  # noqa: S608 - two literal strings, no input
        try:
            return {r[0] for r in self.conn.execute(q)}
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise StoreError(f"{str(self.path)!r} cannot be read ({first_line(exc)}); restore it or delete it and re-run") from None

    def runs(self) -> pd.DataFrame:
        df = self._query("SELECT * FROM runs ORDER BY dataset, threat, model, seed")
        for col in ("config", "versions", "attacks", "flags"):
            self._json_column(df, col)
        return df

    def points(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        q = "SELECT p.*, r.model, r.family, r.dataset, r.threat, r.norm, r.seed FROM points p JOIN runs r USING (run_id)"
        params: list[Any] = []
        if run_ids is not None:
            ids = list(run_ids)
            q += f" WHERE p.run_id IN ({', '.join('?' * len(ids))})"
            params = ids
        df = self._query(q + " ORDER BY r.dataset, r.threat, r.model, r.seed, p.idx", params)
        self._json_column(df, "robust_at")
        return df

    def dump(self) -> dict[str, list[dict[Hashable, Any]]]:
        """Everything but timings and creation stamps, for equality checks between runs."""
        runs = self.runs().drop(columns=["fit_time", "eval_time", "created", "fit_cached"]).to_dict("records")
        pts = self.points().to_dict("records")
        return {"runs": runs, "points": pts}

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextmanager
def exclusive(path: str | os.PathLike, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on `path` + '.lock' while a driver writes; refuse (or wait) if taken."""
    import fcntl

    lock_path = Path(str(path) + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fh = lock_path.open("a+")
    except OSError as exc:
        raise StoreError(f"cannot create the lock file {str(lock_path)!r} ({first_line(exc)}); check the --store path and its permissions") from None
    try:
        flags = fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB)
        try:
            fcntl.flock(fh, flags)
        except BlockingIOError:
            fh.seek(0)
            owner = fh.read().strip() or "another process"
            raise StoreError(f"store {str(path)!r} is in use by {owner}; wait for it to finish or pass --wait") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}")
        fh.flush()
        yield
    finally:
        try:
            fcntl.flock(fh, fcntl.LOCK_UN)
        finally:
            fh.close()
