"""Adapter benchmark: each `wrap()` adapter's strongest attack path vs the black-box path it replaced.

For every adapter case (binary breast_cancer, standardised, `load_dataset("breast_cancer", seed=0)`;
small realistic models) on the first `n_points` test points (20 with --quick, else 50):

- conversion time: `wrap(obj)` wall time, median of 3;
- strongest path: `minimal_radius(wrapped, X, y, norm)` (the threat model's default attacks the
  adapter's capabilities allow; `.path` names the kind), its wall time;
- black-box path: `minimal_radius(wrapped, X, y, norm, attacks=["hsj"])` (HopSkipJump, default
  settings: what these models got before the adapters), its wall time;
- per-point radius ratio black-box / strongest over the correctly classified points where both are
  finite (and the strongest radius > 0): median and max (and min: < 1 would mean the strongest path
  lost to the black box on that point);
- whether every strongest-path adversarial flips the ORIGINAL library object's own `predict`
  (labels mapped through the fitted object's classes; ONNX through an onnxruntime session).

Threads are pinned: torch 1 thread, LightGBM n_jobs=1, CatBoost thread_count=1, and
threadpoolctl.threadpool_limits(1) around every fit / wrap / attack (which covers HistGB's OpenMP).
Target: ratio >= 1 on every point (the strongest path never worse than the black box).

linf for every case, l2 for the non-tree ones (the tree attacks are linf-exact; l2 would be MILP only).
Run from the repository root:  python -m benchmarks.adapters [--quick] [--points N] [--norms linf l2] [--cases ...]
"""
from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks import machine_info

log = logging.getLogger(__name__)

N_TREES, DEPTH = 50, 4
TREE_CASES = ("lightgbm", "histgb", "adaboost", "catboost", "onnx-rf")
RATIO_TARGET = 1.0


# ----------------------------------------------------------------------------------------
# the models
# ----------------------------------------------------------------------------------------
def _onnx(est: Any, d: int) -> Any:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    return convert_sklearn(est, initial_types=[("input", FloatTensorType([None, d]))], options={id(est): {"zipmap": False}},
                           target_opset={"": 17, "ai.onnx.ml": 3})


def build_cases(X: np.ndarray, y: np.ndarray, seed: int = 0) -> dict[str, Callable[[], Any]]:
    """name -> a function fitting the library object on (X, y)."""
    from sklearn.ensemble import AdaBoostClassifier, HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC
    from sklearn.tree import DecisionTreeClassifier

    d = X.shape[1]

    def lightgbm() -> Any:
        from lightgbm import LGBMClassifier

        return LGBMClassifier(n_estimators=N_TREES, max_depth=DEPTH, num_leaves=2 ** DEPTH, n_jobs=1, verbose=-1,
                              random_state=seed).fit(X, y)

    def catboost() -> Any:
        from catboost import CatBoostClassifier

        return CatBoostClassifier(iterations=N_TREES, depth=DEPTH, thread_count=1, verbose=0, random_seed=seed,
                                  allow_writing_files=False).fit(X, y)

    def onnx_rf() -> Any:
        rf = RandomForestClassifier(n_estimators=N_TREES, max_depth=DEPTH, n_jobs=1, random_state=seed).fit(X, y)
        return _onnx(rf, d)

    def onnx_logreg() -> Any:
        return _onnx(LogisticRegression(max_iter=2000).fit(X, y), d)

    return {
        "lightgbm": lightgbm,
        "histgb": lambda: HistGradientBoostingClassifier(max_iter=N_TREES, max_depth=DEPTH, early_stopping=False,
                                                         random_state=seed).fit(X, y),
        "adaboost": lambda: AdaBoostClassifier(DecisionTreeClassifier(max_depth=DEPTH), n_estimators=N_TREES,
                                               random_state=seed).fit(X, y),
        "catboost": catboost,
        "logreg": lambda: LogisticRegression(max_iter=2000).fit(X, y),
        "mlp": lambda: MLPClassifier(hidden_layer_sizes=(32,), max_iter=1000, random_state=seed).fit(X, y),
        "svc-rbf": lambda: SVC(kernel="rbf").fit(X, y),
        "pipeline": lambda: Pipeline([("scale", StandardScaler()), ("clf", LogisticRegression(max_iter=2000))]).fit(X, y),
        "onnx-logreg": onnx_logreg,
        "onnx-rf": onnx_rf,
    }


