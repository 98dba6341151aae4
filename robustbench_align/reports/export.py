"""Renderings of leaderboard frames: Markdown, CSV, LaTeX and RobustBench-like JSON rows."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..metrics.registry import LEADERBOARD_METRICS

FORMATS = ("md", "html", "latex", "csv", "json")

_PCT = ("clean_accuracy", "exact", "certified")  # "certified": the exact share's name in older boards

EXACT_MARK = "✓"  # shown beside an exact share of 100 %
EXACT_RADIUS = " (exact)"  # appended to median_radius where every bracket is closed

# One line per column, shown under the Markdown tables and on the HTML page (no `<`/`>`: the
# Markdown page keeps none). ε is the budget in the threat model's norm.
COLUMN_DEFINITIONS: tuple[tuple[str, str], ...] = (
    ("rank", "rank within (dataset, threat model): 1 + the number of models significantly better on the same points "
             "(paired sign-flip test of per-point auc contributions, fixed-ε threat models: of mean robustness over ε; "
             "Holm-adjusted over the block's pairs, level 0.05); 2= means another model shares rank 2"),
    ("[lo, hi]", "95% percentile-bootstrap interval of the number over test points, resampled within each seed "
                 "(exact Clopper–Pearson interval where every point of a proportion has the same outcome)"),
    ("clean_accuracy", "% of evaluated test points classified correctly (clean-correct)"),
    ("robust_acc@ε", "% of all evaluated points that are clean-correct with no verified adversarial within ε: "
                     "empirical, an upper bound on the true robust accuracy (a stronger attack can only lower it)"),
    ("certified_acc@ε", "% of all evaluated points that are clean-correct with a certified lower bound exceeding ε "
                        "(no adversarial within ε, proved): a lower bound on the true robust accuracy; – where no certifier ran"),
    ("median_radius", "median smallest verified adversarial distance over clean-correct points (upper end of the bracket; "
                      "∞ if none was found); marked (exact) where every bracket is closed"),
    ("certified_radius", "median certified lower bound over clean-correct points (lower end of the bracket; "
                         "a point without a bound counts as 0; – where no certifier ran)"),
    ("gap", "median over clean-correct points of radius / certified lower bound: 1.00 = bracket closed, "
            "∞ = nothing proved below a found adversarial"),
    ("exact", "% of clean-correct points whose bracket is closed (lower bound = radius, proved by a complete method); ✓ = all"),
    ("auc", "normalised area under the robust-accuracy-vs-ε curve on [0, ε_max] = mean(min(radius, ε_max)) / ε_max"),
    ("certifier", "the certifiers that gave the lower bounds"),
    ("tied_with", "the models of the block not significantly different from this one"),
    ("mean_rank", "overall ranking: mean of the per-dataset ranks, descriptive; its interval is a bootstrap over datasets"),
)


def _fmt(v: Any, col: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (float, np.floating)):
        if col.startswith(("robust_acc@", "certified_acc@")) or col in _PCT:
            return f"{100 * v:.1f}"
        if col in ("fit_time", "eval_time"):
            return f"{v:.1f}"
        if math.isinf(v):
            return "∞"
        if col == "gap":
            return f"{v:.2f}"
        return f"{v:.3g}" if abs(float(v)) < 1000 else f"{v:.0f}"
    return str(v)


def is_exact(v: Any) -> bool:
    """True for an exact share of 1 (every clean-correct point's bracket closed, in every seed)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return False
    return math.isfinite(f) and f >= 1 - 1e-9


def bound_columns(board: pd.DataFrame) -> list[str]:
    """The `<col>_lo`/`<col>_hi` interval columns of a board (those whose `<col>` is a column too)."""
    return [c for c in board.columns if c.endswith(("_lo", "_hi")) and c[:-3] in board.columns]


def display_frame(board: pd.DataFrame) -> pd.DataFrame:
    """Human-readable strings (percentages for accuracies); column names kept, interval columns folded in.

    A number with an interval (`<col>_lo`, `<col>_hi` in the board) reads "v [lo, hi]"; the bound
    columns themselves are not shown. `rank` reads "2=" when another model of the block shares it.
    A row whose `exact` share is 1 shows ✓ beside it and "(exact)" after its median radius: the
    radius is then the minimal adversarial distance, not only an upper bound on it.
    """
    bounds = set(bound_columns(board))
    shown = [c for c in board.columns if c not in bounds]
    disp = pd.DataFrame({c: [_fmt(v, c) for v in board[c]] for c in shown}, index=board.index)
    share = "exact" if "exact" in board else "certified" if "certified" in board else None
    if share is not None:
        closed = np.array([is_exact(v) for v in board[share]], dtype=bool)
        if closed.any():
            disp.loc[closed, share] = disp.loc[closed, share] + " " + EXACT_MARK
            if "median_radius" in disp:
                has = closed & board["median_radius"].notna().to_numpy()
                disp.loc[has, "median_radius"] = disp.loc[has, "median_radius"] + EXACT_RADIUS
    for c in shown:
        if f"{c}_lo" in bounds and f"{c}_hi" in bounds:
            lo, hi = board[f"{c}_lo"], board[f"{c}_hi"]
            has = (lo.notna() & hi.notna() & board[c].notna()).to_numpy()
            if has.any():
                text = [f"{v} [{_fmt(a, c)}, {_fmt(b, c)}]" for v, a, b in zip(disp[c], lo, hi, strict=True)]
                disp[c] = np.where(has, text, disp[c])
    if "rank" in board and {"dataset", "threat"} <= set(board.columns):
        shared = board.groupby(["dataset", "threat"])["rank"].transform(lambda r: r.map(r.value_counts()) > 1).to_numpy(dtype=bool)
        disp.loc[shared, "rank"] = disp.loc[shared, "rank"] + "="
    return disp


def _md_escape(s: object) -> str:
    s = " ".join(str(s).splitlines())  # \n, \r, \r\n, U+2028 ... all end a Markdown table row
    return (s.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
            .replace("`", "\\`").replace("[", "\\[").replace("]", "\\]"))


def to_markdown(board: pd.DataFrame, overall: pd.DataFrame | None = None, title: str = "Leaderboard") -> str:
    """Markdown: one table per (dataset, threat), then the overall ranking."""
    lines = [f"# {_md_escape(title)}", ""]
    if board.empty:
        return "\n".join(lines + ["No finished runs."])
    lines += ["Accuracies in %; radii in the threat model's norm on standardised features. Empirical (attack) and certified "
              "numbers side by side; columns are defined at the end and in the README.", ""]
    if overall is not None and not overall.empty:
        lines += ["## Overall ranking (mean rank across datasets; descriptive, interval = bootstrap over datasets)", ""]
        lines += _md_table(overall)
    for (ds, th), sub in board.groupby(["dataset", "threat"], sort=True):
        lines += [f"## {_md_escape(ds)} — {_md_escape(th)}", ""]
        sub = sub.drop(columns=["dataset", "threat"]).dropna(axis=1, how="all")
        lines += _md_table(sub)
    lines += ["## Column definitions", ""]
    lines += [f"- `{name}`: {text}" for name, text in COLUMN_DEFINITIONS]
    return "\n".join(lines) + "\n"


def _md_table(df: pd.DataFrame) -> list[str]:
    disp = display_frame(df)
    head = "| " + " | ".join(_md_escape(c) for c in disp.columns) + " |"
    sep = "|" + "|".join("---" for _ in disp.columns) + "|"
    body = ["| " + " | ".join(_md_escape(v) for v in row) + " |" for row in disp.itertuples(index=False)]
    return [head, sep, *body, ""]


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", "\\": r"\textbackslash{}", "<": r"\textless{}", ">": r"\textgreater{}",
                  "∞": r"\ensuremath{\infty}", "✓": r"\ensuremath{\checkmark}", "–": "--"}  # \checkmark: amssymb


