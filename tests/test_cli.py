"""The `rba` CLI: listing commands, evaluating a user's model into the shared leaderboard, one-line errors."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from robustbench_align import load_dataset

PLAN = """
models = ["xgb"]
datasets = ["iris"]
threats = ["linf"]
points = 6
[model_params.xgb]
n_estimators = 5
max_depth = 2
"""


def rba(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "robustbench_align.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=600, env=env)


def test_models_and_datasets_list():
    r = rba("models")
    assert r.returncode == 0 and "rfam" in r.stdout and "mlp-grokalign" in r.stdout
    r = rba("datasets")
    assert r.returncode == 0 and "sparse_parity" in r.stdout and "breast_cancer" in r.stdout


def test_evaluate_xgboost_json_joins_the_leaderboard(tmp_path):
    xgb = pytest.importorskip("xgboost")
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    store, out = tmp_path / "s.sqlite", tmp_path / "out"
    r = rba("--quiet", "run", "--config", str(plan), "--store", str(store), "--out", str(out), "--cache", str(tmp_path / "c"))
    assert r.returncode == 0, r.stderr
    ds = load_dataset("iris", seed=0)
    clf = xgb.XGBClassifier(n_estimators=4, max_depth=2, random_state=0).fit(ds.X_train, ds.y_train)
    clf.save_model(str(tmp_path / "mine.json"))
    r = rba("--quiet", "evaluate", str(tmp_path / "mine.json"), "--dataset", "iris", "--config", str(plan), "--store", str(store), "--out", str(out))
    assert r.returncode == 0, r.stderr
    rows = json.loads((out / "leaderboard.json").read_text())
    names = {row["model"] for row in rows}
    assert names == {"xgb", "mine"}
    mine = next(row for row in rows if row["model"] == "mine")
    assert mine["family"] == "user" and 0 <= mine["clean_acc"] <= 1 and mine["certified_fraction"] == 1.0
    assert mine["path"] == "exact" and next(row for row in rows if row["model"] == "xgb")["path"] == "exact"


def test_evaluate_module_attr_torch(tmp_path):
    mod = tmp_path / "usermodel.py"
    mod.write_text(textwrap.dedent("""
        import torch
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    """))
    plan = tmp_path / "plan.toml"
    plan.write_text('models = ["xgb"]\ndatasets = ["iris"]\nthreats = ["l2"]\npoints = 5\n')
    import os

    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    r = rba("--quiet", "evaluate", "usermodel:net", "--dataset", "iris", "--config", str(plan), "--store", str(tmp_path / "s.sqlite"),
            "--out", str(tmp_path / "out"), env=env)
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "out" / "leaderboard.json").read_text())
    assert rows and rows[0]["model"] == "net" and rows[0]["normal_alignment"] is not None
    assert {row["model"]: row["path"] for row in rows} == {"net": "gradient"}


@pytest.mark.parametrize("target, msg", [
    ("nosuch-model", "cannot load model"),
    ("missing:attr", "cannot import"),
])
def test_evaluate_bad_target_is_one_line(tmp_path, target, msg):
    r = rba("evaluate", target, "--dataset", "iris", "--store", str(tmp_path / "s.sqlite"))
    assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s.sqlite").exists()


def test_module_attr_factory_is_called_only_without_arguments(tmp_path):
    import torch

    from robustbench_align.cli import _is_factory

    def make():
        return torch.nn.Linear(4, 3)

    def make_seeded(seed=0, **kw):
        return make()

    def proba(X):
        return np.full((len(X), 3), 1 / 3)

    assert _is_factory(make) and _is_factory(make_seeded) and _is_factory(lambda: None)
    assert not any(_is_factory(o) for o in (proba, torch.nn.Linear, make(), len, np.mean))
    # a predict_proba function is the model, not a factory: wrap's one-line error, not a TypeError from calling it
    (tmp_path / "userproba.py").write_text("import numpy as np\n\ndef proba(X):\n    return np.full((len(X), 3), 1 / 3)\n")
    import os

    r = rba("evaluate", "userproba:proba", "--dataset", "iris", "--store", str(tmp_path / "s.sqlite"),
            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2 and "needs n_features=" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_evaluate_feature_mismatch(tmp_path):
    xgb = pytest.importorskip("xgboost")
    X = np.random.default_rng(0).normal(size=(40, 7))
    clf = xgb.XGBClassifier(n_estimators=2, max_depth=2).fit(X, (X[:, 0] > 0).astype(int))
    clf.save_model(str(tmp_path / "seven.json"))
    r = rba("evaluate", str(tmp_path / "seven.json"), "--dataset", "iris", "--store", str(tmp_path / "s.sqlite"))
    assert r.returncode == 2 and "features" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_leaderboard_formats(tmp_path):
    plan = tmp_path / "plan.toml"
    plan.write_text(PLAN)
    store = tmp_path / "s.sqlite"
    assert rba("--quiet", "run", "--config", str(plan), "--store", str(store), "--out", str(tmp_path / "o")).returncode == 0
    for fmt, needle in [("md", "| rank"), ("latex", "\\begin{tabular}"), ("csv", "clean_accuracy"), ("json", '"threat_model"'), ("html", "<table")]:
        r = rba("leaderboard", "--format", fmt, "--store", str(store))
        assert r.returncode == 0 and needle in r.stdout, fmt
    r = rba("leaderboard", "--format", "docx", "--store", str(store))
    assert r.returncode == 2 and "unknown format" in r.stderr


def _correlation_store(path):
    """A store with per-point alignment, radius and confounders for 2 models × 3 datasets (a planted within-stratum effect)."""
    from robustbench_align.runner.store import RunRecord, Store

    rng = np.random.default_rng(0)
    records = []
    for m, model in enumerate(("mlp", "rfm")):
        for d, dataset in enumerate(("iris", "wine", "tiny")):
            n = 3 if dataset == "tiny" else 40
            margin = rng.uniform(0.1, 2.0, size=n)
            align = rng.uniform(size=n)
            radius = 0.5 * margin + 0.3 * align + 0.1 * rng.normal(size=n) + m + d
            pts = [{"idx": i, "y": 0, "pred": 0, "correct": 1, "radius": float(radius[i]), "lower_bound": float("nan"), "robust_at": {},
                    "normal_alignment": float(align[i]) + d, "logit_margin": float(margin[i]), "jacobian_norm": float(rng.uniform(1, 2)),
                    "x_norm": float(rng.uniform(1, 3))} for i in range(n)]
            records.append(RunRecord(run={"run_id": f"{model}-{dataset}", "model": model, "family": "f", "dataset": dataset, "threat": "linf",
                                          "norm": "linf", "seed": 0, "status": "ok", "config": {}, "attacks": [], "flags": {}, "n_points": n,
                                          "rejected": 0}, points=pts))
    with Store(path) as st:
        st.write(records)


def test_correlate_strata_pooled_partial_and_forest(tmp_path):
    store = tmp_path / "s.sqlite"
    _correlation_store(store)
    plot, forest = tmp_path / "scatter.png", tmp_path / "forest.png"
    r = rba("correlate", "--store", str(store), "--plot", str(plot), "--forest", str(forest), "--p-adjust", "bh")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "within model × dataset strata" in out and "all (naive, ignores strata)" in out and "mlp / iris" in out
    assert "pooled (random effects)" in out and "stratified permutation" in out and "I²" in out
    assert "partial correlations given logit_margin, jacobian_norm, x_norm" in out and "partial: pooled" in out
    assert "3 points: needs >= 4" in out and "nan" not in out.lower() and "Benjamini" in out
    assert plot.read_bytes().startswith(b"\x89PNG") and forest.read_bytes().startswith(b"\x89PNG")
    r = rba("--quiet", "correlate", "--store", str(store), "--plot", str(plot), "--forest", str(forest), "--by", "none", "--confounder", "none")
    assert r.returncode == 0, r.stderr
    assert "pooled" not in r.stdout and "partial" not in r.stdout and "naive" not in r.stdout
    for args, msg in ((("--confounder", "margin"), "unknown confounder column 'margin'"), (("--by", "model,fold"), "unknown stratum column 'fold'"),
                      (("--p-adjust", "bonferroni"), "--p-adjust")):
        r = rba("correlate", "--store", str(store), "--plot", str(plot), "--forest", str(forest), *args)
        assert r.returncode == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
