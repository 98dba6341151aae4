"""`run_plan` / `rba run --dask` against a real `dask scheduler` and `dask worker` processes on 127.0.0.1.

The test starts the scheduler and two worker processes itself (each in its own process group)
and stops them in the fixture's teardown, also when a test fails. It checks that the cluster
gives the same rows as a local run, that a worker killed mid-run loses no job and doubles no
row, that a cluster which loses every worker fails with one line after the configured wait
and keeps what was finished, that a malformed address fails fast, and that the driver's
progress bar advances once per finished job.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from robustbench_align.errors import RBAError
from robustbench_align.runner import executors
from robustbench_align.runner.api import run_plan
from robustbench_align.runner.config import Plan
from robustbench_align.runner.store import Store

pytest.importorskip("distributed", reason="the dask extra is not installed")
DASK = Path(sys.executable).parent / "dask"
if not DASK.exists():
    DASK = Path(shutil.which("dask") or DASK)
pytestmark = pytest.mark.skipif(not DASK.exists(), reason="the `dask` command line (dask scheduler / dask worker) is not installed")

TIMING = {"fit_time", "eval_time", "created", "fit_cached"}
MODEL_PARAMS = {"xgb": {"n_estimators": 5, "max_depth": 2}, "gbdt": {"n_estimators": 5, "max_depth": 2}}


def _plan(seeds: list[int]) -> Plan:
    return Plan(models=["xgb", "gbdt"], datasets=["iris", "wine"], threats=["linf"], seeds=seeds, points=8,
                model_params=MODEL_PARAMS).validate()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """A `dask scheduler` and `dask worker` processes on 127.0.0.1, each in its own process group."""

    def __init__(self, root: Path):
        self.root = root
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.count = 0
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
        self.env = env
        self.procs["scheduler"] = self._spawn("scheduler", [str(DASK), "scheduler", "--host", "127.0.0.1", "--port", str(self.port),
                                                            "--no-dashboard", "--no-show"])
        self.client = self._connect()

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("wb")
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=self.root, start_new_session=True)

    def _connect(self):
        from distributed import Client

        deadline = time.time() + 60
        while True:
            if self.procs["scheduler"].poll() is not None:
                raise RuntimeError("dask scheduler exited: " + (self.root / "scheduler.log").read_text()[-2000:])
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        return Client(self.address, timeout=30, set_as_default=False)

    def workers(self) -> list[str]:
        return [n for n, p in self.procs.items() if n != "scheduler" and p.poll() is None]

    def top_up(self, n: int = 2, timeout: float = 60) -> None:
        """Start workers until `n` are alive, then wait until the scheduler sees `n`."""
        while len(self.workers()) < n:
            name = f"w{self.count}"
            self.count += 1
            self.procs[name] = self._spawn(name, [str(DASK), "worker", self.address, "--nworkers", "1", "--nthreads", "1",
                                                  "--no-dashboard", "--name", name, "--local-directory", str(self.root / name)])
        self.client.wait_for_workers(n, timeout=timeout)

    def processing_worker(self) -> tuple[str, bool]:
        """The name of a worker that is running a task (any live worker if none is), and whether it is."""
        info = self.client.scheduler_info(n_workers=-1)["workers"]
        names = {addr: str(w.get("name")) for addr, w in info.items()}
        busy = [names[a] for a, keys in self.client.processing().items() if keys and a in names]
        return (busy[0], True) if busy else (self.workers()[0], False)

    def kill(self, name: str) -> None:
        """SIGKILL the worker's whole process group (nanny and worker), as if its host died."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def stop(self) -> None:
        with contextlib.suppress(Exception):  # teardown goes on
            self.client.close(timeout=5)
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs.values():
            proc.wait(timeout=30)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = Cluster(tmp_path_factory.mktemp("dask-cluster"))
    try:
        c.top_up(2)
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def local_store(tmp_path_factory):
    """The plan with seeds 0, 1, 2 run locally (workers=1): the reference rows."""
    d = tmp_path_factory.mktemp("local")
    run_plan(_plan([0, 1, 2]), d / "local.sqlite", progress=False)
    return d / "local.sqlite"