def _tex(s: Any) -> str:
    s = " ".join(str(s).splitlines())  # a blank line would start a paragraph inside a tabular cell
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in s)


def to_latex(board: pd.DataFrame) -> str:
    """A booktabs LaTeX table per (dataset, threat), with every cell escaped."""
    out = []
    for (ds, th), sub in board.groupby(["dataset", "threat"], sort=True):
        sub = sub.drop(columns=["dataset", "threat", "attacks", "flags", "tied_with"], errors="ignore").dropna(axis=1, how="all")
        disp = display_frame(sub)
        out.append(r"\begin{table}[t]\centering\small")
        out.append(rf"\caption{{Robustness leaderboard: {_tex(ds)}, threat model {_tex(th)}. "
                   r"robust\_acc: empirical (an upper bound on the true robust accuracy); "
                   r"certified\_acc: proved (a lower bound).}")
        out.append(r"\begin{tabular}{" + "l" * 2 + "r" * (len(disp.columns) - 2) + "}")
        out.append(r"\toprule")
        out.append(" & ".join(_tex(c) for c in disp.columns) + r" \\")
        out.append(r"\midrule")
        for row in disp.itertuples(index=False):
            out.append(" & ".join(_tex(v) for v in row) + r" \\")
        out.append(r"\bottomrule\end{tabular}\end{table}")
        out.append("")
    return "\n".join(out)


def _num(v: Any) -> Any:
    if v is None:
        return None
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        v = float(v)
        return None if math.isnan(v) else (v if math.isfinite(v) else ("inf" if v > 0 else "-inf"))
    return v


def _interval(r: pd.Series, col: str) -> tuple[Any, Any]:
    return _num(r.get(f"{col}_lo")), _num(r.get(f"{col}_hi"))


