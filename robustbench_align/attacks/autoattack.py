"""AutoAttack (Croce & Hein 2020) for tabular classifiers, through pyautoattack 0.2.0.

pyautoattack expects images in [0, 1] and its `standard` version needs at least 4 classes (the
targeted DLR loss indexes the 3rd and 4th largest logits) and NCHW input (Square). Here the batch
is mapped onto the unit cube by `BoxMap.for_ball` (one scale for all features, so eps maps exactly)
and shown to the library as (n, d, 1, 1); the attack list follows the class count:

- 2 classes: APGD-CE, FAB-T (1 target, i.e. the other class), Square;
- 3 classes: APGD-CE, APGD-DLR (the untargeted DLR loss needs 3 logits), FAB-T (2 targets), Square;
- 4+ classes: the standard APGD-CE, APGD-T, FAB-T, Square with min(9, C-1) targets (L1: APGD with
  5 restarts and the large-eps schedule, min(5, C-1) APGD targets), as pyautoattack's `standard`.

With 2 or 3 classes the targeted attacks have at most 2 targets instead of 9, so APGD and FAB-T get
5 restarts each (as in AutoAttack's `plus` version) to keep the effort comparable; on small MLPs a
single-restart run missed points whose minimal radius was 2 % below eps.

Later attacks run only on points still robust (the library's loop). Square, being image-shaped,
runs as a second pass on the points the white-box attacks left robust: as (n, d, 1, 1) for linf
and as a padded square image (n, 1, h, h), h >= 5, for l2/l1, whose initialisation tiles h // 5
windows (padding pixels are never read by the model and dropped on the way back). The library's
'auto-attack' logger is silenced while it runs; its RNG calls happen inside a forked RNG state.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import AttackError
from ..models.base import Model
from .base import NORMS, Candidates, FixedEpsAttack, Norm, backend_available, clean_correct_rows, import_backend
from .candidates import Keeper
from .params import derive_seed, int_arg
from .torch_adapter import BoxMap, TorchAttack, frozen_parameters, library_norm_name, seeded

log = logging.getLogger(__name__)

PYAUTOATTACK_INSTALL = "pip install pyautoattack==0.2.0"
PYAUTOATTACK_HINT = f"install it with `{PYAUTOATTACK_INSTALL}`"
ATTACK_NAMES = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


def pyautoattack_available() -> bool:
    """True when pyautoattack can be imported here."""
    return backend_available("pyautoattack")


def import_pyautoattack() -> Any:
    """Import pyautoattack lazily; AttackError with the install line when it is missing."""
    return import_backend("pyautoattack", PYAUTOATTACK_HINT)


@contextlib.contextmanager
def quiet_logger(name: str = "auto-attack", level: int = logging.ERROR) -> Iterator[None]:
    """Raise a logger's level for the duration (pyautoattack logs progress and check warnings)."""
    lg = logging.getLogger(name)
    old = lg.level
    lg.setLevel(level)
    try:
        yield
    finally:
        lg.setLevel(old)


def attack_plan(n_classes: int, norm: Norm | str) -> tuple[list[str], dict[str, Any]]:
    """The attack list and settings used for a class count and norm (see the module docstring)."""
    l1 = Norm.of(norm).p == 1
    c = int(n_classes)
    if c < 2:
        raise AttackError(f"autoattack: a classifier needs at least 2 classes, got {c}")
    targets = min(9, c - 1)
    few = c <= 3  # at most 2 targets: restarts buy back the effort of the standard version's 9 targets
    settings: dict[str, Any] = {
        "apgd_restarts": 5 if (l1 or few) else 1,
        "apgd_largereps": l1,
        "apgd_targets": min(5 if l1 else 9, c - 1),
        "fab_targets": targets,
        "fab_restarts": 5 if few else 1,
        "square_queries": 5000,
    }
    if c == 2:
        attacks = ["apgd-ce", "fab-t", "square"]
    elif c == 3:
        attacks = ["apgd-ce", "apgd-dlr", "fab-t", "square"]
    else:
        attacks = ["apgd-ce", "apgd-t", "fab-t", "square"]
    return attacks, settings


def check_attack_list(attacks: Sequence[str], n_classes: int) -> list[str]:
    """Validate a custom attack list against pyautoattack's names and the class count."""
    out = [str(a).lower() for a in attacks]
    bad = [a for a in out if a not in ATTACK_NAMES]
    if bad or not out:
        raise AttackError(f"autoattack: unknown attack(s) {bad or attacks!r}; choose from {', '.join(ATTACK_NAMES)}")
    if n_classes < 3 and "apgd-dlr" in out:
        raise AttackError("autoattack: 'apgd-dlr' needs at least 3 classes (the DLR loss uses the 3rd largest logit)")
    if n_classes < 4 and "apgd-t" in out:
        raise AttackError("autoattack: 'apgd-t' needs at least 4 classes (the targeted DLR loss uses the 4th largest logit)")
    return out


