"""Run every benchmark and write benchmarks/RESULTS.md: one table of ratios against their targets.

  python -m benchmarks [--quick | --full] [--only rfm metrics attacks plan adapters certify streaming trees forests backends dask]

Sections: RFM fit vs xRFM (benchmarks.rfm), batched metrics vs the per-point loop (benchmarks.metrics),
attacks vs AutoAttack / Foolbox / torchattacks / Veritas (benchmarks.attacks), and the plan's wall
time and scaling (benchmarks.plan_scaling), each wrap() adapter's strongest attack path vs the
black-box HopSkipJump path (benchmarks.adapters), and each certifier's speed and tightness against
the attack radius, with its soundness check (benchmarks.certify), and chunked `rba evaluate` on up to
20,000 test points: points per second, growth exponent and peak memory (benchmarks.streaming), the exact linf tree attack
per point against a direct Veritas search for every tree family (benchmarks.trees_exact), and the exact l2/l1 forest
MILP against its formulation before the reachability restriction (benchmarks.forest_milp), the MILP backends (HiGHS and
Gurobi) on the default plan's tree cells, point by point (benchmarks.milp_backends), and one plan's throughput
through a `dask scheduler` with 1 and 2 `dask worker` processes (benchmarks.dask_cluster). rfm and metrics run in their own
processes (their tables go to a temporary file, not to benchmarks/results/); the others run in this process. The
1-minute load average is sampled every 5 s, since the timings are only meaningful beside it.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import machine_info

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "RESULTS.md"
SECTIONS = ("rfm", "metrics", "attacks", "plan", "adapters", "certify", "streaming", "trees", "forests", "backends", "dask")
TREES_TARGET = 1.5  # exact linf per point, ours / a direct Veritas search
FORESTS_TARGET = 5.0  # exact l2/l1 forest MILP speed-up over the formulation before
CERTIFIED_TARGET = 0.95  # certified share of the forest points

RFM_ARGS = {"quick": ["--sizes", "2000", "--dtypes", "float32", "--repeats", "3"],
            "default": ["--sizes", "2000", "5000", "--dtypes", "float32", "--repeats", "3"],
            "full": ["--sizes", "2000", "5000", "--dtypes", "float64", "float32", "--repeats", "3"]}
METRICS_ARGS = {"quick": ["--n", "2000"], "default": ["--n", "5000"], "full": ["--n", "10000"]}
RFM_ACC_TOL = 0.005  # "equal accuracy": ours at most this far below xRFM's test accuracy
METRICS_TARGET = 30.0


class LoadSampler(threading.Thread):
    """Samples the 1-minute load average every `every` seconds until stopped."""

    def __init__(self, every: float = 5.0):
        super().__init__(daemon=True)
        self.every, self.samples, self._stop_evt = every, [os.getloadavg()[0]], threading.Event()

    def run(self) -> None:
        while not self._stop_evt.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> tuple[float, float]:
        self._stop_evt.set()
        self.samples.append(os.getloadavg()[0])
        return sum(self.samples) / len(self.samples), max(self.samples)


def parse_md_table(text: str) -> list[dict[str, str]]:
    """The first Markdown table in `text` as a list of {header: cell} rows."""
    lines = [ln.strip() for ln in text.splitlines()]
    for i, ln in enumerate(lines):
        if ln.startswith("|") and i + 1 < len(lines) and re.match(r"^\|[\s:|-]+\|$", lines[i + 1]):
            head = [c.strip() for c in ln.strip("|").split("|")]
            rows = []
            for body in lines[i + 2:]:
                if not body.startswith("|"):
                    break
                rows.append(dict(zip(head, (c.strip() for c in body.strip("|").split("|")), strict=False)))  # a ragged row keeps its first cells
            return rows
    return []


def num(cell: str) -> float:
    """A number from a table cell such as '27×', '0.39x' or '1.23'."""
    m = re.search(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", cell)
    return float(m.group()) if m else float("nan")


def run_module_process(code: str, args: list[str], timeout: float = 1800) -> str:
    """Run python -c `code` with args from the repository root; returns stdout (raises with stderr on failure)."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True, env=env, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {proc.stderr.strip()[-800:]}")
    return proc.stdout


