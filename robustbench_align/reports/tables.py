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
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from ..attacks.base import strongest_path
from ..attacks.registry import attack_path
from ..metrics.intervals import ALPHA, DEFAULT_BOOT, DEFAULT_CONFIDENCE, DEFAULT_PERM, RankGroups, clopper_pearson, percentile_interval, rank_groups
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


# ----------------------------------------------------------------------------------------
# Per-run statistics, vectorised over bootstrap replicates
# ----------------------------------------------------------------------------------------
# Every number of a run is a statistic of its per-point arrays; `_run_stats` evaluates all of
# them for a (B, n) matrix of point indices. The point estimate is the identity row, a bootstrap
# replicate is a resampled row: one definition serves both.
def _run_arrays(p: pd.DataFrame, keys: list[str]) -> dict[str, Any]:
    """The per-point arrays a run's numbers are computed from."""
    n = len(p)
    correct = _numeric(p, "correct") > 0.5
    radius = _numeric(p, "radius")
    lower = _numeric(p, "lower_bound")
    robust = np.full((n, len(keys)), np.nan)
    if keys and "robust_at" in p:
        for i, d in enumerate(p["robust_at"]):
            if isinstance(d, dict):
                for j, k in enumerate(keys):
                    if k in d and d[k] is not None:
                        robust[i, j] = float(d[k])
    stored = _numeric(p, "exact") if "exact" in p else None
    metrics = {m.name: _numeric(p, m.name) for m in LEADERBOARD_METRICS}
    return {"n": n, "keys": keys, "correct": correct, "radius": radius, "lower": lower, "robust": robust,
            "has_radius": bool(n and not np.isnan(radius).all()), "has_lower": bool(n and not np.isnan(lower).all()),
            "closed": closed_brackets(radius, lower, stored), "gap": gap_ratio(radius, lower), "metrics": metrics}


