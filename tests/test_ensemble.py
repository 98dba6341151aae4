"""The per-point-best ensemble, threat models, public entry points, reliability flags and bad input.

The small attacks below are test fixtures on real models (exact closed-form attacks on a linear
torch model, and attacks that misbehave on purpose); the named attacks are tested with the real
components where they are installed.
"""
import numpy as np
import pandas as pd
import pytest
import torch

from robustbench_align.attacks import checks
from robustbench_align.attacks.api import fixed_eps_per_point, minimal_radius, robust_accuracy
from robustbench_align.attacks.base import Candidates, FixedEpsAttack, MinimalAttack
from robustbench_align.attacks.ensemble import EnsembleAttack
from robustbench_align.attacks.refine import Refine
from robustbench_align.attacks.registry import (
    applicable_attacks,
    default_eps_grid,
    get_attack,
    get_threat_model,
    list_attacks,
    list_threat_models,
)
from robustbench_align.attacks.results import RadiusResult
from robustbench_align.errors import AttackError
from robustbench_align.models.base import ProbaModel, wrap

torch.set_num_threads(1)
D, K = 6, 3


# ----------------------------------------------------------------------------------------
# fixtures: a linear torch model and exact attacks on it
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def linear():
    torch.manual_seed(0)
    lin = torch.nn.Linear(D, K).double()
    model = wrap(lin, name="linear")
    X = np.random.default_rng(0).standard_normal((24, D))
    y = model.predict(X)
    y[:3] = (y[:3] + 1) % K  # three clean-misclassified points
    return model, X, y


def _linear_adversarial(model, X, y, norm):
    """Closed-form minimal adversarial of a linear model per point: (x_adv, exact distance)."""
    W = model.module.weight.detach().numpy()
    b = model.module.bias.detach().numpy()
    dual = {"l2": 2, "linf": 1, "l1": np.inf}[norm]
    x_adv, dist = X.copy(), np.full(X.shape[0], np.inf)
    for i, (x, c) in enumerate(zip(X, y, strict=True)):
        for k in range(W.shape[0]):
            if k == c:
                continue
            w = W[c] - W[k]
            m = x @ w + b[c] - b[k]
            r = m / np.linalg.norm(w, dual)
            if r < dist[i]:
                if norm == "l2":
                    step = w / np.linalg.norm(w)
                elif norm == "linf":
                    step = np.sign(w)
                else:
                    j = np.argmax(np.abs(w))
                    step = np.zeros_like(w)
                    step[j] = np.sign(w[j])
                dist[i] = r
                x_adv[i] = x - r * (1 + 1e-9) * step - 1e-12 * step
    return x_adv, dist


class ExactLinear(MinimalAttack):
    """Exact minimal attack for a linear torch model, with a certified lower bound."""

    name = "exact-linear"
    requires = frozenset({"torch_logits"})
    exact = True

    def __init__(self, scale_pos=1.0, scale_neg=1.0, certify=True, name=None):
        self.scale_pos, self.scale_neg, self.certify = scale_pos, scale_neg, certify
        if name:
            self.name = name

    def _attack(self, model, X, y, norm):
        xa, dist = _linear_adversarial(model, X, y, norm.name)
        scale = np.where(X[:, 0] > 0, self.scale_pos, self.scale_neg)  # worse than exact on one half
        cand = X + scale[:, None] * (xa - X)
        return Candidates(cand, lower_bound=dist if self.certify else None)


class Liar(MinimalAttack):
    """Claims success with a tiny perturbation that does not change the decision."""

    name = "liar"

    def _attack(self, model, X, y, norm):
        return Candidates(X + 1e-7, claimed=np.ones(X.shape[0], dtype=bool))


class FixedLinear(FixedEpsAttack):
    """Exact fixed-eps attack on a linear model; fails on purpose above `fail_above`; `overshoot` breaks the budget."""

    name = "fixed-linear"
    requires = frozenset({"torch_logits"})

    def __init__(self, fail_above=np.inf, overshoot=1.0, name=None):
        self.fail_above, self.overshoot = fail_above, overshoot
        self.calls = []
        if name:
            self.name = name

    def _attack(self, model, X, y, norm, eps):
        self.calls.append((float(eps[0]), X.shape[0]))
        xa, dist = _linear_adversarial(model, X, y, norm.name)
        hit = (dist <= eps) & (eps <= self.fail_above)
        return Candidates(np.where(hit[:, None], X + self.overshoot * (xa - X), X))


