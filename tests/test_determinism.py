"""The same plan, seed and versions give the same rows on a quiet and on a loaded machine.

Exact and complete methods stop on deterministic work budgets (solver nodes, search steps, band
resolutions, bisection steps), not on wall-clock time; the wall-clock limit is only a safety net.
The plan below is run twice, the second time while CPU-burning processes compete for both cores,
and every non-timing column of the runs and points must agree.
"""
from __future__ import annotations

import multiprocessing as mp
import time

import numpy as np
import pandas as pd

from robustbench_align.runner.api import run_plan
from robustbench_align.runner.config import Plan
from robustbench_align.runner.store import Store

TIMING = {"fit_time", "eval_time", "created", "fit_cached"}


def _burn(stop_at: float) -> None:
    x = 0.0
    while time.time() < stop_at:
        for i in range(10000):
            x += i * 1e-9


def _rows(path: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    with Store(path, readonly=True) as st:
        runs = st.runs().drop(columns=[c for c in TIMING if c in st.runs().columns]).sort_values("run_id").reset_index(drop=True)
        points = st.points().sort_values(["run_id", "idx"]).reset_index(drop=True)
    flags = runs["flags"].astype(str)
    runs["flags"] = [f.split('"point_time"')[0] for f in flags]  # per-point seconds are timing
    return runs, points


def test_same_plan_same_rows_under_cpu_load(tmp_path):
    plan = Plan(models=["rf", "xgb", "mlp"], datasets=["iris"], threats=["linf", "l2"], seeds=[0], points=8).validate()
    quiet, loaded = str(tmp_path / "quiet.sqlite"), str(tmp_path / "loaded.sqlite")
    run_plan(plan, quiet, cache_dir=str(tmp_path / "cache"), progress=False)
    ctx = mp.get_context("spawn")
    burners = [ctx.Process(target=_burn, args=(time.time() + 600,)) for _ in range(3)]
    for b in burners:
        b.start()
    try:
        run_plan(plan, loaded, cache_dir=str(tmp_path / "cache"), progress=False)
    finally:
        for b in burners:
            b.terminate()
            b.join()
    (r1, p1), (r2, p2) = _rows(quiet), _rows(loaded)
    assert len(r1) == 6 and (r1["status"] == "ok").all(), r1[["model", "threat", "status", "error"]]
    pd.testing.assert_frame_equal(r1, r2)
    pd.testing.assert_frame_equal(p1, p2)
    assert np.isfinite(p1["lower_bound"]).any()
