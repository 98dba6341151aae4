"""Exact l2/l1 on forests: the MILP before and after the reachability restriction, side by side.

"Before" is `robustbench_align/attacks/trees/milp.py` at commit BEFORE (read with `git show`, loaded
under another module name); "after" is the installed module. Both solve the same points of the same
models in the same process, one point after the other, with the default work budgets (node limits),
so their per-point results can be compared exactly. Reported per (model, dataset, norm): seconds per
point of each, the speed-up, the share of points certified exact (lower bound = radius up to
the MILP's relative gap, 1e-6) of each, the largest |radius difference| and the largest lower-bound change.

Cells: the registry `rf` (cached fits of the default plan, if `--cache` holds them, else fitted
here) on breast_cancer, digits and synthetic in l2 and l1; the issue's 50-tree depth-8 forest
(RandomForestClassifier(n_estimators=50, max_depth=8, random_state=0) on standardised
breast_cancer); the registry `gbdt` and `xgb` on breast_cancer for reference.

Run from the repository root:  python -m benchmarks.forest_milp [--quick] [--points N]
The table goes to stdout and to benchmarks/results/forest_milp.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import platform
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np

from robustbench_align.attacks.base import Norm
from robustbench_align.attacks.trees import milp as after_module
from robustbench_align.attacks.trees.points import ensemble_of
from robustbench_align.data.registry import load_dataset
from robustbench_align.models.persistence import fit_cached
from robustbench_align.models.trees import RandomForestModel
from robustbench_align.runner.job import sample_points

BEFORE = "a6ff71d"  # the last commit with the unrestricted formulation
ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "forest_milp.md"
EXACT_REL = 1e-6  # certified exact: lower bound within the MILP's relative gap (mip_rel_gap 1e-6) of the radius


def before_module(before: str = BEFORE) -> types.ModuleType:
    """milp.py as of commit `before`, importable next to the current package (relative imports resolve)."""
    src = subprocess.run(["git", "show", f"{before}:robustbench_align/attacks/trees/milp.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "_milp_before.py"
    path.write_text(src)
    name = "robustbench_align.attacks.trees._milp_before"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    if hasattr(mod, "shared"):  # its structures are cached apart from the current module's (their classes differ)
        from robustbench_align.attacks.trees.points import shared

        mod.shared = lambda ens, key, build: shared(ens, ("before", key), build)
    return mod


def model_of(name: str, dataset: str, cache: str | None) -> Any:
    """A registry model (cached fit when available) or the issue's 50-tree depth-8 forest ("rf-50x8")."""
    ds = load_dataset(dataset, seed=0)
    if name == "rf-50x8":
        return RandomForestModel(n_estimators=50, max_depth=8, random_state=0).fit(ds.X_train, ds.y_train), ds
    return fit_cached(name, ds, 0, cache)[0], ds


def run_cell(before: types.ModuleType, name: str, dataset: str, norm_name: str, points: int, cache: str | None,
             solver: str = "auto") -> dict[str, Any]:
    """Both solvers on the first `points` clean-correct points of the default plan's sample."""
    model, ds = model_of(name, dataset, cache)
    idx = sample_points(len(ds.y_test), 50, 0)
    X, y = ds.X_test[idx], ds.y_test[idx]
    ok = model.predict(X) == y
    X, y = X[ok][:points], y[ok][:points]
    ens = ensemble_of(model, "milp")
    norm = Norm.of(norm_name)
    old = before.MilpSolver(ens, model, norm, 1e-6)
    new = after_module.MilpSolver(ens, model, norm, 1e-6, solver=solver)
    t_old = t_new = 0.0
    ex_old = ex_new = 0
    dr = dl = 0.0
    lower_above = 0
    r_lower = r_higher = 0
    solves = gurobi = highs = 0
    for x, yi in zip(X, y, strict=True):
        t0 = time.perf_counter()
        a = old.solve_point(x, int(yi))
        t1 = time.perf_counter()
        b = new.solve_point(x, int(yi))
        t2 = time.perf_counter()
        t_old += t1 - t0
        t_new += t2 - t1
        solves += b.solves
        gurobi += b.gurobi
        highs += b.highs
        ex_old += int(a.lower >= a.dist * (1 - EXACT_REL))
        ex_new += int(b.lower >= b.dist * (1 - EXACT_REL))
        dr = max(dr, abs(a.dist - b.dist)) if np.isfinite(a.dist) or np.isfinite(b.dist) else dr
        dl = max(dl, abs(a.lower - b.lower)) if np.isfinite(a.lower) and np.isfinite(b.lower) else dl
        r_lower += int(b.dist < a.dist * (1 - 1e-9))
        r_higher += int(b.dist > a.dist * (1 + 1e-9))
        lower_above += int(b.lower > a.dist * (1 + 1e-9) or a.lower > b.dist * (1 + 1e-9))
    n = len(y)
    return {"model": name, "dataset": dataset, "norm": norm_name, "n": n, "old": t_old / max(n, 1), "new": t_new / max(n, 1),
            "ex_old": ex_old, "ex_new": ex_new, "dr": dr, "dl": dl, "lower_above": lower_above,
            "r_lower": r_lower, "r_higher": r_higher, "solves": solves, "gurobi": gurobi, "highs": highs}


