"""The Model contract, checked the same way for every registry model and every wrap() adapter.

Like scikit-learn's `check_estimator`: each check below is a plain function of (model, X, y) that
any Model must pass, and every case (registry spec, adapter-table entry) runs every check:
shapes and row sums, predict == argmax predict_proba, one-line ModelError on a wrong feature count
or NaN, tree_ensemble() agreeing with predict, torch_logits' softmax agreeing with predict_proba,
and a save/load round trip with identical probabilities. A new registry spec or adapter is
covered without editing this file beyond, for an adapter, one case (enforced below).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import catboost
import lightgbm as lgb
import numpy as np
import pytest
import torch
import xgboost as xgb
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, NuSVC

from robustbench_align.errors import ModelError
from robustbench_align.models.adapters import find_adapter, list_adapters, register_adapter, unregister_adapter
from robustbench_align.models.base import Model, softmax_rows, wrap
from robustbench_align.models.persistence import load_model, save_model
from robustbench_align.models.registry import build, get_spec, list_models

# Small build parameters per family, so that the whole file runs in seconds (a family missing here is
# built with its registry parameters: slower, still checked).
FAST: dict[str, dict[str, Any]] = {
    "mlp": {"hidden": [16], "epochs": 3},
    "mlp-grokalign": {"hidden": [16], "epochs": 3},
    "rfm": {"iters": 2},
    "rfam": {"iters": 2},
    "xgboost": {"n_estimators": 5},
    "random-forest": {"n_estimators": 5},
    "gradient-boosting": {"n_estimators": 5},
}
KNOWN_CAPABILITIES = {"predict_proba", "torch_logits", "tree_ensemble", "linear"}


# --------------------------------------------------------------------------------------------
# A tiny adapter registered through the public call: an object that only has `scores(X)`.
# --------------------------------------------------------------------------------------------
class Scorer:
    """A foreign 'framework': a linear scorer with `scores(X) -> (n, k)` and a declared width."""

    def __init__(self, W: np.ndarray) -> None:
        self.W = W
        self.n_inputs = W.shape[0]

    def scores(self, X: np.ndarray) -> np.ndarray:
        return X @ self.W


class ScorerModel(Model):
    """The Model for a Scorer: softmax of its scores."""

    def __init__(self, scorer: Scorer, name: str) -> None:
        self.scorer, self.name = scorer, name

    @property
    def n_features(self) -> int:
        return self.scorer.n_inputs

    @property
    def n_classes(self) -> int:
        return self.scorer.W.shape[1]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return softmax_rows(self.scorer.scores(self._check_X(X)))


def scorer_factory(obj: Any, *, n_features: int | None, n_classes: int | None, name: str | None) -> Model:
    return ScorerModel(obj, name=name or "scorer")


@pytest.fixture(scope="module", autouse=True)
def _scorer_adapter():
    register_adapter(Scorer, scorer_factory, name="scorer")
    yield
    unregister_adapter("scorer")


class ProbaOnly:
    """Duck-typed: has predict_proba and nothing else (no classes_, no n_features_in_)."""

    def __init__(self, W: np.ndarray) -> None:
        self.W = W

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return softmax_rows(np.asarray(X) @ self.W)


# --------------------------------------------------------------------------------------------
# Cases: how to make the fitted object, and how to save it (None: no file format)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[np.ndarray, np.ndarray, int], Any]  # (X, y, n_classes) -> object to wrap (or a fitted estimator)
    save: Callable[[Any, Path], Path] | None = None
    entry: str | None = None  # the adapter-table entry wrap() must pick (None: a registry estimator)
    wrap_kw: dict[str, Any] | None = None
    round_trip_atol: float = 0.0  # 0: the loaded model's probabilities are bit-identical
    capabilities: frozenset[str] = frozenset({"predict_proba"})  # what wrap() must give (adapter cases)


TREES = frozenset({"predict_proba", "tree_ensemble"})
GRADIENTS = frozenset({"predict_proba", "torch_logits"})
LINEAR = frozenset({"predict_proba", "torch_logits", "linear"})


def _registry_case(name: str) -> Case:
    family = get_spec(name).family
    return Case(f"registry:{name}", lambda X, y, k: build(name, **FAST.get(family, {})).fit(X, y), save=lambda m, p: save_model(m, p / "m"))


def _weights(d: int, k: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(d, k))


def _torch_module(X: np.ndarray, y: np.ndarray, k: int) -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Linear(X.shape[1], 8), torch.nn.ReLU(), torch.nn.Linear(8, k))
    g = torch.Generator().manual_seed(0)  # local generator: the global torch RNG is left alone
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net


def _booster(X: np.ndarray, y: np.ndarray, k: int) -> Any:
    params = {"max_depth": 3, "nthread": 1, "seed": 0}
    params.update({"objective": "binary:logistic"} if k == 2 else {"objective": "multi:softprob", "num_class": k})
    return xgb.train(params, xgb.DMatrix(X, label=y), num_boost_round=5)


def _save_booster(booster: Any, where: Path) -> Path:
    path = where / "booster.json"
    booster.save_model(str(path))
    return path


def _softmax_function(W: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    def predict_proba(X: np.ndarray) -> np.ndarray:
        return softmax_rows(np.asarray(X) @ W)

    return predict_proba


def _save_lgb(clf: Any, where: Path) -> Path:
    path = where / "model.txt"
    clf.booster_.save_model(str(path))
    return path


def _save_catboost(clf: Any, where: Path) -> Path:
    path = where / "model.cbm"
    clf.save_model(str(path))
    return path


def _onnx_proto(est: Any, X: np.ndarray) -> Any:
    import skl2onnx

    return skl2onnx.to_onnx(est, X[:1].astype(np.float32), options={"zipmap": False})


def _save_onnx(proto: Any, where: Path) -> Path:
    path = where / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


def _save_skops(est: Any, where: Path) -> Path:
    import skops.io as sio

    path = where / "est.skops"
    sio.dump(est, str(path))
    return path


ADAPTER_CASES = [
    Case("wrap:model", lambda X, y, k: build("mlp", **FAST["mlp"]).fit(X, y), save=lambda m, p: save_model(m, p / "m"), entry="model",
         capabilities=GRADIENTS),
    Case("wrap:torch", _torch_module, entry="torch", capabilities=GRADIENTS),
    Case("wrap:logistic-regression", lambda X, y, k: LogisticRegression(max_iter=500).fit(X, y), save=_save_skops, entry="sklearn-linear",
         capabilities=LINEAR),
    Case("wrap:knn", lambda X, y, k: KNeighborsClassifier(5).fit(X, y), save=_save_skops, entry="sklearn"),
    Case("wrap:histgb", lambda X, y, k: HistGradientBoostingClassifier(max_iter=5, max_depth=3, random_state=0).fit(X, y),
         save=_save_skops, entry="sklearn", capabilities=TREES),
    Case("wrap:sklearn-mlp", lambda X, y, k: MLPClassifier((8,), max_iter=50, random_state=0).fit(X, y), save=_save_skops,
         entry="sklearn-mlp", capabilities=GRADIENTS),
    Case("wrap:svc", lambda X, y, k: SVC(kernel="rbf").fit(X, y), save=_save_skops, entry="sklearn-svc", capabilities=GRADIENTS),
    Case("wrap:nusvc", lambda X, y, k: NuSVC(kernel="poly", nu=0.3).fit(X, y), save=_save_skops, entry="sklearn-nusvc",
         capabilities=GRADIENTS),
    Case("wrap:pipeline", lambda X, y, k: make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(X, y), save=_save_skops,
         entry="sklearn-pipeline", capabilities=LINEAR),
    Case("wrap:lightgbm", lambda X, y, k: lgb.LGBMClassifier(n_estimators=10, num_leaves=7, n_jobs=1, verbose=-1).fit(X, y),
         save=_save_lgb, entry="lightgbm", capabilities=TREES),
    Case("wrap:catboost", lambda X, y, k: catboost.CatBoostClassifier(iterations=10, depth=3, thread_count=1, allow_writing_files=False,
                                                                      verbose=False, random_seed=0).fit(X, y),
         save=_save_catboost, entry="catboost", capabilities=TREES),
    Case("wrap:onnx", lambda X, y, k: _onnx_proto(LogisticRegression(max_iter=500).fit(X, y), X), save=_save_onnx, entry="onnx",
         capabilities=GRADIENTS),
    Case("wrap:random-forest", lambda X, y, k: RandomForestClassifier(n_estimators=5, max_depth=4, random_state=0).fit(X, y),
         save=_save_skops, entry="sklearn", capabilities=TREES),
    Case("wrap:xgb-classifier", lambda X, y, k: xgb.XGBClassifier(n_estimators=5, max_depth=3, n_jobs=1, random_state=0).fit(X, y),
         # saved as its booster: the loaded Booster computes 1 - p in float64, the classifier in float32
         save=lambda clf, p: _save_booster(clf.get_booster(), p), entry="xgboost", round_trip_atol=1e-7,
         capabilities=TREES),
    Case("wrap:xgb-booster", _booster, save=_save_booster, entry="xgboost", capabilities=TREES),
    Case("wrap:predict-proba-object", lambda X, y, k: ProbaOnly(_weights(X.shape[1], k)), entry="predict_proba",
         wrap_kw={"n_features": 5}),
    Case("wrap:callable", lambda X, y, k: _softmax_function(_weights(X.shape[1], k)), entry="callable", wrap_kw={"n_features": 5}),
    Case("wrap:scorer", lambda X, y, k: Scorer(_weights(X.shape[1], k, seed=1)), entry="scorer"),
]
CASES = [_registry_case(n) for n in list_models()] + ADAPTER_CASES
TASKS = ["binary", "multiclass"]


@pytest.fixture(scope="module")
def tasks(binary_data, multiclass_data):
    out = {}
    for task, (X, y) in (("binary", binary_data), ("multiclass", multiclass_data)):
        n = int(0.75 * X.shape[0])
        out[task] = (X[:n], y[:n], X[n:], y[n:], int(y.max()) + 1)
    return out


@pytest.fixture(scope="module")
def fitted(tasks):
    cache: dict[tuple[str, str], tuple[Any, Model]] = {}

    def get(case: Case, task: str) -> tuple[Any, Model]:
        if (case.id, task) not in cache:
            Xtr, ytr, _, _, k = tasks[task]
            obj = case.make(Xtr, ytr, k)
            cache[case.id, task] = (obj, wrap(obj, **(case.wrap_kw or {})))
        return cache[case.id, task]

    return get


# --------------------------------------------------------------------------------------------
# The checks: functions of (model, X, y, k) that every Model passes
# --------------------------------------------------------------------------------------------
def check_shapes_and_row_sums(model: Model, X: np.ndarray, y: np.ndarray, k: int) -> None:
    assert isinstance(model, Model)
    assert model.n_features == X.shape[1] and model.n_classes == k
    assert {"predict_proba"} <= model.capabilities <= KNOWN_CAPABILITIES
    p = model.predict_proba(X)
    assert isinstance(p, np.ndarray) and p.shape == (X.shape[0], k) and p.dtype == np.float64
    assert np.all(np.isfinite(p)) and p.min() >= 0.0 and p.max() <= 1.0
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    pred = model.predict(X)
    assert isinstance(pred, np.ndarray) and pred.shape == (X.shape[0],) and np.issubdtype(pred.dtype, np.integer)
    assert pred.min() >= 0 and pred.max() < k
    one = model.predict_proba(X[0])  # a single row is read as one sample
    assert one.shape == (1, k)


def check_predict_is_argmax_proba(model: Model, X: np.ndarray, y: np.ndarray, k: int) -> None:
    np.testing.assert_array_equal(model.predict(X), np.argmax(model.predict_proba(X), axis=1))


def check_bad_inputs_raise_one_line_model_error(model: Model, X: np.ndarray, y: np.ndarray, k: int) -> None:
    for bad, needle in ((X[:, :-1], "features"), (np.hstack([X, X[:, :1]]), "features")):
        for method in (model.predict_proba, model.predict):
            with pytest.raises(ModelError, match=needle) as info:
                method(bad)
            assert len(str(info.value).splitlines()) == 1
    nan = X[:3].copy()
    nan[1, 0] = np.nan
    with pytest.raises(ModelError, match="NaN"):
        model.predict_proba(nan)


def check_tree_ensemble_agrees(model: Model, X: np.ndarray, y: np.ndarray, k: int) -> None:
    if not model.has("tree_ensemble"):
        return
    ens = model.tree_ensemble()  # type: ignore[attr-defined]
    assert ens.n_features == model.n_features and ens.n_classes == model.n_classes
    np.testing.assert_array_equal(ens.predict(X), model.predict(X))
    np.testing.assert_allclose(ens.predict_proba(X), model.predict_proba(X), rtol=0, atol=1e-6)


def check_torch_logits_agree(model: Model, X: np.ndarray, y: np.ndarray, k: int) -> None:
    if not model.has("torch_logits"):
        return
    x = torch.as_tensor(X, dtype=torch.float64).requires_grad_(True)
    z = model.torch_logits(x)  # type: ignore[attr-defined]
    assert z.shape == (X.shape[0], k)
    np.testing.assert_allclose(torch.softmax(z.double(), dim=1).detach().numpy(), model.predict_proba(X), rtol=0, atol=1e-6)
    (g,) = torch.autograd.grad(z[:, 0].sum(), x)  # differentiable with respect to the input
    assert g.shape == x.shape and bool(torch.isfinite(g).all())


CHECKS = [
    check_shapes_and_row_sums,
    check_predict_is_argmax_proba,
    check_bad_inputs_raise_one_line_model_error,
    check_tree_ensemble_agrees,
    check_torch_logits_agree,
]


def check_round_trip(model: Model, saved: Path, X: np.ndarray, atol: float = 0.0) -> None:
    back = load_model(saved)
    assert type(back) is type(model)
    assert back.capabilities == model.capabilities and back.n_features == model.n_features and back.n_classes == model.n_classes
    np.testing.assert_allclose(back.predict_proba(X), model.predict_proba(X), rtol=0, atol=atol)
    np.testing.assert_array_equal(back.predict(X), model.predict(X))
    if model.has("tree_ensemble"):
        np.testing.assert_array_equal(back.tree_ensemble().raw(X), model.tree_ensemble().raw(X))  # type: ignore[attr-defined]


# --------------------------------------------------------------------------------------------
# Every case runs every check
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_contract(fitted, tasks, case, check, task):
    _, model = fitted(case, task)
    _, _, Xte, yte, k = tasks[task]
    check(model, Xte, yte, k)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("case", [c for c in CASES if c.save is not None], ids=lambda c: c.id)  # torch modules and callables have no file format
def test_persistence_round_trip(fitted, tasks, tmp_path, case, task):
    assert case.save is not None
    obj, model = fitted(case, task)
    _, _, Xte, _, _ = tasks[task]
    check_round_trip(model, case.save(obj, tmp_path), Xte, atol=case.round_trip_atol)


@pytest.mark.parametrize("case", ADAPTER_CASES, ids=lambda c: c.id)
def test_wrap_picks_the_expected_table_entry(fitted, case):
    obj, model = fitted(case, "multiclass")
    entry = find_adapter(obj)
    assert entry is not None and entry.name == case.entry
    assert model.capabilities == case.capabilities
    assert wrap(model) is model  # a Model is used as it is


def test_every_table_entry_has_a_contract_case():
    """A new adapter in the table must come with a case here, so that the contract is checked for it."""
    covered = {c.entry for c in ADAPTER_CASES}
    assert set(list_adapters()) <= covered, sorted(set(list_adapters()) - covered)


# --------------------------------------------------------------------------------------------
# Registry estimators: unfitted state, determinism, get_params
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list_models())
def test_registry_estimator_lifecycle(fitted, tasks, name):
    case = next(c for c in CASES if c.id == f"registry:{name}")
    est, _ = fitted(case, "multiclass")
    Xtr, ytr, Xte, _, k = tasks["multiclass"]
    fresh = clone(est)
    with pytest.raises(ModelError, match="not fitted"):
        fresh.predict_proba(Xte)
    assert fresh.fit(Xtr, ytr) is fresh  # fit returns the estimator
    np.testing.assert_array_equal(fresh.predict_proba(Xte), est.predict_proba(Xte))  # same seed, same model
    assert fresh.get_params() == est.get_params() and fresh.classes_.tolist() == list(range(k))


# --------------------------------------------------------------------------------------------
# The registration call itself
# --------------------------------------------------------------------------------------------
def test_register_adapter_order_names_and_errors():
    class Tagged:
        pass

    def factory(obj: Any, *, n_features: int | None, n_classes: int | None, name: str | None) -> Model:
        return ScorerModel(Scorer(np.eye(2)), name=name or "tagged")

    before = list_adapters()
    register_adapter(Tagged, factory, name="tagged-a")
    register_adapter("test_model_contract.Tagged", factory, name="tagged-b", before="tagged-a")  # by class name: no import needed
    register_adapter(lambda o: isinstance(o, Tagged), factory, name="tagged-c", fallback=True)
    try:
        names = list_adapters()
        first_fallback = names.index("predict_proba")
        assert names.index("tagged-b") < names.index("tagged-a") < first_fallback < names.index("tagged-c") == len(names) - 1
        assert find_adapter(Tagged()).name == "tagged-b"  # first match wins
        assert wrap(Tagged(), name="t").name == "t"
        with pytest.raises(ModelError, match="exists already"):
            register_adapter(Tagged, factory, name="tagged-a")
        with pytest.raises(ModelError, match="no adapter named 'nope'"):
            register_adapter(Tagged, factory, name="tagged-d", before="nope")
    finally:
        for n in ("tagged-a", "tagged-b", "tagged-c"):
            unregister_adapter(n)
    assert list_adapters() == before
    with pytest.raises(ModelError, match="cannot wrap a Tagged"):
        wrap(Tagged())