def native_predict(obj: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The original object's own predict, as class indices 0..K-1 (ONNX through an onnxruntime session)."""
    if type(obj).__name__ == "ModelProto":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        sess = ort.InferenceSession(obj.SerializeToString(), so, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        label = next(o.name for o in sess.get_outputs() if "label" in o.name.lower())

        def pred_onnx(A: np.ndarray) -> np.ndarray:
            return np.asarray(sess.run([label], {name: np.asarray(A, dtype=np.float32)})[0]).ravel().astype(np.int64)

        return pred_onnx
    classes = list(np.asarray(obj.classes_).ravel())

    def pred(A: np.ndarray) -> np.ndarray:
        out = np.asarray(obj.predict(np.asarray(A, dtype=np.float64))).ravel()
        return np.array([classes.index(type(classes[0])(v)) for v in out], dtype=np.int64)

    return pred


# ----------------------------------------------------------------------------------------
# one case
# ----------------------------------------------------------------------------------------
def ratios(bb: Any, st: Any) -> np.ndarray:
    """Per-point black-box / strongest radius over correctly classified points where both are finite and > 0."""
    db, ds = np.asarray(bb.distance, dtype=np.float64), np.asarray(st.distance, dtype=np.float64)
    cc = np.ones(len(ds), dtype=bool) if st.clean_correct is None else np.asarray(st.clean_correct, dtype=bool)
    ok = cc & np.isfinite(db) & np.isfinite(ds) & (ds > 0)
    return db[ok] / ds[ok]


def ratios_without(bb: Any, st: Any, drop: str) -> tuple[np.ndarray, int]:
    """Like `ratios`, with the strongest radius taken over its attacks other than `drop` (the ensemble's own hsj
    cross-check), and how many points `drop` won in the ensemble (strictly below every other attack)."""
    per = {k: np.asarray(v, dtype=np.float64) for k, v in st.per_attack.items() if k != drop}
    ds = np.asarray(st.distance, dtype=np.float64)
    if not per:
        return np.zeros(0), 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        other = np.nanmin(np.stack(list(per.values())), axis=0)  # all-NaN -> NaN
    other = np.where(np.isnan(other), np.inf, other)
    db = np.asarray(bb.distance, dtype=np.float64)
    cc = np.ones(len(ds), dtype=bool) if st.clean_correct is None else np.asarray(st.clean_correct, dtype=bool)
    ok = cc & np.isfinite(db) & np.isfinite(other) & (other > 0)
    wins = int(np.sum(cc & np.isfinite(ds) & (ds < other * (1 - 1e-9))))
    return db[ok] / other[ok], wins


def run_case(name: str, obj: Any, X: np.ndarray, y: np.ndarray, norms: list[str], repeats: int = 3) -> list[dict[str, Any]]:
    import robustbench_align as rba

    times = []
    model = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        model = rba.wrap(obj)
        times.append(time.perf_counter() - t0)
    t_wrap = statistics.median(times)
    predict = native_predict(obj)
    y_idx = np.asarray(y, dtype=np.int64)
    rows = []
    for norm in norms:
        t0 = time.perf_counter()
        st = rba.minimal_radius(model, X, y_idx, norm)
        t_st = time.perf_counter() - t0
        t0 = time.perf_counter()
        bb = rba.minimal_radius(model, X, y_idx, norm, attacks=["hsj"])
        t_bb = time.perf_counter() - t0
        r = ratios(bb, st)
        r_nohsj, hsj_wins = ratios_without(bb, st, "hsj")
        cc = np.asarray(st.clean_correct, dtype=bool) if st.clean_correct is not None else predict(X) == y_idx
        found = cc & np.isfinite(st.distance) & (np.asarray(st.distance) > 0)
        native_clean = predict(X)
        flips = predict(np.asarray(st.x_adv)[found]) != y_idx[found] if found.any() else np.zeros(0, bool)
        row = {
            "case": name, "norm": norm, "n": len(y_idx), "clean_correct": int(cc.sum()), "native_clean_agree": int((native_clean == y_idx).sum()),
            "path": st.path, "bb_path": bb.path, "attacks": list(st.attacks_used), "t_wrap": t_wrap, "t_strong": t_st, "t_bb": t_bb,
            "t_hsj_in_strong": float(st.attack_times.get("hsj", 0.0)),
            "strong_found": int(found.sum()), "bb_found": int((cc & np.isfinite(bb.distance) & (np.asarray(bb.distance) > 0)).sum()),
            "n_ratio": int(r.size), "ratio_median": float(np.median(r)) if r.size else float("nan"),
            "ratio_max": float(np.max(r)) if r.size else float("nan"), "ratio_min": float(np.min(r)) if r.size else float("nan"),
            "strong_median": float(np.median(np.asarray(st.distance)[found])) if found.any() else float("nan"),
            "native_flips": int(flips.sum()), "native_flips_all": bool(flips.all()),
            "exact_points": int(st.is_exact().sum()),
            "n_ratio_nohsj": int(r_nohsj.size), "ratio_median_nohsj": float(np.median(r_nohsj)) if r_nohsj.size else float("nan"),
            "ratio_min_nohsj": float(np.min(r_nohsj)) if r_nohsj.size else float("nan"), "hsj_wins": hsj_wins,
        }
        rows.append(row)
        print(f"# {name} {norm}: path {row['path']}, wrap {t_wrap * 1e3:.1f} ms, strongest {t_st:.2f} s, hsj {t_bb:.2f} s, "
              f"ratio median {row['ratio_median']:.3f} max {row['ratio_max']:.3f} min {row['ratio_min']:.3f} (n={r.size}), "
              f"native flips {row['native_flips']}/{row['strong_found']}; excl. hsj: median {row['ratio_median_nohsj']:.3f} "
              f"min {row['ratio_min_nohsj']:.3f} (n={r_nohsj.size}), hsj won {hsj_wins}; hsj inside strongest {row['t_hsj_in_strong']:.2f} s",
              flush=True)
    return rows


# ----------------------------------------------------------------------------------------
def run(quick: bool = False, n_points: int | None = None, norms: list[str] | None = None, cases: list[str] | None = None,
        repeats: int = 3) -> dict[str, Any]:
    """Every case; returns {"rows": [...], "markdown": str, ...}."""
    import torch
    from threadpoolctl import threadpool_limits

    import robustbench_align as rba

    torch.set_num_threads(1)
    logging.getLogger("robustbench_align").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if norms is None:
        norms = ["linf", "l2"]
    if n_points is None:
        n_points = 20 if quick else 50
    ds = rba.load_dataset("breast_cancer", seed=0)
    Xtr, ytr = np.asarray(ds.X_train, dtype=np.float64), np.asarray(ds.y_train).astype(np.int64)
    X, y = np.asarray(ds.X_test, dtype=np.float64)[:n_points], np.asarray(ds.y_test).astype(np.int64)[:n_points]
    builders = build_cases(Xtr, ytr)
    out: dict[str, Any] = {"rows": [], "errors": {}, "quick": quick, "n_points": len(y), "norms": norms, "load_start": machine_info()["loadavg"]}
    t_all = time.perf_counter()
    for name, build in builders.items():
        if cases and name not in cases:
            continue
        case_norms = [n for n in norms if n == "linf" or name not in TREE_CASES]
        try:
            with threadpool_limits(1):
                obj = build()
                out["rows"] += run_case(name, obj, X, y, case_norms, repeats=repeats)
        except Exception as e:  # one failed adapter must not lose the others
            log.exception("adapter case %s failed", name)
            out["errors"][name] = f"{type(e).__name__}: {e}"
            print(f"# {name}: FAILED {type(e).__name__}: {e}", flush=True)
    out["seconds"] = time.perf_counter() - t_all
    out["load_end"] = machine_info()["loadavg"]
    out["markdown"] = markdown(out)
    return out


def _f(x: float, fmt: str = ".3f") -> str:
    return "—" if not np.isfinite(x) else format(x, fmt)


def markdown(res: dict[str, Any]) -> str:
    """The adapter section of RESULTS.md."""
    L = ["## Adapters: strongest path vs black box (benchmarks/adapters.py)", "",
         f"breast_cancer (seed 0, standardised), first {res['n_points']} test points; {N_TREES} trees of depth {DEPTH}, MLP (32,), "
         "SVC rbf. Strongest = `minimal_radius(wrap(obj), ...)` (default attacks; includes hsj as a cross-check), black box = "
         "`attacks=[\"hsj\"]` (default settings). Ratio = black-box / strongest radius per correctly classified point where both "
         "are finite; target: min ratio >= 1. Native flips: strongest-path adversarials that flip the original object's own "
         "predict (ONNX: onnxruntime's label output). \"excl. hsj\": the strongest radius recomputed without the ensemble's "
         "own hsj cross-check, and the points where that hsj beat every other attack. 1 thread everywhere.", "",
         "| adapter | norm | path | wrap (ms, med of 3) | strongest (s) | black box (s) | ratio median | ratio max | ratio min | points "
         "| strongest median radius | exact certified | native flips | excl. hsj: ratio median / min | hsj won |",
         "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in res["rows"]:
        L.append(f"| {r['case']} | {r['norm']} | {r['path']} | {r['t_wrap'] * 1e3:.1f} | {r['t_strong']:.2f} | {r['t_bb']:.2f} | "
                 f"{_f(r['ratio_median'])} | {_f(r['ratio_max'])} | {_f(r['ratio_min'])} | {r['n_ratio']}/{r['clean_correct']} | "
                 f"{_f(r['strong_median'], '.4f')} | {r['exact_points']} | {r['native_flips']}/{r['strong_found']}"
                 f"{'' if r['native_flips_all'] else ' **NO**'} | {_f(r['ratio_median_nohsj'])} / {_f(r['ratio_min_nohsj'])} | "
                 f"{r['hsj_wins']} |")
    for k, v in res["errors"].items():
        L.append(f"| {k} | — | failed: {v[:150]} | | | | | | | | | | | | |")
    L += ["", f"Total {res['seconds']:.0f} s; 1-min load {res['load_start'][0]:.1f} at start, {res['load_end'][0]:.1f} at end. "
          "Strongest time is the whole default ensemble (hsj included; its share per row in the raw dict as t_hsj_in_strong)."]
    return "\n".join(L) + "\n"


def summary_rows(res: dict[str, Any]) -> list[tuple[str, str, str, bool | None]]:
    """(what, measured, target, ok) rows for benchmarks/__main__.py's RESULTS table."""
    rows: list[tuple[str, str, str, bool | None]] = []
    for r in res["rows"]:
        ok = (r["n_ratio"] > 0 and r["ratio_min"] >= RATIO_TARGET * (1 - 1e-9)) and r["native_flips_all"]
        rows.append((f"adapter {r['case']} ({r['norm']}, path {r['path']})",
                     f"black-box/strongest radius median {_f(r['ratio_median'])} (max {_f(r['ratio_max'])}, min {_f(r['ratio_min'])}, "
                     f"{r['n_ratio']} pts); times wrap {r['t_wrap'] * 1e3:.1f} ms, strongest {r['t_strong']:.2f} s, black box "
                     f"{r['t_bb']:.2f} s; native flips {r['native_flips']}/{r['strong_found']}",
                     "ratio >= 1 (strongest never worse); every adversarial flips the original predict", ok))
    for k, v in res["errors"].items():
        rows.append((f"adapter {k}", "failed: " + v[:200], "", False))
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 test points instead of 50")
    ap.add_argument("--points", type=int, default=None, help="test points (default 20 with --quick, else 50)")
    ap.add_argument("--norms", nargs="+", choices=["linf", "l2"], default=None)
    ap.add_argument("--cases", nargs="+", default=None)
    args = ap.parse_args(argv)
    res = run(quick=args.quick, n_points=args.points, norms=args.norms, cases=args.cases)
    print(res["markdown"])
    return res


if __name__ == "__main__":
    main()
