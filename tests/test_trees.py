"""Tree-ensemble families: the parsed ensembles reproduce XGBoost/scikit-learn exactly, also at every threshold."""
from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import xgboost as xgb
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.ensemble import ExtraTreesClassifier, GradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.tree import DecisionTreeClassifier

from robustbench_align.errors import DataError, ModelError
from robustbench_align.models.base import Model, TreeEnsemble, wrap
from robustbench_align.models.persistence import load_model, save_model
from robustbench_align.models.registry import build
from robustbench_align.models.trees import (
    GradientBoostingModel,
    RandomForestModel,
    XGBoostModel,
    float32_floor,
    parse_sklearn_forest,
    parse_sklearn_gbdt,
    parse_xgboost,
    tree_ensemble_from_json,
    tree_ensemble_to_json,
)

F32 = np.float32


def _split(X, y):
    return train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)


@pytest.fixture(scope="module")
def data():
    return {"binary": _split(*load_breast_cancer(return_X_y=True)), "multi": _split(*load_wine(return_X_y=True))}


FAMILIES = {
    "xgb": lambda: XGBoostModel(n_estimators=20, max_depth=4),
    "xgbrf": lambda: XGBoostModel(n_estimators=20, max_depth=5, rf=True),
    "xgb-parallel": lambda: XGBoostModel(n_estimators=6, max_depth=3, num_parallel_tree=3, subsample=0.8),
    "rf": lambda: RandomForestModel(n_estimators=20),
    "extra-trees": lambda: RandomForestModel(n_estimators=10, extra_trees=True, max_depth=8),
    "gbdt": lambda: GradientBoostingModel(n_estimators=20, max_depth=3),
}


@pytest.fixture(scope="module")
def fitted(data):
    cache = {}

    def get(family, task):
        if (family, task) not in cache:
            Xtr, _, ytr, _ = data[task]
            cache[family, task] = FAMILIES[family]().fit(Xtr, ytr)
        return cache[family, task]

    return get


def library_raw(model, X):
    """The library's own raw outputs in the parse's convention (margins, or class fractions for forests)."""
    if isinstance(model, RandomForestModel) or isinstance(getattr(model, "est", None), (RandomForestClassifier, ExtraTreesClassifier, DecisionTreeClassifier)):
        return model.predict_proba(X)
    raw = np.asarray(model.decision_function(X), dtype=np.float64).reshape(X.shape[0], -1)
    return raw * model.tree_ensemble().meta.get("raw_scale", 1.0)


def random_points(X, n, seed):
    """n points in (slightly beyond) the data's bounding box, rounded to float32 as the libraries do."""
    rng = np.random.default_rng(seed)
    lo, hi = X.min(axis=0), X.max(axis=0)
    P = lo + (hi - lo) * rng.uniform(-0.1, 1.1, size=(n, X.shape[1]))
    return P.astype(F32).astype(np.float64)


def threshold_points(ens: TreeEnsemble, base: np.ndarray) -> tuple[np.ndarray, int]:
    """For every split: base with that feature at thr, one float32 ulp below and one above (3 rows per split)."""
    rows = []
    for t in ens.trees:
        for i in np.flatnonzero(t.left >= 0):
            thr = F32(t.threshold[i])
            for v in (thr, np.nextafter(thr, F32(-np.inf)), np.nextafter(thr, F32(np.inf))):
                r = base.copy()
                r[t.feature[i]] = v
                rows.append(r)
    return np.asarray(rows, dtype=F32).astype(np.float64), len(rows) // 3


def assert_reproduces(model, ens, P):
    lib_p, ens_p = model.predict_proba(P), ens.predict_proba(P)
    np.testing.assert_allclose(ens_p, lib_p, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ens.raw(P), library_raw(model, P), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ens.predict(P), model.predict(P))


