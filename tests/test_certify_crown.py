"""Bound-propagation certificates (IBP, CROWN, alpha-CROWN): network extraction, soundness, ordering, budgets."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import robustbench_align as rba
from robustbench_align.certify.crown import (
    AlphaCrownCertifier,
    CrownCertifier,
    IBPCertifier,
    layer_bounds,
    margin_bounds,
    rounding_bound,
)
from robustbench_align.certify.network import Activation, Affine, Network, apply_activation, network_of
from robustbench_align.errors import ConfigError
from robustbench_align.models.base import wrap
from robustbench_align.models.grokalign import GrokAlignMLP
from robustbench_align.models.mlp import MLP

NORM_P = {"linf": np.inf, "l2": 2.0, "l1": 1.0}


def _data(n: int = 300, d: int = 10, classes: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import make_classification

    X, y = make_classification(n, d, n_informative=min(d, 5), n_redundant=0, n_classes=classes, n_clusters_per_class=1,
                               random_state=seed)
    X = (X - X.mean(0)) / X.std(0)
    return X.astype(np.float64), y.astype(np.int64)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return _data()


_MODELS: dict[str, MLP] = {}


def _mlp(activation: str, hidden: tuple[int, ...] = (16, 16), dtype: str = "float32", classes: int = 2) -> MLP:
    key = f"{activation}-{hidden}-{dtype}-{classes}"
    if key not in _MODELS:
        X, y = _data(classes=classes)
        _MODELS[key] = MLP(hidden=list(hidden), activation=activation, epochs=15, lr=3e-3, dtype=dtype, random_state=0).fit(X, y)
    return _MODELS[key]


def _in_ball(rng: np.random.Generator, X: np.ndarray, eps: np.ndarray, norm: str, k: int, boundary: bool) -> np.ndarray:
    """k points per row of X in (or on the boundary of) its ball, shape (n, k, d)."""
    n, d = X.shape
    if norm == "linf":
        D = rng.uniform(-1, 1, size=(n, k, d))
        if boundary:
            D = np.sign(D)
    else:
        p = NORM_P[norm]
        D = rng.laplace(size=(n, k, d)) if norm == "l1" else rng.normal(size=(n, k, d))
        D /= np.linalg.norm(D, ord=p, axis=2, keepdims=True)
        if not boundary:
            D *= rng.uniform(0, 1, size=(n, k, 1)) ** (1.0 / d)
    out: np.ndarray = X[:, None, :] + eps[:, None, None] * D
    return out


def _preacts(net: Network, X: np.ndarray) -> list[np.ndarray]:
    outs = []
    h = X
    for layer in net.layers:
        if isinstance(layer, Affine):
            h = h @ layer.W.T + layer.b
        else:
            outs.append(h)
            h = apply_activation(layer.kind, h)
    return outs


def _logits(model: object, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        z = model.torch_logits(torch.as_tensor(X))  # type: ignore[attr-defined]
    return np.asarray(z.double().numpy())


# ----------------------------------------------------------------------------------------
# network_of
# ----------------------------------------------------------------------------------------
def _sk_mlp(classes: int, activation: str) -> object:
    from sklearn.neural_network import MLPClassifier

    X, y = _data(classes=classes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return MLPClassifier((12, 8), activation=activation, max_iter=60, random_state=0).fit(X, y)


@pytest.mark.parametrize("case", ["mlp-relu", "mlp-f64-tanh", "grokalign", "sequential", "sk-binary", "sk-multiclass", "linear"])
def test_network_of_matches_the_model(case: str) -> None:
    X, y = _data()
    if case == "mlp-relu":
        model: object = _mlp("relu")
    elif case == "mlp-f64-tanh":
        model = _mlp("tanh", dtype="float64", classes=3)
    elif case == "grokalign":
        model = GrokAlignMLP(hidden=[16], epochs=3, random_state=0).fit(X, y)
    elif case == "sequential":
        torch.manual_seed(0)
        seq = nn.Sequential(nn.Linear(10, 12), nn.Tanh(), nn.Dropout(0.2), nn.Linear(12, 9), nn.Sigmoid(), nn.Linear(9, 6),
                            nn.GELU(), nn.Linear(6, 3))
        model = wrap(seq, n_features=10)
    elif case == "sk-binary":
        model = wrap(_sk_mlp(2, "relu"))
    elif case == "sk-multiclass":
        model = wrap(_sk_mlp(3, "tanh"))
    else:
        torch.manual_seed(0)
        model = wrap(nn.Linear(10, 3), n_features=10)
    net = network_of(model)
    assert isinstance(net, Network), net
    expected_dtype = "float64" if case in ("mlp-f64-tanh", "sk-binary", "sk-multiclass") else "float32"
    assert net.dtype == expected_dtype
    assert isinstance(net.layers[0], Affine) and isinstance(net.layers[-1], Affine)
    P = np.random.default_rng(3).normal(size=(40, 10)) * 2
    Z = _logits(model, P)
    F = net.forward(P)
    assert np.abs(F - Z).max() <= 1e-5 * max(1.0, float(np.abs(Z).max()))
    if case == "sk-binary":  # the [0, z] layout: the first logit is identically zero
        assert np.all(F[:, 0] == 0)


def test_network_of_custom_affine_ops() -> None:
    class Custom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(10, 7)
            self.b = nn.Linear(7, 1)
            self.register_buffer("mu", torch.linspace(-1, 1, 10))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = (x - self.mu) / 3.0
            h = torch.relu(self.a(h)) * 0.5 - 1.0
            h = torch.nn.functional.linear(h * h, self.b.weight, self.b.bias)
            return torch.cat([torch.zeros_like(h), -h], dim=1)

    torch.manual_seed(1)
    model = wrap(Custom(), n_features=10)
    net = network_of(model)
    assert isinstance(net, Network), net
    assert [layer.kind for layer in net.layers if isinstance(layer, Activation)] == ["relu", "square"]
    P = np.random.default_rng(0).normal(size=(20, 10))
    assert np.abs(net.forward(P) - _logits(model, P)).max() < 1e-5


def test_network_of_reasons_for_unsupported_models() -> None:
    from sklearn.ensemble import RandomForestClassifier

    X, y = _data()

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(10, 10)
            self.b = nn.Linear(10, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(x + torch.relu(self.a(x)))

    cases = [
        wrap(Residual(), n_features=10),
        wrap(nn.Sequential(nn.Linear(10, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 2)), n_features=10),
        wrap(RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0).fit(X, y)),
    ]
    for model in cases:
        reason = network_of(model)
        assert isinstance(reason, str) and reason and "\n" not in reason
        assert CrownCertifier().refuses(model) == reason
        cert = CrownCertifier().certify(model, X[:3], y[:3], "linf", np.full(3, np.inf))
        assert np.all(cert.lower == 0) and np.all(cert.reason == reason)
    assert "residual" in str(network_of(cases[0]))
    assert CrownCertifier().refuses(_mlp("relu")) is None


# ----------------------------------------------------------------------------------------
# layer_bounds and rounding_bound
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "gelu", "square"])
def test_layer_bounds_contain_sampled_preactivations(activation: str) -> None:
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    act = {"relu": nn.ReLU(), "tanh": nn.Tanh(), "sigmoid": nn.Sigmoid(), "gelu": nn.GELU(), "square": None}[activation]
    layers: list[nn.Module] = []
    widths = [6, 12, 10, 8, 3]
    for i in range(len(widths) - 1):
        lin = nn.Linear(widths[i], widths[i + 1])
        with torch.no_grad():
            lin.weight.mul_(1.5)
        layers.append(lin)
        if i < len(widths) - 2:
            layers.append(act if act is not None else _Square())
    net = network_of(wrap(nn.Sequential(*layers), n_features=6))
    assert isinstance(net, Network), net
    X = rng.normal(size=(8, 6))
    eps = rng.uniform(0.05, 0.6, size=8)
    for norm in ("linf", "l2", "l1"):
        ibp = layer_bounds(net, X, eps, norm, "ibp")
        crown = layer_bounds(net, X, eps, norm, "crown")
        assert len(ibp) == len(crown) == 3
        S = np.concatenate([_in_ball(rng, X, eps, norm, 300, False), _in_ball(rng, X, eps, norm, 100, True)], axis=1)
        pre = _preacts(net, S.reshape(-1, 6))
        for (li, ui), (lc, uc), z in zip(ibp, crown, pre, strict=True):
            z = z.reshape(8, -1, z.shape[1])
            assert np.all(z >= lc[:, None, :]) and np.all(z <= uc[:, None, :])
            assert np.all(lc >= li) and np.all(uc <= ui)
            assert np.all(z >= li[:, None, :]) and np.all(z <= ui[:, None, :])
        # CROWN is strictly tighter somewhere on the deeper layers
        assert sum(float((u - lo).sum()) for lo, u in crown) < sum(float((u - lo).sum()) for lo, u in ibp)
        Z = net.forward(S.reshape(-1, 6)).reshape(8, -1, 3)
        low = {}
        for method in ("ibp", "crown", "alpha-crown"):
            lb = margin_bounds(net, X, np.zeros(8, dtype=np.int64), eps, norm, method, iterations=10)
            assert np.all(np.isinf(lb[:, 0])) and np.all((Z[:, :, :1] - Z).min(axis=1)[:, 1:] >= lb[:, 1:])
            low[method] = lb[:, 1:]
        assert np.all(low["ibp"] <= low["crown"]) and np.all(low["crown"] <= low["alpha-crown"])


class _Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
def test_rounding_bound_covers_float32_arithmetic(activation: str) -> None:
    X, y = _data(n=300, d=30)
    model = MLP(hidden=[64, 64], activation=activation, epochs=5, random_state=0).fit(X, y)
    net = network_of(model)
    assert isinstance(net, Network) and net.dtype == "float32"
    rng = np.random.default_rng(0)
    eps = np.full(20, 0.1)
    r = rounding_bound(net, X[:20], eps, "linf")
    r0 = rounding_bound(net, X[:20], np.zeros(20), "linf")
    assert np.all(r > 0) and np.all(r0 <= r) and np.all(r < 4e-4) and np.all(r0 < 2e-4)
    S = _in_ball(rng, X[:20], eps, "linf", 50, False)
    Z32 = model.decision_function(S.reshape(-1, 30)).reshape(20, 50, 2)
    Z64 = net.forward(S.reshape(-1, 30)).reshape(20, 50, 2)
    err = np.abs((Z32[..., 1] - Z32[..., 0]) - (Z64[..., 1] - Z64[..., 0])).max(axis=1)
    assert np.all(err <= r)
    # the same network computed in float64: a bound ~2^29 times smaller
    net64 = Network(net.layers, "float64")
    assert np.all(rounding_bound(net64, X[:20], eps, "linf") < 1e-6 * r)


# ----------------------------------------------------------------------------------------
# Certifiers
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_linear_network_matches_the_closed_form(norm: str) -> None:
    X, y = _data(classes=3, seed=2)
    torch.manual_seed(0)
    lin = nn.Linear(10, 3)
    model = wrap(lin, n_features=10)
    keep = np.flatnonzero(model.predict(X) == y)[:15]
    Xs, ys = X[keep], y[keep]
    net = network_of(model)
    assert isinstance(net, Network) and len(net.layers) == 1
    W, b = net.layers[0].W, net.layers[0].b  # type: ignore[union-attr]
    q = {"linf": 1.0, "l2": 2.0}[norm]
    for cert_cls in (CrownCertifier, IBPCertifier):
        for upper in (np.full(len(ys), np.inf), np.full(len(ys), 50.0)):
            cert = cert_cls(steps=16).certify(model, Xs, ys, norm, upper)
            rnd = rounding_bound(net, Xs, cert.lower, norm)
            Z = Xs @ W.T + b
            closed = np.full(len(ys), np.inf)
            for k in range(3):
                other = ys != k
                dn = np.linalg.norm(W[ys] - W[k], ord=q, axis=1)
                with np.errstate(divide="ignore", invalid="ignore"):
                    val = (Z[np.arange(len(ys)), ys] - Z[:, k] - rnd) / dn
                closed = np.where(other, np.minimum(closed, val), closed)
            assert np.all(cert.lower > 0)
            np.testing.assert_allclose(cert.lower, closed, rtol=2.0**-14)
            assert np.all(cert.lower <= closed * (1 + 1e-9))
            assert not cert.exact.any()


def _pgd_flips(model: object, X: np.ndarray, y: np.ndarray, eps: np.ndarray, norm: str, steps: int = 25) -> bool:
    """A projected-gradient attack on the margin inside each ball; True when any iterate flips `predict`."""
    rng = np.random.default_rng(1)
    x0 = torch.as_tensor(X)
    e = torch.as_tensor(eps)[:, None]
    x = torch.as_tensor(_in_ball(rng, X, eps, norm, 1, False)[:, 0, :])
    step = 2.5 * e / steps
    for _ in range(steps):
        x = x.detach().requires_grad_(True)
        z = model.torch_logits(x)  # type: ignore[attr-defined]
        zy = z.gather(1, torch.as_tensor(y)[:, None])
        other = z.masked_fill(torch.nn.functional.one_hot(torch.as_tensor(y), z.shape[1]).bool(), -1e30)
        (zy[:, 0] - other.max(1).values).sum().backward()
        g = x.grad
        assert g is not None
        with torch.no_grad():
            if norm == "linf":
                x = x - step * g.sign()
                x = torch.minimum(torch.maximum(x, x0 - e), x0 + e)
            else:
                x = x - step * g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
                d = x - x0
                nrm = d.norm(dim=1, keepdim=True)
                x = x0 + d * torch.clamp(e / nrm.clamp_min(1e-30), max=1.0)
        if np.any(model.predict(x.double().numpy()) != y):  # type: ignore[attr-defined]
            return True
    return False


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "quadratic"])
def test_mlp_certificates_ordered_and_sound(activation: str) -> None:
    X, y = _data()
    model = _mlp(activation)
    Xs, ys = X[:40], y[:40]
    rng = np.random.default_rng(0)
    norms = ("linf", "l2") if activation == "relu" else ("linf",)
    for norm in norms:
        certs = [C.certify(model, Xs, ys, norm, np.full(40, np.inf)) for C in (IBPCertifier(), CrownCertifier(), AlphaCrownCertifier())]
        ibp, crown, alpha = (c.lower for c in certs)
        assert np.all(ibp <= crown) and np.all(crown <= alpha)
        assert np.all((crown > ibp) | (crown == 0)) or crown.sum() > ibp.sum()
        ok = model.predict(Xs) == ys
        assert np.all(alpha[~ok] == 0) and np.all(certs[2].reason[~ok] == "misclassified")
        assert np.all(alpha[ok] > 0)
        assert set(certs[1].method[alpha > 0]) <= {"crown"}
        assert np.all(certs[2].work[ok] > certs[1].work[ok] - 1)
        # sampling (inside and on the boundary) and PGD inside every certified ball never flip predict
        r = alpha[ok]
        S = np.concatenate([_in_ball(rng, Xs[ok], r, norm, 200, False), _in_ball(rng, Xs[ok], r, norm, 200, True)], axis=1)
        P = model.predict(S.reshape(-1, X.shape[1])).reshape(len(r), -1)
        assert np.all(ys[ok][:, None] == P)
        assert not _pgd_flips(model, Xs[ok], ys[ok], r, norm)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_certified_radius_below_the_attack(norm: str) -> None:
    X, y = _data()
    model = _mlp("relu")
    Xs, ys = X[:12], y[:12]
    res = rba.minimal_radius(model, Xs, ys, norm=norm, effort="fast")
    dist = np.asarray(res.distance, dtype=np.float64)
    cert = AlphaCrownCertifier(iterations=10).certify(model, Xs, ys, norm, dist)
    found = np.isfinite(dist)
    assert found.sum() >= 8
    assert np.all(cert.lower[found] <= dist[found])
    assert np.median(cert.lower[found & (cert.lower > 0)] / dist[found & (cert.lower > 0)]) > 0.2
    free = AlphaCrownCertifier(iterations=10).certify(model, Xs, ys, norm, np.full(12, np.inf))
    assert np.all(free.lower[found] <= dist[found])


@pytest.mark.parametrize("case", ["mlp-f64-tanh-l1", "sk-binary-linf"])
def test_float64_models_are_sound(case: str) -> None:
    X, y = _data(classes=3 if case.startswith("mlp") else 2)
    norm = case.rsplit("-", 1)[1]
    model = _mlp("tanh", dtype="float64", classes=3) if case.startswith("mlp") else wrap(_sk_mlp(2, "relu"))
    cert = CrownCertifier().certify(model, X[:20], y[:20], norm, np.full(20, np.inf))
    assert np.array_equal(cert.x_witness, X[:20]) and not cert.witness.any()
    ok = cert.lower > 0
    assert ok.sum() >= 10
    rng = np.random.default_rng(0)
    S = np.concatenate([_in_ball(rng, X[:20][ok], cert.lower[ok], norm, 200, True),
                        _in_ball(rng, X[:20][ok], cert.lower[ok], norm, 200, False)], axis=1)
    assert np.all(model.predict(S.reshape(-1, 10)).reshape(ok.sum(), -1) == y[:20][ok][:, None])
    if norm != "l1":  # the PGD helper projects onto linf / l2 balls only
        assert not _pgd_flips(model, X[:20][ok], y[:20][ok], cert.lower[ok], norm)


def test_budgets_are_validated() -> None:
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ConfigError):
            CrownCertifier(steps=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError):
            AlphaCrownCertifier(iterations=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError):
            IBPCertifier(steps=bad)  # type: ignore[arg-type]
    assert CrownCertifier(steps=3).steps == 3
    with pytest.raises(ConfigError):
        CrownCertifier().certify(_mlp("relu"), np.zeros((1, 10)), np.zeros(1, dtype=np.int64), "l3", np.full(1, np.inf))


def test_names_and_determinism() -> None:
    assert (IBPCertifier.name, CrownCertifier.name, AlphaCrownCertifier.name) == ("ibp", "crown", "alpha-crown")
    assert CrownCertifier.norms == ("linf", "l2", "l1")
    X, y = _data()
    model = _mlp("relu")
    a = AlphaCrownCertifier(steps=8, iterations=5).certify(model, X[:10], y[:10], "linf", np.full(10, np.inf))
    b = AlphaCrownCertifier(steps=8, iterations=5).certify(model, X[:10], y[:10], "linf", np.full(10, np.inf))
    np.testing.assert_array_equal(a.lower, b.lower)
    np.testing.assert_array_equal(a.work, b.work)
