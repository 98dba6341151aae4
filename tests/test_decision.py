"""HopSkipJump: near-exact on linear models, every adversarial flips the real model, budget and seed honoured."""
import importlib.util

import numpy as np
import pytest
import torch

from robustbench_align.attacks.decision import HopSkipJump
from robustbench_align.errors import AttackError
from robustbench_align.models.base import ProbaModel, wrap

torch.set_num_threads(1)


def linear_model(d, k, seed):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d, k))
    b = 0.1 * rng.standard_normal(k)

    def proba(X):
        z = X @ W + b
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)

    model = ProbaModel(proba, d, k, name=f"linear-{k}")
    X = rng.standard_normal((30, d))
    y = model.predict(X)  # all clean-correct, so every point needs a radius
    return model, X, y, W, b


def exact_linear_radius(X, y, W, b, norm):
    """min over other classes of margin / dual norm of the weight difference."""
    dual = {"l2": 2, "linf": 1}[norm]
    out = []
    for x, c in zip(X, y, strict=True):
        r = [((x @ (W[:, c] - W[:, k])) + b[c] - b[k]) / np.linalg.norm(W[:, c] - W[:, k], dual) for k in range(W.shape[1]) if k != c]
        out.append(min(r))
    return np.array(out)


@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("k", [2, 3])
def test_linear_radius_within_five_percent(norm, k):
    model, X, y, W, b = linear_model(8, k, seed=k)
    res = HopSkipJump(max_queries=4000, seed=0).run(model, X, y, norm)
    exact = exact_linear_radius(X, y, W, b, norm)
    assert res.success.all()
    ratio = res.distance / exact
    assert ratio.min() >= 1 - 1e-9  # an upper bound: never below the true radius
    assert np.median(ratio) < 1.01
    assert np.mean(ratio < 1.05) >= 0.95, np.sort(ratio)[-3:]
    assert res.queries.max() <= 4000


def test_budget_and_seed():
    model, X, y, *_ = linear_model(6, 3, seed=5)
    a = HopSkipJump(max_queries=300, seed=1).run(model, X, y, "l2")
    b = HopSkipJump(max_queries=300, seed=1).run(model, X, y, "l2")
    c = HopSkipJump(max_queries=300, seed=2).run(model, X, y, "l2")
    assert a.queries.max() <= 300
    np.testing.assert_array_equal(a.distance, b.distance)
    assert not np.array_equal(a.distance, c.distance)
    # a bigger budget does not do worse on the median
    big = HopSkipJump(max_queries=3000, seed=1).run(model, X, y, "l2")
    assert np.median(big.distance) <= np.median(a.distance) + 1e-12


def _forest():
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    X, y = make_classification(n_samples=300, n_features=6, n_informative=4, n_classes=3, random_state=0)
    rf = RandomForestClassifier(n_estimators=15, max_depth=5, random_state=0).fit(X[:250], y[:250])
    return rf, X[250:280], y[250:280]


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_every_adversarial_flips_a_random_forest(norm):
    rf, X, y = _forest()
    model = ProbaModel(rf.predict_proba, X.shape[1], 3, name="rf-blackbox")
    res = HopSkipJump(max_queries=1500, seed=0).run(model, X, y, norm)
    correct = rf.predict(X) == y
    assert res.success.all()  # piecewise-constant model, still an adversarial for every point
    ok = res.success & correct
    assert (rf.predict(res.x_adv[ok]) != y[ok]).all()
    d = np.linalg.norm(res.x_adv - X, ord={"l2": 2, "linf": np.inf}[norm], axis=1)
    np.testing.assert_allclose(d[ok], res.distance[ok], rtol=1e-12)
    assert (res.distance[~correct] == 0).all()
    assert res.rejected == 0


