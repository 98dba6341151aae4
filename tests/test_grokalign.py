"""GrokAlign: the Hutchinson estimator, the offset, the regularised training and its persistence."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler
from torch import nn

from robustbench_align.errors import ModelError
from robustbench_align.models.grokalign import (
    GrokAlignMLP,
    exact_frobenius,
    grokalign_loss,
    hutchinson_frobenius,
    jacobians,
    offset,
    output_and_jvp,
)
from robustbench_align.models.mlp import MLP, Square, build_module

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cancer():
    X, y = load_breast_cancer(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    sc = StandardScaler().fit(Xtr)
    return sc.transform(Xtr), sc.transform(Xte), ytr, yte


def _net(d=6, widths=(9, 7), c=4, bias=True, activation="tanh", seed=0):
    return build_module(d, c, list(widths), activation=activation, bias=bias, dtype="float64", generator=torch.Generator().manual_seed(seed))


def test_hutchinson_mean_matches_exact_frobenius_squared():
    net = _net()
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    draws = 4000
    est = hutchinson_frobenius(net, x.repeat(draws, 1), generator=torch.Generator().manual_seed(2))
    assert est.shape == (5 * draws,)
    mean_sq = (est**2).reshape(draws, 5).mean(dim=0)  # k‖Jᵀv‖², unbiased for ‖J‖_F²
    exact_sq = exact_frobenius(net, x) ** 2
    rel = ((mean_sq - exact_sq).abs() / exact_sq).max().item()
    assert rel < 0.05, rel
    # a single draw is genuinely random (otherwise the test above would prove nothing)
    single = est.reshape(draws, 5)[:, 0] ** 2
    assert single.std() > 0.1 * single.mean()


def test_hutchinson_same_generator_same_draws_and_floor():
    net = _net()
    x = torch.randn(8, 6, dtype=torch.float64)
    a = hutchinson_frobenius(net, x, generator=torch.Generator().manual_seed(5))
    b = hutchinson_frobenius(net, x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    zero = build_module(6, 3, [4], dtype="float64")  # generator=None: all-zero weights, J = 0
    z = hutchinson_frobenius(zero, x, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(z, torch.full((8,), 1e-4, dtype=torch.float64))


def test_hutchinson_is_differentiable_in_the_parameters():
    net = _net()
    x = torch.randn(8, 6, dtype=torch.float64)
    est = hutchinson_frobenius(net, x, generator=torch.Generator().manual_seed(0), create_graph=True)
    est.mean().backward()
    # every weight matrix gets a gradient; the last bias cannot change J and gets none
    weights = [m.weight for m in net if isinstance(m, nn.Linear)]
    assert all(w.grad is not None and w.grad.abs().sum() > 0 for w in weights)
    assert net[-1].bias.grad is None


def test_exact_frobenius_of_an_affine_map_is_the_weight_norm():
    lin = nn.Linear(5, 3).double()
    x = torch.randn(4, 5, dtype=torch.float64)
    fro = exact_frobenius(lin, x)
    assert torch.allclose(fro, lin.weight.norm().expand(4))
    J = jacobians(lin, x)
    assert J.shape == (4, 3, 5) and torch.allclose(J[2], lin.weight)


def test_offset_zero_for_bias_free_relu_net():
    net = _net(d=10, widths=(32, 32), c=3, bias=False, activation="relu")
    x = torch.randn(50, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    b = offset(net, x)
    assert b.shape == (50, 3)
    assert b.abs().max().item() < 1e-6
    assert net(x).abs().max().item() > 0.1  # the outputs themselves are not zero


def test_offset_is_minus_f_for_bias_free_quadratic_net():
    net = _net(d=10, widths=(16,), c=3, bias=False, activation="quadratic")
    assert isinstance(net[1], Square)
    x = torch.randn(50, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    f = net(x)
    assert torch.allclose(offset(net, x), -f, atol=1e-6)
    assert f.abs().max().item() > 0.1


def test_offset_matches_exact_jacobian_for_a_biased_net():
    net = _net(activation="gelu")
    x = torch.randn(7, 6, dtype=torch.float64)
    J = jacobians(net, x)
    expect = net(x) - torch.einsum("ncd,nd->nc", J, x)
    assert torch.allclose(offset(net, x), expect, atol=1e-10)
    assert expect.abs().max() > 1e-3


def test_forward_and_double_backward_jvp_agree_with_parameter_gradients():
    x = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(8))
    results = []
    for method in ("forward", "double-backward"):
        net = _net(activation="gelu")
        xi = x.clone().requires_grad_(True)
        out, jx = output_and_jvp(net, xi, method=method)
        ((out - jx) ** 2).sum().backward()
        results.append((out.detach(), jx.detach(), [p.grad.clone() for p in net.parameters()]))
    (o1, j1, g1), (o2, j2, g2) = results
    assert torch.allclose(o1, o2, atol=1e-12) and torch.allclose(j1, j2, atol=1e-10)
    assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(g1, g2, strict=True))
    with pytest.raises(ModelError):
        output_and_jvp(_net(), x, method="numeric")


def test_grokalign_loss_is_task_plus_lam_times_the_terms():
    net = _net()
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.arange(16) % 4
    loss, terms = grokalign_loss(net, x, y, torch.Generator().manual_seed(2), lam=0.3)
    assert set(terms) == {"task", "jac", "offset"}
    assert terms["task"] == pytest.approx(float(nn.functional.cross_entropy(net(x), y)), rel=1e-12)
    assert float(loss) == pytest.approx(terms["task"] + 0.3 * (terms["jac"] + terms["offset"]), rel=1e-12)
    loss.backward()  # differentiable in the parameters through both regulariser terms
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    measured, terms0 = grokalign_loss(net, x, y, torch.Generator().manual_seed(2), lam=0.0, offset=False)
    assert set(terms0) == {"task", "jac"} and float(measured) == pytest.approx(terms0["task"], rel=1e-12)
    with pytest.raises(ModelError, match="loss must be"):
        grokalign_loss(net, x, y, lam=0.1, loss="hinge")


def test_regulariser_lowers_jacobian_norm_and_offset(cancer):
    Xtr, Xte, ytr, yte = cancer
    common = dict(hidden=(64, 64), epochs=30, random_state=0)
    base = GrokAlignMLP(lam=0.0, **common).fit(Xtr, ytr)
    reg = GrokAlignMLP(lam=0.1, **common).fit(Xtr, ytr)
    v1 = GrokAlignMLP(lam=0.1, offset=False, **common).fit(Xtr, ytr)
    xt = torch.as_tensor(Xtr, dtype=torch.float32)
    fro = {k: exact_frobenius(m.module_, xt).mean().item() for k, m in [("base", base), ("reg", reg), ("v1", v1)]}
    off = {k: (offset(m.module_, xt) ** 2).sum(1).mean().item() for k, m in [("base", base), ("reg", reg), ("v1", v1)]}
    assert fro["reg"] < 0.6 * fro["base"], fro
    assert fro["v1"] < 0.6 * fro["base"], fro
    assert off["reg"] < 0.5 * off["v1"], off  # only the new loss penalises the offset
    for m in (base, reg, v1):
        assert np.mean(m.predict(Xte) == yte) > 0.9
    # the recorded Hutchinson term tracks the exact norm (same order of magnitude at the end)
    assert 0.5 < reg.history_["jac"][-1] / fro["reg"] < 2.0
    assert reg.history_["jac"][-1] < 0.6 * base.history_["jac"][-1]


def test_lam_zero_follows_the_plain_mlp_exactly(cancer):
    Xtr, Xte, ytr, _ = cancer
    common = dict(hidden=(32,), epochs=12, random_state=7)
    a = MLP(**common).fit(Xtr, ytr)
    b = GrokAlignMLP(lam=0.0, **common).fit(Xtr, ytr)
    assert np.array_equal(a.predict_proba(Xte), b.predict_proba(Xte))
    assert a.history_["loss"] == b.history_["loss"]


def test_history_terms_and_loss_composition(cancer):
    Xtr, _, ytr, _ = cancer
    m = GrokAlignMLP(hidden=(16,), epochs=6, lam=0.5, batch_size=None).fit(Xtr, ytr)
    h = m.history_
    assert set(h) == {"loss", "task", "jac", "offset"}
    assert all(len(v) == 6 for v in h.values())
    for e in range(6):  # full batch: the epoch means are the single step's values
        assert h["loss"][e] == pytest.approx(h["task"][e] + 0.5 * (h["jac"][e] + h["offset"][e]), rel=1e-5)
    v1 = GrokAlignMLP(hidden=(16,), epochs=3, offset=False).fit(Xtr, ytr)
    assert set(v1.history_) == {"loss", "task", "jac"}


def test_determinism_and_float64(cancer):
    Xtr, Xte, ytr, _ = cancer
    a = GrokAlignMLP(hidden=(16,), epochs=5, dtype="float64", random_state=2).fit(Xtr, ytr)
    b = GrokAlignMLP(hidden=(16,), epochs=5, dtype="float64", random_state=2).fit(Xtr, ytr)
    assert np.array_equal(a.predict_proba(Xte), b.predict_proba(Xte))
    assert a.history_ == b.history_
    assert a.torch_logits(torch.as_tensor(Xte[:2])).dtype == torch.float64


@pytest.mark.parametrize("params", [{"lam": -0.1}, {"lam": float("nan")}, {"lam": "big"}, {"offset": "yes"}])
def test_bad_regulariser_parameters(cancer, params):
    Xtr, _, ytr, _ = cancer
    with pytest.raises(ModelError):
        GrokAlignMLP(epochs=1, **params).fit(Xtr, ytr)


def test_public_functions_reject_non_tensors():
    net = _net()
    with pytest.raises(ModelError):
        offset(net, np.zeros((2, 6)))
    with pytest.raises(ModelError):
        hutchinson_frobenius(net, torch.zeros(6))


def test_save_load_round_trip(tmp_path, cancer):
    from robustbench_align.models.persistence import load_model, save_model

    Xtr, Xte, ytr, _ = cancer
    m = GrokAlignMLP(hidden=(24, 24), epochs=8, lam=0.2, offset=False, random_state=5).fit(Xtr, ytr)
    m._save_state(tmp_path)
    params = json.loads(json.dumps(m.get_params()))
    back = GrokAlignMLP._load_state(tmp_path, params)
    assert isinstance(back, GrokAlignMLP) and back.lam == 0.2 and back.offset is False
    assert np.array_equal(back.predict_proba(Xte), m.predict_proba(Xte))
    assert np.array_equal(back.predict(Xte), m.predict(Xte))
    assert back.history_ == m.history_
    save_model(m, tmp_path / "central")
    again = load_model(tmp_path / "central")
    assert type(again) is GrokAlignMLP
    assert np.array_equal(again.predict_proba(Xte), m.predict_proba(Xte))
