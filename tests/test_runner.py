"""The runner end to end: small plans, resume after SIGKILL, determinism, local pool vs Dask, CLI errors."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from robustbench_align.runner.api import run_plan
from robustbench_align.runner.config import load_plan, plan_from_dict
from robustbench_align.runner.store import Store

SMALL = """
models = ["xgb", "mlp", "rfam"]
datasets = ["iris", "wine"]
threats = ["linf"]
seeds = [0]
points = 6
attack_time_limit = 30.0
[model_params.xgb]
n_estimators = 5
max_depth = 2
[model_params.mlp]
hidden = [16]
epochs = 30
[model_params.rfam]
iters = 2
"""


def _plan_file(tmp_path, text=SMALL):
    p = tmp_path / "plan.toml"
    p.write_text(text)
    return p


def _strip(dump):
    return json.dumps(dump, sort_keys=True, default=str)


def _rba(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "robustbench_align.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    plan = load_plan(_plan_file(d))
    run_plan(plan, d / "ref.sqlite", cache_dir=str(d / "cache"), progress=False)
    return d / "ref.sqlite"


def test_small_plan_writes_every_run(reference_store):
    with Store(reference_store, readonly=True) as st:
        runs = st.runs()
        pts = st.points()
    assert len(runs) == 6 and set(runs["status"]) == {"ok"}, runs[["model", "dataset", "status", "error"]]
    assert len(pts) == 6 * 6
    # every finite radius belongs to a correctly classified point, misclassified points have radius 0
    wrong = pts[pts["correct"] == 0]
    assert (wrong["radius"] == 0).all()
    # trees carry a certified lower bound, differentiable models carry alignment
    assert pts[pts["model"] == "xgb"]["lower_bound"].notna().all()
    assert pts[pts["model"] == "xgb"]["normal_alignment"].isna().all()
    assert pts[pts["model"] == "mlp"]["normal_alignment"].between(0, 1).all()


def test_warm_rerun_recomputes_nothing(reference_store, tmp_path):
    plan = load_plan(_plan_file(tmp_path))
    before = Store(reference_store, readonly=True).dump()
    summary = run_plan(plan, reference_store, cache_dir=None, progress=False)
    assert summary["jobs"] == 0 and summary["skipped"] == 6
    assert _strip(Store(reference_store, readonly=True).dump()) == _strip(before)


def test_cold_runs_are_deterministic(reference_store, tmp_path):
    plan = load_plan(_plan_file(tmp_path))
    run_plan(plan, tmp_path / "b.sqlite", cache_dir=None, progress=False)
    a = Store(reference_store, readonly=True).dump()
    b = Store(tmp_path / "b.sqlite", readonly=True).dump()
    assert _strip(a) == _strip(b)


def test_kill_and_resume_equals_uninterrupted(reference_store, tmp_path):
    plan_path = _plan_file(tmp_path)
    store = tmp_path / "k.sqlite"
    proc = subprocess.Popen([sys.executable, "-m", "robustbench_align.cli", "--quiet", "run", "--config", str(plan_path),
                             "--store", str(store), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    n = 0
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.3)
        if store.exists():
            try:
                con = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1)
                n = con.execute("SELECT count(*) FROM runs").fetchone()[0]
                con.close()
            except sqlite3.Error:
                n = 0
            if n >= 2:
                break
    assert proc.poll() is None, "the run finished before it could be killed; make the plan larger"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with Store(store, readonly=True) as st:
        partial = len(st.runs())
    assert 2 <= partial < 6
    r = _rba("--quiet", "run", "--config", str(plan_path), "--store", str(store), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert _strip(Store(store, readonly=True).dump()) == _strip(Store(reference_store, readonly=True).dump())
    assert (tmp_path / "out" / "leaderboard.json").exists()


def test_local_pool_equals_dask(reference_store, tmp_path):
    distributed = pytest.importorskip("dask.distributed", reason="the dask extra is not installed")
    plan = load_plan(_plan_file(tmp_path))
    run_plan(plan, tmp_path / "pool.sqlite", workers=2, progress=False)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    try:
        run_plan(plan, tmp_path / "dask.sqlite", dask_address=cluster.scheduler_address, progress=False)
    finally:
        cluster.close()
    ref = _strip(Store(reference_store, readonly=True).dump())
    assert _strip(Store(tmp_path / "pool.sqlite", readonly=True).dump()) == ref
    assert _strip(Store(tmp_path / "dask.sqlite", readonly=True).dump()) == ref


@pytest.mark.parametrize("text, msg", [
    ("modelz = ['mlp']", "unknown key 'modelz'"),
    ("points = 'many'", "'points' must be int"),
    ("models = ['nope']", "unknown model 'nope'"),
    ("threats = ['linf', 'l7']", "l7"),
])
def test_bad_config_is_one_line_exit_2(tmp_path, text, msg):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    r = _rba("run", "--config", str(p), "--store", str(tmp_path / "s.sqlite"))
    assert r.returncode == 2
    assert msg in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s.sqlite").exists()


def test_unreachable_dask_fails_fast(tmp_path):
    p = _plan_file(tmp_path)
    t0 = time.time()
    r = _rba("run", "--config", str(p), "--dask", "tcp://127.0.0.1:1", "--store", str(tmp_path / "s.sqlite"))
    assert r.returncode == 2 and "Dask" in r.stderr
    assert time.time() - t0 < 40  # 10 s connect timeout plus interpreter start-up


def test_store_that_is_not_a_store(tmp_path):
    bad = tmp_path / "x.sqlite"
    bad.write_text("not a database")
    r = _rba("leaderboard", "--store", str(bad))
    assert r.returncode == 2 and "not a result store" in r.stderr


def test_plan_from_dict_types():
    with pytest.raises(Exception, match="list of str"):
        plan_from_dict({"models": "mlp"})
