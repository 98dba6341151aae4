"""Chunked evaluation: a large sample runs, is stored and resumes chunk by chunk, with the same rows as one job."""
from __future__ import annotations

import json

import numpy as np
import pytest

import robustbench_align as rba
from robustbench_align.runner.api import run_plan
from robustbench_align.runner.config import plan_from_dict
from robustbench_align.runner.job import run_job
from robustbench_align.runner.store import RecordError, RunRecord, Store

# Exact, per-point attacks (trees, a linear model's closed form): results do not depend on the batch.
PLAN = {
    "models": ["xgb", "gbdt"], "datasets": ["wine"], "threats": ["linf"], "seeds": [0], "points": 0,
    "model_params": {"xgb": {"n_estimators": 5, "max_depth": 2}, "gbdt": {"n_estimators": 5, "max_depth": 2}},
}
VOLATILE = {"run_id", "config", "fit_time", "eval_time", "created", "fit_cached"}


def _plan(chunk: int, **extra):
    return plan_from_dict({**PLAN, "chunk_points": chunk, **extra}).validate()


def _rows(store) -> tuple[list[dict], list[dict]]:
    with Store(store, readonly=True) as st:
        runs = st.runs().drop(columns=sorted(VOLATILE & set(st.runs().columns))).to_dict("records")
        pts = st.points().drop(columns=["run_id"]).to_dict("records")
    return runs, pts


def _same(a, b) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    d = tmp_path_factory.mktemp("whole")
    run_plan(_plan(0), d / "s.sqlite", cache_dir=str(d / "cache"), progress=False)
    return d / "s.sqlite"


def test_chunked_run_equals_one_job_and_assembles_every_point(whole, tmp_path):
    plan = _plan(12)
    jobs = plan.jobs(str(tmp_path / "cache"))
    n_test = int(rba.load_dataset("wine", seed=0).X_test.shape[0])
    k = -(-n_test // 12)
    assert len(jobs) == 2 * k and {j.n_chunks for j in jobs} == {k}
    summary = run_plan(plan, tmp_path / "c.sqlite", cache_dir=str(tmp_path / "cache"), progress=False)
    assert summary["runs_written"] == 2 and summary["runs_failed"] == 0
    runs_c, pts_c = _rows(tmp_path / "c.sqlite")
    runs_w, pts_w = _rows(whole)
    assert len(pts_c) == 2 * n_test
    with Store(tmp_path / "c.sqlite", readonly=True) as st:
        assert sorted(st.points()["idx"].unique()) == list(range(n_test))
        assert st.stored_chunks() == {}  # every chunk moved into its run
        assert all(c.get("chunk_points") == 12 for c in st.runs()["config"])
    assert _same(pts_c, pts_w)
    assert _same(runs_c, runs_w)  # attacks, flags, clean accuracy, n_points: merged to the one-job values


def test_interrupted_chunked_cell_resumes_after_its_stored_chunks(whole, tmp_path):
    plan = _plan(12)
    store = tmp_path / "r.sqlite"
    jobs = plan.jobs(str(tmp_path / "cache"))
    first = [j for j in jobs if j.model == "xgb"][:2]
    with Store(store) as st:  # two chunks stored, then the run "died"
        for j in first:
            assert st.write(run_job(j)) == 0  # a chunk is not a run yet
        assert st.stored_chunks() == {next(iter(first[0].run_ids().values())): {0, 1}}
        assert st.runs().empty and st.points().empty
    summary = run_plan(plan, store, cache_dir=str(tmp_path / "cache"), progress=False)
    assert summary["jobs"] == len(jobs) - 2 and summary["skipped"] == 2
    assert _same(_rows(store), _rows(whole))


def test_a_failed_chunk_fails_its_run_without_points(tmp_path):
    plan = _plan(12)
    jobs = [j for j in plan.jobs(None) if j.model == "xgb"]
    with Store(tmp_path / "f.sqlite") as st:
        for j in jobs:
            recs = run_job(j)
            if j.chunk == 1:
                recs = [RunRecord(run={**r.run, "status": "failed", "error": "boom"}, points=[], chunk=r.chunk, n_chunks=r.n_chunks) for r in recs]
            st.write(recs)
        runs, pts = st.runs(), st.points()
    assert list(runs["status"]) == ["failed"] and runs["error"].iloc[0] == "boom"
    assert pts.empty


def test_bad_chunk_numbers_are_refused_whole(tmp_path):
    rec = run_job(_plan(12).jobs(None)[0])[0]
    with Store(tmp_path / "b.sqlite") as st:
        for c, n in ((5, 3), (-1, 3)):
            with pytest.raises(RecordError, match="not a chunk number"):
                st.write([RunRecord(run=rec.run, points=rec.points, chunk=c, n_chunks=n)])
        assert st.stored_chunks() == {} and st.runs().empty


def test_evaluate_in_chunks_matches_one_chunk_and_streams_to_the_store(tmp_path):
    from sklearn.ensemble import RandomForestClassifier

    ds = rba.load_dataset("breast_cancer", seed=0)
    clf = RandomForestClassifier(n_estimators=4, max_depth=3, random_state=0).fit(ds.X_train, ds.y_train)
    one = rba.evaluate(clf, "breast_cancer", threats=["linf"], points=40, name="rf4", chunk_points=0)
    many = rba.evaluate(clf, "breast_cancer", threats=["linf"], points=40, name="rf4", chunk_points=15, store=tmp_path / "e.sqlite")
    cols = [c for c in one.columns if c not in ("fit_time", "eval_time", "run_id")]
    assert _same(one[cols].to_dict("records"), many[cols].to_dict("records"))
    with Store(tmp_path / "e.sqlite", readonly=True) as st:
        pts = st.points()
    assert len(pts) == 40 and sorted(pts["idx"]) == list(range(40))
    scratch = rba.evaluate(clf, "breast_cancer", threats=["linf"], points=40, name="rf4", chunk_points=15)  # no store: a scratch one
    assert _same(one[cols].to_dict("records"), scratch[cols].to_dict("records"))


def test_chunk_option_is_validated():
    from robustbench_align.errors import ConfigError

    with pytest.raises(ConfigError, match="chunk_points"):
        _plan(-1)
    with pytest.raises(ConfigError, match="chunk_points"):
        rba.evaluate("xgb", "wine", chunk_points=-3)


def test_cli_evaluate_points_and_chunk(tmp_path):
    from typer.testing import CliRunner

    from robustbench_align.cli import app

    res = CliRunner().invoke(app, ["--quiet", "evaluate", "xgb", "-d", "wine", "--points", "30", "--chunk", "10",
                                   "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    with Store(tmp_path / "s.sqlite", readonly=True) as st:
        pts = st.points()
    assert len(pts) == 30 * 2 and np.array_equal(np.sort(pts["idx"].unique()), np.arange(30))
