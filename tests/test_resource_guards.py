"""Resource guards and one-line errors: work that would exhaust memory or time is refused (or cut off) up front.

1. Memory: a fit whose estimated peak memory exceeds the limit ($RBA_MEMORY_LIMIT_GB, else half the
   available memory) is refused before it allocates anything; table files have a column cap
   ($RBA_MAX_COLUMNS) checked from the header.
2. Trees: a tree deeper than $RBA_MAX_TREE_DEPTH or larger than $RBA_MAX_TREE_NODES is refused at
   parse time; a deep tree under the cap is attacked within about its per-point time limit.
3. Messages: a directory or FIFO given as a data or model file is named as such; a continuous
   target is reported as a regression target on one complete line.

Peak memory is measured in a wrapper process with resource.getrusage(RUSAGE_CHILDREN), so other
tests' subprocesses do not count.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from robustbench_align.data.registry import load_dataset
from robustbench_align.errors import ConfigError, DataError, ModelError, ResourceError
from robustbench_align.guards import MEMORY_ENV, check_memory, env_cap, memory_limit
from robustbench_align.models.persistence import load_model
from robustbench_align.models.registry import build
from robustbench_align.models.rfm import fit_memory_bytes
from robustbench_align.models.trees.checks import DEFAULT_MAX_DEPTH, MAX_DEPTH_ENV, MAX_NODES_ENV, tree_depth_over

REPO = Path(__file__).resolve().parents[1]
MB = 1024 * 1024

# A wrapper process: runs argv[1:] as its child and prints the child's exit code, output, wall time and peak RSS.
_MEASURE = textwrap.dedent("""
    import json, resource, subprocess, sys, time
    t0 = time.perf_counter()
    r = subprocess.run(sys.argv[1:], capture_output=True, text=True, timeout=300)
    print(json.dumps({"rc": r.returncode, "stdout": r.stdout, "stderr": r.stderr, "seconds": time.perf_counter() - t0,
                      "peak_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
""")


def _measured(*argv: str, env: dict[str, str] | None = None) -> dict:
    """Run argv in a fresh wrapper process; its exit code, output, seconds and peak memory (MB)."""
    out = subprocess.run([sys.executable, "-c", _MEASURE, *argv], capture_output=True, text=True, timeout=360, cwd=REPO,
                         env={**os.environ, **(env or {})})
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def _one_line(exc: BaseException) -> str:
    msg = str(exc)
    assert msg and len(msg.splitlines()) == 1, repr(msg)
    return msg


def _write_csv(path: Path, X: np.ndarray, y: np.ndarray, target: str = "target") -> Path:
    header = ",".join([f"f{i}" for i in range(X.shape[1])] + [target])
    np.savetxt(path, np.column_stack([X, y]), delimiter=",", header=header, comments="", fmt="%.6g")
    return path


@pytest.fixture(scope="module")
def wide_csv(tmp_path_factory) -> Path:
    """60 rows x 10,000 columns (9,999 features and a binary target)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 9_999))
    return _write_csv(tmp_path_factory.mktemp("wide") / "wide.csv", X, (X[:, 0] > 0).astype(int))


@pytest.fixture
def small_csv(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(120, 4))
    return _write_csv(tmp_path / "small.csv", X, (X[:, 0] + X[:, 1] > 0).astype(int))


# ================================================================================================
# 1. Memory estimates and the column cap
# ================================================================================================
def test_wide_csv_refused_by_the_rfm_estimate_fast_and_small(wide_csv):
    """Before: the fit allocated toward a 5x5x10^4x10^4 metric path (23 GB resident). Now: refused from the estimate."""
    code = textwrap.dedent(f"""
        import time
        import robustbench_align.models.rfm, robustbench_align.data.registry, sklearn.model_selection  # imports are not the refusal
        from robustbench_align.data.registry import load_dataset
        from robustbench_align.models.registry import build
        from robustbench_align.errors import ResourceError
        t0 = time.perf_counter()
        ds = load_dataset("csv:{wide_csv}", seed=0)
        try:
            build("rfm").fit(ds.X_train, ds.y_train)
        except ResourceError as exc:
            print(f"{{time.perf_counter() - t0:.3f}}")
            print(exc)
    """)
    r = _measured(sys.executable, "-c", code, env={MEMORY_ENV: ""})
    assert r["rc"] == 0, r["stderr"]
    seconds, msg = r["stdout"].strip().split("\n", 1)
    assert float(seconds) < 5.0, r
    assert r["peak_mb"] < 2048, r
    assert "\n" not in msg and "9999 features" in msg and "GB of memory, above the limit of" in msg and MEMORY_ENV in msg, msg


def test_wide_csv_refused_by_the_cli_in_one_line(wide_csv, tmp_path):
    r = _measured(sys.executable, "-m", "robustbench_align.cli", "evaluate", "rfm", "-d", f"csv:{wide_csv}",
                  "--store", str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "out"), env={MEMORY_ENV: ""})
    assert r["rc"] == 2, r
    err = [ln for ln in r["stderr"].splitlines() if ln.startswith("rba: error:")]
    assert len(err) == 1 and "ResourceError" in err[0] and MEMORY_ENV in err[0] and err[0].rstrip().endswith("to try anyway"), r["stderr"]
    assert r["peak_mb"] < 2048, r


