"""Certificates of the exact tree attacks on ensembles built to tie, against brute force with the library's own predict.

Integer features, pure leaves, even tree counts, no bootstrap and duplicated trees put many inputs
exactly on a tie of the library's aggregate (probabilities [0.5, 0.5], equal boosting margins),
where a parsed margin summed in another order can be a few ulps off. The reference here knows
nothing of the parse's margins: per feature it tries the point's own value and every threshold with
its float32 and float64 neighbours (a superset of the closest point of every interval), asks the
*library* model which combinations flip, and takes the smallest distance. Every certified lower
bound must be at or below it, and the exact attacks must reach it.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

import robustbench_align as rba
from conftest import rounding_edge_down, rounding_edge_up
from robustbench_align.attacks.base import distances
from robustbench_align.attacks.trees import KantchelianMILP, VeritasLinf
from robustbench_align.models.base import Tree, TreeEnsemble
from test_trees_exact import EnsembleModel, random_ensemble
from test_trees_exact import brute_force as exhaustive

RTOL = 1e-9


def integer_data(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Small-integer features with noisy labels: many exact ties in leaf statistics."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 4, size=(n, d)).astype(np.float64)
    y = (X.sum(axis=1) + rng.integers(0, 2, n)) % k
    return X, y.astype(np.int64)


def candidates(model: rba.Model, x: np.ndarray) -> list[np.ndarray]:
    """Per feature: x_f and every split threshold with its float32/float64 neighbours (as float64), and
    the float64 rounding edges of the float32 ones (the closest float64 inputs that round onto them)."""
    ens = model.tree_ensemble()  # type: ignore[attr-defined]
    out = []
    for f in range(x.size):
        thr = np.concatenate([t.threshold[(t.left >= 0) & (t.feature == f)] for t in ens.trees]).astype(np.float64)
        vals = [np.array([x[f]])]
        for dt in (np.float64, np.float32):
            t = thr.astype(dt)
            vals += [t, np.nextafter(t, dt(np.inf)), np.nextafter(t, dt(-np.inf))]
        vals += [np.array([e(v) for v in np.concatenate(vals[-3:]) for e in (rounding_edge_up, rounding_edge_down)])]
        out.append(np.unique(np.concatenate([v.astype(np.float64) for v in vals])))
    return out


def brute_force(model: rba.Model, x: np.ndarray, y: int, norm: str) -> float:
    """The smallest distance from x to a candidate point the model's own predict moves off y."""
    grid = np.array(list(itertools.product(*candidates(model, x))))
    flips = model.predict(grid) != y
    if not flips.any():
        return np.inf
    return float(distances(np.broadcast_to(x, grid[flips].shape), grid[flips], norm).min())


def tie_models() -> list[tuple[str, object, np.ndarray, np.ndarray]]:
    """(label, fitted library model, test X, labels = the model's predictions) for the tie-heavy cases."""
    from sklearn.ensemble import ExtraTreesClassifier, GradientBoostingClassifier, RandomForestClassifier

    cases: list[tuple[str, object, np.ndarray, np.ndarray]] = []
    for k in (2, 3):
        X, y = integer_data(120, 3, k, seed=k)
        Xt = integer_data(8, 3, k, seed=10 + k)[0] + 0.25
        fitted = [
            (f"rf-even-k{k}", RandomForestClassifier(n_estimators=4, max_depth=3, bootstrap=False, max_features=1, random_state=0)),
            (f"rf-duplicated-k{k}", RandomForestClassifier(n_estimators=6, max_depth=3, bootstrap=False, max_features=None, random_state=0)),
            (f"extratrees-k{k}", ExtraTreesClassifier(n_estimators=4, max_depth=3, random_state=0)),
            (f"gbdt-k{k}", GradientBoostingClassifier(n_estimators=4, max_depth=2, learning_rate=0.5, random_state=0)),
        ]
        try:
            import xgboost as xgb

            fitted.append((f"xgboost-k{k}", xgb.XGBClassifier(n_estimators=4, max_depth=2, learning_rate=0.5, base_score=0.5 if k == 2 else None,
                                                              n_jobs=1, random_state=0)))
        except ImportError:
            pass
        try:
            import lightgbm as lgb

            fitted.append((f"lightgbm-k{k}", lgb.LGBMClassifier(n_estimators=4, num_leaves=4, min_child_samples=2, verbose=-1, n_jobs=1)))
        except ImportError:
            pass
        from sklearn.ensemble import HistGradientBoostingClassifier

        fitted.append((f"histgb-k{k}", HistGradientBoostingClassifier(max_iter=4, max_depth=2, learning_rate=0.5, early_stopping=False)))
        for label, est in fitted:
            est.fit(X, y)  # type: ignore[attr-defined]
            yt = np.asarray(est.predict(Xt), dtype=np.int64)  # type: ignore[attr-defined]
            cases.append((label, est, Xt, yt))
    return cases


