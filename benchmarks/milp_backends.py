"""The MILP backends on the default plan's tree cells: HiGHS and Gurobi on the same jobs, compared point by point.

For each tree model of the registry (rf, gbdt, xgb) and each default dataset, `run_job` runs the
cell (the default sample of 50 test points, certify auto, the default threats linf and l2) once
with RBA_MILP_SOLVER=highs and once with RBA_MILP_SOLVER=auto (Gurobi wherever its licence takes
the program), in one process, one after the other, on a model fitted once. Reported per cell and
threat: seconds of each run (the whole job: every attack of the plan, not only the MILP), the
speed-up, the points certified exact by each, the rows whose non-timing columns (radius, lower
bound, exact, cert, by_attack) agree, how the others differ, and any lower bound above the other
run's verified radius (a wrong certificate on one side: must be 0).

Run from the repository root:  python -m benchmarks.milp_backends [--quick] [--models rf,gbdt,xgb]
The table goes to stdout and to benchmarks/results/milp_backends.md. Needs gurobipy (the `gurobi`
extra); without it both runs use HiGHS and the table says so.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from robustbench_align.attacks.trees import milp as milp_module
from robustbench_align.attacks.trees.mip import gurobi_unavailable, solve_mip
from robustbench_align.runner.config import DEFAULT_DATASETS, DEFAULT_THREATS
from robustbench_align.runner.job import Job, run_job

RESULTS = Path(__file__).resolve().parent / "results" / "milp_backends.md"
MODELS = ("rf", "gbdt", "xgb")
REL = 1e-6  # relative tolerance of "the same radius / bound"
CALLS: dict[str, int] = {}  # MILP answers per backend, counted by the wrapper below (the runs' flags do not carry them)


def _counting_solve_mip(*args: Any, **kwargs: Any) -> Any:
    ans = solve_mip(*args, **kwargs)
    CALLS[ans.solver] = CALLS.get(ans.solver, 0) + 1
    return ans


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, float) or isinstance(b, float):
        fa, fb = float(a), float(b)
        if np.isnan(fa) or np.isnan(fb):
            return bool(np.isnan(fa) and np.isnan(fb))
        return fa == fb or abs(fa - fb) <= REL * max(abs(fa), abs(fb))
    return bool(a == b)


def compare(pa: list[dict[str, Any]], pb: list[dict[str, Any]]) -> dict[str, int]:
    """Per point: identical rows, rows that differ, which side certified more, bounds above the other's radius."""
    out = {"n": len(pa), "same": 0, "exact_a": 0, "exact_b": 0, "closed_b": 0, "closed_a": 0, "radius_diff": 0, "bound_above": 0}
    for a, b in zip(pa, pb, strict=True):
        out["exact_a"] += int(bool(a.get("exact")))
        out["exact_b"] += int(bool(b.get("exact")))
        if all(_same(a.get(k), b.get(k)) for k in ("radius", "lower_bound", "exact", "cert", "by_attack")):
            out["same"] += 1
            continue
        ra, rb = a.get("radius"), b.get("radius")
        la, lb = a.get("lower_bound"), b.get("lower_bound")
        if ra is not None and rb is not None and not _same(ra, rb):
            out["radius_diff"] += 1
        out["closed_b"] += int(bool(b.get("exact")) and not bool(a.get("exact")))
        out["closed_a"] += int(bool(a.get("exact")) and not bool(b.get("exact")))
        for lo, r in ((la, rb), (lb, ra)):
            if lo is not None and r is not None and np.isfinite(lo) and np.isfinite(r) and lo > r * (1 + 1e-9) + 1e-12:
                out["bound_above"] += 1
    return out


def run_cell(model: str, dataset: str, points: int, cache: str) -> list[dict[str, Any]]:
    """Both backends on one cell; one row per threat."""
    job = Job(model=model, dataset=dataset, seed=0, threats=list(DEFAULT_THREATS), points=points, certify="auto",
              attack_time_limit=300.0, cache_dir=cache)
    run_job(job)  # fits (and caches) the model, warms imports: not timed
    recs: dict[str, Any] = {}
    secs: dict[str, float] = {}
    calls: dict[str, dict[str, int]] = {}
    milp_module.solve_mip = _counting_solve_mip  # type: ignore[assignment]
    try:
        for side in ("highs", "auto"):
            os.environ["RBA_MILP_SOLVER"] = side
            CALLS.clear()
            t0 = time.perf_counter()
            recs[side] = {r.run["threat"]: r for r in run_job(job)}
            secs[side] = time.perf_counter() - t0
            calls[side] = dict(CALLS)
    finally:
        os.environ.pop("RBA_MILP_SOLVER", None)
        milp_module.solve_mip = solve_mip  # type: ignore[assignment]
    rows = []
    for threat in DEFAULT_THREATS:
        a, b = recs["highs"][threat], recs["auto"][threat]
        cmp = compare(a.points, b.points)
        rows.append({"model": model, "dataset": dataset, "threat": threat, **cmp,
                     "gurobi": calls["auto"].get("gurobi", 0), "highs": calls["auto"].get("highs", 0),
                     "t_highs": secs["highs"], "t_auto": secs["auto"]})
    return rows


