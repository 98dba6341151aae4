"""Exact tree attacks: MILP and Veritas against brute-force enumeration and against each other."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from conftest import rounding_edge_down, rounding_edge_up
from robustbench_align.attacks.base import distances
from robustbench_align.attacks.trees import KantchelianMILP, VeritasLinf
from robustbench_align.errors import AttackError, ConfigError
from robustbench_align.models import trees as trees_mod
from robustbench_align.models.base import Model, Tree, TreeEnsemble

NORMS = ("linf", "l1", "l2")
F32_INF = np.float32(np.inf)


class EnsembleModel(Model):
    """A Model whose decision is the parsed ensemble's own rule (for hand-built ensembles)."""

    def __init__(self, ens: TreeEnsemble, name: str = "hand-built"):
        self.ens = ens
        self.name = name

    @property
    def n_features(self) -> int:
        return self.ens.n_features

    @property
    def n_classes(self) -> int:
        return self.ens.n_classes

    def predict_proba(self, X):
        return self.ens.predict_proba(self._check_X(X))

    def predict(self, X):
        return self.ens.predict(self._check_X(X))

    def tree_ensemble(self) -> TreeEnsemble:
        return self.ens


def random_tree(rng, depth, n_features, n_outputs, grid, integer_values):
    feature, threshold, left, right, value = [], [], [], [], []

    def grow(d):
        i = len(feature)
        feature.append(-1)
        threshold.append(np.float32(0))
        left.append(-1)
        right.append(-1)
        value.append(np.zeros(n_outputs))
        if d == depth or (d > 0 and rng.random() < 0.15):
            value[i] = rng.integers(-2, 3, n_outputs).astype(float) if integer_values else rng.normal(size=n_outputs)
            return i
        feature[i] = int(rng.integers(n_features))
        threshold[i] = np.float32(rng.choice(grid))
        left[i] = grow(d + 1)
        right[i] = grow(d + 1)
        return i

    grow(0)
    return Tree(
        feature=np.array(feature, dtype=np.int64),
        threshold=np.array(threshold, dtype=np.float32),
        left=np.array(left, dtype=np.int64),
        right=np.array(right, dtype=np.int64),
        value=np.array(value, dtype=np.float64),
    )


def random_ensemble(seed, *, n_trees=4, depth=2, n_features=3, n_classes=2, strict=True, combine="sum", integer_values=False, extra_features=0):
    """Random trees on `n_features` features; `extra_features` more columns that no tree uses."""
    rng = np.random.default_rng(seed)
    n_outputs = 1 if n_classes == 2 and combine == "sum" else n_classes
    # thresholds on a coarse grid (shared between trees) plus values that are not float32-exact
    grid = np.array([-0.6, -0.2, 0.1, 0.1 + 1e-9, 0.3, 0.7, 1 / 3], dtype=np.float64)
    trees = tuple(random_tree(rng, depth, n_features, n_outputs, grid, integer_values) for _ in range(n_trees))
    bias = np.zeros(n_outputs) if integer_values else rng.normal(scale=0.3, size=n_outputs)
    return TreeEnsemble(
        trees=trees, n_features=n_features + extra_features, n_classes=n_classes, n_outputs=n_outputs, strict=strict, bias=bias,
        combine=combine, link="logistic" if n_outputs == 1 else ("identity" if combine == "mean" else "softmax"),
    ).validate()


def leaf_boxes(tree, n_features):
    """(leaf id, lo, hi) per leaf: x reaches the leaf iff lo < x <= hi (<=) or lo <= x < hi (<), float32."""
    out = []
    stack = [(0, np.full(n_features, -np.inf, dtype=np.float32), np.full(n_features, np.inf, dtype=np.float32))]
    while stack:
        n, lo, hi = stack.pop()
        if tree.left[n] < 0:
            out.append((n, lo, hi))
            continue
        f, t = tree.feature[n], tree.threshold[n]
        lhi = hi.copy()
        lhi[f] = min(hi[f], t)
        rlo = lo.copy()
        rlo[f] = max(lo[f], t)
        stack.append((int(tree.left[n]), lo, lhi))
        stack.append((int(tree.right[n]), rlo, hi))
    return out


