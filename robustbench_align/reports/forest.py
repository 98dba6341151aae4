"""Forest plot of a stratified correlation (`metrics.stats.correlate`): one row per stratum, the pooled effect as a diamond.

Each computable stratum is a square at its correlation with a horizontal bar for its bootstrap
interval, labelled with its n; below them the DerSimonian–Laird random-effects pooled estimate
and its interval as a filled diamond and, when confounders were given, the pooled partial
correlation as a hollow diamond. A vertical line marks 0. Matplotlib, Agg backend; PNG bytes.
"""
from __future__ import annotations

import io
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .plots import _label, _plt


def _finite(*vals: Any) -> bool:
    try:
        return all(math.isfinite(float(v)) for v in vals)
    except (TypeError, ValueError):
        return False


def _write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same directory and os.replace."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def forest_plot(result: Any, path: str | os.PathLike | None = None, *, which: str = "spearman", title: str | None = None) -> bytes | None:
    """Forest plot of `result` (a `CorrelationResult` with strata) for `which` ("spearman" or "pearson").

    Rows: every stratum whose estimate and bootstrap interval are finite, labelled "<stratum> (n=…)";
    then "pooled (random effects)" (filled diamond spanning its interval, with I²) and, if present,
    "partial pooled" (hollow diamond). Returns the PNG bytes, or None when there is nothing to draw
    (no computable stratum and no finite pooled estimate); with `path` the PNG is also written
    there atomically (temporary file, then os.replace).
    """
    if which not in ("spearman", "pearson"):
        raise ConfigError(f"forest_plot: which must be 'spearman' or 'pearson', got {which!r}")
    rows: list[tuple[str, float, float, float]] = []
    for label, g in (getattr(result, "groups", None) or {}).items():
        est, (lo, hi) = getattr(g, which), getattr(g, f"{which}_ci")
        if _finite(est, lo, hi):
            rows.append((f"{label} (n={g.n})", float(est), float(lo), float(hi)))
    diamonds: list[tuple[str, float, float, float, bool]] = []
    given = ", ".join(getattr(result, "confounders", ()) or ())
    partial_name = f"partial pooled (given {given})" if given else "partial pooled"
    for attr, name, filled in (("pooled", "pooled (random effects)", True), ("partial_pooled", partial_name, False)):
        pooled = getattr(result, attr, None)
        meta = getattr(pooled, which, None) if pooled is not None else None
        if meta is not None and _finite(meta.random, *meta.random_ci):
            text = f"{name}, {meta.k} strata"
            if meta.k >= 2 and _finite(meta.i2):
                text += f", I²={meta.i2 * 100:.0f}%"
            diamonds.append((text, float(meta.random), float(meta.random_ci[0]), float(meta.random_ci[1]), filled))
    if not rows and not diamonds:
        return None

    plt = _plt()
    n_rows = len(rows) + len(diamonds)
    fig, ax = plt.subplots(figsize=(5.6, 1.3 + 0.26 * n_rows))
    ys = list(range(n_rows, 0, -1))
    for yy, (_, est, lo, hi) in zip(ys, rows, strict=False):
        ax.plot([lo, hi], [yy, yy], color="0.3", lw=1.2)
        ax.plot([est], [yy], marker="s", color="C0", ms=5)
    for yy, (_, est, lo, hi, filled) in zip(ys[len(rows):], diamonds, strict=True):
        xs, dy = [lo, est, hi, est, lo], [yy, yy + 0.3, yy, yy - 0.3, yy]
        colour = "C3" if filled else "C1"
        ax.fill(xs, dy, color=colour if filled else "none", edgecolor=colour, lw=1.4)
    if rows and diamonds:
        ax.axhline(len(diamonds) + 0.5, color="0.7", lw=0.6)
    ax.axvline(0.0, color="k", lw=0.8, ls="--")
    ax.set_yticks(ys)
    ax.set_yticklabels([_label(r[0]) for r in rows] + [_label(d[0]) for d in diamonds], fontsize=7)
    ax.set_ylim(0.4, n_rows + 0.6)
    lo_all = min([r[2] for r in rows] + [d[2] for d in diamonds] + [0.0])
    hi_all = max([r[3] for r in rows] + [d[3] for d in diamonds] + [0.0])
    pad = 0.05 * max(hi_all - lo_all, 0.1)
    ax.set_xlim(max(-1.05, lo_all - pad), min(1.05, hi_all + pad))
    pct = f"{getattr(result, 'confidence', 0.95) * 100:g}%"
    ax.set_xlabel(f"{which} correlation ({pct} interval)")
    if title is None:
        title = f"{getattr(result, 'y', 'y')} vs {getattr(result, 'x', 'x')} per stratum"
    ax.set_title(_label(title), fontsize=9)
    ax.grid(alpha=0.3, axis="x")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        _write_atomic(path, data)
    return data


__all__ = ["forest_plot"]
