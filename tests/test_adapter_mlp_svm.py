"""The scikit-learn MLPClassifier / SVC / NuSVC adapters: torch copies that reproduce the library, and the gradient path they open.

Fidelity is checked against the library's own predict_proba / decision_function / predict on
random points; the attack comparisons (slow) run Foolbox FMN/DDN and torchattacks FAB on the same
converted module and check that `minimal_radius` is at least as small, with every adversarial
re-checked on the ORIGINAL sklearn estimator.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.svm import SVC, NuSVC

import robustbench_align as rba
from conftest import tabular_data
from robustbench_align.models.adapters import find_adapter, list_adapters
from robustbench_align.models.adapters.sklearn_mlp import TorchMLP, WrappedMLP
from robustbench_align.models.adapters.sklearn_svm import TorchSVM, WrappedSVM, adapt_svm, ovr_from_ovo

ACTIVATIONS = ("relu", "tanh", "logistic", "identity")
KERNELS = ("linear", "rbf", "poly", "sigmoid")
TOL = 1e-6


def _data(k: int) -> tuple[np.ndarray, np.ndarray]:
    return tabular_data(150, 5, k, seed=10 + k)


def _random_points(n: int = 500, d: int = 5, seed: int = 1) -> np.ndarray:
    pts: np.ndarray = np.random.default_rng(seed).normal(size=(n, d)) * 1.5
    return pts


def _mlp(k: int, activation: str = "tanh", hidden: tuple[int, ...] = (8, 6)) -> Any:
    X, y = _data(k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return MLPClassifier(hidden, activation=activation, max_iter=300, random_state=0).fit(X, y)


def _svm(cls: Any, kernel: str, k: int, **kw: Any) -> Any:
    X, y = _data(k)
    extra = {"nu": 0.3} if cls is NuSVC else {"C": 2.0}
    return cls(kernel=kernel, coef0=0.5, **extra, **kw).fit(X, y)


def _logits(model: Any, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        z: np.ndarray = model.torch_logits(torch.as_tensor(X)).numpy()
    return z


def _label_index(est: Any, labels: np.ndarray) -> np.ndarray:
    classes = list(est.classes_)
    return np.array([classes.index(v) for v in labels])


# ----------------------------------------------------------------------------------------
# the table
# ----------------------------------------------------------------------------------------
def test_table_entries_come_before_generic_sklearn() -> None:
    names = list_adapters()
    for entry in ("sklearn-mlp", "sklearn-svc", "sklearn-nusvc"):
        assert names.index(entry) < names.index("sklearn")
    e = find_adapter(_mlp(2))
    assert e is not None and e.name == "sklearn-mlp"
    e = find_adapter(_svm(NuSVC, "rbf", 2))
    assert e is not None and e.name == "sklearn-nusvc"


def test_wrap_gives_the_gradient_capability() -> None:
    for est in (_mlp(3), _svm(SVC, "rbf", 3), _svm(NuSVC, "poly", 2)):
        m = rba.wrap(est)
        assert isinstance(m, (TorchMLP, TorchSVM))
        assert m.has("torch_logits") and m.path_note is None
        assert m.torch_dtype == torch.float64  # type: ignore[attr-defined]


# ----------------------------------------------------------------------------------------
# MLPClassifier fidelity
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_mlp_reproduces_predict_proba_and_predict(activation: str, k: int) -> None:
    est = _mlp(k, activation)
    m = rba.wrap(est)
    assert isinstance(m, TorchMLP)
    R = _random_points()
    z = _logits(m, R)
    assert z.shape == (500, k)
    p = torch.softmax(torch.as_tensor(z), dim=1).numpy()
    err = float(np.abs(p - est.predict_proba(R)).max())
    assert err <= TOL, err
    np.testing.assert_array_equal(z.argmax(1), _label_index(est, est.predict(R)))
    np.testing.assert_array_equal(m.predict(R), z.argmax(1))
    np.testing.assert_array_equal(m.predict_proba(R), est.predict_proba(R))  # the library's own


def test_mlp_binary_logits_are_zero_and_z() -> None:
    est = _mlp(2, "relu")
    m = rba.wrap(est)
    R = _random_points(50)
    z = _logits(m, R)
    np.testing.assert_array_equal(z[:, 0], 0.0)
    p1 = 1.0 / (1.0 + np.exp(-z[:, 1]))
    np.testing.assert_allclose(p1, est.predict_proba(R)[:, 1], atol=TOL)


def test_mlp_string_labels_map_to_class_indices() -> None:
    X, y = _data(3)
    names = np.array(["cat", "ant", "bee"])[y]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier((6,), max_iter=200, random_state=0).fit(X, names)
    m = rba.wrap(est)
    R = _random_points(200)
    np.testing.assert_array_equal(_logits(m, R).argmax(1), m.predict(R))
    np.testing.assert_array_equal(est.classes_[m.predict(R)], est.predict(R))


def test_mlp_multilabel_is_a_black_box(caplog: pytest.LogCaptureFixture) -> None:
    X, y = _data(3)
    Y = np.stack([y == 0, y == 1], axis=1).astype(int)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est = MLPClassifier((6,), max_iter=100, random_state=0).fit(X, Y)
    with caplog.at_level(logging.WARNING):
        try:
            m = rba.wrap(est)
        except rba.ModelError:  # the generic sklearn wrapper refuses multi-output classifiers: also fine
            return
    assert isinstance(m, WrappedMLP) and not m.has("torch_logits")
    assert m.path_note is not None and m.path_note.startswith("gradient path refused:") and "black box" in caplog.text


# ----------------------------------------------------------------------------------------
# SVC / NuSVC fidelity
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("cls", [SVC, NuSVC])
def test_svm_reproduces_decision_function_and_predict(cls: Any, kernel: str, k: int) -> None:
    est = _svm(cls, kernel, k, decision_function_shape="ovo")
    m = rba.wrap(est)
    assert isinstance(m, TorchSVM)
    R = _random_points()
    ref = est.decision_function(R)
    f = m.torch_decision(R)
    f = f.ravel() if k == 2 else f
    err = float(np.abs(f - ref).max())
    assert err <= TOL * (1.0 + float(np.abs(ref).max())), err
    z = _logits(m, R)
    lib = _label_index(est, est.predict(R))
    np.testing.assert_array_equal(z.argmax(1), lib)  # ties included: the logits follow libsvm's lowest-index rule
    np.testing.assert_array_equal(m.predict(R), lib)
    if k == 2:  # sklearn's sign convention: f > 0 means classes_[1]
        np.testing.assert_array_equal(lib, (ref > 0).astype(int))


@pytest.mark.parametrize("kernel", KERNELS)
def test_svm_break_ties_logits_are_sklearns_ovr_decision_function(kernel: str) -> None:
    est = _svm(SVC, kernel, 3, decision_function_shape="ovr", break_ties=True)
    m = rba.wrap(est)
    R = _random_points()
    z = _logits(m, R)
    assert float(np.abs(z - est.decision_function(R)).max()) <= TOL
    np.testing.assert_array_equal(z.argmax(1), _label_index(est, est.predict(R)))


def test_svm_ovr_shape_without_break_ties_and_four_classes() -> None:
    X, y = tabular_data(200, 5, 4, seed=3)
    est = SVC(kernel="rbf").fit(X, y)  # ovr shape, libsvm votes
    m = rba.wrap(est)
    R = _random_points(1000)
    z = _logits(m, R)
    assert isinstance(m, TorchSVM)
    np.testing.assert_allclose(z, m.library_logits(R), atol=1e-12)
    np.testing.assert_array_equal(z.argmax(1), est.predict(R))
    # ties in the votes happen on these points, and the argmax still follows libsvm's lowest-index rule
    f = m.ovo_decision(R)
    votes = np.zeros((R.shape[0], 4))
    pairs = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    for p, (i, j) in enumerate(pairs):
        votes[:, i] += f[:, p] > 0
        votes[:, j] += f[:, p] <= 0
    tied = (votes == votes.max(1, keepdims=True)).sum(1) > 1
    assert tied.any()
    np.testing.assert_array_equal(z[tied].argmax(1), votes[tied].argmax(1))


def test_ovr_from_ovo_confidence_mode_is_sklearn() -> None:
    from sklearn.utils.multiclass import _ovr_decision_function

    dec = np.random.default_rng(0).normal(size=(300, 6))
    np.testing.assert_allclose(ovr_from_ovo(dec, 4, "confidence"), _ovr_decision_function(dec < 0, -dec, 4), atol=1e-15)


def test_svm_predict_proba_library_or_softmax_of_logits() -> None:
    R = _random_points(100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # sklearn 1.9 deprecates probability=True
        est = _svm(SVC, "rbf", 3, probability=True, random_state=0)
    m = rba.wrap(est)
    np.testing.assert_array_equal(m.predict_proba(R), est.predict_proba(R))
    est2 = _svm(SVC, "rbf", 3)
    m2 = rba.wrap(est2)
    p = m2.predict_proba(R)
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_allclose(p, torch.softmax(torch.as_tensor(_logits(m2, R)), 1).numpy(), atol=1e-12)
    np.testing.assert_array_equal(p.argmax(1), est2.predict(R))


def test_vote_gradient_is_straight_through() -> None:
    est = _svm(SVC, "rbf", 3)
    hard, soft = adapt_svm(est, vote_temperature=None), adapt_svm(est)
    R = _random_points(200)
    np.testing.assert_array_equal(_logits(hard, R), _logits(soft, R))
    x = torch.as_tensor(R[:20]).requires_grad_(True)
    soft.torch_logits(x)[:, 0].sum().backward()  # type: ignore[attr-defined]
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("kernel", ["callable", "precomputed"])
def test_unrebuildable_kernels_are_black_boxes(kernel: str, caplog: pytest.LogCaptureFixture) -> None:
    X, y = _data(3)
    if kernel == "callable":
        est = SVC(kernel=lambda a, b: a @ b.T).fit(X, y)
        Xq = _random_points(20)
    else:
        est = SVC(kernel="precomputed").fit(X @ X.T, y)
        Xq = _random_points(20) @ X.T
    with caplog.at_level(logging.WARNING):
        m = rba.wrap(est)
    assert isinstance(m, WrappedSVM) and not isinstance(m, TorchSVM)
    assert not m.has("torch_logits")
    assert m.path_note is not None and m.path_note.startswith("gradient path refused:") and "\n" not in m.path_note
    assert "black box" in caplog.text
    np.testing.assert_array_equal(m.predict(Xq), est.predict(Xq))
    np.testing.assert_allclose(m.predict_proba(Xq).sum(1), 1.0)


# ----------------------------------------------------------------------------------------
# the gradient path
# ----------------------------------------------------------------------------------------
def _attack_points(est: Any, k: int, n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    X, y = _data(k)
    ok = _label_index(est, est.predict(X)) == y
    return X[ok][:n], y[ok][:n]


def _check_flips_original(est: Any, res: Any, y: np.ndarray) -> None:
    found = np.isfinite(res.distance) & (res.distance > 0)
    assert found.any()
    flipped = _label_index(est, est.predict(res.x_adv[found])) != y[found]
    assert flipped.all()


@pytest.mark.parametrize("make", ["mlp", "svm"])
def test_gradient_attack_runs_and_flips_the_original(make: str) -> None:
    est = _mlp(3, "relu") if make == "mlp" else _svm(SVC, "rbf", 3)
    X, y = _attack_points(est, 3, n=10)
    res = rba.minimal_radius(est, X, y, "l2", attacks=["fmn"])
    assert np.isfinite(res.distance).mean() >= 0.8  # FMN alone, 10 points: the ensemble finds the rest
    _check_flips_original(est, res, y)


def _library_radii(model: Any, est: Any, X: np.ndarray, y: np.ndarray, norm: str) -> dict[str, np.ndarray]:
    """Foolbox FMN (+ DDN for l2) and torchattacks FAB on the converted module; distances verified on `est`."""
    import foolbox as fb
    import torchattacks

    module = model.module
    bound = float(np.abs(X).max() + 20.0)
    fmodel = fb.PyTorchModel(module.eval(), bounds=(-bound, bound), device="cpu")
    xt, yt = torch.as_tensor(X), torch.as_tensor(y)
    advs: dict[str, np.ndarray] = {}
    attacks: dict[str, Any] = {"foolbox-fmn": fb.attacks.L2FMNAttack(steps=200) if norm == "l2" else fb.attacks.LInfFMNAttack(steps=200)}
    if norm == "l2":
        attacks["foolbox-ddn"] = fb.attacks.DDNAttack(steps=200, init_epsilon=0.5)
    for name, attack in attacks.items():
        _, adv, _ = attack(fmodel, xt, yt, epsilons=None)
        advs[name] = adv.detach().numpy()
    lo, scale = float(X.min()) - bound / 2, bound  # torchattacks clamps to [0, 1]: a unit box holding every ball

    class Unit(torch.nn.Module):
        def forward(self, u: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = module(lo + scale * u.double()).to(u.dtype)
            return out

    fab = torchattacks.FAB(Unit(), norm="L2" if norm == "l2" else "Linf", steps=100, n_restarts=3, eps=1.0, n_classes=model.n_classes)
    adv_u = fab(torch.as_tensor((X - lo) / scale, dtype=torch.float32), yt)
    advs["torchattacks-fab"] = lo + scale * adv_u.detach().double().numpy()
    p = 2 if norm == "l2" else np.inf
    out = {}
    for name, A in advs.items():
        flipped = _label_index(est, est.predict(A)) != y
        out[name] = np.where(flipped, np.linalg.norm(A - X, ord=p, axis=1), np.inf)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("norm", ["l2", "linf"])
@pytest.mark.parametrize("make", ["mlp2", "mlp3", "svc2", "svc3", "nusvc3-poly"])
def test_minimal_radius_beats_foolbox_and_torchattacks(make: str, norm: str, record_property: Any) -> None:
    import foolbox  # noqa: F401 - the anchor library (the `anchors` extra); a missing anchor is a failure, not a skip
    k = int(make[-1]) if make[-1].isdigit() else 3
    if make.startswith("mlp"):
        est = _mlp(k, "tanh", (16,))
    elif make.startswith("nusvc"):
        est = _svm(NuSVC, "poly", k)
    else:
        est = _svm(SVC, "rbf", k)
    model = rba.wrap(est)
    assert model.has("torch_logits")
    X, y = _attack_points(est, k)
    res = rba.minimal_radius(model, X, y, norm)
    _check_flips_original(est, res, y)
    libs = _library_radii(model, est, X, y, norm)
    best_lib = min(float(np.median(d)) for d in libs.values())
    med = float(np.median(res.distance))
    assert med <= best_lib * (1 + 1e-6), (med, {n: float(np.median(d)) for n, d in libs.items()})
    bb = rba.minimal_radius(model, X, y, norm, attacks=["hsj"])
    _check_flips_original(est, bb, y)
    grad_only = np.min(np.stack([d for name, d in res.per_attack.items() if name != "hsj"]), axis=0)
    hsj = float(np.median(bb.distance))
    ratios = {"vs_best_library": med / best_lib, "vs_hsj": med / hsj, "gradient_only_vs_hsj": float(np.median(grad_only)) / hsj}
    for key, value in ratios.items():
        record_property(key, round(value, 4))
    logging.getLogger(__name__).warning("%s %s radius ratios: %s", make, norm, {key: round(v, 4) for key, v in ratios.items()})
