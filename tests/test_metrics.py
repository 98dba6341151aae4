"""Jacobians, alignment metrics and the local-linear radius on models with known answers."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from torch import nn

from robustbench_align.errors import AttackError, DataError, ModelError
from robustbench_align.metrics.alignment import METRICS, alignment, alignment_from_jacobians, offsets, singular_spectrum
from robustbench_align.metrics.jacobian import jacobians, outputs_and_jacobians
from robustbench_align.metrics.robustness import linear_radius_from_jacobians, local_linear_radius, point_metrics, radius_ratios
from robustbench_align.models.base import Model, ProbaModel, TorchModel, Tree, TreeEnsemble

torch.set_num_threads(1)


# ----------------------------------------------------------------------------------------
# Models with known Jacobians
# ----------------------------------------------------------------------------------------
def linear_model(d: int, c: int, seed: int = 0) -> tuple[TorchModel, np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, c).double()
    with torch.no_grad():
        lin.weight.copy_(torch.randn(c, d, generator=g, dtype=torch.float64))
        lin.bias.copy_(torch.randn(c, generator=g, dtype=torch.float64))
    return TorchModel(lin, d, name=f"linear-{c}"), lin.weight.detach().numpy().copy(), lin.bias.detach().numpy().copy()


class HalfSquaredNorm(nn.Module):
    """f(x) = a (x − mu)ᵀ(x − mu) / 2, so J_x = a (x − mu)ᵀ: normal-aligned (about mu) everywhere."""

    def __init__(self, a: np.ndarray, mu: np.ndarray | None = None):
        super().__init__()
        self.register_buffer("a", torch.as_tensor(a, dtype=torch.float64))
        self.register_buffer("mu", torch.zeros(0, dtype=torch.float64) if mu is None else torch.as_tensor(mu, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x - self.mu if self.mu.numel() else x
        return 0.5 * (z * z).sum(dim=1, keepdim=True) * self.a


class ScaledNorm(nn.Module):
    """f(x) = a ‖x‖₂: positively homogeneous (b_x = 0) with J_x = a xᵀ/‖x‖."""

    def __init__(self, a: np.ndarray):
        super().__init__()
        self.register_buffer("a", torch.as_tensor(a, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.linalg.vector_norm(x, dim=1, keepdim=True) * self.a


class SqrtFeatures(nn.Module):
    """f(x) = W sqrt(x): NaN Jacobian (and output) wherever a coordinate is negative."""

    def __init__(self, W: np.ndarray):
        super().__init__()
        self.register_buffer("W", torch.as_tensor(W, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x) @ self.W.T


class BranchyNet(nn.Module):
    """An MLP with data-dependent Python control flow (cannot be vmapped)."""

    def __init__(self, d: int, c: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 16), nn.Tanh(), nn.Linear(16, c)).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool((x.abs() > 1e6).any()):
            raise ValueError("input out of range")
        return self.net(x)


def mlp_module(d: int, c: int, seed: int = 0, bias: bool = True, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 32, bias=bias), nn.ReLU(), nn.Linear(32, 32, bias=bias), nn.Tanh() if bias else nn.ReLU(),
                         nn.Linear(32, c, bias=bias)).to(dtype)


def loop_jacobians(model: Model, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reference: one torch.autograd.functional.jacobian call per point."""
    outs, jacs = [], []
    for x in X:
        xt = torch.as_tensor(x, dtype=torch.float64)
        f = lambda z: model.torch_logits(z.unsqueeze(0)).squeeze(0).double()  # noqa: E731
        outs.append(f(xt).detach().numpy())
        jacs.append(torch.autograd.functional.jacobian(f, xt).numpy())
    return np.array(outs), np.array(jacs)


class StumpModel(Model):
    """A one-split tree ensemble exposing only predict_proba and tree_ensemble (no derivatives)."""

    name = "stump"

    def __init__(self) -> None:
        tree = Tree(feature=np.array([0, -1, -1]), threshold=np.array([0.0, 0, 0], dtype=np.float32),
                    left=np.array([1, -1, -1]), right=np.array([2, -1, -1]),
                    value=np.array([[0.0, 0.0], [1.0, -1.0], [-1.0, 1.0]]))
        self._ens = TreeEnsemble(trees=(tree,), n_features=3, n_classes=2, n_outputs=2, strict=True, bias=np.zeros(2))

    @property
    def n_features(self) -> int:
        return 3

    @property
    def n_classes(self) -> int:
        return 2

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self._ens.predict_proba(self._check_X(X))

    def tree_ensemble(self) -> TreeEnsemble:
        return self._ens


RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------------------
# Linear model: J = W, b_x = b, r_lin = exact distance to the decision boundary
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", [2, 3])
def test_linear_model_jacobian_and_offset_exact(c):
    d = 5
    model, W, b = linear_model(d, c)
    X = RNG.normal(size=(40, d))
    f, J = outputs_and_jacobians(model, X)
    assert J.shape == (40, c, d)
    np.testing.assert_allclose(J, np.broadcast_to(W, J.shape), rtol=0, atol=1e-12)
    np.testing.assert_allclose(f, X @ W.T + b, atol=1e-12)
    np.testing.assert_allclose(offsets(model, X), np.broadcast_to(b, (40, c)), atol=1e-12)
    df = alignment(model, X)
    np.testing.assert_allclose(df["offset_norm"], np.linalg.norm(b), atol=1e-12)
    np.testing.assert_allclose(df["jacobian_norm"], np.linalg.norm(W), atol=1e-12)
    np.testing.assert_allclose(df["centroid_norm"], np.linalg.norm(W.sum(0)), atol=1e-12)
    s = np.linalg.svd(W, compute_uv=False)
    np.testing.assert_allclose(df["effective_rank"], s.sum() ** 2 / (s**2).sum(), atol=1e-12)
    np.testing.assert_allclose(df["pc1_explained_variance"], s[0] ** 2 / (s**2).sum(), atol=1e-12)
    v1 = np.linalg.svd(W)[2][0]
    np.testing.assert_allclose(df["normal_alignment"], np.abs(X @ v1) / np.linalg.norm(X, axis=1), atol=1e-12)


def _step_to_boundary(w: np.ndarray, r: float, norm: str) -> np.ndarray:
    """The norm-`norm` step of length r that decreases wᵀx fastest."""
    if norm == "l2":
        return -r * w / np.linalg.norm(w)
    if norm == "linf":
        return -r * np.sign(w)
    k = np.argmax(np.abs(w))
    e = np.zeros_like(w)
    e[k] = -r * np.sign(w[k])
    return e


@pytest.mark.parametrize("norm", ["l2", "linf", "l1"])
@pytest.mark.parametrize("c", [2, 3])
def test_linear_radius_is_exact_boundary_distance(c, norm):
    d = 4
    model, W, b = linear_model(d, c, seed=1)
    X = RNG.normal(size=(30, d))
    y = model.predict(X)
    r = local_linear_radius(model, X, y, norm)
    assert np.all(r > 0)
    for i in range(X.shape[0]):
        # independent construction: step towards the nearest class boundary; the label flips just past r, not before
        margins = (W[y[i]] - W) @ X[i] + (b[y[i]] - b)
        dual = {"l2": 2, "linf": 1, "l1": np.inf}[norm]
        dist = np.array([margins[j] / np.linalg.norm(W[y[i]] - W[j], ord=dual) if j != y[i] else np.inf for j in range(c)])
        j = int(np.argmin(dist))
        step = _step_to_boundary(W[y[i]] - W[j], r[i], norm)
        assert np.linalg.norm(step, ord={"l2": 2, "linf": np.inf, "l1": 1}[norm]) == pytest.approx(r[i], rel=1e-12)
        assert model.predict(X[i] + (1 - 1e-7) * step)[0] == y[i]
        assert model.predict(X[i] + (1 + 1e-7) * step)[0] != y[i]
        # no other class boundary is nearer along any direction: r is the minimum over j
        assert r[i] == pytest.approx(dist.min(), rel=1e-12)


def test_linear_radius_sign_and_flat_cases():
    outputs = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [1.0, 0.0]])
    J = np.zeros((4, 2, 3))
    J[:2, 0, 0] = 1.0  # gradient difference e_0 for the first two points
    r = linear_radius_from_jacobians(outputs, J, np.array([0, 0, 0, 0]), "l2")
    assert r[0] == pytest.approx(1.0)
    assert r[1] == pytest.approx(-2.0)  # misclassified: signed, negative
    assert r[2] == 0.0  # tie with no gradient: on the boundary
    assert r[3] == np.inf  # positive margin, no gradient difference: no local boundary