def test_normal_csv_still_fits_under_the_default_limit(small_csv, monkeypatch):
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    ds = load_dataset(f"csv:{small_csv}", seed=0)
    model = build("rfm", iters=2).fit(ds.X_train, ds.y_train)
    assert (model.predict(ds.X_test) == ds.y_test).mean() > 0.7


def test_memory_limit_option_refuses_and_raises(small_csv, monkeypatch):
    ds = load_dataset(f"csv:{small_csv}", seed=0)
    monkeypatch.setenv(MEMORY_ENV, "0.001")
    with pytest.raises(ResourceError) as info:
        build("rfm", iters=2).fit(ds.X_train, ds.y_train)
    msg = _one_line(info.value)
    assert "needs about" in msg and "above the limit of 1.0 MB" in msg and f"{MEMORY_ENV}=0.001" in msg, msg
    monkeypatch.setenv(MEMORY_ENV, "64")
    assert memory_limit()[0] == 64 * 1024**3
    build("rfm", iters=2).fit(ds.X_train, ds.y_train)
    for bad in ("abc", "-1", "0", "inf"):
        monkeypatch.setenv(MEMORY_ENV, bad)
        with pytest.raises(ConfigError, match=MEMORY_ENV):
            check_memory(1.0, "x")


def test_default_limit_is_half_the_available_memory(monkeypatch):
    monkeypatch.delenv(MEMORY_ENV, raising=False)
    limit, how = memory_limit()
    assert 0 < limit < float("inf") and how.startswith("half of the")


def test_fit_estimate_grows_with_the_square_of_the_features():
    small = fit_memory_bytes(33, 9, 1_000, 2, 5, 5)
    wide = fit_memory_bytes(33, 9, 10_000, 2, 5, 5)
    assert wide - small >= 8 * 35 * (10_000**2 - 1_000**2)  # 25 path matrices + ~10 working d x d matrices
    assert wide > 25 * 8 * 10_000**2  # the metric path alone
    assert fit_memory_bytes(30_000, 7_500, 10, 2, 5, 5) > 8 * 30_000**2  # the kernel


def test_column_cap_refuses_from_the_header(tmp_path, small_csv, monkeypatch):
    monkeypatch.setenv("RBA_MAX_COLUMNS", "4")
    with pytest.raises(DataError) as info:
        load_dataset(f"csv:{small_csv}")
    msg = _one_line(info.value)
    assert "5 columns exceed the column cap of 4 (RBA_MAX_COLUMNS)" in msg and "set RBA_MAX_COLUMNS" in msg, msg
    import pandas as pd

    pd.read_csv(small_csv).to_parquet(tmp_path / "small.parquet")
    with pytest.raises(DataError, match="column cap of 4"):
        load_dataset(f"parquet:{tmp_path / 'small.parquet'}")
    monkeypatch.setenv("RBA_MAX_COLUMNS", "5")
    assert load_dataset(f"csv:{small_csv}").n_features == 4
    monkeypatch.setenv("RBA_MAX_COLUMNS", "many")
    with pytest.raises(ConfigError, match="RBA_MAX_COLUMNS='many' is not a whole number"):
        load_dataset(f"csv:{small_csv}")
    monkeypatch.delenv("RBA_MAX_COLUMNS")
    assert env_cap("RBA_MAX_COLUMNS", 20_000) == 20_000


# ================================================================================================
# 2. Tree caps and deadlines inside the exact attacks
# ================================================================================================
@pytest.fixture(scope="module")
def xgb_base_doc() -> dict:
    import xgboost as xgb

    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    clf = xgb.XGBClassifier(n_estimators=1, max_depth=2, n_jobs=1).fit(X, (X[:, 0] > 0).astype(int))
    return json.loads(clf.get_booster().save_raw("json").decode())


