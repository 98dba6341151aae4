"""Correlation with bootstrap/permutation inference, the paired comparison and ASR, on planted data."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from robustbench_align.errors import DataError
from robustbench_align.metrics.stats import CorrelationResult, attack_success_rate, correlate, paired_comparison


def test_planted_monotone_relation():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 80)
    frame = pd.DataFrame({"normal_alignment": x, "radius_linf": np.exp(3 * x) + x**3})  # monotone, not linear
    res = correlate(frame)
    assert isinstance(res, CorrelationResult)
    assert res.n == 80
    assert res.spearman == pytest.approx(1.0, abs=1e-12)
    assert res.spearman_ci == pytest.approx((1.0, 1.0), abs=1e-12)
    assert res.spearman_p < 0.01 and res.pearson_p < 0.01
    assert res.spearman_p == pytest.approx(1 / 2001)
    assert 0.8 < res.pearson < 1.0
    assert res.pearson == pytest.approx(sps.pearsonr(frame["normal_alignment"], frame["radius_linf"])[0], abs=1e-12)
    assert res.pearson_ci[0] < res.pearson < res.pearson_ci[1] + 1e-12


def test_independent_data_interval_covers_zero():
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"a": rng.normal(size=300), "b": rng.normal(size=300)})
    res = correlate(frame, x="a", y="b", seed=3)
    assert res.spearman_ci[0] < 0 < res.spearman_ci[1]
    assert res.pearson_ci[0] < 0 < res.pearson_ci[1]
    assert res.spearman_p > 0.05 and res.pearson_p > 0.05
    assert res.spearman == pytest.approx(sps.spearmanr(frame["a"], frame["b"])[0], abs=1e-12)
    # the permutation p-value agrees with the analytic one for a moderate correlation
    frame["c"] = frame["a"] * 0.15 + rng.normal(size=300)
    res = correlate(frame, x="a", y="c", n_perm=4000)
    assert res.pearson_p == pytest.approx(sps.pearsonr(frame["a"], frame["c"])[1], abs=0.02)


def test_bootstrap_interval_has_nominal_width():
    """For bivariate normal data with rho = 0.5 the interval matches the Fisher-z interval."""
    rng = np.random.default_rng(2)
    n = 400
    z = rng.multivariate_normal([0, 0], [[1, 0.5], [0.5, 1]], size=n)
    res = correlate(pd.DataFrame({"x": z[:, 0], "y": z[:, 1]}), x="x", y="y")
    fz = np.arctanh(res.pearson)
    lo, hi = np.tanh(fz - 1.96 / np.sqrt(n - 3)), np.tanh(fz + 1.96 / np.sqrt(n - 3))
    assert res.pearson_ci == pytest.approx((lo, hi), abs=0.03)


def test_deterministic_and_seed_dependent():
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"x": rng.normal(size=50), "y": rng.normal(size=50)})
    a, b = correlate(frame, "x", "y", seed=7), correlate(frame, "x", "y", seed=7)
    assert a.to_frame().equals(b.to_frame())
    c = correlate(frame, "x", "y", seed=8)
    assert c.spearman == a.spearman and c.spearman_ci != a.spearman_ci


def test_groups_and_nonfinite_rows():
    rng = np.random.default_rng(4)
    x = rng.uniform(size=60)
    frame = pd.DataFrame({"x": np.r_[x, x], "y": np.r_[x, -x], "model": ["up"] * 60 + ["down"] * 60})
    frame.loc[[0, 1], "y"] = [np.nan, np.inf]
    res = correlate(frame, "x", "y", by="model", n_boot=200, n_perm=200)
    assert res.n == 118
    assert res.groups["up"].spearman == pytest.approx(1.0) and res.groups["up"].n == 58
    assert res.groups["down"].spearman == pytest.approx(-1.0) and res.groups["down"].n == 60
    tab = res.to_frame()
    # the naive row, one row per stratum, then the pooled within-stratum effect (no confounder columns: no partial rows)
    assert list(tab["group"]) == ["all", "down", "up", "pooled"]
    assert list(tab["kind"]) == ["naive", "stratum", "stratum", "pooled"]
    assert {"spearman", "spearman_lo", "spearman_hi", "spearman_p", "pearson", "pearson_lo", "pearson_hi", "pearson_p", "n"} <= set(tab)
    assert res.pooled is not None and res.pooled.k == 2 and res.pooled.spearman.i2 > 0.9  # +1 and -1: all heterogeneity
    text = str(res)
    assert "spearman" in text and "down" in text and "up" in text and "pooled" in text


def test_aggregate_averages_per_model_and_dataset():
    rng = np.random.default_rng(5)
    rows = []
    for m in ("m1", "m2"):
        for ds in ("d1", "d2", "d3", "d4"):
            level = rng.uniform()
            for _ in range(25):
                rows.append({"model": m, "dataset": ds, "x": level + rng.normal(scale=0.5), "y": 2 * level + rng.normal(scale=0.5)})
    frame = pd.DataFrame(rows)
    res = correlate(frame, "x", "y", aggregate=True, n_boot=300, n_perm=300)
    means = frame.groupby(["model", "dataset"])[["x", "y"]].mean()
    assert res.n == 8 and res.aggregate == ("model", "dataset")
    assert res.spearman == pytest.approx(sps.spearmanr(means["x"], means["y"])[0], abs=1e-12)
    per_model = correlate(frame, "x", "y", by="model", aggregate=["model", "dataset"], n_boot=100, n_perm=100)
    assert per_model.groups["m1"].n == 4 and "means" in str(per_model)


def test_degenerate_and_bad_input():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, 4.0], "y": [5.0, 5.0, 5.0, 5.0]})
    res = correlate(frame, "x", "y")
    assert np.isnan(res.spearman) and np.isnan(res.spearman_p) and np.isnan(res.pearson_ci[0])
    assert np.isnan(correlate(frame.iloc[:2], "x", "x").spearman)
    with pytest.raises(DataError, match="'nope'"):
        correlate(frame, "x", "nope")
    with pytest.raises(DataError, match="alternative"):
        correlate(frame, "x", "y", alternative="up")
    with pytest.raises(DataError, match="n_boot"):
        correlate(frame, "x", "y", n_boot=-1)


def test_one_sided_permutation_p():
    rng = np.random.default_rng(6)
    x = rng.normal(size=100)
    frame = pd.DataFrame({"x": x, "y": -x + rng.normal(scale=0.5, size=100)})
    assert correlate(frame, "x", "y", alternative="less", n_boot=0).spearman_p < 0.01
    assert correlate(frame, "x", "y", alternative="greater", n_boot=0).spearman_p > 0.99


# ----------------------------------------------------------------------------------------
# Paired comparison and ASR
# ----------------------------------------------------------------------------------------
def test_paired_comparison_planted_effect():
    rng = np.random.default_rng(7)
    a = rng.uniform(0.2, 0.5, size=40)  # e.g. RFM normal alignment per dataset
    b = a * 1.2 + rng.normal(scale=0.02, size=40)  # RFAM higher by ~20%
    res = paired_comparison(a, b, alternative="greater", names=("rfm", "rfam"))
    assert res.n == 40 and res.names == ("rfm", "rfam")
    assert res.t_p < 1e-6 and res.wilcoxon_p < 1e-6
    assert res.t_statistic > 0
    assert res.n_higher > 30 and res.n_higher + res.n_lower + res.n_equal == 40
    assert res.rel_diff_mean == pytest.approx(np.mean((b - a) / np.abs(a)), abs=1e-12)
    assert res.rel_diff_mean == pytest.approx(0.2, abs=0.03)
    assert res.diff_mean == pytest.approx(np.mean(b - a)) and res.std_a == pytest.approx(np.std(a, ddof=1))
    wrong = paired_comparison(a, b, alternative="less")
    assert wrong.t_p > 0.99 and wrong.wilcoxon_p > 0.99
    assert paired_comparison(b, a, alternative="less").t_p == pytest.approx(res.t_p)
    text = str(res)
    assert "rfam > rfm" in text and "higher on" in text
    assert res.to_frame().loc[0, "b"] == "rfam"


def test_paired_comparison_no_effect_and_alignment():
    rng = np.random.default_rng(8)
    a = pd.Series(rng.normal(size=30), index=[f"ds{i}" for i in range(30)])
    b = pd.Series(a.to_numpy() + rng.normal(scale=1.0, size=30), index=a.index)[::-1]  # reversed order: paired by index
    b.iloc[0] = np.nan
    res = paired_comparison(a, b, alternative="two-sided")
    assert res.n == 29 and res.t_p > 0.05
    same = paired_comparison([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert same.n_equal == 3 and np.isnan(same.t_p)
    with pytest.raises(DataError, match="one value per dataset"):
        paired_comparison([1.0, 2.0], [1.0])
    with pytest.raises(DataError, match="alternative"):
        paired_comparison([1.0, 2.0], [1.0, 3.0], alternative="bigger")


def test_attack_success_rate():
    assert attack_success_rate(80.0, 60.0) == pytest.approx(25.0)
    assert attack_success_rate(65.97, 45.91) == pytest.approx(100 * (65.97 - 45.91) / 65.97)  # abalone, RFM, eps=0.1
    out = attack_success_rate(np.array([0.5, 1.0, 0.0]), np.array([0.5, 0.25, 0.0]))
    np.testing.assert_allclose(out[:2], [0.0, 75.0])
    assert np.isnan(out[2])