class GradientLine(MinimalAttack):
    """A one-direction gradient attack: line search along the margin gradient (zero gradient = no move)."""

    name = "gradient-line"
    requires = frozenset({"torch_logits"})

    def _attack(self, model, X, y, norm):
        g = torch.zeros(X.shape)
        x = torch.as_tensor(X).clone().requires_grad_(True)
        z = model.torch_logits(x)
        zy = z.gather(1, torch.as_tensor(y)[:, None])[:, 0]
        other = z.clone()
        other.scatter_(1, torch.as_tensor(y)[:, None], float("-inf"))
        (g,) = torch.autograd.grad((zy - other.max(1).values).sum(), x)
        g = g.double().numpy()
        gn = np.linalg.norm(g, axis=1, keepdims=True)
        u = -np.where(gn > 0, g / np.maximum(gn, 1e-300), 0.0)
        hi = np.full(X.shape[0], np.inf)
        for t in np.geomspace(1e3, 1e-3, 200):  # smallest step on a grid that flips, then bisection
            flip = (model.predict(X + t * u) != y) & (gn[:, 0] > 0)
            hi[flip] = t
        lo = np.zeros_like(hi)
        for _ in range(50):
            mid = np.where(np.isfinite(hi), (lo + hi) / 2, 0.0)
            flip = model.predict(X + mid[:, None] * u) != y
            hi = np.where(flip & np.isfinite(hi), mid, hi)
            lo = np.where(~flip & np.isfinite(hi), mid, lo)
        cand = np.where(np.isfinite(hi)[:, None], X + np.where(np.isfinite(hi), hi, 0)[:, None] * u, X)
        return Candidates(cand)


# ----------------------------------------------------------------------------------------
# the ensemble
# ----------------------------------------------------------------------------------------
def test_per_point_minimum_across_attacks(linear):
    model, X, y = linear
    a = ExactLinear(1.0, 1.4, certify=False, name="good-pos")
    b = ExactLinear(1.4, 1.0, certify=False, name="good-neg")
    res = EnsembleAttack([a, b]).run(model, X, y, "l2")
    _, exact = _linear_adversarial(model, X, y, "l2")
    correct = model.predict(X) == y
    np.testing.assert_allclose(res.distance[correct], exact[correct], rtol=1e-6)
    assert (res.distance[~correct] == 0).all()
    pos = X[:, 0] > 0
    assert set(res.by_attack[correct & pos]) == {"good-pos"} and set(res.by_attack[correct & ~pos]) == {"good-neg"}
    assert all(v is None for v in res.by_attack[~correct])
    # per-attack distances kept; the ensemble is their pointwise minimum
    np.testing.assert_allclose(np.fmin(res.per_attack["good-pos"], res.per_attack["good-neg"])[correct], res.distance[correct])
    assert np.isnan(res.per_attack["good-pos"][~correct]).all()
    assert set(res.attack_times) == {"good-pos", "good-neg"} and res.attacks_used == ["good-pos", "good-neg"]
    # every reported adversarial flips the real model at the reported distance
    ok = res.success & correct
    assert (model.predict(res.x_adv[ok]) != y[ok]).all()
    np.testing.assert_allclose(np.linalg.norm(res.x_adv[ok] - X[ok], axis=1), res.distance[ok], rtol=1e-12)


def test_bad_candidate_is_rejected_and_does_not_count(linear):
    model, X, y = linear
    correct = model.predict(X) == y
    res = EnsembleAttack([Liar(), ExactLinear(certify=False)]).run(model, X, y, "linf")
    assert res.rejected == correct.sum()
    assert res.attack_rejected == {"liar": int(correct.sum()), "exact-linear": 0}
    assert "liar" not in set(res.by_attack)
    _, exact = _linear_adversarial(model, X, y, "linf")
    np.testing.assert_allclose(res.distance[correct], exact[correct], rtol=1e-6)
    assert "rejected_candidates" in res.flags
    # alone, the liar leaves every correct point unbroken
    alone = EnsembleAttack([Liar()], checks=False).run(model, X, y, "linf")
    assert np.isinf(alone.distance[correct]).all() and alone.rejected == correct.sum()


