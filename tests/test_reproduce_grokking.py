"""The grokking reproduction: schedule, grokking rule, data, metrics, statistics and a tiny end-to-end run."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import ttest_ind
from torch import nn

from robustbench_align.errors import ConfigError
from robustbench_align.reproduce.grokking import (
    GrokRun,
    compare,
    eval_schedule,
    grokking_epoch,
    is_eval_epoch,
    jacobian_alignment_summary,
    modular_addition_data,
    resolve_tasks,
    run_grokking,
    sparse_parity_data,
    summarize_condition,
)

torch.set_num_threads(1)


def test_schedule_matches_the_reference_logging_rule():
    full = eval_schedule(20_000)
    # 0..99 every epoch, 100..990 every 10, 1000..9900 every 100, 10000..20000 every 1000
    assert len(full) == 100 + 90 + 90 + 11
    assert full[:3] == [0, 1, 2] and 99 in full and 100 in full and 105 not in full
    assert 990 in full and 995 not in full and 1100 in full and 1150 not in full
    assert 9900 in full and 10_100 not in full and 11_000 in full and full[-1] == 20_000
    assert all(b > a for a, b in itertools.pairwise(full))
    assert [e for e in range(20_001) if is_eval_epoch(e)] == full
    # a cap off the schedule is evaluated too
    short = eval_schedule(1234)
    assert short[-2:] == [1200, 1234] and not is_eval_epoch(1234)
    assert eval_schedule(1000)[-1] == 1000 and len(eval_schedule(1000)) == 191
    with pytest.raises(ConfigError):
        eval_schedule(-1)


def test_grokking_epoch_is_the_first_evaluated_epoch_meeting_both_strict_thresholds():
    epochs = [0, 1, 2, 10, 20, 30, 40, 50]
    train = [0.5, 0.9, 1.0, 1.0, 0.98, 1.0, 1.0, 1.0]
    test = [0.5, 0.5, 0.6, 0.9, 0.95, 0.90, 0.91, 0.99]
    # epoch 10: test == 0.90 is not > 0.90; epoch 20: train 0.98 fails; epoch 30: test 0.90 again; epoch 40 is first
    assert grokking_epoch(epochs, train, test, 0.99, 0.90) == 40
    assert grokking_epoch(epochs, train, test, 0.99, 0.95) == 50
    assert grokking_epoch(epochs, train, test, 0.99, 0.995) is None
    with pytest.raises(ConfigError):
        grokking_epoch(epochs, train[:-1], test, 0.99, 0.9)


def test_sparse_parity_data_unique_rows_parity_labels_and_split():
    Xtr, ytr, Xte, yte = sparse_parity_data(400, 3, 10, 0.5, "binary", seed=3)
    X, y = np.vstack([Xtr, Xte]), np.concatenate([ytr, yte])
    assert Xtr.shape == (200, 13) and Xte.shape == (200, 13)
    assert len({r.tobytes() for r in X}) == 400 and set(np.unique(X)) == {0.0, 1.0}
    assert np.array_equal(y, X[:, :3].sum(axis=1).astype(int) % 2)
    Ptr, ptr, _, _ = sparse_parity_data(400, 3, 10, 0.5, "pm1", seed=3)
    assert np.array_equal(Ptr, 1 - 2 * Xtr) and np.array_equal(ptr, ytr)
    assert np.array_equal(ptr, (np.prod(Ptr[:, :3], axis=1) < 0).astype(int))  # label 1 iff product is -1
    a = sparse_parity_data(400, 3, 10, 0.5, "binary", seed=3)
    assert all(np.array_equal(u, v) for u, v in zip(a, (Xtr, ytr, Xte, yte), strict=True))
    with pytest.raises(ConfigError):
        sparse_parity_data(100, 2, 4, 0.5, "binary", seed=0)  # only 64 distinct vectors


def test_modular_addition_data_labels_and_split():
    Xtr, ytr, Xte, yte = modular_addition_data(7, 0.3, seed=1)
    assert Xtr.shape == (14, 14) and Xte.shape == (35, 14)
    for X, y in ((Xtr, ytr), (Xte, yte)):
        a, b = X[:, :7].argmax(1), X[:, 7:].argmax(1)
        assert np.all(X.sum(1) == 2) and np.array_equal(y, (a + b) % 7)
    pairs = {tuple(r) for r in np.vstack([Xtr, Xte])}
    assert len(pairs) == 49


def test_jacobian_metrics_of_a_rank_one_aligned_linear_map():
    d = 5
    w = torch.tensor([1.0, -2.0, 0.5, 0.0, 3.0], dtype=torch.float64)
    a = torch.tensor([2.0, 1.0, -0.5], dtype=torch.float64)
    lin = nn.Linear(d, 3, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.outer(a, w))  # J = a wᵀ everywhere
    x = torch.stack([w, -2 * w, w + torch.tensor([0, 0, 0, 1.0, 0], dtype=torch.float64)])
    m = jacobian_alignment_summary(lin, x)
    cos3 = float(w @ x[2] / (w.norm() * x[2].norm()))
    assert m["effective_rank"] == pytest.approx(1.0, abs=1e-9)
    assert m["normal_alignment"] == pytest.approx((1 + 1 + abs(cos3)) / 3, abs=1e-9)
    # centroid Jᵀ1 = (Σa) w with Σa > 0: cos = +1, −1, cos3
    assert m["centroid_alignment"] == pytest.approx((1 - 1 + cos3) / 3, abs=1e-9)
    # a full-rank map has effective rank > 1
    lin2 = nn.Linear(d, 3, bias=False).double()
    with torch.no_grad():
        lin2.weight.copy_(torch.eye(3, d, dtype=torch.float64))
    assert jacobian_alignment_summary(lin2, x)["effective_rank"] == pytest.approx(3.0)
    # more outputs than inputs (the other Gram branch): still rank one and aligned
    tall = nn.Linear(2, 4, bias=False).double()
    with torch.no_grad():
        tall.weight.copy_(torch.outer(torch.tensor([1.0, -1.0, 2.0, 0.5], dtype=torch.float64), torch.tensor([3.0, 4.0], dtype=torch.float64)))
    m3 = jacobian_alignment_summary(tall, torch.tensor([[0.6, 0.8], [0.8, -0.6]], dtype=torch.float64))
    assert m3["effective_rank"] == pytest.approx(1.0, abs=1e-9) and m3["normal_alignment"] == pytest.approx(0.5, abs=1e-9)


def test_runs_are_deterministic_and_conditions_share_data_and_init():
    task = resolve_tasks(["modular_addition"], {"modular_addition": {"modulus": 7, "hidden": [32]}})[0]
    r1 = GrokRun(task, "baseline", seed=2, track_metrics=True)
    r1.advance(4)
    r2 = GrokRun(task, "baseline", seed=2)
    r2.advance(4)
    assert r1.trace["train_loss"] == r2.trace["train_loss"] and r1.trace["epoch"] == [0, 1, 2, 3, 4]
    assert len(r1.trace["normal_alignment"]) == 5 and all(math.isfinite(v) for v in r1.trace["effective_rank"])
    ga = GrokRun(task, "grokalign", seed=2)
    assert torch.equal(ga.xtr, r1.xtr)
    ga.advance(2)
    # identical weights before training, different trajectories afterwards
    assert ga.trace["train_loss"][0] == r1.trace["train_loss"][0]
    assert ga.trace["train_loss"][2] != r1.trace["train_loss"][2]
    other = GrokRun(task, "baseline", seed=3)
    assert not torch.equal(other.xtr, r1.xtr)
    # the run's grokking epoch is the rule applied to its own trace
    expect = grokking_epoch(r1.trace["epoch"], r1.trace["train_acc"], r1.trace["test_acc"], task.train_threshold, task.test_threshold)
    assert r1.grokking_epoch == expect
    with pytest.raises(ConfigError):
        resolve_tasks(["modular_addition"], {"modular_addition": {"modulo": 7}})
    with pytest.raises(ConfigError):
        resolve_tasks(["xor"], None)


def _rec(cond, seed, ep, t, cap=100):
    return {"condition": cond, "seed": seed, "grokked": ep is not None, "grokking_epoch": ep, "time_to_grok_s": t,
            "cpu_to_grok_s": t, "cap": cap, "opt_time_s": t if ep is not None else 9.0, "seconds_per_epoch": 0.1}


def test_statistics_ratios_welch_and_censoring():
    base = summarize_condition([_rec("baseline", 0, 60, 6.0), _rec("baseline", 1, 80, 8.0), _rec("baseline", 2, None, None)])
    ga = summarize_condition([_rec("grokalign", 0, 20, 4.0), _rec("grokalign", 1, 30, 5.0), _rec("grokalign", 2, 25, 4.5)])
    assert base["runs"] == 3 and base["grokked"] == 2 and base["not_grokked"] == 1
    assert base["mean_epoch"] == 70 and base["std_epoch"] == pytest.approx(np.std([60, 80], ddof=1))
    assert base["censored_mean_epoch"] == pytest.approx(80.0) and base["censored_mean_time_s"] == pytest.approx(23 / 3)
    c = compare(base, ga, cap=100)
    assert c["epoch_ratio"] == pytest.approx(70 / 25)
    assert c["time_ratio"] == pytest.approx(7.0 / 4.5)
    assert c["p_welch_epochs"] == pytest.approx(ttest_ind([60, 80], [20, 30, 25], equal_var=False).pvalue)
    assert c["p_welch_epochs_reason"] is None
    assert c["censored_epoch_ratio"] == pytest.approx(80 / 25)
    assert 0 < c["p_mannwhitney_epochs_censored"] < 1
    assert "Mann–Whitney" in c["verdict"]  # not every run grokked
    one = summarize_condition([_rec("baseline", 0, 60, 6.0), _rec("baseline", 1, None, None)])
    c1 = compare(one, ga, cap=100)
    assert math.isnan(c1["p_welch_epochs"]) and "got 1 and 3" in c1["p_welch_epochs_reason"]
    none = summarize_condition([_rec("grokalign", 0, None, None), _rec("grokalign", 1, None, None)])
    assert compare(base, none, cap=100)["verdict"].startswith("No:")


@pytest.mark.slow
def test_tiny_end_to_end_reproduction(tmp_path):
    # GrokAlign groks sparse parity in ~80-160 epochs, the baseline in ~1-2k: a 200-epoch cap exercises both
    # the grokked and the censored paths (Welch on grokked runs is then NaN with its reason)
    summary = run_grokking(tasks=("sparse_parity",), seeds=2, max_epochs=200, out_dir=tmp_path)
    md = (tmp_path / "reproduction_grokking.md").read_text()
    data = json.loads((tmp_path / "reproduction_grokking.json").read_text())  # strict JSON: no NaN tokens
    assert (tmp_path / "grokking_metrics_sparse_parity.png").stat().st_size > 10_000
    assert (tmp_path / "grokking_accuracy_sparse_parity.png").stat().st_size > 5_000
    t = data["tasks"]["sparse_parity"]
    assert t["cap"] == 200 and len(t["runs"]) == 4
    assert any(r["grokked"] for r in t["runs"])
    for s in t["conditions"].values():
        assert s["runs"] == 2 and s["grokked"] + s["not_grokked"] == 2
        for key in ("mean_epoch", "median_epoch", "mean_time_s"):
            assert (s[key] is None) == (s["grokked"] == 0)
            assert s[key] is None or math.isfinite(s[key])
        assert math.isfinite(s["censored_mean_epoch"]) and s["censored_mean_epoch"] <= 200
    c = t["comparison"]
    for key in ("p_welch_epochs", "p_welch_time", "p_welch_epochs_censored", "p_mannwhitney_epochs_censored"):
        assert (c[key] is not None and 0 <= c[key] <= 1) or c[key + "_reason"]
        if c[key] is None:
            assert "NaN — " in md  # the reason is printed under the table
    assert c["verdict"] and c["verdict"] in md
    # every table row is filled: numbers or explicit markers, never empty cells
    rows = [line for line in md.splitlines() if line.startswith("| Sparse parity")]
    assert len(rows) >= 2 + 1 + 2
    for row in rows:
        cells = [x.strip() for x in row.strip("|").split("|")]
        assert all(cells), row
    for run in t["runs"]:
        assert run["grokked"] == (run["grokking_epoch"] is not None)
        assert run["opt_time_s"] > 0 and run["stop_epoch"] <= 200
    trace = t["metrics_trace"]["grokalign"]
    assert len(trace["epoch"]) == len(trace["normal_alignment"]) and all(0 <= v <= 1 + 1e-9 for v in trace["normal_alignment"])
    assert summary["tasks"]["sparse_parity"]["comparison"]["verdict"] == c["verdict"]
