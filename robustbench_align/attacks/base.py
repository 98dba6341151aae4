"""The attack contract: one lifecycle in the base class, norms as value objects, verified candidates.

In the spirit of Foolbox 3 (`foolbox/attacks/base.py`): a subclass writes only `_attack`, which
returns raw `Candidates`; the base class's final `run` wraps the model, checks availability,
capabilities, norm and inputs, times the call, and then verifies every candidate with the model's
own `predict` (and the budget, for fixed-eps attacks) before it builds the `AttackResult`. No
candidate counts unless it passed that check, so a new attack cannot skip verification.

- `MinimalAttack`: per point the smallest perturbation found (one run gives the whole
  robust-accuracy-vs-eps curve).
- `RefiningAttack`: a minimal attack that can also start from known per-point radii (`run_from`).
- `FixedEpsAttack`: any adversarial inside an eps-ball (one eps, or one per point).

Optional capabilities are declared here, never looked up with `getattr`: `available()` (optional
backend installed), `install_hint`, `exact` (a complete method whose lower bounds certify),
`per_point_eps` (a fixed-eps attack that runs a vector of eps in one call).
"""
from __future__ import annotations

import importlib
import importlib.util
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np

from ..errors import AttackError
from ..models.base import Model, check_features, wrap

_T = TypeVar("_T")

NORMS: tuple[str, ...] = ("linf", "l2", "l1")
BUDGET_RTOL = 1e-6  # an adversarial at eps * (1 + 1e-6) counts as within eps (float round-off of the norm)


# ----------------------------------------------------------------------------------------
# Registry lookups
# ----------------------------------------------------------------------------------------
def lookup(table: Mapping[str, _T], name: object, what: str, choices: Iterable[str] | None = None) -> _T:
    """table[name.lower()], or AttackError "unknown <what> 'name'; choose one of ..." (the table's keys by default)."""
    key = str(name).lower()
    if key not in table:
        raise AttackError(f"unknown {what} {name!r}; choose one of {', '.join(table if choices is None else choices)}")
    return table[key]


# ----------------------------------------------------------------------------------------
# Norms
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Norm:
    """An l_p threat geometry: its name, p, the dual exponent q (1/p + 1/q = 1), distances and projection.

    A Norm compares and hashes equal to its name, so `Norm.of("linf") == "linf"`; public functions
    accept the names "linf", "l2", "l1" and turn them into Norm values once, at the boundary.
    """

    name: str
    p: float
    q: float

    @staticmethod
    def of(norm: str | Norm) -> Norm:
        """The Norm for a name (case-insensitive) or a Norm; AttackError naming the valid ones otherwise."""
        if isinstance(norm, Norm):
            return norm
        return lookup(_BY_NAME, norm, "norm")

    @property
    def dual(self) -> Norm:
        """The dual norm (linf <-> l1, l2 <-> l2)."""
        return _BY_P[self.q]

    def norms(self, D: np.ndarray) -> np.ndarray:
        """Row norms of a 2-D array, in float64 (an empty batch gives an empty array)."""
        D = np.asarray(D, dtype=np.float64)
        if D.shape[0] == 0:
            return np.zeros(0)
        n: np.ndarray = np.linalg.norm(D, ord=self.p, axis=1)
        return n

    def distance(self, X: np.ndarray, X_adv: np.ndarray) -> np.ndarray:
        """Per-row norm of X_adv - X in float64."""
        return self.norms(np.asarray(X_adv, dtype=np.float64) - np.asarray(X, dtype=np.float64))

    def project(self, X: np.ndarray, X_adv: np.ndarray, eps: Any) -> np.ndarray:
        """Pull X_adv onto the ball of radius eps (one, or one per row) around X, in float64.

        Clips for linf and rescales for l2/l1 (exact for l2, direction-preserving for l1). The radius
        is shrunk a hair at a time until the float64 distance of the result is <= eps itself, so a
        point exactly on the sphere never reads eps * (1 + 1e-16) and is never called robust.
        """
        X = np.asarray(X, dtype=np.float64)
        D0 = np.asarray(X_adv, dtype=np.float64) - X
        e = np.broadcast_to(np.asarray(eps, dtype=np.float64), (X.shape[0],))
        out: np.ndarray = X + D0
        rows = np.arange(X.shape[0])
        for shrink in (0.0, 1e-15, 1e-13, 1e-11, 1e-9, 1e-7):
            if rows.size == 0:
                break
            er = e[rows] * (1.0 - shrink)
            D = D0[rows]
            if self.p == np.inf:
                D = np.clip(D, -er[:, None], er[:, None])
            else:
                n = self.norms(D)
                D = D * np.where(n > er, er / np.maximum(n, 1e-300), 1.0)[:, None]
            out[rows] = X[rows] + D
            rows = rows[self.norms(out[rows] - X[rows]) > e[rows]]
        return out

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Norm):
            return self.name == other.name
        if isinstance(other, str):
            return self.name == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.name)

    def __str__(self) -> str:
        return self.name


