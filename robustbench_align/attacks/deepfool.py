"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard 2016) through torchattacks: minimal l2.

DeepFool steps to the boundary of the linearised classifier of the closest class until the label
changes, with a 2 % overshoot; the overshoot is removed afterwards by bisection along each
perturbation's ray, so the distance is the boundary crossing in DeepFool's direction. torchattacks
clamps every iterate to the unit box: a point whose boundary lies outside the batch's box ends on
the box face, still classified correctly; such points are run again in boxes 4, 16 and 64 times wider.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..models.base import Model
from .base import Candidates, MinimalAttack, Norm
from .candidates import chunks, polish
from .params import int_arg, pos_arg
from .torch_adapter import BoxedMinimalAttack, BoxMap, frozen_parameters

BOX_GROWTH = (4.0, 16.0, 64.0)  # box radii, relative to the first box, for points stuck on its face


class DeepFool(BoxedMinimalAttack, MinimalAttack):
    """DeepFool (Moosavi-Dezfooli et al. 2016) via torchattacks, minimal l2.

    The 2 % overshoot is removed afterwards by bisection along each perturbation's ray, so the
    distance is the boundary crossing in DeepFool's direction. Points whose DeepFool path is clamped
    on the face of the unit box without crossing the boundary are retried in wider boxes.
    """

    name = "deepfool"
    norms = ("l2",)

    def __init__(self, steps: int = 50, overshoot: float = 0.02, batch_size: int = 1024, box_radius: float | None = None,
                 refine: bool = True) -> None:
        self.steps = int_arg(steps, "deepfool: steps")
        self.overshoot = pos_arg(overshoot, "deepfool: overshoot")
        self._box_options(batch_size, box_radius, refine)

    def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm) -> Candidates:
        ta, keeper, queries, todo = self._start(model, X, y, norm)
        with frozen_parameters(model):
            for ch in chunks(todo, self.batch_size):
                radius = BoxMap.minimal_radius(X[ch]) if self.box_radius is None else self.box_radius
                cand, claimed, stuck = self._in_box(ta, model, X[ch], y[ch], radius, queries, ch)
                for growth in BOX_GROWTH:
                    if stuck.size:  # on the box face: adversarial after all, or clamped short of the boundary
                        stuck = stuck[model.predict(cand[stuck]) == y[ch[stuck]]]
                    if stuck.size == 0:
                        break
                    c2, cl2, s2 = self._in_box(ta, model, X[ch[stuck]], y[ch[stuck]], growth * radius, queries, ch[stuck])
                    cand[stuck], claimed[stuck] = c2, cl2
                    stuck = stuck[s2]
                polish(model, keeper, ch, cand, claimed, norm, refine=self.refine)
        return keeper.candidates(queries)

    def _in_box(self, ta: Any, model: Model, Xc: np.ndarray, yc: np.ndarray, radius: float, queries: np.ndarray,
                rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """DeepFool on the rows Xc in the batch box of linf room `radius`.

        Returns the candidates (feature space), the rows DeepFool moved (claimed) and the positions
        of the rows whose result lies on the box face; adds the forwards per row to queries[rows].
        """
        box = BoxMap.for_minimal(Xc, radius)
        mod = box.module(model, layout="flat")
        atk = ta.DeepFool(mod, steps=self.steps, overshoot=self.overshoot)
        U = box.unit_tensor(Xc)
        adv = atk(U, torch.as_tensor(yc))
        claimed = (adv != U).any(dim=1).numpy()
        queries[rows] += max(1, mod.calls // max(1, rows.size))
        return box.from_unit(adv), claimed, np.flatnonzero(claimed & BoxMap.on_face(adv))


__all__ = ["BOX_GROWTH", "DeepFool"]
