"""Constructor argument checks and seed derivation shared by the attacks.

Attack constructors validate their hyper-parameters up front, so a bad value fails with a one-line
`AttackError` naming the argument instead of deep inside an iteration. Attacks that run several
seeded pieces (restarts, chunks, binary-search rounds) derive one seed per piece with
`derive_seed`, so a piece's randomness depends only on the attack seed and its own indices.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import AttackError


def int_arg(value: Any, name: str, lo: int = 1) -> int:
    """`value` as an int >= lo (an integral float such as 3.0 is accepted); AttackError otherwise."""
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise AttackError(f"{name} must be an integer >= {lo}, got {value!r}") from None
    if v < lo or v != value:
        raise AttackError(f"{name} must be an integer >= {lo}, got {value!r}")
    return v


def pos_arg(value: Any, name: str) -> float:
    """`value` as a finite float > 0; AttackError otherwise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise AttackError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise AttackError(f"{name} must be a positive number, got {value!r}")
    return v


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived deterministically from integers (attack seed, restart, chunk, ...)."""
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


__all__ = ["derive_seed", "int_arg", "pos_arg"]