def _chain_doc(base: dict, depth: int) -> dict:
    """One XGBoost tree that is a chain of `depth` splits: x_{i%3} < t_i goes to a leaf, else down the chain.

    Every leaf but the last is negative, so a flip needs every feature past its largest threshold.
    """
    n = 2 * depth + 1
    left, right, parents = [-1] * n, [-1] * n, [2147483647] * n
    split_idx, cond = [0] * n, [0.0] * n
    for i in range(depth):
        node = 2 * i
        left[node], right[node] = node + 1, node + 2
        parents[node + 1] = parents[node + 2] = node
        split_idx[node] = i % 3
        cond[node] = -1.0 + 2.0 * i / depth
        cond[node + 1] = -0.5
    cond[n - 1] = 0.3
    tree = {"base_weights": [0.0] * n, "categories": [], "categories_nodes": [], "categories_segments": [], "categories_sizes": [],
            "default_left": [0] * n, "id": 0, "left_children": left, "loss_changes": [0.0] * n, "parents": parents,
            "right_children": right, "split_conditions": cond, "split_indices": split_idx, "split_type": [0] * n,
            "sum_hessian": [1.0] * n, "tree_param": {"num_deleted": "0", "num_feature": "3", "num_nodes": str(n), "size_leaf_vector": "1"}}
    doc = json.loads(json.dumps(base))
    model = doc["learner"]["gradient_booster"]["model"]
    model.update(trees=[tree], tree_info=[0], iteration_indptr=[0, 1])
    model["gbtree_model_param"]["num_trees"] = "1"
    return doc


def test_100k_deep_chain_refused_at_load_in_one_line(tmp_path, xgb_base_doc, monkeypatch):
    """Before: loaded, then 5 points did not finish in 300 s with a 3 s limit. Now: refused while parsing."""
    monkeypatch.delenv(MAX_DEPTH_ENV, raising=False)
    p = tmp_path / "chain.json"
    p.write_text(json.dumps(_chain_doc(xgb_base_doc, 100_000)))
    t0 = time.perf_counter()
    with pytest.raises(ModelError) as info:
        load_model(p)
    assert time.perf_counter() - t0 < 15
    msg = _one_line(info.value)
    assert f"tree 0 is deeper than the cap of {DEFAULT_MAX_DEPTH} levels ({MAX_DEPTH_ENV})" in msg and f"set {MAX_DEPTH_ENV}" in msg, msg


def test_node_and_depth_caps_can_be_set(tmp_path, xgb_base_doc, monkeypatch):
    p = tmp_path / "chain.json"
    p.write_text(json.dumps(_chain_doc(xgb_base_doc, 40)))
    monkeypatch.setenv(MAX_NODES_ENV, "50")
    with pytest.raises(ModelError) as info:
        load_model(p)
    assert f"tree 0 has 81 nodes, above the cap of 50 per tree ({MAX_NODES_ENV})" in _one_line(info.value)
    monkeypatch.delenv(MAX_NODES_ENV)
    monkeypatch.setenv(MAX_DEPTH_ENV, "39")
    with pytest.raises(ModelError, match="deeper than the cap of 39 levels"):
        load_model(p)
    monkeypatch.setenv(MAX_DEPTH_ENV, "40")
    assert load_model(p).n_features == 3


def test_depth_walk_stops_past_the_cap(xgb_base_doc):
    from robustbench_align.models.trees.ensemble_json import tree_ensemble_from_json

    ens = tree_ensemble_from_json(_chain_doc(xgb_base_doc, 300))
    assert tree_depth_over(ens.trees[0], 1000) == 300
    assert tree_depth_over(ens.trees[0], 10) == 11


def test_real_models_are_far_below_the_caps():
    from sklearn.ensemble import RandomForestClassifier

    from robustbench_align.models.trees import parse_sklearn

    rng = np.random.default_rng(0)
    X = rng.normal(size=(2000, 4))
    y = rng.integers(0, 2, 2000)  # pure noise: fully grown trees as deep as such data makes them
    rf = RandomForestClassifier(n_estimators=3, random_state=0).fit(X, y)
    ens = parse_sklearn(rf)
    assert max(e.tree_.max_depth for e in rf.estimators_) < DEFAULT_MAX_DEPTH // 10
    assert len(ens.trees) == 3


@pytest.fixture(scope="module")
def chain_model(tmp_path_factory, xgb_base_doc):
    """A chain one level under the depth cap, loaded as a model, with 4 clean points."""
    p = tmp_path_factory.mktemp("chain") / "chain.json"
    p.write_text(json.dumps(_chain_doc(xgb_base_doc, DEFAULT_MAX_DEPTH - 1)))
    model = load_model(p)
    X = np.random.default_rng(1).uniform(-1, 1, size=(4, 3))
    return model, X, model.predict(X)


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_chain_under_the_cap_respects_the_milp_time_limit(chain_model, norm):
    from robustbench_align.attacks.trees.milp import KantchelianMILP

    model, X, y = chain_model
    limit = 0.5
    res = KantchelianMILP(time_limit=limit).run(model, X, y, norm)
    assert np.all(res.flags["point_time"] <= 2 * limit), res.flags["point_time"]
    assert np.all(res.success) and np.all(res.lower_bound <= res.distance + 1e-12)


