"""Content-addressed identity: a run's key follows the model's and the data's content, never a name or a path.

Covers the data-loss cases (two models with one file name; a user model named like a registry
model; an explicit name reused by another model), the stale cases (a CSV whose content changed, in
the run keys and in the fit cache) and property tests of the fingerprints.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import robustbench_align as rba
from robustbench_align.errors import ConfigError
from robustbench_align.fingerprint import file_digest, model_fingerprint, object_digest
from robustbench_align.models.base import wrap
from robustbench_align.models.persistence import fit_cached, load_model
from robustbench_align.runner.api import run_plan
from robustbench_align.runner.config import Plan
from robustbench_align.runner.store import Store

xgb = pytest.importorskip("xgboost")
EVAL = {"threats": ["linf"], "points": 6}


def _csv(path, n=160, d=5, seed=0, flip=False):
    from sklearn.datasets import make_classification

    X, y = make_classification(n, d, n_informative=3, n_redundant=0, random_state=seed)
    if flip:
        y = 1 - y
    pd.DataFrame(np.c_[X, y], columns=[f"f{i}" for i in range(d)] + ["target"]).to_csv(path, index=False)
    return path


@pytest.fixture
def two_models_one_name(tmp_path):
    """a/model.json (XGBoost) and b/model.skops (a random forest): different models, one file stem."""
    from sklearn.ensemble import RandomForestClassifier

    data = _csv(tmp_path / "data.csv")
    ds = rba.load_dataset(f"csv:{data}")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    xgb.XGBClassifier(n_estimators=4, max_depth=2).fit(ds.X_train, ds.y_train).save_model(tmp_path / "a" / "model.json")
    sio = pytest.importorskip("skops.io")
    sio.dump(RandomForestClassifier(4, max_depth=3, random_state=0).fit(ds.X_train, ds.y_train), tmp_path / "b" / "model.skops")
    return tmp_path, f"csv:{data}"


def _rows(store):
    with Store(store, readonly=True) as s:
        return s.runs(history=True)


# --- 1. silent data loss ---------------------------------------------------------------------------

def test_two_models_with_one_file_name_keep_both_results(two_models_one_name):
    root, data = two_models_one_name
    store = root / "s.sqlite"
    first = rba.evaluate(load_model(root / "a" / "model.json"), data, store=store, **EVAL)
    before = _rows(store)
    second = rba.evaluate(load_model(root / "b" / "model.skops"), data, store=store, **EVAL)
    after = _rows(store)
    assert first["model"].tolist() == ["model"]
    assert second["model"].iloc[0].startswith("model-") and len(after) == 2  # disambiguated, not merged
    kept = after[after["model"] == "model"]
    assert kept["run_id"].tolist() == before["run_id"].tolist() and kept["created"].tolist() == before["created"].tolist()
    fps = {r["model_params"]["fingerprint"] for r in after["config"]}
    assert len(fps) == 2


def test_same_model_again_reuses_its_runs(two_models_one_name):
    root, data = two_models_one_name
    store = root / "s.sqlite"
    a = rba.evaluate(load_model(root / "a" / "model.json"), data, store=store, **EVAL)
    created = _rows(store)["created"].tolist()
    b = rba.evaluate(load_model(root / "a" / "model.json"), data, store=store, **EVAL)
    assert _rows(store)["created"].tolist() == created  # reused, not recomputed
    assert a["clean_accuracy"].tolist() == b["clean_accuracy"].tolist()


def test_explicit_name_of_another_model_is_refused_or_replaced(two_models_one_name):
    root, data = two_models_one_name
    store = root / "s.sqlite"
    rba.evaluate(load_model(root / "a" / "model.json"), data, store=store, name="mine", **EVAL)
    with pytest.raises(ConfigError, match="already holds the results of a different model"):
        rba.evaluate(load_model(root / "b" / "model.skops"), data, store=store, name="mine", **EVAL)
    assert len(_rows(store)) == 1
    rba.evaluate(load_model(root / "b" / "model.skops"), data, store=store, name="mine", replace=True, **EVAL)
    rows = _rows(store)
    assert len(rows) == 1 and rows["config"].iloc[0]["model_params"]["fingerprint"].startswith("file:")
    assert rows["config"].iloc[0]["model_params"]["fingerprint"] == "file:" + file_digest(root / "b" / "model.skops")[:32]


def test_user_model_named_like_a_registry_model_is_refused(two_models_one_name):
    root, data = two_models_one_name
    with pytest.raises(ConfigError, match="'rfm' is a registry model"):
        rba.evaluate(load_model(root / "a" / "model.json"), data, name="rfm", **EVAL)


def test_cli_name_of_a_registry_model_is_one_line_exit_2(two_models_one_name):
    root, data = two_models_one_name
    r = subprocess.run([sys.executable, "-m", "robustbench_align.cli", "--quiet", "evaluate", str(root / "a" / "model.json"), "-d", data,
                        "--name", "rfm", "--store", str(root / "s.sqlite"), "--out", str(root / "out")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines == ["rba: error: name 'rfm' is a registry model; give your model another name"], r.stderr
    assert not (root / "s.sqlite").exists() or _rows(root / "s.sqlite").empty


def test_in_memory_models_are_told_apart_by_their_state():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((80, 4)), rng.integers(0, 2, 80)
    a = LogisticRegression().fit(X, y)
    b = LogisticRegression().fit(X, 1 - y)
    a2 = LogisticRegression().fit(X, y)
    fa, fb, fa2 = (model_fingerprint(m, wrap(m)) for m in (a, b, a2))
    assert fa != fb and fa == fa2


def test_an_opaque_model_is_completed_by_its_outputs():
    """A callable whose state is not visible (a C handle) still differs from another by its outputs."""

    class Handle:  # no state to read, like a foreign library's pointer
        __slots__ = ()

        def __getstate__(self):
            raise TypeError("cannot pickle")

    h = Handle()

    def make(w):
        return lambda X: np.c_[1 / (1 + np.exp(X @ w)), 1 - 1 / (1 + np.exp(X @ w))] if h else None

    f, g = make(np.ones(3)), make(-np.ones(3))
    ff, fg = model_fingerprint(f, wrap(f, n_features=3, n_classes=2)), model_fingerprint(g, wrap(g, n_features=3, n_classes=2))
    assert ff.startswith("state+probe:") and ff != fg
    assert ff == model_fingerprint(f, wrap(f, n_features=3, n_classes=2))


# --- 2. stale results ------------------------------------------------------------------------------

def _plan(data):
    return Plan(models=["rf"], datasets=[data, "iris"], threats=["linf"], seeds=[0], points=6,
                model_params={"rf": {"n_estimators": 3, "max_depth": 3}}).validate()


def test_changed_csv_recomputes_exactly_its_cells_and_reports_the_new_content(tmp_path):
    data = _csv(tmp_path / "data.csv")
    store, cache = tmp_path / "s.sqlite", str(tmp_path / "cache")
    first = run_plan(_plan(f"csv:{data}"), store, cache_dir=cache, progress=False)
    assert first["jobs"] == 2
    again = run_plan(_plan(f"csv:{data}"), store, cache_dir=cache, progress=False)
    assert again["jobs"] == 0 and again["skipped"] == 2  # unchanged content: reused
    _csv(data, flip=True)  # same path, new content: labels flipped
    changed = run_plan(_plan(f"csv:{data}"), store, cache_dir=cache, progress=False)
    assert changed["jobs"] == 1 and changed["skipped"] == 1  # only the cell on the changed file
    board = rba.leaderboard(store, dataset=f"csv:{data}")
    assert len(board) == 1  # the old runs are history, not pooled with the new ones
    with Store(store, readonly=True) as s:
        current = s.runs()
        history = s.runs(history=True)
        shas = set(current[current["dataset"] == f"csv:{data}"]["config"].map(lambda c: c["data_sha256"]))
    assert shas == {file_digest(data)} and len(history) == 3 and len(current) == 2
    flipped = rba.load_dataset(f"csv:{data}")
    model, cached, _ = fit_cached("rf", flipped, 0, cache, n_estimators=3, max_depth=3)
    assert cached  # the refit on the new content was cached under the new content's key ...
    acc = float(np.mean(model.predict(flipped.X_test) == flipped.y_test))
    assert abs(board["clean_accuracy"].iloc[0] - acc) < 0.35  # ... and the board reflects a model fitted on it


def test_fit_cache_never_serves_a_fit_of_old_content(tmp_path):
    data = _csv(tmp_path / "data.csv")
    cache = tmp_path / "cache"
    old = rba.load_dataset(f"csv:{data}")
    m_old, cached, _ = fit_cached("rf", old, 0, cache, n_estimators=3, max_depth=3)
    assert not cached
    _csv(data, flip=True)
    new = rba.load_dataset(f"csv:{data}")
    m_new, cached, _ = fit_cached("rf", new, 0, cache, n_estimators=3, max_depth=3)
    assert not cached  # a fresh fit: the cache key holds the training data's fingerprint
    assert np.mean(m_new.predict(new.X_train) == new.y_train) > 0.7
    assert np.mean(m_old.predict(new.X_train) == new.y_train) < 0.3  # the old fit would have been badly wrong


def test_file_changed_between_plan_and_run_fails_that_cell_with_the_reason(tmp_path):
    from robustbench_align.runner.job import run_job

    data = _csv(tmp_path / "data.csv")
    (job,) = Plan(models=["rf"], datasets=[f"csv:{data}"], threats=["linf"], seeds=[0], points=4,
                  model_params={"rf": {"n_estimators": 2}}).validate().jobs(None)
    _csv(data, flip=True)
    (rec,) = run_job(job)
    assert rec.run["status"] == "failed" and "changed since the plan was made" in rec.run["error"]


# --- 3. properties of the fingerprints -------------------------------------------------------------

arrays = hnp.arrays(dtype=st.sampled_from([np.float64, np.float32, np.int64]), shape=hnp.array_shapes(max_dims=2, max_side=6),
                    elements={"allow_nan": False, "allow_infinity": False, "min_value": -1e6, "max_value": 1e6})
leaves = st.one_of(st.integers(), st.floats(allow_nan=False), st.text(max_size=5), st.none(), st.booleans())
states = st.recursive(leaves | arrays, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=4), kids, max_size=4),
                      max_leaves=12)


class Box:
    def __init__(self, state):
        self.state = state


@settings(max_examples=150, deadline=None)
@given(states, states)
def test_object_digest_same_content_same_key_different_content_different_key(a, b):
    import copy

    da, complete = object_digest(Box(a))
    assert complete and da == object_digest(Box(copy.deepcopy(a)))[0]
    if _canonical(a) != _canonical(b):
        assert da != object_digest(Box(b))[0]


def _canonical(v):
    """A comparable form of a generated state (arrays by dtype, shape and bytes; dicts unordered; types kept)."""
    if isinstance(v, np.ndarray):
        return ("a", v.dtype.str, v.shape, v.tobytes())
    if isinstance(v, list):
        return ("l", tuple(_canonical(x) for x in v))
    if isinstance(v, dict):
        return ("d", frozenset((k, _canonical(x)) for k, x in v.items()))
    return (type(v).__name__, repr(v))


@settings(max_examples=40, deadline=None)
@given(st.binary(min_size=0, max_size=200), st.binary(min_size=0, max_size=200))
def test_file_digest_follows_bytes_not_names(tmp_path_factory, x, y):
    d = tmp_path_factory.mktemp("fd")
    (d / "one.bin").write_bytes(x)
    (d / "two.bin").write_bytes(x)
    (d / "three.bin").write_bytes(y)
    assert file_digest(d / "one.bin") == file_digest(d / "two.bin")
    assert (file_digest(d / "one.bin") == file_digest(d / "three.bin")) == (x == y)


def test_run_key_changes_with_data_content_and_model_fingerprint_only(tmp_path):
    data = _csv(tmp_path / "data.csv")
    other = tmp_path / "copy.csv"
    other.write_bytes(data.read_bytes())
    p1 = Plan(models=["rf"], datasets=[f"csv:{data}"], threats=["linf"], seeds=[0], points=4).validate().jobs(None)[0]
    p1b = Plan(models=["rf"], datasets=[f"csv:{data}"], threats=["linf"], seeds=[0], points=4).validate().jobs(None)[0]
    assert p1.run_ids() == p1b.run_ids()
    _csv(data, flip=True)
    p2 = Plan(models=["rf"], datasets=[f"csv:{data}"], threats=["linf"], seeds=[0], points=4).validate().jobs(None)[0]
    assert p2.run_ids() != p1.run_ids()
    assert p1.data_sha256 == file_digest(other) and p2.data_sha256 == file_digest(data)
