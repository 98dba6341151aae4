"""The fast path of the Veritas linf attack gives the careful path's radii and bounds, and never claims more.

The fast path accepts combinations whose margin clears the certification band without a predict,
decides pure-leaf combinations of scikit-learn forests exactly (`_ExactVotes`), shifts exact ties out
of the search for classes a tie does not flip, and checks the points it keeps with one batched
predict at the end. The careful path (`careful=True`) predicts every combination and is the reference.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

from robustbench_align.attacks.trees import KantchelianMILP, VeritasLinf
from robustbench_align.attacks.trees import veritas as vmod
from robustbench_align.attacks.trees.flat import FlatEnsemble
from robustbench_align.attacks.trees.margins import ExactVotes
from robustbench_align.models import trees as trees_mod
from robustbench_align.models.base import Model
from test_trees_exact import EnsembleModel, brute_force, random_ensemble

pytestmark = pytest.mark.skipif(not VeritasLinf.available(), reason="dtai-veritas is not installed (pip install dtai-veritas)")


def tabular(n=300, d=5, classes=2, seed=0):
    from sklearn.datasets import make_classification

    X, y = make_classification(n, d, n_informative=min(d, 4), n_redundant=0, n_classes=classes, n_clusters_per_class=1, random_state=seed)
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float32).astype(np.float64)
    return X, y


def pure_forest(n_trees, classes=2, seed=0, d=4):
    """A fully grown scikit-learn forest (pure leaves, an even number of trees: many exact vote ties)."""
    X, y = tabular(n=240, d=d, classes=classes, seed=seed)
    return trees_mod.RandomForestModel(n_estimators=n_trees, max_depth=None, random_state=seed).fit(X, y), X, y


def same_results(a, b):
    np.testing.assert_array_equal(a.distance, b.distance)
    np.testing.assert_array_equal(a.lower_bound, b.lower_bound)


@pytest.fixture(scope="module")
def fitted():
    X, y = tabular()
    X3, y3 = tabular(classes=3, seed=1)
    out = [
        (trees_mod.XGBoostModel(n_estimators=15, max_depth=3).fit(X, y), X, y),
        (trees_mod.RandomForestModel(n_estimators=10, max_depth=4).fit(X, y), X, y),
        (trees_mod.RandomForestModel(n_estimators=6, max_depth=3).fit(X3, y3), X3, y3),
        pure_forest(6),
        pure_forest(4, classes=3, seed=2),
    ]
    from sklearn.ensemble import HistGradientBoostingClassifier

    import robustbench_align as rba

    out.append((rba.wrap(HistGradientBoostingClassifier(max_iter=10, max_leaf_nodes=6, random_state=0).fit(X, y)), X, y))
    return out


def test_fast_path_equals_careful_path(fitted):
    for model, X, y in fitted:
        Xt, yt = X[1::7][:25], y[1::7][:25]
        fast = VeritasLinf().run(model, Xt, yt, "linf")
        careful = VeritasLinf(careful=True).run(model, Xt, yt, "linf")
        same_results(fast, careful)
        assert np.all(fast.is_exact()), model.name
        assert np.all(model.predict(fast.x_adv[np.isfinite(fast.distance)]) != yt[np.isfinite(fast.distance)])


@pytest.mark.parametrize("seed", range(6))
def test_fast_path_equals_brute_force_on_random_ensembles(seed):
    ens = random_ensemble(seed, n_trees=4, depth=2, n_features=3, n_classes=2 + seed % 2, strict=bool(seed % 2),
                          combine="sum" if seed % 3 else "mean", integer_values=seed < 3)
    model = EnsembleModel(ens)
    X = np.random.default_rng(seed).normal(scale=0.6, size=(10, 3))
    y = model.predict(X)
    res = VeritasLinf().run(model, X, y, "linf")
    for i in range(len(X)):
        bf = brute_force(ens, X[i], y[i], "linf")
        assert res.distance[i] == pytest.approx(bf, rel=1e-12, abs=0)
        assert res.lower_bound[i] == pytest.approx(bf, rel=1e-12, abs=0)


def test_exact_votes_agree_with_scikit_learn_on_ties():
    """`_ExactVotes.decide` is scikit-learn's predict wherever it decides, ties included."""
    for n_trees, classes in ((4, 2), (6, 3), (2, 2)):
        model, X, _ = pure_forest(n_trees, classes=classes, seed=n_trees)
        ens = model.tree_ensemble()
        assert ExactVotes.applies(ens)
        votes = ExactVotes(ens, FlatEnsemble(ens))
        rng = np.random.default_rng(0)
        P = rng.normal(scale=1.5, size=(3000, X.shape[1]))
        pred = model.predict(P)
        proba = model.predict_proba(P)
        decided = ties = 0
        for p, lab, pr in zip(P, pred, proba, strict=True):
            d = votes.decide(p)
            assert d is not None  # pure leaves everywhere
            assert d == lab
            decided += 1
            ties += int(np.sum(pr == pr.max()) > 1)
        assert decided == len(P) and ties > 50  # the rule met many exact ties and matched every one


