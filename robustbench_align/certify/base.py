"""The certifier contract: per point a lower bound on the minimal adversarial distance that holds for
the model's real arithmetic, optionally a witness (a point the model itself flips).

A `Certifier` is the dual of an attack. Given the model, clean-correct points X with labels y, a
norm and the best verified adversarial distance per point (`upper`, inf where none is known), it
returns a `Certificate`: `lower[i]` such that *no* input within distance < lower[i] of X[i] changes
the model's predicted class. Every certifier must be sound for the model as it computes (float32
weights, library summation order, ties): a bound derived in exact arithmetic is shrunk by a bound on
the rounding error before it is reported. `exact[i]` is True only where a complete method closed the
bracket itself (lower == the distance of a verified witness).

Work is limited by deterministic budgets (bisection steps, optimisation iterations, solver nodes),
never by wall-clock time alone, so that the same inputs give the same bounds on any machine. A
wall-clock limit may act as a safety net; hitting it is reported in `flags`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import BudgetError
from ..models.base import Model


def work_budget(who: str, what: str, value: Any) -> int:
    """A positive integer work budget (steps, iterations, nodes); BudgetError (a ConfigError) naming the fix otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) <= 0:
        raise BudgetError(f"{who}: {what} must be a whole number > 0, got {value!r}")
    return int(value)


@dataclass
class Certificate:
    """What a certifier proved about each point.

    lower: (n,) float64 >= 0, no adversarial strictly closer than lower[i] (0: nothing proved).
    exact: (n,) bool, a complete method found the minimal distance (its witness is in x_witness).
    x_witness: (n, d) float64 candidate adversarials (rows equal to X where there is none); the
        caller re-verifies them with the model's predict before they count.
    witness: (n,) bool, x_witness[i] is a claimed adversarial.
    method: (n,) object, the method that gave lower[i] ("" where none did).
    reason: (n,) object, why lower[i] is 0 or only a bound ("" when there is nothing to say).
    work: (n,) int64, work units spent per point (bisection steps, solver nodes, ...).
    flags: run-level notes (e.g. a safety-net time limit hit).
    """

    lower: np.ndarray
    exact: np.ndarray
    x_witness: np.ndarray
    witness: np.ndarray
    method: np.ndarray
    reason: np.ndarray
    work: np.ndarray
    flags: dict[str, str] = field(default_factory=dict)

    @classmethod
    def empty(cls, X: np.ndarray, method: str = "", reason: str = "") -> Certificate:
        """Nothing proved for any row of X (lower 0), with a shared reason."""
        n = X.shape[0]
        return cls(
            lower=np.zeros(n), exact=np.zeros(n, dtype=bool), x_witness=np.array(X, dtype=np.float64, copy=True),
            witness=np.zeros(n, dtype=bool), method=np.full(n, method, dtype=object), reason=np.full(n, reason, dtype=object),
            work=np.zeros(n, dtype=np.int64),
        )


class Certifier:
    """Base class: `name`, the `norms` it certifies, `refuses(model)` and `certify(...)`.

    complete: True for methods that return the exact radius when they finish within budget.
    """

    name: str = ""
    norms: tuple[str, ...] = ()
    complete: bool = False

    def refuses(self, model: Model) -> str | None:
        """Why this certifier cannot handle `model` (one line), or None when it can."""
        return None

    def certify(self, model: Model, X: np.ndarray, y: np.ndarray, norm: str, upper: np.ndarray) -> Certificate:
        """Certified lower bounds for clean-correct rows X (labels y) under `norm`.

        upper: (n,) the best verified adversarial distance per point (inf where none is known); a
        certifier may use it to bound its search, never to raise a bound above what it proved.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


__all__ = ["Certificate", "Certifier", "work_budget"]
