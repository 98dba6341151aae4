"""Speed benchmark: batched alignment/robustness metrics against the per-point loop, same numbers.

Two model families, all evaluated on `--n` query points (default 10,000):
- MLP (models/mlp.py, ReLU; hidden 200-200 — the class default — in float32 and float64, and
  64-64 in float32) on a 10-class task with d=30 (c=10): batched = vmap(jacrev) Jacobians;
  loop = torch.autograd.functional.jacobian per point.
- RFAM (models/rfm.py) fitted on n=2,000 training points of the same task (float64):
  batched = analytic batched gradient; loop = torch.autograd.functional.jacobian per point.
Both sides then compute every metric of `alignment()` plus the local-linear L∞ radius; the loop
does it per point with numpy (np.linalg.svd, norms), the batched path with `point_metrics()` (one
Jacobian pass); `alignment()` + `local_linear_radius()` (two passes) is timed too and must give
identical numbers. Reported: wall and CPU time of each side (batched: median of 3 runs after a
warm-up; loop: one run), the speed-ups, and the largest absolute difference over all metric
values (also divided by each metric's largest absolute value). CPU time (process time, one torch
thread) is the steadier figure on a shared machine.

Run from the repository root:  python -m benchmarks.metrics [--n 10000]
The table goes to stdout and to benchmarks/results/metrics.md.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import make_classification
from sklearn.preprocessing import StandardScaler

from robustbench_align.metrics.alignment import METRICS, alignment
from robustbench_align.metrics.jacobian import jacobians
from robustbench_align.metrics.robustness import local_linear_radius, point_metrics
from robustbench_align.models.mlp import MLP
from robustbench_align.models.rfm import RFAM

RESULTS = Path(__file__).resolve().parent / "results" / "metrics.md"
COLUMNS = list(METRICS) + ["r_lin_linf"]


def make_data(n_train: int, n_query: int, d: int = 30, c: int = 10, n_val: int = 500, seed: int = 0):
    """Standardised make_classification data: training, validation and query splits."""
    X, y = make_classification(n_samples=n_train + n_val + n_query, n_features=d, n_informative=20, n_redundant=5,
                               n_classes=c, n_clusters_per_class=1, class_sep=1.5, random_state=seed)
    sc = StandardScaler().fit(X[:n_train])
    X = sc.transform(X)
    a, b = n_train, n_train + n_val
    return X[:a], y[:a], X[a:b], y[a:b], X[b:], y[b:]


def loop_metrics(model, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference: Jacobian and every metric one point at a time. Returns (metric table, Jacobians)."""
    dt = torch.float64 if getattr(model, "dtype", "float64") == "float64" else torch.float32
    n, _ = X.shape
    out = np.empty((n, len(COLUMNS)))
    jacs = []
    for i in range(n):
        x = torch.as_tensor(X[i], dtype=dt)

        def f(z):
            return model.torch_logits(z.unsqueeze(0)).squeeze(0)

        fx = f(x).detach().double().numpy()
        J = torch.autograd.functional.jacobian(f, x).double().numpy()
        jacs.append(J)
        xv = X[i]
        _, S, Vt = np.linalg.svd(J, full_matrices=False)
        xn = np.linalg.norm(xv)
        cen = J.sum(axis=0)
        cn = np.linalg.norm(cen)
        s2 = (S**2).sum()
        margin = fx[y[i]] - fx
        dual = np.abs(J[y[i]] - J).sum(axis=1)
        r = np.where(dual > 0, margin / np.where(dual > 0, dual, 1.0), np.inf)
        r[y[i]] = np.inf
        out[i] = [
            abs(Vt[0] @ xv) / max(xn, 1e-8),
            (cen @ xv) / max(cn * xn, 1e-8),
            cn,
            cen @ xv,
            S.sum() ** 2 / s2,
            S.sum() ** 2 / s2 / min(J.shape),
            S[0] ** 2 / s2,
            np.linalg.norm(fx - J @ xv),
            np.sqrt(s2),
            xn,
            r.min(),
        ]
    return out, np.array(jacs)


