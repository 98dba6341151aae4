"""Leaderboards as pandas DataFrames, computed from the store's runs and points.

Per (dataset, threat model) one row per model (seeds averaged), ranked; and an overall ranking
across datasets (mean rank). Every column is defined in the README ("Leaderboard columns").

Empirical and certified numbers sit side by side. Per point the store keeps `radius`, the smallest
verified adversarial distance (an upper bound on the true minimal radius), and `lower_bound`, a
certified lower bound (no adversarial strictly closer), so the true radius lies in the bracket
[lower_bound, radius]. Per run ("clean-correct" = the points the model classifies correctly):

- `robust_acc@ε`: share of all points that are clean-correct with radius > ε (empirical: an upper
  bound on the true robust accuracy, a stronger attack can only lower it);
- `certified_acc@ε`: share of all points that are clean-correct with lower_bound > ε (a proved
  lower bound on the true robust accuracy; an adversarial at distance exactly ε is within budget,
  so lower_bound = ε does not certify ε);
- `certified_radius`: median lower_bound over clean-correct points (a missing bound counts as 0);
- `gap`: median over clean-correct points of radius / lower_bound (1 where the two are equal,
  including both 0 or both ∞; ∞ where lower_bound is 0 or missing and radius > 0);
- `exact`: share of clean-correct points whose bracket is closed: the store's `exact` flag where
  set, else lower_bound >= radius·(1 − 1e-6) − 1e-12 with both finite;
- `certifier`: the certifiers that gave the lower bounds (the store's `cert` names).

The four certified columns are NaN for a run none of whose points has a lower bound (no certifier
ran): "not certified", never 0.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from ..attacks.base import strongest_path
from ..attacks.registry import attack_path
from ..metrics.registry import LEADERBOARD_METRICS, OVERALL_METRICS


def _frames_from_records(records: Iterable[Any]) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs, pts = [], []
    for rec in records:
        runs.append(dict(rec.run))
        for p in rec.points:
            pts.append({**p, "run_id": rec.run["run_id"], "model": rec.run.get("model"), "family": rec.run.get("family"),
                        "dataset": rec.run.get("dataset"), "threat": rec.run.get("threat"), "norm": rec.run.get("norm"),
                        "seed": rec.run.get("seed")})
    return pd.DataFrame(runs), pd.DataFrame(pts)


def eps_keys(points: pd.DataFrame) -> list[str]:
    keys: set[str] = set()
    for d in points.get("robust_at", pd.Series(dtype=object)):
        if isinstance(d, dict):
            keys.update(d)
    return sorted(keys, key=float)


EXACT_RTOL, EXACT_ATOL = 1e-6, 1e-12  # lower_bound >= radius * (1 - rtol) - atol closes the bracket (old stores)


def _numeric(p: pd.DataFrame, col: str) -> np.ndarray:
    """Column `col` of the points as float64 (NaN where missing, NULL or not a number)."""
    if col not in p:
        return np.full(len(p), np.nan)
    return pd.to_numeric(p[col], errors="coerce").to_numpy(dtype=float)


def closed_brackets(radius: np.ndarray, lower: np.ndarray, stored: np.ndarray | None = None) -> np.ndarray:
    """Per point: True where the bracket [lower, radius] is closed (lower bound = radius, proved).

    The store's `exact` flag (0/1) is used where it is set; where it is NULL (or the column is
    absent, old stores) the bracket counts as closed iff both ends are finite and
    lower >= radius * (1 - 1e-6) - 1e-12.
    """
    with np.errstate(invalid="ignore"):
        derived = np.isfinite(radius) & np.isfinite(lower) & (lower >= radius * (1 - EXACT_RTOL) - EXACT_ATOL)
    if stored is None:
        return derived
    return np.where(np.isnan(stored), derived, stored > 0.5)


def gap_ratio(radius: np.ndarray, lower: np.ndarray) -> np.ndarray:
    """Per point radius / lower_bound: 1 where equal (both 0, both ∞), ∞ where lower is 0 or NaN and radius > 0.

    NaN where the radius is unknown (NaN).
    """
    lb = np.nan_to_num(lower, nan=0.0, posinf=np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(lb > 0, radius / np.where(lb > 0, lb, 1.0), np.inf)
    ratio = np.where(radius == lb, 1.0, ratio)
    return np.where(np.isnan(radius), np.nan, ratio)


def certified_columns(p: pd.DataFrame, keys: list[str]) -> dict[str, float]:
    """The certified columns of one run's points (see the module docstring); NaN without any lower bound."""
    lower = _numeric(p, "lower_bound")
    out: dict[str, float] = {f"certified_acc@{k}": np.nan for k in keys}
    out.update(certified_radius=np.nan, gap=np.nan, exact=np.nan)
    if not len(p) or np.isnan(lower).all():
        return out
    radius = _numeric(p, "radius")
    correct = _numeric(p, "correct") > 0.5
    for k in keys:
        with np.errstate(invalid="ignore"):
            out[f"certified_acc@{k}"] = float(np.mean(correct & (lower > float(k))))
    if not correct.any():
        out["certified_radius"] = 0.0  # like median_radius: nothing is robust
        return out
    lb_cc = np.nan_to_num(lower[correct], nan=0.0, posinf=np.inf)
    out["certified_radius"] = float(np.median(lb_cc))
    ratio = gap_ratio(radius[correct], lower[correct])
    out["gap"] = float(np.median(ratio[~np.isnan(ratio)])) if (~np.isnan(ratio)).any() else np.nan
    stored = _numeric(p, "exact") if "exact" in p else None
    out["exact"] = float(np.mean(closed_brackets(radius, lower, stored)[correct]))
    return out


