"""Stratified alignment–robustness inference on simulated data with planted answers.

Simpson's paradox (strata whose means line up, no association inside any stratum), a planted
within-stratum correlation, heterogeneity between strata, partial correlations that remove a
planted confounder and keep a planted direct effect, bad strata, multiplicity adjustment and the
forest plot.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from robustbench_align.errors import ConfigError
from robustbench_align.metrics.stats import COLUMNS, correlate
from robustbench_align.reports.forest import forest_plot

FAST = {"n_boot": 500, "n_perm": 1000}


def _frame(blocks: list[dict[str, np.ndarray]], labels: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.concat([pd.DataFrame({"model": m, "dataset": d, **b}) for b, (m, d) in zip(blocks, labels, strict=True)], ignore_index=True)


def _labels(k: int) -> list[tuple[str, str]]:
    return [(f"m{i % 2}", f"d{i}") for i in range(k)]


def _bivariate(rng: np.random.Generator, rho: float, n: int) -> tuple[np.ndarray, np.ndarray]:
    z = rng.multivariate_normal([0.0, 0.0], [[1.0, rho], [rho, 1.0]], size=n)
    return z[:, 0], z[:, 1]


def test_simpson_strata_means_do_not_make_a_within_stratum_effect():
    """x and y independent inside each of 5 strata, stratum means strongly related: naive large, stratified null."""
    rng = np.random.default_rng(0)
    blocks = []
    for i in range(5):
        mu = 2.0 * i
        blocks.append({"x": mu + rng.normal(size=40), "y": mu + rng.normal(size=40)})
    frame = _frame(blocks, _labels(5))
    res = correlate(frame, "x", "y", **FAST)  # default strata: model × dataset
    assert res.by == ("model", "dataset") and len(res.groups) == 5
    assert res.spearman > 0.6 and res.spearman_p < 0.01  # the naive row
    assert res.pooled is not None and res.pooled.k == 5 and res.pooled.excluded == 0
    assert res.pooled.spearman_p > 0.05 and res.pooled.pearson_p > 0.05
    for meta in (res.pooled.spearman, res.pooled.pearson):
        assert meta.random_ci[0] < 0 < meta.random_ci[1]
    tab = res.to_frame().set_index("group")
    assert tab.loc["pooled", "kind"] == "pooled" and tab.loc["all", "kind"] == "naive"
    assert tab.loc["pooled", "spearman"] == pytest.approx(res.pooled.spearman.random)
    text = str(res)
    assert "naive" in text and "pooled (random effects)" in text and "stratified permutation" in text


def test_planted_within_stratum_correlation_is_found_and_covered():
    """rho = 0.5 inside 5 strata × 60 points with different offsets: p < 0.01, 0.5 inside the random-effects interval, I² small."""
    rng = np.random.default_rng(1)
    blocks = []
    for i in range(5):
        x, y = _bivariate(rng, 0.5, 60)
        blocks.append({"x": x + 3.0 * i, "y": y - 2.0 * i})  # offsets drive the naive correlation negative
    res = correlate(_frame(blocks, _labels(5)), "x", "y", **FAST)
    assert res.spearman < 0  # the naive row points the wrong way
    pooled = res.pooled
    assert pooled is not None
    assert pooled.pearson_p < 0.01 and pooled.spearman_p < 0.01
    lo, hi = pooled.pearson.random_ci
    assert lo < 0.5 < hi
    assert pooled.pearson.i2 < 0.3 and pooled.pearson.tau2 < 0.02
    # the fixed-effect estimate is the df-weighted Fisher-z mean of the strata
    r = np.array([g.pearson for g in res.groups.values()])
    assert pooled.pearson.fixed == pytest.approx(np.tanh(np.mean(np.arctanh(r))), abs=1e-12)  # equal n: equal weights
    assert all(g.df == 57 for g in res.groups.values())


def test_heterogeneous_strata_have_large_i2():
    """Strata with planted +0.7 and −0.7: Cochran's Q large, I² large, the pooled interval wide around 0."""
    rng = np.random.default_rng(2)
    blocks = []
    for i in range(6):
        x, y = _bivariate(rng, 0.7 if i % 2 == 0 else -0.7, 60)
        blocks.append({"x": x, "y": y})
    res = correlate(_frame(blocks, _labels(6)), "x", "y", **FAST)
    meta = res.pooled.pearson
    assert meta.i2 > 0.9 and meta.q_p < 1e-6 and meta.tau2 > 0.3
    assert meta.random_ci[0] < 0 < meta.random_ci[1]
    assert res.pooled.spearman.i2 > 0.9