def configure(aa: Any, settings: dict[str, Any]) -> None:
    """Set pyautoattack's sub-attack parameters (what its `standard` version sets, with capped targets)."""
    aa.apgd.n_restarts = settings["apgd_restarts"]
    aa.apgd.use_largereps = settings["apgd_largereps"]
    aa.apgd_targeted.use_largereps = settings["apgd_largereps"]
    aa.apgd_targeted.n_restarts = 1
    aa.apgd_targeted.n_target_classes = settings["apgd_targets"]
    aa.fab.n_restarts = settings["fab_restarts"]
    aa.fab.n_target_classes = settings["fab_targets"]
    aa.square.n_queries = settings["square_queries"]


class AutoAttack(TorchAttack, FixedEpsAttack):
    """AutoAttack at fixed eps (linf/l2/l1) for any number of classes >= 2, seeded.

    `attacks` overrides the class-count default list (validated); `square_queries` trims Square's
    budget. eps may be one value or one per point (points sharing an eps run together). Every
    returned adversarial is mapped back to feature space, projected onto the float64 ball and
    verified with the model's predict.
    """

    name = "autoattack"
    norms = NORMS
    per_point_eps = False
    install_hint: ClassVar[str] = PYAUTOATTACK_HINT

    def __init__(self, attacks: Sequence[str] | None = None, seed: int = 0, batch_size: int = 500,
                 square_queries: int = 5000, margin: float = 0.1) -> None:
        self.attacks = None if attacks is None else list(attacks)
        self.seed = int(seed)
        self.batch_size = int_arg(batch_size, "autoattack: batch_size")
        self.square_queries = int_arg(square_queries, "autoattack: square_queries")
        if not (np.isfinite(margin) and margin >= 0):
            raise AttackError(f"autoattack: margin must be >= 0, got {margin!r}")
        self.margin = float(margin)

    @classmethod
    def available(cls) -> bool:
        return pyautoattack_available()

    def plan(self, n_classes: int, norm: Norm | str) -> tuple[list[str], dict[str, Any]]:
        """The attack list and settings this instance runs for a class count and norm."""
        attacks, settings = attack_plan(n_classes, norm)
        settings["square_queries"] = self.square_queries
        if self.attacks is not None:
            attacks = check_attack_list(self.attacks, n_classes)
        return attacks, settings

    def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm, eps: np.ndarray) -> Candidates:
        pya = import_pyautoattack()
        attacks, settings = self.plan(model.n_classes, norm)
        keeper = Keeper(model, X, y, norm, eps)
        todo = clean_correct_rows(model, X, y)
        forwards = 0
        # white-box attacks see (n, d, 1, 1); Square runs after them on the points still robust, as
        # (n, d, 1, 1) for linf (one random sign per feature) and as a padded square image for l2/l1
        # (its L2/L1 initialisation tiles windows of side h // 5)
        stages = [([a for a in attacks if a != "square"], "nchw")]
        if "square" in attacks:
            stages.append((["square"], "nchw" if norm.p == np.inf else "square"))
        with frozen_parameters(model), quiet_logger():
            for g, value in enumerate(np.unique(eps[todo])):
                for st, (names, layout) in enumerate(stages):
                    rows = todo[(eps[todo] == value) & ~keeper.found[todo]]
                    if rows.size == 0 or not names:
                        continue
                    box = BoxMap.for_ball(X[rows], norm, float(value), margin=self.margin * float(value))
                    mod = box.module(model, layout=layout)
                    aa = pya.AutoAttack(mod, attacks=list(names), device="cpu", eps=float(box.unit_eps(value)[0]),
                                        norm=library_norm_name(norm), seed=derive_seed(self.seed, g, st), version="custom")
                    configure(aa, settings)
                    U = box.unit_tensor(X[rows], layout)
                    with seeded(derive_seed(self.seed, g, st, 1)):
                        adv, _ = aa.run_standard_evaluation(U, torch.as_tensor(y[rows]), batch_size=self.batch_size)
                    changed = (adv != U).reshape(rows.size, -1).any(dim=1).numpy()
                    cand = norm.project(X[rows], box.from_unit(adv), value)
                    cand[~changed] = X[rows][~changed]
                    keeper.offer(rows, cand, changed)
                    forwards += mod.rows
        return keeper.candidates(flags={"attacks": list(attacks), "forward_rows": int(forwards)})


__all__ = [
    "ATTACK_NAMES",
    "PYAUTOATTACK_HINT",
    "PYAUTOATTACK_INSTALL",
    "AutoAttack",
    "attack_plan",
    "check_attack_list",
    "configure",
    "import_pyautoattack",
    "pyautoattack_available",
    "quiet_logger",
]