def test_exact_votes_do_not_apply_where_unproved():
    X, y = tabular()
    gb = trees_mod.GradientBoostingModel(n_estimators=5, max_depth=2).fit(X, y)
    xgb = trees_mod.XGBoostModel(n_estimators=5, max_depth=2).fit(X, y)
    assert not ExactVotes.applies(xgb.tree_ensemble())
    assert not ExactVotes.applies(gb.tree_ensemble())
    forest, _, _ = pure_forest(4)
    ens = forest.tree_ensemble()
    import dataclasses

    assert not ExactVotes.applies(dataclasses.replace(ens, source="onnx.TreeEnsembleClassifier"))
    assert not ExactVotes.applies(dataclasses.replace(ens, bias=np.full(ens.n_outputs, 0.5)))


def test_tie_forest_fast_path_skips_ties_and_equals_milp():
    """On a forest full of exact ties the fast path resolves no band combination and still equals the MILP."""
    model, X, y = pure_forest(6, seed=3)
    Xt, yt = X[::9][:20], y[::9][:20]
    fast = VeritasLinf().run(model, Xt, yt, "linf")
    careful = VeritasLinf(careful=True, max_cuts=4096, query_steps=200000).run(model, Xt, yt, "linf")
    milp = KantchelianMILP(mip_rel_gap=1e-9, node_limit=100000, max_cuts=4096).run(model, Xt, yt, "linf")
    ok = model.predict(Xt) == yt
    assert fast.flags["guard_retries"] == 0 and fast.flags["milp_fallback"] == 0
    assert careful.flags["guard_retries"] > 0  # the ties are there: the careful path resolved them one by one
    np.testing.assert_array_equal(fast.distance[ok], careful.distance[ok])
    np.testing.assert_allclose(fast.distance[ok], milp.distance[ok], rtol=1e-9, atol=0)
    assert np.all(fast.is_exact()[ok])


class _Liar(Model):
    """A model whose predict says class 1 where feature 0 is above a cut: its parsed ensemble disagrees there."""

    def __init__(self, inner, cut):
        self.inner, self.cut, self.name = inner, cut, "liar"

    @property
    def n_features(self):
        return self.inner.n_features

    @property
    def n_classes(self):
        return self.inner.n_classes

    def predict_proba(self, X):
        return self.inner.predict_proba(X)

    def predict(self, X):
        X = np.asarray(X, dtype=np.float64)
        p = self.inner.predict(X)
        return np.where(X[:, 0] > self.cut, 1, p)

    def tree_ensemble(self):
        return self.inner.tree_ensemble()