def _rows(path, run_ids=None) -> tuple[pd.DataFrame, pd.DataFrame]:
    with Store(path, readonly=True) as st:
        runs = st.runs()
        points = st.points()
    if run_ids is not None:
        runs = runs[runs["run_id"].isin(run_ids)]
        points = points[points["run_id"].isin(run_ids)]
    runs = runs.drop(columns=[c for c in TIMING if c in runs.columns]).sort_values("run_id").reset_index(drop=True)
    runs["flags"] = [f.split('"point_time"')[0] for f in runs["flags"].astype(str)]  # per-point seconds are timing
    points = points.sort_values(["run_id", "idx"]).reset_index(drop=True)
    return runs, points


def _assert_same(a, b, run_ids=None) -> None:
    (r1, p1), (r2, p2) = _rows(a, run_ids), _rows(b, run_ids)
    pd.testing.assert_frame_equal(r1, r2)
    pd.testing.assert_frame_equal(p1, p2)


def _counts(path) -> tuple[int, int, int]:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        runs = con.execute("SELECT count(*) FROM runs").fetchone()[0]
        points = con.execute("SELECT count(*) FROM points").fetchone()[0]
        dup = con.execute("SELECT count(*) FROM (SELECT run_id, idx FROM points GROUP BY run_id, idx HAVING count(*) > 1)").fetchone()[0]
    finally:
        con.close()
    return runs, points, dup


class _Writes:
    """Wraps Store.write: counts the record batches the driver writes and runs `hook` after the first."""

    def __init__(self, monkeypatch, hook=None):
        self.batches: list[list[str]] = []
        self.hook = hook
        original = Store.write

        def write(store, records):
            records = list(records)
            n = original(store, records)
            self.batches.append([r.run["run_id"] for r in records])
            if self.hook is not None and len(self.batches) == 1:
                self.hook()
            return n

        monkeypatch.setattr(Store, "write", write)


def test_cluster_rows_equal_local_rows_and_progress_per_job(cluster, local_store, tmp_path, monkeypatch):
    cluster.top_up(2)
    events: list[tuple[str, int]] = []

    class Bar:
        def __init__(self, total):
            events.append(("total", total))

        def update(self, n=1):
            events.append(("update", n))

        def set_postfix_str(self, *a, **k):
            pass

        def close(self):
            events.append(("close", 0))

    monkeypatch.setattr(executors, "_progress", lambda total, enabled: Bar(total))
    writes = _Writes(monkeypatch)
    plan = _plan([0, 1])
    summary = run_plan(plan, tmp_path / "dask.sqlite", dask_address=cluster.address, progress=True)
    jobs = len(plan.jobs(None))
    assert summary["jobs"] == jobs == 8 and summary["runs_written"] == 8 and summary["runs_failed"] == 0
    _assert_same(local_store, tmp_path / "dask.sqlite", run_ids=_rows(tmp_path / "dask.sqlite")[0]["run_id"])
    assert _counts(tmp_path / "dask.sqlite") == (8, 64, 0)
    # the driver's bar: sized to the plan, one step per finished job, closed at the end
    assert events[0] == ("total", jobs) and events[-1] == ("close", 0)
    assert [e for e in events if e[0] == "update"] == [("update", 1)] * jobs
    assert len(writes.batches) == jobs


