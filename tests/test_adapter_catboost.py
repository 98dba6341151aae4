"""CatBoost classifiers: the dedicated adapter, the oblivious/non-symmetric tree parse, exact attacks and files."""
from __future__ import annotations

import itertools
import json
import logging
import sys

import numpy as np
import pytest

import robustbench_align as rba
from conftest import rounding_edge_down, rounding_edge_up
from robustbench_align.errors import ModelError
from robustbench_align.models.trees.catboost_parse import CatBoostUnsupported, import_catboost, parse_catboost_doc
from robustbench_align.models.trees.checks import probe_points

cb = pytest.importorskip("catboost")

F32_INF = np.float32(np.inf)
FAST = {"thread_count": 1, "allow_writing_files": False, "verbose": False, "random_seed": 0}


def data(n: int = 300, d: int = 4, k: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    if k == 2:
        y = (X[:, 0] + 0.7 * X[:, 1] - 0.3 * X[:, 2] > 0).astype(np.int64)
    else:
        y = np.digitize(X[:, 0] + 0.5 * X[:, 1], [-0.4, 0.4]).astype(np.int64)
    return X, y


def fit(k: int = 2, iterations: int = 30, depth: int = 4, d: int = 4, **kw: object) -> tuple[object, np.ndarray, np.ndarray]:
    X, y = data(d=d, k=k)
    return cb.CatBoostClassifier(iterations=iterations, depth=depth, **FAST, **kw).fit(X, y), X, y


def library_index(clf, X: np.ndarray) -> np.ndarray:
    """CatBoost's own predict as class indices (it returns labels, shape (n,) or (n, 1))."""
    labels = np.asarray(clf.predict(X, thread_count=1)).reshape(-1)
    return np.searchsorted(np.asarray(clf.classes_), labels.astype(np.asarray(clf.classes_).dtype))


def border_rows(ens, n_random: int = 200, seed: int = 0) -> np.ndarray:
    """Rows with one coordinate at every border and at its float32 neighbours (the rest random), plus fully on-grid rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in ens.trees:
        for f, thr in zip(t.feature[t.left >= 0], t.threshold[t.left >= 0], strict=True):
            with np.errstate(over="ignore"):  # the neighbour of -FLT_MAX is -inf (skipped: inputs are finite)
                near = [v for v in (thr, np.nextafter(thr, -F32_INF), np.nextafter(thr, F32_INF)) if np.isfinite(v)]
            for v in near:
                r = rng.normal(size=ens.n_features)
                r[f] = float(v)
                rows.append(r)
    with np.errstate(over="ignore"):
        grid = probe_points(ens.trees, ens.n_features, n=n_random, seed=seed)
    return np.vstack([np.array(rows), grid])


@pytest.mark.parametrize("k, grow_policy", [(2, "SymmetricTree"), (3, "SymmetricTree"), (2, "Depthwise"), (3, "Lossguide")])
def test_parse_matches_catboost(k: int, grow_policy: str) -> None:
    clf, _, _ = fit(k=k, iterations=40, depth=4, grow_policy=grow_policy)
    model = rba.wrap(clf)
    assert type(model).__name__ == "WrappedCatBoostTrees" and model.has("tree_ensemble")
    assert (model.n_features, model.n_classes) == (4, k) and model.path_note is None
    ens = model.tree_ensemble()
    assert ens.strict is False and ens.n_classes == k and ens.n_outputs == (1 if k == 2 else k)
    assert ens.meta["tree_kind"] == ("oblivious" if grow_policy == "SymmetricTree" else "non-symmetric")
    Z = np.random.default_rng(3).normal(scale=1.5, size=(2000, 4))
    assert np.abs(ens.predict_proba(Z) - clf.predict_proba(Z, thread_count=1)).max() <= 1e-6
    assert np.abs(model.predict_proba(Z) - clf.predict_proba(Z, thread_count=1)).max() == 0.0
    B = border_rows(ens)
    np.testing.assert_array_equal(ens.predict(B), library_index(clf, B))
    np.testing.assert_array_equal(ens.leaves(B), ens.leaves(B.astype(np.float32)))
    assert np.abs(ens.predict_proba(B) - clf.predict_proba(B, thread_count=1)).max() <= 1e-6
    # float64 inputs between a border and its float32 neighbour round like CatBoost's float32 features
    thr = np.concatenate([t.threshold[t.left >= 0] for t in ens.trees]).astype(np.float64)
    feat = np.concatenate([t.feature[t.left >= 0] for t in ens.trees])
    H = np.zeros((2 * thr.size, 4))
    H[np.arange(thr.size), feat] = thr + np.abs(thr) * 2.0**-30 + 1e-300
    H[thr.size + np.arange(thr.size), feat] = thr - np.abs(thr) * 2.0**-30 - 1e-300
    np.testing.assert_array_equal(ens.predict(H), library_index(clf, H))
    pred = model.predict(Z)
    assert pred.shape == (2000,)
    np.testing.assert_array_equal(pred, library_index(clf, Z))


def test_oblivious_leaf_layout_and_pruning() -> None:
    doc = {
        "features_info": {"float_features": [{"feature_index": 0, "flat_feature_index": 1}, {"feature_index": 1, "flat_feature_index": 0}]},
        "scale_and_bias": [2.0, [0.5, 0.0, -0.5]],
        "model_info": {"params": {"loss_function": {"type": "MultiClass"}}},
        "oblivious_trees": [{
            "splits": [{"border": 0.0, "float_feature_index": 0, "split_type": "FloatFeature"},
                       {"border": 1.0, "float_feature_index": 0, "split_type": "FloatFeature"}],
            "leaf_values": list(range(12)),
        }],
    }
    ens = parse_catboost_doc(doc)
    assert ens.n_features == 2 and ens.n_outputs == 3 and ens.link == "softmax"
    assert ens.trees[0].n_nodes == 5  # leaf 2 (x <= 0 and x > 1) cannot be reached and is not built
    X = np.array([[0.0, -1.0], [0.0, 0.5], [0.0, 2.0]])  # column 1 is float feature 0
    expect = 2.0 * np.array([[0, 1, 2], [3, 4, 5], [9, 10, 11]]) + np.array([0.5, 0.0, -0.5])
    np.testing.assert_allclose(ens.raw(X), expect)


def test_unsupported_documents_are_refused_with_a_reason() -> None:
    base = {"features_info": {"float_features": [{"feature_index": 0, "flat_feature_index": 0}]}, "scale_and_bias": [1, [0]],
            "oblivious_trees": [{"splits": [{"border": 0.5, "float_feature_index": 0, "split_type": "FloatFeature"}], "leaf_values": [0, 1]}]}
    assert parse_catboost_doc(base).n_outputs == 1
    onehot = json.loads(json.dumps(base))
    onehot["oblivious_trees"][0]["splits"][0]["split_type"] = "OneHotFeature"
    with pytest.raises(CatBoostUnsupported, match="OneHotFeature splits"):
        parse_catboost_doc(onehot)
    cat = {**base, "features_info": {**base["features_info"], "categorical_features": [{"feature_index": 0, "flat_feature_index": 1}]}}
    with pytest.raises(CatBoostUnsupported, match="categorical features"):
        parse_catboost_doc(cat)
    with pytest.raises(CatBoostUnsupported, match="loss function MultiClassOneVsAll"):
        parse_catboost_doc({**base, "model_info": {"params": {"loss_function": {"type": "MultiClassOneVsAll"}}}})
    bad = json.loads(json.dumps(base))
    bad["oblivious_trees"][0]["leaf_values"] = [0, 1, 2]
    with pytest.raises(ModelError, match="malformed") as info:
        parse_catboost_doc(bad)
    assert not isinstance(info.value, CatBoostUnsupported)


def grid_cells(ens, x: np.ndarray) -> np.ndarray:
    """For every cell of the float32 border grid (left iff x <= border), the point of the cell closest to x."""
    per_feature: list[list[float]] = []
    for f in range(ens.n_features):
        thr = np.unique(np.concatenate([t.threshold[(t.left >= 0) & (t.feature == f)] for t in ens.trees]))
        if thr.size == 0:
            per_feature.append([float(x[f])])
            continue
        x32 = np.float32(x[f])
        cands = []
        for i in range(thr.size + 1):  # interval i: (thr[i-1], thr[i]]
            lo = thr[i - 1] if i > 0 else -F32_INF
            hi = thr[i] if i < thr.size else F32_INF
            if lo < x32 <= hi:
                cands.append(float(x[f]))
            elif x32 <= lo:  # the closest float64 that CatBoost's float32 conversion puts in the cell
                cands.append(rounding_edge_up(np.nextafter(lo, F32_INF)))
            else:
                cands.append(rounding_edge_down(hi))
        per_feature.append(cands)
    return np.array(list(itertools.product(*per_feature)))


@pytest.mark.parametrize("k", [2, 3])
def test_minimal_radius_equals_brute_force_over_the_border_grid(k: int) -> None:
    clf, X, _ = fit(k=k, iterations=3, depth=2, d=3)
    model = rba.wrap(clf)
    Xt = X[:6]
    yt = library_index(clf, Xt)
    for norm, p in (("linf", np.inf), ("l2", 2)):
        res = rba.minimal_radius(clf, Xt, yt, norm)
        assert set(res.attacks_used) <= {"milp", "veritas"} and res.attacks_used
        assert res.success.all()
        assert res.lower_bound is not None and np.allclose(res.lower_bound, res.distance, rtol=1e-6, atol=1e-9)  # certified
        np.testing.assert_array_equal(library_index(clf, res.x_adv) != yt, True)  # CatBoost's own predict flips
        for i in range(Xt.shape[0]):
            cells = grid_cells(model.tree_ensemble(), Xt[i])
            flips = library_index(clf, cells) != yt[i]
            bf = np.linalg.norm(cells[flips] - Xt[i], ord=p, axis=1).min()
            assert res.distance[i] == pytest.approx(bf, rel=1e-9, abs=1e-12)
            assert np.linalg.norm(res.x_adv[i] - Xt[i], ord=p) <= bf * (1 + 1e-9) + 1e-12


def test_unwrapped_multiclass_catboost_no_longer_crashes_the_ensemble() -> None:
    clf, X, y = fit(k=3, iterations=20, depth=3)
    assert np.asarray(clf.predict(X[:5])).shape == (5, 1)  # the column that used to break the generic sklearn path
    res = rba.minimal_radius(clf, X[:5], y[:5], "linf", effort="fast")
    assert res.distance.shape == (5,) and np.all(np.isfinite(res.distance) | ~res.success)
    assert set(res.attacks_used) <= {"milp", "veritas"}


def test_file_round_trips(tmp_path) -> None:
    clf, X, _ = fit(k=3, iterations=20, depth=3)
    ref = clf.predict_proba(X, thread_count=1)
    clf.save_model(str(tmp_path / "m.cbm"))
    clf.save_model(str(tmp_path / "m.json"), format="json")
    for fname in ("m.cbm", "m.json"):
        loaded = rba.load_model(tmp_path / fname)
        assert loaded.has("tree_ensemble") and loaded.name == "m"
        np.testing.assert_allclose(loaded.predict_proba(X), ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(loaded.tree_ensemble().predict_proba(X), ref, rtol=0, atol=1e-6)


def test_corrupt_files_are_one_line_errors(tmp_path) -> None:
    clf, _, _ = fit(iterations=5, depth=2)
    clf.save_model(str(tmp_path / "m.cbm"))
    clf.save_model(str(tmp_path / "m.json"), format="json")
    cbm, js = (tmp_path / "m.cbm").read_bytes(), (tmp_path / "m.json").read_text()
    cases = {
        "trunc.cbm": cbm[: len(cbm) // 2],
        "junk.cbm": b"not a model at all",
        "trunc.json": js[: len(js) // 2].encode(),
    }
    doc = json.loads(js)
    doc["oblivious_trees"][0]["leaf_values"] = doc["oblivious_trees"][0]["leaf_values"][:1]
    cases["badleaves.json"] = json.dumps(doc).encode()
    for fname, blob in cases.items():
        (tmp_path / fname).write_bytes(blob)
        with pytest.raises(ModelError) as info:
            rba.load_model(tmp_path / fname)
        assert len(str(info.value).splitlines()) == 1, fname


def test_catboost_json_does_not_steal_other_json(tmp_path) -> None:
    (tmp_path / "other.json").write_text(json.dumps({"learner": {}, "version": [2, 0, 0]}))
    with pytest.raises(ModelError) as info:
        rba.load_model(tmp_path / "other.json")
    assert "CatBoost" not in str(info.value)
    xgb = pytest.importorskip("xgboost")
    X, y = data()
    booster = xgb.XGBClassifier(n_estimators=3, max_depth=2, n_jobs=1).fit(X, y).get_booster()
    booster.save_model(str(tmp_path / "x.json"))
    assert type(rba.load_model(tmp_path / "x.json")).__name__ == "WrappedXGBoost"
    from robustbench_align.models.adapters.catboost import sniff_file

    assert not sniff_file(tmp_path / "x.json") and not sniff_file(tmp_path / "other.json")
    lgb = pytest.importorskip("lightgbm")
    dump = lgb.LGBMClassifier(n_estimators=3, max_depth=2, n_jobs=1, verbose=-1).fit(X, y).booster_.dump_model()
    (tmp_path / "l.json").write_text(json.dumps(dump))
    assert not sniff_file(tmp_path / "l.json")


def test_categorical_model_falls_back_to_black_box(caplog) -> None:
    pd = pytest.importorskip("pandas")
    X, y = data(d=4)
    df = pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "g": np.digitize(X[:, 3], [-0.5, 0.5])})
    clf = cb.CatBoostClassifier(iterations=10, depth=3, cat_features=["g"], **FAST).fit(df, y)
    Xn = df.to_numpy(dtype=np.float64)
    with caplog.at_level(logging.WARNING):
        model = rba.wrap(clf)
    assert not model.has("tree_ensemble")
    assert model.path_note == "exact path refused: categorical features"
    assert "exact path refused: categorical features" in caplog.text
    np.testing.assert_allclose(model.predict_proba(Xn), clf.predict_proba(df, thread_count=1), rtol=0, atol=1e-12)
    assert model.predict(Xn[:7]).shape == (7,)


def test_one_vs_all_is_a_black_box_with_reason() -> None:
    clf, X, _ = fit(k=3, iterations=10, depth=2, loss_function="MultiClassOneVsAll")
    model = rba.wrap(clf)
    assert not model.has("tree_ensemble") and "loss function MultiClassOneVsAll" in model.path_note
    p = model.predict_proba(X[:10])
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_array_equal(model.predict(X[:10]), np.argmax(clf.predict_proba(X[:10]), axis=1))


def test_regressor_and_unfitted_are_refused() -> None:
    X, _ = data()
    reg = cb.CatBoostRegressor(iterations=3, depth=2, **FAST).fit(X, X[:, 0])
    with pytest.raises(ModelError, match="CatBoostRegressor is a regression model"):
        rba.wrap(reg)
    with pytest.raises(ModelError, match="not fitted") as info:
        rba.wrap(cb.CatBoostClassifier())
    assert len(str(info.value).splitlines()) == 1


def test_missing_catboost_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "catboost", None)
    with pytest.raises(ModelError, match=r'pip install "robustbench-align\[catboost\]"'):
        import_catboost()


@pytest.mark.parametrize("k", [2, 3])
def test_model_contract_checks(tmp_path, binary_data, multiclass_data, k: int) -> None:
    """The shared Model-contract checks (tests/test_model_contract.py) on the CatBoost adapter, and a .cbm round trip."""
    from test_model_contract import CHECKS, check_round_trip

    X, y = binary_data if k == 2 else multiclass_data
    clf = cb.CatBoostClassifier(iterations=10, depth=3, **FAST).fit(X[:150], y[:150])
    model = rba.wrap(clf)
    assert model.capabilities == frozenset({"predict_proba", "tree_ensemble"})
    for check in CHECKS:
        check(model, X[150:], y[150:], k)
    clf.save_model(str(tmp_path / "m.cbm"))
    check_round_trip(model, tmp_path / "m.cbm", X[150:])


def test_nan_mode_min_border_is_exact_for_finite_inputs() -> None:
    """nan_mode=Min trains a border at -FLT_MAX (NaN goes left); for finite inputs it is an ordinary border."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    missing = rng.random(400) < 0.4
    y = (missing | (X[:, 1] > 0)).astype(np.int64)
    Xn = X.copy()
    Xn[missing, 0] = np.nan
    clf = cb.CatBoostClassifier(iterations=10, depth=2, nan_mode="Min", **FAST).fit(Xn, y)
    ens = rba.wrap(clf).tree_ensemble()
    lowest = np.float32(-np.finfo(np.float32).max)
    assert any(np.any(t.threshold[t.left >= 0] == lowest) for t in ens.trees)
    B = border_rows(ens)
    B[:20, 0] = float(lowest)
    np.testing.assert_array_equal(ens.predict(B), library_index(clf, B))
    assert np.abs(ens.predict_proba(B) - clf.predict_proba(B, thread_count=1)).max() <= 1e-6


def test_30_tree_radius_equals_brute_force() -> None:
    """An independent exact search on a realistic ensemble: two features keep the full border grid enumerable."""
    X = np.random.default_rng(4).normal(size=(300, 2))
    y = (X[:, 0] + np.sin(2 * X[:, 1]) > 0).astype(np.int64)
    clf = cb.CatBoostClassifier(iterations=30, depth=3, **FAST).fit(X, y)
    model = rba.wrap(clf)
    Xt = X[:8]
    yt = library_index(clf, Xt)
    res = rba.minimal_radius(clf, Xt, yt, "linf")
    assert res.path == "exact" and res.is_exact().all()
    for i in range(Xt.shape[0]):
        cells = grid_cells(model.tree_ensemble(), Xt[i])
        flips = library_index(clf, cells) != yt[i]
        assert res.distance[i] == pytest.approx(np.abs(cells[flips] - Xt[i]).max(axis=1).min(), rel=1e-9, abs=1e-12)
