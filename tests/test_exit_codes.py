"""Honest exit codes of `rba`, and pool workers that die with their driver.

A command's exit code is the process's (a failing `rba bench` exits non-zero). A run stopped by a
terminal's Ctrl-C (SIGINT to the whole foreground process group, sent through a pseudo-terminal)
exits 130 and by SIGTERM 143, with the one line `rba: interrupted; N cells stored, rerun to resume`
and no traceback; the N cells are in the store and a rerun reuses them. A driver killed with
SIGKILL leaves no worker process behind, a worker killed mid-run stops the run with one line, and
a bad `--dask` address fails with one line at once.
"""
from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robustbench_align import cli

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pseudo-terminals, /proc and PR_SET_PDEATHSIG are Linux's")

MESSAGE = re.compile(r"rba: interrupted; (\d+) cells stored, rerun to resume")
SEEDS = 300  # cells of ~0.1 s each: far more than a test waits for


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "robustbench_align.cli", *args]


def _write_plan(path: Path, seeds: list[int]) -> Path:
    path.write_text(f'models = ["xgb"]\ndatasets = ["iris"]\nthreats = ["linf"]\nseeds = {seeds}\npoints = 6\n'
                    "[model_params.xgb]\nn_estimators = 5\nmax_depth = 2\n")
    return path


def _run_args(tmp_path: Path, plan: Path, workers: int) -> list[str]:
    return ["run", "--config", str(plan), "--workers", str(workers), "--store", str(tmp_path / "s.sqlite"),
            "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]


def _stored_seeds(store: Path) -> list[int]:
    """Seeds of the runs in the store (one run per cell here: one model, dataset and threat), [] while it is not readable."""
    if not store.exists():
        return []
    try:
        with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1)) as con:
            return sorted(r[0] for r in con.execute("SELECT seed FROM runs"))
    except sqlite3.Error:
        return []


def _children(pid: int) -> set[int]:
    """Live (not zombie) processes whose parent is `pid`, from /proc/*/stat."""
    out = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.add(int(entry))
    return out


def _alive(pids: set[int]) -> set[int]:
    alive = set()
    for p in pids:
        with contextlib.suppress(OSError, IndexError):
            if Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                alive.add(p)
    return alive


def _workers(pid: int) -> set[int]:
    """The spawned pool workers among the children of `pid`."""
    found = set()
    for c in _children(pid):
        with contextlib.suppress(OSError):
            if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes():
                found.add(c)
    return found


def _wait_for(cond, timeout: float, what: str, step: float = 0.1, drain: int | None = None) -> None:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        if drain is not None:
            _drain(drain, step)
        else:
            time.sleep(step)


def _drain(fd: int, timeout: float) -> bytes:
    """Read what the pseudo-terminal has (so the child never blocks on a full terminal)."""
    ready, _, _ = select.select([fd], [], [], timeout)
    if not ready:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the child side is closed
        return b""


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pgid, signal.SIGKILL)


