"""The Fast Adaptive Boundary attack (Croce & Hein 2020) through torchattacks: minimal linf/l2/l1.

FAB linearises the classifier at the current iterate, projects onto the linearised boundary of the
closest class and biases the step towards the clean point, so it finds small perturbations in few
steps. torchattacks' `perturb` stops restarting a point once it is fooled and has no L1 branch, so
each restart runs here through `attack_single_run` (or the targeted version) in a batch unit box and
the per-point smallest verified perturbation is kept.
"""
from __future__ import annotations

import numpy as np
import torch

from ..models.base import Model
from .base import NORMS, Candidates, MinimalAttack, Norm
from .candidates import chunks, polish
from .params import derive_seed, int_arg, pos_arg
from .torch_adapter import BoxedMinimalAttack, BoxMap, frozen_parameters, library_norm_name, seeded


class FAB(BoxedMinimalAttack, MinimalAttack):
    """Fast Adaptive Boundary attack (Croce & Hein 2020) via torchattacks, minimal linf/l2/l1.

    torchattacks' `perturb` stops restarting a point once it is fooled and has no L1 branch, so each
    restart is run here through `attack_single_run` and the per-point smallest verified perturbation
    is kept; restarts after the first start at random inside half the best radius found so far.
    targeted=None chooses the top-k targeted version (one gradient per target instead of a full
    Jacobian) above 10 classes. n_classes is always the model's.
    """

    name = "fab"
    norms = NORMS

    def __init__(self, steps: int = 100, restarts: int = 3, alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9,
                 targeted: bool | None = None, n_target_classes: int | None = None, seed: int = 0, batch_size: int = 1024,
                 box_radius: float | None = None, refine: bool = True) -> None:
        self.steps = int_arg(steps, "fab: steps")
        self.restarts = int_arg(restarts, "fab: restarts")
        self.alpha_max = pos_arg(alpha_max, "fab: alpha_max")
        self.eta = pos_arg(eta, "fab: eta")
        self.beta = pos_arg(beta, "fab: beta")
        self.targeted = targeted
        self.n_target_classes = None if n_target_classes is None else int_arg(n_target_classes, "fab: n_target_classes")
        self.seed = int(seed)
        self._box_options(batch_size, box_radius, refine)

    def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm) -> Candidates:
        ta, keeper, queries, todo = self._start(model, X, y, norm)
        n_cls = int(model.n_classes)
        targeted = (n_cls > 10) if self.targeted is None else bool(self.targeted)
        n_targets = min(self.n_target_classes or 9, n_cls - 1) if targeted else 0
        with frozen_parameters(model):
            for k, ch in enumerate(chunks(todo, self.batch_size)):
                box = BoxMap.for_minimal(X[ch], self.box_radius)
                mod = box.module(model, layout="flat")
                U = box.unit_tensor(X[ch])
                yt = torch.as_tensor(y[ch])
                with torch.no_grad():
                    keep = (mod(U).argmax(dim=1) == yt).numpy()  # FAB attacks only rows it classifies correctly
                rows, U, yt = ch[keep], U[keep], yt[keep]
                if rows.size == 0:
                    continue
                atk = ta.FAB(mod, norm=library_norm_name(norm), eps=1.0, steps=self.steps, n_restarts=1,
                             alpha_max=self.alpha_max, eta=self.eta, beta=self.beta, seed=self.seed,
                             multi_targeted=targeted, n_classes=n_cls)
                # random restarts start within half the best radius found so far (FAB's rule; its eps
                # caps that radius, so eps is set per point); points without one use half the batch's
                # median distance to its centroid
                spread = float(np.median(norm.norms(X[rows] - X[rows].mean(axis=0)))) if rows.size > 1 else 1.0
                fallback = float(box.unit_eps(max(spread, 1e-6))[0])
                mod.calls = 0
                for r in range(self.restarts):
                    best_u = box.unit_eps(keeper.dist[rows])
                    atk.eps = torch.as_tensor(np.where(np.isfinite(best_u), best_u, fallback), dtype=torch.float32)
                    targets = range(2, n_targets + 2) if targeted else [None]
                    for t in targets:
                        with seeded(derive_seed(self.seed, k, r, t or 0)):
                            if t is None:
                                adv = atk.attack_single_run(U, yt, use_rand_start=r > 0)
                            else:
                                atk.target_class = t
                                adv = atk.attack_single_run_targeted(U, yt, use_rand_start=r > 0)
                        claimed = (adv != U).reshape(rows.size, -1).any(dim=1).numpy()
                        polish(model, keeper, rows, box.from_unit(adv), claimed, norm, refine=self.refine)
                queries[rows] += mod.calls
        return keeper.candidates(queries)


__all__ = ["FAB"]