def to_json_rows(board: pd.DataFrame) -> list[dict[str, Any]]:
    """One RobustBench-like row per (model, dataset, threat); numbers stay numbers (NaN -> null, ∞ -> "inf").

    `robust_acc` (empirical) and `certified_acc` (proved) per eps, `median_radius` and
    `certified_radius` (the two ends of the bracket), `gap`, `exact_fraction` (also under its older
    key `certified_fraction`) and `certifiers`. Every number with an interval has `<key>_lo` and
    `<key>_hi` beside it (per-eps dicts: `robust_acc_lo`, `robust_acc_hi`, ...); `rank` is
    significance-aware and `tied_with` names the models not significantly different.
    """
    rows = []
    for _, r in board.iterrows():
        eps = sorted([c.split("@", 1)[1] for c in board.columns
                      if c.startswith("robust_acc@") and not c.endswith(("_lo", "_hi")) and not pd.isna(r[c])], key=float)
        exact = r.get("exact") if "exact" in board else r.get("certified")  # boards written before the rename
        row: dict[str, Any] = {
            "name": r["model"], "model": r["model"], "family": r.get("family"), "path": r.get("path"), "dataset": r["dataset"],
            "threat_model": r["threat"],
            "rank": _num(r.get("rank")), "tied_with": [a.strip() for a in _text(r.get("tied_with")).split(",") if a.strip()],
            "clean_acc": _num(r.get("clean_accuracy")),
            "eps": [float(e) for e in eps], "robust_acc": {e: _num(r[f"robust_acc@{e}"]) for e in eps},
            "certified_acc": {e: _num(r.get(f"certified_acc@{e}")) for e in eps},
            "median_radius": _num(r.get("median_radius")), "certified_radius": _num(r.get("certified_radius")), "gap": _num(r.get("gap")),
            "exact_fraction": _num(exact), "certified_fraction": _num(exact),  # certified_fraction: the older key, same number
            "certifiers": [a.strip() for a in _text(r.get("certifier")).split(",") if a.strip()],
            "auc": _num(r.get("auc")),
            **{m.key: _num(r.get(m.name)) for m in LEADERBOARD_METRICS},
            "attacks": [a.strip() for a in str(r.get("attacks") or "").split(",") if a.strip()],
            "flags": [a.strip() for a in str(r.get("flags") or "").split(",") if a.strip()],
            "rejected_candidates": _num(r.get("rejected")), "fit_time_s": _num(r.get("fit_time")), "eval_time_s": _num(r.get("eval_time")),
            "seeds": _num(r.get("seeds")), "n_points": _num(r.get("n_points")),
        }
        if "clean_accuracy_lo" in board:
            for key, col in (("clean_acc", "clean_accuracy"), ("median_radius", "median_radius"), ("certified_radius", "certified_radius"),
                             ("gap", "gap"), ("exact_fraction", "exact"), ("auc", "auc"), *((m.key, m.name) for m in LEADERBOARD_METRICS)):
                row[f"{key}_lo"], row[f"{key}_hi"] = _interval(r, col)
            for key in ("robust_acc", "certified_acc"):
                row[f"{key}_lo"] = {e: _interval(r, f"{key}@{e}")[0] for e in eps}
                row[f"{key}_hi"] = {e: _interval(r, f"{key}@{e}")[1] for e in eps}
        rows.append(row)
    return rows


def render(board: pd.DataFrame, fmt: str, overall: pd.DataFrame | None = None, **kw: Any) -> str:
    """The leaderboard as text in one of FORMATS."""
    if fmt == "md":
        return to_markdown(board, overall)
    if fmt == "csv":
        import csv

        return board.to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")
    if fmt == "latex":
        return to_latex(board)
    if fmt == "json":
        return json.dumps(to_json_rows(board), indent=1, allow_nan=False)
    if fmt == "html":
        from .html import render_html

        return render_html(board, overall, **kw)
    from ..errors import ConfigError

    raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def write_reports(board: pd.DataFrame, out_dir: str | os.PathLike, overall: pd.DataFrame | None = None,
                  formats: tuple[str, ...] = FORMATS, **html_kw: Any) -> dict[str, Path]:
    """Write leaderboard.{md,html,tex,csv,json} into out_dir (each file replaced atomically)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ext = {"md": "md", "html": "html", "latex": "tex", "csv": "csv", "json": "json"}
    written = {}
    for fmt in formats:
        path = out / f"leaderboard.{ext[fmt]}"
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(render(board, fmt, overall, **html_kw), encoding="utf-8")
        os.replace(tmp, path)
        written[fmt] = path
    return written


def _text(v: Any) -> str:
    """v when it is a string, else "" (NaN/None cells of a text column)."""
    return v if isinstance(v, str) else ""