def test_partial_correlation_removes_a_planted_confounder_and_keeps_a_direct_effect():
    rng = np.random.default_rng(3)
    confounded, direct = [], []
    for _ in range(4):
        c = rng.normal(size=100)
        x = c + rng.normal(scale=0.7, size=100)
        confounded.append({"x": x, "y": c + rng.normal(scale=0.7, size=100), "c": c})
        direct.append({"x": x, "y": c + 0.6 * x + rng.normal(scale=0.7, size=100), "c": c})
    res = correlate(_frame(confounded, _labels(4)), "x", "y", confounders=["c"], **FAST)
    assert res.confounders == ("c",)
    assert res.pooled.pearson.random > 0.5 and res.pooled.pearson_p < 0.01  # raw within-stratum: large
    part = res.partial_pooled
    assert part is not None and part.partial and part.k == 4
    for meta in (part.pearson, part.spearman):
        assert abs(meta.random) < 0.15 and meta.random_ci[0] < 0 < meta.random_ci[1]
    assert part.pearson_p > 0.05
    # a stratum's partial Pearson is the correlation of the OLS residuals, df = n − 3 − 1
    sub = _frame(confounded, _labels(4)).query("dataset == 'd0'")
    design = np.column_stack([np.ones(len(sub)), sub["c"]])
    resid = [v - design @ np.linalg.lstsq(design, v, rcond=None)[0] for v in (sub["x"].to_numpy(), sub["y"].to_numpy())]
    first = res.partial["m0 / d0"]
    assert first.pearson == pytest.approx(np.corrcoef(*resid)[0, 1], abs=1e-10) and first.df == 96
    ranks = [sps.rankdata(sub[v]) for v in ("x", "y", "c")]
    rdesign = np.column_stack([np.ones(len(sub)), ranks[2]])
    rres = [v - rdesign @ np.linalg.lstsq(rdesign, v, rcond=None)[0] for v in ranks[:2]]
    assert first.spearman == pytest.approx(np.corrcoef(*rres)[0, 1], abs=1e-10)

    kept = correlate(_frame(direct, _labels(4)), "x", "y", confounders="c", **FAST).partial_pooled
    assert kept.pearson.random_ci[0] > 0.3 and kept.pearson_p < 0.01 and kept.spearman_p < 0.01
    tab = correlate(_frame(direct, _labels(4)), "x", "y", confounders="c", n_boot=100, n_perm=100).to_frame()
    assert list(tab["group"][-5:]) == ["partial: m0 / d0", "partial: m0 / d2", "partial: m1 / d1", "partial: m1 / d3", "partial: pooled"]