def brute_force(ens, x, y, norm, flipped=None):
    """Minimal distance over all consistent leaf combinations whose decision differs from y.

    `flipped(point) -> bool` decides what counts (default: the ensemble's own decision rule).
    """
    flipped = flipped or (lambda p: ens.predict(p[None])[0] != y)
    boxes = [leaf_boxes(t, ens.n_features) for t in ens.trees]
    best = np.inf
    x32 = x.astype(np.float32)
    for combo in itertools.product(*boxes):
        lo = np.max([b[1] for b in combo], axis=0)
        hi = np.min([b[2] for b in combo], axis=0)
        if np.any(lo >= hi):
            continue
        p = x.copy()
        for f in range(ens.n_features):
            # the closest float64 rounding into the float32 box (float32 comparisons of float32(x))
            if ens.strict:  # box [lo, hi)
                if x32[f] < lo[f]:
                    p[f] = rounding_edge_up(lo[f])
                elif x32[f] >= hi[f]:
                    p[f] = rounding_edge_down(np.nextafter(hi[f], -F32_INF))
            else:  # box (lo, hi]
                if x32[f] <= lo[f]:
                    p[f] = rounding_edge_up(np.nextafter(lo[f], F32_INF))
                elif x32[f] > hi[f]:
                    p[f] = rounding_edge_down(hi[f])
        reached = ens.leaves(p[None])[0]
        assert list(reached) == [b[0] for b in combo]
        if flipped(p):
            best = min(best, float(distances(x[None], p[None], norm)[0]))
    return best


def check_result(model, X, y, res, norm):
    """Every success flips the model within the reported distance; bounds are ordered."""
    ok = res.success & (res.distance > 0)
    if ok.any():
        assert np.all(model.predict(res.x_adv[ok]) != y[ok])
        d = distances(X[ok], res.x_adv[ok], norm)
        assert np.all(d <= res.distance[ok] * (1 + 1e-9) + 1e-12)
    assert res.lower_bound is not None
    assert np.all(res.lower_bound <= res.distance * (1 + 1e-9) + 1e-12)
    assert res.rejected == 0


CASES = [
    # (n_classes, strict, combine, integer_values)
    (2, True, "sum", False),
    (2, False, "sum", False),
    (2, True, "sum", True),  # integer leaves: exact ties at margin 0
    (3, True, "sum", False),
    (3, False, "mean", False),
    (3, False, "mean", True),
    (2, False, "mean", True),  # forest-like with two outputs and ties
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[0]}-{'lt' if c[1] else 'le'}-{c[2]}-{'int' if c[3] else 'real'}")
def test_milp_equals_brute_force(case):
    n_classes, strict, combine, integer_values = case
    rng = np.random.default_rng(7)
    checked = 0
    for seed in range(3):
        ens = random_ensemble(seed, n_classes=n_classes, strict=strict, combine=combine, integer_values=integer_values)
        model = EnsembleModel(ens)
        X = rng.uniform(-1, 1.2, size=(6, ens.n_features))
        X[0, 0] = 0.1  # on a float32-inexact threshold
        X[1, 1] = np.float32(0.3)  # exactly on a threshold
        y = model.predict(X)
        y[5] = (y[5] + 1) % n_classes  # one clean-misclassified point
        for norm in NORMS:
            res = KantchelianMILP(max_cuts=64, mip_rel_gap=1e-9).run(model, X, y, norm)
            check_result(model, X, y, res, norm)
            assert res.distance[5] == 0 and res.success[5]
            for i in range(5):
                bf = brute_force(ens, X[i], y[i], norm)
                assert res.distance[i] == pytest.approx(bf, rel=1e-12, abs=1e-15), (seed, norm, i)
                assert res.lower_bound[i] == pytest.approx(bf, rel=1e-6, abs=1e-9)
                checked += 1
    assert checked == 45


needs_veritas = pytest.mark.skipif(not VeritasLinf.available(), reason="dtai-veritas is not installed (pip install dtai-veritas)")


@needs_veritas
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"k{c[0]}-{'lt' if c[1] else 'le'}-{c[2]}-{'int' if c[3] else 'real'}")
def test_veritas_equals_brute_force(case):
    n_classes, strict, combine, integer_values = case
    rng = np.random.default_rng(11)
    for seed in range(3):
        ens = random_ensemble(100 + seed, n_classes=n_classes, strict=strict, combine=combine, integer_values=integer_values, extra_features=seed)
        model = EnsembleModel(ens)
        X = rng.uniform(-1, 1.2, size=(5, ens.n_features))
        X[0, 1] = 0.1
        y = model.predict(X)
        res = VeritasLinf(time_limit=20).run(model, X, y, "linf")
        check_result(model, X, y, res, "linf")
        for i in range(5):
            bf = brute_force(ens, X[i], y[i], "linf")
            assert res.distance[i] == pytest.approx(bf, rel=1e-12, abs=1e-15), (seed, i)
            assert res.lower_bound[i] == pytest.approx(bf, rel=1e-12, abs=1e-15)
        assert res.flags["milp_fallback"] == 0


