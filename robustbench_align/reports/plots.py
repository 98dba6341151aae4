"""Report figures (matplotlib, Agg backend): empirical and certified robust accuracy vs eps, alignment vs radius,
paired RFAM vs RFM.

Each function returns PNG bytes (and optionally writes them), so the HTML page can embed them.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
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


@dataclass
class CurveFigure:
    """A robust-accuracy figure and what it shows.

    png: the PNG bytes. models: every model drawn (empirical curve, solid, inside its shaded
    pointwise 95% bootstrap band). certified: the models that also have a certified curve (dashed,
    same colour, the bracket between the two hatched); a model none of whose points carries a lower
    bound gets none. banded: the models whose band was drawn (those with at least two points).
    """

    png: bytes
    models: list[str] = field(default_factory=list)
    certified: list[str] = field(default_factory=list)
    banded: list[str] = field(default_factory=list)


BAND_BOOT = 1000  # bootstrap replicates of the pointwise band
BAND_CONFIDENCE = 0.95


def _numeric(g: pd.DataFrame, col: str) -> np.ndarray:
    return pd.to_numeric(g[col], errors="coerce").to_numpy(dtype=float) if col in g else np.full(len(g), np.nan)


def certified_curve(g: pd.DataFrame, eps: np.ndarray) -> np.ndarray | None:
    """Certified robust accuracy at each eps: share of the points that are clean-correct with
    lower_bound > eps (a missing bound certifies nothing); None when no point has a lower bound."""
    lower = _numeric(g, "lower_bound")
    if np.isnan(lower).all():
        return None
    correct = _numeric(g, "correct") > 0.5
    with np.errstate(invalid="ignore"):
        return np.array([np.mean(correct & (lower > e)) for e in eps], dtype=float)


def _strata(g: pd.DataFrame) -> np.ndarray | None:
    """The seed of each point (the bootstrap strata); None when the points carry no seed."""
    if "seed" not in g or g["seed"].isna().all():
        return None
    return g["seed"].astype(str).to_numpy()


def robust_band(indicators: np.ndarray, strata: np.ndarray | None = None, n_boot: int = BAND_BOOT,
                confidence: float = BAND_CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Pointwise percentile band (lo, hi) of the empirical robust accuracy at each eps.

    `indicators` is (n_points, n_eps), 1 where a point is robust at that eps (clean-correct, no
    adversarial within it), else 0. Points are resampled within their stratum (the seed), each seed
    counting once, as the leaderboard averages seeds. Eps columns with the same 0/1 pattern have
    the same band, so each distinct pattern is resampled once.
    """
    from ..metrics.intervals import bootstrap_means

    ind = np.asarray(indicators)
    if ind.ndim != 2 or ind.shape[0] == 0 or ind.shape[1] == 0:
        k = ind.shape[1] if ind.ndim == 2 else 0
        return np.full(k, np.nan), np.full(k, np.nan)
    flags = ind if ind.dtype == bool else ind != 0
    if ind.dtype == bool or np.array_equal(flags, ind):  # 0/1: compare the columns bit-packed, 8 points a byte
        _, first, inverse = np.unique(np.packbits(flags, axis=0).T, axis=0, return_index=True, return_inverse=True)
        patterns = flags[:, first].astype(np.float64)
    else:
        patterns, inverse = np.unique(ind.astype(np.float64), axis=1, return_inverse=True)
    lo, hi = bootstrap_means(patterns, strata=strata, n_boot=n_boot, confidence=confidence, seed=0)
    inverse = np.asarray(inverse).reshape(-1)
    return lo[inverse], hi[inverse]


