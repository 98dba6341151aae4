"""Gradient attacks (torchattacks / pyautoattack / own FMN and paper PGD) on real small models.

Every check re-predicts with the model itself: adversarials must flip it and respect the budget;
on linear models the minimal radii must match the closed form |margin| / ||w||_dual.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.datasets import make_classification
from sklearn.preprocessing import StandardScaler

from robustbench_align.attacks.autoattack import AutoAttack, attack_plan
from robustbench_align.attacks.base import Candidates, FixedEpsAttack, Norm, distances
from robustbench_align.attacks.bisection import MinimalByBisection, stab_groups
from robustbench_align.attacks.cw import CW
from robustbench_align.attacks.deepfool import DeepFool
from robustbench_align.attacks.fab import FAB
from robustbench_align.attacks.fmn import FMN
from robustbench_align.attacks.paper_pgd import PaperPGD
from robustbench_align.attacks.pgd import PGD
from robustbench_align.attacks.torch_adapter import BoxMap, seeded
from robustbench_align.errors import AttackError
from robustbench_align.models.base import ProbaModel, TorchModel

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------
# models
# ----------------------------------------------------------------------------------------
def _train_mlp(n_classes: int, d: int = 10, n: int = 400, seed: int = 0, shift: float = 0.0, to_unit: bool = False):
    X, y = make_classification(n_samples=n, n_features=d, n_informative=6, n_redundant=2, n_classes=n_classes,
                               n_clusters_per_class=1, class_sep=1.0, random_state=seed)
    X = StandardScaler().fit_transform(X)
    if to_unit:  # features inside [0.1, 0.9], so the libraries' own [0, 1] clamp is comparable
        X = 0.1 + 0.8 * (X - X.min(axis=0)) / (X.max(axis=0) - X.min(axis=0))
    X = X + shift
    g = torch.Generator().manual_seed(seed)
    net = nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, n_classes))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (1.0 / np.sqrt(p.shape[-1])))
    Xt = torch.tensor(X - shift, dtype=torch.float32)
    Xt = (Xt - 0.5) * 4 if to_unit else Xt
    yt = torch.tensor(y)
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    for _ in range(80):
        opt.zero_grad()
        nn.functional.cross_entropy(net(Xt), yt).backward()
        opt.step()
    pre = nn.Identity() if shift == 0 and not to_unit else _Affine(-shift - (0.5 if to_unit else 0.0), 4.0 if to_unit else 1.0)
    module = nn.Sequential(pre, *net)
    return TorchModel(module, d, n_classes, name=f"mlp{n_classes}"), X, y


class _Affine(nn.Module):
    """(x + shift) * scale: lets a net trained on standardised data take raw-unit inputs."""

    def __init__(self, shift: float, scale: float):
        super().__init__()
        self.shift, self.scale = shift, scale

    def forward(self, x):
        return (x + self.shift) * self.scale


@pytest.fixture(scope="module")
def mlp3():
    m, X, y = _train_mlp(3, seed=1)
    keep = np.flatnonzero(m.predict(X) == y)[:60]
    return m, X[keep], y[keep]


@pytest.fixture(scope="module")
def mlp2():
    m, X, y = _train_mlp(2, seed=2)
    keep = np.flatnonzero(m.predict(X) == y)[:30]
    return m, X[keep], y[keep]


def _linear_model(seed: int = 0, d: int = 6, offset: float = 0.0):
    """2 classes, logits (-f/2, f/2) with f(x) = w.x + b: the margin is exactly f(x)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=d)
    b = 0.3
    lin = nn.Linear(d, 2, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(np.stack([-w / 2, w / 2])))
        lin.bias.copy_(torch.tensor([-b / 2, b / 2]))
    m = TorchModel(lin, d, 2, name="linear")
    X = rng.normal(size=(40, d)) + offset
    f = X @ w + b
    keep = np.abs(f) > 0.05
    X, f = X[keep], f[keep]
    y = (f > 0).astype(np.int64)
    return m, X, y, w, f


