"""Uncertainty for leaderboard numbers: stratified bootstrap intervals, exact binomial intervals,
paired sign-flip tests, multiplicity corrections and significance-aware rank groups.

- `stratified_indices`: bootstrap resamples of n points, each drawn within its stratum (e.g. the
  seed a point was evaluated under), so every replicate keeps each seed's point count.
- `bootstrap_means`, `bootstrap_stat`: percentile intervals of a statistic over such replicates.
- `clopper_pearson`: the exact binomial interval, used where a bootstrap distribution of a
  proportion is degenerate (every point has the same 0/1 value: the percentile interval would be
  a single point, claiming certainty that 30 points cannot give).
- `sign_flip_p`: a paired permutation test of mean(d) = 0 for per-point differences d of two models
  evaluated on the same points (exact when 2^n is small, Monte Carlo otherwise).
- `adjust_p`: Holm (family-wise) or Benjamini–Hochberg (false discovery rate) adjusted p-values.
- `rank_groups`: within one block, rank = 1 + the number of models significantly better
  (Holm-adjusted paired tests); models not significantly different share their tie group.

Replicates are computed as matrix operations over blocks of replicates. Deterministic for a seed.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats as sps

from ..errors import ConfigError

PAdjust = Literal["holm", "bh", "none"]
DEFAULT_CONFIDENCE = 0.95
DEFAULT_BOOT = 1000
DEFAULT_PERM = 4000
ALPHA = 0.05
_EXACT_FLIPS = 12  # up to 2^12 sign patterns the sign-flip test enumerates every one
_P_TOL = 1e-12


def _check_confidence(confidence: float) -> float:
    c = float(confidence)
    if not (0.0 < c < 1.0):
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}")
    return c


_BLOCK_ENTRIES = 1 << 19  # resampled indices per block of replicates (4 MB of int64)


def stratified_indices(strata: Sequence[object] | np.ndarray | None, n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) bootstrap index matrix: row b resamples, within every stratum, as many points as it has.

    `strata` is one label per point (None: one stratum). Column order follows the points, so
    column j of a replicate always holds a point of point j's stratum. Every replicate of one
    stratum is drawn before the next stratum's; `stratified_blocks` gives the same rows block by block.
    """
    return next(stratified_blocks(strata, n, n_boot, rng, block=n_boot))[1]


def _groups(strata: Sequence[object] | np.ndarray, n: int) -> list[np.ndarray]:
    """The point numbers of each stratum, strata in sorted label order."""
    labels = np.asarray(strata)
    if labels.shape[0] != n:
        raise ConfigError(f"strata has {labels.shape[0]} labels for {n} points; give one label per point")
    return [np.flatnonzero(labels == lab) for lab in np.unique(labels)]


