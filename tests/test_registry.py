"""Every registry model fits every scikit-learn bundled dataset and beats the majority-class baseline."""
import numpy as np
import pytest
import torch

from robustbench_align import build, list_models, load_dataset
from robustbench_align.errors import ModelError

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
    with pytest.raises(ModelError, match="unknown model 'nope'.*valid names"):
        build("nope")
    with pytest.raises(ModelError, match="no parameter"):
        build("rfam", bogus=1)
    assert build("rfam").alpha == 0.0 and build("rfm").alpha == 1.0