def _check_valid(model, X, y, res, eps=None):
    """The contract: successes flip the real model, distances are the true norms, budgets hold."""
    flipped = res.success & (res.distance > 0)
    assert np.all(model.predict(res.x_adv[flipped]) != y[flipped])
    np.testing.assert_allclose(distances(X, res.x_adv, res.norm)[flipped], res.distance[flipped], rtol=0, atol=0)
    assert np.all(np.isinf(res.distance[~res.success]))
    if eps is not None:
        assert np.all(res.distance[flipped] <= np.broadcast_to(eps, flipped.shape)[flipped])
    assert res.wall_time > 0


# ----------------------------------------------------------------------------------------
# BoxMap
# ----------------------------------------------------------------------------------------
def test_boxmap_contains_balls_and_maps_norms_exactly():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 7)) * np.arange(1, 8) + 50.0
    eps = 0.3
    box = BoxMap.for_ball(X, "linf", eps)
    assert np.all(box.lo <= X - eps) and np.all(box.hi >= X + eps)
    assert box.scale.size == 1  # one scale for every feature
    U = box.to_unit(X)
    assert U.min() > 0 and U.max() < 1
    np.testing.assert_allclose(box.from_unit(U), X, rtol=0, atol=1e-12)
    Z = X + rng.normal(size=X.shape) * 0.1
    for norm in ("linf", "l2", "l1"):
        np.testing.assert_allclose(distances(U, box.to_unit(Z), norm) * box.scale[0], distances(X, Z, norm), rtol=1e-12)
    np.testing.assert_allclose(box.unit_eps(eps) * box.scale, eps)
    per = BoxMap.per_row_ball(X, np.linspace(0.1, 1.0, 30))
    np.testing.assert_allclose(per.to_unit(X), 0.5)
    with pytest.raises(AttackError, match="per-row"):
        per.from_unit(np.zeros((3, 7)))
    sq = box.unit_tensor(X, "square")
    assert tuple(sq.shape) == (30, 1, 5, 5)
    np.testing.assert_allclose(box.from_unit(sq), X, atol=1e-5 * box.scale[0])


def test_project_to_ball_never_reads_above_eps():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 5)) * 1e3
    for norm in ("linf", "l2", "l1"):
        Xa = X + rng.normal(size=X.shape)
        P = Norm.of(norm).project(X, Xa, 0.1)
        assert np.all(distances(X, P, norm) <= 0.1)


def test_far_from_unit_box_inputs_are_attacked_in_feature_space():
    """Features around 50: the libraries' [0, 1] clamp must never reach feature space."""
    m, X, y = _train_mlp(3, seed=3, shift=50.0)
    keep = np.flatnonzero(m.predict(X) == y)[:30]
    X, y = X[keep], y[keep]
    assert X.min() > 40
    eps = 0.4
    for attack, kw in ((AutoAttack(square_queries=30), {"eps": eps}), (PGD(steps=30), {"eps": eps}), (FAB(restarts=1, steps=50), {})):
        res = attack.run(m, X, y, "linf", **kw)
        _check_valid(m, X, y, res, kw.get("eps"))
        assert res.success.mean() > 0.1  # the attack does reach the boundary
        hit = res.success
        assert res.x_adv[hit].min() > 40  # never clamped towards [0, 1]
        if "eps" in kw:
            assert np.all(np.abs(res.x_adv[hit] - X[hit]).max(axis=1) <= eps)


# ----------------------------------------------------------------------------------------
# minimal attacks on linear models (closed form)
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("attack", [FAB(restarts=1), DeepFool(), FMN(), CW()], ids=lambda a: a.name)
def test_linear_l2_radius_is_exact(attack):
    m, X, y, w, f = _linear_model(offset=3.0)
    res = attack.run(m, X, y, "l2")
    _check_valid(m, X, y, res)
    assert res.success.all()
    exact = np.abs(f) / np.linalg.norm(w)
    assert np.all(res.distance >= exact * (1 - 1e-9))  # nothing beats the closed form
    # CW's Adam steps in tanh space bend the direction slightly; the others project exactly
    np.testing.assert_allclose(res.distance, exact, rtol=1e-2 if attack.name == "cw" else 1e-4)


@pytest.mark.parametrize("attack", [FAB(restarts=1), FMN()], ids=lambda a: a.name)
def test_linear_linf_and_l1_radius_is_exact(attack):
    m, X, y, w, f = _linear_model(seed=1)
    res = attack.run(m, X, y, "linf")
    _check_valid(m, X, y, res)
    np.testing.assert_allclose(res.distance, np.abs(f) / np.abs(w).sum(), rtol=1e-4)
    res = attack.run(m, X, y, "l1")
    _check_valid(m, X, y, res)
    np.testing.assert_allclose(res.distance, np.abs(f) / np.abs(w).max(), rtol=1e-4)