def stratified_blocks(strata: Sequence[object] | np.ndarray | None, n: int, n_boot: int, rng: np.random.Generator,
                      block: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """The rows of `stratified_indices(strata, n, n_boot, rng)` in blocks: (first row, (rows, n) indices) pairs.

    The same indices as the one call from the same rng state, whatever the block size (numpy draws
    bounded int64 integers one 64-bit draw at a time, so consecutive draws continue one stream), in
    memory of one block: `block` replicates, default about _BLOCK_ENTRIES indices. Each stratum
    draws from its own copy of the generator, started where the one call starts that stratum (found by
    a first pass that draws and discards the earlier strata's replicates block by block); `rng` ends
    where the one call leaves it. A single block is drawn straight from `rng` (that is `stratified_indices`).
    """
    if n_boot < 1:
        raise ConfigError(f"n_boot must be >= 1, got {n_boot!r}")
    step = max(1, int(block)) if block is not None else max(1, min(n_boot, _BLOCK_ENTRIES // max(n, 1)))
    starts = range(0, n_boot, step)
    if strata is None:
        for s0 in starts:
            yield s0, rng.integers(0, n, size=(min(step, n_boot - s0), n))
        return
    groups = _groups(strata, n)
    if len(starts) == 1:  # one block: every stratum's replicates straight from rng, in turn
        out = np.empty((n_boot, n), dtype=np.int64)
        for members in groups:
            out[:, members] = members[rng.integers(0, members.size, size=(n_boot, members.size))]
        yield 0, out
        return
    gens: list[np.random.Generator] = []
    for members in groups:
        gens.append(copy.deepcopy(rng))
        for s0 in starts:  # advance rng past this stratum's replicates: the next stratum starts there
            rng.integers(0, members.size, size=(min(step, n_boot - s0), members.size))
    for s0 in starts:
        rows = min(step, n_boot - s0)
        out = np.empty((rows, n), dtype=np.int64)
        for members, gen in zip(groups, gens, strict=True):
            out[:, members] = members[gen.integers(0, members.size, size=(rows, members.size))]
        yield s0, out


def percentile_interval(reps: np.ndarray, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """The central `confidence` percentile interval of the finite replicates (NaN, NaN when there are none).

    Replicates equal to ±inf count (a median radius can be ∞); NaN replicates are dropped.
    """
    reps = np.asarray(reps, dtype=np.float64).reshape(-1)
    reps = reps[~np.isnan(reps)]
    if reps.size == 0:
        return (math.nan, math.nan)
    a = (1.0 - _check_confidence(confidence)) / 2.0
    srt = np.sort(reps)
    lo = srt[int(np.floor(a * (srt.size - 1)))]
    hi = srt[int(np.ceil((1.0 - a) * (srt.size - 1)))]
    return (float(lo), float(hi))


def clopper_pearson(k: int, n: int, confidence: float = DEFAULT_CONFIDENCE) -> tuple[float, float]:
    """The exact (Clopper–Pearson) binomial interval for k successes out of n."""
    if n <= 0:
        return (math.nan, math.nan)
    a = (1.0 - _check_confidence(confidence)) / 2.0
    lo = 0.0 if k <= 0 else float(sps.beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k >= n else float(sps.beta.ppf(1.0 - a, k + 1, n - k))
    return (lo, hi)


def bootstrap_stat(stat: Callable[[np.ndarray], np.ndarray], n: int, *, strata: Sequence[object] | np.ndarray | None = None,
                   n_boot: int = DEFAULT_BOOT, confidence: float = DEFAULT_CONFIDENCE, seed: int = 0,
                   block: int = 256) -> np.ndarray:
    """Replicates of `stat` over stratified bootstrap resamples of n points.

    `stat` maps an index matrix (k, n) to k replicate values (vectorised over rows). Returns the
    (n_boot,) replicates; `percentile_interval` turns them into an interval.
    """
    _check_confidence(confidence)
    out = np.empty(n_boot)
    for s, idx in stratified_blocks(strata, n, n_boot, np.random.default_rng(seed), block=block):
        out[s : s + idx.shape[0]] = stat(idx)
    return out


def bootstrap_means(values: np.ndarray, *, strata: Sequence[object] | np.ndarray | None = None, n_boot: int = DEFAULT_BOOT,
                    confidence: float = DEFAULT_CONFIDENCE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile intervals (lo, hi) of the column means of values (n, k), points resampled within strata.

    With several strata the statistic is the mean of the per-stratum means (each seed counts
    once, as the leaderboard averages seeds). NaN entries are ignored in the means. Replicates are
    drawn in blocks (`stratified_blocks`: memory of one block); each block becomes per-point draw
    counts and its means one matrix product. For 0/1 values the sums are exact integers, the same
    means as averaging the resampled values one by one; for other values they can differ from that in the last bits.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    n, k = v.shape
    if n == 0:
        return np.full(k, np.nan), np.full(k, np.nan)
    groups = [np.arange(n)] if strata is None else _groups(strata, n)
    present = (~np.isnan(v)).astype(np.float64)
    filled = np.where(present > 0, v, 0.0)
    reps = np.empty((n_boot, k))
    with np.errstate(invalid="ignore", divide="ignore"):
        for s0, idx in stratified_blocks(strata, n, n_boot, np.random.default_rng(seed)):
            rows = idx.shape[0]
            counts = np.bincount((np.arange(rows)[:, None] * n + idx).ravel(), minlength=rows * n).reshape(rows, n).astype(np.float64)
            per = [(counts[:, g] @ filled[g]) / (counts[:, g] @ present[g]) for g in groups]
            reps[s0:s0 + rows] = np.nanmean(np.stack(per), axis=0) if len(per) > 1 else per[0]
    lo = np.empty(k)
    hi = np.empty(k)
    for j in range(k):
        lo[j], hi[j] = percentile_interval(reps[:, j], confidence)
    return lo, hi


def sign_flip_p(d: np.ndarray, n_perm: int = DEFAULT_PERM, seed: int = 0) -> float:
    """Two-sided paired permutation p-value of H0: mean(d) = 0 (each difference's sign flipped at random).

    Exact over all 2^n sign patterns when n <= 12, else (1 + #as-extreme) / (1 + n_perm). NaN
    differences are dropped; all-zero differences give p = 1.
    """
    d = np.asarray(d, dtype=np.float64).reshape(-1)
    d = d[np.isfinite(d)]
    n = d.size
    if n == 0 or not np.any(d != 0):
        return 1.0
    obs = abs(float(d.sum()))
    if n <= _EXACT_FLIPS:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
        null = np.abs(signs @ d)
        return float(np.count_nonzero(null >= obs - _P_TOL * max(1.0, obs)) / null.size)
    rng = np.random.default_rng(seed)
    hits = 0
    step = max(1, min(n_perm, (1 << 20) // n))
    for s in range(0, n_perm, step):
        k = min(step, n_perm - s)
        signs = rng.integers(0, 2, size=(k, n), dtype=np.int8) * 2 - 1
        hits += int(np.count_nonzero(np.abs(signs @ d) >= obs - _P_TOL * max(1.0, obs)))
    return float((1 + hits) / (1 + n_perm))


def adjust_p(p: Sequence[float] | np.ndarray, method: PAdjust = "holm") -> np.ndarray:
    """Adjusted p-values: "holm" (step-down, family-wise error), "bh" (Benjamini–Hochberg step-up, FDR) or "none".

    NaN entries stay NaN and do not count towards the number of tests.
    """
    if method not in ("holm", "bh", "none"):
        raise ConfigError(f"p-value adjustment must be 'holm', 'bh' or 'none', got {method!r}")
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0 or method == "none":
        out[ok] = p[ok]
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    ps = p[order]
    if method == "holm":
        adj = np.maximum.accumulate((m - np.arange(m)) * ps)
    else:
        adj = np.minimum.accumulate(m / np.arange(m, 0, -1) * ps[::-1])[::-1]
    out[order] = np.minimum(adj, 1.0)
    return out


@dataclass
class RankGroups:
    """Significance-aware ranks within one block of models evaluated on the same points."""

    models: list[str]
    score: np.ndarray  # the descriptive score (higher is better)
    rank: np.ndarray  # 1 + number of models significantly better
    worst: np.ndarray  # k - number of models significantly worse
    p_adjusted: np.ndarray  # (k, k) Holm-adjusted paired p-values (1 on the diagonal)

    def tied_with(self, i: int, alpha: float = ALPHA) -> list[str]:
        """The other models not significantly different from model i."""
        return [m for j, m in enumerate(self.models) if j != i and not self.p_adjusted[i, j] < alpha]


def rank_groups(models: Sequence[str], per_point: np.ndarray, *, alpha: float = ALPHA, method: PAdjust = "holm",
                n_perm: int = DEFAULT_PERM, seed: int = 0) -> RankGroups:
    """Ranks of k models from per-point scores (n, k) on the same n points (higher is better).

    Every pair is compared with a paired sign-flip test on its per-point differences (points where
    either score is NaN are left out of that pair); the k(k−1)/2 p-values are adjusted together
    (`method`). Model i's rank is 1 + #{j : j scores higher and the adjusted p < alpha}; two models
    with identical scores always share a rank, a planted large difference always separates them.
    """
    names = [str(m) for m in models]
    s = np.asarray(per_point, dtype=np.float64)
    if s.ndim != 2 or s.shape[1] != len(names):
        raise ConfigError(f"per_point must be (points, models) with {len(names)} model columns, got shape {s.shape}")
    k = len(names)
    with np.errstate(invalid="ignore"):
        score = np.nanmean(s, axis=0) if s.shape[0] else np.full(k, np.nan)
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    raw = np.array([sign_flip_p(s[:, i] - s[:, j], n_perm=n_perm, seed=seed + 7919 * a) for a, (i, j) in enumerate(pairs)])
    adj = adjust_p(raw, method) if pairs else np.zeros(0)
    P = np.ones((k, k))
    for (i, j), q in zip(pairs, adj, strict=True):
        P[i, j] = P[j, i] = 1.0 if np.isnan(q) else q
    better = np.array([[j != i and P[i, j] < alpha and score[j] > score[i] for j in range(k)] for i in range(k)], dtype=bool).reshape(k, k)
    worse = np.array([[j != i and P[i, j] < alpha and score[j] < score[i] for j in range(k)] for i in range(k)], dtype=bool).reshape(k, k)
    return RankGroups(models=names, score=score, rank=1 + better.sum(axis=1), worst=k - worse.sum(axis=1), p_adjusted=P)


__all__ = ["ALPHA", "DEFAULT_BOOT", "DEFAULT_CONFIDENCE", "RankGroups", "adjust_p", "bootstrap_means", "bootstrap_stat",
           "clopper_pearson", "percentile_interval", "rank_groups", "sign_flip_p", "stratified_blocks", "stratified_indices"]
