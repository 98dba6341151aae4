"""LightGBM → parsed float64 TreeEnsemble: fidelity at every threshold, exact radii by brute force, files, refusals."""
from __future__ import annotations

import itertools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

lgb = pytest.importorskip("lightgbm")

import robustbench_align as rba  # noqa: E402
from robustbench_align.errors import ModelError  # noqa: E402
from robustbench_align.models.base import TreeEnsemble, wrap  # noqa: E402
from robustbench_align.models.persistence import load_model  # noqa: E402
from robustbench_align.models.trees.ensemble_json import tree_ensemble_from_json, tree_ensemble_to_json  # noqa: E402
from robustbench_align.models.trees.lightgbm_parse import K_ZERO_THRESHOLD  # noqa: E402

KZ = K_ZERO_THRESHOLD
SPECIAL = [0.0, -0.0, KZ, -KZ, np.nextafter(KZ, 1.0), -np.nextafter(KZ, 1.0), np.nextafter(KZ, 0.0), -np.nextafter(KZ, 0.0),
           np.nextafter(-KZ, -1.0), 1e-36, -1e-36]


def data(k: int, n: int = 300, d: int = 5, zeros: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=n, n_features=d, n_informative=min(d, 4), n_redundant=0, n_classes=k, random_state=seed)
    if zeros:
        X[::3, 0] = 0.0
        X[::4, 1] = 0.0
    return X, y


def boundary_rows(model: Any, X: np.ndarray, seed: int = 0) -> np.ndarray:
    """Rows with one coordinate at a LightGBM threshold or one float64 ulp either side, plus the zero-region values."""
    rng = np.random.default_rng(seed)
    rows = []

    def walk(node: dict[str, Any]) -> None:
        if "split_feature" in node:
            f, t = int(node["split_feature"]), float(node["threshold"])
            for c in (t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf)):
                r = X[rng.integers(len(X))].copy()
                r[f] = c
                rows.append(r)
            walk(node["left_child"])
            walk(node["right_child"])

    for t in booster_of(model).dump_model()["tree_info"]:
        walk(t["tree_structure"])
    for c in SPECIAL:
        for f in range(X.shape[1]):
            r = X[rng.integers(len(X))].copy()
            r[f] = c
            rows.append(r)
    return np.array(rows)


def booster_of(model: Any) -> Any:
    return model.booster_ if isinstance(model, lgb.LGBMClassifier) else model


def lib_predict(model: Any, X: np.ndarray) -> np.ndarray:
    """LightGBM's own class index (LGBMClassifier.predict; for a Booster thresholded/argmax probabilities)."""
    if isinstance(model, lgb.LGBMClassifier):
        return np.asarray(model.predict(X))
    p = np.asarray(model.predict(X))
    return (p > 0.5).astype(int) if p.ndim == 1 else np.argmax(p, axis=1)


