"""Leaderboard uncertainty: bootstrap coverage, exact binomial fallback, paired tests, Holm/BH, rank groups."""
import warnings

import numpy as np
import pandas as pd
import pytest

from robustbench_align.errors import ConfigError
from robustbench_align.metrics.intervals import (
    adjust_p,
    bootstrap_means,
    clopper_pearson,
    percentile_interval,
    rank_groups,
    sign_flip_p,
    stratified_blocks,
    stratified_indices,
)
from robustbench_align.reports.tables import cell_intervals, leaderboard_from_frames, overall_ranking


def test_bootstrap_interval_of_a_proportion_covers_near_nominal():
    """500 simulated samples of 150 Bernoulli(0.3) points: the 95% percentile interval covers 0.3 in 93-97% of them."""
    rng = np.random.default_rng(0)
    p, n, draws = 0.3, 150, 500
    hits = 0
    for i in range(draws):
        x = (rng.random(n) < p).astype(float)
        lo, hi = bootstrap_means(x, n_boot=1000, seed=i)
        hits += int(lo[0] <= p <= hi[0])
    assert 0.93 <= hits / draws <= 0.97, hits / draws


def test_seed_stratified_interval_covers_the_mean_of_seed_means():
    """Three seeds with different true accuracies: the leaderboard number (mean of seed means) is covered near nominal."""
    rng = np.random.default_rng(1)
    ps, n, draws = (0.55, 0.7, 0.85), 60, 300
    truth = float(np.mean(ps))
    strata = np.repeat(np.arange(3), n)
    hits = 0
    for i in range(draws):
        x = np.concatenate([(rng.random(n) < p).astype(float) for p in ps])
        lo, hi = bootstrap_means(x, strata=strata, n_boot=800, seed=i)
        hits += int(lo[0] <= truth <= hi[0])
    assert 0.92 <= hits / draws <= 0.98, hits / draws


def test_stratified_resamples_stay_in_their_stratum():
    strata = np.array([0, 0, 1, 1, 1, 2])
    idx = stratified_indices(strata, 6, 200, np.random.default_rng(0))
    assert (strata[idx] == strata[None, :]).all()
    with pytest.raises(ConfigError, match="one label per point"):
        stratified_indices(strata[:3], 6, 10, np.random.default_rng(0))


def test_degenerate_proportion_uses_the_exact_binomial_interval():
    lo, hi = clopper_pearson(30, 30)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 30), abs=1e-9)  # P(30 of 30 | p = lo) = 0.025
    assert clopper_pearson(0, 30)[0] == 0.0 and clopper_pearson(0, 30)[1] == pytest.approx(1 - 0.025 ** (1 / 30), abs=1e-9)
    pts = pd.DataFrame({"correct": [1] * 30, "radius": np.linspace(0.1, 0.5, 30), "lower_bound": np.nan,
                        "robust_at": [{"0.2": int(r > 0.2)} for r in np.linspace(0.1, 0.5, 30)]})
    ivs = cell_intervals([pts], ["0.2"], n_boot=500)
    assert ivs["clean_accuracy"] == pytest.approx(clopper_pearson(30, 30))  # not the point interval [1, 1]
    lo, hi = ivs["robust_acc@0.2"]
    assert lo < 22 / 30 < hi and ivs["median_radius"][0] < 0.3 < ivs["median_radius"][1]


def test_percentile_interval_keeps_infinite_replicates():
    assert percentile_interval(np.array([1.0, np.inf, np.inf, np.nan] * 10)) == (1.0, np.inf)
    assert np.isnan(percentile_interval(np.array([np.nan]))[0])


def test_sign_flip_p_exact_and_monte_carlo():
    assert sign_flip_p(np.zeros(20)) == 1.0
    assert sign_flip_p(np.ones(5)) == pytest.approx(2 / 32)  # exact: only all-plus and all-minus are as extreme
    assert sign_flip_p(np.ones(40), n_perm=2000) == pytest.approx(1 / 2001)
    rng = np.random.default_rng(3)
    null = [sign_flip_p(rng.normal(size=30), n_perm=500, seed=i) for i in range(200)]
    assert 0.02 <= np.mean(np.array(null) < 0.05) <= 0.09  # level holds under H0


