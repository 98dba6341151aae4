"""Store hygiene: foreign databases are refused untouched, one lock per real file, read-only media, eps checks.

Read-only media are simulated by making `os.access` report the store's directory (and file) as not
writable: the store decides from `os.access` (which reports read-only mounts, also for root), and
tests often run as root, for whom chmod does not stop writes. Where not root, the chmod test runs too.
"""
from __future__ import annotations

import math
import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from robustbench_align.attacks.base import AttackResult
from robustbench_align.attacks.results import FixedEpsResult, RadiusResult
from robustbench_align.errors import AttackError, RBAError, StoreError
from robustbench_align.runner.store import RunRecord, Store, exclusive

PLAN = 'models = ["xgb"]\ndatasets = ["iris"]\nthreats = ["linf"]\npoints = 2\n'


def _record(run_id: str = "r1", n: int = 3) -> RunRecord:
    run = {"run_id": run_id, "model": "m", "family": "f", "dataset": "d", "threat": "linf", "norm": "linf", "seed": 0,
           "status": "ok", "config": {"a": 1}, "attacks": ["milp"], "flags": {}, "n_points": n, "rejected": 0}
    return RunRecord(run, [{"idx": i, "y": 1, "pred": 1, "correct": 1, "radius": 0.5 * i, "robust_at": {"0.1": 1}} for i in range(n)])


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert text and "\n" not in text, f"not one line: {text!r}"
    return text


def _snapshot(path: Path) -> tuple[bytes, int, list[str]]:
    """The file's bytes, its mtime (ns) and every name in its directory."""
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(path.parent))


