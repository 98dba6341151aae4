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

import numpy as np
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
    """A finished run and its per-point rows, as produced by a job (plain data: picklable, JSON-able).

    A record of a chunked run (`n_chunks` > 1) holds chunk `chunk` of it: its points and the
    run fields measured on them; the store assembles the run when the last chunk arrives.
    """

    run: dict[str, Any]
    points: list[dict[str, Any]]
    chunk: int = 0
    n_chunks: int = 1


# Chunks of runs whose other chunks are still to come: the run fields and point rows (as encoded for
# the points table, in JSON) of each stored chunk. Created on first use, so stores of every version
# open unchanged; a run's chunks move to `runs`/`points` in the transaction that stores its last one.
_CHUNKS_TABLE = """CREATE TABLE IF NOT EXISTS chunks (
  run_id TEXT NOT NULL, chunk INTEGER NOT NULL, n_chunks INTEGER NOT NULL, status TEXT NOT NULL,
  run TEXT NOT NULL, points TEXT NOT NULL, created REAL, PRIMARY KEY (run_id, chunk)
)"""


def _content_key(config: Any) -> str:
    """What a run was computed on beyond its cell: the data file's content hash and the user model's fingerprint."""
    cfg: Any = config
    if isinstance(config, str):
        try:
            cfg = json.loads(config)
        except ValueError:
            cfg = {}
    if not isinstance(cfg, dict):
        cfg = {}
    params = cfg.get("model_params")
    fp = params.get("fingerprint") if isinstance(params, dict) else None
    return f"{cfg.get('data_sha256')}|{fp}"


def superseded(runs: pd.DataFrame) -> set[str]:
    """Run ids replaced by a later run of the same cell (model, dataset, threat, seed) on other content.

    When a data file changes (or a model is replaced under its name), the new runs get new keys and
    the old ones stay in the store as history; reports show only the runs on the newest content.
    """
    if runs.empty:
        return set()
    df = runs.assign(_key=runs["config"].map(_content_key), _t=pd.to_numeric(runs["created"], errors="coerce").fillna(0.0))
    out: set[str] = set()
    for _, g in df.groupby(["model", "dataset", "threat", "seed"], sort=False):
        if g["_key"].nunique() < 2:
            continue
        newest = g["_key"].iloc[int(np.argmax(g["_t"].to_numpy()))]
        out.update(g.loc[g["_key"] != newest, "run_id"])
    return out


def _merge_chunk_runs(runs: list[dict[str, Any]], rows: list[list[Any]]) -> dict[str, Any]:
    """One run row from its chunks' run rows (in chunk order) and all its point rows.

    Failed if any chunk failed (with the first chunk's error); times and rejected counts add up;
    attacks are the union in first-seen order; numeric flags add up, other flags keep their distinct
    values; clean accuracy and n_points are recomputed from the point rows.
    """
    out = dict(runs[0])
    bad = [r for r in runs if r.get("status") != "ok"]
    if bad:
        out.update({k: bad[0].get(k) for k in ("status", "error")})
    for key in ("fit_time", "eval_time"):
        vals = [r[key] for r in runs if isinstance(r.get(key), (int, float))]
        out[key] = sum(vals) if vals else None
    out["rejected"] = sum(int(r.get("rejected") or 0) for r in runs)
    out["fit_cached"] = min((int(r["fit_cached"]) for r in runs if r.get("fit_cached") is not None), default=None)
    attacks: list[Any] = []
    flags: dict[str, Any] = {}
    for r in runs:
        for a in json.loads(r["attacks"]) if r.get("attacks") else []:
            if a not in attacks:
                attacks.append(a)
        for k, v in (json.loads(r["flags"]) if r.get("flags") else {}).items():
            old = flags.get(k)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(old, (int, float)) and not isinstance(old, bool):
                flags[k] = old + v
            elif old is None:
                flags[k] = v
            elif old != v and str(v) not in str(old).split("; "):
                flags[k] = f"{old}; {v}"
    out["attacks"] = json.dumps(attacks, sort_keys=True) if attacks or runs[0].get("attacks") is not None else None
    out["flags"] = json.dumps(flags, sort_keys=True) if flags or runs[0].get("flags") is not None else None
    correct = POINT_COLUMNS.index("correct")
    out["n_points"] = len(rows)
    if not bad:
        out["clean_accuracy"] = sum(int(r[correct] or 0) for r in rows) / len(rows) if rows else None
    out["created"] = time.time()
    return out


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