# --------------------------------------------------------------------------------------------
# The parse reproduces the library
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", ["binary", "multi"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_parse_reproduces_library_on_random_and_threshold_points(fitted, data, family, task):
    model = fitted(family, task)
    Xtr, Xte, _, _ = data[task]
    ens = model.tree_ensemble()
    k = 2 if task == "binary" else 3
    assert isinstance(ens, TreeEnsemble) and ens.n_classes == k and ens.n_features == Xtr.shape[1]
    assert ens.strict == family.startswith("xgb")
    forest = family in ("rf", "extra-trees")
    assert ens.n_outputs == (k if forest or k > 2 else 1)
    assert (ens.combine, ens.link) == (("mean", "identity") if forest else ("sum", "logistic" if k == 2 else "softmax"))
    assert all(t.threshold.dtype == np.float32 for t in ens.trees)
    assert model.tree_ensemble() is ens  # cached

    assert_reproduces(model, ens, random_points(Xtr, 1000, seed=1))

    n_changed = 0
    for base in (Xte[0], Xte[1]):
        base = base.astype(F32).astype(np.float64)
        T, n_splits = threshold_points(ens, base)
        assert n_splits > 10
        assert_reproduces(model, ens, T)
        lib = library_raw(model, T).reshape(n_splits, 3, -1)
        # the library's output does change across many thresholds: the test has teeth
        rule_side = lib[:, 1] if ens.strict else lib[:, 2]  # the row on the other side of the comparison
        n_changed += int(np.any(lib[:, 0] != rule_side, axis=1).sum())
    assert n_changed >= 5


def test_xgboost_tree_counts_and_layout(fitted):
    m = fitted("xgb", "multi")
    ens = m.tree_ensemble()
    assert len(ens.trees) == 20 * 3
    # round r, class k is tree r*K + k: its leaves feed output k only
    for i, t in enumerate(ens.trees):
        nz = np.flatnonzero(np.abs(t.value).sum(axis=0))
        assert set(nz.tolist()) <= {i % 3}
    rf = fitted("xgbrf", "binary").tree_ensemble()
    assert len(rf.trees) == 20 and rf.combine == "sum"
    par = fitted("xgb-parallel", "multi").tree_ensemble()
    assert len(par.trees) == 6 * 3 * 3
    # the measured intercept agrees with base_score to float32 precision
    np.testing.assert_allclose(ens.bias, ens.meta["base_score_bias"], atol=1e-6)
    assert ens.meta["objective"] == "multi:softprob"


def test_wrong_strictness_or_rounding_would_be_caught(fitted, data):
    """The two pitfalls of §2.4: `<` vs `<=` and float64 thresholds rounded to nearest float32."""
    _, Xte, _, _ = data["binary"]
    base = Xte[0].astype(F32).astype(np.float64)
    xm = fitted("xgb", "binary")
    ens = xm.tree_ensemble()
    T, _ = threshold_points(ens, base)
    flipped = dataclasses.replace(ens, strict=False)
    assert np.abs(flipped.raw(T) - xm.decision_function(T)).max() > 1e-3

    rf = fitted("rf", "binary").estimator_
    thr64 = np.concatenate([e.tree_.threshold[e.tree_.children_left >= 0] for e in rf.estimators_])
    nearest = thr64.astype(F32)
    floor = float32_floor(thr64)
    above = nearest.astype(np.float64) > thr64
    assert above.sum() > 10  # many sklearn thresholds are not float32-representable
    assert np.all(floor.astype(np.float64) <= thr64)
    assert np.all(np.nextafter(floor, F32(np.inf)).astype(np.float64) > thr64)
    # where rounding to nearest goes up, x = float32(thr) is routed right by sklearn; the parse agrees
    tree = rf.estimators_[0]
    t = tree.tree_
    internal = np.flatnonzero(t.children_left >= 0)
    nodes = [i for i in internal if F32(t.threshold[i]).astype(np.float64) > t.threshold[i]]
    assert nodes
    ens1 = parse_sklearn_forest(tree)
    for i in nodes:
        x = np.zeros((1, rf.n_features_in_))
        x[0, t.feature[i]] = F32(t.threshold[i])
        np.testing.assert_array_equal(ens1.predict_proba(x), tree.predict_proba(x))