def _rba(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robustbench_align.cli", *args], capture_output=True, text=True, timeout=300, cwd=cwd)


# ================================================================================================
# 1. Foreign databases: refused, never modified
# ================================================================================================
def _make_foreign(path: Path, kind: str) -> None:
    if kind == "empty-file":  # what `sqlite3.connect(path)` of another app leaves: zero bytes
        sqlite3.connect(path).close()
        assert path.stat().st_size == 0
        return
    con = sqlite3.connect(path)
    if kind == "no-tables":  # a header but no tables (an app that only set its user_version)
        con.execute("PRAGMA user_version=7")
    elif kind == "table":
        con.execute("CREATE TABLE notes (x TEXT)")
        con.execute("INSERT INTO notes VALUES ('keep me')")
    elif kind == "wal-table":  # another app's WAL database, closed (checkpointed)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("CREATE TABLE notes (x TEXT)")
        con.execute("INSERT INTO notes VALUES ('keep me')")
    con.commit()
    con.close()


FOREIGN = ["empty-file", "no-tables", "table", "wal-table"]


@pytest.mark.parametrize("kind", FOREIGN)
def test_foreign_database_is_refused_and_left_untouched(tmp_path, kind):
    p = tmp_path / "other.db"
    _make_foreign(p, kind)
    journal = p.read_bytes()[18:20]  # the file format bytes: 1,1 rollback journal, 2,2 WAL
    before = _snapshot(p)
    for opener in (lambda: Store(p), lambda: Store(p, readonly=True), lambda: exclusive(p).__enter__()):
        with pytest.raises(StoreError) as info:
            opener()
        msg = _one_line(info.value)
        assert str(p) in msg and "not a result store" in msg and "point --store at" in msg
        assert _snapshot(p) == before  # same bytes, same mtime, no -wal/-shm/.lock/temporary file beside it
    assert p.read_bytes()[18:20] == journal


def test_live_foreign_wal_database_is_refused_untouched(tmp_path):
    """Another app holds its WAL database open (-wal and -shm beside it): read through them, change nothing."""
    p = tmp_path / "app.db"
    con = sqlite3.connect(p, isolation_level=None)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA wal_autocheckpoint=0")
        con.execute("CREATE TABLE notes (x TEXT)")
        con.execute("INSERT INTO notes VALUES ('in the log only')")
        names = sorted(os.listdir(tmp_path))
        main, wal = p.read_bytes(), (tmp_path / "app.db-wal").read_bytes()
        with pytest.raises(StoreError, match=r"not a result store \(tables: notes"):
            Store(p)
        with pytest.raises(StoreError, match="not a result store"):
            exclusive(p).__enter__()
        assert sorted(os.listdir(tmp_path)) == names and p.read_bytes() == main and (tmp_path / "app.db-wal").read_bytes() == wal
        assert con.execute("SELECT x FROM notes").fetchall() == [("in the log only",)]
    finally:
        con.close()


@pytest.mark.parametrize("command", ["run", "evaluate"])
def test_rba_run_and_evaluate_leave_a_foreign_database_as_it_was(tmp_path, command):
    (tmp_path / "app").mkdir()
    p = tmp_path / "app" / "other.db"
    _make_foreign(p, "table")
    before = _snapshot(p)
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    common = ["--config", str(plan), "--store", str(p), "--out", str(tmp_path / "out")]
    args = ["run", *common, "--cache", str(tmp_path / "c")] if command == "run" else ["evaluate", "xgb", "-d", "iris", *common]
    r = _rba("--quiet", *args)
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "not a result store" in r.stderr and str(p) in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert _snapshot(p) == before
    assert not (tmp_path / "out").exists()


def test_evaluate_refuses_a_foreign_store_before_writing(tmp_path):
    from robustbench_align.runner.api import evaluate

    p = tmp_path / "other.db"
    _make_foreign(p, "wal-table")
    before = _snapshot(p)
    with pytest.raises(StoreError, match="not a result store"):
        evaluate("xgb", "iris", threats=["linf"], points=2, store=p)
    assert _snapshot(p) == before


def test_new_path_still_creates_a_store(tmp_path):
    p = tmp_path / "deep" / "er" / "s.sqlite"
    with Store(p) as st:
        assert st.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert st.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() is not None
        st.write([_record("a")])
    assert sorted(os.listdir(p.parent)) == ["s.sqlite"]  # no temporary file left; the log is checkpointed on close
    assert p.read_bytes()[18:20] == b"\x02\x02"  # WAL mode from its first byte on disk
    with Store(p, readonly=True) as st:
        assert st.finished() == {"a"}


def test_store_through_a_dangling_symlink_is_created_at_its_target(tmp_path):
    target, link = tmp_path / "real.sqlite", tmp_path / "link.sqlite"
    link.symlink_to(target)
    Store(link).close()
    assert link.is_symlink() and target.is_file()
    with Store(target) as st:
        assert st.finished() == set()


def test_concurrent_creation_gives_one_store(tmp_path):
    p = tmp_path / "s.sqlite"
    code = textwrap.dedent(f"""
        from robustbench_align.runner.store import Store, RunRecord
        import os
        with Store({str(p)!r}) as s:
            s.write([RunRecord({{"run_id": f"r{{os.getpid()}}", "model": "m", "dataset": "d", "threat": "linf", "seed": 0,
                                 "status": "ok", "config": {{}}}}, [])])
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True) for _ in range(3)]
    errs = [pr.communicate(timeout=120)[1] for pr in procs]
    assert all(pr.returncode == 0 for pr in procs), errs
    assert sorted(os.listdir(tmp_path)) == ["s.sqlite"]  # no temporary file of a creation that lost the race
    with Store(p, readonly=True) as st:
        assert len(st.finished()) == 3


# ================================================================================================
# 2. One lock per real file
# ================================================================================================
def test_lock_through_a_symlink_is_the_targets_lock(tmp_path):
    target, link = tmp_path / "real.sqlite", tmp_path / "link.sqlite"
    Store(target).close()
    link.symlink_to(target)
    with exclusive(target):
        with pytest.raises(StoreError, match="in use") as info:
            exclusive(link).__enter__()
        assert str(link) in _one_line(info.value)
    with exclusive(link), pytest.raises(StoreError, match="in use"):
        exclusive(target).__enter__()
    assert (tmp_path / "real.sqlite.lock").exists() and not (tmp_path / "link.sqlite.lock").exists()


def test_lock_through_a_symlinked_directory(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "data")
    with exclusive(tmp_path / "data" / "s.sqlite"), pytest.raises(StoreError, match="in use"):  # before the store exists, too
        exclusive(tmp_path / "alias" / "s.sqlite").__enter__()


def test_lock_through_a_symlink_excludes_another_process(tmp_path):
    target, link = tmp_path / "real.sqlite", tmp_path / "link.sqlite"
    Store(target).close()
    link.symlink_to(target)
    code = textwrap.dedent(f"""
        import sys, time
        from robustbench_align.runner.store import exclusive
        with exclusive({str(link)!r}):
            sys.stdout.write("locked\\n"); sys.stdout.flush()
            time.sleep(120)
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match="in use by pid"):
            exclusive(target).__enter__()
    finally:
        holder.kill()
        holder.wait()
    with exclusive(target):  # released with the process
        pass


# ================================================================================================
# 3. Read-only media
# ================================================================================================
def _deny_writes(monkeypatch, directory: Path) -> None:
    """Make `os.access` report `directory` and everything in it as not writable (a read-only mount)."""
    real_access = os.access
    root = os.path.realpath(directory)

    def access(path, mode, *args, **kwargs):
        inside = os.path.realpath(path) == root or os.path.realpath(path).startswith(root + os.sep)
        if inside and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)