def _sidecar(file: Path, suffix: str) -> Path:
    """The file SQLite (or the lock) keeps beside `file`: suffix '-wal', '-shm' or '.lock'."""
    return file.with_name(file.name + suffix)


def _dir_writable(file: Path) -> bool:
    """Whether files can be made beside `file` (False on read-only media and in unwritable directories)."""
    return os.access(file.parent, os.W_OK | os.X_OK)


def _writable(file: Path) -> bool:
    """Whether a store at `file` can be written: its directory, and the file itself when it exists."""
    return _dir_writable(file) and (not file.exists() or os.access(file, os.W_OK))


def _log_size(wal: Path) -> int:
    """Size of a write-ahead log file (0 when there is none)."""
    try:
        return wal.stat().st_size
    except OSError:
        return 0


def _read_only_message(name: str, exists: bool = True) -> str:
    """The one-line refusal to write a store (`exists`) or create one (not `exists`) where nothing can be written."""
    if not exists:
        return f"cannot create a result store at {name!r}: its directory is read-only; pass --store a path in a writable directory"
    return (f"{name!r} is on a read-only location (the file or its directory cannot be written); copy the store to a "
            "writable directory to add runs, or read it where it is with `rba leaderboard`")


def _is_read_only(exc: BaseException) -> bool:
    """Whether an sqlite3 error (or the one a pandas error wraps) says the database cannot be written."""
    for e in (exc, exc.__cause__, exc.__context__):
        if e is not None and (str(getattr(e, "sqlite_errorname", "")).startswith("SQLITE_READONLY") or "readonly database" in str(e)):
            return True
    return False


def _connect_ro(file: Path, *, immutable: bool) -> sqlite3.Connection:
    """A read-only connection to `file` (`immutable`: without locks, -wal or -shm, so nothing is created beside it)."""
    uri = file.as_uri() + ("?mode=ro&immutable=1" if immutable else "?mode=ro")
    return sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)


def _open_readonly(file: Path, name: str) -> sqlite3.Connection:
    """A read-only connection to the store `file`, also where nothing can be written (read-only media).

    SQLite reads a WAL database through its -wal and -shm files, which it creates beside the file if
    they are missing. Where they are missing and the directory is not writable, the file is opened
    immutable, which is exact when no write-ahead log holds data (a checkpointed store, as every
    store is after its last writer closed); a store whose log still holds data there is refused.
    """
    wal, shm = _sidecar(file, "-wal"), _sidecar(file, "-shm")
    immutable = not _dir_writable(file) and not (wal.exists() and shm.exists())
    if immutable and _log_size(wal) > 0:
        raise StoreError(f"{name!r} has an unfinished write-ahead log ({str(wal)!r}) on a read-only location, so it cannot be "
                         "read there; copy the store with its -wal file to a writable directory and read the copy")
    return _connect_ro(file, immutable=immutable)