def _masked_median(v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Row-wise median of v where mask (NaN entries ignored); NaN for a row with no such entry.

    Sorting puts NaN last (after +inf), so the median is read off the first `count` entries.
    """
    w = np.sort(np.where(mask, v, np.nan), axis=1)
    cnt = (mask & ~np.isnan(v)).sum(axis=1)
    rows = np.arange(w.shape[0])
    lo = w[rows, np.maximum(cnt - 1, 0) // 2]
    hi = w[rows, cnt // 2]
    with np.errstate(invalid="ignore"):
        med = np.where(lo == hi, lo, (lo + hi) / 2.0)  # equal ends: also inf == inf
    return np.where(cnt > 0, med, np.nan)


def _masked_mean(v: np.ndarray, mask: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        cnt = mask.sum(axis=1)
        return np.where(cnt > 0, np.where(mask, v, 0.0).sum(axis=1) / np.maximum(cnt, 1), np.nan)


def _run_stats(a: dict[str, Any], idx: np.ndarray) -> dict[str, np.ndarray]:
    """Every leaderboard number of one run for each row of the index matrix idx (B, n) -> {column: (B,)}.

    Definitions (the module docstring): accuracies over all points, radii over clean-correct points.
    """
    B = idx.shape[0]
    nan = np.full(B, np.nan)
    out: dict[str, np.ndarray] = {}
    if a["n"] == 0:
        return out
    correct = a["correct"][idx]
    any_c = correct.any(axis=1)
    out["clean_accuracy"] = correct.mean(axis=1)
    keys: list[str] = a["keys"]
    for j, k in enumerate(keys):
        col = a["robust"][:, j][idx]
        out[f"robust_acc@{k}"] = _masked_mean(col, ~np.isnan(col))
    if a["has_radius"]:
        radius = a["radius"][idx]
        out["median_radius"] = np.where(any_c, _masked_median(radius, correct), 0.0)
        if keys:
            emax = max(float(k) for k in keys)
            out["auc"] = np.minimum(np.nan_to_num(radius, nan=0.0), emax).mean(axis=1) / emax
        else:
            out["auc"] = nan
    else:
        out["median_radius"] = out["auc"] = nan
    for k in keys:
        out[f"certified_acc@{k}"] = nan
    out["certified_radius"] = out["gap"] = out["exact"] = nan
    if a["has_lower"]:
        lower = a["lower"][idx]
        for k in keys:
            with np.errstate(invalid="ignore"):
                out[f"certified_acc@{k}"] = (correct & (lower > float(k))).mean(axis=1)
        lb0 = np.nan_to_num(lower, nan=0.0, posinf=np.inf)
        out["certified_radius"] = np.where(any_c, _masked_median(lb0, correct), 0.0)  # no correct point: nothing robust
        gap = a["gap"][idx]
        out["gap"] = _masked_median(gap, correct & ~np.isnan(gap))
        out["exact"] = _masked_mean(a["closed"][idx].astype(float), correct)
    for m in LEADERBOARD_METRICS:
        v = a["metrics"][m.name][idx]
        ok = ~np.isnan(v)
        out[m.name] = _masked_median(v, ok) if m.aggregate == "median" else _masked_mean(v, ok)
    return out


def certified_columns(p: pd.DataFrame, keys: list[str]) -> dict[str, float]:
    """The certified columns of one run's points (see the module docstring); NaN without any lower bound."""
    stats = _run_stats(_run_arrays(p, keys), np.arange(len(p))[None, :])
    cols = [*(f"certified_acc@{k}" for k in keys), "certified_radius", "gap", "exact"]
    return {c: float(stats[c][0]) if c in stats else np.nan for c in cols}


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
    by_run = dict(tuple(points.groupby("run_id", sort=False))) if not points.empty and "run_id" in points else {}
    for _, run in ok.iterrows():
        p = by_run.get(run["run_id"], points.iloc[0:0])
        row: dict[str, Any] = {k: run.get(k) for k in ("run_id", "model", "family", "dataset", "threat", "norm", "seed", "fit_time", "eval_time")}
        row["n_points"] = len(p)
        keys = eps_keys(p)
        stats = _run_stats(_run_arrays(p, keys), np.arange(len(p))[None, :])
        row["clean_accuracy"] = float(stats["clean_accuracy"][0]) if stats else np.nan
        for k in keys:
            row[f"robust_acc@{k}"] = float(stats[f"robust_acc@{k}"][0])
        for c in ("median_radius", "auc", *(f"certified_acc@{k}" for k in keys), "certified_radius", "gap", "exact",
                  *(m.name for m in LEADERBOARD_METRICS)):
            row[c] = float(stats[c][0]) if c in stats else np.nan
        row["certifier"] = _certifiers(p)
        row["attacks"] = ", ".join(run["attacks"]) if isinstance(run.get("attacks"), list) else (run.get("attacks") or "")
        row["path"] = attack_path(a.strip() for a in row["attacks"].split(",") if a.strip())
        flags = run.get("flags")
        row["flags"] = ", ".join(sorted(flags)) if isinstance(flags, dict) else (flags or "")
        row["rejected"] = run.get("rejected")
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------
# Intervals and significance-aware ranks
# ----------------------------------------------------------------------------------------
_BOOT_BLOCK = 1 << 19  # resampled point indices per block of bootstrap replicates (4 MB of int64)


def cell_intervals(run_points: list[pd.DataFrame] | list[dict[str, Any]], keys: list[str], *, n_boot: int = DEFAULT_BOOT,
                   confidence: float = DEFAULT_CONFIDENCE, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap intervals of every number of one leaderboard cell (one model, dataset, threat).

    The cell's number is the mean over its runs (seeds) of each run's statistic; a replicate
    resamples each run's points with replacement (stratified by seed: every seed keeps its point
    count) and averages the runs' replicate statistics. Where every point of a 0/1 proportion
    (clean, robust, certified accuracy; the exact share over clean-correct points) has the same
    value (e.g. 30 of 30 correct) the bootstrap distribution is a single point; the interval is then
    the exact Clopper–Pearson interval of the pooled count instead.
    """
    rng = np.random.default_rng(seed)
    reps: dict[str, list[np.ndarray]] = {}
    props: dict[str, list[np.ndarray]] = {}
    arrays = [p if isinstance(p, dict) else _run_arrays(p, keys) for p in run_points]
    if sum(a["n"] for a in arrays) < 2:
        return {}  # one point: no interval to speak of
    for a in arrays:
        if a["n"] == 0:
            continue
        # replicates in blocks of at most _BOOT_BLOCK resampled indices: memory stays bounded for large
        # test sets, and sequential draws give the very same indices as one draw of all replicates
        step = max(1, min(n_boot, _BOOT_BLOCK // a["n"]))
        parts: dict[str, list[np.ndarray]] = {}
        for s0 in range(0, n_boot, step):
            idx = rng.integers(0, a["n"], size=(min(step, n_boot - s0), a["n"]))
            for c, v in _run_stats(a, idx).items():
                parts.setdefault(c, []).append(v)
        for c, vs in parts.items():
            reps.setdefault(c, []).append(np.concatenate(vs) if len(vs) > 1 else vs[0])
        props.setdefault("clean_accuracy", []).append(a["correct"].astype(float))
        for j, k in enumerate(keys):
            props.setdefault(f"robust_acc@{k}", []).append(a["robust"][:, j])
            if a["has_lower"]:
                with np.errstate(invalid="ignore"):
                    props.setdefault(f"certified_acc@{k}", []).append((a["correct"] & (a["lower"] > float(k))).astype(float))
        if a["has_lower"]:
            props.setdefault("exact", []).append(a["closed"][a["correct"]].astype(float))  # a share of the clean-correct points
    out: dict[str, tuple[float, float]] = {}
    for c, vs in reps.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a statistic NaN in every run stays NaN
            r = np.nanmean(np.stack(vs, axis=1), axis=1) if len(vs) > 1 else vs[0]
        lo, hi = percentile_interval(r, confidence)
        if c in props and lo == hi:
            vals = np.concatenate(props[c])
            vals = vals[~np.isnan(vals)]
            if vals.size and np.all(vals == vals[0]):
                lo, hi = clopper_pearson(int(vals.sum()), int(vals.size), confidence)
        out[c] = (lo, hi)
    return out


def _point_scores(p: pd.DataFrame, keys: list[str], arrays: dict[str, Any] | None = None) -> pd.Series:
    """Per-point contribution to the rank score, indexed by (seed, test point): min(radius, ε_max)/ε_max
    (its mean is the auc), or the point's mean robustness over the ε grid for fixed-ε threat models."""
    a = arrays if arrays is not None else _run_arrays(p, keys)
    if a["has_radius"] and keys:
        emax = max(float(k) for k in keys)
        s = np.minimum(np.nan_to_num(a["radius"], nan=0.0), emax) / emax
    elif keys:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            s = np.nanmean(a["robust"], axis=1)
    else:
        s = np.full(a["n"], np.nan)
    where = _numeric(p, "test_index")
    where = np.where(np.isnan(where), -1 - _numeric(p, "idx"), where)  # no test index: the row's position
    seed = pd.to_numeric(p["seed"], errors="coerce").fillna(-1).astype(int).to_numpy() if "seed" in p else np.zeros(len(p), int)
    return pd.Series(s, index=pd.MultiIndex.from_arrays([seed, where.astype(np.int64)], names=["seed", "point"]))


def block_ranks(cell_points: dict[str, pd.DataFrame], keys: list[str], *, alpha: float = ALPHA, n_perm: int = DEFAULT_PERM,
                seed: int = 0, arrays: dict[str, list[dict[str, Any]]] | None = None) -> RankGroups:
    """Significance-aware ranks of the models of one (dataset, threat) block, paired on the same points.

    `cell_points[model]` holds the model's points over all its seeds; `arrays[model]`, when given,
    the per-run arrays of those points in run order (cell_points grouped by run_id, sorted).
    """
    names = sorted(cell_points)
    cols = []
    for m in names:
        if arrays is not None and m in arrays:
            parts = [_point_scores(sub, keys, a) for (_, sub), a in zip(cell_points[m].groupby("run_id", sort=True), arrays[m], strict=True)]
            s = pd.concat(parts) if parts else pd.Series(dtype=float)
        else:
            s = _point_scores(cell_points[m], keys)
        cols.append(s[~s.index.duplicated()].rename(m))
    table = pd.concat(cols, axis=1, join="outer") if cols else pd.DataFrame()
    return rank_groups(names, table.to_numpy(dtype=float), alpha=alpha, n_perm=n_perm, seed=seed)


def _join_names(s: Iterable[Any]) -> str:
    """The distinct comma-separated names in a column of comma-joined lists, sorted and joined."""
    return ", ".join(sorted({a.strip() for x in s if x is not None and not (isinstance(x, float) and np.isnan(x)) for a in str(x).split(",") if a.strip()}))


def _rank_key(df: pd.DataFrame) -> pd.Series:
    """Higher is better: AUC where radii exist, else the mean robust accuracy over the eps grid."""
    rob = [c for c in df.columns if c.startswith("robust_acc@")]
    mean_rob = df[rob].mean(axis=1) if rob else pd.Series(np.nan, index=df.index)
    return df["auc"].where(df["auc"].notna(), mean_rob)


def _check_inference(n_boot: Any, confidence: Any, alpha: Any) -> None:
    from ..errors import ConfigError

    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ConfigError(f"n_boot must be an integer >= 1 (bootstrap resamples), got {n_boot!r}")
    for name, v in (("confidence", confidence), ("alpha", alpha)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < float(v) < 1.0:
            raise ConfigError(f"{name} must be a number in (0, 1), got {v!r}")


def leaderboard_from_frames(runs: pd.DataFrame, points: pd.DataFrame, dataset: str | None = None, threat: str | None = None, *,
                            intervals: bool = True, n_boot: int = DEFAULT_BOOT, confidence: float = DEFAULT_CONFIDENCE,
                            alpha: float = ALPHA, seed: int = 0) -> pd.DataFrame:
    """The ranked leaderboard per (dataset, threat): seeds averaged, rank 1 = most robust.

    With `intervals` every number gets `<col>_lo`/`<col>_hi`: the `confidence` percentile-bootstrap
    interval over points, stratified by seed (`cell_intervals`). `rank` is significance-aware:
    1 + the number of models of the block that are significantly better (paired sign-flip tests on
    the same points, Holm-adjusted over the block's pairs, level `alpha`); models not significantly
    different share a rank unless a third model separates them, and `tied_with` lists them.
    Without intervals the rank is the plain order of the score (ties by equal score only).
    """
    _check_inference(n_boot, confidence, alpha)
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
    g["tied_with"] = ""
    eps = sorted({c.split("@", 1)[1] for c in g.columns if c.startswith(("robust_acc@", "certified_acc@"))}, key=float)
    acc = [c for e in eps for c in (f"robust_acc@{e}", f"certified_acc@{e}")]  # empirical and certified side by side
    numbers = ["clean_accuracy", *acc, "median_radius", "certified_radius", "gap", "exact", "auc", *[m.name for m in LEADERBOARD_METRICS]]
    bounds: list[str] = []
    if intervals and not points.empty:
        ok_ids = set(pr["run_id"])
        pts = points[points["run_id"].isin(ok_ids)]
        seed_of = dict(zip(pr["run_id"], pr["seed"], strict=True))
        pts = pts.assign(seed=pts["run_id"].map(seed_of))
        by_cell = dict(tuple(pts.groupby(["dataset", "threat", "model"], sort=False)))
        lo = {c: np.full(len(g), np.nan) for c in numbers}
        hi = {c: np.full(len(g), np.nan) for c in numbers}
        present = {c: g[c].notna().to_numpy() for c in numbers if c in g.columns}
        cell_arrays: dict[tuple[Any, Any, Any], list[dict[str, Any]]] = {}
        for i, (ds, th, model) in enumerate(zip(g["dataset"], g["threat"], g["model"], strict=True)):
            cp = by_cell.get((ds, th, model))
            if cp is None:
                continue
            keys = [e for e in eps if f"robust_acc@{e}" in present and present[f"robust_acc@{e}"][i]]
            cell_arrays[(ds, th, model)] = arrs = [_run_arrays(sub, keys) for _, sub in cp.groupby("run_id", sort=True)]
            ivs = cell_intervals(arrs, keys, n_boot=n_boot, confidence=confidence, seed=seed)
            for c, (a, b) in ivs.items():
                if c in lo and c in present and present[c][i]:
                    lo[c][i], hi[c][i] = a, b
        for (ds, th), sub in g.groupby(["dataset", "threat"], sort=False):
            keys = [e for e in eps if sub.get(f"robust_acc@{e}") is not None and sub[f"robust_acc@{e}"].notna().any()]
            cells = {m: by_cell[(ds, th, m)] for m in sub["model"] if (ds, th, m) in by_cell}
            if len(cells) < 2:
                continue
            same_keys = {m: cell_arrays[(ds, th, m)] for m in cells if cell_arrays[(ds, th, m)] and cell_arrays[(ds, th, m)][0]["keys"] == keys}
            rg = block_ranks(cells, keys, alpha=alpha, seed=seed, arrays=same_keys)
            pos = {m: j for j, m in enumerate(rg.models)}
            for ix, m in zip(sub.index, sub["model"], strict=True):
                if m in pos:
                    g.loc[ix, "rank"] = int(rg.rank[pos[m]])
                    g.loc[ix, "tied_with"] = ", ".join(rg.tied_with(pos[m], alpha))
        for c in numbers:
            if c in g.columns:
                g[f"{c}_lo"], g[f"{c}_hi"] = lo[c], hi[c]
                bounds += [f"{c}_lo", f"{c}_hi"]
    g = g.sort_values(["dataset", "threat", "rank", "score", "clean_accuracy"], ascending=[True, True, True, False, False])
    cols = ["dataset", "threat", "rank", "model", "family", "path", *numbers, "certifier", "tied_with",
            "attacks", "flags", "rejected", "fit_time", "eval_time", "seeds", "n_points", *bounds]
    out = g[[c for c in cols if c in g.columns]].reset_index(drop=True)
    out["rank"] = out["rank"].astype(int)
    return out


def overall_ranking(board: pd.DataFrame, *, n_boot: int = DEFAULT_BOOT, confidence: float = DEFAULT_CONFIDENCE, seed: int = 0) -> pd.DataFrame:
    """Mean rank of each model across datasets, per threat model (lower is better): descriptive.

    `mean_rank_lo`/`mean_rank_hi` is a percentile-bootstrap interval over datasets (datasets
    resampled with replacement; a model's mean over the resampled datasets it was evaluated on).
    With few datasets the interval is wide and the order is a description, not a test.
    """
    _check_inference(n_boot, confidence, 0.5)
    if board.empty:
        return board
    g = board.groupby(["threat", "model"], as_index=False).agg(
        family=("family", "first"), mean_rank=("rank", "mean"), datasets=("dataset", "nunique"),
        clean_accuracy=("clean_accuracy", "mean"), auc=("auc", "mean"), **{m.name: (m.name, "mean") for m in OVERALL_METRICS})
    g["overall_rank"] = g.groupby("threat")["mean_rank"].rank(method="min").astype(int)
    g["mean_rank_lo"] = np.nan
    g["mean_rank_hi"] = np.nan
    rng = np.random.default_rng(seed)
    for th, sub in board.groupby("threat", sort=True):
        R = sub.pivot_table(index="dataset", columns="model", values="rank", aggfunc="mean")
        if R.shape[0] < 2:
            continue
        idx = rng.integers(0, R.shape[0], size=(n_boot, R.shape[0]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            reps = np.nanmean(R.to_numpy(dtype=float)[idx], axis=1)  # (n_boot, models)
        for j, m in enumerate(R.columns):
            a, b = percentile_interval(reps[:, j], confidence)
            sel = (g["threat"] == th) & (g["model"] == m)
            g.loc[sel, "mean_rank_lo"] = a
            g.loc[sel, "mean_rank_hi"] = b
    return g.sort_values(["threat", "overall_rank"]).reset_index(drop=True)[
        ["threat", "overall_rank", "model", "family", "mean_rank", "datasets", "clean_accuracy", "auc", *[m.name for m in OVERALL_METRICS],
         "mean_rank_lo", "mean_rank_hi"]]


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
