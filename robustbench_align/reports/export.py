"""Renderings of leaderboard frames: Markdown, CSV, LaTeX and RobustBench-like JSON rows.

Output hygiene: every name is escaped for its format. Markdown and LaTeX show control characters
(C0, DEL, C1) and bidirectional-override marks visibly (ESC as `\\x1b`, see `visible`); JSON escapes
them (`\\u001b`); HTML and CSV keep the exact text (`terminal_safe` escapes them where text goes to a
terminal). In CSV a text cell that a spreadsheet would read as a formula (starting with `=`, `+`, `-`,
`@`, tab or carriage return) is prefixed with `'`; numbers stay numbers. A board without rows renders
as a note saying why (no runs, every run failed, with the reasons, or none in the selection).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import OutputError, first_line
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


# Characters that act on a terminal or reorder text invisibly: C0 controls, DEL, C1 controls, the
# bidirectional marks, overrides and isolates, and the Unicode line/paragraph separators.
_UNSAFE_CELL = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_UNSAFE_TEXT = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")  # keeps \t, \n


def _escape_char(m: re.Match[str]) -> str:
    o = ord(m.group())
    return f"\\x{o:02x}" if o < 0x100 else f"\\u{o:04x}"


def visible(s: object) -> str:
    """str(s) with every control character (C0 including tab and newline, DEL, C1) and every bidirectional
    mark/override/isolate written as a visible escape: ESC as `\\x1b`, U+202E as `\\u202e`; other text unchanged."""
    return _UNSAFE_CELL.sub(_escape_char, str(s))


def terminal_safe(text: str) -> str:
    """text safe to print on a terminal: the characters `visible` escapes, except newline and tab, escaped the same way."""
    return _UNSAFE_TEXT.sub(_escape_char, text)


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
    s = visible(" ".join(str(s).splitlines()))  # \n, \r, \r\n, U+2028 ... all end a Markdown table row
    return (s.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
            .replace("`", "\\`").replace("[", "\\[").replace("]", "\\]"))


def no_rows_note(runs: pd.DataFrame | None) -> tuple[str, list[str]]:
    """Why a board has no rows, as (sentence, reasons): no runs in the store, every run failed (reasons: the
    distinct first lines of the runs' errors, with how many runs and an example run each, at most 5), or
    successful runs exist but none matches the selection. The texts are raw: escape them for the format."""
    if runs is None or runs.empty or "status" not in runs:
        return "No runs in the store yet; run 'rba run' or 'rba evaluate' first.", []
    ok = int((runs["status"] == "ok").sum())
    if ok:
        return f"No leaderboard rows: none of the {ok} successful runs matches this selection.", []
    groups: dict[str, list[str]] = {}
    for _, r in runs.iterrows():
        err = r.get("error")
        reason = first_line_text(err) if isinstance(err, str) and err.strip() else f"status {r.get('status')!s}, no error recorded"
        where = f"{r.get('model')} on {r.get('dataset')}/{r.get('threat')} seed {r.get('seed')}"
        groups.setdefault(reason[:200], []).append(where)
    ordered = sorted(groups.items(), key=lambda kv: -len(kv[1]))
    reasons = [f"{reason} ({len(w)} run{'s' if len(w) > 1 else ''}, e.g. {w[0]})" for reason, w in ordered[:5]]
    if len(ordered) > 5:
        reasons.append(f"and {len(ordered) - 5} more distinct errors")
    n = len(runs)
    return (f"No successful runs: {'the only run' if n == 1 else f'all {n} runs'} failed; fix the cause and rerun "
            "('rba run --retry-failed' recomputes failed runs).", reasons)


def first_line_text(text: str) -> str:
    """The first non-empty line of text, stripped."""
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def to_markdown(board: pd.DataFrame, overall: pd.DataFrame | None = None, title: str = "Leaderboard",
                runs: pd.DataFrame | None = None) -> str:
    """Markdown: one table per (dataset, threat), then the overall ranking.

    A board without rows gives the title and `no_rows_note(runs)`: the sentence and the failure reasons as a list.
    """
    lines = [f"# {_md_escape(title)}", ""]
    if board.empty or not {"dataset", "threat"} <= set(board.columns):
        sentence, reasons = no_rows_note(runs)
        return "\n".join([*lines, _md_escape(sentence), *([""] if reasons else []), *(f"- {_md_escape(r)}" for r in reasons)]) + "\n"
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
    s = visible(" ".join(str(s).splitlines()))  # a blank line would start a paragraph inside a tabular cell
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in s)


def to_latex(board: pd.DataFrame, runs: pd.DataFrame | None = None) -> str:
    """A booktabs LaTeX table per (dataset, threat), with every cell escaped.

    A board without rows gives `no_rows_note(runs)` as a paragraph (and the failure reasons as a list).
    """
    if board.empty or not {"dataset", "threat"} <= set(board.columns):
        sentence, reasons = no_rows_note(runs)
        items = [r"\begin{itemize}", *(rf"\item {_tex(r)}" for r in reasons), r"\end{itemize}"] if reasons else []
        return "\n".join([rf"\noindent Robustness leaderboard: {_tex(sentence)}\par", *items, ""])
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


# What a spreadsheet reads as the start of a formula (OWASP CSV injection), with the full-width forms.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def csv_cell(v: Any) -> Any:
    """v, with a text value that starts like a formula (FORMULA_PREFIXES) prefixed by `'`; numbers and other values unchanged."""
    return "'" + v if isinstance(v, str) and v.startswith(FORMULA_PREFIXES) else v


def csv_safe(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of df whose text cells and column names pass through `csv_cell`; numeric columns are untouched."""
    out = df.rename(columns=lambda c: csv_cell(c) if isinstance(c, str) else c)
    for c in out.columns:
        if out[c].dtype == object or pd.api.types.is_string_dtype(out[c].dtype):
            out[c] = out[c].map(csv_cell)
    return out


def to_csv(board: pd.DataFrame) -> str:
    """The board as CSV: text quoted, numbers bare, formula-like text neutralised by `csv_safe`."""
    import csv

    return csv_safe(board).to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n")


def render(board: pd.DataFrame, fmt: str, overall: pd.DataFrame | None = None, **kw: Any) -> str:
    """The leaderboard as text in one of FORMATS (kw: render_html's keywords; `runs` also explains an empty board)."""
    if fmt == "md":
        return to_markdown(board, overall, runs=kw.get("runs"))
    if fmt == "csv":
        return to_csv(board)
    if fmt == "latex":
        return to_latex(board, runs=kw.get("runs"))
    if fmt == "json":
        return json.dumps(to_json_rows(board), indent=1, allow_nan=False)
    if fmt == "html":
        from .html import render_html

        return render_html(board, overall, **kw)
    from ..errors import ConfigError

    raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _why(path: Path, exc: BaseException) -> str:
    """The reason a write to path failed, in words: an ancestor that is a file, else the OS's reason."""
    try:
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    return f"{str(parent)!r} is a file, not a directory"
                break
    except (OSError, ValueError):
        pass
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return first_line(exc, with_type=False)


def _unwritable_dir(out: Path) -> str | None:
    """None when directory out exists (created with its parents if missing) and a file can be created in
    it (a probe file is created and removed); else the reason, in words."""
    try:
        if str(out) == "" or "\x00" in str(out):
            raise ValueError("invalid path (empty or with a NUL byte)")
        if out.exists() and not out.is_dir():
            return f"{str(out)!r} is a file, not a directory"
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".rba-write-check.{os.getpid()}"
        probe.touch()
        probe.unlink()
    except (OSError, ValueError) as exc:
        return _why(out, exc)
    return None


def prepare_output_dir(path: str | os.PathLike, hint: str = "choose a writable directory") -> Path:
    """path as a Path, created with its parents and checked writable (a probe file is created and removed).

    Raises OutputError (one line: the path, the reason and `hint`) for a read-only directory, a path
    that is or runs through a file, or an invalid path (empty, a NUL byte, too long).
    """
    why = _unwritable_dir(Path(path)) if str(path) != "" else "invalid path (empty)"
    if why is not None:
        raise OutputError(f"cannot write to directory {str(path)!r}: {why}; {hint}")
    return Path(path)


def prepare_output_file(path: str | os.PathLike, hint: str = "choose a writable file path") -> Path:
    """path as a Path whose directory exists (created if missing) and is writable.

    Raises OutputError (one line: the path, the reason and `hint`) for a directory, a path whose
    directory is read-only or runs through a file, or an invalid path (empty, a NUL byte, too long).
    """
    out = Path(path)
    try:
        if str(path) == "" or "\x00" in str(path) or out.name in ("", ".", ".."):
            why: str | None = "invalid path (empty, a NUL byte or no file name)"
        elif out.is_dir():
            why = "it is a directory"
        else:
            why = _unwritable_dir(out.parent)
    except (OSError, ValueError) as exc:
        why = _why(out, exc)
    if why is not None:
        raise OutputError(f"cannot write {str(path)!r}: {why}; {hint}")
    return out


def write_text_atomic(path: str | os.PathLike, text: str, hint: str = "choose a writable file path") -> Path:
    """Write text (UTF-8) to path through a temporary file beside it, then replace path in one step.

    Missing directories are created. OutputError (one line: the path, the reason, `hint`) when it
    cannot be written; no temporary file is left behind.
    """
    out = prepare_output_file(path, hint)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except (OSError, ValueError) as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write {str(path)!r}: {_why(out, exc)}; {hint}") from None
    return out


def write_reports(board: pd.DataFrame, out_dir: str | os.PathLike, overall: pd.DataFrame | None = None,
                  formats: tuple[str, ...] = FORMATS, *, hint: str = "choose a writable directory", **html_kw: Any) -> dict[str, Path]:
    """Write leaderboard.{md,html,tex,csv,json} into out_dir (created if missing; each file replaced atomically).

    A board without rows is written too: each text report says why (`no_rows_note` of `html_kw["runs"]`),
    the CSV holds no rows and the JSON is `[]`. OutputError (one line naming the path, the reason and
    `hint`) when out_dir cannot be written.
    """
    out = prepare_output_dir(out_dir, hint)
    ext = {"md": "md", "html": "html", "latex": "tex", "csv": "csv", "json": "json"}
    written = {}
    for fmt in formats:
        written[fmt] = write_text_atomic(out / f"leaderboard.{ext[fmt]}", render(board, fmt, overall, **html_kw), hint)
    return written


def _text(v: Any) -> str:
    """v when it is a string, else "" (NaN/None cells of a text column)."""
    return v if isinstance(v, str) else ""