def test_default_confounders_and_explicit_none():
    rng = np.random.default_rng(4)
    n = 60
    frame = pd.DataFrame({"model": "m", "dataset": np.repeat(["a", "b"], n // 2), "normal_alignment": rng.normal(size=n),
                          "radius_linf": rng.normal(size=n), "logit_margin": rng.normal(size=n), "jacobian_norm": rng.normal(size=n),
                          "x_norm": np.full(n, np.nan)})  # all NaN: not a default confounder
    res = correlate(frame, n_boot=50, n_perm=50)
    assert res.confounders == ("logit_margin", "jacobian_norm") and set(res.partial) == {"m / a", "m / b"}
    assert all(g.df == n // 2 - 3 - 2 for g in res.partial.values())
    off = correlate(frame, confounders=(), n_boot=50, n_perm=50)
    assert off.confounders == () and not off.partial and off.partial_pooled is None
    flat = correlate(frame, by=(), n_boot=50, n_perm=50)  # no strata: naive row and its partial version only
    assert flat.pooled is None and not flat.groups and list(flat.to_frame()["group"]) == ["all", "partial: all"]
    assert correlate(frame, by=False, n_boot=50, n_perm=50).by == ()
    assert list(correlate(frame, by="dataset", n_boot=50, n_perm=50).groups) == ["a", "b"]


def test_bad_strata_get_a_note_and_are_excluded():
    rng = np.random.default_rng(5)
    blocks = [{"x": rng.normal(size=30), "y": rng.normal(size=30), "c": rng.normal(size=30)} for _ in range(3)]
    blocks.append({"x": np.array([1.0, 2.0]), "y": np.array([0.5, 0.1]), "c": np.array([0.0, 1.0])})  # 2 points
    blocks.append({"x": np.full(20, 3.0), "y": rng.normal(size=20), "c": rng.normal(size=20)})  # constant x
    blocks.append({"x": rng.normal(size=5), "y": rng.normal(size=5), "c": rng.normal(size=5)})  # enough raw, not with 3 confounders
    labels = [("m", f"d{i}") for i in range(6)]
    frame = _frame(blocks, labels)
    frame["c2"], frame["c3"] = rng.normal(size=len(frame)), rng.normal(size=len(frame))
    res = correlate(frame, "x", "y", confounders=["c", "c2", "c3"], **FAST)
    tiny, flat, five = res.groups["m / d3"], res.groups["m / d4"], res.groups["m / d5"]
    assert tiny.note == "2 points: needs >= 4" and np.isnan(tiny.spearman) and np.isnan(tiny.pearson_ci[0])
    assert flat.note == "x is constant" and np.isnan(flat.pearson) and np.isnan(flat.spearman_p)
    assert five.note is None and np.isfinite(five.spearman)
    assert res.partial["m / d5"].note == "5 points: needs >= 7 for a partial correlation given 3 confounders"
    assert res.pooled.k == 4 and res.pooled.excluded == 2
    assert res.partial_pooled.k == 3 and res.partial_pooled.excluded == 3
    tab = res.to_frame().set_index("group")
    assert tab.loc["m / d3", "note"] == "2 points: needs >= 4" and np.isnan(tab.loc["m / d3", "spearman_p_adj"])
    assert tab.loc["pooled", "k"] == 4 and tab.loc["pooled", "excluded"] == 2
    text = str(res)
    assert "2 points: needs >= 4" in text and "x is constant" in text and "needs >= 7" in text
    assert "nan" not in text.lower()


def test_unknown_columns_are_one_line_config_errors():
    frame = pd.DataFrame({"x": np.arange(10.0), "y": np.arange(10.0) ** 2, "model": "m", "dataset": "d"})
    with pytest.raises(ConfigError, match="'margin'") as err:
        correlate(frame, "x", "y", confounders=["margin"])
    assert len(str(err.value).splitlines()) == 1 and "available: x, y, model, dataset" in str(err.value)
    with pytest.raises(ConfigError, match="'seed'") as err:
        correlate(frame, "x", "y", by=["model", "seed"])
    assert len(str(err.value).splitlines()) == 1
    with pytest.raises(ConfigError, match="p_adjust"):
        correlate(frame, "x", "y", p_adjust="bonferroni")
    with pytest.raises(ConfigError, match="confounder"):
        correlate(frame, "x", "y", confounders=["x"])
    with pytest.raises(ConfigError, match="single mean"):
        correlate(frame, "x", "y", by=["model", "dataset"], aggregate=True)


def test_adjusted_p_values():
    rng = np.random.default_rng(6)
    blocks = []
    for i in range(6):
        x, y = _bivariate(rng, 0.35 * (i % 3), 40)
        blocks.append({"x": x, "y": y})
    frame = _frame(blocks, _labels(6))
    holm = correlate(frame, "x", "y", **FAST).to_frame()
    bh = correlate(frame, "x", "y", p_adjust="bh", **FAST).to_frame()
    none = correlate(frame, "x", "y", p_adjust="none", **FAST).to_frame()
    assert list(holm.columns) == list(COLUMNS)
    strata = holm["kind"] == "stratum"
    for name in ("spearman", "pearson"):
        raw, h, b = holm.loc[strata, f"{name}_p"], holm.loc[strata, f"{name}_p_adj"], bh.loc[strata, f"{name}_p_adj"]
        assert (h >= raw - 1e-15).all() and (b >= raw - 1e-15).all() and (b <= h + 1e-15).all()
        assert (h > raw).any()
        np.testing.assert_array_equal(none.loc[strata, f"{name}_p_adj"], raw)
        assert holm.loc[~strata, f"{name}_p_adj"].isna().all()  # one test per naive/pooled row: nothing to adjust


def test_forest_plot_png_and_nothing_to_draw(tmp_path):
    rng = np.random.default_rng(7)
    blocks = []
    for _ in range(4):
        c = rng.normal(size=50)
        x, y = _bivariate(rng, 0.4, 50)
        blocks.append({"x": x + c, "y": y + c, "c": c})
    res = correlate(_frame(blocks, _labels(4)), "x", "y", confounders=["c"], n_boot=200, n_perm=200)
    out = tmp_path / "sub" / "forest.png"
    data = forest_plot(res, out)
    assert data is not None and data.startswith(b"\x89PNG") and out.read_bytes() == data
    assert not [p for p in out.parent.iterdir() if p.name != "forest.png"]  # no temporary file left behind
    assert forest_plot(res, which="pearson", title="pearson $x$").startswith(b"\x89PNG")
    empty = correlate(_frame(blocks, _labels(4)), "x", "y", by=(), confounders=(), n_boot=50, n_perm=50)
    assert forest_plot(empty) is None
    with pytest.raises(ConfigError, match="which"):
        forest_plot(res, which="kendall")


def test_stratified_default_is_fast_enough():
    """2000 points in 40 strata with 3 confounders and the default 2000 replicates: a few seconds."""
    import time

    rng = np.random.default_rng(8)
    n = 2000
    frame = pd.DataFrame({"model": np.repeat([f"m{i}" for i in range(8)], n // 8), "dataset": np.tile(np.repeat([f"d{j}" for j in range(5)], n // 40), 8),
                          "normal_alignment": rng.normal(size=n), "radius_linf": rng.normal(size=n), "logit_margin": rng.normal(size=n),
                          "jacobian_norm": rng.normal(size=n), "x_norm": rng.normal(size=n)})
    t0 = time.perf_counter()
    res = correlate(frame)
    assert len(res.groups) == 40 and len(res.partial) == 40
    assert time.perf_counter() - t0 < 15.0  # typically ~3 s on one core
