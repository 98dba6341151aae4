"""minimal_radius(..., certify=...): every family gets its lower bound, exact where the bracket closes, a reason where none applies."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import make_classification
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC

import robustbench_align as rba
from robustbench_align.errors import ConfigError
from robustbench_align.models.mlp import MLP


@pytest.fixture(scope="module")
def data():
    X, y = make_classification(300, 8, n_informative=5, random_state=0)
    X = (X - X.mean(0)) / X.std(0)
    return X[:240], y[:240], X[240:252], y[240:252]


def _bracket_ok(res):
    cc = res.clean_correct
    assert res.lower_bound is not None and res.exact is not None and res.certifier is not None
    assert np.all(res.lower_bound <= res.distance * (1 + 1e-9) + 1e-12)
    assert np.all(res.certified_accuracy([0.05, 0.1, 0.5]) <= res.robust_accuracy([0.05, 0.1, 0.5]) + 1e-12)
    assert np.all(res.lower_bound[~cc] == 0)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_linear_model_is_exact(data, norm):
    Xtr, ytr, X, y = data
    model = rba.wrap(LogisticRegression().fit(Xtr, ytr))
    res = rba.minimal_radius(model, X, y, norm=norm)
    _bracket_ok(res)
    assert np.all(res.exact)


def test_tree_ensemble_is_exact_in_linf(data):
    import xgboost as xgb

    Xtr, ytr, X, y = data
    model = rba.wrap(xgb.XGBClassifier(n_estimators=10, max_depth=3, n_jobs=1).fit(Xtr, ytr))
    res = rba.minimal_radius(model, X, y, norm="linf")
    _bracket_ok(res)
    assert res.exact.mean() >= 0.9


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_mlp_gets_a_certified_bound(data, norm):
    Xtr, ytr, X, y = data
    model = MLP(hidden=[16, 16], epochs=30, random_state=0).fit(Xtr, ytr)
    res = rba.minimal_radius(model, X, y, norm=norm)
    _bracket_ok(res)
    cc = res.clean_correct
    assert np.all(res.lower_bound[cc] > 0)
    assert set(res.certifier[cc]) <= {"crown", "milp"}
    if norm == "linf":  # 32 hidden ReLUs: the complete MILP closes the bracket up to the float32 band
        assert np.median(res.lower_bound[cc] / res.distance[cc]) > 0.999
    off = rba.minimal_radius(model, X, y, norm=norm, certify=False)
    np.testing.assert_array_equal(off.lower_bound if off.lower_bound is not None else np.zeros(len(y)), np.zeros(len(y)))


def test_unsupported_model_gets_zero_with_a_reason(data):
    Xtr, ytr, X, y = data
    model = rba.wrap(SVC(kernel="rbf").fit(Xtr, ytr))
    res = rba.minimal_radius(model, X, y, norm="l2")
    cc = res.clean_correct
    assert np.all(res.lower_bound[cc] == 0)
    assert all(isinstance(r, str) and r for r in res.certifier[cc])
    assert not res.exact[cc].any()


def test_bad_certifier_and_budget_are_one_line_config_errors(data):
    Xtr, ytr, X, y = data
    model = MLP(hidden=[8], epochs=5, random_state=0).fit(Xtr, ytr)
    with pytest.raises(ConfigError, match="unknown certifier"):
        rba.minimal_radius(model, X, y, certify="magic")
    with pytest.raises(ConfigError, match="steps"):
        rba.minimal_radius(model, X, y, certify="crown", certify_budgets={"steps": 0})