def test_gbdt_exponential_loss_and_single_tree(data):
    Xtr, _, ytr, _ = data["binary"]
    g = GradientBoostingModel(n_estimators=15, loss="exponential").fit(Xtr, ytr)
    ens = g.tree_ensemble()
    assert ens.meta["raw_scale"] == 2.0
    P = random_points(Xtr, 500, seed=3)
    np.testing.assert_allclose(ens.predict_proba(P), g.predict_proba(P), atol=1e-12)
    np.testing.assert_allclose(ens.raw(P)[:, 0], 2 * g.decision_function(P)[:, 0], atol=1e-12)
    Xw, _, yw, _ = data["multi"]
    dt = DecisionTreeClassifier(random_state=0).fit(Xw, yw)
    m = wrap(dt)
    e = m.tree_ensemble()
    assert len(e.trees) == 1 and e.combine == "mean" and e.n_outputs == 3
    T, _ = threshold_points(e, Xw[0].astype(F32).astype(np.float64))
    np.testing.assert_array_equal(e.predict_proba(T), dt.predict_proba(T))
    np.testing.assert_array_equal(e.predict(T), m.predict(T))


def test_gbdt_init_zero_and_nonconstant_init(data):
    Xtr, _, ytr, _ = data["multi"]
    gz = GradientBoostingClassifier(n_estimators=10, init="zero", random_state=0).fit(Xtr, ytr)
    ens = parse_sklearn_gbdt(gz)
    np.testing.assert_array_equal(ens.bias, np.zeros(3))
    # a non-constant init estimator cannot be a bias: refused, not silently mis-parsed
    gl = GradientBoostingClassifier(n_estimators=5, init=DecisionTreeClassifier(max_depth=2), random_state=0).fit(Xtr, ytr)
    with pytest.raises(ModelError, match="not a constant"):
        parse_sklearn_gbdt(gl)


# --------------------------------------------------------------------------------------------
# Estimator behaviour
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["xgb", "xgbrf", "rf", "gbdt"])
def test_estimator_contract(fitted, data, family):
    m = fitted(family, "multi")
    _, Xte, _, yte = data["multi"]
    assert isinstance(m, Model) and m.n_features == 13 and m.n_classes == 3
    assert m.capabilities == frozenset({"predict_proba", "tree_ensemble"})
    np.testing.assert_array_equal(m.predict(Xte), m.estimator_.predict(Xte))
    np.testing.assert_array_equal(m.predict_proba(Xte), np.asarray(m.estimator_.predict_proba(Xte), dtype=np.float64))
    assert m.predict(Xte).dtype == np.int64
    assert np.mean(m.predict(Xte) == yte) > 0.85
    json.dumps(m.get_params())
    # deterministic under random_state (bootstrap / subsampling)
    again = clone(m).fit(*data["multi"][0::2])
    np.testing.assert_array_equal(again.predict_proba(Xte), m.predict_proba(Xte))
    with pytest.raises(ModelError, match="features"):
        m.predict(Xte[:, :5])
    bad = Xte[:3].copy()
    bad[0, 0] = np.nan
    with pytest.raises(ModelError, match="NaN"):
        m.predict_proba(bad)


def test_estimator_errors_and_refit_clears_cache(data):
    Xtr, _, ytr, _ = data["binary"]
    with pytest.raises(ModelError, match="not fitted"):
        XGBoostModel().predict(Xtr)
    with pytest.raises(ModelError, match="not fitted"):
        RandomForestModel().tree_ensemble()
    with pytest.raises(ModelError, match="n_estimators"):
        XGBoostModel(n_estimators=0).fit(Xtr, ytr)
    with pytest.raises(ModelError, match="num_parallel_tree"):
        XGBoostModel(rf=True, num_parallel_tree=3).fit(Xtr, ytr)
    with pytest.raises(ModelError, match="max_depth"):
        RandomForestModel(max_depth=0).fit(Xtr, ytr)
    with pytest.raises(ModelError, match="loss"):
        GradientBoostingModel(loss="hinge").fit(Xtr, ytr)
    with pytest.raises(DataError, match="no training rows"):
        RandomForestModel(n_estimators=3).fit(Xtr, np.where(ytr == 1, 2, 0))
    m = XGBoostModel(n_estimators=3).fit(Xtr, ytr)
    e1 = m.tree_ensemble()
    m.set_params(n_estimators=5).fit(Xtr, ytr)
    assert len(m.tree_ensemble().trees) == 5 and len(e1.trees) == 3


