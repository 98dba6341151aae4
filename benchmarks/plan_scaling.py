"""Plan benchmark: wall time of `rba run` on the default plan (cold and warm) and how a plan's time grows with points.

1. Default plan: `rba run --workers 2` in a temporary directory (fresh store, cache and report
   directory): the cold run fits every model and runs every attack; the warm run repeats the same
   command, so every cell is reused from the store and only the reports are rewritten. A cold run
   still going at the deadline (default: the 600 s target) is stopped and its time extrapolated
   from the finished cells. With `--quick` the default plan is replaced by `rba run --quick`
   (2 datasets, 10 points).
2. Scaling: a reduced plan (3 models x 2 datasets x threat models linf, l2; linf only with --quick)
   through `run_plan(..., workers=2)` at several points-per-dataset values n, with the model fits
   taken from the cache of step 1 (or of a warm-up run), so the timings are evaluation only. The
   exponent k of time ~ n^k is the least-squares slope of log(time) on log(n), on the wall time and
   on the summed per-run evaluation time the store records (immune to pool start-up and idle workers).

Run from the repository root:  python -m benchmarks.plan_scaling [--quick | --full] [--skip-default]
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import machine_info

SCALING_MODELS = ["mlp", "rfm", "xgb"]
SCALING_DATASETS = ["breast_cancer", "wine"]
COLD_TARGET = 600.0
WARM_TARGET = 10.0


def rba_command() -> list[str]:
    """The `rba` console script of this interpreter's environment (or the typer app through -c)."""
    script = Path(sys.executable).parent / "rba"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from robustbench_align.cli import app; sys.argv[0] = 'rba'; app()"]


def rba_run(root: Path, workers: int, quick: bool, config: Path | None = None, timeout: float | None = None) -> dict[str, Any]:
    """One `rba run` in `root` (store, cache, reports inside it): wall seconds, whether it finished, summary line.

    With `timeout`, a run still going after that many seconds is stopped (its process group, which
    this function started) and reported as unfinished; cells finished so far stay in the store.
    """
    cmd = rba_command() + ["run", "--workers", str(workers), "--store", str(root / "results.sqlite"),
                           "--cache", str(root / "cache"), "--out", str(root / "reports")]
    if quick:
        cmd.append("--quick")
    if config is not None:
        cmd += ["--config", str(config)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
        return {"seconds": time.perf_counter() - t0, "finished": False, "summary": f"stopped after {timeout:.0f} s"}
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"rba run failed ({proc.returncode}): {(err or out).strip()[-500:]}")
    summary = [ln for ln in out.splitlines() if "cells computed" in ln]
    return {"seconds": seconds, "finished": True, "summary": summary[-1].split("; reports")[0].strip() if summary else ""}


def store_stats(path: Path) -> dict[str, Any]:
    """Runs, failed runs, jobs, cached fits and the summed per-job fit and per-run evaluation times of a store."""
    from robustbench_align.runner.store import Store

    if not path.exists():
        return {"runs": 0, "failed": 0, "jobs": 0, "cached_fits": 0, "eval_seconds": 0.0, "fit_seconds": 0.0, "pairs": set()}
    with Store(path, readonly=True) as st:
        runs = st.runs()
    ok = runs[runs["status"] == "ok"]
    per_job = runs.drop_duplicates(["model", "dataset", "seed"])
    return {
        "runs": len(runs), "failed": int(len(runs) - len(ok)), "jobs": len(per_job),
        "cached_fits": int(np.nansum(per_job["fit_cached"].to_numpy(dtype=float))),
        "eval_seconds": float(np.nansum(ok["eval_time"].to_numpy(dtype=float))),
        "fit_seconds": float(np.nansum(per_job["fit_time"].to_numpy(dtype=float))),
        "pairs": set(zip(per_job["model"], per_job["dataset"], strict=True)),
    }