class RawAtLeastZeroModel(EnsembleModel):
    """Class 1 iff raw >= 0 (scikit-learn GBDT's tie rule), unlike the ensemble's raw > 0."""

    def predict(self, X):
        return (self.ens.raw(self._check_X(X))[:, 0] >= 0).astype(np.int64)


def test_guard_retry_when_model_breaks_ties_differently():
    """Integer leaves put optima exactly on raw == 0, which this model does not count as a flip of class 1.

    Points of class 1 need raw < 0 for this model: the first solve lands on a tie the model rejects,
    which is resolved (cut off or retried with a guard) until the model's true minimum is found.
    Points of class 0 flip already at raw == 0 for this model (not only at raw > 0, the ensemble's
    rule): the certification band finds those ties, so the distance is the model's true minimum
    and the certificate never exceeds it.
    """
    retries = 0
    for seed in range(4):
        ens = random_ensemble(seed, integer_values=True)
        model = RawAtLeastZeroModel(ens)
        X = np.random.default_rng(seed).uniform(-1, 1.2, size=(6, 3))
        y = model.predict(X)
        attacks = [(KantchelianMILP(max_cuts=64, mip_rel_gap=1e-9), norm) for norm in NORMS]
        if VeritasLinf.available():
            attacks.append((VeritasLinf(), "linf"))
        for attack, norm in attacks:
            res = attack.run(model, X, y, norm)
            check_result(model, X, y, res, norm)
            retries += res.flags["guard_retries"]
            for i in range(6):
                expect = brute_force(ens, X[i], y[i], norm, lambda p, m=model, c=y[i]: m.predict(p[None])[0] != c)
                assert res.distance[i] == pytest.approx(expect, rel=1e-12, abs=1e-15)
                assert res.lower_bound[i] <= expect * (1 + 1e-12)
    assert retries > 0


def stump(thr, strict):
    """One split on feature 0: left leaf -1, right leaf +1 (binary margin)."""
    tree = Tree(
        feature=np.array([0, -1, -1]), threshold=np.array([thr, 0, 0], dtype=np.float32),
        left=np.array([1, -1, -1]), right=np.array([2, -1, -1]), value=np.array([[0.0], [-1.0], [1.0]]),
    )
    return TreeEnsemble(trees=(tree,), n_features=2, n_classes=2, n_outputs=1, strict=strict, bias=np.zeros(1), link="logistic")


@pytest.mark.parametrize("strict", [True, False], ids=["lt", "le"])
def test_float32_decoding_at_a_threshold(strict):
    """Crossing a threshold one float32 step away: the exact float64 distances of the `<` and `<=` rules.

    The closest float64 input on the other side is the rounding edge (halfway to the next float32,
    ties to even), found here by bisection on float32(v).
    """
    t = np.float32(0.3)
    down, up = np.nextafter(t, -F32_INF), np.nextafter(t, F32_INF)
    ens = stump(t, strict)
    model = EnsembleModel(ens)
    # x exactly on the threshold, x = 0.1 in float64 (float32(0.1) > 0.1), and x inside an interval
    X = np.array([[float(t), 0.0], [0.1, 0.0], [0.5, 0.0]])
    t01 = np.float32(0.1)
    ens01 = stump(t01, strict)
    for e, x, expect in [
        (ens, X[0], float(t) - rounding_edge_down(down) if strict else rounding_edge_up(up) - float(t)),  # x=t: right for "<", left for "<="
        (ens01, X[1], 0.1 - rounding_edge_down(np.nextafter(t01, -F32_INF)) if strict else rounding_edge_up(np.nextafter(t01, F32_INF)) - 0.1),
        (ens, X[2], 0.5 - (rounding_edge_down(t) if not strict else rounding_edge_down(down))),  # from the right
    ]:
        assert expect > 0
        m = EnsembleModel(e)
        y = m.predict(x[None])
        attacks = [KantchelianMILP()] + ([VeritasLinf()] if VeritasLinf.available() else [])
        for attack in attacks:
            for norm in (("linf",) if attack.name == "veritas" else NORMS):
                res = attack.run(m, x[None], y, norm)
                assert res.success[0] and m.predict(res.x_adv)[0] != y[0]
                assert res.distance[0] == expect and res.lower_bound[0] == expect
    assert model.predict(X[:1])[0] == (1 if strict else 0)


