"""Fit-time benchmark: our RFM/RFAM against xRFM's low-level `RFM`, in the same process.

Both sides fit a Laplace kernel machine with bandwidth 10, 5 iterations, one fixed ridge (no grid,
for a fair comparison), a given validation split and direct solves on the CPU, on
`make_classification` data with d=20. Reported: median fit time over repeats, the time ratio
ours/xRFM, and test accuracy of each.

Run from the repository root:  python -m benchmarks.rfm [--large] [--repeats 3] [--dtypes float64 float32]
The table goes to stdout and to benchmarks/results/rfm.md.

xRFM settings, read from xrfm/rfm_src/recursive_feature_machine.py (0.4.5): kernel='laplace'
(exp(-||(x-z) M^{1/2}||/L), the same kernel family as ours), bandwidth=10, iters=5, device='cpu',
tuning_metric='accuracy', default solver 'solve' (LU), early_stop_rfm=False (so all iterations run,
as ours do). Its loop does iters+1 solves and iters AGOPs (a final refit after the last AGOP); ours
does iters solves and iters-1 AGOPs (the AGOP after the last iteration is never evaluated). Its M is
max-normalised, ours trace-normalised (spec §4.1), so accuracies may differ slightly.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from sklearn.datasets import make_classification
from sklearn.preprocessing import StandardScaler

from robustbench_align.models.rfm import RFAM, RFM

RESULTS = Path(__file__).resolve().parent / "results" / "rfm.md"


def make_data(n_train: int, seed: int = 0, d: int = 20, n_val: int = 1000, n_test: int = 2000):
    """A standardised binary make_classification task split into train/val/test."""
    X, y = make_classification(
        n_samples=n_train + n_val + n_test, n_features=d, n_informative=10, n_redundant=5,
        n_classes=2, class_sep=1.0, flip_y=0.01, random_state=seed,
    )
    Xtr, ytr = X[:n_train], y[:n_train]
    Xva, yva = X[n_train : n_train + n_val], y[n_train : n_train + n_val]
    Xte, yte = X[n_train + n_val :], y[n_train + n_val :]
    sc = StandardScaler().fit(Xtr)
    return sc.transform(Xtr), ytr, sc.transform(Xva), yva, sc.transform(Xte), yte


def fit_ours(cls, data, reg: float, dtype: str):
    Xtr, ytr, Xva, yva, Xte, yte = data
    t0 = time.perf_counter()
    m = cls(iters=5, bandwidth=10.0, regs=(reg,), dtype=dtype, random_state=0).fit(Xtr, ytr, X_val=Xva, y_val=yva)
    dt = time.perf_counter() - t0
    return dt, float((m.predict(Xte) == yte).mean())


def fit_xrfm(data, reg: float, dtype: str, solver: str = "solve"):
    from xrfm import RFM as XRFM

    Xtr, ytr, Xva, yva, Xte, yte = data
    tdt = torch.float64 if dtype == "float64" else torch.float32
    k = int(max(ytr.max(), yva.max())) + 1
    Ytr = torch.nn.functional.one_hot(torch.as_tensor(ytr), k).to(tdt)
    Yva = torch.nn.functional.one_hot(torch.as_tensor(yva), k).to(tdt)
    Xtr_t, Xva_t = torch.as_tensor(Xtr, dtype=tdt), torch.as_tensor(Xva, dtype=tdt)
    t0 = time.perf_counter()
    m = XRFM(kernel="laplace", bandwidth=10.0, iters=5, device="cpu", tuning_metric="accuracy", verbose=False, solver=solver)
    m.fit((Xtr_t, Ytr), (Xva_t, Yva), reg=reg, early_stop_rfm=False, verbose=False)
    dt = time.perf_counter() - t0
    pred = m.predict(torch.as_tensor(Xte, dtype=tdt)).argmax(1).numpy()
    return dt, float((pred == yte).mean())


def interleaved(fns: dict, repeats: int) -> dict:
    """Median time and first accuracy per method; repeats interleave the methods (shared-machine noise hits all)."""
    times: dict = {k: [] for k in fns}
    accs: dict = {}
    for _ in range(repeats):
        for k, fn in fns.items():
            t, a = fn()
            times[k].append(t)
            accs.setdefault(k, a)
    return {k: (statistics.median(v), accs[k]) for k, v in times.items()}


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[2000, 5000])
    ap.add_argument("--large", action="store_true", help="also run n=20000 (minutes per fit)")
    ap.add_argument("--large-repeats", type=int, default=1)
    ap.add_argument("--large-dtypes", nargs="+", default=None, choices=["float64", "float32"], help="dtypes for n=20000 (default: --dtypes)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", nargs="+", default=["float64", "float32"], choices=["float64", "float32"])
    ap.add_argument("--reg", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--xrfm-cholesky", action="store_true", help="also time xRFM with solver='cholesky'")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--append", action="store_true", help="append this run's table to --out instead of replacing it")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    import xrfm

    load_start = os.getloadavg()[0]
    sizes = list(args.sizes) + ([20000] if args.large else [])
    rows = []
    for n in sizes:
        data = make_data(n)
        reps = args.large_repeats if n >= 20000 else args.repeats
        dtypes = args.large_dtypes if (n >= 20000 and args.large_dtypes) else args.dtypes
        for dtype in dtypes:
            fns = {
                # interleaved() calls every closure within this iteration, so data/dtype are the current ones
                "x": lambda: fit_xrfm(data, args.reg, dtype),  # noqa: B023
                "rfm": lambda: fit_ours(RFM, data, args.reg, dtype),  # noqa: B023
                "rfam": lambda: fit_ours(RFAM, data, args.reg, dtype),  # noqa: B023
            }
            if args.xrfm_cholesky:
                fns["xc"] = lambda: fit_xrfm(data, args.reg, dtype, solver="cholesky")  # noqa: B023 - called by interleaved() below
            res = interleaved(fns, reps)
            (t_x, a_x), (t_rfm, a_rfm), (t_rfam, a_rfam) = res["x"], res["rfm"], res["rfam"]
            row = dict(n=n, dtype=dtype, reps=reps, t_rfm=t_rfm, t_rfam=t_rfam, t_x=t_x, a_rfm=a_rfm, a_rfam=a_rfam, a_x=a_x)
            if "xc" in res:
                row["t_xc"], row["a_xc"] = res["xc"]
            rows.append(row)
            print(f"# n={n} {dtype}: ours RFM {t_rfm:.2f}s RFAM {t_rfam:.2f}s xRFM {t_x:.2f}s", flush=True)

    extra = any("t_xc" in r for r in rows)
    lines = [
        "# RFM fit time: robustbench-align vs xRFM",
        "",
        f"make_classification (d=20, 2 classes, 1000 validation and 2000 test rows), bandwidth 10, 5 iterations, "
        f"one fixed reg={args.reg:g}, CPU with {args.threads} torch thread(s); median fit time of the repeats (methods interleaved). "
        f"torch {torch.__version__}, xrfm {getattr(xrfm, '__version__', '?')}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores shared with other jobs (1-min load average {load_start:.1f} at start, {os.getloadavg()[0]:.1f} at end).",
        "",
        "| n | dtype | repeats | ours RFM (s) | ours RFAM (s) | xRFM (s) | ratio RFM/xRFM | ratio RFAM/xRFM "
        + ("| xRFM cholesky (s) " if extra else "")
        + "| acc RFM | acc RFAM | acc xRFM |",
        "|---:|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if extra else "") + "---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['n']} | {r['dtype']} | {r['reps']} | {r['t_rfm']:.2f} | {r['t_rfam']:.2f} | {r['t_x']:.2f} | "
            f"{r['t_rfm'] / r['t_x']:.2f}x | {r['t_rfam'] / r['t_x']:.2f}x | "
            + (f"{r['t_xc']:.2f} | " if extra else "")
            + f"{r['a_rfm']:.4f} | {r['a_rfam']:.4f} | {r['a_x']:.4f} |"
        )
    lines += [
        "",
        "Work per fit: ours 5 Cholesky solves + 4 AGOPs; xRFM 6 LU solves (`torch.linalg.solve`) + 5 AGOPs "
        "(its loop refits after the last AGOP). Both evaluate the validation set after every solve.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.append and args.out.exists():
        text = args.out.read_text() + "\n" + text
    args.out.write_text(text)
    return text


if __name__ == "__main__":
    main()