LINF = Norm("linf", float(np.inf), 1.0)
L2 = Norm("l2", 2.0, 2.0)
L1 = Norm("l1", 1.0, float(np.inf))
_BY_NAME = {n.name: n for n in (LINF, L2, L1)}
_BY_P = {n.p: n for n in (LINF, L2, L1)}


def check_norm(norm: str | Norm) -> str:
    """The canonical name of a norm ("linf", "l2", "l1"); AttackError otherwise."""
    return Norm.of(norm).name


def distances(X: np.ndarray, X_adv: np.ndarray, norm: str | Norm) -> np.ndarray:
    """Per-row norm of X_adv - X in float64."""
    return Norm.of(norm).distance(X, X_adv)


# ----------------------------------------------------------------------------------------
# Optional backends
# ----------------------------------------------------------------------------------------
def backend_available(module: str) -> bool:
    """True when an optional backend library can be imported here (checked without importing it)."""
    return importlib.util.find_spec(module) is not None


def import_backend(module: str, hint: str) -> Any:
    """Import an optional backend lazily; AttackError saying how to install it when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise AttackError(f"{module} is not installed; {hint}") from None


# ----------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------
def check_eps(eps: Any) -> np.ndarray:
    """One eps or a list of them: finite and > 0, else AttackError."""
    try:
        arr = np.asarray(eps, dtype=np.float64)
    except (TypeError, ValueError):
        raise AttackError(f"eps must be a number or a flat list of numbers, got {eps!r}") from None
    if arr.ndim > 1:
        raise AttackError(f"eps must be a number or a flat list of numbers, got shape {arr.shape}")
    e = np.atleast_1d(arr)
    if e.size == 0 or not np.all(np.isfinite(e)) or np.any(e <= 0):
        raise AttackError(f"eps must be finite and > 0, got {eps!r}")
    return e


def eps_vector(eps: Any, n: int) -> np.ndarray:
    """One eps for all points or one per point, as an (n,) float64 array; AttackError otherwise."""
    e = check_eps(eps).ravel()
    if e.size == 1:
        return np.full(n, float(e[0]))
    if e.size == n:
        return e.astype(np.float64)
    raise AttackError(f"eps must be one value or one per point ({n}), got {e.size} values")


def check_inputs(model: Model, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """X of the model's width, finite; y integer labels in range. Raises AttackError."""
    try:
        X = check_features(X, model.n_features, who=model.name)
    except Exception as exc:  # noqa: BLE001 - re-raised as an attack error with the same message
        raise AttackError(str(exc)) from None
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != X.shape[0]:
        raise AttackError(f"y must be 1-D with {X.shape[0]} labels, got shape {y.shape}")
    try:
        yf = y.astype(np.float64)
    except (TypeError, ValueError):
        raise AttackError("labels must be integers 0..n_classes-1 (got non-numeric labels); encode them first") from None
    if y.size and (not np.all(np.isfinite(yf)) or np.any(yf != np.round(yf))):
        raise AttackError("labels must be integers 0..n_classes-1")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= model.n_classes):
        raise AttackError(f"labels out of range: the model has {model.n_classes} classes (0..{model.n_classes - 1})")
    return X, y


