"""The Fast Minimum-Norm attack (Pintor et al., NeurIPS 2021): minimal linf/l2/l1, in feature space.

FMN alternates a normalised gradient step on the logit margin with a projection onto a norm ball
whose radius shrinks while the iterate is adversarial and grows otherwise, so it converges to the
smallest adversarial it can reach. It runs on `torch_logits` directly (no library, no unit box:
tabular inputs are unbounded), with a per-point first step scaled to each point's first-order
distance to the boundary instead of Foolbox's fixed step for [0, 1] images.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import AttackError
from ..models.base import Model
from .base import NORMS, Candidates, MinimalAttack, Norm, clean_correct_rows
from .candidates import Keeper, chunks, polish
from .params import int_arg, pos_arg
from .torch_adapter import TorchAttack, frozen_parameters, logit_margin, logits, model_dtype, project_ball_t


class FMN(TorchAttack, MinimalAttack):
    """Fast Minimum-Norm attack (Pintor et al., NeurIPS 2021), minimal linf/l2/l1, in feature space.

    Each step: an l2-normalised gradient step on the logit margin (for every norm, as in the paper;
    sign steps were worse for linf here), then projection onto a norm ball of radius eps_k that shrinks by (1 - gamma_k) while the
    iterate is adversarial and grows by (1 + gamma_k) (or jumps to the first-order boundary estimate
    before the first success) otherwise; step size and gamma are cosine-annealed. Foolbox's fixed
    max_stepsize = 1.0 suits [0, 1] images, not standardised tabular features (8x worse radii on
    low-dimensional inputs), so the first step of each point is a multiple of its own first-order
    distance to the boundary (rel * |margin| / ||grad||_dual). One run per multiple in
    `rel_stepsizes` (default 1, 3, 10: longer first steps escape the nearest linear piece) and the
    per-point best is kept; pass max_stepsize for one run with a fixed step instead. Then up to
    `n_target_classes` targeted runs (loss z_y - z_t) toward the classes ranked 2nd, 3rd, ... at the
    clean point, since the nearest boundary is often not the runner-up's.
    No feature box: tabular inputs are unbounded.
    """

    name = "fmn"
    norms = NORMS

    def __init__(self, steps: int = 200, gamma: float = 0.1, rel_stepsizes: Sequence[float] | float = (1.0, 3.0, 10.0),
                 max_stepsize: float | None = None, min_stepsize_ratio: float = 0.01, n_target_classes: int = 3,
                 batch_size: int = 4096, refine: bool = True, seed: int = 0) -> None:
        self.steps = int_arg(steps, "fmn: steps")
        self.gamma = pos_arg(gamma, "fmn: gamma")
        if self.gamma >= 1:
            raise AttackError(f"fmn: gamma must be in (0, 1), got {gamma!r}")
        rel = [rel_stepsizes] if isinstance(rel_stepsizes, (int, float)) or np.isscalar(rel_stepsizes) else list(rel_stepsizes)
        if not rel:
            raise AttackError("fmn: rel_stepsizes needs at least one value")
        self.rel_stepsizes = tuple(pos_arg(r, "fmn: rel_stepsizes") for r in rel)
        self.max_stepsize = None if max_stepsize is None else pos_arg(max_stepsize, "fmn: max_stepsize")
        self.min_stepsize_ratio = pos_arg(min_stepsize_ratio, "fmn: min_stepsize_ratio")
        self.n_target_classes = int_arg(n_target_classes, "fmn: n_target_classes", lo=0)
        self.batch_size = int_arg(batch_size, "fmn: batch_size")
        self.refine = bool(refine)
        self.seed = int(seed)  # FMN is deterministic; kept for a uniform interface

    def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm) -> Candidates:
        keeper = Keeper(model, X, y, norm)
        queries = np.zeros(X.shape[0], dtype=np.int64)
        todo = clean_correct_rows(model, X, y)
        with frozen_parameters(model):
            rels = self.rel_stepsizes if self.max_stepsize is None else self.rel_stepsizes[:1]
            runs: list[tuple[float, int | None]] = [(r, None) for r in rels]
            # targeted runs toward the classes ranked 2nd, 3rd, ... at the clean point: the nearest
            # boundary is often not the runner-up's (the untargeted loss starts toward the runner-up)
            runs += [(rels[len(rels) // 2], k) for k in range(2, min(model.n_classes - 1, self.n_target_classes + 1) + 1)]
            for ch in chunks(todo, self.batch_size):
                for rel, rank in runs:
                    cand, found = self._single_run(model, X[ch], y[ch], norm, rel, rank)
                    polish(model, keeper, ch, cand, found, norm, refine=self.refine)
                    queries[ch] += self.steps + 2
        return keeper.candidates(queries)

    def _single_run(self, model: Model, Xc: np.ndarray, yc: np.ndarray, norm: Norm, rel: float,
                    target_rank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One FMN run from the clean points (untargeted, or toward the class ranked target_rank): candidates, found mask."""
        dt = model_dtype(model)
        p, q = norm.p, norm.q
        x0 = torch.as_tensor(Xc, dtype=torch.float64)
        yt = torch.as_tensor(yc, dtype=torch.long)
        target = None
        if target_rank is not None:  # the class ranked target_rank-th (1 = runner-up) at the clean point
            with torch.no_grad():
                z0 = logits(model, x0.to(dt)).scatter(1, yt[:, None], float("-inf"))
            target = z0.argsort(dim=1, descending=True)[:, target_rank - 1]
        m = x0.shape[0]
        delta = torch.zeros_like(x0)
        eps = torch.full((m,), float("inf"), dtype=torch.float64)
        best_norm = torch.full((m,), float("inf"), dtype=torch.float64)
        best_delta = torch.zeros_like(x0)
        adv_found = torch.zeros(m, dtype=torch.bool)
        alpha_max = None
        for k in range(self.steps + 1):
            delta.requires_grad_(True)
            z = logits(model, (x0 + delta).to(dt))
            if target is None:
                loss = logit_margin(z, yt).to(torch.float64)
            else:
                loss = (z.gather(1, yt[:, None]) - z.gather(1, target[:, None]))[:, 0].to(torch.float64)
            (g,) = torch.autograd.grad(loss.sum(), delta)
            with torch.no_grad():
                delta = delta.detach()
                is_adv = z.argmax(dim=1) != yt
                nrm = delta.norm(p=p, dim=1)
                better = is_adv & (nrm < best_norm)
                best_norm = torch.where(better, nrm, best_norm)
                best_delta[better] = delta[better]
                adv_found |= is_adv
                if k == self.steps:
                    break
                cosk = 0.5 * (1 + math.cos(math.pi * k / self.steps))
                gamma_k = 0.001 + (self.gamma - 0.001) * cosk
                to_boundary = loss.abs() / g.norm(p=q, dim=1).clamp_min(1e-30)
                if alpha_max is None:
                    alpha_max = self._first_step(loss, g, rel)
                # before the first success jump to the first-order boundary estimate, but always grow:
                # a ReLU net is exactly linear locally, so the estimate can land exactly on a tie
                # (margin 0, not adversarial) where it would otherwise stay forever
                eps = torch.where(is_adv, torch.minimum(eps * (1 - gamma_k), best_norm),
                                  torch.where(adv_found, eps * (1 + gamma_k),
                                              torch.maximum(nrm + to_boundary, nrm * (1 + gamma_k))))
                alpha = alpha_max * (self.min_stepsize_ratio + (1 - self.min_stepsize_ratio) * cosk)
                direction = g / g.norm(p=2.0, dim=1).clamp_min(1e-30)[:, None]
                delta = project_ball_t(delta - alpha[:, None] * direction, eps, norm)
        cand: np.ndarray = (x0 + best_delta).numpy()
        found: np.ndarray = adv_found.numpy() & torch.isfinite(best_norm).numpy()
        return cand, found

    def _first_step(self, loss: torch.Tensor, g: torch.Tensor, rel: float) -> torch.Tensor:
        """Per-point largest step: the first-order distance to the boundary in the step's geometry."""
        if self.max_stepsize is not None:
            return torch.full_like(loss, self.max_stepsize)
        a = rel * loss.abs() / g.norm(p=2.0, dim=1).clamp_min(1e-30)  # an l2 step of size a moves the margin by a*||g||_2
        ok = torch.isfinite(a) & (a > 0)
        fill = a[ok].median() if bool(ok.any()) else torch.tensor(1.0, dtype=a.dtype)
        a = torch.where(ok, a, fill)
        return a.clamp(min=fill * 1e-3)


__all__ = ["FMN"]