# ----------------------------------------------------------------------------------------
# Normal-aligned model f(x) = a xᵀx / 2, J = a xᵀ
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("c,d", [(3, 6), (7, 4)])  # jacrev (c <= d) and jacfwd (d < c)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_normal_aligned_model(c, d, sign):
    a = RNG.uniform(0.5, 1.5, size=c) * sign
    a[0] = -0.3 * sign  # mixed signs; the sum keeps the sign `sign`
    model = TorchModel(HalfSquaredNorm(a), d, c, dtype=torch.float64)
    X = RNG.normal(size=(25, d))
    J = jacobians(model, X)
    np.testing.assert_allclose(J, a[None, :, None] * X[:, None, :], atol=1e-12)
    for solver in ("gram", "svd"):
        df = alignment(model, X, solver=solver)
        np.testing.assert_allclose(df["normal_alignment"], 1.0, atol=1e-10)
        np.testing.assert_allclose(df["centroid_alignment"], np.sign(a.sum()), atol=1e-12)
        np.testing.assert_allclose(df["effective_rank"], 1.0, atol=1e-10)
        np.testing.assert_allclose(df["effective_rank_normalized"], 1.0 / min(c, d), atol=1e-10)
        np.testing.assert_allclose(df["pc1_explained_variance"], 1.0, atol=1e-10)
    xn = np.linalg.norm(X, axis=1)
    np.testing.assert_allclose(df["x_norm"], xn, atol=1e-12)
    np.testing.assert_allclose(df["jacobian_norm"], np.linalg.norm(a) * xn, rtol=1e-12)
    np.testing.assert_allclose(df["centroid_norm"], abs(a.sum()) * xn, rtol=1e-12)
    np.testing.assert_allclose(df["centroid_inner"], a.sum() * xn**2, rtol=1e-12)
    # b_x = f(x) − J x = a‖x‖²/2 − a‖x‖² = −a‖x‖²/2
    np.testing.assert_allclose(df["offset_norm"], np.linalg.norm(a) * xn**2 / 2, rtol=1e-12)
    assert df["reason"].isna().all()


def test_non_aligned_model_scores_below_one():
    d, c = 6, 3
    model, _, _ = linear_model(d, c, seed=3)
    X = RNG.normal(size=(50, d))
    df = alignment(model, X)
    assert (df["normal_alignment"] < 1 - 1e-3).all()
    assert (df["effective_rank"] > 1 + 1e-3).all()


def test_center_measures_against_the_mean():
    d, c = 5, 3
    mu = np.full(d, 3.0)
    model = TorchModel(HalfSquaredNorm(np.array([1.0, 2.0, 0.5]), mu=mu), d, c, dtype=torch.float64)
    X = mu + RNG.normal(size=(20, d))
    raw = alignment(model, X)
    given = alignment(model, X, reference_mean=mu)
    assert (raw["normal_alignment"] < 0.999).all()
    np.testing.assert_allclose(given["normal_alignment"], 1.0, atol=1e-10)
    np.testing.assert_allclose(given["x_norm"], np.linalg.norm(X - mu, axis=1), atol=1e-12)
    np.testing.assert_allclose(given["centroid_alignment"], 1.0, atol=1e-12)
    own = alignment(model, X, center=True)  # mean of the given X
    np.testing.assert_allclose(own["x_norm"], np.linalg.norm(X - X.mean(0), axis=1), atol=1e-12)
    assert own.attrs["center"] and not raw.attrs["center"]
    with pytest.raises(ModelError, match="reference_mean"):
        alignment(model, X, reference_mean=np.zeros(d + 1))