def robust_bracket_curves(points: pd.DataFrame, dataset: str, threat: str, path: str | os.PathLike | None = None) -> CurveFigure | None:
    """Per model on one dataset/threat, in one plot: the empirical robust accuracy vs eps (solid: share of
    points with radius > eps, an upper bound on the truth) inside its pointwise 95% band (shaded: a
    bootstrap over points, stratified by seed) and, where lower bounds exist, the certified robust
    accuracy (dashed, same colour: share of clean-correct points with lower_bound > eps, a lower
    bound); the area between the two, the uncertainty bracket, is hatched lightly."""
    p = points[(points["dataset"] == dataset) & (points["threat"] == threat)]
    if p.empty:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    radius = pd.to_numeric(p["radius"], errors="coerce")
    radius_grid: np.ndarray | None = None
    if radius.notna().any():  # exact step curves from radii, on one eps grid for every model
        finite = radius[np.isfinite(radius)]
        emax = float(np.nanpercentile(finite, 95)) * 1.2 if len(finite) else 1.0
        emax = emax if emax > 0 else 1.0
        radius_grid = np.linspace(0, emax, 200)
    models: list[str] = []
    certified: list[str] = []
    banded: list[str] = []
    band_alpha = max(0.07, min(0.2, 0.45 / max(p["model"].nunique(), 1)))  # many overlapping bands: fainter
    for model, g in p.groupby("model"):
        draw: dict[str, Any]
        strata = _strata(g)
        if radius_grid is not None:
            grid = radius_grid
            r = pd.to_numeric(g["radius"], errors="coerce").fillna(0).to_numpy()
            ind = r[:, None] > grid[None, :]  # bool: robust_band packs it
            emp = np.count_nonzero(ind, axis=0) / ind.shape[0]
            (line,) = ax.plot(grid, emp, label=_label(model), lw=1.5)
            draw = {"lw": 1.5}
        else:
            keys = sorted({k for d in g["robust_at"] if isinstance(d, dict) for k in d}, key=float)
            grid = np.array([float(k) for k in keys])
            emp = np.array([np.mean([d[k] for d in g["robust_at"] if isinstance(d, dict) and k in d]) for k in keys])
            full = [i for i, d in enumerate(g["robust_at"]) if isinstance(d, dict) and all(k in d and d[k] is not None for k in keys)]
            ind = np.array([[float(g["robust_at"].iloc[i][k]) for k in keys] for i in full]).reshape(len(full), len(keys))
            strata = strata[full] if strata is not None else None
            (line,) = ax.plot(grid, emp, marker="o", label=_label(model))
            draw = {"marker": "o", "markerfacecolor": "none"}
        models.append(str(model))
        colour = line.get_color()
        if len(grid) and ind.shape[0] >= 2:
            lo, hi = robust_band(ind, strata)
            ax.fill_between(grid, lo, hi, color=colour, alpha=band_alpha, lw=0, zorder=1)
            banded.append(str(model))
        cert = certified_curve(g, grid) if len(grid) else None
        if cert is not None:
            ax.plot(grid, cert, ls="--", color=colour, **draw)
            ax.fill_between(grid, cert, emp, facecolor="none", edgecolor=colour, alpha=0.35, hatch="////", lw=0)
            certified.append(str(model))
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles, labels = ax.get_legend_handles_labels()
    if banded:
        handles.append(Patch(facecolor="0.3", alpha=0.2, lw=0))
        labels.append(f"{int(BAND_CONFIDENCE * 100)}% band (bootstrap)")
    if certified:
        handles.append(Line2D([], [], color="0.3", ls="--", lw=1.5))
        labels.append("certified (dashed)")
    ax.legend(handles, labels, fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_xlabel(f"eps ({p['norm'].iloc[0]})")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(_label(f"{dataset} — {threat}"), fontsize=10)
    ax.grid(alpha=0.3)
    return CurveFigure(_png(fig, path), models, certified, banded)


def robust_curves(points: pd.DataFrame, dataset: str, threat: str, path: str | os.PathLike | None = None) -> bytes | None:
    """The PNG of `robust_bracket_curves`: empirical and, where lower bounds exist, certified robust accuracy vs eps."""
    fig = robust_bracket_curves(points, dataset, threat, path)
    return fig.png if fig is not None else None


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