def test_rba_run_cli_against_the_cluster(cluster, local_store, tmp_path):
    """`rba run --dask tcp://...` end to end: same rows as the local run, progress bar and summary on the driver."""
    cluster.top_up(2)
    plan = tmp_path / "plan.toml"
    plan.write_text('models = ["xgb"]\ndatasets = ["iris", "wine"]\nthreats = ["linf"]\nseeds = [0]\npoints = 8\n'
                    '[model_params.xgb]\nn_estimators = 5\nmax_depth = 2\n')
    store = tmp_path / "cli.sqlite"
    r = subprocess.run([sys.executable, "-m", "robustbench_align.cli", "run", "--config", str(plan), "--dask", cluster.address,
                        "--store", str(store), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr
    assert "2 cells computed" in r.stdout and "cells" in r.stderr  # the summary, and the tqdm bar on stderr
    assert _counts(store) == (2, 16, 0)
    _assert_same(local_store, store, run_ids=_rows(store)[0]["run_id"])


def test_progress_advances_after_each_written_job(cluster, tmp_path, monkeypatch):
    cluster.top_up(2)
    order: list[str] = []

    class Bar:
        def __init__(self, total):
            pass

        def update(self, n=1):
            order.append("update")

        def set_postfix_str(self, *a, **k):
            pass

        def close(self):
            pass

    monkeypatch.setattr(executors, "_progress", lambda total, enabled: Bar(total))
    original_write = Store.write

    def write(store, records):
        n = original_write(store, records)
        order.append("write")
        return n

    monkeypatch.setattr(Store, "write", write)
    run_plan(_plan([3]), tmp_path / "p.sqlite", dask_address=cluster.address, progress=True)
    assert order == ["write", "update"] * 4


def test_killed_worker_loses_nothing_and_doubles_nothing(cluster, local_store, tmp_path, monkeypatch):
    cluster.top_up(2)
    killed: list[tuple[str, bool]] = []

    def kill_one():
        name, busy = cluster.processing_worker()
        cluster.kill(name)
        killed.append((name, busy))

    writes = _Writes(monkeypatch, kill_one)
    plan = _plan([0, 1, 2])
    store = tmp_path / "killed.sqlite"
    summary = run_plan(plan, store, dask_address=cluster.address, progress=False)
    assert killed and killed[0][1], f"the killed worker was not running a job: {killed}"
    assert summary["jobs"] == 12 and summary["runs_written"] == 12 and summary["runs_failed"] == 0
    assert len(writes.batches) == 12 and len({r for b in writes.batches for r in b}) == 12  # every job's records once
    assert _counts(store) == (12, 96, 0)
    _assert_same(local_store, store)
    cluster.top_up(2)


def test_all_workers_lost_fails_with_one_line_and_keeps_finished(cluster, local_store, tmp_path, monkeypatch):
    cluster.top_up(2)
    monkeypatch.setenv(executors.NO_WORKER_TIMEOUT_ENV, "3")
    t_kill: list[float] = []

    def kill_all():
        for name in cluster.workers():
            cluster.kill(name)
        t_kill.append(time.monotonic())

    _Writes(monkeypatch, kill_all)
    store = tmp_path / "lost.sqlite"
    with pytest.raises(RBAError) as err:
        run_plan(_plan([0, 1, 2]), store, dask_address=cluster.address, progress=False)
    waited = time.monotonic() - t_kill[0]
    msg = str(err.value)
    assert "no worker for 3 s" in msg and "in the store" in msg and len(msg.splitlines()) == 1, msg
    assert 3 <= waited < 20
    runs, points, dup = _counts(store)
    assert 1 <= runs < 12 and points == 8 * runs and dup == 0
    _assert_same(local_store, store, run_ids=_rows(store)[0]["run_id"])
    cluster.top_up(2)


def test_no_worker_timeout_must_be_positive(monkeypatch):
    monkeypatch.setenv(executors.NO_WORKER_TIMEOUT_ENV, "soon")
    with pytest.raises(RBAError, match="positive number of seconds"):
        executors.no_worker_timeout()
    monkeypatch.setenv(executors.NO_WORKER_TIMEOUT_ENV, "2.5")
    assert executors.no_worker_timeout() == 2.5
    monkeypatch.delenv(executors.NO_WORKER_TIMEOUT_ENV)
    assert executors.no_worker_timeout() == executors.NO_WORKER_TIMEOUT


def test_rewriting_a_run_replaces_it(local_store, tmp_path):
    """A job computed twice (a retry) replaces its rows: DELETE + INSERT in one transaction."""
    shutil.copy(local_store, tmp_path / "s.sqlite")
    from robustbench_align.runner.job import run_job

    job = _plan([0]).jobs(None)[0]
    before = _counts(tmp_path / "s.sqlite")
    with Store(tmp_path / "s.sqlite") as st:
        st.write(run_job(job))
        st.write(run_job(job))
    assert _counts(tmp_path / "s.sqlite") == before
    _assert_same(local_store, tmp_path / "s.sqlite")


@pytest.mark.parametrize("address, msg", [
    ("notanaddress", "is not a Dask scheduler address"),
    ("tcp://127.0.0.1:1", "nothing listens there"),
    ("foo://127.0.0.1:8786", "unknown scheme"),
])
def test_bad_address_is_one_line_exit_2_fast(tmp_path, address, msg):
    plan = tmp_path / "plan.toml"
    plan.write_text('models = ["xgb"]\ndatasets = ["iris"]\nthreats = ["linf"]\npoints = 4\n')
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "robustbench_align.cli", "run", "--config", str(plan), "--dask", address,
                        "--store", str(tmp_path / "s.sqlite")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert time.monotonic() - t0 < 15
    assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "s.sqlite").exists()