def missing_types(model: Any) -> set[str]:
    out: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if "split_feature" in node:
            out.add(str(node["missing_type"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for t in booster_of(model).dump_model()["tree_info"]:
        walk(t["tree_structure"])
    return out


def fitted(kind: str, k: int, zeros: bool = False, **kw: Any) -> Any:
    X, y = data(k, zeros=zeros)
    params = {"n_estimators": 25, "num_leaves": 7, "verbose": -1, "zero_as_missing": zeros, **kw}
    if kind == "clf":
        return lgb.LGBMClassifier(**params).fit(X, y), X, y
    n_est = params.pop("n_estimators")
    obj = "binary" if k == 2 else "multiclass"
    extra = {} if k == 2 else {"num_class": k}
    return lgb.train({"objective": obj, **extra, **params}, lgb.Dataset(X, y), num_boost_round=n_est), X, y


@pytest.mark.parametrize("kind", ["clf", "booster"])
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("zeros", [False, True], ids=["plain", "zero-missing"])
def test_parse_matches_lightgbm(kind: str, k: int, zeros: bool) -> None:
    model, X, _ = fitted(kind, k, zeros)
    if zeros:
        assert "Zero" in missing_types(model)
    m = wrap(model)
    assert m.has("tree_ensemble") and m.n_classes == k and m.n_features == X.shape[1]
    ens = m.tree_ensemble()
    assert isinstance(ens, TreeEnsemble) and ens.threshold_dtype == "float64" and not ens.strict
    R = np.random.default_rng(1).normal(size=(400, X.shape[1])) * 2
    np.testing.assert_allclose(ens.predict_proba(R), m.predict_proba(R), rtol=0, atol=1e-6)
    B = boundary_rows(model, X)
    np.testing.assert_array_equal(ens.predict(B), lib_predict(model, B))
    np.testing.assert_array_equal(m.predict(B), lib_predict(model, B))


def test_multiclassova_and_rf_mode() -> None:
    X, y = data(3, zeros=True)
    ova = lgb.LGBMClassifier(objective="multiclassova", n_estimators=20, num_leaves=5, verbose=-1, zero_as_missing=True).fit(X, y)
    rf = lgb.LGBMClassifier(boosting_type="rf", bagging_freq=1, bagging_fraction=0.6, n_estimators=15, num_leaves=5, verbose=-1).fit(X, y)
    for model in (ova, rf):
        m = wrap(model)
        ens = m.tree_ensemble()
        B = boundary_rows(model, X)
        np.testing.assert_array_equal(ens.predict(B), m.predict(B))
        p = m.predict_proba(B)
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    assert wrap(rf).tree_ensemble().combine == "mean"
    np.testing.assert_allclose(wrap(rf).tree_ensemble().predict_proba(X), wrap(rf).predict_proba(X), atol=1e-9)


def tiny() -> tuple[Any, np.ndarray, np.ndarray]:
    X, y = data(2, n=200, d=3, seed=3)
    clf = lgb.LGBMClassifier(n_estimators=3, num_leaves=4, max_depth=2, learning_rate=0.5, verbose=-1).fit(X, y)
    return clf, X, y


def brute_force(clf: Any, x: np.ndarray, y: int, p: float) -> float:
    """Min distance over every cell of the float64 threshold grid (closest point of each cell) that LightGBM labels != y."""
    per: dict[int, set[float]] = {}

    def walk(node: dict[str, Any]) -> None:
        if "split_feature" in node:
            per.setdefault(int(node["split_feature"]), set()).add(float(node["threshold"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for t in clf.booster_.dump_model()["tree_info"]:
        walk(t["tree_structure"])
    feats = sorted(per)
    options = []
    for f in feats:
        thr = sorted(per[f] | {KZ, float(np.nextafter(-KZ, -np.inf))})  # the zero region's ends cut cells too
        cands = {x[f]}
        for i in range(len(thr) + 1):  # cell i = (thr[i-1], thr[i]]: its closest point to x[f]
            lo = np.nextafter(thr[i - 1], np.inf) if i > 0 else -np.inf
            hi = thr[i] if i < len(thr) else np.inf
            cands.add(float(min(max(x[f], lo), hi)))
        options.append(sorted(cands))
    pts = np.array([np.array(x, dtype=np.float64) for _ in range(1)])
    combos = np.array(list(itertools.product(*options)))
    pts = np.repeat(pts, combos.shape[0], axis=0)
    pts[:, feats] = combos
    flips = clf.predict(pts) != y
    if not flips.any():
        return np.inf
    d = np.linalg.norm(pts[flips] - x, ord=p, axis=1)
    return float(d.min())


@pytest.mark.parametrize("norm,p", [("linf", np.inf), ("l2", 2)])
def test_exact_radius_equals_brute_force(norm: str, p: float) -> None:
    clf, X, y = tiny()
    Xs, ys = X[:20], y[:20]
    r = rba.minimal_radius(clf, Xs, ys, norm, attacks=["milp"], checks=False)
    correct = np.flatnonzero(clf.predict(Xs) == ys)
    assert correct.size >= 8
    for i in correct:
        bf = brute_force(clf, Xs[i], int(ys[i]), p)
        assert np.isfinite(bf)
        assert np.isclose(r.distance[i], bf, rtol=1e-9, atol=0), (i, r.distance[i], bf)
        if np.isfinite(r.distance[i]):
            assert clf.predict(r.x_adv[i : i + 1])[0] != ys[i]
            assert r.lower_bound is not None and r.lower_bound[i] <= r.distance[i] * (1 + 1e-9)


def test_default_linf_run_is_exact_for_float64(caplog: pytest.LogCaptureFixture) -> None:
    clf, X, y = tiny()
    r = rba.minimal_radius(clf, X[:4], y[:4], "linf", effort="fast", checks=False)
    assert r.path == "exact"
    for i in range(4):
        if clf.predict(X[i : i + 1])[0] == y[i] and np.isfinite(r.distance[i]):
            assert np.isclose(r.distance[i], brute_force(clf, X[i], int(y[i]), np.inf), rtol=1e-9)


def test_veritas_is_exact_on_float64_thresholds() -> None:
    """Veritas keeps float64 split values: its radii on LightGBM equal the float64 brute force, not a float32 rounding of it."""
    from robustbench_align.attacks.trees.veritas import VeritasLinf

    clf, X, y = tiny()
    Xs, ys = X[:20], y[:20]
    r = VeritasLinf().run(wrap(clf), Xs, ys, "linf")
    correct = np.flatnonzero(clf.predict(Xs) == ys)
    assert correct.size >= 8
    for i in correct:
        bf = brute_force(clf, Xs[i], int(ys[i]), np.inf)
        assert r.distance[i] == bf, (i, r.distance[i], bf)  # the same float64 cell corner
        assert r.lower_bound is not None and r.lower_bound[i] == bf
        assert clf.predict(r.x_adv[i : i + 1])[0] != ys[i]


def test_ensemble_json_round_trip_keeps_float64() -> None:
    clf, X, _ = fitted("clf", 2, zeros=True)
    ens = wrap(clf).tree_ensemble()
    doc = json.loads(json.dumps(tree_ensemble_to_json(ens)))
    assert doc["threshold_dtype"] == "float64"
    back = tree_ensemble_from_json(doc)
    assert back.threshold_dtype == "float64"
    B = boundary_rows(clf, X)
    np.testing.assert_array_equal(back.raw(B), ens.raw(B))
    old = {k: v for k, v in doc.items() if k != "threshold_dtype"}  # files from before the field: float32
    assert tree_ensemble_from_json(old).threshold_dtype == "float32"


@pytest.mark.parametrize("k", [2, 3])
def test_file_round_trips(tmp_path: Path, k: int) -> None:
    clf, X, _ = fitted("clf", k, zeros=True)
    B = boundary_rows(clf, X)
    txt = tmp_path / "model.txt"
    clf.booster_.save_model(str(txt))
    m = load_model(txt)
    assert m.has("tree_ensemble")
    np.testing.assert_array_equal(m.predict(B), lib_predict(clf, B))
    np.testing.assert_allclose(m.predict_proba(B), clf.predict_proba(B), atol=1e-12)
    js = tmp_path / "dump.json"
    js.write_text(json.dumps(clf.booster_.dump_model()))
    mj = load_model(js)
    assert mj.has("tree_ensemble")
    np.testing.assert_array_equal(mj.predict(B), lib_predict(clf, B))
    np.testing.assert_allclose(mj.predict_proba(B), clf.predict_proba(B), atol=1e-9)


def test_corrupt_and_truncated_files(tmp_path: Path) -> None:
    clf, _, _ = fitted("clf", 2)
    text = clf.booster_.model_to_string()
    cut = tmp_path / "cut.txt"
    cut.write_text(text[: len(text) // 2])
    with pytest.raises(ModelError, match=r"truncated|could not load") as e1:
        load_model(cut)
    assert "\n" not in str(e1.value)
    bad = tmp_path / "bad.txt"
    bad.write_text("tree\nversion=v4\nnum_class=zz\nend of trees\n")
    with pytest.raises(ModelError) as e2:
        load_model(bad)
    assert "\n" not in str(e2.value)
    dump = clf.booster_.dump_model()
    dump["tree_info"] = dump["tree_info"][:3] + [{"tree_index": 3}]
    js = tmp_path / "bad.json"
    js.write_text(json.dumps(dump))
    with pytest.raises(ModelError, match="malformed"):
        load_model(js)


def test_xgboost_json_is_not_taken(tmp_path: Path) -> None:
    from robustbench_align.models.adapters.lightgbm import sniff_lightgbm_json

    p = tmp_path / "x.json"
    p.write_text(json.dumps({"learner": {"name": "tree"}, "version": [2, 0, 0]}))
    assert not sniff_lightgbm_json(p)


def test_categorical_falls_back_to_black_box(caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    X[:, 0] = rng.integers(0, 6, 400)
    y = (np.isin(X[:, 0], [1, 4]) ^ (X[:, 1] > 1.2)).astype(int)
    clf = lgb.LGBMClassifier(n_estimators=10, num_leaves=5, verbose=-1, min_data_per_group=5, cat_smooth=1).fit(X, y, categorical_feature=[0])
    assert any(t["num_cat"] > 0 for t in clf.booster_.dump_model()["tree_info"])
    with caplog.at_level(logging.WARNING):
        m = wrap(clf)
    assert not m.has("tree_ensemble")
    assert getattr(m, "path_note", "").startswith("exact path refused: ") and "categorical" in m.path_note
    assert "categorical" in caplog.text
    np.testing.assert_allclose(m.predict_proba(X), clf.predict_proba(X))


def test_linear_tree_falls_back() -> None:
    X, y = data(2)
    clf = lgb.LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1, linear_tree=True).fit(X, y)
    m = wrap(clf)
    assert not m.has("tree_ensemble") and "linear" in getattr(m, "path_note", "")


def test_regression_and_unfitted_refused() -> None:
    X, y = data(2)
    with pytest.raises(ModelError, match="regression model; the suite evaluates classifiers"):
        wrap(lgb.LGBMRegressor(n_estimators=3, verbose=-1).fit(X, y.astype(float)))
    booster = lgb.train({"objective": "regression", "verbose": -1}, lgb.Dataset(X, y.astype(float)), num_boost_round=3)
    with pytest.raises(ModelError, match="regression model"):
        wrap(booster)
    with pytest.raises(ModelError, match="ranking model"):
        wrap(lgb.LGBMRanker(n_estimators=3, verbose=-1).fit(X, y, group=[len(y)]))
    with pytest.raises(ModelError, match="not fitted"):
        wrap(lgb.LGBMClassifier())
    m = wrap(lgb.LGBMClassifier(n_estimators=3, verbose=-1).fit(X, y))
    with pytest.raises(ModelError, match="expects 5 features"):
        m.predict(np.zeros((2, 4)))
    with pytest.raises(ModelError, match="n_features=4"):
        wrap(lgb.LGBMClassifier(n_estimators=3, verbose=-1).fit(X, y), n_features=4)


def test_values_within_kzero_threshold_read_as_zero() -> None:
    """A split at -kZeroThreshold (missing_type None): x = -1e-35 is read as 0 by LightGBM, so it goes right, not left."""
    rng = np.random.default_rng(0)
    x0 = rng.choice([-1.0, 0.0, 1.0], 300)
    X = np.c_[x0, rng.normal(size=300)]
    y = (x0 == 0).astype(int)
    clf = lgb.LGBMClassifier(n_estimators=3, num_leaves=3, verbose=-1, min_child_samples=5).fit(X, y)
    thresholds: set[float] = set()

    def walk(node: dict[str, Any]) -> None:
        if "split_feature" in node:
            thresholds.add(float(node["threshold"]))
            walk(node["left_child"])
            walk(node["right_child"])

    for t in clf.booster_.dump_model()["tree_info"]:
        walk(t["tree_structure"])
    assert -KZ in thresholds
    P = np.array([[v, 0.3] for v in SPECIAL + [-1e-20, 1e-20]])
    ens = wrap(clf).tree_ensemble()
    np.testing.assert_array_equal(ens.predict(P), clf.predict(P))
    np.testing.assert_allclose(ens.predict_proba(P), clf.predict_proba(P), atol=1e-12)
    p = clf.predict_proba(P)[:, 1]
    at, zero, below = p[SPECIAL.index(-KZ)], p[SPECIAL.index(0.0)], p[SPECIAL.index(float(np.nextafter(-KZ, -1.0)))]
    assert at == zero != below  # -kZeroThreshold is read as 0, though a plain "x <= -kZeroThreshold" would send it left


def test_missing_lightgbm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from robustbench_align.models.adapters.lightgbm import import_lightgbm

    monkeypatch.setitem(sys.modules, "lightgbm", None)
    with pytest.raises(ModelError, match=r'pip install "robustbench-align\[lightgbm\]"'):
        import_lightgbm()


def test_exact_radius_on_a_30_tree_model_equals_brute_force() -> None:
    """An independent exact search on a realistic ensemble: two features keep the full threshold grid enumerable."""
    X, y = data(2, n=300, d=2, seed=11)
    clf = lgb.LGBMClassifier(n_estimators=30, num_leaves=5, max_depth=3, learning_rate=0.3, n_jobs=1, verbose=-1).fit(X, y)
    Xs, ys = X[:8], clf.predict(X[:8])
    r = rba.minimal_radius(clf, Xs, ys, "linf")
    assert r.path == "exact" and r.is_exact().all()
    for i in range(Xs.shape[0]):
        assert np.isclose(r.distance[i], brute_force(clf, Xs[i], int(ys[i]), np.inf), rtol=1e-9, atol=0)
