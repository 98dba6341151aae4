"""Report figures (matplotlib, Agg backend): robust accuracy vs eps, alignment vs radius, paired RFAM vs RFM.

Each function returns PNG bytes (and optionally writes them), so the HTML page can embed them.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd


def _label(s: Any) -> str:
    """Text for a matplotlib label: `$` would start math mode, so it is escaped."""
    return str(s).replace("\\", "\\\\").replace("$", r"\$")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any, path: str | os.PathLike | None = None) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    data = buf.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
    return data


def robust_curves(points: pd.DataFrame, dataset: str, threat: str, path: str | os.PathLike | None = None) -> bytes | None:
    """Robust accuracy vs eps for every model on one dataset/threat (exact step curves from radii)."""
    p = points[(points["dataset"] == dataset) & (points["threat"] == threat)]
    if p.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    radius = pd.to_numeric(p["radius"], errors="coerce")
    if radius.notna().any():
        finite = radius[np.isfinite(radius)]
        emax = float(np.nanpercentile(finite, 95)) * 1.2 if len(finite) else 1.0
        emax = emax if emax > 0 else 1.0
        grid = np.linspace(0, emax, 200)
        for model, g in p.groupby("model"):
            r = pd.to_numeric(g["radius"], errors="coerce").fillna(0).to_numpy()
            ax.plot(grid, [(r > e).mean() for e in grid], label=_label(model), lw=1.5)
    else:
        for model, g in p.groupby("model"):
            keys = sorted({k for d in g["robust_at"] if isinstance(d, dict) for k in d}, key=float)
            acc = [np.mean([d[k] for d in g["robust_at"] if isinstance(d, dict) and k in d]) for k in keys]
            ax.plot([float(k) for k in keys], acc, marker="o", label=_label(model))
    ax.set_xlabel(f"eps ({p['norm'].iloc[0]})")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(_label(f"{dataset} — {threat}"), fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    ax.grid(alpha=0.3)
    return _png(fig, path)


def scatter_plot(points: pd.DataFrame, x: str, y: str, result: Any = None, path: str | os.PathLike | None = None, hue: str = "model") -> bytes | None:
    """Alignment (x) vs robustness (y) per point, coloured by model, with the correlation in the title."""
    p = points[points[x].notna() & points[y].notna()]
    p = p[np.isfinite(pd.to_numeric(p[y], errors="coerce"))]
    if p.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for key, g in p.groupby(hue) if hue in p else [("all", p)]:
        ax.scatter(g[x], g[y], s=10, alpha=0.6, label=_label(key))
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    title = f"{x} vs {y}"
    rho = getattr(result, "spearman", None)
    if rho is not None and np.isfinite(rho):
        title += f": Spearman ρ={rho:.2f}"
        pv = getattr(result, "spearman_p", None)
        if pv is not None:
            title += f" (p={pv:.3g})"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, frameon=False, markerscale=1.5)
    ax.grid(alpha=0.3)
    return _png(fig, path)


def paired_plot(board: pd.DataFrame, a: str = "rfm", b: str = "rfam", metric: str = "auc", path: str | os.PathLike | None = None) -> bytes | None:
    """Model b against model a per (dataset, threat) on `metric`; points above the diagonal favour b."""
    sub = board[board["model"].isin([a, b])]
    if sub.empty or metric not in sub:
        return None
    wide = sub.pivot_table(index=["dataset", "threat"], columns="model", values=metric)
    if a not in wide or b not in wide:
        return None
    wide = wide.dropna()
    if wide.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.scatter(wide[a], wide[b], s=25)
    for key, row in wide.iterrows():
        ds, th = cast("tuple[str, str]", key)  # the (dataset, threat) index
        ax.annotate(_label(f"{ds}/{th}"), (row[a], row[b]), fontsize=6, alpha=0.7)
    lo = float(min(wide[a].min(), wide[b].min()))
    hi = float(max(wide[a].max(), wide[b].max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(_label(f"{a} {metric}"))
    ax.set_ylabel(_label(f"{b} {metric}"))
    ax.set_title(_label(f"paired: {b} vs {a}"), fontsize=10)
    ax.grid(alpha=0.3)
    return _png(fig, path)