def batched_metrics(model, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    df = point_metrics(model, X, y, norms=("linf",))
    return df[COLUMNS].to_numpy(dtype=np.float64)


def batched_metrics_separate(model, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    df = alignment(model, X)
    df["r_lin_linf"] = local_linear_radius(model, X, y, "linf")
    return df[COLUMNS].to_numpy(dtype=np.float64)


class Clock:
    """Wall and CPU (process) time of a block; with one torch thread CPU time is robust to a busy machine."""

    def __enter__(self) -> Clock:
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w0, time.process_time() - self.c0


def timed(fn, repeats: int):
    """(median wall s, median CPU s, result) over `repeats` runs after one warm-up run."""
    fn()  # warm-up (lazy torch.func imports, allocator)
    walls, cpus, res = [], [], None
    for _ in range(repeats):
        with Clock() as clk:
            res = fn()
        walls.append(clk.wall)
        cpus.append(clk.cpu)
    return statistics.median(walls), statistics.median(cpus), res


def compare(name: str, model, X: np.ndarray, y: np.ndarray, repeats: int) -> dict:
    with Clock() as loop:
        ref, J_loop = loop_metrics(model, X, y)
    w_batch, c_batch, got = timed(lambda: batched_metrics(model, X, y), repeats)
    w_sep, _, got_sep = timed(lambda: batched_metrics_separate(model, X, y), repeats)
    if not np.array_equal(got, got_sep, equal_nan=True):
        raise AssertionError("point_metrics and alignment() + local_linear_radius() disagree")
    w_jac, _, J = timed(lambda: jacobians(model, X), repeats)
    diff = np.abs(got - ref)
    finite = np.isfinite(ref) & np.isfinite(got)
    per_col = {c: float(np.max(diff[:, k][finite[:, k]])) for k, c in enumerate(COLUMNS)}
    scale = {c: float(np.max(np.abs(ref[:, k][finite[:, k]]))) for k, c in enumerate(COLUMNS)}
    scaled = {c: per_col[c] / max(scale[c], 1e-300) for c in COLUMNS}
    worst = max(scaled, key=scaled.get)
    return {
        "model": name, "n": X.shape[0], "c": model.n_classes, "d": model.n_features,
        "loop_wall": loop.wall, "loop_cpu": loop.cpu, "batch_wall": w_batch, "batch_cpu": c_batch,
        "ratio_wall": loop.wall / w_batch, "ratio_cpu": loop.cpu / c_batch, "separate_wall": w_sep, "jac_wall": w_jac,
        "max_abs_diff": float(diff[finite].max()), "max_scaled_diff": scaled[worst], "worst_metric": worst,
        "jac_max_abs_diff": float(np.abs(J - J_loop).max()),
        "same_nonfinite": bool(np.array_equal(np.isfinite(ref), np.isfinite(got))),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10000, help="query points per model")
    ap.add_argument("--n-train", type=int, default=2000, help="RFAM/MLP training points (validation rows are separate)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)

    Xtr, ytr, Xva, yva, Xq, yq = make_data(args.n_train, args.n)
    rows = []
    for hidden, dtype in (((200, 200), "float32"), ((200, 200), "float64"), ((64, 64), "float32")):
        mlp = MLP(hidden=hidden, epochs=30, dtype=dtype, random_state=0).fit(Xtr, ytr, X_val=Xva, y_val=yva)
        arch = "-".join(map(str, (30, *hidden, 10)))
        rows.append(compare(f"MLP {arch} ({dtype})", mlp, Xq, yq, args.repeats))
    rfam = RFAM(iters=3, regs=(1e-3,), random_state=0).fit(Xtr, ytr, X_val=Xva, y_val=yva)
    rows.append(compare(f"RFAM n_train={rfam.X_fit_.shape[0]} (float64)", rfam, Xq, yq, args.repeats))

    lines = [
        "# Batched metrics vs the per-point loop",
        "",
        f"{platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}, 1 torch thread, "
        f"{args.n} query points per model. Metrics: all `alignment()` columns plus the local-linear L∞ radius. "
        "Loop: torch.autograd.functional.jacobian + numpy metrics per point, one run. Batched: `point_metrics()` "
        f"(one Jacobian pass), median of {args.repeats} runs after a warm-up. Speed-ups are given on wall time and on "
        "CPU time (the latter is robust to other jobs sharing the machine). Differences are over all "
        f"{len(COLUMNS)} metric values of every point; the scaled difference divides a metric's largest difference by "
        "its largest absolute value.",
        "",
        "| model | c | d | loop wall (s) | batched wall (s) | speed-up wall | speed-up CPU | alignment() + local_linear_radius() wall (s) "
        "| jacobians() wall (s) | max abs diff | max diff / metric scale | worst metric (scaled) | Jacobian max abs diff | same NaN/inf pattern |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['c']} | {r['d']} | {r['loop_wall']:.2f} | {r['batch_wall']:.3f} | {r['ratio_wall']:.0f}× | "
            f"{r['ratio_cpu']:.0f}× | {r['separate_wall']:.3f} | {r['jac_wall']:.3f} | {r['max_abs_diff']:.2e} | "
            f"{r['max_scaled_diff']:.2e} | {r['worst_metric']} | {r['jac_max_abs_diff']:.2e} | {r['same_nonfinite']} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