@pytest.fixture
def restore_signals():
    """main() installs SIGINT/SIGTERM handlers: put pytest's back."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for s, h in saved.items():
        signal.signal(s, h)


# --- 1. a command's exit code is the process's ------------------------------------------------------

@pytest.mark.parametrize("returned, expected", [(0, 0), (3, 3), (-signal.SIGKILL, 128 + signal.SIGKILL)])
def test_main_exits_with_the_bench_suites_code(monkeypatch, restore_signals, returned, expected):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd, **kw: calls.append(cmd) or returned)
    monkeypatch.setattr(sys, "argv", ["rba", "bench", "--quick"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == expected
    assert calls and calls[0][1:] == ["-m", "benchmarks", "--quick"]


def test_failing_bench_subprocess_exits_nonzero(tmp_path):
    """A real `rba` process whose benchmark suite fails (its subprocess call answers 3) exits 3, not 0."""
    code = ("import subprocess, sys; subprocess.call = lambda *a, **k: 3; sys.argv = ['rba', 'bench', '--quick'];"
            "from robustbench_align.cli import main; main()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 3, r.stderr
    assert "Traceback" not in r.stderr


def test_usage_error_still_exits_2():
    r = subprocess.run(_cmd("run", "--workers", "many"), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and r.stderr.startswith("rba: error:"), r.stderr


# --- 2. interrupts ------------------------------------------------------------------------------------

def _start_on_terminal(argv: list[str], err: Path) -> tuple[int, int]:
    """Start `argv` as the session leader and foreground job of a new pseudo-terminal (stdout on it, stderr to `err`)."""
    import pty

    err_fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    pid, fd = pty.fork()
    if pid == 0:  # the child: never return into pytest
        try:
            # start as a shell would start it: SIGINT/SIGTERM at their defaults and not blocked, whatever an earlier
            # test (or a library it used) left in the pytest process; both survive exec and would hide the Ctrl-C
            for s in (signal.SIGINT, signal.SIGTERM):
                signal.signal(s, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
            os.dup2(err_fd, 2)
            os.execv(argv[0], argv)  # noqa: S606 - this interpreter running `-m robustbench_align.cli` with the test's arguments
        finally:
            os._exit(127)
    os.close(err_fd)
    return pid, fd


@pytest.mark.parametrize("how, workers, cells", [("ctrl-c", 1, 2), ("ctrl-c", 2, 2), ("sigterm", 1, 2), ("sigterm", 2, 2),
                                                 ("ctrl-c", 2, 0)])  # 0: as soon as the workers exist (they are still starting)
def test_interrupted_run_exits_128_plus_signal_and_resumes(tmp_path, how, workers, cells):
    store = tmp_path / "s.sqlite"
    plan = _write_plan(tmp_path / "plan.toml", list(range(SEEDS)))
    pid, fd = _start_on_terminal(_cmd("--quiet", *_run_args(tmp_path, plan, workers)), tmp_path / "err.txt")
    screen = b""
    try:
        if cells:
            _wait_for(lambda: len(_stored_seeds(store)) >= cells, 60, f"{cells} stored cells", drain=fd)
        else:
            _wait_for(lambda: len(_workers(pid)) == workers, 60, "the pool workers", step=0.02, drain=fd)
        pool = _workers(pid)
        assert len(pool) == (workers if workers > 1 else 0)
        t0 = time.monotonic()
        if how == "ctrl-c":
            os.write(fd, b"\x03")  # the terminal's VINTR: the kernel sends SIGINT to the whole foreground process group
        else:
            os.kill(pid, signal.SIGTERM)
        status = None
        while status is None and time.monotonic() - t0 < 30:
            screen += _drain(fd, 0.05)
            done, st = os.waitpid(pid, os.WNOHANG)
            status = os.waitstatus_to_exitcode(st) if done else None
        elapsed = time.monotonic() - t0
        assert status is not None, "the interrupted run did not exit within 30 s"
    finally:
        _kill_group(pid)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        os.close(fd)
    err = (tmp_path / "err.txt").read_text()
    assert status == 128 + (signal.SIGINT if how == "ctrl-c" else signal.SIGTERM), err
    m = MESSAGE.fullmatch(err.strip())
    assert m and err.count("\n") == 1, err
    assert "Traceback" not in err and b"Traceback" not in screen
    assert elapsed < 10, f"the run took {elapsed:.1f} s to stop"
    assert not _alive(pool), "pool workers outlived the interrupted run"
    stored = _stored_seeds(store)
    assert int(m.group(1)) == len(stored) >= cells  # the count is the store's
    # a rerun reuses the stored cells: those seeds plus one new one compute exactly one cell
    new = next(s for s in range(SEEDS) if s not in stored)
    _write_plan(plan, [*stored, new])
    r = subprocess.run(_cmd(*_run_args(tmp_path, plan, 1)), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"1 cells computed, {len(stored)} reused" in " ".join(r.stdout.split()), r.stdout


def test_interrupt_outside_a_run_is_one_line(restore_signals, monkeypatch, capsys):
    """A KeyboardInterrupt that typer turns into exit code 130 (here: in `rba models`) still says so and exits 128 + signal."""
    from robustbench_align.models import registry

    def interrupted():
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, signal.SIG_IGN, None):
            pytest.fail("main() did not install its SIGTERM handler")
        signal.raise_signal(signal.SIGTERM)  # main()'s handler raises errors.Terminated here
        pytest.fail("SIGTERM did not interrupt")

    monkeypatch.setattr(registry, "describe_models", interrupted)
    monkeypatch.setattr(sys, "argv", ["rba", "models"])
    with pytest.raises(SystemExit) as info:
        cli.main()
    assert info.value.code == 128 + signal.SIGTERM
    assert capsys.readouterr().err.strip().splitlines() == ["rba: interrupted"]


def test_interrupt_swallowed_by_a_c_callback_still_stops_the_run(monkeypatch, capsys, restore_signals):
    """A SIGINT whose KeyboardInterrupt is raised inside a ctypes callback (as in xgboost's data iterator) is only
    "ignored" by Python; the run stops after that job all the same, without storing it or printing a traceback."""
    import ctypes
    from types import SimpleNamespace

    from robustbench_align.runner import executors, job

    def swallowing_job(j):
        if j.seed == 1:
            ctypes.CFUNCTYPE(None)(lambda: signal.raise_signal(signal.SIGINT))()
        return [j.seed]

    monkeypatch.setattr(job, "run_job", swallowing_job)
    stored: list = []
    hook = sys.unraisablehook
    jobs = [SimpleNamespace(model="m", dataset="d", seed=s) for s in range(4)]
    # Python's own SIGINT handler, as in an interactive session (a pytest started in the background inherits SIGINT ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with pytest.raises(KeyboardInterrupt):
        executors.execute(jobs, stored.append, workers=1, progress=False)
    assert stored == [[0]]
    assert "Traceback" not in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler and sys.unraisablehook is hook


# --- 3. no orphans -------------------------------------------------------------------------------------

@pytest.mark.parametrize("when", ["starting", "running"])
def test_killed_driver_leaves_no_worker(tmp_path, when):
    """SIGKILL of the driver of `rba run --workers 2`, while its workers start up or while they run jobs."""
    plan = _write_plan(tmp_path / "plan.toml", list(range(SEEDS)))
    proc = subprocess.Popen(_cmd("--quiet", *_run_args(tmp_path, plan, 2)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_for(lambda: len(_workers(proc.pid)) == 2, 60, "two pool workers", step=0.02)
        if when == "running":
            _wait_for(lambda: len(_stored_seeds(tmp_path / "s.sqlite")) >= 2, 60, "two stored cells")
        left = _children(proc.pid)
        assert len(left) >= 2
        proc.kill()
        proc.wait(10)
        t0 = time.monotonic()
        while _alive(left) and time.monotonic() - t0 < 10:
            time.sleep(0.1)
        assert not _alive(left), f"{len(_alive(left))} processes outlived the killed driver by 10 s"
    finally:
        _kill_group(proc.pid)  # the workers share the driver's process group
        proc.wait(10)


def test_killed_worker_stops_the_run_with_one_line(tmp_path):
    store = tmp_path / "s.sqlite"
    plan = _write_plan(tmp_path / "plan.toml", list(range(SEEDS)))
    proc = subprocess.Popen(_cmd("--quiet", *_run_args(tmp_path, plan, 2)), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _wait_for(lambda: len(_stored_seeds(store)) >= 2, 60, "two stored cells")
        pool = _workers(proc.pid)
        os.kill(min(pool), signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
    finally:
        _kill_group(proc.pid)
        proc.wait(10)
    assert proc.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rba: error: a worker process died abruptly (killed by SIGKILL"), err
    assert not _alive(pool)


# --- 4. a bad --dask address --------------------------------------------------------------------------

@pytest.mark.parametrize("address, says", [("notanaddress", "is not a Dask scheduler address"),
                                           ("tcp://127.0.0.1:1", "nothing listens there")])
def test_bad_dask_address_is_one_line_at_once(tmp_path, address, says):
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    t0 = time.monotonic()
    r = subprocess.run(_cmd("run", "--quick", "--dask", address, "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "o"),
                            "--cache", str(tmp_path / "c")), capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - t0
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rba: error:") and says in lines[0], r.stderr
    assert elapsed < 15, f"took {elapsed:.1f} s"  # imports included: a Dask client that waits out its timeout takes 20 s more
    assert not (tmp_path / "s.sqlite").exists()