def test_budget_overshoot_is_rejected_in_fixed_mode(linear):
    model, X, y = linear
    correct = model.predict(X) == y
    _, exact = _linear_adversarial(model, X, y, "linf")
    fr = EnsembleAttack([FixedLinear(overshoot=3.0)]).run_fixed(model, X, y, "linf", [0.5])
    over = correct & (exact <= 0.5) & (3.0 * exact > 0.5)  # claimed, flips the model, but outside the eps ball
    assert over.sum() > 0 and fr.rejected == over.sum()
    np.testing.assert_array_equal(fr.robust(0.5), correct & ~((exact <= 0.5) & ~over))
    r = fr.results[0.5]
    assert (np.abs(r.x_adv[r.success] - X[r.success]).max(axis=1) <= 0.5 * (1 + 1e-6)).all()


def test_certified_points_skip_later_attacks(linear):
    model, X, y = linear
    from robustbench_align.attacks.decision import HopSkipJump

    correct = model.predict(X) == y
    res = EnsembleAttack([ExactLinear(certify=True), HopSkipJump(max_queries=300)]).run(model, X, y, "l2")
    assert res.is_exact()[correct].all()
    assert np.isnan(res.per_attack["hsj"]).all()  # nothing left for hsj to do
    assert res.attack_times["hsj"] == 0.0 and "hsj" not in res.attacks_used
    # without certificates hsj runs on every correctly classified point and never beats the exact radius
    res2 = EnsembleAttack([ExactLinear(certify=False), HopSkipJump(max_queries=300)]).run(model, X, y, "l2")
    assert np.isfinite(res2.per_attack["hsj"][correct]).all()
    assert (res2.per_attack["hsj"][correct] >= res.distance[correct] * (1 - 1e-6)).all()
    assert "exact_not_certified" not in res.flags


def test_uncertified_exact_attack_is_flagged(linear):
    model, X, y = linear
    res = EnsembleAttack([ExactLinear(scale_pos=1.2, certify=False)]).run(model, X, y, "l2")
    assert "exact_not_certified" in res.flags
    assert res.lower_bound is None


def test_curve_monotone_and_auc(linear):
    model, X, y = linear
    res = EnsembleAttack([ExactLinear()]).run(model, X, y, "linf")
    grid = np.linspace(0, 3, 61)
    cur = res.curve(grid)
    assert list(cur.columns) == ["eps", "robust_accuracy"]
    assert np.all(np.diff(cur["robust_accuracy"].to_numpy()) <= 0)
    assert cur["robust_accuracy"].iloc[0] == pytest.approx(res.clean_accuracy)
    # the AUC is the integral of the step curve: compare with a fine Riemann sum
    fine = np.linspace(0, 1.0, 200001)
    ra = res.robust_accuracy(fine)
    assert res.auc(1.0) == pytest.approx(np.trapezoid(ra, fine) / 1.0, abs=1e-4)


def test_auc_hand_computed():
    d = np.array([0.0, 0.5, 1.0, np.inf])
    r = RadiusResult(x_adv=np.zeros((4, 2)), distance=d, success=np.isfinite(d), norm="l2", attack="hand",
                     clean_correct=np.array([False, True, True, True]))
    # RA(e) = 3/4 on (0, .5), 2/4 on (.5, 1), 1/4 on (1, 2]  ->  (0.375 + 0.25 + 0.25) / 2
    assert r.auc(2.0) == pytest.approx(0.4375)
    assert r.median == pytest.approx(1.0)
    assert r.clean_accuracy == pytest.approx(0.75)
    np.testing.assert_allclose(r.curve([0, 0.5, 0.99, 1.0, 5.0])["robust_accuracy"], [0.75, 0.5, 0.5, 0.25, 0.25])
    # AttackBench optimality: an attack matching the best scores 1, one finding nothing scores 0
    r.per_attack = {"a": np.array([np.nan, 0.5, 1.0, np.inf]), "b": np.array([np.nan, np.inf, np.inf, np.inf]),
                    "c": np.array([np.nan, 1.0, 1.0, np.inf])}
    opt = r.optimality(2.0)
    assert opt["a"] == pytest.approx(1.0) and opt["b"] == pytest.approx(0.0)
    # c: area (0 + 1 + 1 + 2)/4 = 1.0, best 0.875, worst 0.75 * 2 = 1.5  ->  1 - 0.125/0.625
    assert opt["c"] == pytest.approx(0.8)
    with pytest.raises(AttackError):
        r.auc(0.0)
    with pytest.raises(AttackError):
        r.curve([-1.0])