def test_points_the_model_does_not_flip_are_solved_again(caplog):
    X, y = tabular()
    inner = trees_mod.XGBoostModel(n_estimators=10, max_depth=3).fit(X, y)
    liar = _Liar(inner, cut=0.0)
    keep = (y == 1) & (inner.predict(X) == y)
    Xt, yt = X[keep][:15], y[keep][:15]
    with caplog.at_level(logging.WARNING):
        res = VeritasLinf().run(liar, Xt, yt, "linf")
    found = np.isfinite(res.distance)
    assert found.any()
    assert np.all(liar.predict(res.x_adv[found]) != yt[found])  # every kept point flips the model itself
    assert "solving them again" in caplog.text
    assert np.all(res.lower_bound <= res.distance * (1 + 1e-12))


def test_edge_lookup_decodes_like_closest():
    """`_Edges.closest` (dictionary lookups) equals `VeritasLinf._closest` on every box end of the grid."""
    import veritas

    from robustbench_align.attacks.trees.grid import Grid

    X, y = tabular()
    for model in (trees_mod.XGBoostModel(n_estimators=8, max_depth=3).fit(X, y), trees_mod.RandomForestModel(n_estimators=5, max_depth=3).fit(X, y)):
        ens = model.tree_ensemble()
        grid = Grid.of_trees(list(ens.trees), ens.strict, ens.dtype)
        edges = vmod._Edges(grid)
        rng = np.random.default_rng(1)
        for x in X[:10]:
            xd = x.astype(grid.dtype).astype(np.float64).tolist()
            for _ in range(20):
                box = {}
                for f, sp in zip(grid.features, grid.split, strict=True):
                    if rng.random() < 0.5:
                        a, b = sorted(rng.choice(sp.astype(np.float64), 2))
                        box[f] = veritas.Interval(float(a), float(b)) if a < b else veritas.Interval.from_lo(float(a))
                np.testing.assert_array_equal(edges.closest(x, xd, box), VeritasLinf._closest(x, box, grid.dtype))


@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
def test_shifted_certificates_equal_brute_force_on_a_tie_forest(norm):
    """The MILP (and Veritas for linf) certify forests with exact vote ties on the shifted margin: equal to brute force."""
    X, y = tabular(n=40, d=3, seed=5)
    model = trees_mod.RandomForestModel(n_estimators=4, max_depth=3, random_state=1).fit(X, y)
    ens = model.tree_ensemble()
    values = np.concatenate([t.value[t.is_leaf] for t in ens.trees])
    assert np.mean(np.all(values == np.round(values), axis=1)) > 0.5  # mostly pure leaves: ties
    P = np.random.default_rng(3).normal(scale=0.8, size=(10, 3))
    yp = model.predict(P)
    attacks = [KantchelianMILP(mip_rel_gap=1e-9)] + ([VeritasLinf()] if norm == "linf" else [])
    for att in attacks:
        res = att.run(model, P, yp, norm)
        for i in range(len(P)):
            bf = brute_force(ens, P[i], int(yp[i]), norm, flipped=lambda p, yi=int(yp[i]): model.predict(p[None])[0] != yi)
            assert res.distance[i] == pytest.approx(bf, rel=1e-7, abs=0), (att.name, i)
            assert res.lower_bound[i] <= bf * (1 + 1e-9)
            if att.name == "veritas" or norm != "linf":  # the exact path of each norm certifies, not just bounds
                assert res.lower_bound[i] >= bf * (1 - 1e-6), (att.name, i)


def test_milp_certification_skips_ties_despite_solver_tolerance():
    """The MILP's shifted margin keeps exact ties out although HiGHS accepts rows violated by 1e-9: no tie is found and cut."""
    model, X, y = pure_forest(6, seed=3)
    Xt, yt = X[::9][:15], y[::9][:15]
    res = KantchelianMILP().run(model, Xt, yt, "l2")
    ok = model.predict(Xt) == yt
    assert res.flags["guard_retries"] == 0
    assert np.all(res.is_exact()[ok])