def test_registry_specs_build_tree_models(data):
    Xtr, Xte, ytr, _ = data["binary"]
    for name, cls in (("xgb", XGBoostModel), ("rf", RandomForestModel), ("gbdt", GradientBoostingModel)):
        est = build(name, n_estimators=5, random_state=1)
        assert isinstance(est, cls) and est.name == name
        est.fit(Xtr, ytr)
        np.testing.assert_allclose(est.tree_ensemble().predict_proba(Xte), est.predict_proba(Xte), atol=1e-6)


# --------------------------------------------------------------------------------------------
# Persistence
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["xgb", "xgbrf", "rf", "extra-trees", "gbdt"])
@pytest.mark.parametrize("task", ["binary", "multi"])
def test_save_load_round_trip(fitted, data, tmp_path, family, task):
    m = fitted(family, task)
    _, Xte, _, _ = data[task]
    where = save_model(m, tmp_path / "m")
    files = {p.name for p in where.iterdir()}
    assert "model.json" in files and not any(f.endswith((".pkl", ".pickle", ".joblib")) for f in files)
    back = load_model(where)
    assert type(back) is type(m) and back.get_params() == m.get_params()
    np.testing.assert_array_equal(back.predict_proba(Xte), m.predict_proba(Xte))
    np.testing.assert_array_equal(back.predict(Xte), m.predict(Xte))
    np.testing.assert_array_equal(back.tree_ensemble().raw(Xte), m.tree_ensemble().raw(Xte))


def test_skops_state_with_foreign_types_is_refused(fitted, tmp_path):
    from fractions import Fraction

    import skops.io as sio

    m = fitted("rf", "binary")
    where = save_model(m, tmp_path / "m")
    lib = copy.deepcopy(m.estimator_)
    lib.extra_ = Fraction(1, 3)  # a non-sklearn, non-numpy type inside the file
    sio.dump(lib, str(where / "estimator.skops"))
    with pytest.raises(ModelError, match="refusing"):
        load_model(where)


def test_xgboost_json_file_and_missing_state(fitted, data, tmp_path):
    m = fitted("xgb", "multi")
    _, Xte, _, _ = data["multi"]
    path = tmp_path / "booster.json"
    m.estimator_.save_model(str(path))
    loaded = load_model(path)
    np.testing.assert_allclose(loaded.predict_proba(Xte), m.predict_proba(Xte), atol=1e-7)
    np.testing.assert_allclose(loaded.tree_ensemble().raw(Xte), m.tree_ensemble().raw(Xte), atol=1e-6)
    where = save_model(m, tmp_path / "dir")
    (where / "xgboost.json").unlink()
    with pytest.raises(ModelError, match="missing"):
        load_model(where)


# --------------------------------------------------------------------------------------------
# Malformed models
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def xgb_doc(fitted):
    booster = fitted("xgb", "binary").estimator_.get_booster()
    return json.loads(bytearray(booster.save_raw("json")))


def _tree0(doc):
    return doc["learner"]["gradient_booster"]["model"]["trees"][0]


def test_xgboost_json_parses_like_the_booster(fitted, xgb_doc):
    ens_json = tree_ensemble_from_json(xgb_doc)
    ens = fitted("xgb", "binary").tree_ensemble()
    assert len(ens_json.trees) == len(ens.trees)
    for a, b in zip(ens_json.trees, ens.trees, strict=True):
        np.testing.assert_array_equal(a.threshold, b.threshold)
        np.testing.assert_array_equal(a.value, b.value)
    # base_score bias (probability space → logit) matches the measured intercept
    np.testing.assert_allclose(ens_json.bias, ens.bias, atol=1e-6)