def test_chain_under_the_cap_respects_the_veritas_time_limit(chain_model):
    from robustbench_align.attacks.trees.veritas import VeritasLinf

    if not VeritasLinf.available():
        pytest.skip("dtai-veritas is not installed")
    model, X, y = chain_model
    limit = 1.0
    res = VeritasLinf(time_limit=limit).run(model, X, y, "linf")
    assert np.all(res.flags["point_time"] <= 2 * limit), res.flags["point_time"]
    assert np.all(res.lower_bound <= res.distance + 1e-12)


def test_deadline_inside_the_milp_passes_reports_a_time_limit_hit(chain_model):
    """A limit that passes during the first pass: every point stops early, reported as a time-limit hit."""
    from robustbench_align.attacks.trees.milp import KantchelianMILP

    model, X, y = chain_model
    res = KantchelianMILP(time_limit=1e-3).run(model, X, y, "linf")
    assert res.flags["time_limit_hit"] == X.shape[0]
    assert np.all(res.flags["point_time"] < 0.25), res.flags["point_time"]
    assert np.all(res.lower_bound <= res.distance)


# ================================================================================================
# 3. Messages: what a path is, and why a target is refused
# ================================================================================================
@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_directory_as_data_file_is_named(tmp_path, kind):
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError) as info:
        load_dataset(f"{kind}:{tmp_path / 'd'}")
    msg = _one_line(info.value)
    assert "is a directory" in msg and f"give a {'CSV' if kind == 'csv' else 'Parquet'} file" in msg and "no such file" not in msg, msg


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_as_data_file_is_named_and_never_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.csv")
    t0 = time.perf_counter()
    with pytest.raises(DataError) as info:
        load_dataset(f"csv:{tmp_path / 'pipe.csv'}")  # opening a FIFO for reading would block here
    assert time.perf_counter() - t0 < 5
    msg = _one_line(info.value)
    assert "is a FIFO (named pipe)" in msg and "give a CSV file" in msg, msg


def test_missing_data_file_still_says_no_such_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(f"csv:{tmp_path / 'absent.csv'}")
    (tmp_path / "link.csv").symlink_to(tmp_path / "gone.csv")
    with pytest.raises(DataError, match=r"no such file \(a broken symbolic link\)"):
        load_dataset(f"csv:{tmp_path / 'link.csv'}")


def test_directory_and_fifo_as_model_file_are_named(tmp_path):
    (tmp_path / "m.json").mkdir()
    with pytest.raises(ModelError) as info:
        load_model(tmp_path / "m.json")
    msg = _one_line(info.value)
    assert "is a directory without model.json, not a saved model" in msg and "give a model file" in msg, msg
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.json")
        with pytest.raises(ModelError) as info:
            load_model(tmp_path / "pipe.json")
        msg = _one_line(info.value)
        assert "is a FIFO (named pipe), not a model file" in msg, msg
    with pytest.raises(ModelError, match="does not exist"):
        load_model(tmp_path / "absent.json")


def test_continuous_target_is_one_complete_line_with_reason_and_fix(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 3))
    p = _write_csv(tmp_path / "reg.csv", X, 1.7 * X[:, 0] + rng.normal(size=200), target="price")
    with pytest.raises(DataError) as info:
        load_dataset(f"csv:{p}", target="price")
    msg = _one_line(info.value)
    assert "target column 'price' looks continuous (200 distinct values in 200 rows" in msg, msg
    assert "regression target" in msg and msg.endswith("bin it into classes (e.g. by quantiles) or pass target=<a class column>"), msg
    assert len(f"fit: DataError: {msg}") < 500  # a failed run stores its first 500 characters: the fix is kept


def test_continuous_target_via_the_cli_ends_with_the_fix(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(100, 2))
    p = _write_csv(tmp_path / "reg.csv", X, X[:, 0] * 3.3 + 0.01)
    r = subprocess.run([sys.executable, "-m", "robustbench_align.cli", "evaluate", "rfm", "-d", f"csv:{p}", "--store",
                        str(tmp_path / "s.sqlite"), "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 2, r.stderr
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("rba: error:")]
    assert len(err) == 1 and "looks continuous" in err[0] and err[0].rstrip().endswith("pass target=<a class column>"), r.stderr


def test_integer_classes_with_a_rare_class_keep_the_split_message(tmp_path):
    X = np.arange(12, dtype=float).reshape(6, 2)
    p = _write_csv(tmp_path / "rare.csv", X, np.array([0, 0, 1, 1, 0, 2]))
    with pytest.raises(DataError, match="class 2 has fewer than 2 rows"):
        load_dataset(f"csv:{p}")
