"""Dask cluster benchmark: throughput of one plan through `dask scheduler` + 1 and 2 `dask worker` processes.

The same plan (fresh store, no model cache, so every cell fits and evaluates) runs four ways:
the local pool with `workers=1` and `workers=2` (for reference), and `run_plan(dask_address=...)`
against a scheduler on 127.0.0.1 with 1 and with 2 worker processes (`--nworkers 1 --nthreads 1`
each), which this script starts in their own process groups and stops afterwards. The workers
are registered and have imported the package before the clock starts; the local pool's timings
include starting its processes. Throughput is cells (jobs) per minute and stored points per
second of wall time; every configuration's rows (all but timing columns) are checked against
the local `workers=1` run. The markdown table is printed and written to benchmarks/results/dask.md.

Run from the repository root:  python -m benchmarks.dask_cluster [--quick]
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import machine_info

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "dask.md"
TIMING = ["fit_time", "eval_time", "created", "fit_cached"]


def bench_plan(quick: bool) -> Any:
    """The benchmark plan: 3 models x 2 datasets x 2 seeds x 10 points (quick) or 4 x 3 x 2 x 20."""
    from robustbench_align.runner.config import Plan

    if quick:
        return Plan(models=["xgb", "gbdt", "mlp"], datasets=["iris", "wine"], threats=["linf"], seeds=[0, 1], points=10,
                    model_params={"mlp": {"hidden": [16], "epochs": 30}}).validate()
    return Plan(models=["xgb", "gbdt", "mlp", "rf"], datasets=["iris", "wine", "breast_cancer"], threats=["linf"], seeds=[0, 1],
                points=20).validate()


def dask_command() -> str:
    """The `dask` console script of this interpreter's environment (the workers must import this package)."""
    script = Path(sys.executable).parent / "dask"
    found = str(script) if script.exists() else shutil.which("dask")
    if not found:
        raise SystemExit("the `dask` command line is not installed in this environment (pip install 'robustbench-align[dask]')")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalDaskCluster:
    """`dask scheduler` and `n` `dask worker` processes on 127.0.0.1, each in its own process group; a context manager."""

    def __init__(self, n_workers: int, root: Path):
        self.n_workers = n_workers
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = _free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []

    def _spawn(self, name: str, args: list[str]) -> None:
        # the repository root on the path: `client.run` sends functions of this module by reference, whichever
        # way the benchmark was started (`python -m benchmarks.dask_cluster` sends them by value, `python -m benchmarks` does not)
        path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
        log = (self.root / f"{name}.log").open("wb")
        self.procs.append(subprocess.Popen([dask_command(), *args], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.root,
                                           start_new_session=True))

    def __enter__(self) -> LocalDaskCluster:
        from distributed import Client

        self._spawn("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard", "--no-show"])
        deadline = time.time() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.time() > deadline or self.procs[0].poll() is not None:
                    self.__exit__()
                    raise RuntimeError("the dask scheduler did not start; see " + str(self.root / "scheduler.log")) from None
                time.sleep(0.2)
        try:  # __exit__ does not run when __enter__ raises: stop the processes here then
            for i in range(self.n_workers):
                self._spawn(f"worker{i}", ["worker", self.address, "--nworkers", "1", "--nthreads", "1", "--no-dashboard",
                                           "--name", f"w{i}", "--local-directory", str(self.root / f"w{i}")])
            with Client(self.address, timeout=30, set_as_default=False) as client:
                client.wait_for_workers(self.n_workers, timeout=120)
                client.run(_warm_up)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait(timeout=30)


def _warm_up() -> None:
    """Import what a job imports, so worker start-up is not timed."""
    import torch  # noqa: F401

    import robustbench_align.runner.job  # noqa: F401
    from robustbench_align.runner.executors import _init_worker

    _init_worker()


def _rows(path: Path) -> Any:
    from robustbench_align.runner.store import Store

    with Store(path, readonly=True) as st:
        runs = st.runs().drop(columns=TIMING).sort_values("run_id").reset_index(drop=True)
        points = st.points().sort_values(["run_id", "idx"]).reset_index(drop=True)
    runs["flags"] = [f.split('"point_time"')[0] for f in runs["flags"].astype(str)]  # per-point seconds are timing
    return runs, points


def _same(a: Path, b: Path) -> bool:
    (r1, p1), (r2, p2) = _rows(a), _rows(b)
    return bool(r1.equals(r2) and p1.equals(p2))


