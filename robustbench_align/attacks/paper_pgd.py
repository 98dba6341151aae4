"""The seed paper's own PGD evaluation protocol, reproduced exactly (a protocol, not a library attack).

Untargeted linf PGD in the style of Madry et al. (2018) but with the paper's choices: uniform random
start, 20 sign steps of eps/10 on the MSE between the raw model outputs and the one-hot label, float32
iterate, no restarts, no feature clipping, the final iterate is the candidate. Kept separate from
`PGD` so the paper's robust-accuracy numbers can be compared with a stronger evaluation.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from ..models.base import Model
from .base import Candidates, FixedEpsAttack, Norm
from .candidates import chunks
from .params import derive_seed, int_arg, pos_arg
from .torch_adapter import TorchAttack, frozen_parameters, logits


class PaperPGD(TorchAttack, FixedEpsAttack):
    """The seed paper's evaluation protocol, reproduced exactly.

    Untargeted linf PGD: uniform random start in [-eps, eps]^d, then `steps` (20) steps
    x <- x + (eps/10) * sign(grad MSE(f(x), onehot(y))) with f the model's raw outputs
    (torch_logits), each followed by projection onto the eps-ball; no clipping to a feature range,
    float32 iterate, no restarts, the final iterate is the candidate. Seeded. Every point is attacked,
    including clean errors, and `flags["paper_robust_accuracy"]` is the paper's own number (accuracy
    on the final iterates); the verified result counts clean errors as distance 0, as everywhere else.
    """

    name = "paper-pgd"
    norms = ("linf",)
    per_point_eps = True

    def __init__(self, steps: int = 20, rel_stepsize: float = 0.1, seed: int = 0, batch_size: int = 4096) -> None:
        self.steps = int_arg(steps, "paper-pgd: steps")
        self.rel_stepsize = pos_arg(rel_stepsize, "paper-pgd: rel_stepsize")
        self.seed = int(seed)
        self.batch_size = int_arg(batch_size, "paper-pgd: batch_size")

    def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm, eps: np.ndarray) -> Candidates:
        cand = X.copy()
        with frozen_parameters(model):
            for k, ch in enumerate(chunks(np.arange(X.shape[0]), self.batch_size)):
                cand[ch] = self._iterate(model, X[ch], y[ch], eps[ch], derive_seed(self.seed, k))
        cand = norm.project(X, cand, eps)  # float32 iterate -> float64 ball around the float64 X
        wrong = model.predict(cand) != y if X.shape[0] else np.zeros(0, dtype=bool)
        flags = {"paper_robust_accuracy": float(np.mean(~wrong))} if X.shape[0] else {}
        return Candidates(x_adv=cand, claimed=wrong, queries=np.full(X.shape[0], self.steps + 1, dtype=np.int64), flags=flags)

    def _iterate(self, model: Model, Xc: np.ndarray, yc: np.ndarray, e: np.ndarray, seed: int) -> np.ndarray:
        gen = torch.Generator().manual_seed(seed)
        x0 = torch.as_tensor(Xc, dtype=torch.float32)
        eps = torch.as_tensor(e, dtype=torch.float32)[:, None]
        n_classes = int(model.n_classes)
        target = torch.nn.functional.one_hot(torch.as_tensor(yc, dtype=torch.long), n_classes).to(torch.float32)
        x = x0 + (2 * torch.rand(x0.shape, generator=gen, dtype=torch.float32) - 1) * eps
        mse = nn.MSELoss()
        for _ in range(self.steps):
            x = x.detach().requires_grad_(True)
            out = logits(model, x).to(torch.float32)
            (g,) = torch.autograd.grad(mse(out, target), x)
            with torch.no_grad():
                x = x + self.rel_stepsize * eps * g.sign()
                x = x0 + torch.clamp(x - x0, -eps, eps)
        result: np.ndarray = x.detach().double().numpy()
        return result


__all__ = ["PaperPGD"]