# ----------------------------------------------------------------------------------------
# Local robustness bound for bias-free models: r_lin <= ‖x‖, equality when rows ∥ x
# ----------------------------------------------------------------------------------------
def test_homogeneous_aligned_model_reaches_the_bound():
    d, c = 6, 4
    a = np.array([2.0, 0.5, -1.0, 1.0])
    model = TorchModel(ScaledNorm(a), d, c, dtype=torch.float64)
    X = RNG.normal(size=(30, d))
    y = model.predict(X)
    assert np.all(y == 0)
    r = local_linear_radius(model, X, y, "l2")
    np.testing.assert_allclose(alignment(model, X)["offset_norm"], 0.0, atol=1e-12)
    ratios = radius_ratios(r, r, X, norm="l2")
    np.testing.assert_allclose(ratios["r_lin_to_x_norm"], 1.0, atol=1e-12)
    np.testing.assert_allclose(ratios["ratio_to_r_lin"], 1.0, atol=1e-12)


def test_bias_free_relu_net_is_bounded_by_norm():
    d, c = 8, 3
    model = TorchModel(mlp_module(d, c, seed=2, bias=False), d, c)
    X = RNG.normal(size=(200, d))
    y = model.predict(X)
    df = alignment(model, X)
    np.testing.assert_allclose(df["offset_norm"], 0.0, atol=1e-10)  # positively homogeneous: b_x = 0
    r = local_linear_radius(model, X, y, "l2")
    assert np.all(r > 0)
    assert np.all(r <= np.linalg.norm(X, axis=1) * (1 + 1e-10))
    ratios = radius_ratios(2 * r, r, X, norm="l2")
    np.testing.assert_allclose(ratios["ratio_to_r_lin"], 2.0)
    np.testing.assert_allclose(ratios["ratio_to_x_norm"], 2 * r / np.linalg.norm(X, axis=1))


def test_radius_ratios_edge_cases():
    X = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])
    out = radius_ratios([1.0, 5.0, np.inf], [1.0, -1.0, 2.0], X, norm="linf")
    np.testing.assert_allclose(out["x_norm"], [0.0, 4.0, 1.0])
    assert np.isnan(out["ratio_to_x_norm"][0]) and np.isnan(out["ratio_to_r_lin"][1])
    assert out["ratio_to_r_lin"][2] == np.inf
    with pytest.raises(ModelError, match="one entry per point"):
        radius_ratios([1.0], [1.0, 2.0], X)


# ----------------------------------------------------------------------------------------
# Batched Jacobians equal the per-point loop
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_batched_equals_loop_on_torch_mlp(dtype):
    d, c = 7, 4
    model = TorchModel(mlp_module(d, c, seed=5, dtype=dtype), d, c)
    X = RNG.normal(size=(60, d))
    f_loop, J_loop = loop_jacobians(model, X)
    for mode in ("rev", "fwd"):
        for chunk in (None, 7):
            f, J = outputs_and_jacobians(model, X, chunk_size=chunk, mode=mode)
            np.testing.assert_allclose(J, J_loop, atol=1e-5 if dtype == torch.float32 else 1e-12)
            np.testing.assert_allclose(f, f_loop, atol=1e-5 if dtype == torch.float32 else 1e-12)


def test_batched_equals_loop_on_fitted_mlp():
    from robustbench_align.models.mlp import MLP

    X = RNG.normal(size=(120, 6))
    y = (X[:, 0] + X[:, 1] ** 2 > 1).astype(int) + (X[:, 2] > 1)
    model = MLP(hidden=(32, 32), epochs=5, random_state=0).fit(X, y)
    f_loop, J_loop = loop_jacobians(model, X[:50])
    f, J = outputs_and_jacobians(model, X[:50])
    np.testing.assert_allclose(J, J_loop, atol=1e-5)
    np.testing.assert_allclose(f, f_loop, atol=1e-5)
    df = alignment(model, X[:50])
    assert df.attrs["output_space"] == "logits"
    assert df[list(METRICS)].notna().all().all()


@pytest.fixture(scope="module")
def rfam():
    from robustbench_align.models.rfm import RFAM

    rng = np.random.default_rng(1)
    X = rng.normal(size=(150, 5))
    y = (X[:, 0] * X[:, 1] > 0).astype(int) + (X[:, 2] > 0.8)
    return RFAM(iters=2, regs=(1e-2,), random_state=0).fit(X, y), rng.normal(size=(40, 5))