def _spy_connect(monkeypatch) -> list[str]:
    seen: list[str] = []
    real_connect = sqlite3.connect

    def connect(database, *args, **kwargs):
        seen.append(str(database))
        return real_connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", connect)
    return seen


@pytest.fixture
def ro_store(tmp_path):
    """A checkpointed store in directory `media` and its content."""
    media = tmp_path / "media"
    p = media / "s.sqlite"
    with Store(p) as st:
        st.write([_record("a"), _record("b", n=5)])
    with Store(p, readonly=True) as st:
        dump = st.dump()
    for side in ("-wal", "-shm"):  # what a clean close leaves: the file alone
        (media / f"s.sqlite{side}").unlink(missing_ok=True)
    return p, dump


def test_readonly_store_on_read_only_media_is_read_immutable(ro_store, monkeypatch):
    p, dump = ro_store
    before = _snapshot(p)
    _deny_writes(monkeypatch, p.parent)
    seen = _spy_connect(monkeypatch)
    with Store(p, readonly=True) as st:
        assert st.dump() == dump and st.finished() == {"a", "b"}
    assert any("mode=ro&immutable=1" in s for s in seen), seen
    assert _snapshot(p) == before  # nothing created beside it


def test_leaderboard_reads_a_store_on_read_only_media(ro_store, monkeypatch):
    from typer.testing import CliRunner

    from robustbench_align.cli import app

    p, _ = ro_store
    _deny_writes(monkeypatch, p.parent)
    res = CliRunner().invoke(app, ["leaderboard", "--store", str(p), "--format", "csv"])
    assert res.exit_code == 0, repr(res.exception)
    assert sorted(os.listdir(p.parent)) == ["s.sqlite"]


def test_writing_on_read_only_media_says_read_only(ro_store, monkeypatch):
    p, _ = ro_store
    before = _snapshot(p)
    _deny_writes(monkeypatch, p.parent)
    for opener in (lambda: Store(p), lambda: exclusive(p).__enter__()):
        with pytest.raises(StoreError) as info:
            opener()
        msg = _one_line(info.value)
        assert str(p) in msg and "read-only" in msg and "delete" not in msg and "copy the store to a writable directory" in msg
    new = p.parent / "new.sqlite"
    for opener in (lambda: Store(new), lambda: exclusive(new).__enter__()):
        with pytest.raises(StoreError, match="its directory is read-only; pass --store a path in a writable directory"):
            opener()
    assert _snapshot(p) == before


