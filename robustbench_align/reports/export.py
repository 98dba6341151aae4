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

_PCT = ("clean_accuracy", "certified")


def _fmt(v: Any, col: str) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, (float, np.floating)):
        if col.startswith("robust_acc@") or col in _PCT:
            return f"{100 * v:.1f}"
        if col in ("fit_time", "eval_time"):
            return f"{v:.1f}"
        if math.isinf(v):
            return "∞"
        return f"{v:.3g}" if abs(float(v)) < 1000 else f"{v:.0f}"
    return str(v)


def display_frame(board: pd.DataFrame) -> pd.DataFrame:
    """Human-readable strings (percentages for accuracies); column names kept."""
    return pd.DataFrame({c: [_fmt(v, c) for v in board[c]] for c in board.columns}, index=board.index)


def _md_escape(s: object) -> str:
    s = " ".join(str(s).splitlines())  # \n, \r, \r\n, U+2028 ... all end a Markdown table row
    return (s.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
            .replace("`", "\\`").replace("[", "\\[").replace("]", "\\]"))


def to_markdown(board: pd.DataFrame, overall: pd.DataFrame | None = None, title: str = "Leaderboard") -> str:
    """Markdown: one table per (dataset, threat), then the overall ranking."""
    lines = [f"# {_md_escape(title)}", ""]
    if board.empty:
        return "\n".join(lines + ["No finished runs."])
    lines += ["Accuracies in %; radii in the threat model's norm on standardised features. Columns are defined in the README.", ""]
    if overall is not None and not overall.empty:
        lines += ["## Overall ranking (mean rank across datasets)", ""]
        lines += _md_table(overall)
    for (ds, th), sub in board.groupby(["dataset", "threat"], sort=True):
        lines += [f"## {_md_escape(ds)} — {_md_escape(th)}", ""]
        sub = sub.drop(columns=["dataset", "threat"]).dropna(axis=1, how="all")
        lines += _md_table(sub)
    return "\n".join(lines) + "\n"


def _md_table(df: pd.DataFrame) -> list[str]:
    disp = display_frame(df)
    head = "| " + " | ".join(_md_escape(c) for c in disp.columns) + " |"
    sep = "|" + "|".join("---" for _ in disp.columns) + "|"
    body = ["| " + " | ".join(_md_escape(v) for v in row) + " |" for row in disp.itertuples(index=False)]
    return [head, sep, *body, ""]


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}", "\\": r"\textbackslash{}", "<": r"\textless{}", ">": r"\textgreater{}"}


def _tex(s: Any) -> str:
    s = " ".join(str(s).splitlines())  # a blank line would start a paragraph inside a tabular cell
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in s)


def to_latex(board: pd.DataFrame) -> str:
    """A booktabs LaTeX table per (dataset, threat), with every cell escaped."""
    out = []
    for (ds, th), sub in board.groupby(["dataset", "threat"], sort=True):
        sub = sub.drop(columns=["dataset", "threat", "attacks", "flags"], errors="ignore").dropna(axis=1, how="all")
        disp = display_frame(sub)
        out.append(r"\begin{table}[t]\centering\small")
        out.append(rf"\caption{{Robustness leaderboard: {_tex(ds)}, threat model {_tex(th)}}}")
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


def to_json_rows(board: pd.DataFrame) -> list[dict[str, Any]]:
    """One RobustBench-like row per (model, dataset, threat); numbers stay numbers (NaN -> null)."""
    rows = []
    for _, r in board.iterrows():
        eps = sorted([c.split("@", 1)[1] for c in board.columns if c.startswith("robust_acc@") and not pd.isna(r[c])], key=float)
        rows.append({
            "name": r["model"], "model": r["model"], "family": r.get("family"), "path": r.get("path"), "dataset": r["dataset"],
            "threat_model": r["threat"],
            "rank": _num(r.get("rank")), "clean_acc": _num(r.get("clean_accuracy")),
            "eps": [float(e) for e in eps], "robust_acc": {e: _num(r[f"robust_acc@{e}"]) for e in eps},
            "median_radius": _num(r.get("median_radius")), "auc": _num(r.get("auc")), "certified_fraction": _num(r.get("certified")),
            **{m.key: _num(r.get(m.name)) for m in LEADERBOARD_METRICS},
            "attacks": [a.strip() for a in str(r.get("attacks") or "").split(",") if a.strip()],
            "flags": [a.strip() for a in str(r.get("flags") or "").split(",") if a.strip()],
            "rejected_candidates": _num(r.get("rejected")), "fit_time_s": _num(r.get("fit_time")), "eval_time_s": _num(r.get("eval_time")),
            "seeds": _num(r.get("seeds")), "n_points": _num(r.get("n_points")),
        })
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
