"""Exact linf on tree ensembles: our `veritas` attack against a direct exact Veritas search, per point.

The direct baseline is the honest minimum a Veritas user writes: per point, the sorted distances
from x to every split value of the ensemble (the only radii where the answer can change), a gallop
from the smallest one and a bisection, each step one exact `MAX_OUTPUT` Veritas query (run until
optimal) on the box of radius r around x, asking whether the other class' margin can be reached.
The AddTree is built once per model. Both sides run in the same process, interleaved, on the same
models and points; the radii must agree to 1e-6 relative. Both sides split in the ensemble's own
threshold dtype (float64 for LightGBM and HistGradientBoosting, float32 otherwise).

Run from the repository root:  python -m benchmarks.trees_exact [--quick] [--repeats 3]
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from benchmarks import machine_info

RADIUS_RTOL = 1e-6
TIE_TOL = 1e-9  # margins within this of 0 count as ties on the direct side (see DirectVeritas.reachable)
RESULTS = os.path.join(os.path.dirname(__file__), "results", "trees_exact.md")


# ----------------------------------------------------------------------------------------
# models and points
# ----------------------------------------------------------------------------------------
def breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """Standardised breast_cancer, float32-representable (binary)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.preprocessing import StandardScaler

    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X).astype(np.float32).astype(np.float64)
    return X, y.astype(np.int64)


def make_models(quick: bool) -> list[tuple[str, Any]]:
    """(label, robustbench_align Model) for every family whose library is installed."""
    import robustbench_align as rba
    from robustbench_align.models.trees.estimators import RandomForestModel, XGBoostModel

    X, y = breast_cancer()
    Xtr, ytr = X[::2], y[::2]
    out: list[tuple[str, Any]] = [
        ("XGBoost 30 trees depth 4", XGBoostModel(n_estimators=30, max_depth=4, random_state=0).fit(Xtr, ytr)),
        ("XGBoost 100 trees depth 6", XGBoostModel(n_estimators=100, max_depth=6, random_state=0).fit(Xtr, ytr)),
        ("RandomForest 50 trees depth 6", RandomForestModel(n_estimators=50, max_depth=6, random_state=0).fit(Xtr, ytr)),
    ]
    try:
        import lightgbm

        out.append(("LightGBM 30 trees 15 leaves", rba.wrap(lightgbm.LGBMClassifier(n_estimators=30, num_leaves=15, random_state=0,
                                                                                     verbose=-1).fit(Xtr, ytr))))
    except ImportError:
        pass
    from sklearn.ensemble import HistGradientBoostingClassifier

    out.append(("HistGradientBoosting 30 iters 15 leaves",
                rba.wrap(HistGradientBoostingClassifier(max_iter=30, max_leaf_nodes=15, random_state=0).fit(Xtr, ytr))))
    try:
        import catboost

        cb = catboost.CatBoostClassifier(iterations=30, depth=4, random_seed=0, verbose=False, allow_writing_files=False, thread_count=1)
        out.append(("CatBoost 30 trees depth 4", rba.wrap(cb.fit(Xtr, ytr))))
    except ImportError:
        pass
    return out