CELLS = [("rf", "breast_cancer", "l2"), ("rf", "breast_cancer", "l1"), ("rf", "digits", "l2"), ("rf", "digits", "l1"),
         ("rf", "synthetic", "l2"), ("rf", "synthetic", "l1"), ("rf-50x8", "breast_cancer", "l2"), ("rf-50x8", "breast_cancer", "l1"),
         ("gbdt", "breast_cancer", "l2"), ("xgb", "breast_cancer", "l2")]


def run(cells: list[tuple[str, ...]] | None = None, points: int = 10, cache: str | None = None, before: str = BEFORE,
        command: str = "python -m benchmarks.forest_milp", solver: str = "auto") -> dict[str, Any]:
    """Every cell, before and after; returns {"rows": [...], "markdown": str}."""
    mod = before_module(before)
    lines = ["| model | dataset | norm | points | s/pt before | s/pt after | speed-up | exact before | exact after "
             "| max abs radius diff | radius lower / higher after | max abs lower-bound diff | bound above the other's radius "
             "| solver calls after: Gurobi / HiGHS |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    print(lines[0], flush=True)
    rows = []
    for m, d, nm in cells or CELLS:
        r = run_cell(mod, m, d, nm, points, cache, solver)
        rows.append(r)
        line = (f"| {r['model']} | {r['dataset']} | {r['norm']} | {r['n']} | {r['old']:.2f} | {r['new']:.2f} | {r['old'] / max(r['new'], 1e-9):.2f}x "
                f"| {r['ex_old']}/{r['n']} | {r['ex_new']}/{r['n']} | {r['dr']:.2e} | {r['r_lower']} / {r['r_higher']} | {r['dl']:.2e} | {r['lower_above']} "
                f"| {r['gurobi']} / {r['highs']} |")
        lines.append(line)
        print(line, flush=True)
    head = [f"# Exact l2/l1 on forests: MILP before ({before}) and after, same process, same points", "",
            f"`{command}` on {platform.processor() or platform.machine()}, "
            f"Python {platform.python_version()}; default work budgets (100 nodes per solve, 2 band cuts per target); "
            f"after: solver={solver!r} (before: HiGHS). "
            "Timings are wall-clock on a shared machine: compare the two columns of a row, not rows across runs.", ""]
    return {"rows": rows, "before": before, "markdown": "\n".join(head + lines) + "\n"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 points per cell (default 10)")
    ap.add_argument("--points", type=int, default=None)
    ap.add_argument("--cache", default=None, help="fit cache of the default plan, e.g. the one of a cold run (default: fit here)")
    ap.add_argument("--cells", default=None, help="comma-separated model:dataset:norm (default: all)")
    ap.add_argument("--before", default=BEFORE, help=f"the commit whose milp.py is 'before' (default {BEFORE})")
    ap.add_argument("--out", default=str(RESULTS), help="where to write the markdown table")
    ap.add_argument("--solver", default="auto", choices=["auto", "highs", "gurobi"], help="the MILP backend of the 'after' side")
    args = ap.parse_args(argv)
    points = args.points or (3 if args.quick else 10)
    cells = [tuple(c.split(":")) for c in args.cells.split(",")] if args.cells else CELLS
    res = run(cells, points, args.cache, args.before,
              "python -m benchmarks.forest_milp " + " ".join(argv if argv is not None else sys.argv[1:]), args.solver)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(res["markdown"])


if __name__ == "__main__":
    main()