def test_deeper_ensemble_milp_vs_brute_force_subset():
    """Depth-3 trees on 2 features: more shared thresholds, still enumerable."""
    ens = random_ensemble(5, n_trees=3, depth=3, n_features=2, n_classes=2, strict=False)
    model = EnsembleModel(ens)
    X = np.random.default_rng(3).uniform(-1, 1, size=(6, 2))
    y = model.predict(X)
    for norm in NORMS:
        res = KantchelianMILP().run(model, X, y, norm)
        check_result(model, X, y, res, norm)
        assert np.all(res.is_exact())
        for i in range(6):
            assert res.distance[i] == pytest.approx(brute_force(ens, X[i], y[i], norm), rel=1e-6, abs=1e-9)


def test_bad_arguments():
    with pytest.raises(AttackError, match="time_limit"):
        KantchelianMILP(time_limit=0)
    with pytest.raises(AttackError, match="mip_rel_gap"):
        KantchelianMILP(mip_rel_gap=2)
    with pytest.raises(AttackError, match="query_steps"):
        VeritasLinf(query_steps=-1)
    with pytest.raises(AttackError, match="node_limit"):
        KantchelianMILP(node_limit=0)
    with pytest.raises(AttackError, match="max_cuts"):
        VeritasLinf(max_cuts=1.5)
    with pytest.raises(ConfigError, match="node_limit"):  # a bad work budget is also a configuration error
        VeritasLinf(node_limit=-1)
    model = EnsembleModel(random_ensemble(0))
    X = np.zeros((1, 3))
    with pytest.raises(AttackError, match="norm"):
        VeritasLinf().run(model, X, model.predict(X), "l2")
    with pytest.raises(AttackError, match="features"):
        KantchelianMILP().run(model, np.zeros((1, 4)), np.zeros(1, dtype=int), "linf")


# ----------------------------------------------------------------------------------------
# Real XGBoost / scikit-learn models through the tree model module
# ----------------------------------------------------------------------------------------
def tabular(n=500, d=8, classes=2, seed=0):
    from sklearn.datasets import make_classification

    X, y = make_classification(n, d, n_informative=min(d, 5), n_redundant=0, n_classes=classes, n_clusters_per_class=1, random_state=seed)
    X = (X - X.mean(0)) / X.std(0)
    return X, y


def library_flips(est, X, y, res):
    """The fitted library object's own predict disagrees with y at every reported adversarial."""
    ok = res.success & (res.distance > 0)
    lib = np.asarray(est.estimator_.predict(res.x_adv[ok].astype(np.float64))).astype(int)
    assert np.all(lib != y[ok])
    return int(ok.sum())


def test_real_xgboost_tiny_equals_brute_force():
    X, y = tabular(300, 2)
    est = trees_mod.XGBoostModel(n_estimators=3, max_depth=2).fit(X, y)
    ens = est.tree_ensemble()
    Xt = X[:8]
    yt = est.predict(Xt)  # attack the model's own decisions
    for norm in NORMS:
        res = KantchelianMILP(mip_rel_gap=1e-9).run(est, Xt, yt, norm)
        check_result(est, Xt, yt, res, norm)
        assert library_flips(est, Xt, yt, res) == 8
        for i in range(8):
            assert res.distance[i] == pytest.approx(brute_force(ens, Xt[i], yt[i], norm), rel=1e-9, abs=1e-12)


@needs_veritas
def test_xgboost_20_trees_milp_equals_veritas():
    X, y = tabular(600, 8)
    est = trees_mod.XGBoostModel(n_estimators=20, max_depth=4).fit(X, y)
    Xt, yt = X[:12], y[:12]
    milp_res = KantchelianMILP().run(est, Xt, yt, "linf")
    ver = VeritasLinf().run(est, Xt, yt, "linf")
    for res in (milp_res, ver):
        check_result(est, Xt, yt, res, "linf")
        library_flips(est, Xt, yt, res)
        assert np.all(res.is_exact())
    np.testing.assert_allclose(ver.distance, milp_res.distance, rtol=0, atol=1e-5)
    assert ver.flags["milp_fallback"] == 0
    for norm in ("l1", "l2"):
        res = KantchelianMILP().run(est, Xt, yt, norm)
        check_result(est, Xt, yt, res, norm)
        library_flips(est, Xt, yt, res)
        assert np.all(res.is_exact())
        # linf <= l2 <= l1 for the same point, hence for the minima
        assert np.all(milp_res.distance <= res.distance * (1 + 1e-9))


