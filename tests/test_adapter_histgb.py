"""HistGradientBoostingClassifier and AdaBoostClassifier reach the exact tree path (or say why not).

Fidelity of the parse against the library (probabilities, decisions at every threshold and one ulp
either side), exact minimal radii against brute-force enumeration of the threshold grid, the
black-box/exact ratio, and the black-box fallback with `path_note` for models the parse refuses.
"""
from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np
import pytest
from sklearn.ensemble import AdaBoostClassifier, HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.tree import DecisionTreeClassifier
from threadpoolctl import threadpool_limits

import robustbench_align as rba
from conftest import rounding_edge_down, rounding_edge_up
from robustbench_align.models.base import TreeEnsemble

log = logging.getLogger(__name__)


def _data(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    s = X[:, 0] + np.sin(2 * X[:, 1]) + 0.5 * X[:, 2] * X[:, min(3, d - 1)]
    y = (s > 0).astype(np.int64) if k == 2 else np.digitize(s, np.quantile(s, np.linspace(0, 1, k + 1)[1:-1])).astype(np.int64)
    return X, y


def _splits(ens: TreeEnsemble) -> list[tuple[int, float]]:
    """The distinct (feature, threshold) pairs of the ensemble."""
    out: set[tuple[int, float]] = set()
    for t in ens.trees:
        inner = t.left >= 0
        out.update((int(f), float(v)) for f, v in zip(t.feature[inner], t.threshold[inner], strict=True))
    return sorted(out)


def _boundary_rows(ens: TreeEnsemble, base: np.ndarray) -> np.ndarray:
    """Rows of `base` with one coordinate at each threshold and one ulp (of the comparison dtype) either side."""
    dt = ens.dtype
    rows = []
    for f, v in _splits(ens):
        for value in (dt(v), np.nextafter(dt(v), dt(-np.inf)), np.nextafter(dt(v), dt(np.inf))):
            r = base.copy()
            r[:, f] = float(value)
            rows.append(r)
    return np.vstack(rows)


def _check_fidelity(est: Any, X: np.ndarray, rtol_proba: float = 1e-6) -> tuple[float, int]:
    """Parsed ensemble vs the library: probabilities on random points, decisions on boundary rows; returns (max |Δp|, boundary rows)."""
    m = rba.wrap(est)
    assert m.has("tree_ensemble") and m.path_note is None
    ens = m.tree_ensemble()
    rng = np.random.default_rng(5)
    Z = np.vstack([X, rng.normal(size=(500, X.shape[1])) * 2.0])
    dp = float(np.abs(ens.predict_proba(Z) - est.predict_proba(Z)).max())
    assert dp <= rtol_proba
    assert np.array_equal(ens.predict(Z), m.predict(Z))
    B = _boundary_rows(ens, X[:4])
    assert np.array_equal(ens.predict(B), m.predict(B)), "decisions differ at a threshold or one ulp beside it"
    assert np.array_equal(est.classes_[ens.predict(B)], est.predict(B))
    assert float(np.abs(ens.predict_proba(B) - est.predict_proba(B)).max()) <= rtol_proba
    return dp, B.shape[0]


def _brute_force_linf(est: Any, ens: TreeEnsemble, x: np.ndarray, y: int) -> float:
    """Minimal linf distance to a point the library's predict labels != y, over every combination of grid points."""
    dt = ens.dtype
    per: dict[int, set[float]] = {}
    for f, v in _splits(ens):
        per.setdefault(f, set()).add(v)
    cands = []
    for f in range(x.size):
        ts = sorted(per.get(f, set()))
        c = {float(x[f])} | {float(dt(v)) for v in ts} | {float(np.nextafter(dt(v), dt(np.inf))) for v in ts}
        if dt is np.float32:  # float64 inputs rounding onto the float32 grid points (the closest ones)
            c |= {rounding_edge_down(dt(v)) for v in ts} | {rounding_edge_up(np.nextafter(dt(v), dt(np.inf))) for v in ts}
        cands.append(sorted(c))
    pts = np.array(list(itertools.product(*cands)), dtype=np.float64)
    flip = est.predict(pts) != est.classes_[y]
    d = np.abs(pts - x).max(axis=1)
    return float(d[flip].min()) if flip.any() else float("inf")


# ---------------------------------------------------------------------------------------------
# HistGradientBoostingClassifier
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 3])
def test_histgb_fidelity(k: int) -> None:
    X, y = _data(300, 5, k, seed=k)
    est = HistGradientBoostingClassifier(max_iter=30, max_depth=3, random_state=0).fit(X, y)
    ens = rba.wrap(est).tree_ensemble()
    assert ens.threshold_dtype == "float64" and not ens.strict and ens.n_outputs == (1 if k == 2 else k)
    assert len(ens.trees) == est.n_iter_ * ens.n_outputs
    # the thresholds are genuinely float64 (bin midpoints): a float32 parse would misplace them
    assert any(float(np.float32(v)) != v for _, v in _splits(ens))
    # raw sums are the library's own additions in its order (baseline folded into the first iteration)
    Z = np.random.default_rng(0).normal(size=(400, 5))
    assert np.array_equal(ens.raw(Z), est.decision_function(Z).reshape(len(Z), -1))
    dp, n_rows = _check_fidelity(est, X)
    assert dp <= 1e-12 and n_rows > 100