def test_malformed_xgboost_json_is_refused(xgb_doc):
    t = _tree0(xgb_doc)
    leaves = [i for i, c in enumerate(t["left_children"]) if c == -1]
    internal = [i for i, c in enumerate(t["left_children"]) if c != -1]
    assert len(internal) >= 2

    def edited(fn):
        doc = copy.deepcopy(xgb_doc)
        fn(_tree0(doc))
        return doc

    def cycle(tj):  # a leaf pointing back up to the root's children
        tj["left_children"][leaves[0]] = tj["left_children"][0]
        tj["right_children"][leaves[0]] = tj["right_children"][0]

    with pytest.raises(ModelError, match="cycle"):
        tree_ensemble_from_json(edited(cycle))

    def out_of_range(tj):
        tj["right_children"][internal[1]] = 10_000

    with pytest.raises(ModelError, match="out of range"):
        tree_ensemble_from_json(edited(out_of_range))

    def nan_threshold(tj):
        tj["split_conditions"][internal[0]] = float("nan")

    with pytest.raises(ModelError, match="NaN"):
        tree_ensemble_from_json(edited(nan_threshold))

    def categorical(tj):
        tj["split_type"][0] = 1

    with pytest.raises(ModelError, match="categorical"):
        tree_ensemble_from_json(edited(categorical))

    def short(tj):
        tj["split_indices"] = tj["split_indices"][:-1]

    with pytest.raises(ModelError, match="lengths"):
        tree_ensemble_from_json(edited(short))

    doc = copy.deepcopy(xgb_doc)
    doc["learner"]["objective"]["name"] = "reg:squarederror"
    with pytest.raises(ModelError, match="not supported"):
        tree_ensemble_from_json(doc)
    doc = copy.deepcopy(xgb_doc)
    del doc["learner"]["gradient_booster"]["model"]["trees"]
    with pytest.raises(ModelError, match="malformed"):
        tree_ensemble_from_json(doc)
    with pytest.raises(ModelError):
        tree_ensemble_from_json({"something": 1})


def test_own_json_round_trip_and_orphan_cycle(fitted, data):
    _, Xte, _, _ = data["multi"]
    for family in ("xgb", "rf", "gbdt"):
        ens = fitted(family, "multi").tree_ensemble()
        doc = json.loads(json.dumps(tree_ensemble_to_json(ens)))
        back = tree_ensemble_from_json(doc)
        assert (back.strict, back.combine, back.link, back.n_outputs) == (ens.strict, ens.combine, ens.link, ens.n_outputs)
        np.testing.assert_array_equal(back.raw(Xte), ens.raw(Xte))
        np.testing.assert_array_equal(back.trees[3].threshold, ens.trees[3].threshold)
    # nodes 1 and 2 point at each other below an unreachable spot: structurally malformed
    tree = {"feature": [-1, 0, 0, -1, -1], "threshold": [0, 0.5, 0.5, 0, 0], "left": [-1, 2, 1, -1, -1],
            "right": [-1, 3, 4, -1, -1], "value": [[0.1], [0], [0], [1], [2]]}
    doc = {"format": "robustbench_align.tree_ensemble", "version": 1, "n_features": 1, "n_classes": 2, "n_outputs": 1,
           "strict": True, "combine": "sum", "link": "logistic", "bias": [0.0], "trees": [tree]}
    with pytest.raises(ModelError, match="cannot be reached"):
        tree_ensemble_from_json(doc)
    good = dict(doc, trees=[{"feature": [0, -1, -1], "threshold": [0.5, 0, 0], "left": [1, -1, -1], "right": [2, -1, -1],
                             "value": [[0], [-1], [1]]}])
    ens = tree_ensemble_from_json(good)
    np.testing.assert_array_equal(ens.predict(np.array([[0.4], [0.5], [0.6]])), [0, 1, 1])