class _VertexSearch(FixedEpsAttack):
    """A black-box linf attack that only calls predict: try every vertex of the eps-cube (tiny d)."""

    name = "vertex"
    norms = ("linf",)

    def _attack(self, model, X, y, norm, eps):
        d = X.shape[1]
        signs = np.array(np.meshgrid(*[[-1.0, 1.0]] * d)).reshape(d, -1).T
        cand = X.copy()
        for s in signs:
            trial = X + eps[:, None] * s
            hit = (model.predict(trial) != y) & np.all(cand == X, axis=1)
            cand[hit] = trial[hit]
        return Candidates(x_adv=cand)


def test_bisection_of_black_box_and_vectorised_attacks():
    m, X, y, w, f = _linear_model(seed=2, d=3)
    exact = np.abs(f) / np.abs(w).sum()
    calls = []

    class Counting(_VertexSearch):
        def _attack(self, model, X, y, norm, eps):
            calls.append(np.unique(eps).size)
            return super()._attack(model, X, y, norm, eps)

    res = MinimalByBisection(Counting(), steps=14, rtol=1e-4, refine=False).run(m, X, y, "linf")
    _check_valid(m, X, y, res)
    assert set(calls) == {1}  # a scalar-eps attack only ever gets one eps per call
    assert np.all(res.distance >= exact * (1 - 1e-9))
    np.testing.assert_allclose(res.distance, exact, rtol=2e-3)
    res = MinimalByBisection(PGD(steps=20, restarts=1), steps=14, rtol=1e-4).run(m, X, y, "linf")
    _check_valid(m, X, y, res)
    assert res.flags["calls"] <= 20 + 14  # one call per round
    np.testing.assert_allclose(res.distance, exact, rtol=1e-3)
    groups = stab_groups(np.array([0.0, 1.0, 2.5, 0.5]), np.array([1.0, 2.0, 3.0, 1.2]))
    assert [len(mem) for _, mem in groups] == [3, 1]


# ----------------------------------------------------------------------------------------
# MLPs: validity, strength, determinism
# ----------------------------------------------------------------------------------------
def test_minimal_attacks_on_mlp_are_valid_and_consistent(mlp3):
    m, X, y = mlp3
    med = {}
    runs = ((FMN(), ("linf", "l2", "l1")), (FAB(restarts=2), ("linf", "l2", "l1")), (DeepFool(), ("l2",)), (CW(steps=60, binary_steps=6), ("l2",)))
    for attack, norms in runs:
        for norm in norms:
            res = attack.run(m, X, y, norm)
            _check_valid(m, X, y, res)
            assert res.success.mean() >= 0.95, (attack.name, norm)
            assert res.rejected == 0
            med[attack.name, norm] = np.median(res.distance)
    # FMN and FAB agree within a few percent; DeepFool (one linearisation path) is not better than both
    for norm in ("linf", "l2", "l1"):
        assert med["fmn", norm] <= 1.05 * med["fab", norm] and med["fab", norm] <= 1.05 * med["fmn", norm]
    assert med["cw", "l2"] <= 1.05 * min(med["fmn", "l2"], med["fab", "l2"])


def test_fixed_eps_attacks_within_budget_and_agree_with_minimal(mlp3):
    m, X, y = mlp3
    fmn = FMN().run(m, X, y, "linf")
    eps = float(np.median(fmn.distance))
    for attack in (PGD(), PGD(loss="margin"), PaperPGD(), AutoAttack(square_queries=200)):
        res = attack.run(m, X, y, "linf", eps)
        _check_valid(m, X, y, res, eps)
        # a fixed-eps attack should find about as many adversarials as the minimal attack implies
        if attack.name != "paper-pgd":
            assert res.robust_accuracy(eps)[0] <= fmn.robust_accuracy(eps)[0] + 0.1
    per_point = PGD().run(m, X, y, "l2", np.linspace(0.1, 2.0, X.shape[0]))
    _check_valid(m, X, y, per_point, np.linspace(0.1, 2.0, X.shape[0]))