class PerPointFixedLinear(FixedLinear):
    per_point_eps = True

    def _attack(self, model, X, y, norm, eps):
        self.calls.append((tuple(eps), X.shape[0]))
        xa, dist = _linear_adversarial(model, X, y, norm.name)
        hit = dist <= eps
        return Candidates(np.where(hit[:, None], xa, X))


@pytest.mark.parametrize("inner", [FixedLinear, PerPointFixedLinear])
def test_refine_shrinks_radii_from_the_current_best(linear, inner):
    model, X, y = linear
    correct = model.predict(X) == y
    _, exact = _linear_adversarial(model, X, y, "l2")
    fixed = inner()
    res = EnsembleAttack([ExactLinear(1.5, 1.5, certify=False, name="loose"), Refine(fixed, rounds=2, max_groups=3)]).run(model, X, y, "l2")
    improved = res.by_attack == "fixed-linear-refine"
    assert improved.sum() > 0
    np.testing.assert_allclose(res.distance[improved], exact[improved], rtol=1e-6)  # the inner attack is exact
    assert (res.distance[correct] <= 1.5 * exact[correct] * (1 + 1e-6)).all()
    # every call asked below the loose radius of the points it got
    if inner is FixedLinear:
        assert len(fixed.calls) <= 2 * 3
    else:
        assert len(fixed.calls) == 2  # one vectorised call per round; round two finds nothing below the exact radii
    assert (model.predict(res.x_adv[improved]) != y[improved]).all()


# ----------------------------------------------------------------------------------------
# fixed-eps runs and the paper protocol
# ----------------------------------------------------------------------------------------
def test_fixed_eps_runs_only_robust_points_and_matches_thresholds(linear):
    model, X, y = linear
    correct = model.predict(X) == y
    _, exact = _linear_adversarial(model, X, y, "linf")
    first = ExactLinear(scale_pos=1.0, scale_neg=np.inf, certify=False, name="half")  # breaks only the X0>0 half
    second = FixedLinear()
    fr = EnsembleAttack([first, second]).run_fixed(model, X, y, "linf", [0.1, 1.0, 2.0])
    for e in (0.1, 1.0, 2.0):
        expect = correct & (exact > e)
        np.testing.assert_array_equal(fr.robust(e), expect)
    # the fixed attack saw only the points still robust at each eps (AutoAttack's trick); an
    # adversarial it found at a smaller eps also counts at the larger ones (carry-over)
    prev = 0.0
    seen = dict(second.calls)
    for e in (0.1, 1.0, 2.0):
        expect_seen = int((correct & ~((X[:, 0] > 0) & (exact <= e)) & ~(exact <= prev)).sum())
        assert seen.get(e, 0) == expect_seen  # no call at all when nothing is left
        prev = e
    assert len(seen) >= 2
    assert fr.attacks_used == ["half", "fixed-linear"]


def test_non_monotone_flag_on_constructed_curve(linear):
    model, X, y = linear
    weak = FixedLinear(fail_above=1.0)  # finds nothing at eps 2
    per_eps, used, rejected, flags = fixed_eps_per_point(model, X, y, threat="paper-pgd", attacks=[weak])
    ra = {e: v.mean() for e, v in per_eps.items()}
    assert ra[2.0] > ra[1.0]
    assert "non_monotone_eps" in flags and used == ["fixed-linear"] and rejected == 0
    # carrying adversarials over to larger eps repairs the curve
    df = robust_accuracy(model, X, y, "linf", [0.1, 1.0, 2.0], attacks=[FixedLinear(fail_above=1.0)], from_radius=False)
    assert np.all(np.diff(df["robust_accuracy"]) <= 0) and "non_monotone_eps" not in df.attrs["flags"]
    assert checks.non_monotone([0.1, 1, 2], [0.8, 0.3, 0.4])[0] == "non_monotone_eps"
    assert checks.non_monotone([0.1, 1, 2], [0.8, 0.3, 0.3]) is None