# ----------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------
@dataclass
class Candidates:
    """What an attack's `_attack` returns: one raw candidate per point, not yet verified.

    x_adv: (n, d) candidates (the clean point where the attack found nothing). claimed: the points
    the attack reports as adversarial (default: every finite candidate that differs from its clean
    point); claims that fail verification are counted as rejected. lower_bound: certified lower
    bounds on the minimal distance (exact attacks). queries: model calls per point. rejected: claims
    the attack already dropped itself. flags: attack-specific diagnostics, copied to the result.
    """

    x_adv: np.ndarray
    claimed: np.ndarray | None = None
    lower_bound: np.ndarray | None = None
    queries: np.ndarray | None = None
    rejected: int = 0
    flags: dict[str, Any] = field(default_factory=dict)


@dataclass
class AttackResult:
    """Per-point outcome of an attack on (X, y).

    distance is 0 for points the model already misclassifies, np.inf where no adversarial was
    found; x_adv holds the verified adversarial (or the clean point where none was found).
    lower_bound is a certified lower bound on the minimal distance (exact attacks only, else None).
    """

    x_adv: np.ndarray
    distance: np.ndarray
    success: np.ndarray
    norm: str
    attack: str
    lower_bound: np.ndarray | None = None
    queries: np.ndarray | None = None
    wall_time: float = 0.0
    rejected: int = 0
    by_attack: np.ndarray | None = None  # name of the attack that found each point's best adversarial
    flags: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(self.distance.shape[0])

    def robust_accuracy(self, eps: Any) -> np.ndarray:
        """Fraction of points whose (verified) minimal distance exceeds each eps.

        Uses the same tolerance as `verify`: an adversarial at eps·(1+1e-6) counts as within eps.
        """
        e = np.atleast_1d(np.asarray(eps, dtype=np.float64))
        if self.n == 0:
            return np.full(e.shape, np.nan)
        return np.array([(self.distance > x * (1 + BUDGET_RTOL)).mean() for x in e])

    def is_exact(self, rtol: float = 1e-6) -> np.ndarray:
        """Points whose distance is certified optimal (lower bound meets the found distance)."""
        if self.lower_bound is None:
            return np.zeros(self.n, dtype=bool)
        exact: np.ndarray = np.isfinite(self.distance) & (self.lower_bound >= self.distance * (1 - rtol) - 1e-12)
        return exact


