"""The Carlini-Wagner L2 attack (Carlini & Wagner 2017) through torchattacks, with a per-point search over c.

CW minimises ||delta||_2^2 + c * f(x + delta) with Adam in tanh space, f the clipped logit margin.
torchattacks' CW takes one c for the batch and has no binary search; here c is made per point by
scaling each row's logits by c_i in the unit-space adapter (CW's f is positively homogeneous in the
logits for kappa = 0, and argmax is unchanged), and c_i follows the paper's search: x10 until the
first success, then bisection.
"""
from __future__ import annotations

import numpy as np
import torch

from ..models.base import Model
from .base import Candidates, MinimalAttack, Norm
from .candidates import chunks, polish
from .params import derive_seed, int_arg, pos_arg
from .torch_adapter import BoxedMinimalAttack, BoxMap, frozen_parameters, seeded


class CW(BoxedMinimalAttack, MinimalAttack):
    """Carlini-Wagner L2 (2017) via torchattacks, with the per-point binary search over c.

    torchattacks' CW takes one c for the batch and has no binary search; here c is made per point by
    scaling each row's logits by c_i in the unit-space adapter (CW's f is positively homogeneous in
    the logits for kappa = 0, and argmax is unchanged), and c_i follows the usual search: x10 until
    the first success, then bisection. c is in feature units (cost ||delta_x||^2 + c f); `lr` is the
    Adam step in units of the batch's median feature standard deviation (1 for standardised data),
    converted to torchattacks' tanh space; it must let `steps` steps travel the largest radius.
    """

    name = "cw"
    norms = ("l2",)

    def __init__(self, steps: int = 100, binary_steps: int = 9, c_init: float = 1.0, lr: float = 0.1, seed: int = 0,
                 batch_size: int = 1024, box_radius: float | None = None, refine: bool = True) -> None:
        self.steps = int_arg(steps, "cw: steps")
        self.binary_steps = int_arg(binary_steps, "cw: binary_steps")
        self.c_init = pos_arg(c_init, "cw: c_init")
        self.lr = pos_arg(lr, "cw: lr")
        self.seed = int(seed)
        self._box_options(batch_size, box_radius, refine)

    def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm) -> Candidates:
        ta, keeper, queries, todo = self._start(model, X, y, norm)
        with frozen_parameters(model):
            for k, ch in enumerate(chunks(todo, self.batch_size)):
                box = BoxMap.for_minimal(X[ch], self.box_radius)
                s = float(box.scale[0])
                unit = float(np.median(X[ch].std(axis=0))) if ch.size > 1 else 0.0
                unit = unit if unit > 0 else 1.0
                U = box.unit_tensor(X[ch])
                yt = torch.as_tensor(y[ch])
                c = np.full(ch.size, self.c_init)
                lo = np.zeros(ch.size)
                hi = np.full(ch.size, np.inf)
                lr_w = 2.0 * self.lr * unit / s  # du/dw = (1 - tanh^2)/2 ~ 1/2 near the centre of the box
                for b in range(self.binary_steps):
                    mod = box.module(model, layout="flat", logit_scale=c / s**2)
                    atk = ta.CW(mod, c=1.0, kappa=0, steps=self.steps, lr=lr_w)
                    with seeded(derive_seed(self.seed, k, b)):
                        adv = atk(U, yt)
                    claimed = (adv != U).any(dim=1).numpy()
                    ok = polish(model, keeper, ch, box.from_unit(adv), claimed, norm, refine=self.refine) & claimed
                    hi = np.where(ok, np.minimum(hi, c), hi)
                    lo = np.where(ok, lo, np.maximum(lo, c))
                    c = np.where(np.isfinite(hi), 0.5 * (lo + hi), c * 10.0)
                    queries[ch] += mod.calls
        return keeper.candidates(queries)


__all__ = ["CW"]