def test_paper_pgd_is_deterministic_and_leaves_global_rng_alone(mlp3):
    m, X, y = mlp3
    state = torch.get_rng_state()
    a = PaperPGD(seed=3).run(m, X, y, "linf", 1.0)
    assert torch.equal(state, torch.get_rng_state())
    b = PaperPGD(seed=3).run(m, X, y, "linf", 1.0)
    c = PaperPGD(seed=4).run(m, X, y, "linf", 1.0)
    np.testing.assert_array_equal(a.x_adv, b.x_adv)
    assert not np.array_equal(a.x_adv, c.x_adv)
    _check_valid(m, X, y, a, 1.0)
    assert 0.0 <= a.flags["paper_robust_accuracy"] <= 1.0
    assert a.flags["paper_robust_accuracy"] >= a.robust_accuracy(1.0)[0]
    assert np.all(a.queries == 21)


def test_library_attacks_are_seeded(mlp3):
    m, X, y = mlp3
    state = torch.get_rng_state()
    r1 = FAB(restarts=2, seed=5).run(m, X[:20], y[:20], "l2")
    r2 = FAB(restarts=2, seed=5).run(m, X[:20], y[:20], "l2")
    np.testing.assert_array_equal(r1.x_adv, r2.x_adv)
    p1 = PGD(seed=1).run(m, X, y, "linf", 0.2)
    p2 = PGD(seed=1).run(m, X, y, "linf", 0.2)
    np.testing.assert_array_equal(p1.x_adv, p2.x_adv)
    assert torch.equal(state, torch.get_rng_state())


def _direct_autoattack(m, X, y, eps, attacks, settings, square_queries):
    """pyautoattack run directly on [0, 1] inputs (NCHW), standard-style settings, same attack list."""
    import pyautoattack

    from robustbench_align.attacks.autoattack import configure, quiet_logger

    net = nn.Sequential(nn.Flatten(), m.module)
    aa = pyautoattack.AutoAttack(net, attacks=attacks, device="cpu", eps=eps, norm="Linf", seed=0, version="custom")
    configure(aa, {**settings, "square_queries": square_queries, "apgd_restarts": 1, "fab_restarts": 1})
    xt = torch.tensor(X, dtype=torch.float32).reshape(len(X), -1, 1, 1)
    with quiet_logger(), seeded(0):
        adv, _ = aa.run_standard_evaluation(xt, torch.tensor(y), batch_size=500)
    return float(np.mean(m.predict(adv.reshape(len(X), -1).double().numpy()) == y))


@pytest.mark.parametrize("n_classes", [2, 3])
def test_autoattack_wrapper_matches_direct_pyautoattack(n_classes):
    m, X, y = _train_mlp(n_classes, seed=10 + n_classes, to_unit=True, n=500)
    keep = np.flatnonzero(m.predict(X) == y)[:200]
    X, y = X[keep], y[keep]
    assert X.min() >= 0.1 - 1e-9 and X.max() <= 0.9 + 1e-9 and len(y) == 200
    eps = 0.05
    attacks, settings = attack_plan(n_classes, "linf")
    ours = AutoAttack(square_queries=500).run(m, X, y, "linf", eps)
    _check_valid(m, X, y, ours, eps)
    direct = _direct_autoattack(m, X, y, eps, attacks, settings, 500)
    assert ours.flags["attacks"] == attacks
    assert 0.0 < ours.robust_accuracy(eps)[0] < 1.0
    assert ours.robust_accuracy(eps)[0] <= direct + 0.005


def test_autoattack_plans_by_class_count():
    assert attack_plan(2, "linf")[0] == ["apgd-ce", "fab-t", "square"]
    assert attack_plan(3, "l2")[0] == ["apgd-ce", "apgd-dlr", "fab-t", "square"]
    acts, st = attack_plan(12, "linf")
    assert acts == ["apgd-ce", "apgd-t", "fab-t", "square"] and st["apgd_targets"] == 9 and st["fab_targets"] == 9
    acts, st = attack_plan(4, "l1")
    assert st["apgd_targets"] == 3 and st["apgd_restarts"] == 5 and st["apgd_largereps"]
    with pytest.raises(AttackError, match="4 classes"):
        AutoAttack(attacks=["apgd-t"]).plan(3, "linf")


