"""Large test sets: `rba evaluate` on up to 20,000 test points of a 50-feature CSV file, chunk by chunk.

A 26,000-row, 50-feature `make_classification` table (20 informative, 10 redundant features, seed 0)
is written to a CSV file and split with test_size = 0.8 (20,800 test points). For the registry's MLP
and a small XGBoost model (20 trees of depth 4) and each threat
model, `rba evaluate` runs as a subprocess at several point counts n with `--chunk 500` into a fresh
store; measured per run: wall time, peak resident memory of the process (`os.wait4` rusage), and
the summed per-run evaluation time the store records. Reported: points per second per family and
norm, and the exponent k of time ~ n^k (least-squares slope of log time on log n; linear growth is
k = 1). Wall time includes start-up, data loading and the model's fit; the evaluation time does not.

Run from the repository root:  python -m benchmarks.streaming [--quick] [--sizes 1000 5000 20000] [--threats linf l2]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import machine_info
from benchmarks.plan_scaling import fit_exponent, rba_command

HERE = Path(__file__).resolve().parent
ROWS, FEATURES, TEST_SIZE, CHUNK = 26_000, 50, 0.8, 500
# The registry MLP as it is (wider than certify="auto"'s 64-unit limit for the complete ReLU MILP, so
# certified by CROWN); a small XGBoost model (exact L-inf search, MILP for L2).
MODELS: dict[str, dict[str, Any]] = {"mlp": {}, "xgb": {"n_estimators": 20, "max_depth": 4}}


def write_csv(path: Path) -> Path:
    """The benchmark's table: make_classification(26000, 50, 20 informative, 10 redundant, seed 0), label column `target`."""
    import pandas as pd
    from sklearn.datasets import make_classification

    X, y = make_classification(ROWS, FEATURES, n_informative=20, n_redundant=10, random_state=0)
    pd.DataFrame(np.c_[X, y], columns=[f"f{i}" for i in range(FEATURES)] + ["target"]).to_csv(path, index=False)
    return path