def test_batched_equals_loop_on_rfam(rfam):
    model, Xq = rfam
    f_loop, J_loop = loop_jacobians(model, Xq)
    batch = outputs_and_jacobians(model, Xq)  # analytic batched gradient
    assert batch.method == "analytic-gradient"
    np.testing.assert_allclose(batch.jacobians, J_loop, atol=1e-5)
    np.testing.assert_allclose(batch.outputs, f_loop, atol=1e-10)
    vm = outputs_and_jacobians(model, Xq, analytic=False, chunk_size=9)  # vmap over torch_logits
    assert vm.method.startswith("vmap")
    np.testing.assert_allclose(vm.jacobians, J_loop, atol=1e-5)
    df = alignment(model, Xq)
    assert df.attrs["output_space"] == "raw kernel outputs"
    assert ((df["normal_alignment"] >= 0) & (df["normal_alignment"] <= 1 + 1e-12)).all()
    r = local_linear_radius(model, Xq, model.predict(Xq), "linf")
    assert np.all(r >= 0)


def test_vmap_incompatible_model_falls_back_without_point_loop():
    d, c = 5, 3
    model = TorchModel(BranchyNet(d, c), d, c)
    X = RNG.normal(size=(30, d))
    batch = outputs_and_jacobians(model, X)
    assert batch.method == "per-class-backward"
    f_loop, J_loop = loop_jacobians(model, X)
    np.testing.assert_allclose(batch.jacobians, J_loop, atol=1e-12)
    np.testing.assert_allclose(batch.outputs, f_loop, atol=1e-12)


def test_gram_and_svd_solvers_agree():
    J = RNG.normal(size=(50, 4, 9))
    J[:5] = RNG.normal(size=(5, 4, 1)) * RNG.normal(size=(5, 1, 9))  # rank one
    J[5:10, :, :] = RNG.normal(size=(5, 4, 2)) @ RNG.normal(size=(5, 2, 9))  # rank two
    X = RNG.normal(size=(50, 9))
    a = alignment_from_jacobians(J, X, solver="gram")
    b = alignment_from_jacobians(J, X, solver="svd")
    cols = [m for m in METRICS if m != "offset_norm"]
    np.testing.assert_allclose(a[cols].to_numpy(), b[cols].to_numpy(), atol=1e-10)
    S, _ = singular_spectrum(torch.from_numpy(J.transpose(0, 2, 1).copy()))  # d > c branch
    np.testing.assert_allclose(S.numpy(), np.linalg.svd(J, compute_uv=False), atol=1e-10)


# ----------------------------------------------------------------------------------------
# Unsupported models, bad input, non-finite Jacobians
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["tree", "black box"])
def test_unsupported_models(kind):
    if kind == "tree":
        model, reason = StumpModel(), "no torch_logits: tree ensemble"
    else:
        model = ProbaModel(lambda X: np.tile([0.3, 0.7], (len(X), 1)), n_features=3, n_classes=2, name="box")
        reason = "no torch_logits: black box (predict_proba only)"
    X = RNG.normal(size=(6, 3))
    with pytest.raises(ModelError, match=r"alignment: .*torch_logits"):
        alignment(model, X)
    df = alignment(model, X, on_unsupported="nan")
    assert len(df) == 6
    assert df[[m for m in METRICS if m != "x_norm"]].isna().all().all()
    np.testing.assert_allclose(df["x_norm"], np.linalg.norm(X, axis=1))
    assert (df["reason"] == reason).all()
    with pytest.raises(ModelError, match=r"local_linear_radius: .*torch_logits"):
        local_linear_radius(model, X, np.zeros(6, dtype=int), "l2")
    with pytest.raises(ModelError, match=r"jacobians: .*torch_logits"):
        jacobians(model, X)


