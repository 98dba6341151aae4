"""Tree attacks over float64 inputs as the libraries round them: the rounding edges of the float32 grid.

XGBoost, scikit-learn and CatBoost compare float32(x). The closest float64 input in a float32
interval is the rounding edge halfway to the neighbouring float32, not the interval's float32 end;
radii and certified lower bounds are taken at that edge, so they hold for float64 inputs.
"""
from __future__ import annotations

import numpy as np
import pytest

import robustbench_align as rba
from conftest import rounding_edge_down, rounding_edge_up
from robustbench_align.attacks.trees.grid import edge_down, edge_up

F32 = np.float32


def _values() -> np.ndarray:
    rng = np.random.default_rng(0)
    tiny = np.finfo(F32).tiny
    special = [0.0, -0.0, 1.0, -1.0, 0.5, 3.0, tiny, -tiny, tiny / 4, np.finfo(F32).smallest_subnormal,
               -np.finfo(F32).smallest_subnormal, np.finfo(F32).max, -np.finfo(F32).max, 1e-30, 123456.78]
    rand = rng.standard_normal(300) * 10.0 ** rng.integers(-8, 8, 300)
    v = np.concatenate([special, rand]).astype(F32)
    return np.concatenate([v, np.nextafter(v, F32(np.inf)), np.nextafter(v, F32(-np.inf))])


def test_edges_match_a_bisection_oracle_and_round_into_the_interval() -> None:
    v = _values()
    v = v[np.isfinite(v)]
    up, down = edge_up(v), edge_down(v)
    for t, u, d in zip(v, up, down, strict=True):
        assert u == rounding_edge_up(t), (t, u)
        assert d == rounding_edge_down(t), (t, d)
        assert F32(u) >= t and F32(np.nextafter(u, -np.inf)) < t
        assert F32(d) <= t and F32(np.nextafter(d, np.inf)) > t
    # strictly closer to a point outside the interval than the float32 end itself, by up to half a spacing
    finite = np.isfinite(np.nextafter(v, F32(-np.inf)).astype(np.float64))
    assert np.all(up[finite] < v[finite].astype(np.float64))


def test_float64_edges_are_the_values_themselves() -> None:
    v = np.array([0.1, -2.5, 1e300])
    np.testing.assert_array_equal(edge_up(v, np.float64), v)
    np.testing.assert_array_equal(edge_down(v, np.float64), v)


def _stump_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    X = rng.uniform(-1, 1, size=(200, 2))
    y = (X[:, 0] > 0.123456789).astype(int)
    return X, y


def _check_stump(clf, X: np.ndarray, norm: str) -> None:
    """One split: the exact radius is the distance to the rounding edge, and one float64 step less does not flip."""
    Xt = X[:20]
    yt = np.asarray(clf.predict(Xt)).astype(int)
    res = rba.minimal_radius(clf, Xt, yt, norm)
    assert res.success.all()
    assert np.all(np.asarray(clf.predict(res.x_adv)).astype(int) != yt)
    assert res.lower_bound is not None and np.array_equal(res.lower_bound, res.distance)
    for i in range(len(Xt)):
        moved = np.flatnonzero(res.x_adv[i] != Xt[i])
        assert moved.size == 1
        f = int(moved[0])
        back = res.x_adv[i].copy()
        back[f] = np.nextafter(back[f], Xt[i, f])  # one float64 step towards x: back in x's class
        assert int(np.asarray(clf.predict(back[None]))[0]) == yt[i]
        # the edge is closer than the float32 end of the interval: float32(edge) is that end
        end = float(F32(res.x_adv[i, f]))
        assert abs(res.x_adv[i, f] - Xt[i, f]) <= abs(end - Xt[i, f])


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_sklearn_stump_radius_is_the_float64_distance(norm: str) -> None:
    from sklearn.tree import DecisionTreeClassifier

    X, y = _stump_data()
    _check_stump(DecisionTreeClassifier(max_depth=1, random_state=0).fit(X, y), X, norm)


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_xgboost_stump_radius_is_the_float64_distance(norm: str) -> None:
    xgb = pytest.importorskip("xgboost")
    X, y = _stump_data()
    clf = xgb.XGBClassifier(n_estimators=1, max_depth=1, learning_rate=1.0, base_score=0.5, tree_method="exact")
    _check_stump(clf.fit(X, y), X, norm)