def test_histgb_inf_threshold_split_is_collapsed() -> None:
    """A 'missing vs. the rest' split (num_threshold = +inf) sends every finite value left: parsed as its left subtree."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(300, 3))
    y = (X[:, 1] > 0).astype(np.int64)
    X[y == 1, 0] = np.nan
    est = HistGradientBoostingClassifier(max_iter=5, max_depth=2, random_state=0).fit(X, y)
    n_inf = sum(int(np.isinf(p.nodes["num_threshold"][~p.nodes["is_leaf"].astype(bool)]).sum()) for it in est._predictors for p in it)
    assert n_inf > 0
    ens = rba.wrap(est).tree_ensemble()
    Z = rng.normal(size=(500, 3))
    assert np.array_equal(ens.predict(Z), (est.predict(Z)).astype(np.int64))
    assert float(np.abs(ens.predict_proba(Z) - est.predict_proba(Z)).max()) <= 1e-12


def test_histgb_minimal_radius_equals_brute_force() -> None:
    X, y = _data(200, 3, 2, seed=1)
    est = HistGradientBoostingClassifier(max_iter=3, max_depth=2, learning_rate=1.0, random_state=0).fit(X, y)
    m = rba.wrap(est)
    ens = m.tree_ensemble()
    ok = est.predict(X) == y
    Xt, yt = X[ok][:8], y[ok][:8]
    res = rba.minimal_radius(m, Xt, yt, "linf")
    assert res.path == "exact"
    bf = np.array([_brute_force_linf(est, ens, x, int(c)) for x, c in zip(Xt, yt, strict=True)])
    assert np.all(np.isfinite(bf))
    np.testing.assert_allclose(res.distance, bf, rtol=0, atol=1e-12)
    assert np.all(est.predict(res.x_adv) != yt), "every adversarial must flip sklearn's own predict"
    np.testing.assert_allclose(np.abs(res.x_adv - Xt).max(axis=1), res.distance, rtol=0, atol=1e-12)


def _black_box_vs_exact(n_iter: int, depth: int, d: int, n_points: int) -> np.ndarray:
    X, y = _data(400, d, 2, seed=2)
    est = HistGradientBoostingClassifier(max_iter=n_iter, max_depth=depth, random_state=0).fit(X, y)
    m = rba.wrap(est)
    ok = est.predict(X) == y
    Xt, yt = X[ok][:n_points], y[ok][:n_points]
    with threadpool_limits(1):
        ex = rba.minimal_radius(m, Xt, yt, "linf", attacks=["milp"])
        bb = rba.minimal_radius(m, Xt, yt, "linf", attacks=["hsj"])
    assert ex.path == "exact" and bb.path == "black-box"
    assert np.all(ex.success) and np.all(np.isfinite(ex.lower_bound))
    np.testing.assert_allclose(ex.lower_bound, ex.distance, rtol=1e-9, atol=1e-12)  # certified minimal
    both = np.asarray(bb.success, dtype=bool)
    assert both.any()
    # nothing the black box finds can be closer than the exact minimum
    assert np.all(bb.distance[both] >= ex.distance[both] * (1 - 1e-9))
    ratio: np.ndarray = bb.distance[both] / ex.distance[both]
    return ratio


def test_histgb_black_box_radius_is_an_upper_bound_of_the_exact_one() -> None:
    ratio = _black_box_vs_exact(n_iter=20, depth=3, d=4, n_points=4)
    assert np.all(ratio >= 1 - 1e-9)


@pytest.mark.slow
def test_histgb_black_box_vs_exact_ratio_bigger_model() -> None:
    ratio = _black_box_vs_exact(n_iter=40, depth=4, d=8, n_points=8)
    log.info("hsj/exact linf radius: median %.6g, mean %.6g, max %.6g", np.median(ratio), ratio.mean(), ratio.max())
    assert np.all(ratio >= 1 - 1e-9)


def test_histgb_categorical_falls_back_to_black_box_with_path_note() -> None:
    rng = np.random.default_rng(3)
    n = 300
    cat = rng.integers(0, 4, size=n).astype(np.float64)
    num = rng.normal(size=(n, 2))
    X = np.column_stack([num[:, 0], cat, num[:, 1]])
    y = ((cat >= 2) ^ (num[:, 0] > 0)).astype(np.int64)
    est = HistGradientBoostingClassifier(max_iter=10, max_depth=3, categorical_features=[1], random_state=0).fit(X, y)
    m = rba.wrap(est)
    assert not m.has("tree_ensemble")
    assert m.path_note is not None and m.path_note.startswith("exact path refused: categorical")
    assert np.array_equal(m.predict(X[:20]), est.predict(X[:20]))
    ok = est.predict(X) == y
    with threadpool_limits(1):  # HistGB's OpenMP predict is slow per query on a busy 2-core machine
        res = rba.minimal_radius(m, X[ok][:1], y[ok][:1], "linf", attacks=["hsj"], effort="fast")
    assert res.path == "black-box"
    assert "categorical" in res.flags["black_box_only"]


def test_parse_refuses_categorical_splits_directly() -> None:
    from robustbench_align.errors import ModelError
    from robustbench_align.models.trees.histgb_parse import parse_sklearn_histgb

    rng = np.random.default_rng(4)
    X = np.column_stack([rng.integers(0, 3, size=200).astype(np.float64), rng.normal(size=200)])
    y = (X[:, 0] == 1).astype(np.int64)
    est = HistGradientBoostingClassifier(max_iter=3, categorical_features=[0], random_state=0).fit(X, y)
    with pytest.raises(ModelError, match="categorical"):
        parse_sklearn_histgb(est)


# ---------------------------------------------------------------------------------------------
# AdaBoostClassifier (SAMME over decision trees)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k, depth", [(2, 1), (2, 3), (3, 1), (3, 2)])
def test_adaboost_fidelity(k: int, depth: int) -> None:
    X, y = _data(300, 5, k, seed=10 + k)
    est = AdaBoostClassifier(DecisionTreeClassifier(max_depth=depth), n_estimators=25, random_state=0).fit(X, y)
    ens = rba.wrap(est).tree_ensemble()
    assert ens.threshold_dtype == "float32" and ens.n_outputs == (1 if k == 2 else k)
    assert len(ens.trees) == len(est.estimators_)
    dp, n_rows = _check_fidelity(est, X)
    assert dp <= 1e-12 and n_rows > 20


def test_adaboost_minimal_radius_equals_brute_force() -> None:
    X, y = _data(200, 3, 2, seed=6)
    est = AdaBoostClassifier(DecisionTreeClassifier(max_depth=1), n_estimators=6, random_state=0).fit(X, y)
    m = rba.wrap(est)
    ens = m.tree_ensemble()
    ok = est.predict(X) == y
    Xt, yt = X[ok][:8], y[ok][:8]
    res = rba.minimal_radius(m, Xt, yt, "linf")
    assert res.path == "exact"
    bf = np.array([_brute_force_linf(est, ens, x, int(c)) for x, c in zip(Xt, yt, strict=True)])
    np.testing.assert_allclose(res.distance, bf, rtol=0, atol=1e-12)
    assert np.all(est.predict(res.x_adv) != yt)


def test_adaboost_non_tree_members_fall_back_to_black_box() -> None:
    X, y = _data(200, 4, 2, seed=7)
    est = AdaBoostClassifier(LogisticRegression(), n_estimators=5, random_state=0).fit(X, y)
    m = rba.wrap(est)
    assert not m.has("tree_ensemble")
    assert m.path_note == "exact path refused: base estimator LogisticRegression is not a decision tree"
    assert np.array_equal(m.predict(X), est.predict(X))


def test_unfitted_models_are_refused_not_wrapped_as_black_boxes() -> None:
    from robustbench_align.errors import ModelError

    for est in (HistGradientBoostingClassifier(), AdaBoostClassifier()):
        with pytest.raises(ModelError, match="not fitted"):
            rba.wrap(est)


def test_histgb_30_iteration_radius_equals_brute_force() -> None:
    """An independent exact search on a realistic ensemble: two features keep the full threshold grid enumerable."""
    X = np.random.default_rng(4).normal(size=(300, 2))
    y = (X[:, 0] + np.sin(2 * X[:, 1]) > 0).astype(np.int64)
    est = HistGradientBoostingClassifier(max_iter=30, max_depth=3, random_state=0).fit(X, y)
    m = rba.wrap(est)
    Xt, yt = X[:8], est.predict(X[:8]).astype(np.int64)
    res = rba.minimal_radius(m, Xt, yt, "linf")
    assert res.path == "exact" and res.is_exact().all()
    bf = np.array([_brute_force_linf(est, m.tree_ensemble(), x, int(c)) for x, c in zip(Xt, yt, strict=True)])
    np.testing.assert_allclose(res.distance, bf, rtol=0, atol=1e-12)