def test_two_class_mlp_all_attacks(mlp2):
    m, X, y = mlp2
    for norm in ("linf", "l2"):
        fmn = FMN(rel_stepsizes=(1.0, 3.0)).run(m, X, y, norm)
        fab = FAB(restarts=1).run(m, X, y, norm)
        _check_valid(m, X, y, fmn)
        _check_valid(m, X, y, fab)
        eps = float(np.median(fab.distance))
        aa = AutoAttack(square_queries=50).run(m, X, y, norm, eps)
        _check_valid(m, X, y, aa, eps)
        assert aa.robust_accuracy(eps)[0] <= fab.robust_accuracy(eps)[0] + 0.05
        assert aa.flags["attacks"] == ["apgd-ce", "fab-t", "square"]
    res = AutoAttack(square_queries=30).run(m, X[:20], y[:20], "l1", 1.0)  # Square on the padded square layout
    _check_valid(m, X[:20], y[:20], res, 1.0)


# ----------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------
def test_bad_input_raises_attack_error(mlp3):
    m, X, y = mlp3
    for eps in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(AttackError, match="eps"):
            PGD().run(m, X, y, "linf", eps)
        with pytest.raises(AttackError, match="eps"):
            AutoAttack().run(m, X, y, "linf", eps)
    with pytest.raises(AttackError, match="one value or one per point"):
        PaperPGD().run(m, X, y, "linf", [0.1, 0.2])
    with pytest.raises(AttackError, match="unknown norm"):
        FMN().run(m, X, y, "l3")
    with pytest.raises(AttackError, match="does not support norm"):
        DeepFool().run(m, X, y, "linf")
    with pytest.raises(AttackError, match="out of range"):
        FAB().run(m, X, np.full(len(y), 3), "l2")
    with pytest.raises(AttackError, match="features"):
        FMN().run(m, X[:, :5], y, "l2")
    bb = ProbaModel(lambda Z: m.predict_proba(Z), n_features=X.shape[1], n_classes=3, name="black-box")
    for attack, extra in ((FMN(), ()), (PGD(), (0.1,)), (AutoAttack(), (0.1,)), (PaperPGD(), (0.1,))):
        with pytest.raises(AttackError, match="torch_logits"):
            attack.run(bb, X, y, "linf", *extra)
    with pytest.raises(AttackError, match="FixedEpsAttack"):
        MinimalByBisection(FMN())
    with pytest.raises(AttackError, match="loss"):
        PGD(loss="hinge")
    with pytest.raises(AttackError, match="steps"):
        FAB(steps=0)


def test_empty_input_and_clean_errors(mlp3):
    m, X, y = mlp3
    res = FMN().run(m, X[:0], y[:0], "l2")
    assert res.n == 0
    y_wrong = (y + 1) % 3
    res = FAB(restarts=1).run(m, X[:5], y_wrong[:5], "l2")
    assert np.all(res.distance == 0) and res.success.all()


def test_registry_builds_these_attacks(mlp3):
    from robustbench_align.attacks.registry import get_attack

    m, X, y = mlp3
    for name in ("fmn", "fab", "deepfool", "cw", "pgd", "paper-pgd", "autoattack", "pgd-bisect", "autoattack-bisect"):
        a = get_attack(name)
        assert a.applicable(m, "l2" if name in ("deepfool", "cw") else "linf")
    res = get_attack("pgd-bisect", steps=4, seed=1).run(m, X[:10], y[:10], "linf")
    _check_valid(m, X[:10], y[:10], res)
    assert res.attack == "pgd-bisect"


def test_missing_backends_say_how_to_install(mlp3, monkeypatch):
    import sys

    m, X, y = mlp3
    monkeypatch.setitem(sys.modules, "torchattacks", None)  # makes `import torchattacks` fail
    with pytest.raises(AttackError, match=r"pip install --no-deps torchattacks==3\.5\.1"):
        FAB().run(m, X, y, "l2")
    res = FMN().run(m, X[:5], y[:5], "l2")  # FMN and the paper protocol need no backend
    assert res.success.all()
    monkeypatch.setitem(sys.modules, "pyautoattack", None)
    with pytest.raises(AttackError, match="pip install pyautoattack"):
        AutoAttack().run(m, X, y, "linf", 0.1)
