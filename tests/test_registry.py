"""Every registry model fits every scikit-learn bundled dataset and beats the majority-class baseline."""
import numpy as np
import pytest
import torch

from robustbench_align import build, list_models, load_dataset
from robustbench_align.errors import ModelError
from robustbench_align.models.persistence import ALLOWED_CLASSES
from robustbench_align.models.registry import default_models, get_spec

BUNDLED = ["breast_cancer", "wine", "iris", "digits"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("dataset", BUNDLED)
def test_every_registry_model_beats_majority(dataset):
    ds = load_dataset(dataset, seed=0)
    majority = np.bincount(ds.y_test).max() / ds.y_test.size
    for name in list_models():
        model = build(name, random_state=0).fit(ds.X_train, ds.y_train)
        acc = float((model.predict(ds.X_test) == ds.y_test).mean())
        assert acc > majority + 0.2, (name, dataset, acc, majority)
        assert model.n_features == ds.n_features and model.n_classes == ds.n_classes
        p = model.predict_proba(ds.X_test[:5])
        np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)


def test_registry_cards_and_errors():
    assert {"mlp", "mlp-grokalign", "rfm", "rfam", "xgb", "rf", "gbdt"} <= set(list_models())
    with pytest.raises(ModelError, match=r"unknown model 'nope'.*valid names"):
        build("nope")
    with pytest.raises(ModelError, match="no parameter"):
        build("rfam", bogus=1)
    assert build("rfam").alpha == 0.0 and build("rfm").alpha == 1.0


def test_default_models_and_loadable_classes_come_from_the_specs():
    assert default_models() == ["mlp", "mlp-grokalign", "rfm", "rfam", "xgb", "rf", "gbdt"]
    assert [n for n in list_models() if get_spec(n).default] == default_models()
    assert {get_spec(n).cls for n in list_models()} == ALLOWED_CLASSES  # a new spec is loadable without another edit
    for name in list_models():
        cls = get_spec(name).estimator_class()
        assert callable(getattr(cls, "_save_state", None)) and callable(getattr(cls, "_load_state", None)), name


@pytest.mark.parametrize(
    "name, params, message",
    [
        ("xgb", {"tree_method": "gpu"}, r"^XGBoostModel: tree_method must be 'hist', 'approx' or 'exact', got 'gpu'$"),
        ("xgb", {"learning_rate": 0}, r"learning_rate must be a positive number or None, got 0$"),
        ("xgb", {"subsample": 1.5}, r"subsample must be a number in \(0, 1\] or None, got 1.5$"),
        ("xgb", {"rf": True, "num_parallel_tree": 2}, r"with rf=True the forest has n_estimators trees; leave num_parallel_tree=1"),
        ("xgb", {"xgb_params": {"enable_categorical": True}}, r"categorical splits are not supported; one-hot encode"),
        ("xgb", {"xgb_params": {"f": object()}}, r"xgb_params must be a dict of XGBoost parameter names to JSON values"),
        ("rf", {"max_features": 1.5}, r"max_features must be 'sqrt', 'log2', None, an integer >= 1 or a fraction in \(0, 1\], got 1.5$"),
        ("rf", {"class_weight": "auto"}, r"class_weight must be None, 'balanced' or 'balanced_subsample', got 'auto'$"),
        ("rf", {"max_depth": 0}, r"max_depth must be an integer >= 1 or None, got 0$"),
        ("gbdt", {"loss": "hinge"}, r"loss must be 'log_loss' or 'exponential', got 'hinge'$"),
        ("mlp", {"momentum": 1.0}, r"^MLP: momentum must be a number in \[0, 1\), got 1.0$"),
        ("mlp", {"hidden": [0, 4]}, r"hidden must be a list of positive layer widths, e.g. \[200, 200\], got \[0, 4\]$"),
        ("mlp", {"batch_size": 0}, r"batch_size must be a positive integer or None \(full batch\), got 0$"),
        ("mlp", {"random_state": "seed"}, r"random_state must be an integer or None, got 'seed'$"),
        ("mlp-grokalign", {"lam": float("inf")}, r"^GrokAlignMLP: lam must be a finite number >= 0, got inf$"),
        ("mlp-grokalign", {"offset": 1}, r"offset must be True \(Jacobian \+ offset penalty\) or False"),
        ("rfm", {"regs": []}, r"^RFM: regs must be a non-empty list of finite numbers >= 0, got \[\]$"),
        ("rfam", {"alpha": 2.0}, r"^RFAM: alpha must be a number in \[0, 1\], got 2.0$"),
        ("rfm", {"dtype": "float16"}, r"dtype must be 'float32' or 'float64', got 'float16'$"),
        ("rfm", {"max_direct_n": 1}, r"max_direct_n must be an integer >= 2, got 1$"),
    ],
)
def test_bad_parameters_name_the_parameter_and_the_allowed_values(name, params, message):
    X = np.random.default_rng(0).normal(size=(20, 3))
    y = np.arange(20) % 2
    with pytest.raises(ModelError, match=message) as info:
        build(name, **params).fit(X, y)
    assert len(str(info.value).splitlines()) == 1