def test_multiclass_random_forest_and_gbdt():
    X, y = tabular(450, 5, classes=3, seed=1)
    rf = trees_mod.RandomForestModel(n_estimators=8, max_depth=4).fit(X, y)
    gb = trees_mod.GradientBoostingModel(n_estimators=10, max_depth=2).fit(X, y)
    Xt, yt = X[:8], y[:8]
    for est in (rf, gb):
        ens = est.tree_ensemble()
        assert ens.n_outputs == 3
        for norm in NORMS:
            res = KantchelianMILP().run(est, Xt, yt, norm)
            check_result(est, Xt, yt, res, norm)
            library_flips(est, Xt, yt, res)
            assert np.all(res.is_exact())
            assert np.all(res.distance[est.predict(Xt) != yt] == 0)
        if VeritasLinf.available():
            lin = KantchelianMILP().run(est, Xt, yt, "linf")
            ver = VeritasLinf().run(est, Xt, yt, "linf")
            check_result(est, Xt, yt, ver, "linf")
            library_flips(est, Xt, yt, ver)
            np.testing.assert_allclose(ver.distance, lin.distance, rtol=0, atol=1e-9)


def test_binary_forest_and_gbdt_l2():
    X, y = tabular(400, 6, seed=2)
    Xt, yt = X[:6], y[:6]
    for est in (trees_mod.RandomForestModel(n_estimators=10, max_depth=4).fit(X, y),
                trees_mod.GradientBoostingModel(n_estimators=15, max_depth=3).fit(X, y)):
        res = KantchelianMILP().run(est, Xt, yt, "l2")
        check_result(est, Xt, yt, res, "l2")
        library_flips(est, Xt, yt, res)
        assert np.all(res.is_exact())


def test_work_budgets_give_sound_deterministic_bounds():
    """Tiny work budgets on a 100x6 model: not enough to certify, but the bounds stay sound, finite and repeatable."""
    X, y = tabular(3000, 20, seed=3)
    est = trees_mod.XGBoostModel(n_estimators=100, max_depth=6).fit(X, y)
    Xt, yt = X[:3], est.predict(X[:3])
    # the MILP under l2: its restricted linf program is certified at the root node, so one node is not too few there
    attacks = [(lambda: KantchelianMILP(node_limit=1, max_cuts=0), "l2")]
    if VeritasLinf.available():
        attacks.append((lambda: VeritasLinf(query_steps=1, max_cuts=0, node_limit=1), "linf"))
    for make, norm in attacks:
        res = make().run(est, Xt, yt, norm)
        again = make().run(est, Xt, yt, norm)
        check_result(est, Xt, yt, res, norm)
        library_flips(est, Xt, yt, res)
        assert np.all(np.isfinite(res.lower_bound)) and np.all(res.lower_bound > 0)
        assert np.all(res.lower_bound <= res.distance)
        assert res.flags["budget_exhausted"] >= 1 and res.flags["time_limit_hit"] == 0
        np.testing.assert_array_equal(res.distance, again.distance)
        np.testing.assert_array_equal(res.lower_bound, again.lower_bound)


def test_safety_net_time_limit_is_flagged_and_sound():
    """A wall-clock limit far below what the budgets need stops the search, says so, and keeps bounds sound."""
    X, y = tabular(3000, 20, seed=3)
    est = trees_mod.XGBoostModel(n_estimators=100, max_depth=6).fit(X, y)
    Xt, yt = X[:3], est.predict(X[:3])
    res = KantchelianMILP(time_limit=1e-4).run(est, Xt, yt, "l2")
    check_result(est, Xt, yt, res, "l2")
    assert res.flags["time_limit_hit"] >= 1
    assert np.all(res.lower_bound <= res.distance)


@pytest.mark.slow
@needs_veritas
@pytest.mark.parametrize("depth", [4, 6])
def test_xgboost_100_trees_milp_equals_veritas(depth):
    X, y = tabular(3000, 20, seed=4)
    est = trees_mod.XGBoostModel(n_estimators=100, max_depth=depth).fit(X, y)
    Xt, yt = X[:6], y[:6]
    lin = KantchelianMILP(time_limit=120).run(est, Xt, yt, "linf")
    ver = VeritasLinf(time_limit=120).run(est, Xt, yt, "linf")
    for res in (lin, ver):
        check_result(est, Xt, yt, res, "linf")
        library_flips(est, Xt, yt, res)
    both = lin.is_exact() & ver.is_exact()
    assert both.sum() >= 4
    np.testing.assert_allclose(ver.distance[both], lin.distance[both], rtol=0, atol=1e-5)