def default_plan(root: Path, workers: int, quick: bool, deadline: float | None) -> dict[str, Any]:
    """Cold then warm `rba run` of the default (or --quick) plan in `root`.

    When the cold run passes `deadline` it is stopped; its time is extrapolated from the finished
    cells, and the warm run uses a config holding only the datasets every model finished on (the
    warm cost is the reuse check plus rewriting the reports of the whole store).
    """
    from robustbench_align.runner.config import load_plan

    plan = load_plan(quick=quick)
    total_jobs = len(plan.jobs(None))
    cold = rba_run(root, workers, quick, timeout=deadline)
    stats = store_stats(root / "results.sqlite")
    out = {"plan": "`rba run --quick` plan" if quick else "default plan", "jobs_total": total_jobs, "cold": cold["seconds"],
           "cold_finished": cold["finished"], "cold_summary": cold["summary"], "warm": None, "warm_summary": "",
           "warm_scope": "same command", **{k: v for k, v in stats.items() if k != "pairs"}}
    out["cold_extrapolated"] = cold["seconds"] * total_jobs / max(stats["jobs"], 1) if not cold["finished"] else cold["seconds"]
    config = None
    if not cold["finished"]:
        done = [d for d in plan.datasets if all((m, d) in stats["pairs"] for m in plan.models)]
        if not done:
            return out
        config = root / "warm.toml"
        config.write_text("[plan]\ndatasets = [" + ", ".join(f'"{d}"' for d in done) + "]\n", encoding="utf-8")
        out["warm_scope"] = f"datasets {', '.join(done)} (every model finished there)"
    warm = rba_run(root, workers, quick, config=config)
    out["warm"], out["warm_summary"] = warm["seconds"], warm["summary"]
    return out


def fit_exponent(n: Sequence[float], t: Sequence[float]) -> float:
    """Least-squares slope of log t on log n."""
    x, y = np.log(np.asarray(n, dtype=float)), np.log(np.asarray(t, dtype=float))
    return float(np.polyfit(x, y, 1)[0])


def scaling(root: Path, ns: Sequence[int], workers: int, threats: Sequence[str], fitted: set) -> dict[str, Any]:
    """Wall and summed evaluation time of the reduced plan at each n, fits taken from `root`/cache.

    `fitted` holds the (model, dataset) pairs already in the cache (from the default-plan run); when
    any scaling cell is missing, a warm-up run with 2 points fits it first.
    """
    from robustbench_align.runner.api import run_plan
    from robustbench_align.runner.config import Plan

    cache = str(root / "cache")
    rows = []
    fit_wall = 0.0
    if not all((m, d) in fitted for m in SCALING_MODELS for d in SCALING_DATASETS):
        warm_up = Plan(models=list(SCALING_MODELS), datasets=list(SCALING_DATASETS), threats=["linf"], points=2).validate()
        t0 = time.perf_counter()
        run_plan(warm_up, root / "scaling-warmup.sqlite", cache_dir=cache, workers=workers, progress=False)
        fit_wall = time.perf_counter() - t0
    for n in ns:
        plan = Plan(models=list(SCALING_MODELS), datasets=list(SCALING_DATASETS), threats=list(threats), points=int(n)).validate()
        store = root / f"scaling-n{n}.sqlite"
        summary = run_plan(plan, store, cache_dir=cache, workers=workers, progress=False)
        st = store_stats(store)
        st.pop("pairs")
        rows.append({"n": int(n), "wall": float(summary["seconds"]), **st})
        print(f"# scaling n={n}: {summary['seconds']:.1f} s wall, {st['eval_seconds']:.1f} s summed evaluation", flush=True)
    n_runs = max(rows[0]["runs"], 1) if rows else 1
    per_point, fixed = np.polyfit([r["n"] for r in rows], [r["eval_seconds"] / n_runs for r in rows], 1) if len(rows) > 1 else (np.nan, np.nan)
    return {"rows": rows, "fit_wall": fit_wall, "threats": list(threats), "fixed": float(fixed), "per_point": float(per_point),
            "k_wall": fit_exponent([r["n"] for r in rows], [r["wall"] for r in rows]),
            "k_eval": fit_exponent([r["n"] for r in rows], [r["eval_seconds"] for r in rows]),
            "models": list(SCALING_MODELS), "datasets": list(SCALING_DATASETS)}


