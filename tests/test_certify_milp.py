"""ReluMilpCertifier: exact radii against an independent activation-pattern enumeration, soundness
against the attack ensemble on trained MLPs, budgets and refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from torch import nn

from robustbench_align import ConfigError, minimal_radius, wrap
from robustbench_align.certify.base import Certificate
from robustbench_align.certify.relu_milp import NO_UPPER, ReluMilpCertifier
from robustbench_align.models.mlp import MLP

torch.set_num_threads(1)


def _dist(X: np.ndarray, Xa: np.ndarray, norm: str) -> np.ndarray:
    d = np.abs(np.atleast_2d(Xa) - np.atleast_2d(X))
    return d.max(1) if norm == "linf" else d.sum(1)


# ------------------------------------------------------------------------------------------------
# independent reference: enumerate every activation pattern, one LP per (pattern, target)
# ------------------------------------------------------------------------------------------------
def _tiny_net(seed: int, widths: tuple[int, ...] = (4, 4, 4, 3)) -> nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(widths) - 1):
        lin = nn.Linear(widths[i], widths[i + 1]).double()
        with torch.no_grad():
            lin.weight.copy_(torch.randn(widths[i + 1], widths[i], generator=g, dtype=torch.float64))
            lin.bias.copy_(0.5 * torch.randn(widths[i + 1], generator=g, dtype=torch.float64))
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _weights(module: nn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()) for m in module if isinstance(m, nn.Linear)]


def _reference_radius(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray, y: int, norm: str) -> float:
    """min over activation patterns and targets of the LP min ||x' - x|| s.t. the pattern holds at x'
    and z_k(x') - z_y(x') >= 0 (the network is affine on each pattern's region).

    Every pattern is enumerated neuron by neuron; a partial pattern is dropped only when its LP
    (fewer constraints, so a lower minimum) is infeasible or already no better than the best radius.
    """
    d = x.size
    # LP variables: linf (x' (d), t); l1 (x' (d), s (d)) with |x' - x| <= s
    n_var = d + (1 if norm == "linf" else d)
    c = np.zeros(n_var)
    if norm == "linf":
        c[d] = 1.0
        G = np.vstack([np.c_[np.eye(d), -np.ones((d, 1))], np.c_[-np.eye(d), -np.ones((d, 1))]])
    else:
        c[d:] = 1.0
        G = np.vstack([np.c_[np.eye(d), -np.eye(d)], np.c_[-np.eye(d), -np.eye(d)]])
    g = np.r_[x, -x]
    var_bounds = [(None, None)] * d + [(0, None)] * (n_var - d)
    best = [np.inf]
    n_lp = [0]

    def lp(rows: list[np.ndarray], rhs: list[float]) -> float:
        n_lp[0] += 1
        A = np.vstack([G, *[np.r_[r, np.zeros(n_var - d)][None, :] for r in rows]])
        res = linprog(c, A_ub=A, b_ub=np.r_[g, rhs], bounds=var_bounds, method="highs")
        return float(res.fun) if res.status == 0 else np.inf

    def leaf(rows: list[np.ndarray], rhs: list[float], M: np.ndarray, m0: np.ndarray) -> None:
        W, b = layers[-1]
        out, o0 = W @ M, W @ m0 + b
        for k in range(out.shape[0]):
            if k != y:  # -(z_k - z_y) <= 0
                best[0] = min(best[0], lp([*rows, -(out[k] - out[y])], [*rhs, float(o0[k] - o0[y])]))

    def dfs(layer: int, j: int, rows: list[np.ndarray], rhs: list[float], M: np.ndarray, m0: np.ndarray, s: list[float]) -> None:
        if layer == len(layers) - 1:
            leaf(rows, rhs, M, m0)
            return
        W, b = layers[layer]
        Z, z0 = W @ M, W @ m0 + b
        if j == W.shape[0]:
            sv = np.asarray(s)
            dfs(layer + 1, 0, rows, rhs, sv[:, None] * Z, sv * z0, [])
            return
        clean_on = float(Z[j] @ x + z0[j]) > 0
        for on in (clean_on, not clean_on):  # the clean point's side first: a good radius early
            sign = -1.0 if on else 1.0  # active: -z <= 0, inactive: z <= 0
            r2, h2 = [*rows, sign * Z[j]], [*rhs, float(-sign * z0[j])]
            if lp(r2, h2) < best[0]:
                dfs(layer, j + 1, r2, h2, M, m0, [*s, 1.0 if on else 0.0])

    dfs(0, 0, [], [], np.eye(d), np.zeros(d), [])
    return best[0]


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_matches_activation_pattern_enumeration(norm: str) -> None:
    cert = ReluMilpCertifier()
    checked = 0
    for seed in (0, 1):
        module = _tiny_net(seed)
        model = wrap(module, n_features=4)
        layers = _weights(module)
        X = np.random.default_rng(10 + seed).normal(size=(4, 4))
        y = model.predict(X)
        ref = np.array([_reference_radius(layers, X[i], int(y[i]), norm) for i in range(len(X))])
        assert np.all(np.isfinite(ref)) and np.all(ref > 0)
        upper = 1.5 * ref  # any verified-looking box above the radius; the MILP never relies on more
        c = cert.certify(model, X, y, norm, upper)
        np.testing.assert_allclose(c.lower, ref, rtol=1e-6)
        assert np.all(c.lower <= ref * (1 + 1e-9))
        assert c.exact.all() and c.witness.all(), list(c.reason)
        assert np.all(model.predict(c.x_witness) != y)
        wd = _dist(X, c.x_witness, norm)
        assert np.all(wd <= c.lower * (1 + 1e-6)) and np.all(wd >= ref * (1 - 1e-6))
        assert set(c.method) == {"milp"} and set(c.reason) == {"optimal"}
        assert np.all(c.work >= 1)
        checked += len(X)
    assert checked == 8


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_matches_enumeration_wider(norm: str) -> None:
    module = _tiny_net(7, (4, 5, 5, 3))
    model = wrap(module, n_features=4)
    X = np.random.default_rng(3).normal(size=(6, 4))
    y = model.predict(X)
    ref = np.array([_reference_radius(_weights(module), X[i], int(y[i]), norm) for i in range(len(X))])
    c = ReluMilpCertifier().certify(model, X, y, norm, 2.0 * ref)
    np.testing.assert_allclose(c.lower, ref, rtol=1e-6)
    assert c.exact.all()


# ------------------------------------------------------------------------------------------------
# trained MLPs: never above the attacks, witnesses flip, mostly exact
# ------------------------------------------------------------------------------------------------
Trained = tuple[MLP, np.ndarray, np.ndarray, dict[str, np.ndarray]]


def _trained(dtype: str, norms: tuple[str, ...]) -> Trained:
    """A 10 -> 16 -> 16 -> 2 ReLU MLP, its clean-correct points among the first 12 and their attack radii."""
    from sklearn.datasets import make_classification

    X, y = make_classification(300, 10, n_informative=5, n_redundant=0, random_state=0)
    X = ((X - X.mean(0)) / X.std(0)).astype(np.float64)
    model = MLP(hidden=(16, 16), epochs=20, random_state=0, dtype=dtype).fit(X, y)
    Xt, yt = X[:12], y[:12].astype(np.int64)
    keep = model.predict(Xt) == yt
    Xt, yt = Xt[keep], yt[keep]
    upper = {norm: np.asarray(minimal_radius(model, Xt, yt, norm=norm, effort="fast").distance, dtype=np.float64) for norm in norms}
    return model, Xt, yt, upper


@pytest.fixture(scope="module")
def trained64() -> Trained:
    return _trained("float64", ("linf", "l1"))


@pytest.fixture(scope="module")
def trained32() -> Trained:
    return _trained("float32", ("linf",))


def _check_sound(model: MLP, X: np.ndarray, y: np.ndarray, norm: str, upper: np.ndarray, c: Certificate) -> np.ndarray:
    """Bounds never above the attack radius, witnesses flip and lie between the bound and the box; their distances."""
    assert np.all(c.lower <= upper) and np.all(c.lower > 0)
    w = c.witness
    assert np.all(model.predict(c.x_witness[w]) != y[w])
    wd = _dist(X[w], c.x_witness[w], norm)
    assert np.all(wd >= c.lower[w]) and np.all(wd <= upper[w] * (1 + 1e-3))
    assert np.all(c.witness[c.exact])
    assert np.all(wd[c.exact[w]] <= c.lower[w][c.exact[w]] * (1 + 1e-6))
    return wd


@pytest.mark.parametrize("norm", ["linf", "l1"])
def test_trained_float64_mlp_exact_and_sound(trained64: Trained, norm: str) -> None:
    model, X, y, uppers = trained64
    upper = uppers[norm]
    assert np.all(np.isfinite(upper))
    c = ReluMilpCertifier().certify(model, X, y, norm, upper)
    _check_sound(model, X, y, norm, upper, c)
    assert c.exact.mean() >= 0.75, list(c.reason)


def test_trained_float32_mlp_sound(trained32: Trained) -> None:
    """float32: the bound is for margins >= -delta (the rigorous rounding band, ~1e-5 in logits here),
    so the model's own flips start a relative ~1e-4 beyond it; the bracket is tight but rarely
    within the 1e-6 that `exact` requires."""
    model, X, y, uppers = trained32
    upper = uppers["linf"]
    c = ReluMilpCertifier().certify(model, X, y, "linf", upper)
    wd = _check_sound(model, X, y, "linf", upper, c)
    assert c.witness.mean() >= 0.75
    assert np.median(wd / c.lower[c.witness]) <= 1 + 1e-3
    assert np.median(c.lower / upper) >= 0.99


# ------------------------------------------------------------------------------------------------
# budgets, refusals, missing upper bounds
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "100"])
def test_node_limit_validated(bad: object) -> None:
    with pytest.raises(ConfigError):
        ReluMilpCertifier(node_limit=bad)  # type: ignore[arg-type]


def test_other_budgets_validated() -> None:
    with pytest.raises(ConfigError):
        ReluMilpCertifier(time_limit=0)
    with pytest.raises(ConfigError):
        ReluMilpCertifier(shrink_steps=-1)
    with pytest.raises(ConfigError):
        ReluMilpCertifier(tighten="yes")  # type: ignore[arg-type]
    assert ReluMilpCertifier(shrink_steps=0).shrink_steps == 0


def test_tanh_network_refused() -> None:
    module = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    model = wrap(module, n_features=4)
    reason = ReluMilpCertifier().refuses(model)
    assert isinstance(reason, str) and "tanh" in reason
    X = np.zeros((2, 4))
    c = ReluMilpCertifier().certify(model, X, model.predict(X), "linf", np.ones(2))
    assert np.all(c.lower == 0) and not c.witness.any() and c.reason[0] == reason


def test_relu_network_accepted_and_l2_rejected() -> None:
    model = wrap(_tiny_net(0), n_features=4)
    assert ReluMilpCertifier().refuses(model) is None
    with pytest.raises(ConfigError, match="quadratic"):
        ReluMilpCertifier().certify(model, np.zeros((1, 4)), model.predict(np.zeros((1, 4))), "l2", np.ones(1))


def test_no_upper_bound_gives_zero() -> None:
    module = _tiny_net(0)
    model = wrap(module, n_features=4)
    X = np.random.default_rng(10).normal(size=(3, 4))
    y = model.predict(X)
    ref = _reference_radius(_weights(module), X[1], int(y[1]), "linf")
    c = ReluMilpCertifier().certify(model, X, y, "linf", np.array([np.inf, 1.5 * ref, np.inf]))
    assert c.lower[0] == 0 and c.lower[2] == 0 and c.reason[0] == NO_UPPER and c.reason[2] == NO_UPPER
    assert not c.exact[0] and not c.witness[0] and np.array_equal(c.x_witness[0], X[0])
    assert c.lower[1] == pytest.approx(ref, rel=1e-6) and c.exact[1]


@pytest.mark.parametrize("shrink_steps", [0, 4])
def test_node_limit_gives_sound_dual_bound(trained64: Trained, shrink_steps: int) -> None:
    model, X, y, uppers = trained64
    X, y, upper = X[:4], y[:4], uppers["linf"][:4]
    full = ReluMilpCertifier().certify(model, X, y, "linf", upper)
    tight = ReluMilpCertifier(node_limit=1, shrink_steps=shrink_steps).certify(model, X, y, "linf", upper)
    assert any(r.startswith("node limit") for r in tight.reason)
    nearest = np.where(full.witness, _dist(X, full.x_witness, "linf"), upper)
    assert np.all(tight.lower <= nearest) and np.all(tight.lower >= 0)
    w = tight.witness
    assert np.all(model.predict(tight.x_witness[w]) != y[w])
    again = ReluMilpCertifier(node_limit=1, shrink_steps=shrink_steps).certify(model, X, y, "linf", upper)
    np.testing.assert_array_equal(tight.lower, again.lower)  # a deterministic budget
    np.testing.assert_array_equal(tight.work, again.work)


def test_time_limit_is_a_flagged_safety_net(trained64: Trained) -> None:
    model, X, y, uppers = trained64
    X, y, upper = X[:3], y[:3], uppers["linf"][:3]
    c = ReluMilpCertifier(time_limit=1e-3).certify(model, X, y, "linf", upper)
    assert "milp_time_limit" in c.flags and c.flags["milp_time_limit"].startswith("3 of 3 points")
    assert all(r.startswith("time limit") for r in c.reason)
    assert np.all((c.lower >= 0) & (c.lower <= upper))