def test_points(model: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n correctly classified held-out rows."""
    X, y = breast_cancer()
    Xt, yt = X[1::2], y[1::2]
    keep = np.flatnonzero(model.predict(Xt) == yt)[:n]
    return Xt[keep], yt[keep]


# ----------------------------------------------------------------------------------------
# the direct Veritas search
# ----------------------------------------------------------------------------------------
def direct_addtree(model: Any) -> tuple[Any, bool]:
    """One Veritas AddTree of the binary margin (raw > 0: class 1) from the parsed ensemble, once per model.

    The parse is the same one the library converters produce (leaf values, base score, split
    values in the ensemble's threshold dtype, `x < s` going left); `x <= t` becomes `x < next(t)`
    in that dtype (float32 for XGBoost/scikit-learn/CatBoost, float64 for LightGBM/HistGB).
    Returns (addtree, dtype).
    """
    import veritas

    ens = model.tree_ensemble()
    assert ens.n_outputs in (1, 2), "binary ensembles only"
    agg = float(len(ens.trees)) if ens.combine == "mean" else 1.0
    bias = np.asarray(ens.bias, dtype=np.float64).reshape(-1)
    if ens.n_outputs == 2:  # margin raw_1 - raw_0 (class 1 iff > 0: ties go to class 0)
        leaf, b0 = (lambda t, n: float(t.value[n, 1] - t.value[n, 0]) / agg), float(bias[-1] - bias[0])
    else:
        leaf, b0 = (lambda t, n: float(t.value[n, 0]) / agg), float(bias[0])
    at = veritas.AddTree(1, veritas.AddTreeType.REGR)
    for t in ens.trees:
        vt = at.add_tree()
        stack = [(0, vt.root())]
        while stack:
            n, m = stack.pop()
            if t.left[n] < 0:
                vt.set_leaf_value(m, 0, leaf(t, n))
                continue
            thr = ens.dtype(t.threshold[n])
            s = thr if ens.strict else np.nextafter(thr, ens.dtype(np.inf))
            vt.split(m, int(t.feature[n]), float(s))
            stack.append((int(t.right[n]), vt.right(m)))
            stack.append((int(t.left[n]), vt.left(m)))
    at.set_base_score(0, b0)
    return at, ens.dtype


def split_values(at: Any) -> dict[int, np.ndarray]:
    """Per feature, the sorted distinct split values of an AddTree."""
    out: dict[int, list[float]] = {}
    for i in range(len(at)):
        t = at[i]
        stack = [t.root()]
        while stack:
            n = stack.pop()
            if t.is_leaf(n):
                continue
            s = t.get_split(n)
            out.setdefault(int(s.feat_id), []).append(float(s.split_value))
            stack += [t.left(n), t.right(n)]
    return {f: np.unique(np.asarray(v)) for f, v in out.items()}


class DirectVeritas:
    """Gallop + bisection over the split distances of x, one exact MAX_OUTPUT query per step."""

    def __init__(self, at: Any, dtype: Any = np.float32) -> None:
        import veritas

        self.dtype = dtype
        self.veritas = veritas
        self.at = at
        self.neg = at.negate_leaf_values()  # margin of class 0 points: -raw
        self.splits = split_values(at)
        self.n_feat = at.get_maximum_feat_id() + 1

    def radii(self, x: np.ndarray) -> np.ndarray:
        """The distances to the closest point of the dtype on the other side of every split value (x < s goes left)."""
        parts = []
        for f, s in self.splits.items():
            xf = float(x[f])
            right = s[s > xf] - xf  # move up to s
            left = xf - np.nextafter(s[s <= xf].astype(self.dtype), self.dtype(-np.inf)).astype(np.float64)  # just below s
            parts += [right, left]
        d = np.concatenate(parts) if parts else np.zeros(0)
        return np.unique(d[d > 0])

    def reachable(self, at: Any, x: np.ndarray, r: float, tie_flips: bool) -> bool:
        """Exact: does some input within linf radius r reach output > 0 (>= 0 if tie_flips), the other class?

        Best-first MAX_OUTPUT search with states below 0 pruned: the first solution is the maximum.
        """
        v = self.veritas
        # [x - r, x + r] widened by a few ulps: r is a rounded difference s - x, and x + r can land a
        # couple of ulps below s; a split at exactly that distance must stay inside
        box = []
        for f in range(self.n_feat):
            xf = float(x[f])
            slack = 4.0 * float(np.spacing(abs(xf) + r))
            box.append(v.Interval(xf - r - slack, xf + r + slack))
        cfg = v.Config(v.HeuristicType.MAX_OUTPUT)
        cfg.ignore_state_when_worse_than = -TIE_TOL
        cfg.focal_eps = 1.0
        cfg.stop_when_num_solutions_exceeds = 0
        s = cfg.get_search(at, box)
        while s.num_solutions() == 0 and s.num_open() > 0:
            s.steps(1000)
        if s.num_solutions() == 0:
            return False
        out = s.get_solution(0).output
        # TIE_TOL: Veritas sums the leaf values in float64 in its own order, so an exact tie (a random
        # forest's votes) can come out as +-1e-17; without it the direct side misses tie flips
        return bool(out >= -TIE_TOL if tie_flips else out > TIE_TOL)

    def radius(self, x: np.ndarray, y: int) -> float:
        at = self.neg if y == 1 else self.at
        tie = y == 1  # class 1 needs margin > 0: a tie moves a class-1 point
        C = self.radii(x)
        if C.size == 0:
            return np.inf
        # gallop: 0, 1, 3, 7, ... until reachable
        lo, step, hi = 0, 1, -1
        i = 0
        while i < C.size:
            if self.reachable(at, x, float(C[i]), tie):
                hi = i
                break
            lo = i + 1
            i += step
            step *= 2
        if hi < 0:
            if lo < C.size and self.reachable(at, x, float(C[-1]), tie):
                hi = C.size - 1
            else:
                return np.inf
        while lo < hi:
            mid = (lo + hi) // 2
            if self.reachable(at, x, float(C[mid]), tie):
                hi = mid
            else:
                lo = mid + 1
        return float(C[lo])


# ----------------------------------------------------------------------------------------
def ours_attack(model: Any) -> tuple[str, Callable[[np.ndarray, np.ndarray], np.ndarray]]:
    """Our exact linf attack of the plan: `veritas`, or `milp` where Veritas refuses the model."""
    from robustbench_align.attacks.registry import get_attack
    from robustbench_align.attacks.trees.veritas import VeritasLinf

    name = "veritas" if VeritasLinf.refuses(model) is None else "milp"

    def run(X: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.asarray(get_attack(name).run(model, X, y, "linf").distance, dtype=np.float64)

    return name, run


def compare(label: str, model: Any, n_points: int, repeats: int) -> dict[str, Any]:
    X, y = test_points(model, n_points)
    name, ours = ours_attack(model)
    at, dtype = direct_addtree(model)
    direct = DirectVeritas(at, dtype)

    def run_direct() -> np.ndarray:
        return np.array([direct.radius(x, int(yi)) for x, yi in zip(X, y, strict=True)])

    times: dict[str, list[float]] = {"ours": [], "direct": []}
    res: dict[str, np.ndarray] = {}
    for _ in range(max(1, repeats)):  # interleaved
        for k, fn in (("ours", lambda: ours(X, y)), ("direct", run_direct)):
            t0 = time.perf_counter()
            r = fn()
            times[k].append(time.perf_counter() - t0)
            res.setdefault(k, r)
    t_o, t_d = statistics.median(times["ours"]) / len(y), statistics.median(times["direct"]) / len(y)
    d_o, d_d = res["ours"], res["direct"]
    both = np.isfinite(d_o) & np.isfinite(d_d)
    agree = bool(np.all(np.isfinite(d_o) == np.isfinite(d_d))) and bool(
        np.all(np.abs(d_o[both] - d_d[both]) <= RADIUS_RTOL * np.maximum(np.abs(d_d[both]), 1e-300)))
    return {"model": label, "attack": name, "n": len(y), "ms_ours": 1e3 * t_o, "ms_direct": 1e3 * t_d, "ratio": t_o / t_d,
            "agree": agree, "n_disagree": int(np.sum(~np.isclose(d_o, d_d, rtol=RADIUS_RTOL, atol=0.0) & both)),
            "dtype": np.dtype(dtype).name, "median_radius": float(np.median(d_d[np.isfinite(d_d)])) if both.any() else float("nan")}


def markdown(rows: list[dict[str, Any]], info: dict[str, Any], repeats: int) -> str:
    L = ["# Exact linf on tree ensembles: ours vs a direct Veritas exact search", "",
         f"Machine: {info['cpu']}, {info['cores']} cores, load {info['loadavg']}; medians of {repeats} interleaved repeats, "
         "per point (ms). Direct: gallop + bisection over the sorted split distances, one exact MAX_OUTPUT query per step, "
         "AddTree built once per model (outside the timing); ours builds its per-ensemble structures in the first repeat and "
         "reuses them (cached per parsed ensemble). Both sides split in the ensemble's threshold dtype. "
         "Breast cancer (standardised, float32 inputs), binary.", "",
         "| model | thresholds | our attack | points | ours ms/pt | direct ms/pt | ours / direct | radii agree (1e-6 rel) | median radius |",
         "|---|---|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        L.append(f"| {r['model']} | {r['dtype']} | {r['attack']} | {r['n']} | {r['ms_ours']:.1f} | {r['ms_direct']:.1f} | {r['ratio']:.2f}x | "
                 f"{'yes' if r['agree'] else 'NO (' + str(r['n_disagree']) + ')'} | {r['median_radius']:.4g} |")
    return "\n".join(L) + "\n"


def run(quick: bool = False, repeats: int = 3, only: str | None = None, points: int | None = None) -> dict[str, Any]:
    logging.getLogger("robustbench_align").setLevel(logging.ERROR)
    n = points or (20 if quick else 40)  # ours has a fixed per-run cost (a few model predicts): tiny samples overstate it
    rows = []
    for label, model in make_models(quick):
        if only and only.lower() not in label.lower():
            continue
        r = compare(label, model, n, repeats)
        print(f"# {label} [{r['attack']}]: ours {r['ms_ours']:.1f} ms/pt, direct {r['ms_direct']:.1f} ms/pt, "
              f"{r['ratio']:.2f}x, agree {r['agree']}", flush=True)
        rows.append(r)
    info = machine_info()
    return {"rows": rows, "markdown": markdown(rows, info, repeats)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="20 points per model instead of 40")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default=None, help="run the models whose label contains this")
    ap.add_argument("--points", type=int, default=None, help="points per model (default 40, 10 with --quick)")
    ap.add_argument("--out", default=RESULTS, help="where to write the markdown table")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    res = run(quick=args.quick, repeats=args.repeats, only=args.only, points=args.points)
    print(res["markdown"])
    if not args.no_write and not args.only:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(res["markdown"])
    return res


if __name__ == "__main__":
    main()