def run(models: tuple[str, ...] = MODELS, datasets: tuple[str, ...] = tuple(DEFAULT_DATASETS), points: int = 50,
        cache: str | None = None, command: str = "python -m benchmarks.milp_backends") -> dict[str, Any]:
    """Every cell; returns {"rows": [...], "markdown": str, "gurobi": why-not or ""}."""
    why = gurobi_unavailable()
    cache = cache or tempfile.mkdtemp(prefix="rba-milp-backends-")
    lines = ["| model | dataset | threat | points | s/cell HiGHS | s/cell auto | speed-up | exact HiGHS | exact auto "
             "| rows identical | closed by auto / by HiGHS only | radius differs | bound above the other's radius "
             "| MILP calls of the auto run (cell): Gurobi / HiGHS |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    print(lines[0], flush=True)
    rows: list[dict[str, Any]] = []
    for m in models:
        for d in datasets:
            cell = run_cell(m, d, points, cache)
            for r in cell:
                sp = r["t_highs"] / max(r["t_auto"], 1e-9)
                t_cell = "" if r is not cell[0] else f"{r['t_highs']:.1f}"
                t_cell_b = "" if r is not cell[0] else f"{r['t_auto']:.1f}"
                sp_s = "" if r is not cell[0] else f"{sp:.2f}x"
                calls_s = f"{r['gurobi']} / {r['highs']}"
                line = (f"| {m} | {d} | {r['threat']} | {r['n']} | {t_cell} | {t_cell_b} | {sp_s} | {r['exact_a']} | {r['exact_b']} "
                        f"| {r['same']}/{r['n']} | {r['closed_b']} / {r['closed_a']} | {r['radius_diff']} | {r['bound_above']} "
                        f"| {calls_s if r is cell[0] else ''} |")
                lines.append(line)
                print(line, flush=True)
            rows += cell
    cells = {(r["model"], r["dataset"]): r for r in rows}
    tot: dict[str, tuple[float, float]] = {}
    for (m, _), r in cells.items():
        a, b = tot.get(m, (0.0, 0.0))
        tot[m] = (a + r["t_highs"], b + r["t_auto"])
    summary = ["", "| model | s HiGHS (all cells) | s auto (all cells) | speed-up |", "|---|---|---|---|"]
    summary += [f"| {m} | {a:.1f} | {b:.1f} | {a / max(b, 1e-9):.2f}x |" for m, (a, b) in tot.items()]
    head = ["# The MILP backends on the default plan's tree cells: HiGHS against auto (Gurobi where licensed)", "",
            f"`{command}` on {platform.processor() or platform.machine()}, Python {platform.python_version()}; "
            f"{points} points per cell, threats {', '.join(DEFAULT_THREATS)}, default work budgets. "
            + (f"**Gurobi was not usable ({why}): both sides ran HiGHS.** " if why else "")
            + "Seconds are whole jobs (every attack of the plan), wall-clock on a shared machine.", ""]
    return {"rows": rows, "totals": tot, "gurobi": why, "markdown": "\n".join(head + lines + summary) + "\n"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="rf on breast_cancer and wine, 10 points")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--datasets", default=",".join(DEFAULT_DATASETS))
    ap.add_argument("--points", type=int, default=50)
    ap.add_argument("--cache", default=None, help="fit cache (default: a temporary folder)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    models = ("rf",) if args.quick else tuple(args.models.split(","))
    datasets = ("breast_cancer", "wine") if args.quick else tuple(args.datasets.split(","))
    res = run(models, datasets, 10 if args.quick else args.points, args.cache,
              "python -m benchmarks.milp_backends " + " ".join(argv if argv is not None else sys.argv[1:]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(res["markdown"])


if __name__ == "__main__":
    main()