def measure(quick: bool = False) -> dict[str, Any]:
    """Run the plan the four ways in a temporary directory; returns every number plus the markdown."""
    from robustbench_align.runner.api import run_plan
    from robustbench_align.runner.store import Store

    logging.getLogger("robustbench_align").setLevel(logging.ERROR)
    logging.getLogger("distributed").setLevel(logging.ERROR)
    plan = bench_plan(quick)
    info = machine_info()
    out: dict[str, Any] = {"quick": quick, "jobs": len(plan.jobs(None)), "plan": plan, "machine": info, "load_start": info["loadavg"],
                           "rows": []}
    root = Path(tempfile.mkdtemp(prefix="rba-dask-bench-"))
    try:
        configs = [("local", "workers=1 (in-process)", 1, None), ("local pool", "workers=2", 2, None),
                   ("dask scheduler", "1 worker process", 1, "dask"), ("dask scheduler", "2 worker processes", 2, "dask")]
        reference = None
        for kind, label, n, how in configs:
            store = root / f"{how or 'local'}-{n}.sqlite"
            if how == "dask":
                with LocalDaskCluster(n, root / f"cluster-{n}") as cluster:
                    t0 = time.perf_counter()
                    summary = run_plan(plan, store, workers=1, dask_address=cluster.address, progress=False)
                    wall = time.perf_counter() - t0
            else:
                t0 = time.perf_counter()
                summary = run_plan(plan, store, workers=n, progress=False)
                wall = time.perf_counter() - t0
            with Store(store, readonly=True) as st:
                n_points = len(st.points())
            reference = reference or store
            row = {"kind": kind, "label": label, "workers": n, "wall": wall, "jobs": summary["jobs"], "failed": summary["runs_failed"],
                   "points": n_points, "cells_per_min": 60 * summary["jobs"] / wall, "points_per_s": n_points / wall,
                   "same_rows": _same(reference, store)}
            out["rows"].append(row)
            print(f"# {kind} {label}: {wall:.1f} s, {row['cells_per_min']:.1f} cells/min, {row['points_per_s']:.2f} points/s, "
                  f"rows {'identical' if row['same_rows'] else 'DIFFERENT'}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    out["load_end"] = os.getloadavg()
    out["markdown"] = markdown(out)
    return out


def markdown(res: dict[str, Any]) -> str:
    """The Dask section of the results."""
    plan, m = res["plan"], res["machine"]
    base = res["rows"][0]["wall"]
    L = ["# Dask cluster throughput", "",
         f"Plan: models {', '.join(plan.models)} x datasets {', '.join(plan.datasets)} x seeds {', '.join(map(str, plan.seeds))}, "
         f"threat {', '.join(plan.threats)}, {plan.points} points per cell ({res['jobs']} cells, fresh store, no model cache). "
         "Dask: `dask scheduler` and `dask worker --nworkers 1 --nthreads 1` processes on 127.0.0.1, started and warmed up "
         "(package imported) before the clock starts; `workers=1` runs in the driver process, the `workers=2` pool's time "
         "includes starting its processes.", "",
         f"Machine: {m['cpu']}, {m['cores']} cores (1-min load average {res['load_start'][0]:.1f} at start, "
         f"{res['load_end'][0]:.1f} at end); Python {m['python']}, torch {m['torch']}.", "",
         "| executor | workers | wall (s) | cells/min | points/s | speed-up vs workers=1 | failed runs | rows identical to workers=1 |",
         "|---|---|---:|---:|---:|---:|---:|---|"]
    for r in res["rows"]:
        L.append(f"| {r['kind']} | {r['label']} | {r['wall']:.1f} | {r['cells_per_min']:.1f} | {r['points_per_s']:.2f} | "
                 f"{base / r['wall']:.2f}x | {r['failed']} | {'yes' if r['same_rows'] else 'no'} |")
    if res["load_start"][0] >= (m["cores"] or 1):
        L += ["", f"The load average was at or above the {m['cores']} cores when the runs started: other jobs already used "
              "the CPU, so a second process mostly competes with them and these figures show overhead more than scaling."]
    L += ["", f"With {m['cores']} cores a second worker process can give at most about 2x, and less when other jobs take "
          "CPU; per-cell overhead (task transfer, result transfer to the driver, the driver's store write) is part of every "
          "Dask figure."]
    return "\n".join(L) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 12-cell plan (3 models x 2 datasets x 2 seeds, 10 points)")
    ap.add_argument("--no-write", action="store_true", help=f"print the table without writing {RESULTS.name}")
    args = ap.parse_args(argv)
    res = measure(quick=args.quick)
    print(res["markdown"])
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(res["markdown"], encoding="utf-8")
    return res


if __name__ == "__main__":
    main()
