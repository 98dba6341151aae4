"""scikit-learn linear classifiers: the `sklearn-linear` adapter (exact scores as torch logits, `linear_scores()`)
and the closed-form exact attack `linear`, checked against the closed form min_k (s_y - s_k) / ||w_y - w_k||_q
and against the estimators' own predict."""
from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression, RidgeClassifier, SGDClassifier
from sklearn.svm import LinearSVC

import robustbench_align as rba
from conftest import tabular_data
from robustbench_align.attacks.registry import get_attack, get_threat_model
from robustbench_align.errors import ModelError
from robustbench_align.models.adapters import find_adapter
from robustbench_align.models.adapters.sklearn_linear import WrappedSklearnLinear
from robustbench_align.models.base import wrap

ESTIMATORS: dict[str, Callable[[], Any]] = {
    "logistic": lambda: LogisticRegression(max_iter=1000),
    "linear-svc": lambda: LinearSVC(),
    "sgd": lambda: SGDClassifier(random_state=0),
    "ridge": lambda: RidgeClassifier(),
    "lda": lambda: LinearDiscriminantAnalysis(),
}
DUAL = {"linf": 1, "l2": 2, "l1": np.inf}
N_EVAL = 40


def _data(classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    X, y = tabular_data(200, 5, classes, seed=classes)
    return X[:160], y[:160], X[160:160 + N_EVAL], y[160:160 + N_EVAL]


@pytest.fixture(scope="module")
def fitted() -> Callable[[str, int], tuple[Any, np.ndarray, np.ndarray]]:
    cache: dict[tuple[str, int], tuple[Any, np.ndarray, np.ndarray]] = {}

    def get(name: str, classes: int) -> tuple[Any, np.ndarray, np.ndarray]:
        if (name, classes) not in cache:
            Xtr, ytr, Xte, yte = _data(classes)
            cache[name, classes] = (ESTIMATORS[name]().fit(Xtr, ytr), Xte, yte)
        return cache[name, classes]

    return get


def _index(est: Any, X: np.ndarray) -> np.ndarray:
    """The estimator's own predict as class indices."""
    return np.searchsorted(est.classes_, est.predict(X))


def _class_scores(est: Any, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(S, W, b) straight from coef_/intercept_ (binary: scores [0, s])."""
    coef = np.atleast_2d(est.coef_)
    inter = np.atleast_1d(est.intercept_)
    if coef.shape[0] == 1:
        coef, inter = np.vstack([np.zeros_like(coef), coef]), np.array([0.0, inter[0]])
    return X @ coef.T + inter, coef, inter


def _closed_form(est: Any, X: np.ndarray, y: np.ndarray, norm: str) -> np.ndarray:
    """min_{k != y} (s_y - s_k) / ||w_y - w_k||_q, written out independently of the library code."""
    S, W, _ = _class_scores(est, X)
    out = np.full(X.shape[0], np.inf)
    for i in range(X.shape[0]):
        for k in range(W.shape[0]):
            a = W[y[i]] - W[k]
            if k != y[i] and np.linalg.norm(a, ord=DUAL[norm]) > 0:
                out[i] = min(out[i], (S[i, y[i]] - S[i, k]) / np.linalg.norm(a, ord=DUAL[norm]))
    return out


CASES = [(name, k) for name in ESTIMATORS for k in (2, 3)]
IDS = [f"{name}-{k}class" for name, k in CASES]


# ----------------------------------------------------------------------------------------
# The adapter
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, classes", CASES, ids=IDS)
def test_wrap_gives_exact_linear_scores(fitted, name, classes):
    est, X, _ = fitted(name, classes)
    entry = find_adapter(est)
    assert entry is not None and entry.name == "sklearn-linear"
    m = wrap(est)
    assert isinstance(m, WrappedSklearnLinear)
    assert m.capabilities == {"predict_proba", "torch_logits", "linear"}
    W, b = m.linear_scores()
    assert W.shape == (classes, 5) and b.shape == (classes,) and W.dtype == np.float64
    S, W0, b0 = _class_scores(est, X)
    np.testing.assert_array_equal(W, W0)
    np.testing.assert_array_equal(b, b0)
    dec = est.decision_function(X)
    np.testing.assert_allclose(S[:, 1] if classes == 2 else S, dec, rtol=1e-12, atol=1e-12)
    p = m.predict_proba(X)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-12)
    if hasattr(est, "predict_proba"):
        np.testing.assert_array_equal(p, est.predict_proba(X))  # the library's own
    else:
        np.testing.assert_allclose(p, torch.softmax(torch.as_tensor(S), dim=1).numpy(), rtol=1e-12)  # softmax of the scores
    np.testing.assert_array_equal(m.predict(X), _index(est, X))


@pytest.mark.parametrize("name, classes", CASES, ids=IDS)
def test_torch_logits_decide_like_the_library_on_random_points_and_near_ties(fitted, name, classes):
    est, _, _ = fitted(name, classes)
    m = wrap(est)
    rng = np.random.default_rng(7)
    R = rng.standard_normal((500, 5)) * 3
    S, W, _ = _class_scores(est, R)
    # near ties: move each point onto the boundary between its two best classes (l2 projection), then 1e-9 either side
    order = np.argsort(-S, axis=1)
    top, second = order[:, 0], order[:, 1]
    a = W[top] - W[second]
    gap = S[np.arange(500), top] - S[np.arange(500), second]
    on = R - (gap / (a * a).sum(axis=1))[:, None] * a
    u = a / np.linalg.norm(a, axis=1, keepdims=True)
    pts = np.vstack([R, on, on + 1e-9 * u, on - 1e-9 * u])  # `on`: ties up to the last ulps of the library's arithmetic
    s_pts = _class_scores(est, pts)[0]
    srt = np.sort(s_pts, axis=1)
    near = (srt[:, -1] - srt[:, -2] <= 2e-9 * np.linalg.norm(np.vstack([a, a, a, a]), axis=1))[500:]
    assert near.mean() > 0.9  # really near ties (a third class may overtake on a few boundaries)
    z = m.torch_logits(torch.as_tensor(pts, dtype=torch.float64))
    assert z.dtype == torch.float64 and z.shape == (2000, classes)
    dec = est.decision_function(pts)
    np.testing.assert_array_equal(z.detach().numpy()[:, 1] if classes == 2 else z.detach().numpy(), dec)  # the library's scores, bit for bit
    lib = _index(est, pts)
    np.testing.assert_array_equal(z.argmax(dim=1).numpy(), lib)
    np.testing.assert_array_equal(m.predict(pts), lib)
    x = torch.as_tensor(pts[:4], dtype=torch.float32).requires_grad_(True)  # float32 inputs: float64 logits, gradients w.r.t. x
    (g,) = torch.autograd.grad(m.torch_logits(x)[:, -1].sum(), x)
    np.testing.assert_allclose(g.numpy(), np.broadcast_to(W[-1], (4, 5)), rtol=1e-6)


def test_exact_ties_follow_the_library_rule(fitted):
    lr, _, _ = fitted("logistic", 2)
    tied = copy.deepcopy(lr)
    tied.intercept_ = np.zeros(1)
    m = wrap(tied)
    zero = np.zeros((1, 5))
    assert tied.decision_function(zero)[0] == 0.0 and tied.predict(zero)[0] == tied.classes_[0]  # s = 0: class 0
    z = m.torch_logits(torch.zeros(1, 5, dtype=torch.float64))
    assert z.tolist() == [[0.0, 0.0]] and int(z.argmax()) == 0 == int(m.predict(zero)[0])
    lr3, X3, _ = fitted("logistic", 3)
    tied3 = copy.deepcopy(lr3)
    tied3.coef_ = lr3.coef_.copy()
    tied3.intercept_ = lr3.intercept_.copy()
    tied3.coef_[1], tied3.intercept_[1] = tied3.coef_[0], tied3.intercept_[0]  # classes 0 and 1 always tie: 0 wins
    m3 = wrap(tied3)
    z3 = m3.torch_logits(torch.as_tensor(X3))
    np.testing.assert_array_equal(z3.argmax(dim=1).numpy(), _index(tied3, X3))
    assert 1 not in _index(tied3, X3)


def test_radius_zero_at_an_exact_tie_and_unreachable_classes(fitted):
    lr, _, _ = fitted("logistic", 2)
    tied = copy.deepcopy(lr)
    tied.intercept_ = np.zeros(1)
    for norm in ("linf", "l2", "l1"):
        res = rba.minimal_radius(tied, np.zeros((1, 5)), np.array([0]), norm)  # on the boundary, decided for class 0
        assert res.success[0] and res.distance[0] < 1e-100 and res.is_exact()[0]
        assert tied.predict(res.x_adv)[0] == tied.classes_[1]
    lr3, X3, _ = fitted("logistic", 3)
    tied3 = copy.deepcopy(lr3)
    tied3.coef_ = lr3.coef_.copy()
    tied3.intercept_ = lr3.intercept_.copy()
    tied3.coef_[1], tied3.intercept_[1] = tied3.coef_[0], tied3.intercept_[0]
    y3 = _index(tied3, X3)
    res = rba.minimal_radius(tied3, X3, y3, "l2")
    r = _closed_form(tied3, X3, y3, "l2")  # the 0-1 pair is skipped: ||w_0 - w_1|| = 0
    np.testing.assert_allclose(res.distance, r, rtol=1e-6)
    assert res.is_exact().all()


# ----------------------------------------------------------------------------------------
# The exact attack through the public API
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2", "l1"])
@pytest.mark.parametrize("name, classes", CASES, ids=IDS)
def test_minimal_radius_is_the_closed_form(fitted, name, classes, norm):
    est, X, y = fitted(name, classes)
    res = rba.minimal_radius(est, X, y, norm)
    cc = res.clean_correct
    assert cc.sum() >= N_EVAL // 2
    r = _closed_form(est, X, y, norm)
    np.testing.assert_allclose(res.distance[cc], r[cc], rtol=1e-6)
    assert (res.distance[~cc] == 0).all()
    assert res.is_exact()[cc].all()
    assert res.lower_bound is not None and (res.lower_bound[cc] <= res.distance[cc]).all()
    np.testing.assert_allclose(res.lower_bound[cc], r[cc], rtol=1e-9)  # the certificate is the closed form less round-off
    assert (est.predict(res.x_adv[cc]) != est.classes_[y[cc]]).all()  # every adversarial flips the sklearn object itself
    assert res.attacks_used[0] == "linear" and set(res.by_attack[cc]) == {"linear"}


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("classes", [2, 3])
def test_black_box_attack_is_never_below_the_exact_radius(fitted, classes, norm):
    est, X, y = fitted("logistic", classes)
    X, y = X[:12], y[:12]
    exact = rba.minimal_radius(est, X, y, norm)
    box = rba.minimal_radius(est, X, y, norm, attacks=["hsj"], max_queries=1500)
    ok = box.success & box.clean_correct
    assert ok.sum() >= 6
    assert exact.lower_bound is not None
    assert (box.distance[ok] >= exact.lower_bound[ok]).all()  # the certificate holds against another attack's adversarials
    assert (box.distance[ok] >= exact.distance[ok] * (1 - 1e-9)).all()
    assert not box.is_exact()[ok].any()


def test_the_attack_directly_and_its_threat_model_slot(fitted):
    est, X, y = fitted("sgd", 3)
    m = wrap(est)
    att = get_attack("linear")
    assert att.exact and att.requires == {"linear"} and att.norms == ("linf", "l2", "l1")
    res = att.run(m, X, y, "l1")
    cc = m.predict(X) == y
    assert res.success[cc].all() and res.rejected == 0 and res.flags["linear_unflipped"] == 0
    assert res.queries is not None and (res.queries[cc] >= 1).all()
    d = np.abs(res.x_adv - X).sum(axis=1)
    assert ((res.x_adv != X).sum(axis=1)[cc] == 1).all()  # l1: one coordinate moves
    np.testing.assert_allclose(res.distance, d, rtol=1e-12)
    for tm in ("linf", "l2", "l1"):
        assert get_threat_model(tm).resolve(m)[0][0] == "linear"
    assert get_threat_model("paper-pgd").fallback[0][0] == "linear"
    from sklearn.ensemble import RandomForestClassifier

    rf = wrap(RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(X, y))
    assert "linear" not in [n for n, _ in get_threat_model("linf").resolve(rf)]


# ----------------------------------------------------------------------------------------
# Estimators the plain linear rule does not describe
# ----------------------------------------------------------------------------------------
class BentLogistic(LogisticRegression):
    """A subclass whose decision function is not coef_ . x + intercept_."""

    def decision_function(self, X: Any) -> Any:
        return super().decision_function(X) + 0.5 * (np.asarray(X) ** 2).sum(axis=1)


class BentSVC(LinearSVC):
    def decision_function(self, X: Any) -> Any:
        return super().decision_function(X) + 0.5 * (np.asarray(X) ** 2).sum(axis=1)


def test_inconsistent_subclasses_are_black_boxes_or_refused():
    Xtr, ytr, _, _ = _data(2)
    bent = wrap(BentLogistic().fit(Xtr, ytr))
    assert bent.capabilities == {"predict_proba"}  # the black-box sklearn adapter
    with pytest.raises(ModelError, match="do not follow coef_"):
        wrap(BentSVC().fit(Xtr, ytr))
    with pytest.raises(ModelError, match="not fitted"):
        wrap(LinearSVC())
