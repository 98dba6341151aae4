"""The static HTML leaderboard page: one Jinja2 template (autoescaped), sortable tables, embedded plots.

Self-contained: styles, the sorter and the figures (PNG data: URIs) are inline, nothing is fetched
when the page is viewed. Per (dataset, threat) one table and one figure with each model's empirical
robust-accuracy curve and, where lower bounds exist, its certified curve (dashed, the bracket
between the two shaded); a definitions table explains the columns.
"""
from __future__ import annotations

import base64
import datetime as _dt
import math
from typing import Any, cast

import pandas as pd

from .export import COLUMN_DEFINITIONS, display_frame

TEXT_COLS = {"model", "family", "attacks", "flags", "threat", "dataset"}


def _env() -> Any:
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(loader=PackageLoader("robustbench_align.reports", "templates"), autoescape=select_autoescape(["html", "j2"]))


def _rows(df: pd.DataFrame) -> dict[str, Any]:
    disp = display_frame(df)
    rows = []
    for (_, raw), (_, shown) in zip(df.iterrows(), disp.iterrows(), strict=True):  # display_frame keeps the rows
        row = []
        for c in df.columns:
            v = raw[c]
            if isinstance(v, float) and math.isnan(v):
                s = ""
            elif isinstance(v, float) and math.isinf(v):
                s = "1e308" if v > 0 else "-1e308"
            else:
                s = str(v)
            row.append((c, shown[c], s))
        rows.append(row)
    return {"columns": list(df.columns), "rows": rows}


def _b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode("ascii") if data else None


def render_html(board: pd.DataFrame, overall: pd.DataFrame | None = None, *, points: pd.DataFrame | None = None,
                runs: pd.DataFrame | None = None, title: str = "robustbench-align leaderboard", plots: bool = True) -> str:
    """The page as a string; every model/dataset/column name is escaped by Jinja2's autoescape."""
    from . import plots as P

    sections = []
    for key, sub in board.groupby(["dataset", "threat"], sort=True) if not board.empty else []:
        ds, th = cast("tuple[str, str]", key)  # the store's TEXT columns
        sub = sub.drop(columns=["dataset", "threat"]).dropna(axis=1, how="all")
        fig = P.robust_bracket_curves(points, ds, th) if plots and points is not None and not points.empty else None
        sections.append({"dataset": ds, "threat": th, **_rows(sub), "figure": _b64(fig.png) if fig else None,
                         "curves": fig.models if fig else [], "certified": fig.certified if fig else [],
                         "uncertified": [m for m in fig.models if m not in fig.certified] if fig else []})
    figures = []
    if plots and points is not None and not points.empty:
        from ..metrics.stats import correlate

        for th in sorted(points["threat"].dropna().unique()):
            pts = points[(points["threat"] == th) & (points["correct"] == 1)]
            pts = pts[pts["normal_alignment"].notna() & pts["radius"].notna()]
            pts = pts[pts["radius"] < float("inf")]
            if len(pts) >= 4:
                try:
                    res = correlate(pts, x="normal_alignment", y="radius", n_boot=500, n_perm=500)
                except Exception:  # noqa: BLE001 - a figure must not break the page
                    res = None
                data = P.scatter_plot(pts, "normal_alignment", "radius", res)
                if data:
                    figures.append({"alt": f"normal alignment vs radius ({th})", "data": _b64(data)})
        for metric in ("auc", "normal_alignment"):
            data = P.paired_plot(board, "rfm", "rfam", metric)
            if data:
                figures.append({"alt": f"paired RFAM vs RFM ({metric})", "data": _b64(data)})
    tmpl = _env().get_template("leaderboard.html.j2")
    return tmpl.render(
        title=title,
        note="Accuracies in %; radii in the threat model's norm on standardised features. Empirical (attack) and certified "
             "numbers side by side; columns are defined below and in the README.",
        definitions=COLUMN_DEFINITIONS,
        generated=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        overall=_rows(overall) if overall is not None and not overall.empty else None,
        sections=sections, figures=figures, text_cols=TEXT_COLS,
    )