def test_bad_inputs_raise():
    model, _, _ = linear_model(4, 3)
    for fn in (lambda X: alignment(model, X), lambda X: alignment(model, X, on_unsupported="nan"), lambda X: jacobians(model, X),
               lambda X: local_linear_radius(model, X, np.zeros(len(X), dtype=int), "l2")):
        with pytest.raises(ModelError, match="expects 4 features"):
            fn(RNG.normal(size=(5, 6)))
    with pytest.raises(ModelError, match="expects 3 features"):
        alignment(StumpModel(), RNG.normal(size=(5, 4)), on_unsupported="nan")
    X = RNG.normal(size=(5, 4))
    with pytest.raises(DataError, match="out of range"):
        local_linear_radius(model, X, np.full(5, 3), "l2")
    with pytest.raises(AttackError, match="unknown norm"):
        local_linear_radius(model, X, np.zeros(5, dtype=int), "l3")
    with pytest.raises(ModelError, match="chunk_size"):
        jacobians(model, X, chunk_size=0)
    with pytest.raises(ModelError, match="on_unsupported"):
        alignment(model, X, on_unsupported="skip")


def test_nonfinite_jacobians_are_reported(caplog):
    d, c = 4, 2
    model = TorchModel(SqrtFeatures(RNG.normal(size=(c, d))), d, c, dtype=torch.float64)
    X = RNG.uniform(0.5, 2.0, size=(12, d))
    X[[2, 7], 1] = -1.0
    with caplog.at_level(logging.WARNING, logger="robustbench_align.metrics.jacobian"):
        batch = outputs_and_jacobians(model, X)
    assert batch.nonfinite.tolist() == [2, 7] and batch.n_nonfinite == 2
    assert "2 of 12 points" in caplog.text and "rows 2, 7" in caplog.text
    df = alignment(model, X)
    assert df.attrs["nonfinite"] == [2, 7]
    bad = df.loc[[2, 7]]
    assert bad[[m for m in METRICS if m != "x_norm"]].isna().all().all()
    assert (bad["reason"] == "non-finite Jacobian").all()
    good = df.drop(index=[2, 7])
    assert good[list(METRICS)].notna().all().all() and good["reason"].isna().all()
    r = local_linear_radius(model, X, np.zeros(12, dtype=int), "l2")
    assert np.isnan(r[[2, 7]]).all() and np.isfinite(r[np.r_[0:2, 3:7, 8:12]]).all()


def test_zero_jacobian_gives_nan_with_reason():
    d, c = 3, 2
    lin = nn.Linear(d, c).double()
    with torch.no_grad():
        lin.weight.zero_()
    df = alignment(TorchModel(lin, d, c), RNG.normal(size=(4, d)))
    assert df["normal_alignment"].isna().all() and df["effective_rank"].isna().all()
    assert (df["reason"] == "zero Jacobian: singular vectors undefined").all()
    np.testing.assert_allclose(df["jacobian_norm"], 0.0)
    np.testing.assert_allclose(df["centroid_alignment"], 0.0)


def test_empty_input_and_module_wrapping():
    d, c = 4, 3
    net = mlp_module(d, c)
    df = alignment(net, np.zeros((0, d)))  # a bare nn.Module is wrapped
    assert len(df) == 0 and set(METRICS) <= set(df.columns)
    assert jacobians(net, np.zeros((0, d))).shape == (0, c, d)


# ----------------------------------------------------------------------------------------
# One pass for alignment and radii
# ----------------------------------------------------------------------------------------
def test_point_metrics_matches_separate_calls(rfam):
    d, c = 6, 4
    torch_model = TorchModel(mlp_module(d, c, seed=9), d, c)
    rfam_model, Xq = rfam
    for model, X in ((torch_model, RNG.normal(size=(40, d))), (rfam_model, Xq)):
        y = model.predict(X)
        df = point_metrics(model, X, y, norms=("linf", "l2", "l1"), center=True)
        ref = alignment(model, X, center=True)
        np.testing.assert_array_equal(df[list(METRICS)].to_numpy(), ref[list(METRICS)].to_numpy())
        for norm in ("linf", "l2", "l1"):
            np.testing.assert_allclose(df[f"r_lin_{norm}"], local_linear_radius(model, X, y, norm), rtol=1e-12)
        # L∞ radius <= L2 radius <= L1 radius (dual norms L1 >= L2 >= L∞ of the same gradient)
        assert np.all(df["r_lin_linf"] <= df["r_lin_l2"] * (1 + 1e-12))
        assert np.all(df["r_lin_l2"] <= df["r_lin_l1"] * (1 + 1e-12))
    out = point_metrics(StumpModel(), RNG.normal(size=(3, 3)), [0, 1, 0], on_unsupported="nan")
    assert out["r_lin_linf"].isna().all() and (out["reason"] == "no torch_logits: tree ensemble").all()
    with pytest.raises(ModelError, match=r"point_metrics: .*torch_logits"):
        point_metrics(StumpModel(), RNG.normal(size=(3, 3)), [0, 1, 0])