def test_robust_accuracy_from_radius_vs_fixed(linear):
    model, X, y = linear
    _, exact = _linear_adversarial(model, X, y, "l2")
    correct = model.predict(X) == y
    eps = [0.1, 0.5, 1.0]
    a = robust_accuracy(model, X, y, "l2", eps, attacks=[ExactLinear()])
    b = robust_accuracy(model, X, y, "l2", eps, attacks=[FixedLinear()], from_radius=False)
    expect = [float(np.mean(correct & (exact > e))) for e in eps]
    assert list(a.columns) == ["eps", "robust_accuracy", "clean_accuracy"]
    np.testing.assert_allclose(a["robust_accuracy"], expect)
    np.testing.assert_allclose(b["robust_accuracy"], expect)
    assert a["clean_accuracy"].iloc[0] == pytest.approx(correct.mean())


def test_paper_pgd_threat_uses_fixed_eps_runs(linear):
    model, X, y = linear
    tm = get_threat_model("paper-pgd")
    assert tm.kind == "fixed" and tm.eps == (0.1, 1.0, 2.0) and tm.norm == "linf"
    df = robust_accuracy(model, X, y, threat="paper-pgd", seed=0)
    assert list(df["eps"]) == [0.1, 1.0, 2.0] and df.attrs["attacks"] == ["paper-pgd"]
    _, exact = _linear_adversarial(model, X, y, "linf")
    correct = model.predict(X) == y
    truth = np.array([np.mean(correct & (exact > e)) for e in (0.1, 1.0, 2.0)])
    assert (df["robust_accuracy"].to_numpy() >= truth - 1e-12).all()  # no attack beats the exact radius
    with pytest.raises(AttackError, match="fixed-eps"):
        minimal_radius(model, X, y, threat="paper-pgd")


