"""The paper's PGD protocol vs the strong protocol on a real RFAM, and a model that fails mid-evaluation."""
import numpy as np
import pytest
import torch

from robustbench_align import build, load_dataset
from robustbench_align.attacks.api import fixed_eps_run, minimal_radius
from robustbench_align.models.base import TorchModel
from robustbench_align.runner.job import Job, run_job


@pytest.fixture(scope="module")
def rfam_wine():
    torch.set_num_threads(1)
    ds = load_dataset("wine", seed=0)
    return build("rfam", random_state=0).fit(ds.X_train, ds.y_train), ds


def test_paper_pgd_is_non_monotone_on_rfam_and_flagged(rfam_wine):
    model, ds = rfam_wine
    fr = fixed_eps_run(model, ds.X_test, ds.y_test, threat="paper-pgd", seed=0)
    acc = [fr.robust(e).mean() for e in (0.1, 1.0, 2.0)]
    assert acc[2] > acc[1], acc  # Laplace-kernel outputs decay far from the data: PGD at eps=2 breaks fewer points
    assert any("monotone" in k for k in fr.flags), fr.flags


def test_strong_protocol_is_monotone_and_stronger_on_rfam(rfam_wine):
    model, ds = rfam_wine
    X, y = ds.X_test[:25], ds.y_test[:25]
    res = minimal_radius(model, X, y, "linf", seed=0, effort="fast")
    grid = np.linspace(0, 2, 41)
    curve = res.robust_accuracy(grid)
    assert np.all(np.diff(curve) <= 0)
    paper = fixed_eps_run(model, X, y, threat="paper-pgd", seed=0)
    for e in (0.1, 1.0, 2.0):
        assert res.robust_accuracy([e])[0] <= paper.robust(e).mean() + 1e-12
    # every reported adversarial flips the real model within its distance
    ok = np.isfinite(res.distance) & (res.distance > 0)
    assert np.all(model.predict(res.x_adv[ok]) != y[ok])
    assert np.all(np.abs(res.x_adv[ok] - X[ok]).max(axis=1) <= res.distance[ok] * (1 + 1e-6))


class _Flaky(torch.nn.Module):
    """Logits of a fixed linear map; raises once it has been called more than `budget` times."""

    def __init__(self, budget):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 3)
        self.calls = 0
        self.budget = budget

    def forward(self, x):
        self.calls += 1
        if self.calls > self.budget:
            raise RuntimeError("device lost mid-batch")
        return self.lin(x)


def test_model_raising_mid_attack_fails_only_that_run():
    net = _Flaky(budget=10_000)
    model = TorchModel(net, n_features=4, name="flaky")
    job = Job(model="flaky", dataset="iris", seed=0, threats=["paper-pgd", "linf"], points=8,
              model_params={"user_model": "flaky"}, model_family="user")
    net.budget = net.calls + 300  # enough for predictions, metrics and paper-pgd; the linf ensemble runs out
    records = run_job(job, model_obj=model)
    status = {r.run["threat"]: r.run["status"] for r in records}
    assert status["paper-pgd"] == "ok" and status["linf"] == "failed"
    failed = next(r for r in records if r.run["threat"] == "linf")
    assert "device lost" in failed.run["error"] and failed.points == []
    ok = next(r for r in records if r.run["threat"] == "paper-pgd")
    assert len(ok.points) == 8
