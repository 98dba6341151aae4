"""Leaderboards as pandas DataFrames, computed from the store's runs and points.

Per (dataset, threat model) one row per model (seeds averaged), ranked; and an overall ranking
across datasets (mean rank). Every column is defined in the README ("Leaderboard columns").
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


def per_run(runs: pd.DataFrame, points: pd.DataFrame) -> pd.DataFrame:
    """One row per run: clean accuracy, robust accuracy per eps, median radius, AUC, the leaderboard metrics."""
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
            lb = pd.to_numeric(p.get("lower_bound"), errors="coerce").to_numpy(dtype=float)
            row["certified"] = float(np.mean(np.isfinite(radius) & (lb >= radius * (1 - 1e-6) - 1e-12))) if np.isfinite(lb).any() else np.nan
        else:
            row["median_radius"] = np.nan
            row["auc"] = np.nan
            row["certified"] = np.nan
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
    num = [c for c in pr.columns if c not in ("run_id", "model", "family", "dataset", "threat", "norm", "attacks", "path", "flags", "seed")]
    agg: dict[str, Any] = dict.fromkeys(num, "mean")
    agg.update({"family": "first", "norm": "first", "path": strongest_path, "attacks": lambda s: ", ".join(sorted({a.strip() for x in s for a in str(x).split(",") if a.strip()})),
                "flags": lambda s: ", ".join(sorted({a.strip() for x in s for a in str(x).split(",") if a.strip()})), "seed": "count"})
    g = pr.groupby(["dataset", "threat", "model"], as_index=False).agg(agg).rename(columns={"seed": "seeds"})
    g["score"] = _rank_key(g)
    g["rank"] = g.groupby(["dataset", "threat"])["score"].rank(ascending=False, method="min")
    g = g.sort_values(["dataset", "threat", "rank", "clean_accuracy"], ascending=[True, True, True, False])
    rob = sorted([c for c in g.columns if c.startswith("robust_acc@")], key=lambda c: float(c.split("@")[1]))
    cols = ["dataset", "threat", "rank", "model", "family", "path", "clean_accuracy", *rob, "median_radius", "auc", "certified",
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
