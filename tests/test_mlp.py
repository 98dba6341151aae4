"""Behaviour of the MLP estimator: accuracy, determinism, the Model contract, errors, persistence."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from robustbench_align.errors import DataError, ModelError
from robustbench_align.models.base import Model
from robustbench_align.models.mlp import MLP, build_module

torch.set_num_threads(1)


def _split(X, y, seed=0):
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.3, random_state=seed, stratify=y)
    sc = StandardScaler().fit(Xtr)
    return sc.transform(Xtr), sc.transform(Xte), ytr, yte


@pytest.fixture(scope="module")
def cancer():
    X, y = load_breast_cancer(return_X_y=True)
    return _split(X, y)


@pytest.fixture(scope="module")
def fitted(cancer):
    Xtr, _, ytr, _ = cancer
    return MLP(hidden=(64, 64), epochs=40, random_state=0).fit(Xtr, ytr)


def test_fits_breast_cancer_well_above_majority(cancer, fitted):
    Xtr, Xte, ytr, yte = cancer
    majority = max(np.mean(yte == 0), np.mean(yte == 1))
    acc = np.mean(fitted.predict(Xte) == yte)
    assert majority < 0.65
    assert acc > 0.93
    assert np.mean(fitted.predict(Xtr) == ytr) > 0.97
    assert isinstance(fitted, Model)
    assert fitted.n_features == 30 and fitted.n_classes == 2
    assert fitted.n_features_in_ == 30 and list(fitted.classes_) == [0, 1]
    assert isinstance(fitted.module_, torch.nn.Sequential)
    assert len(fitted.history_["loss"]) == 40
    # the training loss goes down
    assert fitted.history_["loss"][-1] < 0.2 * fitted.history_["loss"][0]
    assert fitted.capabilities >= {"predict_proba", "torch_logits"}


def test_fits_digits_multiclass_fast():
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = _split(X, y)
    m = MLP(epochs=60).fit(Xtr, ytr)  # default (200, 200) widths
    assert m.n_classes == 10
    assert np.mean(m.predict(Xte) == yte) > 0.93


def test_deterministic_and_leaves_global_rng_alone(cancer):
    Xtr, Xte, ytr, _ = cancer
    state = torch.get_rng_state()
    a = MLP(hidden=(32,), epochs=15, random_state=3).fit(Xtr, ytr)
    assert torch.equal(state, torch.get_rng_state())
    torch.manual_seed(12345)  # a different global state must not matter
    b = MLP(hidden=(32,), epochs=15, random_state=3).fit(Xtr, ytr)
    c = MLP(hidden=(32,), epochs=15, random_state=4).fit(Xtr, ytr)
    pa, pb, pc = a.predict_proba(Xte), b.predict_proba(Xte), c.predict_proba(Xte)
    assert np.array_equal(pa, pb)
    assert not np.allclose(pa, pc)
    assert a.history_ == b.history_


def test_float64_option(cancer):
    Xtr, Xte, ytr, yte = cancer
    m = MLP(hidden=(32, 32), epochs=30, dtype="float64").fit(Xtr, ytr)
    assert m.torch_dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in m.module_.parameters())
    out = m.torch_logits(torch.as_tensor(Xte[:5], dtype=torch.float32))
    assert out.dtype == torch.float64
    assert np.mean(m.predict(Xte) == yte) > 0.93
    m2 = MLP(hidden=(32, 32), epochs=30, dtype="float64").fit(Xtr, ytr)
    assert np.array_equal(m.predict_proba(Xte), m2.predict_proba(Xte))


def test_predict_proba_and_torch_logits_agree(cancer, fitted):
    _, Xte, _, _ = cancer
    P = fitted.predict_proba(Xte)
    assert P.dtype == np.float64 and P.shape == (Xte.shape[0], 2)
    assert np.allclose(P.sum(axis=1), 1.0, atol=1e-12)
    assert np.all(P >= 0)
    z = fitted.torch_logits(torch.as_tensor(Xte, dtype=torch.float64))
    assert z.dtype == torch.float32  # cast to the model dtype
    assert np.allclose(torch.softmax(z.double(), dim=1).numpy(), P, atol=1e-6)
    assert np.array_equal(fitted.predict(Xte), np.argmax(z.detach().numpy(), axis=1))
    assert np.array_equal(fitted.predict(Xte), np.argmax(P, axis=1))
    # single row is accepted
    assert fitted.predict_proba(Xte[0]).shape == (1, 2)


def test_torch_logits_is_differentiable(cancer):
    Xtr, Xte, ytr, _ = cancer
    m = MLP(hidden=(16,), activation="tanh", epochs=10, dtype="float64").fit(Xtr, ytr)
    x = torch.as_tensor(Xte[:3], dtype=torch.float64).requires_grad_(True)
    z = m.torch_logits(x)
    (g,) = torch.autograd.grad(z[:, 1].sum(), x)
    # central finite difference along one coordinate
    h = 1e-6
    e = np.zeros(30)
    e[4] = h
    fd = (m.decision_function(Xte[:3] + e)[:, 1] - m.decision_function(Xte[:3] - e)[:, 1]) / (2 * h)
    assert np.allclose(g[:, 4].numpy(), fd, rtol=1e-5, atol=1e-8)
    assert g.abs().sum() > 0


def test_input_errors(cancer, fitted):
    Xtr, Xte, ytr, _ = cancer
    with pytest.raises(ModelError, match="expects 30 features"):
        fitted.predict(Xte[:, :29])
    bad = Xte.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ModelError, match="NaN"):
        fitted.predict_proba(bad)
    Xnan = Xtr.copy()
    Xnan[3, 2] = np.nan
    with pytest.raises(ModelError, match="NaN"):
        MLP(epochs=1).fit(Xnan, ytr)
    with pytest.raises(DataError, match="one class"):
        MLP(epochs=1).fit(Xtr, np.zeros(len(ytr), dtype=int))
    with pytest.raises(DataError):
        MLP(epochs=1).fit(Xtr, ytr[:-1])
    with pytest.raises(DataError):
        MLP(epochs=1).fit(Xtr, np.where(ytr == 1, "a", "b"))
    with pytest.raises(ModelError, match="2-D"):
        MLP(epochs=1).fit(Xtr[0], ytr[:1])
    with pytest.raises(ModelError, match="torch_logits expects"):
        fitted.torch_logits(torch.zeros(2, 5))
    with pytest.raises(ModelError, match="not fitted"):
        MLP().predict(Xte)


@pytest.mark.parametrize(
    "params",
    [
        {"activation": "swish"},
        {"hidden": [0, 4]},
        {"hidden": "64"},
        {"optimizer": "lbfgs"},
        {"lr": -1.0},
        {"loss": "hinge"},
        {"dtype": "float16"},
        {"epochs": 0},
        {"batch_size": 0},
        {"init_scale": 0.0},
        {"momentum": 1.0},
    ],
)
def test_bad_hyperparameters_raise_model_error(cancer, params):
    Xtr, _, ytr, _ = cancer
    with pytest.raises(ModelError):
        MLP(**params).fit(Xtr, ytr)


@pytest.mark.parametrize(
    "params",
    [
        {"activation": "tanh"},
        {"activation": "gelu"},
        {"activation": "quadratic", "lr": 3e-3},
        {"optimizer": "sgd", "lr": 0.05},
        {"optimizer": "adam"},
        {"loss": "mse"},
        {"batch_size": None, "lr": 1e-2},
        {"hidden": []},
        {"bias": False},
    ],
)
def test_variants_learn(cancer, params):
    Xtr, Xte, ytr, yte = cancer
    m = MLP(**{"hidden": (32,), "epochs": 25, **params}).fit(Xtr, ytr)
    assert np.mean(m.predict(Xte) == yte) > 0.9


def test_init_scale_multiplies_default_init():
    g1, g8 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    a = build_module(30, 2, [50], generator=g1)
    b = build_module(30, 2, [50], init_scale=8.0, generator=g8)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.allclose(pb, 8.0 * pa)
    w = a[0].weight
    assert w.abs().max() <= 1 / np.sqrt(30) and w.abs().max() > 0.9 / np.sqrt(30)
    assert build_module(4, 3, [5], bias=False, activation="quadratic")[0].bias is None


def test_early_stopping_restores_best_epoch(cancer):
    Xtr, Xte, ytr, _ = cancer
    Xa, Xv, ya, yv = train_test_split(Xtr, ytr, test_size=0.25, random_state=1, stratify=ytr)
    m = MLP(hidden=(128, 128), lr=1e-2, epochs=200, early_stopping=True, patience=5).fit(Xa, ya, Xv, yv)
    vl = m.history_["val_loss"]
    assert m.n_epochs_ == len(vl) < 200
    assert m.best_epoch_ == int(np.argmin(vl)) == m.n_epochs_ - 6
    with torch.no_grad():
        z = m.torch_logits(torch.as_tensor(Xv))
        final = float(torch.nn.functional.cross_entropy(z, torch.as_tensor(yv)))
    assert final == pytest.approx(min(vl), rel=1e-6)
    # without X_val, a seeded split of validation_fraction is used, deterministically
    m1 = MLP(hidden=(32,), epochs=60, lr=1e-2, early_stopping=True, patience=3).fit(Xtr, ytr)
    m2 = MLP(hidden=(32,), epochs=60, lr=1e-2, early_stopping=True, patience=3).fit(Xtr, ytr)
    assert np.array_equal(m1.predict_proba(Xte), m2.predict_proba(Xte))
    assert "val_loss" in m1.history_


def test_validation_data_is_only_monitored_without_early_stopping(cancer):
    Xtr, Xte, ytr, _ = cancer
    a = MLP(hidden=(32,), epochs=10).fit(Xtr, ytr)
    b = MLP(hidden=(32,), epochs=10).fit(Xtr, ytr, Xte[:50], np.zeros(50, dtype=int) + 1)
    assert np.array_equal(a.predict_proba(Xte), b.predict_proba(Xte))
    assert len(b.history_["val_acc"]) == 10
    with pytest.raises(DataError):
        MLP(epochs=1).fit(Xtr, ytr, Xte[:5], np.array([0, 1, 2, 0, 1]))
    with pytest.raises(DataError):
        MLP(epochs=1).fit(Xtr, ytr, Xte[:5], None)


def test_sklearn_conventions(fitted):
    params = fitted.get_params()
    json.dumps(params)  # JSON-serialisable
    assert params["hidden"] == (64, 64) and params["random_state"] == 0
    c = clone(fitted)
    assert not hasattr(c, "module_")
    assert c.get_params() == params
    c.set_params(lr=0.5)
    assert c.lr == 0.5


def test_save_load_round_trip(tmp_path, cancer, fitted):
    _, Xte, _, _ = cancer
    fitted._save_state(tmp_path)
    params = json.loads(json.dumps(fitted.get_params()))  # as the manifest stores them (tuples -> lists)
    m = MLP._load_state(tmp_path, params)
    assert np.array_equal(m.predict_proba(Xte), fitted.predict_proba(Xte))
    assert m.history_ == fitted.history_
    assert m.n_features == 30 and m.n_classes == 2 and m.torch_dtype == torch.float32
    # the weights file is a plain dict of tensors, readable with weights_only=True
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    assert set(state) == {"0.weight", "0.bias", "2.weight", "2.bias", "4.weight", "4.bias"}
    # parameters that do not match the saved weights are refused
    with pytest.raises(ModelError, match="do not fit"):
        MLP._load_state(tmp_path, {**params, "hidden": [64, 32]})
    (tmp_path / "weights.pt").unlink()
    with pytest.raises(ModelError, match="missing"):
        MLP._load_state(tmp_path, params)


def test_central_persistence_and_registry(tmp_path, cancer):
    from robustbench_align.models.persistence import load_model, save_model
    from robustbench_align.models.registry import build

    Xtr, Xte, ytr, _ = cancer
    est = build("mlp", epochs=5, random_state=1).fit(Xtr, ytr)
    save_model(est, tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert isinstance(back, MLP) and back.name == "mlp"
    assert np.array_equal(back.predict(Xte), est.predict(Xte))
    assert np.array_equal(back.predict_proba(Xte), est.predict_proba(Xte))