def test_logit_margin_of_a_linear_model():
    """margin = (w_y·x + b_y) − max_{j≠y} (w_j·x + b_j), signed (negative where misclassified); NaN without gradients."""
    d, c, n = 5, 4, 40
    model, W, b = linear_model(d, c, seed=11)
    X = RNG.normal(size=(n, d))
    y = RNG.integers(0, c, size=n)  # arbitrary labels: some points are misclassified
    f = X @ W.T + b
    others = np.where(np.eye(c, dtype=bool)[y], -np.inf, f)
    expected = f[np.arange(n), y] - others.max(axis=1)
    df = point_metrics(model, X, y, norms=("l2",))
    np.testing.assert_allclose(df["logit_margin"], expected, rtol=1e-10, atol=1e-12)
    assert ((df["logit_margin"] > 0) == (model.predict(X) == y)).all() and (df["logit_margin"] < 0).any()
    out = point_metrics(StumpModel(), RNG.normal(size=(3, 3)), [0, 1, 0], on_unsupported="nan")
    assert out["logit_margin"].isna().all()


def test_logit_margin_is_stored_per_point(tmp_path):
    """The runner stores the clean margin of every evaluated point and Store.points() returns it."""
    from robustbench_align import load_dataset
    from robustbench_align.runner.job import Job, run_job
    from robustbench_align.runner.store import Store

    model, W, b = linear_model(4, 3, seed=12)
    job = Job(model="lin", dataset="iris", seed=0, threats=["paper-pgd"], points=8, model_params={"user_model": "lin"}, model_family="user")
    (record,) = run_job(job, model_obj=model)
    assert record.run["status"] == "ok", record.run.get("error")
    with Store(tmp_path / "s.sqlite") as st:
        st.write([record])
        pts = st.points()
    ds = load_dataset("iris", seed=0)
    X, y = ds.X_test[pts["test_index"].to_numpy()], pts["y"].to_numpy()
    f = X @ W.T + b
    others = np.where(np.eye(3, dtype=bool)[y], -np.inf, f)
    np.testing.assert_allclose(pts["logit_margin"], f[np.arange(len(y)), y] - others.max(axis=1), rtol=1e-6, atol=1e-9)


def test_point_metrics_are_declared_once_and_read_everywhere():
    import pandas as pd

    from robustbench_align.metrics.registry import ALIGNMENT_METRICS, STORED_METRICS
    from robustbench_align.reports.export import to_json_rows
    from robustbench_align.reports.tables import leaderboard_from_frames
    from robustbench_align.runner.store import POINT_COLUMNS

    J = np.random.default_rng(0).normal(size=(4, 3, 5))
    X = np.random.default_rng(1).normal(size=(4, 5))
    frame = alignment_from_jacobians(J, X)
    assert list(frame.columns) == [*ALIGNMENT_METRICS, "reason"] and METRICS == ALIGNMENT_METRICS
    stored = [m.name for m in STORED_METRICS]
    assert POINT_COLUMNS[-len(stored):] == stored  # the store's schema columns, in declaration order
    runs = pd.DataFrame([{"run_id": "r", "model": "m", "family": "f", "dataset": "d", "threat": "linf", "norm": "linf", "seed": 0,
                          "status": "ok", "attacks": [], "flags": {}, "rejected": 0}])
    points = pd.DataFrame([{"run_id": "r", "correct": 1, "radius": 0.5, "lower_bound": np.nan, "robust_at": {"0.1": 1},
                            **{m.name: 0.25 * (i + 1) for i, m in enumerate(STORED_METRICS)}} for _ in range(3)])
    board = leaderboard_from_frames(runs, points)
    row = to_json_rows(board)[0]
    for i, m in enumerate(STORED_METRICS):
        assert (m.name in board.columns) == m.leaderboard and (m.key in row) == m.leaderboard
        if m.leaderboard:
            assert board[m.name].iloc[0] == row[m.key] == 0.25 * (i + 1)

