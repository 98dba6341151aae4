"""Statistics for the alignment–robustness question, the paired RFM-vs-RFAM comparison and two-sample tests.

- `correlate`: does x (e.g. normal alignment) predict y (e.g. the measured radius)? Spearman and
  Pearson correlations with percentile-bootstrap intervals and permutation p-values: naive (all
  points pooled, which between-stratum differences alone can produce — Simpson's paradox), per
  stratum (model × dataset by default, p-values Holm- or Benjamini–Hochberg-adjusted), the pooled
  within-stratum effect (Fisher-z meta-analysis: DerSimonian–Laird random effects, Cochran's Q,
  tau², I²; stratified permutation test with y permuted only within strata) and partial
  correlations given confounders (clean logit margin, Jacobian norm, ‖x‖ by default), so that
  "alignment predicts the radius beyond what margin and gradient size explain" is a test.
  Bootstrap and permutation replicates are computed as matrix operations over blocks of
  replicates (no per-replicate Python work beyond a block loop); permutation ranks are computed
  once, bootstrap Spearman re-ranks each resample (vectorised, from per-resample value counts) so
  it is the exact Spearman of the resample.
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import numpy as np
import pandas as pd
from scipy import stats as sps

from ..errors import ConfigError, DataError
from .intervals import PAdjust, adjust_p

log = logging.getLogger(__name__)

Alternative = Literal["two-sided", "greater", "less"]
_BLOCK_ELEMS = 1 << 19  # replicate-matrix entries per block (4 MB of float64)
_P_TOL = 1e-12  # float slack when comparing a replicate statistic with the observed one
DEFAULT_AGGREGATE = ("model", "dataset")
DEFAULT_STRATA = ("model", "dataset")  # correlate's strata when the frame has both columns
DEFAULT_CONFOUNDERS = ("logit_margin", "jacobian_norm", "x_norm")  # partial correlations given these, where present
MIN_POINTS = 4  # a correlation with a bootstrap CI and a Fisher-z variance 1/(n − 3) needs n >= 4 (4 + q for q confounders)
SPEARMAN_VAR = 1.06  # var atanh(r_s) ≈ 1.06 / (n − 3) (Fieller, Hartley & Pearson 1957); Pearson: 1 / (n − 3)
_R_CAP = 1.0 - 1e-12  # |r| cap before atanh, so a perfect correlation has a finite Fisher z
_RANK_TOL = 1e-10  # a confounder whose unexplained part is below this × its norm drops out of the residualisation
_EXPLAINED_TOL = 1e-9  # a residual this small relative to the variable means "explained exactly"


# ----------------------------------------------------------------------------------------
# Correlation
# ----------------------------------------------------------------------------------------
_NAN2 = (math.nan, math.nan)
_META_KEYS = ("fixed", "i2", "tau2", "q", "q_p")
COLUMNS: tuple[str, ...] = (
    "group", "kind", "n",
    "spearman", "spearman_lo", "spearman_hi", "spearman_p", "spearman_p_adj",
    "pearson", "pearson_lo", "pearson_hi", "pearson_p", "pearson_p_adj",
    "df", "k", "excluded",
    *(f"{m}_{s}" for m in ("spearman", "pearson") for s in _META_KEYS),
    "note",
)


@dataclass
class MetaAnalysis:
    """Fisher-z meta-analysis of k per-stratum correlations of one kind (Spearman or Pearson).

    Each stratum i contributes z_i = atanh(r_i) (|r_i| capped at 1 − 1e-12 so a perfect correlation
    stays finite) with variance v_i = c / df_i (Fisher 1921), df_i = n_i − 3 − q_i for q_i
    confounders (0 for a plain correlation), c = 1 for Pearson and c = 1.06 for Spearman (the
    Fieller, Hartley & Pearson 1957 approximation var atanh r_s ≈ 1.06/(n − 3), used with the
    partial df for partial Spearman). With w_i = 1/v_i:

    - fixed: the fixed-effect (inverse-variance) mean tanh(Σ w z / Σ w), interval ± z_(1+c)/2 / √Σw;
    - q: Cochran's Q = Σ w (z − z_fixed)² on q_df = k − 1 degrees of freedom, q_p its χ² p-value;
    - tau2: the DerSimonian & Laird (1986) between-stratum variance (on the z scale)
      max(0, (Q − (k − 1)) / (Σw − Σw²/Σw));
    - random: the random-effects mean with weights 1/(v_i + tau2) and its interval;
    - i2: the Higgins & Thompson (2002) heterogeneity share max(0, (Q − (k − 1)) / Q) (NaN for k < 2).

    Estimates and intervals are back-transformed with tanh; intervals are at the result's `confidence`.
    """

    k: int
    n: int
    fixed: float
    fixed_ci: tuple[float, float]
    random: float
    random_ci: tuple[float, float]
    tau2: float
    q: float
    q_df: int
    q_p: float
    i2: float


def _meta(r: np.ndarray, df: np.ndarray, n: np.ndarray, scale: float, confidence: float) -> MetaAnalysis:
    """`MetaAnalysis` of correlations r with Fisher degrees of freedom df (variance scale/df) from n points each."""
    k = int(r.size)
    if k == 0:
        return MetaAnalysis(0, 0, math.nan, _NAN2, math.nan, _NAN2, math.nan, math.nan, 0, math.nan, math.nan)
    z = np.arctanh(np.clip(r, -_R_CAP, _R_CAP))
    v = scale / df.astype(np.float64)
    w = 1.0 / v
    zq = float(sps.norm.ppf(0.5 + confidence / 2.0))
    z_fixed = float(w @ z / w.sum())
    se_fixed = math.sqrt(1.0 / w.sum())
    q = float(w @ (z - z_fixed) ** 2)
    c = float(w.sum() - (w**2).sum() / w.sum())
    tau2 = max(0.0, (q - (k - 1)) / c) if k > 1 and c > 0 else 0.0
    ws = 1.0 / (v + tau2)
    z_rand = float(ws @ z / ws.sum())
    se_rand = math.sqrt(1.0 / ws.sum())
    i2 = (max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0) if k > 1 else math.nan
    return MetaAnalysis(
        k=k, n=int(n.sum()),
        fixed=math.tanh(z_fixed), fixed_ci=(math.tanh(z_fixed - zq * se_fixed), math.tanh(z_fixed + zq * se_fixed)),
        random=math.tanh(z_rand), random_ci=(math.tanh(z_rand - zq * se_rand), math.tanh(z_rand + zq * se_rand)),
        tau2=float(tau2), q=q, q_df=k - 1, q_p=float(sps.chi2.sf(q, k - 1)) if k > 1 else math.nan, i2=float(i2),
    )


@dataclass
class PooledResult:
    """The pooled within-stratum effect: per-stratum correlations combined, and the stratified permutation test.

    `spearman`, `pearson`: Fisher-z meta-analyses (`MetaAnalysis`) of the computable strata; the
    reported estimate is the DerSimonian–Laird random-effects mean. `spearman_p`, `pearson_p`: the
    stratified permutation p-values — y (or, for partial correlations, y's confounder residual)
    permuted within each stratum, never across, with the fixed-effect Fisher-z mean
    Σ df_i atanh(r_i) / Σ df_i as the statistic; H0: no association within any stratum, so
    between-stratum differences (Simpson's paradox) cannot produce a small p. A stratum enters when
    both its Spearman and its Pearson correlation are defined; `excluded` counts the others.
    """

    spearman: MetaAnalysis
    pearson: MetaAnalysis
    spearman_p: float
    pearson_p: float
    strata: int
    excluded: int
    n_perm: int
    partial: bool = False
    note: str | None = None

    @property
    def k(self) -> int:
        """Strata pooled."""
        return self.spearman.k

    @property
    def n(self) -> int:
        """Points in the pooled strata."""
        return self.spearman.n

    def _row(self, group: str, kind: str) -> dict[str, Any]:
        s, p = self.spearman, self.pearson
        row: dict[str, Any] = {
            "group": group, "kind": kind, "n": s.n,
            "spearman": s.random, "spearman_lo": s.random_ci[0], "spearman_hi": s.random_ci[1], "spearman_p": self.spearman_p,
            "pearson": p.random, "pearson_lo": p.random_ci[0], "pearson_hi": p.random_ci[1], "pearson_p": self.pearson_p,
            "k": s.k, "excluded": self.excluded, "note": self.note,
        }
        for name, m in (("spearman", s), ("pearson", p)):
            row.update({f"{name}_{key}": getattr(m, key) for key in _META_KEYS})
        return row


@dataclass
class CorrelationResult:
    """Correlation of `y` on `x` with bootstrap CIs and permutation p-values, naive and within strata.

    The top-level numbers are the naive correlation over all points (group "all", kind "naive"):
    it ignores the strata, so between-stratum differences alone can produce it. `groups` holds one
    result per stratum (kind "stratum", p-values also adjusted over the strata: `*_p_adj`),
    `pooled` the pooled within-stratum effect with the stratified permutation test, `partial` the
    per-stratum partial correlations given `confounders` (kind "partial", group "partial: <stratum>")
    and `partial_pooled` their pooling. `note` says why a row's numbers are NaN (e.g. "3 points:
    needs >= 4"); `df` is the Fisher-z degrees of freedom n − 3 − (confounders).
    """

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
    by: tuple[str, ...] = ()
    aggregate: tuple[str, ...] | None = None
    groups: dict[str, CorrelationResult] = field(default_factory=dict)
    kind: str = "naive"
    note: str | None = None
    spearman_p_adj: float = math.nan
    pearson_p_adj: float = math.nan
    df: int | None = None
    confounders: tuple[str, ...] = ()
    p_adjust: str = "holm"
    pooled: PooledResult | None = None
    partial: dict[str, CorrelationResult] = field(default_factory=dict)
    partial_pooled: PooledResult | None = None

    def _row(self) -> dict[str, Any]:
        return {
            "group": self.group, "kind": self.kind, "n": self.n,
            "spearman": self.spearman, "spearman_lo": self.spearman_ci[0], "spearman_hi": self.spearman_ci[1],
            "spearman_p": self.spearman_p, "spearman_p_adj": self.spearman_p_adj,
            "pearson": self.pearson, "pearson_lo": self.pearson_ci[0], "pearson_hi": self.pearson_ci[1],
            "pearson_p": self.pearson_p, "pearson_p_adj": self.pearson_p_adj,
            "df": self.df, "note": self.note,
        }

    def to_frame(self) -> pd.DataFrame:
        """One row each: the naive correlation ("all"), every stratum, the pooled within-stratum effect ("pooled"),
        then the partial correlations per stratum ("partial: <stratum>") and pooled ("partial: pooled").

        Columns `COLUMNS`; `kind` is "naive", "stratum", "pooled", "partial" or "partial pooled".
        On pooled rows spearman/pearson are the random-effects estimates, _lo/_hi their intervals,
        _p the stratified permutation p-values, and k, excluded, _fixed, _i2, _tau2, _q, _q_p
        describe the meta-analysis (NaN on the other rows). `_p_adj` is set on stratum and partial
        rows only, `df` on computable stratum and partial rows; `note` explains NaN numbers.
        """
        rows = [self._row()] + [g._row() for g in self.groups.values()]
        if self.pooled is not None:
            rows.append(self.pooled._row("pooled", "pooled"))
        rows += [g._row() for g in self.partial.values()]
        if self.partial_pooled is not None:
            rows.append(self.partial_pooled._row("partial: pooled", "partial pooled"))
        return pd.DataFrame(rows, columns=list(COLUMNS))

    def __str__(self) -> str:
        unit = f" on {'/'.join(self.aggregate)} means" if self.aggregate else ""
        strata = f" within {' × '.join(self.by)} strata" if self.by else ""
        head = (f"{self.y} vs {self.x}{unit}{strata}: {self.confidence * 100:g}% bootstrap CIs ({self.n_boot} resamples), "
                f"{self.alternative} permutation p-values ({self.n_perm} permutations)")
        if self.groups or self.partial:
            head += f"; p_adj: per-stratum p-values {_ADJUST_TEXT[self.p_adjust]}"
        rows = [("all (naive, ignores strata)" if self.by else "all", self._row())]
        rows += [(f"  {g.group}", g._row()) for g in self.groups.values()]
        labels = [label for label, _ in rows] + [f"  {g.group}" for g in self.partial.values()]
        labels += ["pooled (random effects)"] * (self.pooled is not None) + [_PARTIAL_POOLED] * (self.partial_pooled is not None)
        width = min(max(28, *(len(label) for label in labels)), 48)
        ci = f"{self.confidence * 100:g}% CI"
        header = (f"{'group':<{width}} {'n':>6}  {'spearman':>8} {ci:>17} {'p':>7} {'p_adj':>7}  "
                  f"{'pearson':>8} {ci:>17} {'p':>7} {'p_adj':>7}")
        lines = [head, header]
        lines += [_format_row(label, r, width) for label, r in rows]
        if self.pooled is not None:
            lines.append(_format_row("pooled (random effects)", self.pooled._row("pooled", "pooled"), width))
            lines.append(_pooled_text(self.pooled))
        if self.partial:
            q = len(self.confounders)
            lines.append(f"partial correlations given {', '.join(self.confounders)} (OLS with intercept within each stratum; "
                         f"ranks residualised for Spearman; Fisher df n − 3 − {q}; p permutes y's residual):")
            lines += [_format_row(f"  {g.group}", g._row(), width) for g in self.partial.values()]
            if self.partial_pooled is not None:
                lines.append(_format_row(_PARTIAL_POOLED, self.partial_pooled._row("partial: pooled", "partial pooled"), width))
                lines.append(_pooled_text(self.partial_pooled))
        return "\n".join(lines)


_PARTIAL_POOLED = "partial: pooled (random effects)"
_ADJUST_TEXT = {"holm": "Holm-adjusted (Holm 1979)", "bh": "Benjamini–Hochberg-adjusted (Benjamini & Hochberg 1995)", "none": "unadjusted"}


def _fmt(v: Any, spec: str, width: int) -> str:
    """v formatted with `spec`, or "—" for a missing value, right-aligned in `width`."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        f = math.nan
    return f"{'—' if not math.isfinite(f) else format(f, spec):>{width}}"


def _format_row(label: str, r: dict[str, Any], width: int) -> str:
    """One line of the text table; a row whose estimates are all undefined shows its note instead of numbers."""
    n = f"{int(r['n']):>6}" if r.get("n") is not None and np.isfinite(r["n"]) else f"{'—':>6}"
    note = r.get("note")
    if not (np.isfinite(r["spearman"]) or np.isfinite(r["pearson"])):
        return f"{label[:width]:<{width}} {n}  {note or 'not computable'}"
    parts = []
    for m in ("spearman", "pearson"):
        parts.append(f"{_fmt(r[m], '.3f', 8)} [{_fmt(r[f'{m}_lo'], '.3f', 6)}, {_fmt(r[f'{m}_hi'], '.3f', 6)}] "
                     f"{_fmt(r[f'{m}_p'], '.4f', 7)} {_fmt(r.get(f'{m}_p_adj'), '.4f', 7)}")
    return f"{label[:width]:<{width}} {n}  " + "  ".join(parts) + (f"  ({note})" if note else "")


def _pooled_text(p: PooledResult) -> str:
    """The lines under a pooled row: what was pooled, the test, and the heterogeneity."""
    excl = f", {p.excluded} not computable and excluded" if p.excluded else ""
    text = f"    {p.k} of {p.strata} strata pooled{excl}"
    if p.k == 0:
        return text
    text += "; p: stratified permutation test (y permuted within strata; statistic the fixed-effect Fisher-z mean)"
    het = [f"{name} I² {m.i2 * 100:.0f}% (tau² {m.tau2:.3g}, Q {m.q:.3g} on {m.q_df} df, p {m.q_p:.3g})"
           for name, m in (("Spearman", p.spearman), ("Pearson", p.pearson)) if m.k >= 2]
    return text + "\n    heterogeneity: " + ("; ".join(het) if het else "needs >= 2 strata")


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


def _rank_codes(v: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense codes 0..m−1 of v's distinct values (in order) and m."""
    u, inv = np.unique(v, return_inverse=True)
    return inv.reshape(-1), int(u.size)


def _resample_ranks(codes: np.ndarray, m: int, idx: np.ndarray) -> np.ndarray:
    """Average ranks (1-based, ties averaged: scipy's rankdata) of each bootstrap resample v[idx[b]], (k, n).

    From the per-resample counts of each distinct value (one bincount over the block) instead of a
    sort per row: the rank of value u in a resample is #(< u) + (#(= u) + 1) / 2.
    """
    k, _ = idx.shape
    c = codes[idx]
    cnt = np.bincount((c + m * np.arange(k)[:, None]).ravel(), minlength=k * m).reshape(k, m)
    avg = np.cumsum(cnt, axis=1) - (cnt - 1) / 2.0
    return np.take_along_axis(avg, c, axis=1)


def _dot(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Row-wise inner products of (k, n) arrays."""
    return np.einsum("kn,kn->k", A, B)


def _residualise(vs: Sequence[np.ndarray], zs: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Residuals of each (k, n) array in `vs` after OLS, row by row, on an intercept and the (k, n) arrays in `zs`.

    The centred confounders are orthonormalised by modified Gram–Schmidt with one
    re-orthogonalisation pass ("twice is enough"), vectorised over the k rows; a confounder whose
    part not explained by the previous ones has a norm <= 1e-10 × its centred norm (constant in a
    stratum, or collinear) drops out instead of making the fit singular. Returns the residuals (a
    row whose residual norm is <= 1e-9 × its centred norm, i.e. explained exactly, is NaN) and the
    effective number of confounders per row.
    """
    basis: list[np.ndarray] = []
    q_eff = np.zeros(zs[0].shape[0] if zs else 0, dtype=np.int64)
    for z in zs:
        u = z - z.mean(axis=1, keepdims=True)
        ref = np.sqrt(_dot(u, u))
        for _ in range(2):
            for b in basis:
                u -= _dot(b, u)[:, None] * b
        nrm = np.sqrt(_dot(u, u))
        ok = nrm > _RANK_TOL * ref
        basis.append(np.where(ok[:, None], u / np.where(ok, nrm, 1.0)[:, None], 0.0))
        q_eff += ok
    out = []
    for v in vs:
        r = v - v.mean(axis=1, keepdims=True)
        ref = np.sqrt(_dot(r, r))
        for b in basis:
            r -= _dot(b, r)[:, None] * b
        bad = np.sqrt(_dot(r, r)) <= _EXPLAINED_TOL * ref  # includes constant rows
        out.append(np.where(bad[:, None], np.nan, r))
    return out, q_eff


@dataclass
class _Prepared:
    """One stratum's centred unit-norm vectors: r = zx·zy (Pearson) and zrx·zry (Spearman); NaN vectors where undefined.

    For a partial correlation they are the confounder residuals (of the values, and of the ranks).
    `df` is the Fisher-z degrees of freedom n − 3 − (effective confounders).
    """

    zx: np.ndarray
    zy: np.ndarray
    zrx: np.ndarray
    zry: np.ndarray
    df: int
    boot: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]  # index block (k, n) -> (pearson, spearman) replicates
    width: int = 1  # values per point a replicate holds (for the block size)

    @property
    def n(self) -> int:
        return int(self.zx.size)

    @property
    def pearson(self) -> float:
        return float(self.zx @ self.zy)

    @property
    def spearman(self) -> float:
        return float(self.zrx @ self.zry)

    @property
    def poolable(self) -> bool:
        return bool(np.isfinite(self.pearson) and np.isfinite(self.spearman) and self.df >= 1)


def _points(n: int) -> str:
    return f"{n} point{'' if n == 1 else 's'}"


def _constant_note(xv: np.ndarray, yv: np.ndarray) -> str | None:
    cx, cy = np.ptp(xv) == 0, np.ptp(yv) == 0
    if cx and cy:
        return "x and y are constant"
    return "x is constant" if cx else ("y is constant" if cy else None)


def _prepare_plain(xv: np.ndarray, yv: np.ndarray) -> tuple[_Prepared | None, str | None]:
    """Spearman/Pearson inputs of one sample, or the reason they are undefined."""
    n = xv.size
    if n < MIN_POINTS:
        return None, f"{_points(n)}: needs >= {MIN_POINTS}"
    note = _constant_note(xv, yv)
    if note:
        return None, note
    cx, mx = _rank_codes(xv)
    cy, my = _rank_codes(yv)

    def boot(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return _rowwise_corr(xv[idx], yv[idx]), _rowwise_corr(_resample_ranks(cx, mx, idx), _resample_ranks(cy, my, idx))

    z = _standardise_rows(np.stack([xv, yv, sps.rankdata(xv), sps.rankdata(yv)]))  # ranks computed once for the estimate and the permutations
    return _Prepared(z[0], z[1], z[2], z[3], n - 3, boot), None


def _prepare_partial(xv: np.ndarray, yv: np.ndarray, Z: np.ndarray) -> tuple[_Prepared | None, str | None, int]:
    """Partial Pearson/Spearman inputs given confounders Z (n, q): residuals of x and y (and of their ranks on Z's ranks).

    Points with a non-finite confounder are left out; returns the prepared stratum (or None), a
    note, and the number of points used.
    """
    ok = np.isfinite(Z).all(axis=1)
    xv, yv, Z = xv[ok], yv[ok], Z[ok]
    n, q = xv.size, Z.shape[1]
    need = MIN_POINTS + q
    if n < need:
        which = " with finite confounders" if not ok.all() else ""
        return None, f"{_points(n)}{which}: needs >= {need} for a partial correlation given {q} confounder{'s' if q > 1 else ''}", n
    note = _constant_note(xv, yv)
    if note:
        return None, note, n
    zcols = [np.ascontiguousarray(c) for c in Z.T]
    R, q_eff = _residualise([xv[None], yv[None]], [c[None] for c in zcols])
    ranks = sps.rankdata(np.column_stack([xv, yv, Z]), axis=0).T
    Rr, _ = _residualise([ranks[0][None], ranks[1][None]], [c[None] for c in ranks[2:]])
    bad = [f"{v} is explained exactly by the confounders" for v, res in (("x", R[0]), ("y", R[1])) if np.isnan(res[0, 0])]
    if bad:
        return None, "; ".join(bad), n
    bad_r = [f"the ranks of {v} are explained exactly by the confounders' ranks" for v, res in (("x", Rr[0]), ("y", Rr[1])) if np.isnan(res[0, 0])]
    codes = [_rank_codes(c) for c in (xv, yv, *zcols)]

    def boot(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        (ex, ey), _ = _residualise([xv[idx], yv[idx]], [c[idx] for c in zcols])
        rk = [_resample_ranks(c, m, idx) for c, m in codes]
        (erx, ery), _ = _residualise(rk[:2], rk[2:])
        return _rowwise_corr(ex, ey), _rowwise_corr(erx, ery)

    z = _standardise_rows(np.stack([R[0][0], R[1][0], Rr[0][0], Rr[1][0]]))
    prep = _Prepared(z[0], z[1], z[2], z[3], n - 3 - int(q_eff[0]), boot, width=2 * q + 6)
    if prep.df < 1:
        return None, f"{_points(n)}: needs >= {4 + int(q_eff[0])} for a partial correlation given {int(q_eff[0])} independent confounders", n
    if not ok.all():
        bad_r.append(f"{n} of {ok.size} points have finite confounders")
    return prep, ("; ".join(bad_r) or None), n


def _infer(prep: _Prepared | None, n: int, n_boot: int, n_perm: int, rng: np.random.Generator, alternative: str,
           confidence: float) -> dict[str, Any]:
    """Point estimates, percentile-bootstrap CIs and permutation p-values of one prepared sample (NaN when undefined)."""
    out: dict[str, Any] = {"n": int(n), "spearman": math.nan, "spearman_ci": _NAN2, "spearman_p": math.nan,
                           "pearson": math.nan, "pearson_ci": _NAN2, "pearson_p": math.nan, "df": None}
    if prep is None:
        return out
    out.update(pearson=prep.pearson, spearman=prep.spearman, df=int(prep.df))
    m = prep.n
    if n_perm > 0:
        null_p, null_s = np.empty(n_perm), np.empty(n_perm)
        step = _block(m, n_perm)
        base = np.arange(m)
        for s in range(0, n_perm, step):
            k = min(step, n_perm - s)
            perm = rng.permuted(np.broadcast_to(base, (k, m)), axis=1)
            null_p[s : s + k] = prep.zy[perm] @ prep.zx
            null_s[s : s + k] = prep.zry[perm] @ prep.zrx
        out["pearson_p"] = _p_value(null_p, out["pearson"], alternative)
        out["spearman_p"] = _p_value(null_s, out["spearman"], alternative)
    if n_boot > 0:
        boot_p, boot_s = np.empty(n_boot), np.empty(n_boot)
        step = _block(m * prep.width, n_boot)
        for s in range(0, n_boot, step):
            k = min(step, n_boot - s)
            idx = rng.integers(0, m, size=(k, m))
            with np.errstate(invalid="ignore", divide="ignore"):
                boot_p[s : s + k], boot_s[s : s + k] = prep.boot(idx)
        if np.isfinite(out["pearson"]):
            out["pearson_ci"] = _ci(boot_p, confidence)
        if np.isfinite(out["spearman"]):
            out["spearman_ci"] = _ci(boot_s, confidence)
    return out


def _stratified_p(parts: Sequence[_Prepared], n_perm: int, rng: np.random.Generator, alternative: str) -> tuple[float, float]:
    """(Spearman p, Pearson p) of the stratified permutation test over the prepared strata.

    Replicate b permutes y within every stratum independently (never across strata) and recomputes
    T = Σ df_i atanh(r_i) / Σ df_i, the fixed-effect Fisher-z mean; p = (1 + #as-extreme) / (1 + n_perm).
    """
    if not parts or n_perm <= 0:
        return math.nan, math.nan
    sizes = np.array([p.n for p in parts])
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    w = np.array([p.df for p in parts], dtype=np.float64)
    w /= w.sum()
    zx, zy, zrx, zry = (np.concatenate([getattr(p, a) for p in parts]) for a in ("zx", "zy", "zrx", "zry"))

    def stat(prod: np.ndarray) -> np.ndarray:
        r = np.add.reduceat(prod, starts, axis=-1)
        return np.arctanh(np.clip(r, -_R_CAP, _R_CAP)) @ w

    obs_p, obs_s = float(stat(zx * zy)), float(stat(zrx * zry))
    null_p, null_s = np.empty(n_perm), np.empty(n_perm)
    bases = [np.arange(a, a + b) for a, b in zip(starts, sizes, strict=True)]
    step = _block(int(sizes.sum()), n_perm)
    for s in range(0, n_perm, step):
        k = min(step, n_perm - s)
        perm = np.concatenate([rng.permuted(np.broadcast_to(b, (k, b.size)), axis=1) for b in bases], axis=1)
        null_p[s : s + k] = stat(zy[perm] * zx)
        null_s[s : s + k] = stat(zry[perm] * zrx)
    return _p_value(null_s, obs_s, alternative), _p_value(null_p, obs_p, alternative)


def _pool(preps: Sequence[_Prepared | None], n_perm: int, rng: np.random.Generator, alternative: str, confidence: float,
          partial: bool) -> PooledResult:
    """Meta-analyses and the stratified permutation test over the poolable strata of `preps` (one entry per stratum)."""
    parts = [p for p in preps if p is not None and p.poolable]
    df = np.array([p.df for p in parts], dtype=np.float64)
    n = np.array([p.n for p in parts], dtype=np.int64)
    sp = _meta(np.array([p.spearman for p in parts]), df, n, SPEARMAN_VAR, confidence)
    pe = _meta(np.array([p.pearson for p in parts]), df, n, 1.0, confidence)
    p_s, p_p = _stratified_p(parts, n_perm, rng, alternative)
    excluded = len(preps) - len(parts)
    note = None
    if not parts:
        note = f"no computable stratum ({excluded} excluded)"
    elif len(parts) == 1:
        note = "1 stratum: no heterogeneity estimate"
    if excluded:
        log.info("correlate: %d of %d strata not computable, left out of the pooled estimate", excluded, len(preps))
    return PooledResult(spearman=sp, pearson=pe, spearman_p=p_s, pearson_p=p_p, strata=len(preps), excluded=excluded,
                        n_perm=int(n_perm), partial=partial, note=note)


def _numeric(frame: pd.DataFrame, col: str) -> np.ndarray:
    return pd.to_numeric(frame[col], errors="coerce").to_numpy(dtype=np.float64)


def _names(value: Any) -> tuple[str, ...] | None:
    """A column name or a list/tuple of them as a tuple (None when `value` is neither)."""
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(dict.fromkeys(value))
    return None


def _available(frame: pd.DataFrame) -> str:
    return ", ".join(str(c) for c in frame.columns)


def _strata_columns(frame: pd.DataFrame, by: Any, keys: tuple[str, ...] | None) -> tuple[str, ...]:
    """The stratum columns: `by` resolved (None: model × dataset when both columns exist and nothing is aggregated)."""
    if by is None:
        return DEFAULT_STRATA if not keys and all(c in frame.columns for c in DEFAULT_STRATA) else ()
    if by is False:
        return ()
    cols = _names(by)
    if cols is None:
        raise ConfigError(f"correlate: by must be a column name, a list of column names, () for no strata or None for the default "
                          f"{' × '.join(DEFAULT_STRATA)}; got {by!r}")
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ConfigError(f"correlate: grouping column(s) {', '.join(map(repr, missing))} not in the frame; available: {_available(frame)}")
    if keys and cols and set(keys) <= set(cols):
        raise ConfigError(f"correlate: with aggregate={list(keys)} every stratum of by={list(cols)} holds a single mean; "
                          "use a coarser by (e.g. by='model') or by=()")
    return cols


def _confounder_columns(frame: pd.DataFrame, confounders: Any, x: str, y: str, ok: np.ndarray) -> tuple[str, ...]:
    """The confounder columns: `confounders` checked, or (None) those of DEFAULT_CONFOUNDERS present with a finite value."""
    if confounders is None:
        return tuple(c for c in DEFAULT_CONFOUNDERS
                     if c in frame.columns and c not in (x, y) and np.isfinite(_numeric(frame, c)[ok]).any())
    cols = _names(confounders)
    if cols is None:
        raise ConfigError(f"correlate: confounders must be a column name, a list of column names or () for none; got {confounders!r}")
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ConfigError(f"correlate: confounder(s) {', '.join(map(repr, missing))} not in the frame; available: {_available(frame)}")
    clash = [c for c in cols if c in (x, y)]
    if clash:
        raise ConfigError(f"correlate: {clash[0]!r} is {'x' if clash[0] == x else 'y'} and cannot also be a confounder")
    return cols


def _stratum_label(key: Any) -> str:
    return " / ".join(str(k) for k in key) if isinstance(key, tuple) else str(key)


def correlate(
    frame: pd.DataFrame,
    x: str = "normal_alignment",
    y: str = "radius_linf",
    by: str | Sequence[str] | Literal[False] | None = None,
    n_boot: int = 2000,
    n_perm: int = 2000,
    seed: int = 0,
    *,
    aggregate: bool | str | Sequence[str] | None = None,
    alternative: Alternative = "two-sided",
    confidence: float = 0.95,
    confounders: str | Sequence[str] | None = None,
    p_adjust: PAdjust = "holm",
) -> CorrelationResult:
    """Spearman/Pearson correlation of columns `x` and `y` of `frame`: naive, per stratum, pooled within strata, partial.

    Rows where x or y is NaN/inf are dropped (counted in the log). Every correlation comes with a
    percentile-bootstrap interval (`n_boot` resamples, at `confidence`) and a permutation p-value
    (`n_perm` permutations, `alternative`). Deterministic for a given `seed` (>= 0).

    - Strata, `by`: a column or a list of columns; the default (None) is model × dataset when the
      frame has both columns (and nothing is aggregated), else none. `by=()` (or False) means no
      strata: only the naive correlation (and its partial version). Stratum labels join the values
      with " / " ("mlp / wine").
    - The naive row ("all") pools every point and ignores the strata: between-stratum differences
      alone can produce it (Simpson's paradox). Per-stratum rows carry p-values adjusted over the
      strata, `p_adjust` "holm" (Holm 1979, default), "bh" (Benjamini & Hochberg 1995) or "none".
    - The pooled within-stratum effect (`.pooled`, row "pooled"): a Fisher-z meta-analysis of the
      per-stratum correlations (`MetaAnalysis`: DerSimonian & Laird 1986 random-effects estimate and
      interval, Cochran's Q, tau², I²) and the stratified permutation test (y permuted within strata;
      `PooledResult`). A stratum that is not computable is left out and counted (`excluded`).
    - Partial correlations given `confounders` (default: those of logit_margin, jacobian_norm,
      x_norm that are columns with a finite value; `()` disables): within each stratum x and y are
      residualised on the confounders (OLS with an intercept) and the residuals correlated
      (Pearson); partial Spearman does the same with the ranks of x, y and the confounders.
      Points with a non-finite confounder are left out of the partial analysis. Fisher-z df
      n − 3 − q (q confounders). Their permutation p-values permute y's residual (Kennedy 1995).
      Rows "partial: <stratum>" and, with strata, "partial: pooled"; p-values adjusted as above
      (as a family of their own).
    - Bad input: a stratum with fewer than 4 points (4 + q for a partial correlation) or a
      constant x or y gets NaN numbers and a `note` saying why. An unknown x/y/aggregate column is
      a DataError; an unknown grouping column or confounder a ConfigError.

    `aggregate=True` first averages x, y (and the confounders) per (model, dataset) — or per the
    given column(s) — so each counts once; the strata must then be coarser than the aggregation.
    """
    if not isinstance(frame, pd.DataFrame):
        raise DataError(f"correlate: frame must be a pandas DataFrame, got {type(frame).__name__}")
    if alternative not in ("two-sided", "greater", "less"):
        raise DataError(f"correlate: alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}")
    if not (0.0 < float(confidence) < 1.0):
        raise DataError(f"correlate: confidence must be in (0, 1), got {confidence!r}")
    for name, v in (("n_boot", n_boot), ("n_perm", n_perm), ("seed", seed)):
        if not isinstance(cast(object, v), (int, np.integer)) or v < 0:  # typed int; untyped callers may pass anything
            raise DataError(f"correlate: {name} must be an integer >= 0, got {v!r}")
    if p_adjust not in ("holm", "bh", "none"):
        raise ConfigError(f"correlate: p_adjust must be 'holm', 'bh' or 'none', got {p_adjust!r}")
    keys: tuple[str, ...] | None = None
    if aggregate is True:
        keys = DEFAULT_AGGREGATE
    elif isinstance(aggregate, str):
        keys = (aggregate,)
    elif aggregate:
        keys = tuple(aggregate)
    need = [x, y] + list(keys or ())
    missing = [c for c in dict.fromkeys(need) if c not in frame.columns]
    if missing:
        raise DataError(f"correlate: column(s) {', '.join(map(repr, missing))} not in the frame; available: {_available(frame)}")
    strata = _strata_columns(frame, by, keys)
    xv_all, yv_all = _numeric(frame, x), _numeric(frame, y)
    ok = np.isfinite(xv_all) & np.isfinite(yv_all)
    conf = _confounder_columns(frame, confounders, x, y, ok)

    cols = list(dict.fromkeys([*strata, *(keys or ())]))
    data = pd.DataFrame({c: frame[c] for c in cols if c not in (x, y, *conf)})
    data[x], data[y] = xv_all, yv_all
    for c in conf:
        data[c] = _numeric(frame, c)
    if not ok.all():
        log.info("correlate: dropped %d of %d rows with NaN/inf in %s or %s", int((~ok).sum()), len(data), x, y)
    data = data[ok]
    if keys:
        data = data.groupby(cols, sort=True, dropna=False)[[x, y, *conf]].mean().reset_index()

    common: dict[str, Any] = {"x": x, "y": y, "n_boot": int(n_boot), "n_perm": int(n_perm), "alternative": alternative,
              "confidence": float(confidence), "by": strata, "aggregate": keys, "confounders": conf, "p_adjust": p_adjust}
    args = (int(n_boot), int(n_perm))

    def values(sub: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return sub[x].to_numpy(np.float64), sub[y].to_numpy(np.float64)

    prep, note = _prepare_plain(*values(data))
    result = CorrelationResult(**common, group="all", kind="naive", note=note,
                               **_infer(prep, len(data), *args, np.random.default_rng(seed), alternative, float(confidence)))
    pieces = [(_stratum_label(k), sub) for k, sub in data.groupby(list(strata), sort=True, dropna=False)] if strata else []
    if strata:
        preps: list[_Prepared | None] = []
        for i, (label, sub) in enumerate(pieces):
            prep, note = _prepare_plain(*values(sub))
            preps.append(prep)
            result.groups[label] = CorrelationResult(**common, group=label, kind="stratum", note=note,
                                                     **_infer(prep, len(sub), *args, np.random.default_rng([seed, 1, i]), alternative, float(confidence)))
        _adjust(list(result.groups.values()), p_adjust)
        result.pooled = _pool(preps, int(n_perm), np.random.default_rng([seed, 3]), alternative, float(confidence), partial=False)
    if conf:
        preps = []
        for i, (label, sub) in enumerate(pieces or [("all", data)]):
            prep, note, used = _prepare_partial(*values(sub), sub[list(conf)].to_numpy(np.float64))
            preps.append(prep)
            result.partial[label] = CorrelationResult(**common, group=f"partial: {label}", kind="partial", note=note,
                                                      **_infer(prep, used, *args, np.random.default_rng([seed, 2, i]), alternative, float(confidence)))
        _adjust(list(result.partial.values()), p_adjust)
        if strata:
            result.partial_pooled = _pool(preps, int(n_perm), np.random.default_rng([seed, 4]), alternative, float(confidence), partial=True)
    return result


def _adjust(results: Sequence[CorrelationResult], method: PAdjust) -> None:
    """Set `*_p_adj` of a family of results (NaN p-values are not tests)."""
    for name in ("spearman", "pearson"):
        adj = adjust_p([getattr(r, f"{name}_p") for r in results], method)
        for r, a in zip(results, adj, strict=True):
            setattr(r, f"{name}_p_adj", float(a))


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


__all__ = ["COLUMNS", "DEFAULT_CONFOUNDERS", "DEFAULT_STRATA", "CorrelationResult", "MetaAnalysis", "PairedResult", "PooledResult",
           "attack_success_rate", "correlate", "mannwhitney_p", "paired_comparison", "welch_p"]