def verify(
    model: Model,
    X: np.ndarray,
    y: np.ndarray,
    X_adv: np.ndarray,
    norm: str | Norm,
    eps: float | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Re-predict candidates with the model's own `predict` and check the budget.

    Returns (ok, distance): ok[i] when X_adv[i] is finite, misclassified by the model, and (if eps
    is given) within eps·(1+1e-6). distance is the float64 norm of X_adv - X (inf where not ok).
    """
    X_adv = np.asarray(X_adv, dtype=np.float64)
    if X_adv.shape[0] == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    finite = np.all(np.isfinite(X_adv), axis=1)
    pred = np.full(X_adv.shape[0], -1, dtype=np.int64)
    if finite.any():
        pred[finite] = model.predict(X_adv[finite])
    dist = Norm.of(norm).distance(X, np.where(finite[:, None], X_adv, X))
    ok = finite & (pred != y)
    if eps is not None:
        ok &= dist <= np.asarray(eps, dtype=np.float64) * (1 + BUDGET_RTOL)
    return ok, np.where(ok, dist, np.inf)


def _finalize(model: Model, X: np.ndarray, y: np.ndarray, cand: Candidates, norm: Norm, attack: str,
              eps: np.ndarray | None, t0: float) -> AttackResult:
    """Verify raw candidates and package them: clean-misclassified points get distance 0."""
    n = X.shape[0]
    x_adv = np.asarray(cand.x_adv, dtype=np.float64)
    if x_adv.shape != X.shape:
        raise AttackError(f"attack {attack!r} returned candidates of shape {x_adv.shape} for inputs of shape {X.shape}")
    res = AttackResult(x_adv=np.array(X, dtype=np.float64, copy=True), distance=np.full(n, np.inf),
                       success=np.zeros(n, dtype=bool), norm=norm.name, attack=attack, queries=np.zeros(n, dtype=np.int64))
    clean_wrong = model.predict(X) != y if n else np.zeros(0, dtype=bool)
    ok, dist = verify(model, X, y, x_adv, norm, eps)
    claimed = cand.claimed
    if claimed is None:
        claimed = np.all(np.isfinite(x_adv), axis=1) & np.any(x_adv != X, axis=1)
    res.rejected = int((np.asarray(claimed, dtype=bool) & ~clean_wrong & ~ok).sum()) + int(cand.rejected)
    ok &= ~clean_wrong
    res.x_adv[ok] = x_adv[ok]
    res.distance[ok] = dist[ok]
    res.distance[clean_wrong] = 0.0
    res.success = ok | clean_wrong
    if cand.lower_bound is not None:
        lb = np.asarray(cand.lower_bound, dtype=np.float64).copy()
        lb[clean_wrong] = 0.0
        res.lower_bound = np.minimum(lb, res.distance)
    if cand.queries is not None:
        res.queries = np.asarray(cand.queries)
    res.flags.update(cand.flags)
    res.wall_time = time.perf_counter() - t0
    return res


# ----------------------------------------------------------------------------------------
# The attack classes
# ----------------------------------------------------------------------------------------
_LIFECYCLE = ("run", "run_from")


class Attack(ABC):  # noqa: B024 - the abstract methods are declared by MinimalAttack/RefiningAttack/FixedEpsAttack
    """Base of all attacks: a name, the capabilities it needs, the norms it supports, the lifecycle.

    Class attributes a subclass sets: `name`, `requires` (model capabilities, e.g.
    {"torch_logits"} or {"tree_ensemble"}), `norms`, `exact`, `install_hint`; and `available()`
    when it needs an optional backend. Wrappers (bisection, refinement) may set name, requires and
    norms per instance from the attack they wrap.
    """

    name: str = "attack"
    requires: frozenset[str] = frozenset({"predict_proba"})
    norms: tuple[str, ...] = NORMS
    exact: bool = False
    install_hint: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for meth in _LIFECYCLE:
            if meth in cls.__dict__ and cls.__module__ != __name__:
                raise TypeError(f"{cls.__name__} overrides {meth}(); implement _attack() instead: the base class's "
                                f"{meth}() checks inputs and verifies every candidate")

    @classmethod
    def available(cls) -> bool:
        """True when the attack's optional backend is installed here (override when there is one)."""
        return True

    @classmethod
    def refuses(cls, model: Model) -> str | None:
        """Why this attack cannot run on this particular model although it has the capabilities (None: it can).

        Override when the capability is not enough (e.g. Veritas needs float32 split thresholds); threat models then
        skip the attack for that model instead of recording a failure.
        """
        return None

    def applicable(self, model: Model, norm: str | Norm) -> bool:
        return self.requires <= model.capabilities and Norm.of(norm).name in self.norms and self.refuses(model) is None

    def check_applicable(self, model: Model, norm: str | Norm, label: str | None = None) -> Norm:
        """The Norm, after checking the attack supports it and the model has what it needs; AttackError otherwise."""
        nm = Norm.of(norm)
        who = label or self.name
        if nm.name not in self.norms:
            raise AttackError(f"attack {who!r} does not support norm {nm.name!r}; it supports {', '.join(self.norms)}")
        missing = self.requires - model.capabilities
        if missing:
            raise AttackError(
                f"attack {who!r} needs the {', '.join(sorted(missing))} capability, which {model.name!r} lacks; "
                f"applicable attacks: {', '.join(applicable_names(model, nm.name)) or 'none'}"
            )
        return nm

    def _begin(self, model: Any, X: Any, y: Any, norm: str | Norm) -> tuple[Model, np.ndarray, np.ndarray, Norm]:
        """Wrap the model and check backend, norm, capabilities and inputs (the lifecycle's first half)."""
        if not self.available():
            hint = f"; {self.install_hint}" if self.install_hint else ""
            raise AttackError(f"attack {self.name!r} is not available here (its optional backend is not installed){hint}")
        m = wrap(model)
        nm = self.check_applicable(m, norm)
        X, y = check_inputs(m, X, y)
        return m, X, y, nm

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class MinimalAttack(Attack):
    """Find, per point, the smallest perturbation that changes the model's decision."""

    def run(self, model: Any, X: Any, y: Any, norm: str | Norm) -> AttackResult:
        """Check, attack, verify: the per-point minimal distances this attack found (final; see `_attack`)."""
        t0 = time.perf_counter()
        m, X, y, nm = self._begin(model, X, y, norm)
        return _finalize(m, X, y, self._attack(m, X, y, nm), nm, self.name, None, t0)

    @abstractmethod
    def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm) -> Candidates:
        """Raw candidates for validated inputs (X float64 of the model's width, y int labels)."""


