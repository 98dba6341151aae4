"""The static HTML leaderboard page: one Jinja2 template (autoescaped), explorable tables, embedded plots.

Self-contained: styles, the script and the figures (PNG data: URIs) are inline, nothing is fetched
when the page is viewed. What the page shows:

- the overall ranking, then per (dataset, threat) one block: a sortable table and a figure with each
  model's empirical robust-accuracy curve inside its pointwise 95% band and, where lower bounds
  exist, its certified curve (dashed, the bracket between the two hatched);
- selectors for the dataset, the threat model, a model and one ε, reflected in the URL hash
  (`#dataset=wine&threat=linf`, `#model=mlp`, `&eps=0.5`, `&cols=all`) so a view can be linked; a
  chosen model (or a click on its name) gets one table with its rows on every dataset and threat
  model (numbers with intervals, path, certifier and certified columns, flags);
- a compact set of columns per block (rank, model, family, path, clean and robust/certified accuracy
  at each ε, the radii, auc, the alignment means); the others (long lists, timings, counts, gap,
  exact, ...) behind a "more columns" toggle, and the lists also in the model cell's tooltip;
- a definition on every column header (tooltip, and linked to the definitions table for assistive
  technology);
- intervals: a cell of an interval-carrying column shows `display_frame`'s text (`v [lo, hi]`) and
  keeps the raw bounds in `data-lo`/`data-hi`; accuracy cells draw the interval as a thin bar;
- the alignment figures per threat model: alignment vs radius scatter beside its forest plot of the
  per-stratum correlations, then the paired RFAM-vs-RFM comparisons.

Without JavaScript every block and every column is shown. The table data is embedded once as JSON
(every `<`, `>` and `&` escaped, so no text in it can end the script); every name is escaped by
autoescape in the markup and set as text, never as markup, by the script.
"""
from __future__ import annotations

import base64
import datetime as _dt
import json
import math
from collections.abc import Callable
from typing import Any, cast

import pandas as pd

from .export import COLUMN_DEFINITIONS, display_frame, no_rows_note

TEXT_COLS = {"model", "family", "attacks", "flags", "threat", "dataset", "path", "certifier", "tied_with"}
LIST_COLS = {"attacks", "flags", "certifier", "tied_with"}  # comma-joined lists: one line, cut with an ellipsis, full text on hover
COMPACT_COLS = {"rank", "model", "family", "path", "clean_accuracy", "median_radius", "certified_radius", "auc",
                "normal_alignment", "centroid_alignment"}  # and robust_acc@ε / certified_acc@ε
MODEL_VIEW_COLS = (COMPACT_COLS - {"model", "family", "centroid_alignment"}) | {"gap", "exact", "certifier", "flags"}
PCT_COLS = {"clean_accuracy", "exact", "certified"}  # shares shown in %, like robust_acc@ε / certified_acc@ε
BOUND_SUFFIXES = ("_lo", "_hi")
DETAIL_COLS = ("attacks", "flags", "certifier", "tied_with", "seeds", "n_points")  # in the model cell's tooltip

# Columns COLUMN_DEFINITIONS does not define (it takes precedence where it does).
OTHER_DEFINITIONS: tuple[tuple[str, str], ...] = (
    ("model", "registry name, or the name given to an evaluated model"),
    ("family", "the model's family"),
    ("path", "the strongest attack path the model reached: exact (a complete method), gradient (white-box attacks on a "
             "differentiable form) or black-box (the decision-based attack only: radii are upper bounds)"),
    ("tied_with", "the models not significantly different from this one (paired tests, Holm-adjusted); "
                  "a rank shown as 2= is shared with them"),
    ("attacks", "attacks that produced a best adversarial for some point"),
    ("flags", "reliability flags raised by the runs (non-monotone curve, black-box beating white-box, zero gradients, "
              "non-determinism, black_box_only, unsound_certificate, ...)"),
    ("rejected", "candidate adversarials that failed re-verification with the model (not counted)"),
    ("fit_time", "seconds to fit the model (mean over seeds)"),
    ("eval_time", "seconds to run the threat model's attacks and metrics (mean over seeds)"),
    ("seeds", "seeds averaged"),
    ("n_points", "evaluated test points per seed"),
    ("overall_rank", "rank of the model's mean rank across datasets within the threat model; 1 = best"),
    ("mean_rank", "mean of the model's ranks across datasets (lower is better)"),
    ("datasets", "datasets the model was ranked on"),
    ("dataset", "the dataset"),
    ("threat", "the threat model (norm and attack protocol)"),
)


