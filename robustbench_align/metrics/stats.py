"""Statistics for the alignment–robustness question, the paired RFM-vs-RFAM comparison and two-sample tests.

- `correlate`: Spearman and Pearson correlation of two point columns (e.g. normal alignment vs
  the measured radius), with percentile-bootstrap 95% intervals and permutation p-values, pooled
  and per group, optionally on (model, dataset) means. Bootstrap and permutation replicates are
  computed as matrix operations over blocks of replicates (no per-replicate Python work beyond a
  block loop); permutation ranks are computed once, bootstrap Spearman re-ranks each resample
  (row-wise, vectorised) so it is the exact Spearman of the resample.
- `paired_comparison`: two models compared per dataset, as in the seed paper (arXiv 2605.08464):
  relative difference (b − a)/|a|, counts of b higher/lower, one-sided paired t-test and
  Wilcoxon signed-rank test.
- `attack_success_rate`: ASR = 100·(acc − robust acc)/acc.
- `welch_p`, `mannwhitney_p`: two-sided tests of two independent samples (e.g. grokking epochs),
  NaN with the reason where a test is undefined.
"""
from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..errors import DataError

log = logging.getLogger(__name__)

Alternative = Literal["two-sided", "greater", "less"]
_BLOCK_ELEMS = 1 << 21  # replicate-matrix entries per block
_P_TOL = 1e-12  # float slack when comparing a replicate statistic with the observed one
DEFAULT_AGGREGATE = ("model", "dataset")


# ----------------------------------------------------------------------------------------
# Correlation
# ----------------------------------------------------------------------------------------
@dataclass
class CorrelationResult:
    """Correlation of `y` on `x` with bootstrap CIs and permutation p-values; `groups` holds per-group results."""

    x: str
    y: str
    n: int
    spearman: float
    spearman_ci: tuple[float, float]
    spearman_p: float
    pearson: float
    pearson_ci: tuple[float, float]
    pearson_p: float
    n_boot: int
    n_perm: int
    alternative: str = "two-sided"
    confidence: float = 0.95
    group: str = "all"
    by: str | None = None
    aggregate: tuple[str, ...] | None = None
    groups: dict[str, CorrelationResult] = field(default_factory=dict)

    def _row(self) -> dict[str, Any]:
        return {
            "group": self.group, "n": self.n,
            "spearman": self.spearman, "spearman_lo": self.spearman_ci[0], "spearman_hi": self.spearman_ci[1], "spearman_p": self.spearman_p,
            "pearson": self.pearson, "pearson_lo": self.pearson_ci[0], "pearson_hi": self.pearson_ci[1], "pearson_p": self.pearson_p,
        }

    def to_frame(self) -> pd.DataFrame:
        """One row for the pooled data ("all") and one per group, with CI bounds and p-values."""
        rows = [self._row()] + [g._row() for g in self.groups.values()]
        return pd.DataFrame(rows)

    def __str__(self) -> str:
        unit = f" on {'/'.join(self.aggregate)} means" if self.aggregate else ""
        head = (f"{self.y} vs {self.x}{unit}: {int(self.confidence * 100)}% bootstrap CIs ({self.n_boot} resamples), "
                f"{self.alternative} permutation p-values ({self.n_perm} permutations)")
        lines = [head, f"{'group':<20} {'n':>6}  {'spearman':>8} {'95% CI':>17} {'p':>8}  {'pearson':>8} {'95% CI':>17} {'p':>8}"]
        for r in self.to_frame().to_dict("records"):
            lines.append(
                f"{str(r['group'])[:20]:<20} {r['n']:>6}  {r['spearman']:>8.3f} [{r['spearman_lo']:>6.3f}, {r['spearman_hi']:>6.3f}] "
                f"{r['spearman_p']:>8.4f}  {r['pearson']:>8.3f} [{r['pearson_lo']:>6.3f}, {r['pearson_hi']:>6.3f}] {r['pearson_p']:>8.4f}"
            )
        return "\n".join(lines)