def bench_rfm(mode: str, tmp: Path) -> dict[str, Any]:
    out = tmp / "rfm.md"
    run_module_process("import sys, benchmarks.rfm as b; b.main(sys.argv[1:])", RFM_ARGS[mode] + ["--out", str(out)])
    text = out.read_text(encoding="utf-8")
    return {"markdown": text, "rows": parse_md_table(text)}


def bench_metrics(mode: str, tmp: Path) -> dict[str, Any]:
    out = tmp / "metrics.md"
    code = ("import sys, pathlib, benchmarks.metrics as b; b.RESULTS = pathlib.Path(sys.argv[1]); "
            "sys.argv = ['benchmarks.metrics'] + sys.argv[2:]; b.main()")
    run_module_process(code, [str(out), *METRICS_ARGS[mode]])
    text = out.read_text(encoding="utf-8")
    return {"markdown": text, "rows": parse_md_table(text)}


def bench_attacks(mode: str, tmp: Path) -> dict[str, Any]:
    from benchmarks import attacks

    return attacks.run(quick=mode == "quick", repeats=3)


def bench_plan(mode: str, tmp: Path) -> dict[str, Any]:
    from benchmarks import plan_scaling

    return plan_scaling.run(quick=mode == "quick", full=mode == "full", workers=2,
                            deadline=None if mode == "full" else plan_scaling.COLD_TARGET)


def bench_adapters(mode: str, tmp: Path) -> dict[str, Any]:
    from benchmarks import adapters

    return adapters.run(quick=mode == "quick")


def bench_certify(mode: str, tmp: Path) -> dict[str, Any]:
    from benchmarks import certify

    return certify.run(quick=mode == "quick")


def bench_streaming(mode: str, tmp: Path) -> dict[str, Any]:
    from benchmarks import streaming

    sizes = (500, 1000, 2000) if mode == "quick" else (1000, 5000, 20_000)
    return streaming.run(sizes, ("linf", "l2"), tuple(streaming.MODELS), (500,) if mode == "quick" else (1000,),
                         plan_sizes=(sizes[0], sizes[-1]) if mode == "full" else ())


def bench_trees(mode: str, tmp: Path) -> dict[str, Any]:
    from benchmarks import trees_exact

    return trees_exact.run(quick=mode == "quick", repeats=3, points=None if mode != "full" else 40)


def bench_forests(mode: str, tmp: Path) -> dict[str, Any]:
    from benchmarks import forest_milp

    if mode == "quick":
        cells = [("rf", "breast_cancer", "l2"), ("rf", "digits", "l1")]
        return forest_milp.run(cells, 2, None, command="python -m benchmarks --quick")
    return forest_milp.run(None, 10 if mode == "full" else 3, None, command=f"python -m benchmarks{' --full' if mode == 'full' else ''}")


def bench_backends(mode: str, tmp: Path) -> dict[str, Any]:
    from benchmarks import milp_backends

    if mode == "quick":
        return milp_backends.run(("rf",), ("breast_cancer", "wine"), 10, str(tmp / "fits"), command="python -m benchmarks --quick")
    if mode == "default":
        return milp_backends.run(("rf",), points=20, cache=str(tmp / "fits"), command="python -m benchmarks")
    return milp_backends.run(cache=str(tmp / "fits"), command="python -m benchmarks --full")


def bench_dask(mode: str, tmp: Path) -> dict[str, Any]:
    from benchmarks import dask_cluster

    return dask_cluster.measure(quick=mode == "quick")


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("pass" if ok else "**miss**")