def _metric_definitions() -> tuple[tuple[str, str], ...]:
    from ..metrics.registry import LEADERBOARD_METRICS

    return tuple((m.name, f"{m.aggregate} over a run's points (then over seeds) of {m.description}") for m in LEADERBOARD_METRICS)


def _definitions() -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Every column definition by name, and the ones COLUMN_DEFINITIONS does not hold (a second table)."""
    defs = dict(COLUMN_DEFINITIONS)
    other = [(n, t) for n, t in (*OTHER_DEFINITIONS, *_metric_definitions()) if n not in defs]
    return {**dict(other), **defs}, other


def definition_key(col: str, defs: dict[str, str]) -> str | None:
    """The name under which `col` is defined: itself, `prefix@ε` for `prefix@<eps>`, or the column an
    interval bound `c_lo`/`c_hi` belongs to; None when it is not defined."""
    if col in defs:
        return col
    if "@" in col and (k := col.split("@", 1)[0] + "@ε") in defs:
        return k
    for suf in BOUND_SUFFIXES:
        if col.endswith(suf):
            return definition_key(col[: -len(suf)], defs)
    return None


def _env() -> Any:
    from jinja2 import Environment, PackageLoader, select_autoescape

    return Environment(loader=PackageLoader("robustbench_align.reports", "templates"), autoescape=select_autoescape(["html", "j2"]))


def _is_bound(col: str, columns: Any) -> bool:
    """True for `c_lo`/`c_hi` when `c` is a column too (the interval of c, shown inside c's cell)."""
    return any(col.endswith(s) and col[: -len(s)] in columns for s in BOUND_SUFFIXES)


SIG = 6  # significant digits of the numbers kept for sorting and drawing


def _sort_key(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and math.isinf(v):
        return "1e308" if v > 0 else "-1e308"
    if isinstance(v, float):
        return f"{v:.{SIG}g}"
    return str(v)


def _num(v: Any) -> float | None:
    """A finite JSON number for v (±inf as ±1e308, the sort key the page uses; 6 significant digits),
    None for NaN / not a number."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    if math.isnan(f):
        return None
    return float(f"{f:.{SIG}g}") if math.isfinite(f) else (1e308 if f > 0 else -1e308)


def _bound_attr(v: Any) -> str | None:
    f = _num(v)
    if f is None:
        return None
    return "Infinity" if f >= 1e308 else "-Infinity" if f <= -1e308 else f"{f:.{SIG}g}"


def _is_pct(col: str) -> bool:
    return col in PCT_COLS or col.startswith(("robust_acc@", "certified_acc@"))


def _compact(col: str) -> bool:
    return col in COMPACT_COLS or col.startswith(("robust_acc@", "certified_acc@"))


def _column(col: str, defs: dict[str, str], def_ids: dict[str, str], *, compact: bool | None = None) -> dict[str, Any]:
    key = definition_key(col, defs)
    cls = [c for c, on in (("txt", col in TEXT_COLS), ("long", col in LIST_COLS), ("pct", _is_pct(col)),
                           ("x", not (_compact(col) if compact is None else compact))) if on]
    return {"name": col, "definition": defs[key] if key else col, "def_id": def_ids.get(key or "", ""), "cls": " ".join(cls),
            "model_view": col in MODEL_VIEW_COLS or col.startswith(("robust_acc@", "certified_acc@"))}


def _details(raw: dict[Any, Any]) -> str:
    """The model cell's tooltip: the row's lists and counts that the compact view leaves out."""
    lines = []
    for c in DETAIL_COLS:
        v = raw.get(c)
        if v is None or _sort_key(v) == "":
            continue
        f = _num(v)
        lines.append(f"{c}: {int(f) if f is not None and not isinstance(v, str) and f.is_integer() else v}")
    return "\n".join(lines)


def _table(df: pd.DataFrame, defs: dict[str, str], def_ids: dict[str, str], *, disp: pd.DataFrame | None = None,
           all_compact: bool = False, details: bool = False, hide: tuple[str, ...] = ()) -> dict[str, Any]:
    """Columns (with definitions and display classes) and rows of cells: display text, sort key, interval bounds.

    `disp`: `display_frame` of a frame holding df's rows (the whole board: ties in rank are found
    per dataset and threat); computed from df when None. `hide`: columns of df not shown.
    """
    if disp is None:
        disp = display_frame(df)
    cols = [c for c in df.columns if c in disp.columns and not _is_bound(c, df.columns) and c not in hide]
    columns = [_column(c, defs, def_ids, compact=True if all_compact else None) for c in cols]
    bounded = {c for c in cols if f"{c}_lo" in df.columns and f"{c}_hi" in df.columns}
    shown_rows = disp.loc[df.index, cols].to_dict("records")
    rows = []
    for raw, shown in zip(df.to_dict("records"), shown_rows, strict=True):
        cells = []
        for col in columns:
            c = col["name"]
            lo = _bound_attr(raw[f"{c}_lo"]) if c in bounded else None
            hi = _bound_attr(raw[f"{c}_hi"]) if lo is not None else None
            v = raw[c]
            text = str(shown[c])
            sort = _sort_key(v)
            cell: dict[str, Any] = {"name": c, "text": text, "sort": None if isinstance(v, str) and sort == text else sort, "raw": v,
                                    "cls": col["cls"], "lo": lo if hi is not None else None, "hi": hi, "title": None}
            if cell["lo"] is not None:
                cell["lo_num"], cell["hi_num"] = _num(raw[f"{c}_lo"]), _num(raw[f"{c}_hi"])
            if (c in LIST_COLS or (c in TEXT_COLS and len(text) > 12)) and cell["text"] not in ("", "–"):  # cut with an ellipsis
                cell["title"] = cell["text"]
            if c == "family":
                cell["cls"] = (cell["cls"] + " fam").strip()
            if c == "model":
                cell["cls"] = (cell["cls"] + " model").strip()
                cell["title"] = _details(raw) if details else None
            cells.append(cell)
        rows.append({"model": str(raw.get("model", "")), "threat": str(raw.get("threat", "")), "cells": cells})
    return {"columns": columns, "rows": rows}


def _b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode("ascii") if data else None


def script_json(obj: Any) -> str:
    """JSON text that is safe inside a <script> element: `<`, `>` and `&` as \\u escapes (no `</script>`,
    no `<!--`), every non-ASCII character escaped too (U+2028/U+2029 among them)."""
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _json_cell(cell: dict[str, Any]) -> list[Any]:
    """[text, sort key, lo, hi]: the sort key is a number, a string or null (sort by the text); lo, hi only with an interval."""
    raw = cell["raw"]
    sort: Any = cell["sort"] if isinstance(raw, str) else _num(raw)
    out = [cell["text"], sort]
    if cell["lo"] is not None:
        out += [cell["lo_num"], cell["hi_num"]]
    return out


def _eps_key(e: str) -> tuple[float, str]:
    f = _num(e)
    return (f if f is not None else math.inf, e)


def _page_data(sections: list[dict[str, Any]], board: pd.DataFrame, defs: dict[str, str], def_ids: dict[str, str]) -> dict[str, Any]:
    """What the script needs: the union of the blocks' columns (board order) and every row's cells."""
    seen: dict[str, dict[str, Any]] = {}
    for sec in sections:
        for col in sec["columns"]:
            seen.setdefault(col["name"], col)
    order = [c for c in board.columns if c in seen]
    columns = [{"name": c, "def": seen[c]["definition"], "cls": seen[c]["cls"], "model_view": seen[c]["model_view"]} for c in order]
    rows = []
    for b, sec in enumerate(sections):
        for row in sec["rows"]:
            cells = {cell["name"]: _json_cell(cell) for cell in row["cells"]}
            family = cells.get("family", [""])[0]
            rows.append({"block": b, "dataset": sec["dataset"], "threat": sec["threat"], "model": row["model"], "family": family, "cells": cells})
    return {"columns": columns, "rows": rows,
            "blocks": [{"id": sec["id"], "dataset": sec["dataset"], "threat": sec["threat"]} for sec in sections],
            "datasets": sorted({s["dataset"] for s in sections}), "threats": sorted({s["threat"] for s in sections}),
            "models": sorted({r["model"] for r in rows}), "def_ids": def_ids,
            "eps": sorted({c.split("@", 1)[1] for c in order if c.startswith(("robust_acc@", "certified_acc@"))}, key=_eps_key),
            "fixed": [{"name": c, "def": defs.get(c, c), "cls": "txt", "model_view": True} for c in ("dataset", "threat")]}


def _alignment_figures(points: pd.DataFrame, board: pd.DataFrame) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per threat model the alignment-vs-radius scatter and its forest plot; the paired RFAM-vs-RFM figures."""
    from ..metrics.stats import correlate
    from . import plots as P

    forest_plot: Callable[..., bytes | None] | None
    try:
        from .forest import forest_plot
    except ImportError:  # an older checkout without the forest plot: the scatter alone
        forest_plot = None
    per_threat = []
    for th in sorted(points["threat"].dropna().unique()):
        pts = points[(points["threat"] == th) & (points["correct"] == 1)]
        pts = pts[pts["normal_alignment"].notna() & pts["radius"].notna()]
        pts = pts[pts["radius"] < float("inf")]
        if len(pts) < 4:
            continue
        try:
            res = correlate(pts, x="normal_alignment", y="radius", n_boot=500, n_perm=500)
        except Exception:  # noqa: BLE001 - a figure must not break the page
            res = None
        figs = []
        data = P.scatter_plot(pts, "normal_alignment", "radius", res)
        if data:
            figs.append({"alt": f"normal alignment vs radius ({th})", "data": _b64(data), "cls": "scatter"})
        if forest_plot is not None and res is not None:
            try:
                fdata = forest_plot(res, title=f"Spearman ρ, normal alignment vs radius ({th})")
            except Exception:  # noqa: BLE001 - a figure must not break the page
                fdata = None
            if fdata:
                figs.append({"alt": f"forest plot: Spearman correlation per stratum ({th})", "data": _b64(fdata), "cls": "forest"})
        if figs:
            per_threat.append({"threat": str(th), "figures": figs})
    paired = []
    for metric in ("auc", "normal_alignment"):
        data = P.paired_plot(board, "rfm", "rfam", metric)
        if data:
            paired.append({"alt": f"paired RFAM vs RFM ({metric})", "data": _b64(data)})
    return per_threat, paired


def render_html(board: pd.DataFrame, overall: pd.DataFrame | None = None, *, points: pd.DataFrame | None = None,
                runs: pd.DataFrame | None = None, title: str = "robustbench-align leaderboard", plots: bool = True) -> str:
    """The page as a string; every model/dataset/column name is escaped by Jinja2's autoescape.

    A board without rows gives a page whose note says why (`no_rows_note(runs)`, with the failure reasons).
    """
    from . import plots as P

    defs, other = _definitions()
    def_ids = {name: f"def-{i}" for i, (name, _) in enumerate([*COLUMN_DEFINITIONS, *other])}
    have_points = plots and points is not None and not points.empty
    sections: list[dict[str, Any]] = []
    disp = display_frame(board) if not board.empty else None
    for key, sub in board.groupby(["dataset", "threat"], sort=True) if not board.empty else []:
        ds, th = cast("tuple[str, str]", key)  # the store's TEXT columns
        sub = sub.dropna(axis=1, how="all")
        fig = P.robust_bracket_curves(cast("pd.DataFrame", points), ds, th) if have_points else None
        sections.append({"id": f"block-{len(sections)}", "dataset": ds, "threat": th,
                         **_table(sub, defs, def_ids, disp=disp, details=True, hide=("dataset", "threat")),
                         "figure": _b64(fig.png) if fig else None, "curves": fig.models if fig else [],
                         "certified": fig.certified if fig else [], "banded": fig.banded if fig else [],
                         "uncertified": [m for m in fig.models if m not in fig.certified] if fig else []})
    per_threat, paired = _alignment_figures(cast("pd.DataFrame", points), board) if have_points else ([], [])
    tmpl = _env().get_template("leaderboard.html.j2")
    note = ("Accuracies in %; radii in the threat model's norm on standardised features. Empirical (attack) and certified "
            "numbers side by side, with 95% intervals in brackets where the board has them (under an accuracy, a thin bar "
            "marks its interval on the 0–100 % scale); columns are defined below and in the README.")
    if not sections:
        sentence, reasons = no_rows_note(runs)
        note = " ".join([sentence, *(f"Failure: {r}." for r in reasons)])
    return tmpl.render(
        title=title,
        note=note,
        definitions=COLUMN_DEFINITIONS, other_definitions=other, def_ids=def_ids,
        generated=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        overall=_table(overall, defs, def_ids, all_compact=True) if overall is not None and not overall.empty else None,
        sections=sections, alignment=per_threat, paired=paired,
        data_json=_markup(script_json(_page_data(sections, board, defs, def_ids))),
    )


def _markup(text: str) -> Any:
    from markupsafe import Markup

    return Markup(text)  # noqa: S704 - script_json escaped every character that could end the script