NOT_CERTIFIERS = frozenset({"misclassified"})  # per-point notes in the `cert` column that name no certifier


def _certifiers(p: pd.DataFrame) -> str | None:
    """Sorted distinct certifier names of the points that carry a lower bound (reasons such as
    "unsupported: ..." are not names and are left out); None when there are none."""
    if "cert" not in p:
        return None
    lower = _numeric(p, "lower_bound")
    names = {str(c).strip() for c, lb in zip(p["cert"], lower, strict=True) if isinstance(c, str) and not np.isnan(lb)}
    names = {c for c in names if c and ":" not in c and " " not in c and c not in NOT_CERTIFIERS}
    return ", ".join(sorted(names)) or None


def per_run(runs: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """One row per run: clean accuracy, robust and certified accuracy per eps, median and certified radius,
    gap, exact share, AUC, the leaderboard metrics."""
    rows = []
    if runs.empty:
        return pd.DataFrame()
    ok = runs[runs["status"] == "ok"]
    for _, run in ok.iterrows():
        p = points[points["run_id"] == run["run_id"]]
        row: dict[str, Any] = {k: run.get(k) for k in ("run_id", "model", "family", "dataset", "threat", "norm", "seed", "fit_time", "eval_time")}
        row["n_points"] = len(p)
        row["clean_accuracy"] = float(p["correct"].mean()) if len(p) else np.nan
        keys = eps_keys(p)
        for k in keys:
            vals: list[Any] = [d.get(k) for d in p["robust_at"] if isinstance(d, dict) and k in d]
            row[f"robust_acc@{k}"] = float(np.mean(vals)) if vals else np.nan
        radius = pd.to_numeric(p["radius"], errors="coerce").to_numpy(dtype=float) if "radius" in p else np.array([])
        if radius.size and not np.isnan(radius).all():
            correct = p["correct"].to_numpy(dtype=bool)
            row["median_radius"] = float(np.median(radius[correct])) if correct.any() else 0.0
            emax = max(float(k) for k in keys) if keys else np.nan
            row["auc"] = float(np.mean(np.minimum(np.nan_to_num(radius, nan=0.0), emax)) / emax) if keys else np.nan
        else:
            row["median_radius"] = np.nan
            row["auc"] = np.nan
        row.update(certified_columns(p, keys))
        row["certifier"] = _certifiers(p)
        for m in LEADERBOARD_METRICS:
            c = m.name
            row[c] = float(getattr(pd.to_numeric(p[c], errors="coerce"), m.aggregate)()) if c in p and p[c].notna().any() else np.nan
        row["attacks"] = ", ".join(run["attacks"]) if isinstance(run.get("attacks"), list) else (run.get("attacks") or "")
        row["path"] = attack_path(a.strip() for a in row["attacks"].split(",") if a.strip())
        flags = run.get("flags")
        row["flags"] = ", ".join(sorted(flags)) if isinstance(flags, dict) else (flags or "")
        row["rejected"] = run.get("rejected")
        rows.append(row)
    return pd.DataFrame(rows)


def _join_names(s: Iterable[Any]) -> str:
    """The distinct comma-separated names in a column of comma-joined lists, sorted and joined."""
    return ", ".join(sorted({a.strip() for x in s if x is not None and not (isinstance(x, float) and np.isnan(x)) for a in str(x).split(",") if a.strip()}))


def _rank_key(df: pd.DataFrame) -> pd.Series:
    """Higher is better: AUC where radii exist, else the mean robust accuracy over the eps grid."""
    rob = [c for c in df.columns if c.startswith("robust_acc@")]
    mean_rob = df[rob].mean(axis=1) if rob else pd.Series(np.nan, index=df.index)
    return df["auc"].where(df["auc"].notna(), mean_rob)


def leaderboard_from_frames(runs: pd.DataFrame, points: pd.DataFrame, dataset: str | None = None, threat: str | None = None) -> pd.DataFrame:
    """The ranked leaderboard per (dataset, threat): seeds averaged, rank 1 = most robust."""
    pr = per_run(runs, points)
    if pr.empty:
        return pr
    if dataset is not None:
        pr = pr[pr["dataset"] == dataset]
    if threat is not None:
        pr = pr[pr["threat"] == threat]
    text = ("run_id", "model", "family", "dataset", "threat", "norm", "attacks", "path", "flags", "seed", "certifier")
    num = [c for c in pr.columns if c not in text]
    agg: dict[str, Any] = dict.fromkeys(num, "mean")
    agg.update({"family": "first", "norm": "first", "path": strongest_path, "attacks": _join_names, "flags": _join_names,
                "certifier": lambda s: _join_names(s) or None, "seed": "count"})
    g = pr.groupby(["dataset", "threat", "model"], as_index=False).agg(agg).rename(columns={"seed": "seeds"})
    g["score"] = _rank_key(g)
    g["rank"] = g.groupby(["dataset", "threat"])["score"].rank(ascending=False, method="min")
    g = g.sort_values(["dataset", "threat", "rank", "clean_accuracy"], ascending=[True, True, True, False])
    eps = sorted({c.split("@", 1)[1] for c in g.columns if c.startswith(("robust_acc@", "certified_acc@"))}, key=float)
    acc = [c for e in eps for c in (f"robust_acc@{e}", f"certified_acc@{e}")]  # empirical and certified side by side
    cols = ["dataset", "threat", "rank", "model", "family", "path", "clean_accuracy", *acc, "median_radius", "certified_radius", "gap",
            "exact", "auc", "certifier",
            *[m.name for m in LEADERBOARD_METRICS], "attacks", "flags", "rejected", "fit_time", "eval_time", "seeds", "n_points"]
    out = g[[c for c in cols if c in g.columns]].reset_index(drop=True)
    out["rank"] = out["rank"].astype(int)
    return out


def overall_ranking(board: pd.DataFrame) -> pd.DataFrame:
    """Mean rank of each model across datasets, per threat model (lower is better)."""
    if board.empty:
        return board
    g = board.groupby(["threat", "model"], as_index=False).agg(
        family=("family", "first"), mean_rank=("rank", "mean"), datasets=("dataset", "nunique"),
        clean_accuracy=("clean_accuracy", "mean"), auc=("auc", "mean"), **{m.name: (m.name, "mean") for m in OVERALL_METRICS})
    g["overall_rank"] = g.groupby("threat")["mean_rank"].rank(method="min").astype(int)
    return g.sort_values(["threat", "overall_rank"]).reset_index(drop=True)[
        ["threat", "overall_rank", "model", "family", "mean_rank", "datasets", "clean_accuracy", "auc", *[m.name for m in OVERALL_METRICS]]]


def leaderboard(store: str | os.PathLike = "reports/results.sqlite", *, dataset: str | None = None, threat: str | None = None) -> pd.DataFrame:
    """The leaderboard DataFrame from a store file (see README for the columns)."""
    from ..runner.store import Store

    with Store(store, readonly=True) as st:
        return leaderboard_from_frames(st.runs(), st.points(), dataset=dataset, threat=threat)


def summarize_runs(records: Iterable[Any]) -> pd.DataFrame:
    """Leaderboard-style rows for freshly computed records (used by `evaluate`)."""
    runs, pts = _frames_from_records(list(records))
    if runs.empty or pts.empty:
        return pd.DataFrame()
    board = leaderboard_from_frames(runs, pts)
    return board.drop(columns=["rank"], errors="ignore")