def test_holm_and_bh_known_values():
    p = [0.01, 0.04, 0.03, 0.005]
    assert adjust_p(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert adjust_p(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    out = adjust_p([0.2, np.nan, 0.01], "holm")
    assert np.isnan(out[1]) and out[2] == pytest.approx(0.02)
    with pytest.raises(ConfigError, match="holm"):
        adjust_p(p, "bonferonni")


def test_identical_models_always_share_a_rank_and_a_planted_difference_never_does():
    rng = np.random.default_rng(4)
    for trial in range(20):
        n = int(rng.integers(20, 120))
        a = rng.random(n)
        big = np.clip(a + 0.5 + 0.05 * rng.normal(size=n), 0, None)  # planted large improvement
        noise = rng.random(n)
        rg = rank_groups(["a", "a_copy", "big", "noise"], np.c_[a, a.copy(), big, noise], seed=trial)
        r = dict(zip(rg.models, rg.rank, strict=True))
        assert r["a"] == r["a_copy"], (trial, r)
        assert r["big"] == 1 and r["a"] > 1, (trial, r)
        assert "a_copy" in rg.tied_with(0) and "big" not in rg.tied_with(0)


def _board_frames(scores_by_model, seeds=(0, 1, 2), n=40, eps=(0.1, 0.3)):
    runs, pts = [], []
    for m, make in scores_by_model.items():
        for s in seeds:
            rid = f"{m}-{s}"
            runs.append({"run_id": rid, "model": m, "family": "mlp", "dataset": "toy", "threat": "linf", "norm": "linf", "seed": s,
                         "status": "ok", "attacks": ["pgd"], "flags": {}, "rejected": 0, "fit_time": 0.0, "eval_time": 0.0})
            r = make(np.random.default_rng(1000 * s + 7), n)
            for i in range(n):
                pts.append({"run_id": rid, "idx": i, "test_index": i, "y": 0, "pred": 0, "correct": 1, "radius": float(r[i]),
                            "lower_bound": np.nan, "robust_at": {str(e): int(r[i] > e) for e in eps}, "model": m, "dataset": "toy",
                            "threat": "linf", "seed": s})
    return pd.DataFrame(runs), pd.DataFrame(pts)


def test_leaderboard_ranks_ties_and_separates_a_planted_difference():
    runs, pts = _board_frames({"a": lambda g, n: g.uniform(0, 0.4, n), "twin": lambda g, n: g.uniform(0, 0.4, n),
                               "strong": lambda g, n: g.uniform(0.2, 0.6, n)})
    board = leaderboard_from_frames(runs, pts, n_boot=400)
    r = board.set_index("model")["rank"]
    assert r["strong"] == 1 and r["a"] == r["twin"] == 2
    assert board.set_index("model").loc["a", "tied_with"] == "twin"
    for c in ("clean_accuracy", "robust_acc@0.1", "median_radius", "auc"):
        assert (board[f"{c}_lo"] <= board[c] + 1e-12).all() and (board[c] <= board[f"{c}_hi"] + 1e-12).all(), c
    assert (board["seeds"] == 3).all()
    ov = overall_ranking(board)
    assert {"mean_rank_lo", "mean_rank_hi"} <= set(ov.columns)


def test_intervals_reach_every_format():
    import io
    import json

    from robustbench_align.reports.export import display_frame, render

    runs, pts = _board_frames({"a": lambda g, n: g.uniform(0, 0.4, n), "b": lambda g, n: g.uniform(0.1, 0.5, n)}, seeds=(0,), n=25)
    board = leaderboard_from_frames(runs, pts, n_boot=300)
    rows = {r["model"]: r for r in json.loads(render(board, "json"))}
    a = board.set_index("model").loc["a"]
    assert rows["a"]["clean_acc_lo"] == pytest.approx(a["clean_accuracy_lo"]) and rows["a"]["auc_hi"] == pytest.approx(a["auc_hi"])
    assert rows["a"]["robust_acc_lo"]["0.1"] == pytest.approx(a["robust_acc@0.1_lo"])
    back = pd.read_csv(io.StringIO(render(board, "csv")))
    assert {"auc_lo", "auc_hi", "robust_acc@0.3_lo", "median_radius_hi"} <= set(back.columns)
    shown = display_frame(board).set_index(board["model"])
    assert "auc_lo" not in shown.columns
    assert shown.loc["a", "robust_acc@0.1"] == f"{100 * a['robust_acc@0.1']:.1f} [{100 * a['robust_acc@0.1_lo']:.1f}, {100 * a['robust_acc@0.1_hi']:.1f}]"
    tex = render(board, "latex")
    assert "[" in tex and "auc\\_lo" not in tex


def test_a_one_point_cell_shows_no_interval():
    runs, pts = _board_frames({"a": lambda g, n: g.uniform(0, 0.4, n), "b": lambda g, n: g.uniform(0, 0.4, n)}, seeds=(0,), n=1)
    board = leaderboard_from_frames(runs, pts, n_boot=100)
    assert board["auc_lo"].isna().all() and board["clean_accuracy_hi"].isna().all()
    from robustbench_align.reports.export import display_frame

    assert "[" not in "".join(display_frame(board)["auc"]) and "nan" not in "".join(display_frame(board)["auc"])
    assert (board["rank"] == 1).all()  # one point each: nothing is significant


@pytest.mark.parametrize("kw", [{"n_boot": 0}, {"n_boot": 2.5}, {"confidence": 1.0}, {"alpha": 0}, {"confidence": True}])
def test_bad_inference_settings_are_one_line_errors(kw):
    runs, pts = _board_frames({"a": lambda g, n: g.uniform(0, 0.4, n)}, seeds=(0,), n=5)
    with pytest.raises(ConfigError) as err:
        leaderboard_from_frames(runs, pts, **kw)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("strata", [None, np.array(["b", "a", "b", "c", "a", "b", "c"] * 9)])
def test_stratified_blocks_are_the_rows_of_one_draw(strata):
    """Any block size gives the indices of one stratified_indices call, and leaves the generator where it does."""
    n = 63
    full_rng = np.random.default_rng(3)
    full = stratified_indices(strata, n, 250, full_rng)
    for block in (1, 7, 64, 250, None):
        rng = np.random.default_rng(3)
        parts = list(stratified_blocks(strata, n, 250, rng, block=block))
        assert [s for s, _ in parts] == list(range(0, 250, block or 250))
        np.testing.assert_array_equal(np.concatenate([b for _, b in parts]), full)
    rng = np.random.default_rng(3)
    list(stratified_blocks(strata, n, 250, rng, block=7))
    after = np.random.default_rng(3)
    stratified_indices(strata, n, 250, after)
    assert rng.random() == after.random()


def test_bootstrap_means_equal_averaging_the_resampled_values():
    """0/1 columns with missing entries, three strata: the same replicates as nanmean over each resample, then over strata."""
    rng = np.random.default_rng(4)
    n, k = 90, 5
    v = (rng.random((n, k)) < 0.35).astype(float)
    v[rng.random((n, k)) < 0.1] = np.nan
    strata = np.repeat(["s0", "s1", "s2"], 30)
    idx = stratified_indices(strata, n, 400, np.random.default_rng(9))
    groups = [np.flatnonzero(strata == s) for s in ("s0", "s1", "s2")]
    ref_lo, ref_hi = np.empty(k), np.empty(k)
    for j in range(k):
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per = np.stack([np.nanmean(v[:, j][idx[:, g]], axis=1) for g in groups], axis=1)
            ref_lo[j], ref_hi[j] = percentile_interval(np.nanmean(per, axis=1))
    lo, hi = bootstrap_means(v, strata=strata, n_boot=400, seed=9)
    np.testing.assert_array_equal(lo, ref_lo)
    np.testing.assert_array_equal(hi, ref_hi)


def test_bootstrap_means_memory_is_one_block_not_all_replicates():
    """50,000 points x 1,000 replicates: all indices at once would be 400 MB; the blocked draw stays far below."""
    import tracemalloc

    x = (np.random.default_rng(0).random(50_000) < 0.5).astype(float)
    tracemalloc.start()
    try:
        lo, hi = bootstrap_means(x, strata=np.repeat([0, 1], 25_000), n_boot=1000)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert lo[0] < x.mean() < hi[0]
    assert peak < 40e6, peak