def _inspect(file: Path, name: str) -> None:
    """Refuse `file` (StoreError) unless it is a result store, reading it without changing anything.

    A result store is an SQLite file with the `meta` table. The file is read immutable unless a
    writer's -wal and -shm are beside it (then through them), so no journal-mode change, table, -wal
    or -shm is ever made for a foreign database. A database without tables is refused as well: a new
    store never is one (`_create_store` makes it whole).
    """
    wal, shm = _sidecar(file, "-wal"), _sidecar(file, "-shm")
    live = wal.exists() and shm.exists()
    try:
        conn = _connect_ro(file, immutable=not live)
        try:
            tables = [str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        finally:
            conn.close()
    except (sqlite3.Error, UnicodeDecodeError, ValueError) as exc:  # damaged header pages, undecodable names
        raise StoreError(f"{name!r} is not a usable result store ({first_line(exc)}); point --store at another file, "
                         "or restore it if it is a damaged store") from None
    if "meta" in tables:
        return
    if tables:
        raise StoreError(f"{name!r} is an SQLite database but not a result store (tables: {', '.join(tables)[:80]}); "
                         "it was left unchanged: point --store at a new file")
    if not live and _log_size(wal) > 0:
        raise StoreError(f"{name!r} is not a result store (no tables, and an unfinished write-ahead log {str(wal)!r}); "
                         "it was left unchanged: point --store at a new file")
    raise StoreError(f"{name!r} is an SQLite database without tables, not a result store; it was left unchanged: "
                     "point --store at a new file or remove it")


def _check_file(file: Path, name: str) -> None:
    """Refuse (StoreError) an existing `file` that is empty, not SQLite, or shorter than its header says; OSError if unreadable."""
    size = file.stat().st_size
    if size == 0:
        raise StoreError(f"{name!r} is an empty file, not a result store; it was left unchanged: point --store at a new file or remove it")
    with file.open("rb") as fh:
        head = fh.read(100)
    if not head.startswith(b"SQLite format 3\x00"):
        raise StoreError(f"{name!r} is not a result store (not an SQLite file); point --store at another file")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    n_pages = int.from_bytes(head[28:32], "big")
    if page_size and n_pages and size < page_size * n_pages and not _sidecar(file, "-wal").exists():
        raise StoreError(f"{name!r} is truncated ({size} bytes, header says {page_size * n_pages}); restore it or delete it and re-run")


def _create_store(file: Path) -> None:
    """Create an empty store (schema, WAL mode) at `file` whole: built beside it under a temporary name, then linked in.

    A process killed meanwhile leaves no half-made store at `file` (at most a '.<name>.<pid>.<hex>.new'
    file beside it). If another process created `file` first, that file is kept.
    """
    tmp = file.with_name(f".{file.name}.{os.getpid()}.{os.urandom(4).hex()}.new")
    try:
        conn = sqlite3.connect(tmp, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # the schema text and SCHEMA_VERSION are module constants (metric columns from metrics.registry), not input
            conn.executescript("BEGIN;" + _SCHEMA + f"INSERT INTO meta VALUES ('schema_version', '{SCHEMA_VERSION}'); COMMIT;")  # noqa: S608
        finally:
            conn.close()  # the last connection checkpoints its log into the file and removes it
        try:
            os.link(tmp, file)
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links: rename, unless a file appeared meanwhile
            if not file.exists():
                os.replace(tmp, file)
    finally:
        for p in (tmp, _sidecar(tmp, "-wal"), _sidecar(tmp, "-shm")):
            p.unlink(missing_ok=True)


class Store:
    """A results database at `path` (created on first use)."""

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False):
        """Open the store at `path`, creating it when nothing is there (unless `readonly`); StoreError if it cannot be used.

        An existing file is first read without being changed (`_inspect`): one that is not a result
        store (a foreign SQLite database, an empty file) is refused and left exactly as it was.
        Symlinks are followed. `readonly` also reads a store on read-only media; without it, a store
        whose file or directory cannot be written is refused as read-only.
        """
        self.path = Path(path)
        self.readonly = readonly
        self._file = Path(os.path.realpath(self.path))  # what SQLite opens: its -wal and -shm are beside this one
        name = str(self.path)
        try:
            exists = self._file.exists()
            if readonly and not exists:
                raise StoreError(f"no store at {name!r}; run `rba run` first or pass --store")
            if exists and not self._file.is_file():
                raise StoreError(f"{name!r} is not a file; point --store at a result store file")
            if exists:
                self._check_header()
            else:
                self._file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot use {name!r} as a result store ({first_line(exc)})") from None
        if not readonly and not _writable(self._file):
            raise StoreError(_read_only_message(name, exists))
        if exists:
            _inspect(self._file, name)
        else:
            try:
                _create_store(self._file)
            except (OSError, sqlite3.Error) as exc:
                if _is_read_only(exc) or not _dir_writable(self._file):
                    raise StoreError(_read_only_message(name, exists=False)) from None
                raise StoreError(f"cannot create a result store at {name!r} ({first_line(exc)}); check the --store path and its permissions") from None
        try:
            if readonly:
                self.conn = _open_readonly(self._file, name)
            else:
                self.conn = sqlite3.connect(self._file, timeout=30, isolation_level=None)
            try:
                self.conn.execute("PRAGMA foreign_keys=ON")
                self._init_schema()
                if not readonly:
                    self.conn.execute("PRAGMA journal_mode=WAL")
                    self.conn.execute("PRAGMA synchronous=NORMAL")
                    self._add_metric_columns(self.conn.cursor())
            except BaseException:
                self.conn.close()
                raise
        except (sqlite3.Error, UnicodeDecodeError, ValueError) as exc:  # damaged header pages, undecodable text
            if _is_read_only(exc):
                raise StoreError(_read_only_message(name)) from None
            raise StoreError(f"{name!r} is not a usable result store ({first_line(exc)}); point --store at another file or delete it") from None

    def _check_header(self) -> None:
        """Refuse an empty, non-SQLite or truncated file (StoreError) before SQLite opens it."""
        _check_file(self._file, str(self.path))

    def _init_schema(self) -> None:
        """Check the opened store: it has a schema version, not newer than this version's, and passes quick_check.

        Reads only; StoreError otherwise. A new store got its schema in `_create_store`.
        """
        cur = self.conn.cursor()
        has_meta = cur.execute("SELECT name FROM sqlite_master WHERE type='table' AND name='meta'").fetchone()
        if not has_meta:  # replaced since `_inspect` read it
            raise StoreError(f"{str(self.path)!r} is not a result store (it has no meta table); point --store at a new file")
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
            if rec.n_chunks > 1:
                n += self._write_chunk(rec, run, rows)
                continue
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

    def _write_chunk(self, rec: RunRecord, run: dict[str, Any], rows: list[list[Any]]) -> int:
        """Store one chunk of a run; with its last chunk, assemble the run (1 when it was, else 0). One transaction.

        The assembled run replaces a stored run of that run_id, as `write` does for whole runs.
        """
        rid = run["run_id"]
        chunk: Any = rec.chunk  # Any: a record built elsewhere is not type-checked at run time
        n_chunks: Any = rec.n_chunks
        if not (isinstance(chunk, int) and isinstance(n_chunks, int) and 0 <= chunk < n_chunks):
            raise RecordError(f"run {rid!r}: chunk {rec.chunk!r} of {rec.n_chunks!r} is not a chunk number; nothing was written for it")
        try:
            blob = json.dumps(rows)
            with self._tx() as cur:
                cur.execute(_CHUNKS_TABLE)
                cur.execute("DELETE FROM chunks WHERE run_id=? AND n_chunks<>?", (rid, rec.n_chunks))  # planned otherwise before
                cur.execute("INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (rid, rec.chunk, rec.n_chunks, str(run["status"]), json.dumps(run), blob, time.time()))
                (have,) = cur.execute("SELECT COUNT(*) FROM chunks WHERE run_id=?", (rid,)).fetchone()
                if have < rec.n_chunks:
                    return 0
                parts = cur.execute("SELECT run, points FROM chunks WHERE run_id=? ORDER BY chunk", (rid,)).fetchall()
                runs = [json.loads(r) for r, _ in parts]
                all_rows = [row for _, pts in parts for row in json.loads(pts)]
                merged = _merge_chunk_runs(runs, all_rows)
                cur.execute("DELETE FROM runs WHERE run_id=?", (rid,))
                cur.execute(f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})",  # noqa: S608
                            [merged[k] for k in RUN_COLUMNS])
                if merged["status"] == "ok" and all_rows:
                    cur.executemany(f"INSERT INTO points ({', '.join(POINT_COLUMNS)}) VALUES ({', '.join('?' * len(POINT_COLUMNS))})",  # noqa: S608
                                    all_rows)
                cur.execute("DELETE FROM chunks WHERE run_id=?", (rid,))
        except sqlite3.IntegrityError as exc:
            raise RecordError(f"run {rid!r} chunk {rec.chunk} was not written: {first_line(exc)}") from None
        except sqlite3.Error as exc:
            raise StoreError(f"run {rid!r} chunk {rec.chunk} was not written to {str(self.path)!r}: {first_line(exc)}") from None
        return 1

    def stored_chunks(self, include_failed: bool = True) -> dict[str, set[int]]:
        """Chunks stored per run that is not assembled yet (run_id -> chunk numbers)."""
        q = "SELECT run_id, chunk FROM chunks" + ("" if include_failed else " WHERE status='ok'")  # noqa: S608 - literals only
        try:
            if not self._has_chunks():
                return {}
            out: dict[str, set[int]] = {}
            for rid, c in self.conn.execute(q):
                out.setdefault(rid, set()).add(int(c))
            return out
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise StoreError(f"{str(self.path)!r} cannot be read ({first_line(exc)}); restore it or delete it and re-run") from None

    def _has_chunks(self) -> bool:
        """Whether the (lazily created) chunks table exists."""
        return self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='chunks'").fetchone() is not None

    # --- reading ---------------------------------------------------------------------
    def _read_error(self, exc: BaseException) -> StoreError:
        """The StoreError for a failed read: read-only when SQLite could not write beside the file, else damage."""
        if _is_read_only(exc):
            return StoreError(_read_only_message(str(self.path)))
        return StoreError(f"{str(self.path)!r} cannot be read ({first_line(exc)}); restore it or delete it and re-run")

    def _query(self, q: str, params: list[Any] | None = None) -> pd.DataFrame:
        """A query as a DataFrame; StoreError when the file turns out to be damaged (or unreadable where it is) while reading."""
        try:
            return pd.read_sql_query(q, self.conn, params=params or [])
        except (sqlite3.Error, pd.errors.DatabaseError, UnicodeDecodeError) as exc:
            raise self._read_error(exc) from None

    def _json_column(self, df: pd.DataFrame, col: str) -> None:
        def load(s: Any) -> Any:
            if not (isinstance(s, str) and s):
                return None
            try:
                return json.loads(s)
            except (ValueError, RecursionError):
                raise StoreError(f"{str(self.path)!r}: column {col} holds malformed JSON ({s[:40]!r}); the store is damaged") from None

        if col not in df.columns:  # a damaged schema
            raise StoreError(f"{str(self.path)!r}: column {col} is missing; the store is damaged, restore it or delete it and re-run")
        df[col] = df[col].map(load)

    def model_identities(self, name: str) -> dict[str, list[str]]:
        """The models stored under leaderboard name `name`: identity -> their run ids.

        A user model's identity is its fingerprint ("unrecorded" for runs stored before fingerprints
        were recorded); a registry model's is "registry".
        """
        try:
            rows = list(self.conn.execute("SELECT run_id, config FROM runs WHERE model = ?", [name]))
            if self._has_chunks():
                rows += list(self.conn.execute("SELECT run_id, run FROM chunks WHERE json_extract(run, '$.model') = ?", [name]))
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise self._read_error(exc) from None
        out: dict[str, list[str]] = {}
        for run_id, blob in rows:
            try:
                cfg = json.loads(blob) if isinstance(blob, str) else {}
            except ValueError:
                cfg = {}
            cfg = cfg.get("config", cfg) if isinstance(cfg, dict) else {}  # a chunk row holds the whole run dict
            params = cfg.get("model_params") if isinstance(cfg, dict) else None
            if isinstance(params, dict) and "user_model" in params:
                ident = str(params.get("fingerprint") or "unrecorded")
            else:
                ident = "registry"
            out.setdefault(ident, []).append(run_id)
        return out

    def delete_runs(self, run_ids: Iterable[str]) -> int:
        """Delete these runs (their points and stored chunks too) in one transaction; returns how many runs went."""
        ids = sorted(set(run_ids))
        if not ids:
            return 0
        with self._tx() as cur:
            n = 0
            for i in range(0, len(ids), 500):
                part = ids[i : i + 500]
                marks = ", ".join("?" * len(part))
                cur.execute(f"DELETE FROM points WHERE run_id IN ({marks})", part)  # noqa: S608 - placeholders only
                n += cur.execute(f"DELETE FROM runs WHERE run_id IN ({marks})", part).rowcount  # noqa: S608
                if self._has_chunks():
                    cur.execute(f"DELETE FROM chunks WHERE run_id IN ({marks})", part)  # noqa: S608
        return n

    def finished(self, include_failed: bool = True) -> set[str]:
        q = "SELECT run_id FROM runs" + ("" if include_failed else " WHERE status='ok'")  # noqa: S608 - two literal strings, no input
        try:
            return {r[0] for r in self.conn.execute(q)}
        except (sqlite3.Error, UnicodeDecodeError) as exc:
            raise self._read_error(exc) from None

    def runs(self, history: bool = False) -> pd.DataFrame:
        """The stored runs; without `history`, only current ones (see `superseded`)."""
        df = self._query("SELECT * FROM runs ORDER BY dataset, threat, model, seed")
        missing = [c for c in RUN_COLUMNS if c not in df.columns]
        if missing:  # a damaged schema (SQLite reads it, but a column's name is gone)
            raise StoreError(f"{str(self.path)!r}: the runs table has no column {missing[0]!r}; the store is damaged, restore it or delete it and re-run")
        for col in ("config", "versions", "attacks", "flags"):
            self._json_column(df, col)
        if not history and not df.empty:
            stale = superseded(df)
            if stale:
                df = df[~df["run_id"].isin(stale)].reset_index(drop=True)
        return df

    def points(self, run_ids: Iterable[str] | None = None) -> pd.DataFrame:
        """Per-point rows of `run_ids`, or of every current run (superseded runs left out)."""
        q = "SELECT p.*, r.model, r.family, r.dataset, r.threat, r.norm, r.seed FROM points p JOIN runs r USING (run_id)"
        params: list[Any] = []
        if run_ids is None:
            stale = sorted(superseded(self._query("SELECT run_id, model, dataset, threat, seed, config, created FROM runs")))
            if stale:
                q += f" WHERE p.run_id NOT IN ({', '.join('?' * len(stale))})"
                params = stale
        else:
            ids = list(run_ids)
            q += f" WHERE p.run_id IN ({', '.join('?' * len(ids))})"
            params = ids
        df = self._query(q + " ORDER BY r.dataset, r.threat, r.model, r.seed, p.idx", params)
        self._json_column(df, "robust_at")
        return df

    def dump(self) -> dict[str, list[dict[Hashable, Any]]]:
        """Everything but timings and creation stamps, for equality checks between runs."""
        runs = self.runs(history=True).drop(columns=["fit_time", "eval_time", "created", "fit_cached"]).to_dict("records")
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
    """Hold an exclusive lock on the store at `path` while a driver writes; StoreError (or, with `wait`, wait) if taken.

    The lock is the file '<real path>.lock', symlinks resolved, so every path to one store takes the
    same lock. An existing file that is not a result store is refused before a lock file is made
    beside it; a store on a read-only location is refused as read-only.
    """
    import errno
    import fcntl

    real = Path(os.path.realpath(path))
    lock_path = _sidecar(real, ".lock")
    if real.is_file():
        try:
            _check_file(real, str(path))
        except OSError:
            pass  # unreadable: `Store` says so
        else:
            _inspect(real, str(path))
    if real.parent.is_dir() and not _dir_writable(real):
        raise StoreError(_read_only_message(str(path), real.exists()))
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fh = lock_path.open("a+")
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM) and lock_path.parent.is_dir():
            raise StoreError(_read_only_message(str(path), real.exists())) from None
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
