"""Certification benchmark: each certifier's speed and tightness against the attack radius it brackets.

For the registry's MLP, GrokAlign-MLP, RFM and RFAM on breast_cancer and wine (seed 0, standardised;
fitted like the runner does, `robustbench_align.models.persistence.fit_cached(spec, dataset, 0)`),
plus a small ReLU MLP (the registry MLP with hidden=[32, 32]: 10 -> 32 -> 32 -> 2) on
`synthetic:easy` (sklearn make_classification, 10 features), which is small enough for the
complete MILP: on the first `n_points` clean-correct test points (20; --quick: 8), norms linf and l2:

1. attack: `minimal_radius(model, X, y, norm, certify=False)` once, timed; its per-point distance is
   the attack radius (an upper bound on the true minimal radius);
2. every applicable certifier (MLPs: ibp, crown, alpha-crown, plus milp for linf on the small MLP;
   RFM / RFAM: kernel), default budgets, called directly as `cert.certify(model, X, y, norm,
   upper=attack_radius)`, timed;
3. per (model, dataset, norm, certifier): points per second, median and max of certified lower
   bound / attack radius, share of points with a positive bound, share with `Certificate.exact`,
   and certifier time / attack time (both measured in this run on the same points);
4. end to end, `minimal_radius(..., certify="auto")` (what a user gets: attack, then the strongest
   certifier `choose` picks): its `exact` share and median / min of lower / upper, and how many
   upper bounds a certifier's witness tightened. With --quick the attack is not run a second time:
   `certify_result(model, X, y, copy of the attack result, "auto")` is the second half of
   `minimal_radius` and is what is timed.

Soundness is checked on every run: a certified lower bound above the attack radius (or above the
distance of a certifier's own witness that the model's predict verifies) by more than 1e-9
relative is a violation; each is printed and counted in the tables, and `main` exits with status 1
when there is any. Every time is one run (no repeats), so under load the ratios are noisy.
torch runs on 1 thread (set in `main`; `python -m benchmarks` sets it too) and BLAS / OpenMP pools
are limited to 1 thread (threadpoolctl) around the whole run.

Run from the repository root:  python -m benchmarks.certify [--quick] [--points N] [--datasets ...]
[--norms linf l2]; the table goes to stdout and to benchmarks/results/certify.md.
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import machine_info

log = logging.getLogger(__name__)

RESULTS = Path(__file__).resolve().parent / "results" / "certify.md"
DATASETS = ("breast_cancer", "wine")
MODELS = ("mlp", "mlp-grokalign", "rfm", "rfam")
SMALL = ("mlp-32x32", "mlp", "synthetic:easy", {"hidden": [32, 32]})  # (label, registry spec, dataset, overrides)
MLP_CERTS = ("ibp", "crown", "alpha-crown")
SOUND_RTOL = 1e-9


def certifiers_for(spec: str, norm: str, small: bool) -> list[str]:
    """The certifiers benchmarked on a model of registry spec `spec` under `norm`."""
    if spec in ("rfm", "rfam"):
        return ["kernel"]
    names = list(MLP_CERTS)
    if small and norm == "linf":
        names.append("milp")
    return names


def _ratio(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """lower / upper over the points whose upper bound is finite and > 0."""
    ok = np.isfinite(upper) & (upper > 0)
    out: np.ndarray = lower[ok] / upper[ok]
    return out


def _stat(v: np.ndarray, fn: Any) -> float:
    return float(fn(v)) if v.size else float("nan")


def _clean_points(model: Any, ds: Any, n_points: int) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(ds.X_test, dtype=np.float64)
    y = np.asarray(ds.y_test).astype(np.int64)
    cc = np.asarray(model.predict(X)) == y
    return X[cc][:n_points], y[cc][:n_points]


def run_certifier(name: str, model: Any, X: np.ndarray, y: np.ndarray, norm: str, upper: np.ndarray, t_attack: float,
                  label: str) -> dict[str, Any]:
    """One direct `certify` call, timed, with its soundness check against the attack radius and its own witnesses."""
    from robustbench_align.attacks.base import verify
    from robustbench_align.certify.api import build_certifier

    cert = build_certifier(name)
    why = cert.refuses(model)
    if why is not None:
        raise RuntimeError(f"{name} refuses the model: {why}")
    t0 = time.perf_counter()
    c = cert.certify(model, X, y, norm, upper.copy())
    t = time.perf_counter() - t0
    lower = np.asarray(c.lower, dtype=np.float64)
    best = upper.copy()
    n_wit = n_better = 0
    if np.asarray(c.witness).any():
        w = np.flatnonzero(c.witness)
        ok, d = verify(model, X[w], y[w], np.asarray(c.x_witness, dtype=np.float64)[w], norm, None)
        n_wit = int(ok.sum())
        n_better = int(np.sum(ok & (d < upper[w] * (1 - SOUND_RTOL))))
        best[w] = np.minimum(best[w], np.where(ok, d, np.inf))
    bad = np.isfinite(best) & (lower > best * (1 + SOUND_RTOL))
    for i in np.flatnonzero(bad):
        print(f"# SOUNDNESS VIOLATION: {label} {norm} {name} point {i}: lower {lower[i]:.17g} > "
              f"attack/witness radius {best[i]:.17g} (attack {upper[i]:.17g})", flush=True)
    r = _ratio(lower, upper)
    return {
        "certifier": name, "n": len(y), "t_cert": t, "t_attack": t_attack,
        "pps": len(y) / t if t > 0 else float("inf"), "ratio_median": _stat(r, np.median), "ratio_max": _stat(r, np.max),
        "ratio_min": _stat(r, np.min), "positive": float(np.mean(lower > 0)), "exact": float(np.mean(np.asarray(c.exact, dtype=bool))),
        "witnesses": n_wit, "witness_better": n_better, "violations": int(bad.sum()),
        "work_median": float(np.median(np.asarray(c.work))) if len(y) else float("nan"), "flags": dict(c.flags),
    }


def run_end_to_end(model: Any, X: np.ndarray, y: np.ndarray, norm: str, attack_res: Any, upper: np.ndarray, t_attack: float,
                   effort: str, reuse: bool, label: str) -> dict[str, Any]:
    """`minimal_radius(..., certify="auto")` (or, reuse=True, its certification half on a copy of the attack result)."""
    import robustbench_align as rba
    from robustbench_align.certify.api import certify_result, choose

    chosen, why = choose(model, norm, "auto")
    t0 = time.perf_counter()
    if reuse:
        res = certify_result(model, X, y, copy.deepcopy(attack_res), "auto")
    else:
        res = rba.minimal_radius(model, X, y, norm, certify="auto", effort=effort)
    t = time.perf_counter() - t0
    dist = np.asarray(res.distance, dtype=np.float64)
    lower = np.zeros(len(y)) if res.lower_bound is None else np.asarray(res.lower_bound, dtype=np.float64)
    labels = np.asarray(res.certifier if res.certifier is not None else np.full(len(y), ""), dtype=object)
    dropped = np.array(["contradicted by a verified adversarial" in str(v) for v in labels], dtype=bool)
    over = np.isfinite(dist) & (lower > dist * (1 + SOUND_RTOL))
    viol = int((dropped | over).sum())
    for i in np.flatnonzero(dropped | over):
        print(f"# SOUNDNESS VIOLATION (end to end): {label} {norm} point {i}: {labels[i]}; lower {lower[i]:.17g}, "
              f"upper {dist[i]:.17g}", flush=True)
    r = _ratio(lower, dist)
    counts: dict[str, int] = {}
    for v in labels:
        counts[str(v) or "(none)"] = counts.get(str(v) or "(none)", 0) + 1
    return {
        "n": len(y), "mode": "certify_result" if reuse else "minimal_radius", "t": t, "t_attack": t_attack,
        "chosen": [c.name for c in chosen] or [why], "labels": counts,
        "exact": float(np.mean(np.asarray(res.exact, dtype=bool))) if res.exact is not None else float("nan"),
        "ratio_median": _stat(r, np.median), "ratio_min": _stat(r, np.min),
        "tightened": int(np.sum(np.isfinite(upper) & (dist < upper * (1 - SOUND_RTOL)))),
        "loosened": int(np.sum(dist > upper * (1 + SOUND_RTOL))),  # the attack half is deterministic: expect 0
        "violations": viol, "flags": sorted((res.flags or {}).keys()),
    }


def run_model(label: str, spec: str, ds_name: str, overrides: dict[str, Any], norms: list[str], n_points: int, effort: str,
              reuse: bool, small: bool, out: dict[str, Any]) -> None:
    """Fit one model and benchmark every applicable certifier on it under each norm (rows appended to `out`)."""
    import robustbench_align as rba
    from robustbench_align.models.persistence import fit_cached

    ds = rba.load_dataset(ds_name, seed=0)
    model, _, t_fit = fit_cached(spec, ds, 0, **overrides)
    X, y = _clean_points(model, ds, n_points)
    print(f"# {label} on {ds_name}: fit {t_fit:.1f} s, {len(y)} clean-correct test points", flush=True)
    for norm in norms:
        key = {"model": label, "dataset": ds_name, "norm": norm}
        t0 = time.perf_counter()
        res = rba.minimal_radius(model, X, y, norm, certify=False, effort=effort)
        t_attack = time.perf_counter() - t0
        upper = np.asarray(res.distance, dtype=np.float64).copy()
        found = int(np.isfinite(upper).sum())
        out["attacks"].append({**key, "n": len(y), "t_attack": t_attack, "found": found,
                               "median": _stat(upper[np.isfinite(upper)], np.median)})
        print(f"#   {norm}: attack {t_attack:.2f} s, {found}/{len(y)} found, median radius "
              f"{out['attacks'][-1]['median']:.4g}", flush=True)
        for name in certifiers_for(spec, norm, small):
            try:
                row = run_certifier(name, model, X, y, norm, upper, t_attack, label)
            except Exception as e:  # one failing certifier must not lose the others
                log.exception("certifier %s on %s/%s/%s failed", name, label, ds_name, norm)
                out["errors"].append({**key, "what": name, "error": f"{type(e).__name__}: {e}"})
                print(f"#     {name}: FAILED {type(e).__name__}: {e}", flush=True)
                continue
            out["rows"].append({**key, **row})
            print(f"#     {name}: {row['t_cert']:.2f} s ({row['pps']:.1f} pts/s, {row['t_cert'] / t_attack:.3f}x attack), lower/attack "
                  f"median {row['ratio_median']:.4f} max {row['ratio_max']:.6f}, positive {row['positive']:.2f}, exact {row['exact']:.2f}, "
                  f"violations {row['violations']}{', flags ' + ', '.join(row['flags']) if row['flags'] else ''}", flush=True)
        try:
            e2e = run_end_to_end(model, X, y, norm, res, upper, t_attack, effort, reuse, label)
        except Exception as e:
            log.exception("end-to-end certify='auto' on %s/%s/%s failed", label, ds_name, norm)
            out["errors"].append({**key, "what": "auto", "error": f"{type(e).__name__}: {e}"})
            print(f"#     auto: FAILED {type(e).__name__}: {e}", flush=True)
            continue
        out["e2e"].append({**key, **e2e})
        print(f"#     auto ({e2e['mode']}): {e2e['t']:.2f} s, chosen {'+'.join(e2e['chosen'])}, exact {e2e['exact']:.2f}, lower/upper "
              f"median {e2e['ratio_median']:.4f} min {e2e['ratio_min']:.4f}, tightened {e2e['tightened']}, violations {e2e['violations']}",
              flush=True)


def run(quick: bool = False, n_points: int | None = None, datasets: list[str] | None = None, norms: list[str] | None = None,
        models: list[str] | None = None, small: bool = True) -> dict[str, Any]:
    """Every case; returns {"rows", "e2e", "attacks", "errors", "markdown", ...}."""
    from threadpoolctl import threadpool_limits

    logging.getLogger("robustbench_align").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    norms = list(norms or ["linf", "l2"])
    datasets = list(datasets or DATASETS)
    models = list(models or MODELS)
    if n_points is None:
        n_points = 8 if quick else 20
    effort = "fast" if quick else "default"
    out: dict[str, Any] = {"rows": [], "e2e": [], "attacks": [], "errors": [], "quick": quick, "n_points": n_points,
                           "effort": effort, "reuse": quick, "small": small, "norms": norms, "datasets": datasets, "info": machine_info()}
    t_all = time.perf_counter()
    cases = [(m, m, d, {}, False) for d in datasets for m in models]
    if small:
        cases.append((*SMALL, True))
    with threadpool_limits(1):
        for label, spec, ds_name, overrides, is_small in cases:
            try:
                run_model(label, spec, ds_name, overrides, norms, n_points, effort, quick, is_small, out)
            except Exception as e:  # one failing model must not lose the others
                log.exception("case %s on %s failed", label, ds_name)
                out["errors"].append({"model": label, "dataset": ds_name, "norm": "—", "what": "fit/attack",
                                      "error": f"{type(e).__name__}: {e}"})
                print(f"# {label} on {ds_name}: FAILED {type(e).__name__}: {e}", flush=True)
    out["seconds"] = time.perf_counter() - t_all
    out["load_end"] = machine_info()["loadavg"]
    out["violations"] = sum(r["violations"] for r in out["rows"]) + sum(r["violations"] for r in out["e2e"])
    out["markdown"] = markdown(out)
    return out


def _f(x: float, fmt: str = ".3f") -> str:
    return "—" if not np.isfinite(x) else format(x, fmt)


def markdown(res: dict[str, Any]) -> str:
    """The certification section (of RESULTS.md, and the body of results/certify.md)."""
    info = res["info"]
    e2e_how = ("`certify_result(model, X, y, copy of the attack result, \"auto\")` (the second half of `minimal_radius`; "
               "--quick does not run the attack twice)" if res["reuse"] else
               "`minimal_radius(model, X, y, norm, certify=\"auto\")`, attack included")
    small = (f", plus {SMALL[0]} = registry `mlp` with hidden=[32, 32] on {SMALL[2]} (make_classification, 10 features) for the "
             "complete MILP") if res.get("small", True) else ""
    L = ["## Certification: certifiers vs the attack radius (benchmarks/certify.py)", "",
         f"{', '.join(res['datasets'])} (seed 0, standardised), registry models fitted by `fit_cached(spec, dataset, 0)`{small}; "
         f"the first {res['n_points']} clean-correct test points; attack effort \"{res['effort']}\". Attack radius = "
         "`minimal_radius(..., certify=False)` per point (upper bound). Each certifier is called directly, "
         "`cert.certify(model, X, y, norm, upper=attack radius)`, default budgets. lower/attack = certified lower bound / attack "
         "radius per point (1 = bracket closed; a certifier's bisection quantises it). positive = share of points with lower > 0; "
         "exact = share with `Certificate.exact`; time cert/attack = the certifier's wall time over the attack's, same points, "
         f"same run, one run each. violations = points with lower > attack radius (or > a verified witness of the certifier) "
         f"by more than {SOUND_RTOL:g} relative. 1 thread (torch and BLAS).", "",
         "| model | dataset | norm | certifier | points | attack (s) | certifier (s) | pts/s | time cert/attack | lower/attack median "
         "| lower/attack max | positive | exact | violations |",
         "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in res["rows"]:
        wit = f" (witnesses {r['witnesses']}, {r['witness_better']} beat the attack)" if r["witnesses"] else ""
        flags = f" flags: {', '.join(r['flags'])}" if r["flags"] else ""
        L.append(f"| {r['model']} | {r['dataset']} | {r['norm']} | {r['certifier']}{wit}{flags} | {r['n']} | {r['t_attack']:.2f} | "
                 f"{r['t_cert']:.2f} | {_f(r['pps'], '.1f')} | {_f(r['t_cert'] / r['t_attack'])} | {_f(r['ratio_median'], '.5f')} | "
                 f"{_f(r['ratio_max'], '.6f')} | {r['positive']:.2f} | {r['exact']:.2f} | {r['violations']} |")
    L += ["", f"End to end: {e2e_how}. chosen = the certifiers `choose(model, norm, \"auto\")` runs (strongest last); lower/upper "
          "over the result's lower_bound and distance; exact = share of `RadiusResult.exact` (bracket closed within the "
          "package's CERT_RTOL = 1e-4 relative, looser than `Certificate.exact`); tightened = points whose upper bound a "
          "certifier's verified witness lowered below the attack radius; loosened = points whose upper bound came out above "
          "the certify=False run's (the attack half is seeded, so 0 unless it is not deterministic).", "",
          "| model | dataset | norm | points | chosen | time (s) | time / attack | exact | lower/upper median | lower/upper min "
          "| tightened / loosened | violations | flags |",
          "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in res["e2e"]:
        L.append(f"| {r['model']} | {r['dataset']} | {r['norm']} | {r['n']} | {' + '.join(r['chosen'])} | {r['t']:.2f} | "
                 f"{_f(r['t'] / r['t_attack'])} | {_f(r['exact'], '.2f')} | {_f(r['ratio_median'], '.5f')} | {_f(r['ratio_min'], '.5f')} | "
                 f"{r['tightened']} / {r['loosened']} | {r['violations']} | {', '.join(r['flags']) or '—'} |")
    for e in res["errors"]:
        L.append(f"| {e['model']} | {e['dataset']} | {e['norm']} | — | {e['what']} failed: {e['error'][:150]} | | | | | | | | |")
    n_cert = sum(r["n"] for r in res["rows"])
    L += ["", f"Soundness: {res['violations']} violation(s) over {len(res['rows'])} certifier runs ({n_cert} point certificates) "
          f"and {len(res['e2e'])} end-to-end runs; {len(res['errors'])} error(s).",
          f"Total {res['seconds']:.0f} s; 1-min load {info['loadavg'][0]:.1f} at start, {res['load_end'][0]:.1f} at end, "
          f"{info['cores']} cores."]
    return "\n".join(L) + "\n"


def summary_rows(res: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(what, measured, target, ok) rows for benchmarks/__main__.py's RESULTS table."""
    rows: list[tuple[str, str, str, bool | None]] = []
    n_cert = sum(r["n"] for r in res["rows"])
    rows.append((f"certificates never above the attack radius ({len(res['rows'])} certifier runs, {len(res['e2e'])} end to end)",
                 f"{res['violations']} violation(s) over {n_cert} point certificates", "0", res["violations"] == 0 and not res["errors"]))
    for r in res["e2e"]:
        best = [c for c in res["rows"] if (c["model"], c["dataset"], c["norm"]) == (r["model"], r["dataset"], r["norm"])]
        top = max(best, key=lambda c: c["ratio_median"] if np.isfinite(c["ratio_median"]) else -1.0, default=None)
        extra = (f"; tightest alone {top['certifier']} {_f(top['ratio_median'], '.3f')} at {_f(top['t_cert'] / top['t_attack'], '.2f')}x "
                 "the attack time") if top else ""
        rows.append((f"certify=\"auto\" ({' + '.join(r['chosen'])}): {r['model']}, {r['dataset']}, {r['norm']}",
                     f"median lower/upper {_f(r['ratio_median'], '.3f')}, exact {_f(r['exact'], '.2f')}{extra}", "reported", None))
    for e in res["errors"]:
        rows.append((f"certify {e['what']}: {e['model']}, {e['dataset']}, {e['norm']}", "failed: " + e["error"][:200], "", False))
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 points, attack effort 'fast', end to end on the attack's result")
    ap.add_argument("--points", type=int, default=None, help="clean-correct test points per model (default 20; --quick 8)")
    ap.add_argument("--datasets", nargs="+", default=None, help=f"registry datasets (default {' '.join(DATASETS)})")
    ap.add_argument("--models", nargs="+", choices=MODELS, default=None)
    ap.add_argument("--norms", nargs="+", choices=["linf", "l2"], default=None)
    ap.add_argument("--no-small", action="store_true", help=f"skip the {SMALL[0]} MILP case")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    res = run(quick=args.quick, n_points=args.points, datasets=args.datasets, norms=args.norms, models=args.models,
              small=not args.no_small)
    info = res["info"]
    head = ["# Certification benchmark", "",
            f"Generated by `python -m benchmarks.certify{' --quick' if args.quick else ''}`. Machine: {info['cpu']}, {info['cores']} "
            f"cores (shared), Python {info['python']}, torch {info['torch']}, numpy {info['numpy']}, {info['platform']}.", ""]
    text = "\n".join(head) + "\n" + res["markdown"].replace("## Certification: certifiers", "## Certifiers", 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    if res["violations"]:
        print(f"# {res['violations']} SOUNDNESS VIOLATION(S)", file=sys.stderr)
        raise SystemExit(1)
    return res


if __name__ == "__main__":
    main()
