"""Projected gradient descent at fixed eps (Madry et al. 2018), with random restarts, for torch models.

Two losses: "ce" runs torchattacks' PGD / PGDL2 on the cross-entropy through a per-row unit box
(`BoxMap.per_row_ball`, so each row's float32 resolution is relative to its own eps); "margin" runs
the same iteration directly in feature space (float64 iterate) on the logit margin
z_y - max_{j!=y} z_j, the loss of Carlini & Wagner (2017) that does not saturate like the
cross-entropy. Restarts run only on the points still robust, each restart and chunk with its own
derived seed; the per-point best verified adversarial is kept.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import AttackError
from ..models.base import Model
from .base import Candidates, FixedEpsAttack, Norm, clean_correct_rows
from .candidates import Keeper, chunks
from .params import derive_seed, int_arg, pos_arg
from .torch_adapter import (
    BoxMap,
    TorchattacksAttack,
    frozen_parameters,
    import_torchattacks,
    logit_margin,
    logits,
    model_dtype,
    reachable_radius,
    seeded,
)


class PGD(TorchattacksAttack, FixedEpsAttack):
    """Projected gradient descent at fixed eps (linf/l2) with random restarts, per-point best.

    loss="ce" runs torchattacks PGD / PGDL2 through a per-row unit box; loss="margin" runs the same
    iteration on the logit margin z_y - max_{j!=y} z_j directly in feature space (the CW/DLR-style
    loss that does not saturate). Restarts run only on points still robust. eps may be one value or
    one per point. Step size rel_stepsize * eps (default 2.5 / steps, Madry et al.). A point whose
    eps exceeds what the model's arithmetic can evaluate (`reachable_radius`, about 1.8e19 for
    float32) is attacked in the ball of that radius, a sub-ball of its threat ball, with the margin
    loss: at that scale the cross-entropy is saturated and its gradient is exactly zero.
    """

    name = "pgd"
    norms = ("linf", "l2")
    per_point_eps = True

    def __init__(self, steps: int = 50, restarts: int = 2, rel_stepsize: float | None = None, random_start: bool = True,
                 loss: str = "ce", seed: int = 0, batch_size: int = 2048) -> None:
        self.steps = int_arg(steps, "pgd: steps")
        self.restarts = int_arg(restarts, "pgd: restarts")
        self.rel_stepsize = 2.5 / self.steps if rel_stepsize is None else pos_arg(rel_stepsize, "pgd: rel_stepsize")
        self.random_start = bool(random_start)
        if loss not in ("ce", "margin"):
            raise AttackError(f"pgd: unknown loss {loss!r}; choose 'ce' or 'margin'")
        self.loss = loss
        self.seed = int(seed)
        self.batch_size = int_arg(batch_size, "pgd: batch_size")

    def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm, eps: np.ndarray) -> Candidates:
        if self.loss == "ce":
            import_torchattacks()
        keeper = Keeper(model, X, y, norm, eps)
        # eps beyond what the model's arithmetic can evaluate: search the ball of the reachable radius,
        # with the margin loss (the cross-entropy is saturated there: exactly zero gradients)
        cap = reachable_radius(model)
        far = eps > cap
        e = np.where(far, cap, eps)
        queries = np.zeros(X.shape[0], dtype=np.int64)
        todo = clean_correct_rows(model, X, y)
        with frozen_parameters(model):
            for r in range(self.restarts):
                rows = todo[~keeper.found[todo]]
                for k, ch in enumerate(chunks(rows, self.batch_size)):
                    s = derive_seed(self.seed, r, k)
                    Xa = self._one_run(model, X[ch], y[ch], norm, e[ch], s, self.random_start or r > 0, far[ch])
                    keeper.offer(ch, norm.project(X[ch], Xa, e[ch]))
                    queries[ch] += self.steps + 1
        return keeper.candidates(queries)

    def _one_run(self, model: Model, Xc: np.ndarray, yc: np.ndarray, norm: Norm, e: np.ndarray, seed: int,
                 random_start: bool, far: np.ndarray) -> np.ndarray:
        if self.loss == "margin":
            return pgd_margin(model, Xc, yc, norm, e, self.steps, self.rel_stepsize, random_start, seed)
        if far.any():  # only rows whose eps the model cannot reach (see _attack); the others as usual
            out = np.empty_like(Xc)
            out[far] = pgd_margin(model, Xc[far], yc[far], norm, e[far], self.steps, self.rel_stepsize, random_start, seed)
            if not far.all():
                out[~far] = self._one_run(model, Xc[~far], yc[~far], norm, e[~far], seed, random_start, far[~far])
            return out
        ta = import_torchattacks()
        box = BoxMap.per_row_ball(Xc, e)
        mod = box.module(model, layout="nchw")  # PGDL2 reshapes norms to (n,1,1,1)
        eps_u = float(np.min(box.unit_eps(e)))
        cls = ta.PGD if norm.p == np.inf else ta.PGDL2
        atk = cls(mod, eps=eps_u, alpha=self.rel_stepsize * eps_u, steps=self.steps, random_start=random_start)
        U = box.unit_tensor(Xc, "nchw")
        with seeded(seed):
            adv = atk(U, torch.as_tensor(yc))
        return box.from_unit(adv)


def random_ball(shape: tuple[int, int], norm: Norm, eps: torch.Tensor, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Uniform in the linf ball; for l2 a random direction with a uniform radius fraction."""
    if norm.p == np.inf:
        return (2 * torch.rand(shape, generator=gen, dtype=dtype) - 1) * eps
    v = torch.randn(shape, generator=gen, dtype=dtype)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
    out: torch.Tensor = v * torch.rand((shape[0], 1), generator=gen, dtype=dtype) * eps
    return out


def pgd_margin(model: Model, Xc: np.ndarray, yc: np.ndarray, norm: Norm, e: np.ndarray, steps: int, rel: float,
               random_start: bool, seed: int) -> np.ndarray:
    """Margin-loss PGD in feature space (float64 iterate); returns the first adversarial iterate per row."""
    gen = torch.Generator().manual_seed(seed)
    dt = model_dtype(model)
    x0 = torch.as_tensor(Xc, dtype=torch.float64)
    yt = torch.as_tensor(yc, dtype=torch.long)
    eps = torch.as_tensor(e, dtype=torch.float64)[:, None]
    delta = random_ball((x0.shape[0], x0.shape[1]), norm, eps, gen, torch.float64) if random_start else torch.zeros_like(x0)
    out = x0.clone()
    done = torch.zeros(x0.shape[0], dtype=torch.bool)
    for _ in range(steps + 1):
        delta.requires_grad_(True)
        z = logits(model, (x0 + delta).to(dt))
        m = logit_margin(z, yt)
        (g,) = torch.autograd.grad(m.sum(), delta)
        with torch.no_grad():
            adv = (z.argmax(dim=1) != yt) & ~done
            out[adv] = (x0 + delta)[adv]
            done |= adv
            if bool(done.all()):
                break
            if norm.p == np.inf:
                delta = (delta - rel * eps * g.sign()).clamp(-eps, eps)
            else:
                delta = delta - rel * eps * g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
                delta = delta * (eps / delta.norm(dim=1, keepdim=True).clamp_min(1e-30)).clamp(max=1.0)
    out[~done] = (x0 + delta.detach())[~done]
    result: np.ndarray = out.numpy()
    return result


__all__ = ["PGD", "pgd_margin", "random_ball"]