CASES = tie_models()


@pytest.mark.parametrize("label,est,X,y", CASES, ids=[c[0] for c in CASES])
def test_certificates_never_exceed_brute_force_on_tie_heavy_ensembles(label, est, X, y):
    model = rba.wrap(est)
    assert model.has("tree_ensemble"), label
    runs = [("linf", KantchelianMILP(max_cuts=64)), ("l2", KantchelianMILP(max_cuts=64))]
    if VeritasLinf.available() and VeritasLinf.refuses(model) is None:
        runs.append(("linf", VeritasLinf()))
    for norm, attack in runs:
        res = rba.minimal_radius(model, X, y, norm=norm, attacks=[attack])
        assert "unsound_certificate" not in res.flags, (label, norm, res.flags)
        for i in range(X.shape[0]):
            bf = brute_force(model, X[i], int(y[i]), norm)
            assert res.lower_bound[i] <= bf * (1 + RTOL) + 1e-12, (label, norm, attack.name, i, res.lower_bound[i], bf)
            assert res.distance[i] == pytest.approx(bf, rel=1e-7, abs=1e-12), (label, norm, attack.name, i)


def test_binary_forest_tie_points_found_and_certified_below_them():
    """The reported case: a 50-tree depth-8 forest on standardised breast_cancer, points of class 1.

    At the tie points the forest says [0.5, 0.5] and scikit-learn gives the tie to class 0; the
    certified radius of Veritas and of the MILP must never exceed a point that flips the model.
    """
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.preprocessing import StandardScaler

    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    rf = RandomForestClassifier(n_estimators=50, max_depth=8, random_state=0).fit(X[:400], y[:400])
    model = rba.wrap(rf)
    Xt, yt = X[400:], y[400:]
    ok = (model.predict(Xt) == yt) & (yt == 1)
    Xs, ys = Xt[ok][:8], yt[ok][:8]
    milp = rba.minimal_radius(model, Xs, ys, norm="linf", attacks=["milp"])
    runs = [milp]
    if VeritasLinf.available():
        runs.append(rba.minimal_radius(model, Xs, ys, norm="linf", attacks=["veritas"]))
    best = np.min([r.distance for r in runs], axis=0)
    for r in runs:
        assert "unsound_certificate" not in r.flags
        assert np.all(r.lower_bound <= best * (1 + RTOL)), (r.lower_bound, best)
        np.testing.assert_allclose(r.distance, best, rtol=1e-9)  # both exact
    # some of these optima are exact ties of the forest: the library breaks them, not the parse
    proba = rf.predict_proba(milp.x_adv[milp.success])
    assert np.any(proba[:, 0] == proba[:, 1])