def test_read_only_store_with_an_unfinished_log(tmp_path, monkeypatch):
    """A copy taken while a writer had it open: with its -shm it reads (the log included); without, it is refused."""
    src = tmp_path / "src" / "s.sqlite"
    st = Store(src)
    st.conn.execute("PRAGMA wal_autocheckpoint=0")
    st.write([_record("a")])
    try:
        media = tmp_path / "media"
        media.mkdir()
        for suffix in ("", "-wal", "-shm"):
            shutil.copy(f"{src}{suffix}", media / f"s.sqlite{suffix}")
    finally:
        st.close()
    p = media / "s.sqlite"
    _deny_writes(monkeypatch, media)
    with Store(p, readonly=True) as ro:
        assert ro.finished() == {"a"}
    (media / "s.sqlite-shm").unlink()
    with pytest.raises(StoreError, match="unfinished write-ahead log") as info:
        Store(p, readonly=True)
    assert "delete" not in _one_line(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through chmod; the os.access tests above cover this path")
def test_read_only_directory_by_chmod(ro_store):
    p, dump = ro_store
    p.chmod(0o444)
    p.parent.chmod(0o555)
    try:
        with Store(p, readonly=True) as st:
            assert st.dump() == dump
        assert sorted(os.listdir(p.parent)) == ["s.sqlite"]
        with pytest.raises(StoreError, match="read-only"):
            Store(p)
        with pytest.raises(StoreError, match="read-only"):
            exclusive(p).__enter__()
    finally:
        p.parent.chmod(0o755)
        p.chmod(0o644)


# ================================================================================================
# 4. eps checks of the attack results
# ================================================================================================
@pytest.fixture
def radius_result():
    d = np.array([0.0, 0.5, 1.0, np.inf])
    return RadiusResult(x_adv=np.zeros((4, 2)), distance=d, success=np.isfinite(d), norm="l2", attack="hand",
                        clean_correct=np.array([False, True, True, True]), lower_bound=np.array([0.0, 0.2, 0.5, 1.0]))


@pytest.mark.parametrize("eps, shown", [(math.nan, "nan"), (-0.1, "-0.1"), ([0.1, math.nan], "nan at position 1 of 2"),
                                        (np.array([0.5, -1.0]), "-1.0 at position 1"), (math.inf, "inf"), ("abc", "'abc'")])
def test_robust_accuracy_refuses_bad_eps(radius_result, eps, shown):
    with pytest.raises(AttackError) as info:
        radius_result.robust_accuracy(eps)
    assert isinstance(info.value, RBAError) and isinstance(info.value, ValueError)
    assert shown in _one_line(info.value)


def test_robust_accuracy_takes_zero_and_valid_grids(radius_result):
    np.testing.assert_allclose(radius_result.robust_accuracy([0, 0.5, 0.99, 5.0]), [0.75, 0.5, 0.5, 0.25])
    assert radius_result.robust_accuracy(0.0).tolist() == [0.75]
    grid = np.r_[np.linspace(0.01, 1, 60), np.nan]  # a long array still gives a one-line error naming the bad entry
    with pytest.raises(AttackError, match="nan at position 60 of 61"):
        radius_result.robust_accuracy(grid)


@pytest.mark.parametrize("eps", [math.nan, -1.0, 0.0, [0.1, -0.2], math.inf])
def test_certified_accuracy_refuses_bad_eps(radius_result, eps):
    with pytest.raises(AttackError, match="finite and > 0"):
        radius_result.certified_accuracy(eps)
    assert radius_result.certified_accuracy([0.1, 0.4]).tolist() == [0.75, 0.5]


def test_other_eps_methods_refuse_nan_and_negative(radius_result):
    for call in (lambda: radius_result.curve([0.1, math.nan]), lambda: radius_result.curve([-1.0]),
                 lambda: radius_result.curve([]), lambda: radius_result.auc(math.nan), lambda: radius_result.auc(-2.0),
                 lambda: radius_result.optimality(math.nan), lambda: radius_result.optimality([1.0, 2.0])):
        with pytest.raises(AttackError) as info:
            call()
        _one_line(info.value)


def test_fixed_eps_result_names_an_eps_it_did_not_attack():
    res = {e: AttackResult(x_adv=np.zeros((2, 1)), distance=np.array([np.inf, 0.05]), success=np.array([False, True]), norm="linf",
                           attack="x") for e in (0.1, 0.2)}
    fr = FixedEpsResult(eps=np.array([0.1, 0.2]), results=res, clean_correct=np.array([True, True]), norm="linf")
    assert fr.robust(0.1).tolist() == [True, False] and fr.robust_accuracy.tolist() == [0.5, 0.5]
    for bad, shown in ((math.nan, "nan"), (-0.1, "-0.1"), (0.3, "0.3 was not attacked")):
        for call in (fr.robust, fr.certified):
            with pytest.raises(AttackError) as info:
                call(bad)
            assert shown in _one_line(info.value)
