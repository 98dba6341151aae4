"""The contract every registered attack keeps (in the spirit of scikit-learn's estimator checks).

The suite is parametrized over the attack registry, so a new entry is tested with no other edit:
on a real model that has the capability the attack needs, every reported adversarial flips the
model and has the reported distance, fixed-eps adversarials stay inside the budget, clean errors
get distance 0, certified lower bounds never exceed a found distance, the same seed gives the same
result, and an unsupported norm or a missing capability is a one-line AttackError.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from conftest import tabular_data
from robustbench_align.attacks.base import (
    NORMS,
    Attack,
    AttackResult,
    Candidates,
    FixedEpsAttack,
    MinimalAttack,
    Norm,
    RefiningAttack,
    clean_correct_rows,
)
from robustbench_align.attacks.registry import get_attack, list_attacks, register_attack, unregister_attack
from robustbench_align.errors import AttackError
from robustbench_align.models.base import Model, wrap

D, K, N = 4, 3, 8

# small budgets so that the whole registry runs in seconds; an attack not listed runs with its defaults
FAST: dict[str, dict[str, Any]] = {
    "fmn": {"steps": 30},
    "fab": {"steps": 20, "restarts": 1},
    "deepfool": {"steps": 20},
    "cw": {"steps": 20, "binary_steps": 3},
    "pgd": {"steps": 10, "restarts": 1},
    "paper-pgd": {},
    "autoattack": {"attacks": ["apgd-ce"]},
    "pgd-bisect": {"steps": 4, "max_groups": 2},
    "autoattack-bisect": {"steps": 3, "max_groups": 2, "max_doublings": 6, "attacks": ["apgd-ce"]},
    "pgd-refine": {"rounds": 1},
    "autoattack-refine": {"attacks": ["apgd-ce"], "rounds": 1},
    "veritas": {"time_limit": 10.0},
    "milp": {"time_limit": 10.0},
    "hsj": {"max_queries": 300},
}


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[Model, np.ndarray, np.ndarray]]:
    """A tiny torch MLP, a small random forest, a black box and a logistic regression, each with points and labels.

    Labels are the model's own predictions except for the last point, which is deliberately
    misclassified (its distance must be 0).
    """
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    X, y = tabular_data(160, D, K, seed=3)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(D, 16), torch.nn.ReLU(), torch.nn.Linear(16, K)).double()
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    Xt, yt = torch.as_tensor(X[:120]), torch.as_tensor(y[:120])
    for _ in range(150):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(Xt), yt).backward()
        opt.step()
    mlp = wrap(net, name="tiny-mlp")
    rf = wrap(RandomForestClassifier(n_estimators=4, max_depth=3, random_state=0).fit(X[:120], y[:120]), name="tiny-rf")
    box = wrap(lambda Z: mlp.predict_proba(Z), n_features=D, name="tiny-box")
    lin = wrap(LogisticRegression(max_iter=500).fit(X[:120], y[:120]), name="tiny-logistic")  # the "linear" capability
    out = {}
    for key, m in (("torch_logits", mlp), ("tree_ensemble", rf), ("predict_proba", box), ("linear", lin)):
        Xe = X[120:120 + N].copy()
        ye = m.predict(Xe)
        ye[-1] = (ye[-1] + 1) % K
        out[key] = (m, Xe, ye)
    return out


def _model_for(attack: Attack, models: dict[str, tuple[Model, np.ndarray, np.ndarray]]) -> tuple[Model, np.ndarray, np.ndarray]:
    for cap in ("linear", "tree_ensemble", "torch_logits"):
        if cap in attack.requires:
            return models[cap]
    return models["predict_proba"]


def _check_result(res: AttackResult, model: Model, X: np.ndarray, y: np.ndarray, norm: str, eps: float | None) -> None:
    n = X.shape[0]
    assert res.x_adv.shape == X.shape and res.distance.shape == (n,) and res.success.shape == (n,)
    assert res.norm == norm
    wrong = model.predict(X) != y
    assert (res.distance[wrong] == 0).all() and res.success[wrong].all()  # clean errors: radius 0
    hit = res.success & ~wrong
    assert (model.predict(res.x_adv[hit]) != y[hit]).all()  # every adversarial flips the real model
    np.testing.assert_allclose(res.distance[hit], Norm.of(norm).distance(X[hit], res.x_adv[hit]), rtol=1e-12)
    assert np.isinf(res.distance[~res.success]).all()
    if eps is not None:
        assert (res.distance[hit] <= eps * (1 + 1e-6)).all()  # inside the budget
    if res.lower_bound is not None:
        assert (res.lower_bound <= res.distance * (1 + 1e-9) + 1e-12).all()  # a certificate never exceeds a found distance
        assert (res.lower_bound >= 0).all()


def run_contract(name: str, models: dict[str, tuple[Model, np.ndarray, np.ndarray]]) -> None:
    """Every check of the contract for one registered attack."""
    attack = get_attack(name, **FAST.get(name, {}))
    assert isinstance(attack, (MinimalAttack, FixedEpsAttack))
    model, X, y = _model_for(attack, models)
    assert attack.applicable(model, attack.norms[0])
    eps = 1.0 if isinstance(attack, FixedEpsAttack) else None
    args: tuple[Any, ...] = (eps,) if eps is not None else ()
    for k, norm in enumerate(attack.norms):
        if isinstance(attack, RefiningAttack):  # its main path: start from known radii (here 3.0 for every point)
            upper = np.full(X.shape[0], 3.0)
            res = attack.run_from(model, X, y, norm, upper)
            _check_result(res, model, X, y, norm, None)
            assert (res.distance[res.success] <= upper[res.success]).all()
            if k > 0:
                continue
        res = attack.run(model, X, y, norm, *args)
        _check_result(res, model, X, y, norm, eps)
        if k == 0:  # same seed, same result
            again = get_attack(name, **FAST.get(name, {})).run(model, X, y, norm, *args)
            np.testing.assert_array_equal(again.success, res.success)
            np.testing.assert_allclose(again.distance, res.distance, rtol=1e-9)
    unsupported = [n for n in NORMS if n not in attack.norms]
    for norm in unsupported:
        with pytest.raises(AttackError, match=f"does not support norm '{norm}'"):
            attack.run(model, X, y, norm, *((1.0,) if isinstance(attack, FixedEpsAttack) else ()))
    with pytest.raises(AttackError, match="unknown norm"):
        attack.run(model, X, y, "l7", *((1.0,) if isinstance(attack, FixedEpsAttack) else ()))
    lacking = [models[c][0] for c in ("torch_logits", "tree_ensemble", "predict_proba") if not attack.requires <= models[c][0].capabilities]
    for m in lacking:
        with pytest.raises(AttackError, match="capability"):
            attack.run(m, X, y, attack.norms[0], *((1.0,) if isinstance(attack, FixedEpsAttack) else ()))
    with pytest.raises(AttackError, match="features"):
        attack.run(model, X[:, :-1], y, attack.norms[0], *((1.0,) if isinstance(attack, FixedEpsAttack) else ()))


@pytest.mark.parametrize("name", list_attacks())
def test_registered_attack_keeps_the_contract(name: str, models: dict[str, tuple[Model, np.ndarray, np.ndarray]]) -> None:
    run_contract(name, models)


# ----------------------------------------------------------------------------------------
# A new attack joins through the public registration call and passes the same suite
# ----------------------------------------------------------------------------------------
class RandomDirection(MinimalAttack):
    """Random directions from each point, each walked out until the decision flips, then bisected."""

    name = "random-direction"
    norms = NORMS

    def __init__(self, directions: int = 16, seed: int = 0):
        self.directions, self.seed = directions, seed

    def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm) -> Candidates:
        rng = np.random.default_rng(self.seed)
        best, best_d = X.copy(), np.full(X.shape[0], np.inf)
        rows = clean_correct_rows(model, X, y)
        for _ in range(self.directions):
            u = rng.standard_normal(X.shape)
            u /= norm.norms(u)[:, None]
            for t in np.geomspace(1e-2, 1e2, 40):
                cand = X[rows] + t * u[rows]
                flip = (model.predict(cand) != y[rows]) & (t < best_d[rows])
                best[rows[flip]], best_d[rows[flip]] = cand[flip], t
        return Candidates(best, claimed=np.isfinite(best_d))


def test_a_new_attack_passes_the_contract_with_no_other_edit(models: dict[str, tuple[Model, np.ndarray, np.ndarray]]) -> None:
    register_attack("random-direction", RandomDirection, description="random directions, bisected (test attack)")
    try:
        assert "random-direction" in list_attacks()
        run_contract("random-direction", models)
        res = get_attack("random-direction").run(*models["torch_logits"], "l2")
        assert res.success.sum() >= N - 2  # it does find adversarials
        with pytest.raises(AttackError, match="already registered"):
            register_attack("random-direction", RandomDirection)
    finally:
        unregister_attack("random-direction")
    assert "random-direction" not in list_attacks()


def test_registration_refuses_what_is_not_an_attack() -> None:
    with pytest.raises(AttackError, match="not an Attack subclass"):
        register_attack("not-an-attack", dict)


def test_subclasses_cannot_override_the_lifecycle() -> None:
    with pytest.raises(TypeError, match="implement _attack"):
        class Sneaky(MinimalAttack):
            def run(self, model: Any, X: Any, y: Any, norm: Any) -> AttackResult:  # type: ignore[override]
                raise AssertionError("never called")

            def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm) -> Candidates:
                return Candidates(X)


def test_claims_that_do_not_verify_are_rejected(models: dict[str, tuple[Model, np.ndarray, np.ndarray]]) -> None:
    class Liar(MinimalAttack):
        name = "liar"

        def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm) -> Candidates:
            return Candidates(X + 1e-9, claimed=np.ones(X.shape[0], dtype=bool))

    class Overshoot(FixedEpsAttack):
        name = "overshoot"

        def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm, eps: np.ndarray) -> Candidates:
            return Candidates(X + 100.0 * eps[:, None])  # flips, far outside the ball

    model, X, y = models["predict_proba"]
    res = Liar().run(model, X, y, "linf")
    correct = model.predict(X) == y
    assert res.rejected == correct.sum() and not res.success[correct].any()
    fr = Overshoot().run(model, X, y, "linf", 0.1)
    assert not fr.success[correct].any() and fr.rejected >= 1

    class Short(MinimalAttack):
        name = "short"

        def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm) -> Candidates:
            return Candidates(X[:1])

    with pytest.raises(AttackError, match="candidates of shape"):
        Short().run(model, X, y, "l2")


def test_norm_value_objects() -> None:
    linf, l2, l1 = (Norm.of(n) for n in NORMS)
    assert linf.dual == l1 and l1.dual == linf and l2.dual == l2
    assert linf == "linf" and Norm.of("L2") is l2 and {linf: 1}["linf"] == 1
    D_ = np.array([[3.0, -4.0]])
    assert linf.norms(D_)[0] == 4.0 and l2.norms(D_)[0] == 5.0 and l1.norms(D_)[0] == 7.0
    X = np.zeros((1, 2))
    for nm in (linf, l2, l1):
        P = nm.project(X, X + np.array([[3.0, -4.0]]), 1.0)
        assert nm.distance(X, P)[0] <= 1.0
    with pytest.raises(AttackError, match="unknown norm 'l3'; choose one of linf, l2, l1"):
        Norm.of("l3")