def test_invariant_drops_a_wrong_certificate():
    """An attack that claims a lower bound above a verified adversarial: the ensemble drops it and flags it."""
    from sklearn.ensemble import RandomForestClassifier

    from robustbench_align.attacks.base import Candidates, MinimalAttack

    class Overclaiming(MinimalAttack):
        name = "overclaiming"
        requires = frozenset()
        norms = ("linf", "l2", "l1")

        def _attack(self, model, X, y, norm):
            return Candidates(x_adv=X.copy(), lower_bound=np.full(X.shape[0], 10.0))

    X, y = integer_data(80, 3, 2, seed=0)
    model = rba.wrap(RandomForestClassifier(n_estimators=4, max_depth=3, random_state=0).fit(X, y))
    Xt = X[:6] + 0.25
    yt = model.predict(Xt)
    ens = rba.attacks.ensemble.EnsembleAttack([Overclaiming(), KantchelianMILP()], skip_certified=False)
    res = ens.run(model, Xt, yt, "linf")
    assert "unsound_certificate" in res.flags
    broken = np.isfinite(res.distance) & (res.distance < 10.0)
    assert broken.any()
    assert np.all(res.lower_bound[broken] == 0.0)


class Float32ReversedLibrary(EnsembleModel):
    """A 'library' that sums the trees in reverse order in float32 (like a float32 runtime), ties as the contract says."""

    def predict(self, X):
        X = self._check_X(X)
        X32 = X.astype(np.float32)
        acc = np.zeros((X.shape[0], self.ens.n_outputs), dtype=np.float32)
        for t in reversed(self.ens.trees):
            acc += t.value[t.leaf_index(X32, self.ens.strict)].astype(np.float32)
        if self.ens.combine == "mean":
            acc /= np.float32(len(self.ens.trees))
        acc += np.asarray(self.ens.bias, dtype=np.float32)
        if self.ens.n_outputs == 1:
            return (acc[:, 0] > 0).astype(np.int64)
        return np.argmax(acc, axis=1).astype(np.int64)


def cancelling_ensemble(seed: int, n_classes: int) -> TreeEnsemble:
    """Random trees whose leaf values (0.1, 0.2, 0.3, 0.7 and negatives) cancel in many combinations.

    In exact arithmetic such sums land within 1e-16 of 0; summed in float32 in another order they
    land anywhere within ~1e-7 of it, on either side: the decision of the 'library' and of a
    float64 parse disagree on many inputs.
    """
    ens = random_ensemble(seed, n_trees=6, depth=2, n_features=2, n_classes=n_classes, strict=seed % 2 == 0)
    rng = np.random.default_rng(100 + seed)
    vals = np.array([0.1, 0.2, 0.3, 0.7, -0.1, -0.2, -0.3, -0.7])
    trees = []
    for t in ens.trees:
        v = np.where(t.is_leaf[:, None], rng.choice(vals, size=t.value.shape), 0.0)
        trees.append(Tree(feature=t.feature, threshold=t.threshold, left=t.left, right=t.right, value=v))
    return TreeEnsemble(trees=tuple(trees), n_features=ens.n_features, n_classes=ens.n_classes, n_outputs=ens.n_outputs,
                        strict=ens.strict, bias=np.zeros(ens.n_outputs), combine="sum", link=ens.link).validate()


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n_classes", [2, 3])
def test_certificates_hold_for_a_library_that_sums_in_another_order_and_type(seed, n_classes):
    ens = cancelling_ensemble(seed, n_classes)
    model = Float32ReversedLibrary(ens)
    X = np.random.default_rng(seed).uniform(-1, 1, size=(4, ens.n_features))
    y = model.predict(X)
    runs = [("linf", KantchelianMILP(max_cuts=64)), ("l2", KantchelianMILP(max_cuts=64)), ("l1", KantchelianMILP(max_cuts=64))]
    if VeritasLinf.available():
        runs.append(("linf", VeritasLinf()))
    for norm, attack in runs:
        res = rba.minimal_radius(model, X, y, norm=norm, attacks=[attack])
        assert "unsound_certificate" not in res.flags
        for i in range(X.shape[0]):
            bf = exhaustive(ens, X[i], int(y[i]), norm, lambda p, c=int(y[i]): model.predict(p[None])[0] != c)
            assert res.lower_bound[i] <= bf * (1 + RTOL) + 1e-12, (seed, norm, attack.name, i, res.lower_bound[i], bf)
            assert res.distance[i] == pytest.approx(bf, rel=1e-7, abs=1e-12), (seed, norm, attack.name, i)