def run(quick: bool = False, full: bool = False, workers: int = 2, ns: Sequence[int] | None = None,
        skip_default: bool = False, deadline: float | None = COLD_TARGET) -> dict[str, Any]:
    """Both measurements in one temporary directory; returns every number plus the markdown section.

    quick: the `rba run --quick` plan and linf-only scaling runs; full: scaling at n = 100, 200, 400.
    """
    logging.getLogger("robustbench_align").setLevel(logging.ERROR)
    if ns is None:
        ns = (100, 200, 400) if full else (10, 20, 40)
    out: dict[str, Any] = {"workers": workers, "load_start": machine_info()["loadavg"], "quick": quick, "deadline": deadline}
    root = Path(tempfile.mkdtemp(prefix="rba-bench-"))
    try:
        fitted: set = set()
        out["default"] = None
        if not skip_default:
            out["default"] = d = default_plan(root, workers, quick, deadline)
            fitted = store_stats(root / "results.sqlite")["pairs"]
            warm = f"{d['warm']:.1f} s" if d["warm"] is not None else "not measured"
            print(f"# {d['plan']}: cold {d['cold']:.1f} s ({'finished' if d['cold_finished'] else 'stopped'}), warm {warm}", flush=True)
        out["scaling"] = scaling(root, ns, workers, ["linf"] if quick else ["linf", "l2"], fitted)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["load_end"] = machine_info()["loadavg"]
    out["markdown"] = markdown(out)
    return out


def markdown(res: dict[str, Any]) -> str:
    """The plan section of RESULTS.md."""
    L = ["## Plan wall time and scaling", ""]
    d = res["default"]
    if d:
        cold = (f"{d['cold']:.1f}" if d["cold_finished"]
                else f"> {d['cold']:.0f} (stopped; {d['jobs']}/{d['jobs_total']} cells done, extrapolated {d['cold_extrapolated']:.0f})")
        warm = f"{d['warm']:.1f}" if d["warm"] is not None else "not measured"
        L += [f"`rba run --workers {res['workers']}` on the {d['plan']} ({d['jobs_total']} cells) in a fresh temporary directory "
              "(store, model cache, reports).", "",
              "| run | wall (s) | summary |", "|---|---:|---|",
              f"| cold | {cold} | {d['cold_summary']} |",
              f"| warm ({d['warm_scope']}) | {warm} | {d['warm_summary']} |", "",
              f"Cold run: {d['runs']} runs ({d['failed']} failed); summed per-job fit time {d['fit_seconds']:.1f} s, "
              f"summed per-run evaluation time {d['eval_seconds']:.1f} s (over {res['workers']} workers).", ""]
    s = res["scaling"]
    warm_up = f"a warm-up run fitted the models ({s['fit_wall']:.1f} s)" if s["fit_wall"] else "fits reused from the default-plan run's cache"
    L += [f"Scaling: {len(s['models'])} models ({', '.join(s['models'])}) x {len(s['datasets'])} datasets ({', '.join(s['datasets'])}) "
          f"x threat models {', '.join(s['threats'])}, `run_plan(workers={res['workers']})`; {warm_up}.", "",
          "| points per dataset | wall (s) | summed evaluation (s) | runs | failed | cached fits |", "|---:|---:|---:|---:|---:|---:|"]
    for r in s["rows"]:
        L.append(f"| {r['n']} | {r['wall']:.1f} | {r['eval_seconds']:.1f} | {r['runs']} | {r['failed']} | {r['cached_fits']}/{r['jobs']} |")
    L += ["", f"Fitted exponent of time ~ n^k: k = {s['k_wall']:.2f} on wall time, k = {s['k_eval']:.2f} on summed evaluation time. "
          f"A straight line through the evaluation time per run: {s['fixed']:.2f} s fixed + {1000 * s['per_point']:.1f} ms per point"
          + (", so at these n the per-run fixed cost (model checks, attack set-up, budgets that do not shrink with n) dominates "
             "and k is below 1." if s["fixed"] > s["per_point"] * max(r["n"] for r in s["rows"]) else ".")]
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="`rba run --quick` instead of the default plan; linf-only scaling runs")
    g.add_argument("--full", action="store_true", help="scaling at n = 100, 200, 400")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--points", type=int, nargs="+", default=None, help="points per dataset for the scaling runs")
    ap.add_argument("--skip-default", action="store_true", help="only the scaling runs")
    ap.add_argument("--deadline", type=float, default=COLD_TARGET,
                    help="stop the cold default-plan run after this many seconds (0 = never) and extrapolate")
    args = ap.parse_args(argv)
    res = run(quick=args.quick, full=args.full, workers=args.workers, ns=args.points, skip_default=args.skip_default,
              deadline=args.deadline or None)
    print(res["markdown"])
    return res


if __name__ == "__main__":
    main()