class RefiningAttack(MinimalAttack):
    """A minimal attack that can start from each point's best distance so far (warm start)."""

    def run_from(self, model: Any, X: Any, y: Any, norm: str | Norm, upper: Any) -> AttackResult:
        """Try to beat `upper` (per-point best distances; inf = unknown, left alone); verified like `run`."""
        t0 = time.perf_counter()
        m, X, y, nm = self._begin(model, X, y, norm)
        up = np.asarray(upper, dtype=np.float64).reshape(-1)
        if up.shape != (X.shape[0],):
            raise AttackError(f"attack {self.name!r}: upper must hold one distance per point ({X.shape[0]}), got shape {np.shape(upper)}")
        return _finalize(m, X, y, self._attack_from(m, X, y, nm, up), nm, self.name, None, t0)

    @abstractmethod
    def _attack_from(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm, upper: np.ndarray) -> Candidates:
        """Raw candidates that try to beat the known per-point distances `upper`."""


class FixedEpsAttack(Attack):
    """Find, per point, any perturbation of norm <= eps that changes the model's decision.

    `_attack` always receives one eps per point; `per_point_eps` says the attack handles different
    values in one call (wrappers then batch points with different eps together).
    """

    per_point_eps: ClassVar[bool] = False

    def run(self, model: Any, X: Any, y: Any, norm: str | Norm, eps: Any) -> AttackResult:
        """Check, attack, verify within eps (one value or one per point; final; see `_attack`)."""
        t0 = time.perf_counter()
        m, X, y, nm = self._begin(model, X, y, norm)
        e = eps_vector(eps, X.shape[0])
        return _finalize(m, X, y, self._attack(m, X, y, nm, e), nm, self.name, e, t0)

    @abstractmethod
    def _attack(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm, eps: np.ndarray) -> Candidates:
        """Raw candidates within eps[i] of X[i] for validated inputs."""


def wrapped_fixed_eps(wrapper: Attack, inner: object, kind: str, suffix: str) -> FixedEpsAttack:
    """For a wrapper (bisection, refinement): check `inner` is a FixedEpsAttack and give `wrapper` its
    capabilities, norms and the name "<inner>-<suffix>". AttackError otherwise."""
    if not isinstance(inner, FixedEpsAttack):
        raise AttackError(f"{kind} wraps a FixedEpsAttack, got {type(inner).__name__}")
    wrapper.name = f"{inner.name}-{suffix}"
    wrapper.requires = inner.requires
    wrapper.norms = tuple(inner.norms)
    return inner


PATHS: tuple[str, ...] = ("exact", "gradient", "black-box")  # strongest first


def path_of(attack: Attack | type[Attack]) -> str:
    """The kind of access an attack (instance or class) has to the model: "exact" (a complete method whose
    lower bounds certify), "gradient" (white-box, differentiates the model) or "black-box" (queries only)."""
    if attack.exact:
        return "exact"
    if "torch_logits" in attack.requires:
        return "gradient"
    return "black-box"


def strongest_path(paths: Iterable[str]) -> str:
    """The strongest of several paths ("" when there are none)."""
    ranked = [PATHS.index(p) for p in paths if p in PATHS]
    return PATHS[min(ranked)] if ranked else ""


def clean_correct_rows(model: Model, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Indices of the points the model classifies correctly (the ones worth attacking)."""
    if X.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(model.predict(X) == y)


def applicable_names(model: Model, norm: str) -> list[str]:
    """Registered, available attacks that apply to the model under this norm (for error messages)."""
    from .registry import applicable_attacks

    return applicable_attacks(model, norm)


__all__ = [
    "BUDGET_RTOL", "L1", "L2", "LINF", "NORMS", "PATHS", "Attack", "AttackResult", "Candidates", "FixedEpsAttack", "MinimalAttack",
    "Norm", "RefiningAttack", "applicable_names", "backend_available", "check_eps", "check_inputs", "check_norm", "clean_correct_rows",
    "distances", "eps_vector", "import_backend", "lookup", "path_of", "strongest_path", "verify", "wrapped_fixed_eps",
]