def write_plan(path: Path, data: Path, threat: str) -> Path:
    lines = [f'threats = ["{threat}"]', 'attack_effort = "fast"', ""]
    for m, params in MODELS.items():
        if not params:
            continue
        lines.append(f"[model_params.{m}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in params.items()]
        lines.append("")
    lines += [f'[dataset_params."csv:{data}"]', f"test_size = {TEST_SIZE}", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def evaluate_once(root: Path, model: str, data: Path, plan: Path, n: int) -> dict[str, Any]:
    """One `rba evaluate` subprocess: wall seconds, peak RSS (MB), stored evaluation seconds, point count."""
    from robustbench_align.runner.store import Store

    store = root / f"{model}-{plan.stem}-{n}.sqlite"
    cmd = rba_command() + ["--quiet", "evaluate", model, "-d", f"csv:{data}", "--config", str(plan), "--points", str(n),
                           "--chunk", str(CHUNK), "--store", str(store), "--out", str(root / "reports")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"rba evaluate {model} --points {n} failed ({proc.returncode}): {err.strip()[-400:]}")
    with Store(store, readonly=True) as st:
        runs = st.runs()
        pts = st.points()
    return {"model": model, "n": n, "wall": seconds, "rss_mb": usage.ru_maxrss / 1024.0,
            "eval_seconds": float(np.nansum(runs["eval_time"].to_numpy(dtype=float))), "points": len(pts),
            "ok": bool((runs["status"] == "ok").all()), "clean": float(runs["clean_accuracy"].mean())}


_PLAN_ONLY = """
import resource, sys, time
from robustbench_align.runner.api import run_plan
from robustbench_align.runner.config import load_plan
plan = load_plan(sys.argv[1]); plan.models = [sys.argv[2]]; plan.datasets = [sys.argv[3]]; plan.points = int(sys.argv[4])
plan.chunk_points = int(sys.argv[5]); plan.validate()
t0 = time.perf_counter()
run_plan(plan, sys.argv[6], progress=False)
print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)
"""


def plan_only(root: Path, model: str, data: Path, plan: Path, n: int) -> dict[str, Any]:
    """The same cell through `run_plan` (no reports, no read-back): wall seconds and peak RSS of the evaluation alone."""
    store = root / f"plan-{model}-{plan.stem}-{n}.sqlite"
    r = subprocess.run([sys.executable, "-c", _PLAN_ONLY, str(plan), model, f"csv:{data}", str(n), str(CHUNK), str(store)],
                       capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"}, cwd=root)
    if r.returncode != 0:
        raise RuntimeError(f"run_plan {model} n={n} failed: {r.stderr.strip()[-400:]}")
    wall, rss = (float(v) for v in r.stdout.split()[-2:])
    return {"model": model, "n": n, "wall": wall, "rss_mb": rss}


def run(sizes: Sequence[int] = (1000, 5000, 20_000), threats: Sequence[str] = ("linf",), models: Sequence[str] = tuple(MODELS),
        l2_sizes: Sequence[int] = (1000,), plan_sizes: Sequence[int] = ()) -> dict[str, Any]:
    """Every (model, threat, n) run in one temporary directory; `l2_sizes` apply to threat l2;
    `plan_sizes`: the L-inf cells also through `run_plan` alone (the evaluation's memory without the reports)."""
    root = Path(tempfile.mkdtemp(prefix="rba-stream-"))
    info = machine_info()
    out: dict[str, Any] = {"load_start": info["loadavg"], "cpu": info["cpu"], "cores": info["cores"], "rows": [], "plan_rows": []}
    try:
        data = write_csv(root / "data.csv")
        for threat in threats:
            plan = write_plan(root / f"plan-{threat}.toml", data, threat)
            for model in models:
                for n in (l2_sizes if threat == "l2" else sizes):
                    r = evaluate_once(root, model, data, plan, int(n))
                    r["threat"] = threat
                    out["rows"].append(r)
                    print(f"# {model} {threat} n={n}: {r['wall']:.1f} s wall, {r['eval_seconds']:.1f} s evaluation, "
                          f"{r['rss_mb']:.0f} MB peak, {r['points']} points stored", flush=True)
        if plan_sizes:
            plan = write_plan(root / "plan-linf.toml", data, "linf")
            for model in models:
                for n in plan_sizes:
                    r = plan_only(root, model, data, plan, int(n))
                    out["plan_rows"].append(r)
                    print(f"# run_plan {model} linf n={n}: {r['wall']:.1f} s, {r['rss_mb']:.0f} MB peak", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["load_end"] = machine_info()["loadavg"]
    out["markdown"] = markdown(out)
    return out


def markdown(res: dict[str, Any]) -> str:
    rows = res["rows"]
    L = ["## Large test sets: chunked `rba evaluate` on a 50-feature CSV file", "",
         f"{ROWS:,} rows x {FEATURES} features (make_classification, seed 0), test_size {TEST_SIZE} (20,800 test points), "
         f"`--chunk {CHUNK}`, attack effort fast, certify auto; one `rba evaluate` process per row (wall includes the fit). "
         f"Machine: {res.get('cpu', '?')}, {res.get('cores', '?')} cores; 1-minute load average "
         f"{res['load_start'][0]:.2f} at the start, {res['load_end'][0]:.2f} at the end.", "",
         "| model | threat | points | wall (s) | evaluation (s) | points/s (evaluation) | peak RSS (MB) | clean acc |",
         "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        L.append(f"| {r['model']} | {r['threat']} | {r['n']:,} | {r['wall']:.1f} | {r['eval_seconds']:.1f} | "
                 f"{r['points'] / max(r['eval_seconds'], 1e-9):.1f} | {r['rss_mb']:.0f} | {100 * r['clean']:.1f} |")
    L += ["", "| model | threat | sizes | exponent k (wall) | exponent k (evaluation) | peak RSS first / last (MB) |", "|---|---|---|---:|---:|---|"]
    for key in sorted({(r["model"], r["threat"]) for r in rows}):
        sub = [r for r in rows if (r["model"], r["threat"]) == key]
        if len(sub) < 2:
            continue
        ns = [r["n"] for r in sub]
        L.append(f"| {key[0]} | {key[1]} | {', '.join(f'{n:,}' for n in ns)} | {fit_exponent(ns, [r['wall'] for r in sub]):.2f} | "
                 f"{fit_exponent(ns, [r['eval_seconds'] for r in sub]):.2f} | {sub[0]['rss_mb']:.0f} / {sub[-1]['rss_mb']:.0f} |")
    if res.get("plan_rows"):
        L += ["", "The same L-inf cells through `run_plan` alone (chunks computed and stored; no read-back, no reports):", "",
              "| model | points | wall (s) | peak RSS (MB) |", "|---|---:|---:|---:|"]
        L += [f"| {r['model']} | {r['n']:,} | {r['wall']:.1f} | {r['rss_mb']:.0f} |" for r in res["plan_rows"]]
    return "\n".join(L) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="sizes 500, 1000, 2000")
    ap.add_argument("--sizes", type=int, nargs="+")
    ap.add_argument("--threats", nargs="+", default=["linf", "l2"])
    ap.add_argument("--l2-sizes", type=int, nargs="+", default=[1000])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--plan-sizes", type=int, nargs="*", default=[], help="also run these L-inf sizes through run_plan alone")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "streaming.md")
    a = ap.parse_args(argv)
    sizes = a.sizes or ((500, 1000, 2000) if a.quick else (1000, 5000, 20_000))
    res = run(sizes, a.threats, a.models, a.l2_sizes if not a.quick else (500,), a.plan_sizes)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(res["markdown"], encoding="utf-8")
    print(res["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