def test_single_tree_close_to_exact_box_distance():
    """On one decision tree the minimal linf radius is the distance to the nearest other-class leaf box."""
    from sklearn.datasets import make_classification
    from sklearn.tree import DecisionTreeClassifier

    X, y = make_classification(n_samples=300, n_features=4, n_informative=3, n_redundant=0, random_state=1)
    dt = DecisionTreeClassifier(max_depth=4, random_state=0).fit(X[:250], y[:250])
    Xt, yt = X[250:280], dt.predict(X[250:280])
    t = dt.tree_
    lo = np.full((t.node_count, 4), -np.inf)
    hi = np.full((t.node_count, 4), np.inf)
    for i in range(t.node_count):  # children boxes: left x <= thr, right x > thr
        if t.children_left[i] >= 0:
            f, thr = t.feature[i], t.threshold[i]
            for c in (t.children_left[i], t.children_right[i]):
                lo[c], hi[c] = lo[i], hi[i]
            hi[t.children_left[i], f] = min(hi[i, f], thr)
            lo[t.children_right[i], f] = max(lo[i, f], thr)
    leaves = np.flatnonzero(t.children_left < 0)
    leaf_cls = t.value[leaves, 0].argmax(axis=1)
    exact = []
    for x, c in zip(Xt, yt, strict=True):
        gap = np.maximum(np.maximum(lo[leaves] - x, x - hi[leaves]), 0).max(axis=1)
        exact.append(gap[leaf_cls != c].min())
    exact = np.array(exact)
    model = ProbaModel(dt.predict_proba, 4, 2, name="tree")
    res = HopSkipJump(max_queries=3000, seed=0).run(model, Xt, yt, "linf")
    assert res.success.all()
    assert (res.distance >= exact - 1e-6).all()  # never beats the exact radius
    assert np.median(res.distance / exact) < 1.1


def test_torch_model_candidates_verified_in_float32():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    model = wrap(net)
    X = np.random.default_rng(0).standard_normal((20, 5))
    y = model.predict(X)
    res = HopSkipJump(max_queries=1000, seed=0).run(model, X, y, "l2")
    assert res.success.all() and res.rejected == 0
    assert (model.predict(res.x_adv) != y).all()


def test_bad_arguments():
    model, X, y, *_ = linear_model(4, 2, seed=0)
    with pytest.raises(AttackError, match="norm"):
        HopSkipJump().run(model, X, y, "l1")
    with pytest.raises(AttackError, match="max_queries"):
        HopSkipJump(max_queries=0)
    with pytest.raises(AttackError, match="expects 4 features"):
        HopSkipJump().run(model, X[:, :3], y, "l2")
    with pytest.raises(AttackError, match="out of range"):
        HopSkipJump().run(model, X, y + 5, "l2")


def test_constant_model_finds_nothing():
    model = ProbaModel(lambda X: np.tile([0.7, 0.3], (X.shape[0], 1)), 3, 2, name="constant")
    X = np.zeros((4, 3))
    res = HopSkipJump(max_queries=500, seed=0).run(model, X, np.zeros(4, dtype=int), "linf")
    assert not res.success.any() and np.isinf(res.distance).all()
    assert res.queries.max() <= 500


@pytest.mark.skipif(importlib.util.find_spec("robustbench_align.models.trees") is None, reason="tree wrappers not installed yet")
def test_every_adversarial_flips_xgboost():
    import xgboost as xgb
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=300, n_features=6, n_informative=4, n_classes=3, random_state=2)
    clf = xgb.XGBClassifier(n_estimators=10, max_depth=3, n_jobs=1, random_state=0).fit(X[:250], y[:250])
    model = wrap(clf)
    Xt, yt = X[250:275], y[250:275]
    res = HopSkipJump(max_queries=1000, seed=0).run(model, Xt, yt, "linf")
    ok = res.success & (clf.predict(Xt) == yt)
    assert ok.sum() > 10 and res.rejected == 0
    assert (clf.predict(res.x_adv[ok]) != yt[ok]).all()  # the real xgboost model, not the parse