# ----------------------------------------------------------------------------------------
# threat models, registry and the public entry points
# ----------------------------------------------------------------------------------------
def test_registry_lists_and_errors():
    assert "hsj" in list_attacks()
    assert set(list_threat_models()) >= {"linf", "l2", "paper-pgd"}
    assert default_eps_grid("linf") == (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
    assert default_eps_grid("l2") == (0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
    with pytest.raises(AttackError, match=r"unknown attack 'nope'.*hsj"):
        get_attack("nope")
    with pytest.raises(AttackError, match=r"unknown threat model.*linf"):
        get_threat_model("linf3")
    with pytest.raises(AttackError, match="takes no argument bogus"):
        get_attack("hsj", bogus=1)
    assert get_attack("hsj", max_queries=10, seed=3).max_queries == 10


def test_threat_models_resolve_per_family(linear):
    model, _, _ = linear
    box = ProbaModel(lambda Z: model.predict_proba(Z), D, K, name="blackbox")
    assert [n for n, _ in get_threat_model("linf").resolve(box)] == ["hsj"]
    assert [n for n, _ in get_threat_model("l2").resolve(box)] == ["hsj"]
    names = [n for n, _ in get_threat_model("linf").resolve(model)]
    assert names[-1] == "hsj" and set(names) <= set(applicable_attacks(model, "linf"))
    assert names[:3] == ["fmn", "fab", "pgd-refine"]
    assert [n for n, _ in get_threat_model("paper-pgd").resolve(model)] == ["paper-pgd"]
    l2 = [n for n, _ in get_threat_model("l2").resolve(model)]
    assert l2[:4] == ["deepfool", "fmn", "fab", "cw"] and "autoattack-refine" not in l2
    assert "autoattack-refine" in [n for n, _ in get_threat_model("l2").resolve(model, effort="full")]
    assert "autoattack-refine" in names
    assert "autoattack-refine" not in [n for n, _ in get_threat_model("linf").resolve(model, effort="fast")]
    with pytest.raises(AttackError, match="no attack of threat model 'l1' applies"):
        get_threat_model("l1").resolve(box)
    fast = [n for n, _ in get_threat_model("linf").resolve(box, effort="fast")]
    assert fast == ["hsj"] and dict(get_threat_model("linf").resolve(box, effort="fast"))["hsj"]["max_queries"] == 1000
    with pytest.raises(AttackError, match="effort"):
        get_threat_model("linf").resolve(box, effort="turbo")


def _xgb_or_forest():
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier

    X, y = make_classification(n_samples=200, n_features=5, n_informative=3, random_state=0)
    return RandomForestClassifier(n_estimators=5, max_depth=3, random_state=0).fit(X[:150], y[:150]), X[150:162], y[150:162]


def test_tree_ensemble_threat_model_is_exact():
    rf, X, y = _xgb_or_forest()
    model = wrap(rf)
    names = [n for n, _ in get_threat_model("linf").resolve(model)]
    assert "milp" in names and names[-1] == "hsj" and not {"fab", "fmn", "paper-pgd"} & set(names)
    assert [n for n, _ in get_threat_model("l2").resolve(model)] == ["milp", "hsj"]
    res = minimal_radius(rf, X, y, "linf", time_limit=20)
    cc = res.clean_correct
    ok = res.success & cc
    assert (rf.predict(res.x_adv[ok]) != y[ok]).all()  # the real sklearn model
    assert res.is_exact()[cc].all() and "exact_not_certified" not in res.flags
    # certified points are not attacked again
    assert all(np.isnan(res.per_attack["hsj"][cc])) and "hsj" not in res.attacks_used
    # hsj on the same points is an upper bound of the exact radius (up to the float32 grid of tree thresholds)
    h = minimal_radius(rf, X, y, "linf", attacks=["hsj"], max_queries=1000)
    assert (h.distance[cc] >= res.distance[cc] - 4 * np.finfo(np.float32).eps * (1 + np.abs(X[cc]).max(axis=1))).all()
    # the paper protocol falls back to the exact attacks on trees: robust accuracy = thresholded exact radii
    per_eps, used, rejected, _ = fixed_eps_per_point(rf, X, y, threat="paper-pgd")
    assert used[0] in ("veritas", "milp") and rejected == 0
    for e, robust in per_eps.items():
        np.testing.assert_array_equal(robust, res.distance > e)


def test_minimal_radius_black_box_and_torch(linear):
    model, X, y = linear
    correct = model.predict(X) == y
    # a raw torch module and a black-box callable both go through wrap()
    res = minimal_radius(model.module, X, y, "l2", attacks=["hsj"], max_queries=2000)
    _, exact = _linear_adversarial(model, X, y, "l2")
    assert res.by_attack[correct].tolist() == ["hsj"] * correct.sum()
    assert np.all(res.distance[correct] >= exact[correct] * (1 - 1e-9))
    assert np.median(res.distance[correct] / exact[correct]) < 1.02
    box = wrap(lambda Z: model.predict_proba(Z), n_features=D, name="box")
    r2 = minimal_radius(box, X, y, "linf", seed=1, effort="fast")
    assert r2.attacks_used == ["hsj"] and r2.success.all()
    assert (model.predict(r2.x_adv[correct]) != y[correct]).all()
    assert set(r2.flags) <= {"rejected_candidates", "black_box_only"} and "black_box_only" in r2.flags and r2.path == "black-box"
    assert r2.median > 0 and 0 < r2.auc() < 1


def test_gradient_masking_and_zero_gradient_flags():
    """A staircase model has zero gradients; the decision-based attack still breaks it."""
    from robustbench_align.attacks.decision import HopSkipJump

    torch.manual_seed(1)
    lin = torch.nn.Linear(4, 2).double()

    class Staircase(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin

        def forward(self, x):
            return torch.floor(self.lin(x) * 4) / 4

    masked = wrap(Staircase(), n_features=4, name="staircase")
    smooth = wrap(lin, name="smooth")
    X = np.random.default_rng(2).standard_normal((16, 4))
    y = smooth.predict(X)
    keep = masked.predict(X) == y
    X, y = X[keep], y[keep]
    res = EnsembleAttack([GradientLine(), HopSkipJump(max_queries=1000)]).run(masked, X, y, "l2")
    assert np.isinf(res.per_attack["gradient-line"]).all()
    assert "black_box_beats_white_box" in res.flags and "zero_gradients" in res.flags
    ok = EnsembleAttack([GradientLine(), HopSkipJump(max_queries=1000)]).run(smooth, X, y, "l2")
    assert "black_box_beats_white_box" not in ok.flags and "zero_gradients" not in ok.flags
    # fixed-eps version: the black box breaks points the gradient attack left robust
    fr = EnsembleAttack([GradientLine(), HopSkipJump(max_queries=1000)]).run_fixed(masked, X, y, "l2", [5.0])
    assert "black_box_beats_white_box" in fr.flags


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_default_threat_on_torch_model_matches_exact_radius(linear, norm):
    model, X, y = linear
    X, y = X[:12], y[:12]
    res = minimal_radius(model, X, y, norm, seed=0)
    _, exact = _linear_adversarial(model, X, y, norm)
    cc = res.clean_correct
    assert res.success.all() and res.rejected == 0 and not res.flags
    assert (model.predict(res.x_adv[cc]) != y[cc]).all()
    ratio = res.distance[cc] / exact[cc]
    assert ratio.min() >= 1 - 1e-6 and ratio.max() < 1.01
    assert set(res.attacks_used) >= {"fmn", "fab", "hsj"}
    assert set(res.by_attack[cc]) <= set(res.attacks_used)


def test_nondeterministic_and_softmax_flags(linear):
    model, X, _ = linear
    rng = np.random.default_rng(0)
    noisy = ProbaModel(lambda Z: np.clip(model.predict_proba(Z) + 0.01 * rng.standard_normal((Z.shape[0], K)), 0, None), D, K, name="noisy")
    assert checks.nondeterministic(noisy, X)[0] == "nondeterministic"
    assert checks.nondeterministic(model, X) is None
    soft = wrap(torch.nn.Sequential(model.module, torch.nn.Softmax(dim=1)), n_features=D)
    assert checks.softmax_output(soft, X)[0] == "softmax_output"
    assert checks.softmax_output(model, X) is None
    assert checks.black_box_beats_white_box(np.array([1.0, 1.0, np.nan]), np.array([1.0, 2.0, 1.0])) is not None
    assert checks.black_box_beats_white_box(np.array([1.0, 1.0]), np.array([1.0, 1.02])) is None


def test_bad_input_errors(linear):
    model, X, y = linear
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(AttackError, match="eps must be finite and > 0"):
            robust_accuracy(model, X, y, "linf", [0.1, bad], attacks=[FixedLinear()], from_radius=False)
    with pytest.raises(AttackError, match="unknown norm 'l3'"):
        minimal_radius(model, X, y, "l3")
    with pytest.raises(AttackError, match="unknown attack"):
        minimal_radius(model, X, y, attacks=["fgsm9"])
    with pytest.raises(AttackError, match="unknown threat model"):
        minimal_radius(model, X, y, threat="l7")
    with pytest.raises(AttackError, match="out of range"):
        minimal_radius(model, X, y + K, attacks=["hsj"])
    with pytest.raises(AttackError, match=f"expects {D} features but X has {D + 1}"):
        minimal_radius(model, np.hstack([X, X[:, :1]]), y, attacks=["hsj"])
    with pytest.raises(AttackError, match="takes argument max_querys"):
        minimal_radius(model, X, y, attacks=["hsj"], max_querys=5)
    box = ProbaModel(lambda Z: model.predict_proba(Z), D, K, name="box")
    with pytest.raises(AttackError, match=r"needs the torch_logits capability.*applicable attacks: hsj"):
        minimal_radius(box, X, y, "l2", attacks=[ExactLinear()])
    with pytest.raises(AttackError, match="does not support norm 'l1'"):
        minimal_radius(model, X, y, "l1", attacks=["hsj"])
    with pytest.raises(AttackError, match=r"'fab' needs the torch_logits capability, which 'box' lacks; applicable attacks: hsj$"):
        minimal_radius(box, X, y, "linf", attacks=["fab"])
    with pytest.raises(AttackError, match=r"'milp' needs the tree_ensemble capability.*applicable attacks: .*fab.*hsj"):
        minimal_radius(model, X, y, "linf", attacks=["milp"])
    for msg in ("eps must be finite",):
        with pytest.raises(AttackError, match=msg):
            EnsembleAttack([FixedLinear()]).run_fixed(model, X, y, "linf", [])


def test_failing_attack_is_recorded_not_fatal(linear):
    model, X, y = linear

    class Broken(MinimalAttack):
        name = "broken"

        def _attack(self, model, X, y, norm):
            raise RuntimeError("solver crashed")

    class Refuses(MinimalAttack):
        name = "refuses"

        def _attack(self, model, X, y, norm):
            raise AttackError("refuses: internal limit")

    res = EnsembleAttack([Broken(), Refuses(), ExactLinear()]).run(model, X, y, "linf")
    assert "solver crashed" in res.flags["attack_failed"] and "internal limit" in res.flags["attack_failed"]
    assert res.attacks_used == ["exact-linear"] and res.success.all()
    with pytest.raises(AttackError, match="every attack failed; broken: RuntimeError: solver crashed"):
        EnsembleAttack([Broken()]).run(model, X, y, "linf")
    with pytest.raises(AttackError, match="every attack failed"):
        EnsembleAttack([Broken()]).run_fixed(model, X, y, "linf", [0.5])


def test_result_frame_types(linear):
    model, X, y = linear
    df = robust_accuracy(model, X, y, "linf", attacks=[ExactLinear()])
    assert isinstance(df, pd.DataFrame) and list(df["eps"]) == list(default_eps_grid("linf"))
    assert df.attrs["attacks"] == ["exact-linear"] and df.attrs["rejected"] == 0


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_full_effort_on_a_trained_mlp(norm):
    from sklearn.datasets import make_classification

    X, y = make_classification(n_samples=400, n_features=8, n_informative=5, n_classes=3, random_state=0)
    X = (X - X.mean(0)) / X.std(0)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    Xt, yt = torch.tensor(X[:300], dtype=torch.float32), torch.tensor(y[:300])
    for _ in range(200):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(Xt), yt).backward()
        opt.step()
    Xe, ye = X[300:330], y[300:330]
    res = minimal_radius(net, Xe, ye, norm, effort="full", seed=0)
    model = wrap(net)
    cc = res.clean_correct
    assert res.success.all() and res.rejected == 0
    assert (model.predict(res.x_adv[cc]) != ye[cc]).all()
    for name, d in res.per_attack.items():  # the ensemble is the per-point minimum
        ran = ~np.isnan(d)
        assert (res.distance[ran] <= d[ran]).all(), name
    opt = res.optimality()
    assert all(0 <= v <= 1 + 1e-12 for v in opt.values()) and max(opt.values()) > 0.8
    # on a ReLU net hsj sometimes escapes the gradient attacks' local optima; that is the only flag allowed
    assert set(res.flags) <= {"black_box_beats_white_box"}


def test_result_says_which_path_it_came_from(linear):
    from robustbench_align.attacks.registry import attack_path

    model, X, y = linear
    assert EnsembleAttack([ExactLinear()]).run(model, X, y, "l2").path == "exact"
    res = EnsembleAttack([GradientLine(), ExactLinear(certify=False)]).run(model, X, y, "l2")
    assert res.path == "exact" and "black_box_only" not in res.flags
    assert EnsembleAttack([GradientLine()]).run(model, X, y, "l2").path == "gradient"
    box = ProbaModel(lambda Z: model.predict_proba(Z), D, K, name="box")
    bb = minimal_radius(box, X, y, "l2", attacks=[("hsj", {"max_queries": 200})])
    assert bb.path == "black-box" and "black_box_only" in bb.flags
    fr = EnsembleAttack([FixedLinear()]).run_fixed(model, X, y, "linf", [0.5])
    assert fr.path == "gradient" and "black_box_only" not in fr.flags
    assert attack_path(["fmn", "hsj"]) == "gradient" and attack_path(["milp#2", "hsj"]) == "exact"
    assert attack_path(["hsj"]) == "black-box" and attack_path(["pgd-refine"]) == "gradient" and attack_path([]) == ""