def _standardise_rows(A: np.ndarray) -> np.ndarray:
    """Rows centred and scaled to unit norm (NaN rows where a row is constant)."""
    A = A - A.mean(axis=-1, keepdims=True)
    nrm = np.linalg.norm(A, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(nrm > 0, A / nrm, np.nan)


def _rowwise_corr(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Pearson correlation of matching rows of A and B (k, n) -> (k,)."""
    return np.einsum("kn,kn->k", _standardise_rows(A), _standardise_rows(B))


def _block(n: int, total: int) -> int:
    return max(1, min(total, _BLOCK_ELEMS // max(n, 1)))


def _p_value(null: np.ndarray, obs: float, alternative: str) -> float:
    """Permutation p-value (1 + #as-extreme) / (1 + #replicates)."""
    if not np.isfinite(obs):
        return float("nan")
    if alternative == "greater":
        hits = np.count_nonzero(null >= obs - _P_TOL)
    elif alternative == "less":
        hits = np.count_nonzero(null <= obs + _P_TOL)
    else:
        hits = np.count_nonzero(np.abs(null) >= abs(obs) - _P_TOL)
    return float((1 + hits) / (1 + null.size))


def _ci(reps: np.ndarray, confidence: float) -> tuple[float, float]:
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return (float("nan"), float("nan"))
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(reps, [a, 1.0 - a])
    return (float(lo), float(hi))


def _correlate_arrays(xv: np.ndarray, yv: np.ndarray, n_boot: int, n_perm: int, rng: np.random.Generator,
                      alternative: str, confidence: float) -> dict[str, Any]:
    """Point estimates, bootstrap CIs and permutation p-values for paired samples xv, yv."""
    n = xv.size
    nan2 = (float("nan"), float("nan"))
    out: dict[str, Any] = {"n": int(n), "spearman": float("nan"), "spearman_ci": nan2, "spearman_p": float("nan"),
                           "pearson": float("nan"), "pearson_ci": nan2, "pearson_p": float("nan")}
    if n < 3 or np.ptp(xv) == 0 or np.ptp(yv) == 0:
        log.info("correlation undefined: %d points%s", n, " (a constant column)" if n >= 3 else "")
        return out
    rx, ry = sps.rankdata(xv), sps.rankdata(yv)  # ranks computed once for the estimate and the permutations
    zx, zy = _standardise_rows(xv[None])[0], _standardise_rows(yv[None])[0]
    zrx, zry = _standardise_rows(rx[None])[0], _standardise_rows(ry[None])[0]
    out["pearson"] = float(zx @ zy)
    out["spearman"] = float(zrx @ zry)

    if n_perm > 0:
        null_p, null_s = np.empty(n_perm), np.empty(n_perm)
        step = _block(n, n_perm)
        base = np.arange(n)
        for s in range(0, n_perm, step):
            k = min(step, n_perm - s)
            perm = rng.permuted(np.broadcast_to(base, (k, n)), axis=1)
            null_p[s : s + k] = zy[perm] @ zx
            null_s[s : s + k] = zry[perm] @ zrx
        out["pearson_p"] = _p_value(null_p, out["pearson"], alternative)
        out["spearman_p"] = _p_value(null_s, out["spearman"], alternative)

    if n_boot > 0:
        boot_p, boot_s = np.empty(n_boot), np.empty(n_boot)
        step = _block(n, n_boot)
        for s in range(0, n_boot, step):
            k = min(step, n_boot - s)
            idx = rng.integers(0, n, size=(k, n))
            xs, ys = xv[idx], yv[idx]
            with np.errstate(invalid="ignore"):
                boot_p[s : s + k] = _rowwise_corr(xs, ys)
                boot_s[s : s + k] = _rowwise_corr(sps.rankdata(xs, axis=1), sps.rankdata(ys, axis=1))
        out["pearson_ci"] = _ci(boot_p, confidence)
        out["spearman_ci"] = _ci(boot_s, confidence)
    return out


def _numeric(frame: pd.DataFrame, col: str) -> np.ndarray:
    return pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)


def correlate(
    frame: pd.DataFrame,
    x: str = "normal_alignment",
    y: str = "radius_linf",
    by: str | None = None,
    n_boot: int = 2000,
    n_perm: int = 2000,
    seed: int = 0,
    *,
    aggregate: bool | str | Sequence[str] | None = None,
    alternative: Alternative = "two-sided",
    confidence: float = 0.95,
) -> CorrelationResult:
    """Spearman/Pearson correlation of columns `x` and `y` of `frame` with bootstrap CIs and permutation p-values.

    Rows where either value is NaN/inf are dropped (and counted in the log). `by` names a column
    to correlate within each group as well (results in `.groups`, rows in `to_frame()`).
    `aggregate=True` first averages x and y per (model, dataset) — or per the given column(s) —
    so each group counts once; `by` is kept as a grouping key. Deterministic for a given `seed`.
    """
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"correlate: frame must be a pandas DataFrame, got {type(frame).__name__}")
    if alternative not in ("two-sided", "greater", "less"):
        raise DataError(f"correlate: alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}")
    if not (0.0 < float(confidence) < 1.0):
        raise DataError(f"correlate: confidence must be in (0, 1), got {confidence!r}")
    for name, v in (("n_boot", n_boot), ("n_perm", n_perm)):
        if not isinstance(cast(object, v), (int, np.integer)) or v < 0:  # typed int; untyped callers may pass anything
            raise DataError(f"correlate: {name} must be an integer >= 0, got {v!r}")
    need = [x, y] + ([by] if by is not None else [])
    keys: tuple[str, ...] | None = None
    if aggregate is True:
        keys = DEFAULT_AGGREGATE
    elif isinstance(aggregate, str):
        keys = (aggregate,)
    elif aggregate:
        keys = tuple(aggregate)
    if keys:
        need += list(keys)
    missing = [c for c in dict.fromkeys(need) if c not in frame.columns]
    if missing:
        raise DataError(f"correlate: column(s) {', '.join(map(repr, missing))} not in the frame; available: {', '.join(map(str, frame.columns))}")

    data = pd.DataFrame({c: frame[c] for c in dict.fromkeys(need)})
    data[x] = _numeric(frame, x)
    data[y] = _numeric(frame, y)
    ok = np.isfinite(data[x].to_numpy()) & np.isfinite(data[y].to_numpy())
    if not ok.all():
        log.info("correlate: dropped %d of %d rows with NaN/inf in %s or %s", int((~ok).sum()), len(data), x, y)
    data = data[ok]
    if keys:
        gkeys = list(dict.fromkeys(list(keys) + ([by] if by is not None else [])))
        data = data.groupby(gkeys, sort=True, dropna=False)[[x, y]].mean().reset_index()

    def run(sub: pd.DataFrame, group: str) -> CorrelationResult:
        r = _correlate_arrays(sub[x].to_numpy(np.float64), sub[y].to_numpy(np.float64), int(n_boot), int(n_perm),
                              np.random.default_rng(seed), alternative, float(confidence))
        return CorrelationResult(x=x, y=y, n_boot=int(n_boot), n_perm=int(n_perm), alternative=alternative,
                                 confidence=float(confidence), group=group, by=by, aggregate=keys, **r)

    result = run(data, "all")
    if by is not None:
        for key, sub in data.groupby(by, sort=True, dropna=False):
            result.groups[str(key)] = run(sub, str(key))
    return result


# ----------------------------------------------------------------------------------------
# Paired comparison
# ----------------------------------------------------------------------------------------
@dataclass
class PairedResult:
    """Paired comparison of b against a over datasets; `alternative` is H1 for b relative to a."""

    names: tuple[str, str]
    n: int
    mean_a: float
    std_a: float
    mean_b: float
    std_b: float
    diff_mean: float
    diff_std: float
    rel_diff_mean: float
    rel_diff_std: float
    n_higher: int
    n_lower: int
    n_equal: int
    t_statistic: float
    t_p: float
    wilcoxon_statistic: float
    wilcoxon_p: float
    alternative: str

    def to_frame(self) -> pd.DataFrame:
        """The result as a one-row frame."""
        return pd.DataFrame([{"a": self.names[0], "b": self.names[1], **{k: v for k, v in self.__dict__.items() if k != "names"}}])

    def __str__(self) -> str:
        a, b = self.names
        h1 = {"greater": f"{b} > {a}", "less": f"{b} < {a}", "two-sided": f"{b} != {a}"}[self.alternative]
        return "\n".join([
            f"paired comparison over {self.n} datasets (H1: {h1})",
            f"  {a:<12} {self.mean_a:.4g} ± {self.std_a:.4g}",
            f"  {b:<12} {self.mean_b:.4g} ± {self.std_b:.4g}",
            f"  difference   {self.diff_mean:+.4g} ± {self.diff_std:.4g}; relative ({b}-{a})/|{a}| {self.rel_diff_mean:+.4g} ± {self.rel_diff_std:.4g}",
            f"  {b} higher on {self.n_higher}, lower on {self.n_lower}, equal on {self.n_equal}",
            f"  paired t-test p = {self.t_p:.4g} (t = {self.t_statistic:.3f}); Wilcoxon signed-rank p = {self.wilcoxon_p:.4g}",
        ])


def _paired_values(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    """Align two per-dataset series (on their index when both are Series) and drop non-finite pairs."""
    if isinstance(a, pd.Series) and isinstance(b, pd.Series):
        a, b = a.align(b, join="inner")
    av = np.asarray(a, dtype=np.float64).reshape(-1)
    bv = np.asarray(b, dtype=np.float64).reshape(-1)
    if av.shape != bv.shape:
        raise DataError(f"paired_comparison: a and b need one value per dataset each, got {av.size} and {bv.size}")
    ok = np.isfinite(av) & np.isfinite(bv)
    if not ok.all():
        log.info("paired_comparison: dropped %d of %d pairs with NaN/inf", int((~ok).sum()), av.size)
    return av[ok], bv[ok]


def _std(v: np.ndarray) -> float:
    return float(np.std(v, ddof=1)) if v.size > 1 else float("nan")


def paired_comparison(a: Any, b: Any, alternative: Alternative = "greater", names: Sequence[str] = ("a", "b")) -> PairedResult:
    """Compare b with a over paired datasets, e.g. a = RFM, b = RFAM (the seed paper's comparison).

    `alternative` is H1 about b: "greater" (b > a; the paper's test for accuracy and normal
    alignment, H1 RFAM higher), "less" (b < a; for normalised effective rank and ASR) or
    "two-sided". Reports mean ± std (ddof=1) of each arm, of b − a and of the relative difference
    (b − a)/|a| (pairs with a = 0 are left out of it), counts of b higher/lower/equal, the paired
    t-test (scipy.stats.ttest_rel) and the Wilcoxon signed-rank p-value. Series are paired on
    their index; NaN/inf pairs are dropped.
    """
    if alternative not in ("two-sided", "greater", "less"):
        raise DataError(f"paired_comparison: alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}")
    names_t = tuple(str(s) for s in names)
    if len(names_t) != 2:
        raise DataError(f"paired_comparison: names must be two labels (a, b), got {names!r}")
    av, bv = _paired_values(a, b)
    n = int(av.size)
    d = bv - av
    nz = av != 0
    rel = d[nz] / np.abs(av[nz])
    t_stat = t_p = w_stat = w_p = float("nan")
    if n >= 2 and np.any(d != 0):
        if np.all(d == d[0]):  # constant non-zero difference: the t statistic is infinite
            t_stat = float(np.sign(d[0]) * np.inf)
            t_p = {"greater": float(d[0] < 0), "less": float(d[0] > 0)}.get(alternative, 0.0)
        else:
            t = sps.ttest_rel(bv, av, alternative=alternative)
            t_stat, t_p = float(t.statistic), float(t.pvalue)
        w = sps.wilcoxon(d, alternative=alternative)
        w_stat, w_p = float(w.statistic), float(w.pvalue)
    return PairedResult(
        names=(names_t[0], names_t[1]), n=n,
        mean_a=float(av.mean()) if n else float("nan"), std_a=_std(av),
        mean_b=float(bv.mean()) if n else float("nan"), std_b=_std(bv),
        diff_mean=float(d.mean()) if n else float("nan"), diff_std=_std(d),
        rel_diff_mean=float(rel.mean()) if rel.size else float("nan"), rel_diff_std=_std(rel),
        n_higher=int((d > 0).sum()), n_lower=int((d < 0).sum()), n_equal=int((d == 0).sum()),
        t_statistic=t_stat, t_p=t_p, wilcoxon_statistic=w_stat, wilcoxon_p=w_p, alternative=alternative,
    )


def attack_success_rate(test_acc: Any, robust_acc: Any) -> Any:
    """ASR = 100·(acc − robust acc)/acc, elementwise; NaN where acc <= 0.

    A relative accuracy drop over all test points (not success on correctly classified points
    only); acc and robust acc may be fractions or percentages as long as both use the same unit.
    """
    acc = np.asarray(test_acc, dtype=np.float64)
    rob = np.asarray(robust_acc, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        asr = np.where(acc > 0, 100.0 * (acc - rob) / acc, np.nan)
    return float(asr) if asr.ndim == 0 else asr


# ----------------------------------------------------------------------------------------
# Two independent samples
# ----------------------------------------------------------------------------------------
def welch_p(a: Sequence[float], b: Sequence[float]) -> tuple[float, str | None]:
    """Two-sided Welch t-test p-value of two independent samples (scipy `ttest_ind(equal_var=False)`), or NaN with the reason."""
    if len(a) < 2 or len(b) < 2:
        return math.nan, f"needs >= 2 values per group, got {len(a)} and {len(b)}"
    if np.var(a) == 0 and np.var(b) == 0:
        return math.nan, "both groups have zero variance"
    with warnings.catch_warnings():  # a constant group (e.g. all censored at the cap) triggers a precision warning
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(sps.ttest_ind(np.asarray(a, float), np.asarray(b, float), equal_var=False).pvalue)
    return (p, None) if math.isfinite(p) else (math.nan, "t-test undefined for these values")


def mannwhitney_p(a: Sequence[float], b: Sequence[float]) -> tuple[float, str | None]:
    """Two-sided Mann–Whitney U p-value of two independent samples, or NaN with the reason.

    Valid with censoring at a common cap (censored values tie at the top).
    """
    if len(a) < 2 or len(b) < 2:
        return math.nan, f"needs >= 2 values per group, got {len(a)} and {len(b)}"
    if len(set(a) | set(b)) == 1:
        return math.nan, "all values equal"
    p = float(sps.mannwhitneyu(np.asarray(a, float), np.asarray(b, float), alternative="two-sided").pvalue)
    return (p, None) if math.isfinite(p) else (math.nan, "U test undefined for these values")


__all__ = ["CorrelationResult", "PairedResult", "attack_success_rate", "correlate", "mannwhitney_p", "paired_comparison", "welch_p"]