def summary_rows(res: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(what, measured, target, verdict) for every comparison that ran."""
    rows: list[tuple[str, str, str, str]] = []
    r = res.get("rfm")
    if isinstance(r, dict):
        for row in r["rows"]:
            ratio, acc, acc_x = num(row["ratio RFM/xRFM"]), num(row["acc RFM"]), num(row["acc xRFM"])
            ratio_am = num(row["ratio RFAM/xRFM"])
            rows.append((f"RFM fit time / xRFM (n={row['n']}, {row['dtype']})",
                         f"{ratio:.2f}x (RFAM {ratio_am:.2f}x); acc {acc:.4f} vs xRFM {acc_x:.4f}",
                         f"<= 1.0x at equal accuracy (within {RFM_ACC_TOL})", verdict(ratio <= 1.0 and acc >= acc_x - RFM_ACC_TOL)))
    m = res.get("metrics")
    if isinstance(m, dict):
        for row in m["rows"]:
            w, c = num(row["speed-up wall"]), num(row["speed-up CPU"])
            rows.append((f"batched metrics speed-up over the loop: {row['model']}", f"{w:.0f}x wall ({c:.0f}x CPU), n={m.get('n', '?')}",
                         f">= {METRICS_TARGET:.0f}x", verdict(w >= METRICS_TARGET)))
    a = res.get("attacks")
    if isinstance(a, dict):
        from benchmarks.attacks import EXACT_TOL, RADIUS_TOL

        for row in a["robust_accuracy"]:
            rows.append((f"ensemble robust accuracy vs AutoAttack: {row['task']}, linf eps {row['eps']:g}",
                         f"{row['ours']:.3f} vs {row['aa']:.3f}; time ours / AA {row['t_ours'] / row['t_aa']:.1f}x",
                         "ours <= AutoAttack", verdict(row["ours"] <= row["aa"])))
        for row in a["radius"]:
            rows.append((f"median minimal radius / best anchor: {row['task']}, {row['norm']}",
                         f"{row['ratio']:.4f}x (best: {row['best_anchor']}); time ours / that anchor {row['ours_time'] / row['best_time']:.0f}x",
                         f"<= {RADIUS_TOL}x", verdict(row["ratio"] <= RADIUS_TOL)))
        e = a["exact"]
        worst = max(e["max_diff_milp"], e["max_diff_veritas"])
        rows.append((f"exact linf optimum vs Veritas ({e['n_trees']} trees, {e['n']} points)",
                     f"max abs diff: milp {e['max_diff_milp']:.1e}, veritas {e['max_diff_veritas']:.1e}; "
                     f"time / Veritas': milp {e['t_milp'] / e['t_direct']:.1f}x, veritas {e['t_veritas'] / e['t_direct']:.1f}x",
                     f"identical to {EXACT_TOL:g}", verdict(worst <= EXACT_TOL and e["below_veritas_lower"] == 0)))
    p = res.get("plan")
    if isinstance(p, dict):
        from benchmarks.plan_scaling import COLD_TARGET, WARM_TARGET

        d = p.get("default")
        if d:
            quick_note = " (`--quick` plan, not the default plan)" if p.get("quick") else ""
            cold = f"{d['cold']:.0f} s" if d["cold_finished"] else f"> {d['cold']:.0f} s (stopped; extrapolated {d['cold_extrapolated']:.0f} s)"
            rows.append((f"default plan cold, --workers 2{quick_note}", cold, f"<= {COLD_TARGET:.0f} s",
                         verdict(d["cold_finished"] and d["cold"] <= COLD_TARGET) if not p.get("quick") else "—"))
            warm_ok = d["warm"] is not None and d["warm"] <= WARM_TARGET
            rows.append((f"default plan warm, --workers 2{quick_note}", f"{d['warm']:.1f} s" if d["warm"] is not None else "not measured",
                         f"<= {WARM_TARGET:.0f} s", verdict(warm_ok) if d["warm"] is not None else "—"))
        s = p["scaling"]
        ns = ", ".join(str(r["n"]) for r in s["rows"])
        rows.append((f"plan time ~ n^k, n = {ns} points per dataset",
                     f"k = {s['k_wall']:.2f} (wall), {s['k_eval']:.2f} (summed evaluation); "
                     f"per run {s['fixed']:.1f} s fixed + {1000 * s['per_point']:.0f} ms/point",
                     "reported (1 = linear)", "—"))
    ad = res.get("adapters")
    if isinstance(ad, dict):
        from benchmarks.adapters import summary_rows as adapter_rows

        rows += [(what, measured, target, verdict(ok)) for what, measured, target, ok in adapter_rows(ad)]
    ce = res.get("certify")
    if isinstance(ce, dict):
        from benchmarks.certify import summary_rows as certify_rows

        rows += [(what, measured, target, verdict(ok)) for what, measured, target, ok in certify_rows(ce)]
    sm = res.get("streaming")
    if isinstance(sm, dict):
        from benchmarks.plan_scaling import fit_exponent

        for key in sorted({(r["model"], r["threat"]) for r in sm["rows"]}):
            sub = [r for r in sm["rows"] if (r["model"], r["threat"]) == key]
            pps = sub[-1]["points"] / max(sub[-1]["eval_seconds"], 1e-9)
            k = f"k = {fit_exponent([r['n'] for r in sub], [r['eval_seconds'] for r in sub]):.2f}, " if len(sub) > 1 else ""
            rows.append((f"chunked evaluate, {key[0]} {key[1]}, up to {sub[-1]['n']:,} points",
                         f"{k}{pps:.1f} points/s, peak {sub[-1]['rss_mb']:.0f} MB", "reported (k: 1 = linear)", "—"))
    tr = res.get("trees")
    if isinstance(tr, dict):
        for row in tr["rows"]:
            rows.append((f"exact linf per point / direct Veritas: {row['model']} ({row['dtype']} thresholds, {row['attack']})",
                         f"{row['ratio']:.2f}x ({row['ms_ours']:.1f} vs {row['ms_direct']:.1f} ms); radii agree: {'yes' if row['agree'] else 'NO'}",
                         f"<= {TREES_TARGET}x, same radii", verdict(row["ratio"] <= TREES_TARGET and row["agree"])))
    fo = res.get("forests")
    if isinstance(fo, dict):
        for row in fo["rows"]:
            sp = row["old"] / max(row["new"], 1e-9)
            rows.append((f"exact {row['norm']} forest MILP speed-up over {fo['before']}: {row['model']} on {row['dataset']}",
                         f"{sp:.2f}x ({row['old']:.2f} -> {row['new']:.2f} s/pt); exact {row['ex_old']}/{row['n']} -> {row['ex_new']}/{row['n']}; "
                         f"MILP calls Gurobi / HiGHS {row.get('gurobi', 0)} / {row.get('highs', 0)}",
                         f">= {FORESTS_TARGET:.0f}x at equal certified results", verdict(sp >= FORESTS_TARGET and row["ex_new"] >= row["ex_old"])))
        n = sum(r["n"] for r in fo["rows"] if r["model"] == "rf")
        ex = sum(r["ex_new"] for r in fo["rows"] if r["model"] == "rf")
        if n:
            rows.append(("certified share of the registry rf points above (default work budgets)", f"{ex}/{n} = {ex / n:.0%}",
                         f">= {CERTIFIED_TARGET:.0%}", verdict(ex / n >= CERTIFIED_TARGET)))
    bk = res.get("backends")
    if isinstance(bk, dict):
        br = bk["rows"]
        n = sum(r["n"] for r in br)
        same = sum(r["same"] for r in br)
        ea, eb = sum(r["exact_a"] for r in br), sum(r["exact_b"] for r in br)
        above = sum(r["bound_above"] for r in br)
        for m, (a, b) in bk["totals"].items():
            rows.append((f"default-plan {m} cells, whole jobs, HiGHS / auto" + (f" (Gurobi unusable: {bk['gurobi']})" if bk["gurobi"] else ""),
                         f"{a / max(b, 1e-9):.2f}x ({a:.0f} -> {b:.0f} s)", "faster, equal certified results", "—"))
        rows.append(("default-plan tree rows, HiGHS vs auto: identical / certified / bounds above the other's radius",
                     f"{same}/{n} identical; exact {ea} -> {eb}; {above} above", "0 above, exact not lower", verdict(above == 0 and eb >= ea)))
    dk = res.get("dask")
    if isinstance(dk, dict):
        by = {(r["kind"], r["workers"]): r for r in dk["rows"]}
        one, two = by.get(("dask scheduler", 1)), by.get(("dask scheduler", 2))
        if one and two:
            same = all(r["same_rows"] for r in dk["rows"])
            rows.append((f"Dask throughput, 2 worker processes / 1 ({dk['jobs']} cells)",
                         f"{one['wall'] / two['wall']:.2f}x ({one['cells_per_min']:.1f} -> {two['cells_per_min']:.1f} cells/min); "
                         f"rows identical to the local run: {'yes' if same else 'NO'}", "reported (at most 2x on 2 cores), same rows",
                         verdict(same)))
    for name in SECTIONS:
        if isinstance(res.get(name), str):
            rows.append((f"{name} benchmark", "failed: " + res[name].splitlines()[-1][:200], "", "**error**"))
    return rows


def render(res: dict[str, Any], mode: str, info: dict[str, Any], loads: dict[str, tuple[float, float]], seconds: dict[str, float],
           total: float) -> str:
    cores = info["cores"] or 1
    peak = max((mx for _, mx in loads.values()), default=info["loadavg"][0])
    L = ["# Benchmark results", "",
         f"Generated by `python -m benchmarks{'' if mode == 'default' else ' --' + mode}` in {total / 60:.1f} min. "
         "Every comparison ran both sides in the same run on the same data; the table gives ratios, the sections below the raw numbers.", "",
         f"Machine: {info['cpu']}, {cores} cores, Python {info['python']}, torch {info['torch']}, numpy {info['numpy']}, {info['platform']}; "
         f"exact tree MILP on {info.get('milp', 'HiGHS')}.", ""]
    if peak > cores:
        L += [f"**The machine was shared with other work during this run**: the 1-minute load average peaked at {peak:.1f} on {cores} cores "
              "(see the per-section loads below), so absolute times are inflated and noisy; ratios of interleaved repeats are the "
              "steadier figures.", ""]
    L += ["| comparison | measured | target | verdict |", "|---|---|---|---|"]
    L += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in summary_rows(res)]
    L += ["", "| section | wall (min) | mean 1-min load | peak 1-min load |", "|---|---:|---:|---:|"]
    for name in SECTIONS:
        if name in loads:
            L.append(f"| {name} | {seconds[name] / 60:.1f} | {loads[name][0]:.1f} | {loads[name][1]:.1f} |")
    L += ["", "Timing protocol: every compared time is a median of 3 repeats (RFM fits interleaved across methods; attack anchors of "
          "(b) and the three exact methods of (c) interleaved; our ensemble and AutoAttack in (a) repeated back to back), except the "
          "per-point metrics loop (one run, as benchmarks/metrics.py does) and the plan runs (cold, warm and each scaling point once; "
          "they take minutes). Our ensemble's times cover the whole minimal-radius run (every attack of the threat model, listed in "
          "the Attacks section), so it is slower than any single anchor by design.", ""]
    titles = {"rfm": "RFM fit vs xRFM (benchmarks/rfm.py)", "metrics": "Batched metrics vs the per-point loop (benchmarks/metrics.py)"}
    for name in SECTIONS:
        r = res.get(name)
        if isinstance(r, dict):
            text = r["markdown"]
            if name in titles:  # demote their top-level heading under ours
                text = re.sub(r"^# .*\n", f"## {titles[name]}\n", text, count=1)
            L += [text.rstrip(), ""]
        elif isinstance(r, str):
            L += [f"## {name}", "", "Failed:", "", "```", r.strip()[-2000:], "```", ""]
    return "\n".join(L)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="smaller sizes everywhere (well under 10 minutes)")
    g.add_argument("--full", action="store_true", help="larger sizes, no deadline on the default plan, scaling at n = 100, 200, 400")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    mode = "quick" if args.quick else "full" if args.full else "default"
    import torch

    torch.set_num_threads(1)
    info = machine_info()
    runners: dict[str, Callable[[str, Path], dict[str, Any]]] = {
        "rfm": bench_rfm, "metrics": bench_metrics, "attacks": bench_attacks, "plan": bench_plan, "adapters": bench_adapters,
        "certify": bench_certify, "streaming": bench_streaming, "trees": bench_trees, "forests": bench_forests,
        "backends": bench_backends, "dask": bench_dask}
    res: dict[str, Any] = {}
    loads: dict[str, tuple[float, float]] = {}
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rba-benchmarks-") as tmp:
        for name in SECTIONS:
            if name not in args.only:
                continue
            print(f"## {name} ...", flush=True)
            sampler = LoadSampler()
            sampler.start()
            ts = time.perf_counter()
            try:
                res[name] = runners[name](mode, Path(tmp))
                if name == "metrics":
                    res[name]["n"] = METRICS_ARGS[mode][1]
            except Exception:  # noqa: BLE001 - one failed benchmark must not lose the others
                res[name] = traceback.format_exc()
                print(res[name], file=sys.stderr, flush=True)
            seconds[name] = time.perf_counter() - ts
            loads[name] = sampler.stop()
            print(f"## {name}: {seconds[name]:.0f} s", flush=True)
    text = render(res, mode, info, loads, seconds, time.perf_counter() - t0)
    args.out.write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