# --------------------------------------------------------------------------------------------
# wrap()
# --------------------------------------------------------------------------------------------
def test_wrap_library_objects(data):
    Xb, Xbt, yb, _ = data["binary"]
    Xw, Xwt, yw, _ = data["multi"]
    objs = [
        (xgb.XGBClassifier(n_estimators=8, max_depth=3, n_jobs=1).fit(Xb, yb), Xbt),
        (xgb.XGBRFClassifier(n_estimators=8, max_depth=3, n_jobs=1).fit(Xw, yw), Xwt),
        (RandomForestClassifier(n_estimators=8, random_state=0).fit(Xw, yw), Xwt),
        (ExtraTreesClassifier(n_estimators=8, random_state=0).fit(Xb, yb), Xbt),
        (GradientBoostingClassifier(n_estimators=8, random_state=0).fit(Xw, yw), Xwt),
    ]
    for obj, Xt in objs:
        m = wrap(obj, name="w")
        assert m.name == "w" and m.has("tree_ensemble")
        np.testing.assert_array_equal(m.predict(Xt), obj.predict(Xt))
        np.testing.assert_array_equal(m.predict_proba(Xt), np.asarray(obj.predict_proba(Xt), dtype=np.float64))
        ens = m.tree_ensemble()
        np.testing.assert_allclose(ens.predict_proba(Xt), m.predict_proba(Xt), atol=1e-6)
        np.testing.assert_array_equal(ens.predict(Xt), m.predict(Xt))

    # a raw Booster, with a softmax objective that returns labels only
    clf = xgb.XGBClassifier(n_estimators=8, objective="multi:softmax", n_jobs=1).fit(Xw, yw)
    mb = wrap(clf.get_booster())
    assert mb.n_classes == 3 and mb.n_features == 13
    np.testing.assert_array_equal(mb.predict(Xwt), clf.predict(Xwt))
    np.testing.assert_allclose(mb.predict_proba(Xwt), clf.predict_proba(Xwt), atol=1e-6)
    np.testing.assert_allclose(parse_xgboost(clf.get_booster()).predict_proba(Xwt), mb.predict_proba(Xwt), atol=1e-6)


def test_wrap_black_box_and_label_mapping(data):
    Xw, Xwt, yw, _ = data["multi"]
    names = np.array(["c", "a", "b"])[yw]  # classes_ sorted: a, b, c
    lr = make_pipeline(StandardScaler(), LogisticRegression()).fit(Xw, names)
    m = wrap(lr)  # the scaler is folded in: the pipeline reaches the exact linear path in raw feature space
    assert m.capabilities == frozenset({"predict_proba", "torch_logits", "linear"}) and m.n_classes == 3 and m.n_features == 13
    box = wrap(make_pipeline(StandardScaler(), KNeighborsClassifier(3)).fit(Xw, names))
    assert box.capabilities == frozenset({"predict_proba"}) and box.path_note
    idx = m.predict(Xwt)
    np.testing.assert_array_equal(lr.classes_[idx], lr.predict(Xwt))
    np.testing.assert_array_equal(idx, np.argmax(m.predict_proba(Xwt), axis=1))
    rf = RandomForestClassifier(n_estimators=5, random_state=0).fit(Xw, names)
    mr = wrap(rf)
    np.testing.assert_array_equal(rf.classes_[mr.predict(Xwt)], rf.predict(Xwt))
    np.testing.assert_array_equal(mr.tree_ensemble().predict(Xwt), mr.predict(Xwt))


def test_wrap_unfitted_and_unusable_objects(data):
    Xb, _, yb, _ = data["binary"]
    for obj in (RandomForestClassifier(), GradientBoostingClassifier(), xgb.XGBClassifier(), LogisticRegression(), xgb.Booster()):
        with pytest.raises(ModelError, match=r"fit|train"):
            wrap(obj)
    svc = wrap(SVC().fit(Xb[:100], yb[:100]))  # no predict_proba of its own: the decision values reach the gradient path
    assert "torch_logits" in svc.capabilities
    pre = wrap(SVC(kernel="precomputed").fit(Xb[:100] @ Xb[:100].T, yb[:100]))  # a kernel the gradient path cannot express
    assert pre.capabilities == frozenset({"predict_proba"}) and "precomputed" in str(pre.path_note)
    with pytest.raises(ModelError, match="not a classifier"):
        wrap(xgb.XGBRegressor(n_estimators=2).fit(Xb, yb))
    # a finite 'missing' value would be routed by default_left, which the parse ignores
    with pytest.raises(ModelError, match="missing"):
        wrap(xgb.XGBClassifier(n_estimators=2, missing=0.0, n_jobs=1).fit(Xb, yb))
