"""RFM / RFAM: accuracy, exact gradients, the M iteration, determinism, persistence and the Model contract."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_wine
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from robustbench_align.errors import DataError, ModelError
from robustbench_align.models.persistence import load_model, save_model
from robustbench_align.models.rfm import RFAM, RFM

torch.set_num_threads(1)


def _split(loader, seed=0):
    X, y = loader(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=seed, stratify=y)
    sc = StandardScaler().fit(Xtr)
    return sc.transform(Xtr), ytr, sc.transform(Xte), yte


@pytest.fixture(scope="module")
def cancer():
    return _split(load_breast_cancer)


@pytest.fixture(scope="module")
def wine():
    return _split(load_wine)


@pytest.fixture(scope="module")
def fitted(cancer):
    Xtr, ytr, _, _ = cancer
    return {cls.__name__: cls(random_state=0).fit(Xtr, ytr) for cls in (RFM, RFAM)}


def _autograd_jac(model, X):
    """(n, c, d) Jacobian of torch_logits by reverse-mode autograd."""
    x = torch.tensor(X, dtype=torch.float64, requires_grad=True)
    J = torch.func.jacrev(lambda z: model.torch_logits(z).sum(0))(x)  # (c, n, d)
    return J.permute(1, 0, 2).detach().numpy()


@pytest.mark.parametrize("loader", [load_breast_cancer, load_wine])
@pytest.mark.parametrize("cls", [RFM, RFAM])
def test_beats_majority_baseline(cls, loader):
    Xtr, ytr, Xte, yte = _split(loader)
    m = cls(random_state=0).fit(Xtr, ytr)
    acc = float((m.predict(Xte) == yte).mean())
    majority = np.bincount(yte).max() / yte.size
    assert acc > majority + 0.2, (acc, majority)
    assert acc > 0.9
    assert m.n_features == Xtr.shape[1] and m.n_classes == len(np.unique(ytr))
    p = m.predict_proba(Xte)
    assert p.shape == (Xte.shape[0], m.n_classes)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    assert m.capabilities >= {"predict_proba", "torch_logits"}


@pytest.mark.parametrize("name", ["RFM", "RFAM"])
def test_analytic_gradient_matches_autograd(fitted, cancer, name):
    m = fitted[name]
    rng = np.random.default_rng(1)
    X_rand = rng.normal(size=(25, m.n_features))
    X_train = m.X_fit_[:25]  # exactly training points: the self-term must be zeroed in both paths
    for X in (X_rand, X_train, cancer[2][:25]):
        G = m.gradient(X)
        J = _autograd_jac(m, X)
        assert G.shape == (X.shape[0], m.n_classes, m.n_features)
        assert np.all(np.isfinite(J))
        scale = np.abs(G).max()
        assert scale > 1e-3  # gradients are not trivially zero
        np.testing.assert_allclose(G, J, atol=1e-6 * max(1.0, scale), rtol=0)


def test_torch_logits_gradient_is_finite_at_training_points(fitted):
    m = fitted["RFM"]
    x = torch.tensor(m.X_fit_[:10], requires_grad=True)
    out = m.torch_logits(x)
    out[:, 1].sum().backward()
    assert torch.all(torch.isfinite(x.grad))


@pytest.mark.parametrize("name", ["RFM", "RFAM"])
def test_numpy_and_torch_paths_agree(fitted, cancer, name):
    m = fitted[name]
    Xte = cancer[2]
    raw = m.decision_function(Xte)
    with torch.no_grad():
        t = m.torch_logits(torch.tensor(Xte)).numpy()
    np.testing.assert_allclose(raw, t, atol=1e-10, rtol=0)
    np.testing.assert_array_equal(m.predict(Xte), t.argmax(1))
    # predictions at training points also agree (self-pairs: kernel value 1 in both paths)
    with torch.no_grad():
        t_tr = m.torch_logits(torch.tensor(m.X_fit_)).numpy()
    np.testing.assert_allclose(m.decision_function(m.X_fit_), t_tr, atol=1e-10, rtol=0)
    np.testing.assert_array_equal(m.predict(m.X_fit_), t_tr.argmax(1))


def test_predict_is_argmax_of_raw_outputs_ties_low(fitted, cancer):
    m = fitted["RFM"]
    raw = m.decision_function(cancer[2])
    np.testing.assert_array_equal(m.predict(cancer[2]), np.argmax(raw, axis=1))
    # far from the data every kernel output is ~0: argmax falls to class 0 (lowest index) on exact ties
    far = np.full((1, m.n_features), 1e6)
    assert np.all(m.decision_function(far) == 0.0) and m.predict(far)[0] == 0


@pytest.mark.parametrize("cls", [RFM, RFAM])
def test_every_M_is_symmetric_psd_with_trace_d(cls, wine):
    Xtr, ytr, _, _ = wine
    m = cls(iters=4, random_state=0).fit(Xtr, ytr)
    d = Xtr.shape[1]
    n_regs, iters = m.M_path_.shape[:2]
    assert (n_regs, iters) == (5, 4)
    for r in range(n_regs):
        for t in range(iters):
            M = m.M_path_[r, t]
            np.testing.assert_allclose(M, M.T, atol=1e-12)
            assert np.linalg.eigvalsh(M).min() > -1e-9
            assert np.trace(M) == pytest.approx(d, rel=1e-12)
    # the AGOP updates actually move M away from its start
    assert np.abs(m.M_path_[0, 1] - m.M_path_[0, 0]).max() > 1e-2


def test_rfam_initial_M_is_normalised_centred_covariance(cancer):
    Xtr, ytr, Xte, yte = cancer
    m = RFAM(iters=1, regs=(1e-2,)).fit(Xtr, ytr, X_val=Xte, y_val=yte)
    X_shift = Xtr + 5.0  # centring must make the initial metric shift invariant
    m2 = RFAM(iters=1, regs=(1e-2,)).fit(X_shift, ytr, X_val=Xte + 5.0, y_val=yte)
    cov = np.cov(Xtr, rowvar=False, ddof=1)
    expected = cov * Xtr.shape[1] / np.trace(cov)
    np.testing.assert_allclose(m.M_init_, expected, atol=1e-12)
    np.testing.assert_allclose(m2.M_init_, expected, atol=1e-10)
    assert m.best_iter_ == 0
    np.testing.assert_allclose(m.M_, expected, atol=1e-12)


def test_rfm_initial_M_is_identity(cancer):
    Xtr, ytr, _, _ = cancer
    m = RFM(iters=2, regs=(1e-2,)).fit(Xtr, ytr)
    np.testing.assert_array_equal(m.M_init_, np.eye(Xtr.shape[1]))
    np.testing.assert_array_equal(m.M_path_[0, 0], np.eye(Xtr.shape[1]))
    # an intermediate alpha blends covariance and identity before normalisation
    b = RFM(alpha=0.5, iters=1, regs=(1e-2,)).fit(Xtr, ytr)
    cov = np.cov(b.X_fit_, rowvar=False)
    raw = 0.5 * cov + 0.5 * np.eye(cov.shape[0])
    np.testing.assert_allclose(b.M_init_, raw * cov.shape[0] / np.trace(raw), atol=1e-12)


def test_fused_agop_equals_mean_gradient_outer_product(wine):
    """M_1 of a 2-iteration fit is the trace-normalised AGOP of the iteration-0 predictor."""
    Xtr, ytr, Xva, yva = wine
    m0 = RFM(iters=1, regs=(0.1,)).fit(Xtr, ytr, X_val=Xva, y_val=yva)
    m1 = RFM(iters=2, regs=(0.1,)).fit(Xtr, ytr, X_val=Xva, y_val=yva)
    agop = m0.agop(Xtr)
    expected = agop * Xtr.shape[1] / np.trace(agop)
    np.testing.assert_allclose(m1.M_path_[0, 1], expected, atol=1e-10)


def test_selection_is_best_validation_accuracy(fitted):
    m = fitted["RFAM"]
    accs = [h["val_acc"] for h in m.history_]
    assert len(accs) == 5 * 5
    assert m.best_val_acc_ == max(accs)
    first = next(h for h in m.history_ if h["val_acc"] == max(accs))
    assert (first["reg"], first["iter"]) == (m.reg_, m.best_iter_)
    ri = [10.0, 1.0, 0.1, 1e-2, 1e-3].index(m.reg_)
    np.testing.assert_array_equal(m.M_, m.M_path_[ri, m.best_iter_])


def test_deterministic_by_seed(wine):
    Xtr, ytr, Xte, _ = wine
    a = RFAM(random_state=3, max_agop_points=50).fit(Xtr, ytr)
    b = RFAM(random_state=3, max_agop_points=50).fit(Xtr, ytr)
    np.testing.assert_array_equal(a.M_, b.M_)
    np.testing.assert_array_equal(a.A_, b.A_)
    np.testing.assert_array_equal(a.decision_function(Xte), b.decision_function(Xte))
    assert a.n_agop_points_ == 50
    c = RFAM(random_state=4, max_agop_points=50).fit(Xtr, ytr)
    assert not np.array_equal(a.X_fit_, c.X_fit_)  # another seed carves another validation split


def test_save_load_round_trip(fitted, cancer, tmp_path):
    Xte = cancer[2]
    for name, m in fitted.items():
        where = save_model(m, tmp_path / name)
        with np.load(where / "rfm.npz", allow_pickle=False) as z:
            assert all(z[k].dtype != object for k in z.files)
        back = load_model(where)
        assert type(back) is type(m)
        np.testing.assert_array_equal(back.decision_function(Xte), m.decision_function(Xte))
        np.testing.assert_array_equal(back.predict(Xte), m.predict(Xte))
        np.testing.assert_array_equal(back.gradient(Xte[:5]), m.gradient(Xte[:5]))
        assert (back.reg_, back.best_iter_, back.history_) == (m.reg_, m.best_iter_, m.history_)
        json.dumps(m.get_params())


def test_load_rejects_corrupted_state(fitted, tmp_path):
    m = fitted["RFM"]
    m._save_state(tmp_path)
    with np.load(tmp_path / "rfm.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["M"] = arrays["M"][:3, :3]
    np.savez(tmp_path / "rfm.npz", **arrays)
    with pytest.raises(ModelError, match="shapes"):
        RFM._load_state(tmp_path, m.get_params())
    (tmp_path / "rfm.npz").unlink()
    with pytest.raises(ModelError, match="missing"):
        RFM._load_state(tmp_path, m.get_params())


def test_float32_option(wine):
    Xtr, ytr, Xte, yte = wine
    m = RFM(dtype="float32").fit(Xtr, ytr)
    assert (m.predict(Xte) == yte).mean() > 0.9
    out = m.torch_logits(torch.tensor(Xte))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(m.decision_function(Xte), out.detach().double().numpy(), atol=1e-5)
    G = m.gradient(Xte[:10])
    x = torch.tensor(Xte[:10], dtype=torch.float32, requires_grad=True)
    J = torch.func.jacrev(lambda z: m.torch_logits(z).sum(0))(x).permute(1, 0, 2).detach().double().numpy()
    np.testing.assert_allclose(G, J, atol=1e-4 * max(1.0, np.abs(G).max()))


def test_bad_input_and_limits(fitted, wine):
    Xtr, ytr, _, _ = wine
    m = fitted["RFM"]
    with pytest.raises(ModelError, match="features"):
        m.predict(np.zeros((2, 3)))
    with pytest.raises(ModelError, match="NaN"):
        m.predict(np.full((1, m.n_features), np.nan))
    with pytest.raises(ModelError, match="torch_logits"):
        m.torch_logits(torch.zeros(2, 3, dtype=torch.float64))
    with pytest.raises(DataError):
        RFM().fit(Xtr, ytr.astype(float) + 0.5)
    with pytest.raises(DataError):
        RFM().fit(Xtr, np.zeros_like(ytr))
    with pytest.raises(DataError):
        RFM().fit(Xtr, ytr, X_val=Xtr)
    with pytest.raises(ModelError, match="max_direct_n=50"):
        RFM(max_direct_n=50).fit(Xtr, ytr)
    with pytest.raises(ModelError, match="dtype"):
        RFM(dtype="float16").fit(Xtr, ytr)
    with pytest.raises(ModelError, match="alpha"):
        RFM(alpha=2.0).fit(Xtr, ytr)
    with pytest.raises(ModelError, match="not fitted"):
        RFM().predict(Xtr)
    with pytest.raises(ModelError, match="2-D"):
        RFM().fit(Xtr[0], ytr[:1])


def test_registry_builds_both():
    from robustbench_align.models.registry import build

    rfm, rfam = build("rfm"), build("rfam")
    assert isinstance(rfam, RFAM) and rfam.alpha == 0.0 and rfm.alpha == 1.0
    assert RFAM().alpha == 0.0 and RFM().alpha == 1.0
    json.dumps(rfam.get_params())


def test_solver_falls_back_when_not_positive_definite():
    from robustbench_align.models.rfm import _ridge_solve

    Y = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    indefinite = lambda: torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64)  # noqa: E731
    np.testing.assert_allclose(_ridge_solve(indefinite, 0.0, Y).numpy(), [[0.0, 2.0], [1.0, 0.0]], atol=1e-12)
    singular = lambda: torch.ones((2, 2), dtype=torch.float64)  # noqa: E731
    A = _ridge_solve(singular, 0.0, Y).numpy()
    np.testing.assert_allclose(A, np.linalg.pinv(np.ones((2, 2))) @ Y.numpy(), atol=1e-12)


def test_duplicate_rows_and_zero_reg_still_fit(wine):
    Xtr, ytr, Xte, _ = wine
    X = np.vstack([Xtr, Xtr[:10]])
    y = np.concatenate([ytr, ytr[:10]])
    m = RFM(regs=(0.0,), iters=2).fit(X, y, X_val=Xte[:20], y_val=wine[3][:20])
    assert np.all(np.isfinite(m.A_)) and np.all(np.isfinite(m.decision_function(Xte)))
    G = m.gradient(X[-10:])  # duplicated training points: both copies are coincident, both zeroed
    np.testing.assert_allclose(G, _autograd_jac(m, X[-10:]), atol=1e-6 * max(1.0, np.abs(G).max()))


def test_validation_labels_are_checked(wine):
    Xtr, ytr, Xte, _ = wine
    with pytest.raises(DataError, match="y_val"):
        RFM().fit(Xtr, ytr, X_val=Xte[:3], y_val=np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match="y_val"):
        RFM().fit(Xtr, ytr, X_val=Xte[:3], y_val=np.array([0.5, 1.0, 2.0]))
