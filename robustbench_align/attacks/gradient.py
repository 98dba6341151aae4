"""Gradient attacks for models with the `torch_logits` capability.

torchattacks and pyautoattack were written for images: every iterate is clamped to [0, 1] and some
attacks want NCHW tensors. Tabular features are neither, so `BoxMap` maps a box that holds every
point's threat ball affinely onto the unit cube, x = lo + scale * u, with ONE scale shared by all
features of a row (then ||u - u'||_p * scale == ||x - x'||_p for every p, and the library's eps is
simply eps / scale), and `BoxModule` shows the model to the library in that unit space. Because the
box contains every ball, the library's clamp never binds. Candidates come back through the inverse
map, are projected onto the x-space ball in float64 (the float32 round trip can overshoot by about
1e-7 * scale) and then verified by `finalize` with the model's own `predict`.

Attacks here:
- `PGD` (fixed eps, linf/l2; torchattacks PGD/PGDL2 with restarts, or a margin loss),
- `PaperPGD` (the seed paper's 20-step linf PGD on MSE, implemented directly; a protocol, not a library attack),
- `FAB` (minimal, linf/l2/l1; torchattacks FAB with per-point best over restarts),
- `DeepFool` (minimal, l2; torchattacks), `CW` (minimal, l2; torchattacks CW with a per-point binary search over c),
- `FMN` (minimal, linf/l2/l1; fast minimum-norm, Pintor et al. 2021, with a per-point step size).
Minimal attacks finish with a bisection along each found perturbation's ray, so overshoot
(DeepFool's 2 %, FAB's eta) is removed and the reported distance sits on the decision boundary.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import time
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import AttackError
from ..models.base import Model, wrap
from .base import NORMS, AttackResult, FixedEpsAttack, MinimalAttack, check_eps, finalize, verify

log = logging.getLogger(__name__)

TORCHATTACKS_INSTALL = "pip install --no-deps torchattacks==3.5.1"
LAYOUTS = ("flat", "nchw", "nhwc", "square")
_DUAL = {"linf": 1.0, "l2": 2.0, "l1": float("inf")}
_P = {"linf": float("inf"), "l2": 2.0, "l1": 1.0}


# ----------------------------------------------------------------------------------------
# Small shared pieces
# ----------------------------------------------------------------------------------------
def torchattacks_available() -> bool:
    """True when torchattacks can be imported here."""
    return importlib.util.find_spec("torchattacks") is not None


def import_torchattacks() -> Any:
    """Import torchattacks lazily; AttackError with the install line when it is missing."""
    try:
        import torchattacks
    except ImportError:
        raise AttackError(
            f"torchattacks is not installed; install it with `{TORCHATTACKS_INSTALL}` (--no-deps keeps the installed torch)"
        ) from None
    return torchattacks


def derive_seed(*parts: int) -> int:
    """A 63-bit seed derived deterministically from integers (attack seed, restart, chunk, ...)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's global RNG inside a forked RNG state, so the caller's RNG is left untouched.

    Libraries such as pyautoattack and torchattacks call `torch.manual_seed` themselves; inside this
    context those calls are undone on exit too.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        yield


@contextlib.contextmanager
def frozen_parameters(model: Any) -> Iterator[None]:
    """Switch off requires_grad on the model's torch parameters while an attack runs.

    Attacks need gradients with respect to inputs only; this keeps them from filling `.grad` of the
    model's weights (and saves the work).
    """
    mods = [model] if isinstance(model, nn.Module) else []
    mods += [v for v in vars(model).values() if isinstance(v, nn.Module)] if hasattr(model, "__dict__") else []
    params, seen = [], set()
    for m in mods:
        for p in m.parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def model_dtype(model: Model) -> torch.dtype:
    """The dtype to feed `torch_logits`: the model's `torch_dtype`, else float64.

    Models that do not declare a dtype (RFM) cast inputs themselves; float64 loses nothing then.
    """
    dt = getattr(model, "torch_dtype", None)
    return dt if isinstance(dt, torch.dtype) else torch.float64


def eps_vector(eps: Any, n: int) -> np.ndarray:
    """One eps for all points or one per point, as an (n,) float64 array; AttackError otherwise."""
    e = check_eps(eps)
    if e.size == 1:
        return np.full(n, float(e[0]))
    if e.size == n:
        return e.astype(np.float64)
    raise AttackError(f"eps must be one value or one per point ({n}), got {e.size} values")


def chunks(rows: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Consecutive slices of `rows` of at most `size` entries."""
    size = max(1, int(size))
    for i in range(0, rows.shape[0], size):
        yield rows[i:i + size]


def lp_norms(D: np.ndarray, norm: str) -> np.ndarray:
    """Row norms of a float64 array."""
    if D.shape[0] == 0:
        return np.zeros(0)
    return np.linalg.norm(D, ord=_P[norm], axis=1)


def project_to_ball(X: np.ndarray, X_adv: np.ndarray, norm: str, eps: Any) -> np.ndarray:
    """Pull X_adv onto the norm ball of radius eps around X (float64): clip for linf, rescale for l2/l1.

    Used to undo the tiny overshoot of the float32 unit-space round trip; rescaling is exact for l2
    and keeps the direction for l1 (any point of the scaled segment is inside the ball).
    """
    X = np.asarray(X, dtype=np.float64)
    D0 = np.asarray(X_adv, dtype=np.float64) - X
    e = np.broadcast_to(np.asarray(eps, dtype=np.float64), (X.shape[0],))
    out = X + D0
    rows = np.arange(X.shape[0])
    # shrink the radius a hair at a time until the float64 distance of X + D is <= eps itself
    # (a point exactly on the sphere must not read eps * (1 + 1e-16), or "distance > eps" calls it robust)
    for shrink in (0.0, 1e-15, 1e-13, 1e-11, 1e-9, 1e-7):
        if rows.size == 0:
            break
        er = e[rows] * (1.0 - shrink)
        D = D0[rows]
        if norm == "linf":
            D = np.clip(D, -er[:, None], er[:, None])
        else:
            n = lp_norms(D, norm)
            D = D * np.where(n > er, er / np.maximum(n, 1e-300), 1.0)[:, None]
        out[rows] = X[rows] + D
        rows = rows[lp_norms(out[rows] - X[rows], norm) > e[rows]]
    return out


def push_over(model: Model, X: np.ndarray, y: np.ndarray, X_adv: np.ndarray, rows: np.ndarray, norm: str,
              eps: np.ndarray | None = None,
              factors: Sequence[float] = (1 + 1e-7, 1 + 1e-6, 1 + 1e-5, 1 + 1e-4, 1 + 1e-3, 1.01, 1.03)) -> np.ndarray:
    """Lengthen candidates that sit on the boundary but on the wrong side (float rounding).

    For each row in `rows` whose candidate is not yet adversarial, try X + f * (X_adv - X) for the
    growing factors, keeping the first that the model misclassifies (and that stays within eps).
    """
    X_adv = X_adv.copy()
    todo = np.asarray(rows, dtype=np.int64)
    if todo.size:
        todo = todo[model.predict(X_adv[todo]) == y[todo]]
    for f in factors:
        if todo.size == 0:
            break
        trial = X[todo] + f * (X_adv[todo] - X[todo])
        ok = model.predict(trial) != y[todo]
        if eps is not None:
            ok &= lp_norms(trial - X[todo], norm) <= eps[todo]
        X_adv[todo[ok]] = trial[ok]
        todo = todo[~ok]
    return X_adv


def refine_along_ray(model: Model, X: np.ndarray, y: np.ndarray, X_adv: np.ndarray, rows: np.ndarray,
                     steps: int = 40, rtol: float = 1e-9) -> np.ndarray:
    """Shrink each adversarial perturbation along its own ray to the decision boundary.

    Bisection on t in [0, 1] for X + t * (X_adv - X), keeping the adversarial end; rows must be
    adversarial at t = 1. Vectorised over rows; removes overshoot without changing the direction.
    """
    X_adv = X_adv.copy()
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return X_adv
    D = X_adv[rows] - X[rows]
    lo = np.zeros(rows.size)
    hi = np.ones(rows.size)
    for _ in range(int(steps)):
        act = (hi - lo) > rtol
        if not act.any():
            break
        a = np.flatnonzero(act)
        mid = 0.5 * (lo[a] + hi[a])
        adv = model.predict(X[rows[a]] + mid[:, None] * D[a]) != y[rows[a]]
        hi[a] = np.where(adv, mid, hi[a])
        lo[a] = np.where(adv, lo[a], mid)
    X_adv[rows] = X[rows] + hi[:, None] * D
    return X_adv


class Keeper:
    """Per-point best verified adversarial over several candidate batches (smallest distance wins)."""

    def __init__(self, model: Model, X: np.ndarray, y: np.ndarray, norm: str, eps: np.ndarray | None = None):
        self.model, self.X, self.y, self.norm, self.eps = model, X, y, norm, eps
        self.best = np.array(X, dtype=np.float64, copy=True)
        self.dist = np.full(X.shape[0], np.inf)
        self.failed_claims = np.zeros(X.shape[0], dtype=bool)

    def offer(self, rows: np.ndarray, cand: np.ndarray, claimed: np.ndarray | None = None) -> np.ndarray:
        """Verify candidates for `rows`; keep those that beat the current best. Returns the ok mask."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return np.zeros(0, dtype=bool)
        eps = None if self.eps is None else self.eps[rows]
        ok, d = verify(self.model, self.X[rows], self.y[rows], cand, self.norm, eps)
        better = ok & (d < self.dist[rows])
        self.best[rows[better]] = cand[better]
        self.dist[rows[better]] = d[better]
        if claimed is not None:
            self.failed_claims[rows[np.asarray(claimed, dtype=bool) & ~ok]] = True
        return ok

    @property
    def found(self) -> np.ndarray:
        return np.isfinite(self.dist)

    def rejected(self) -> int:
        """Claimed candidates of points for which no verified adversarial was kept."""
        return int((self.failed_claims & ~self.found).sum())


def polish(model: Model, keeper: Keeper, rows: np.ndarray, cand: np.ndarray, claimed: np.ndarray, norm: str,
           refine: bool = True, eps: np.ndarray | None = None) -> np.ndarray:
    """Push claimed-but-unverified candidates over the boundary, shrink them along their ray, offer them.

    Returns the mask (over rows) of candidates that verified as adversarial.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return np.zeros(0, dtype=bool)
    X, y = keeper.X, keeper.y
    full = X.copy()
    full[rows] = cand
    cl = rows[np.asarray(claimed, dtype=bool)]
    full = push_over(model, X, y, full, cl, norm, eps)
    if refine and cl.size:
        adv = cl[model.predict(full[cl]) != y[cl]]
        full = refine_along_ray(model, X, y, full, adv)
    return keeper.offer(rows, full[rows], claimed)


class _TorchAttack:
    """Mixin: the torch_logits requirement, input checks, the clean-correct rows to attack."""

    requires: ClassVar[frozenset[str]] = frozenset({"torch_logits"})
    name: ClassVar[str]
    per_point_eps: ClassVar[bool] = False

    def _prepare(self, model: Any, X: Any, y: Any, norm: str) -> tuple[Model, np.ndarray, np.ndarray, str]:
        model = wrap(model)
        if not callable(getattr(model, "torch_logits", None)):
            raise AttackError(
                f"attack {self.name!r} needs a differentiable model (the torch_logits capability), which {model.name!r} lacks; "
                "use the decision-based attack 'hsj' (or the exact tree attacks for tree ensembles)"
            )
        X, y, norm = self._check(model, X, y, norm)  # type: ignore[attr-defined]
        return model, X, y, norm

    @staticmethod
    def _todo(model: Model, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        if X.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(model.predict(X) == y)


def _int_arg(value: Any, name: str, lo: int = 1) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise AttackError(f"{name} must be an integer >= {lo}, got {value!r}") from None
    if v < lo or v != value:
        raise AttackError(f"{name} must be an integer >= {lo}, got {value!r}")
    return v


def _pos_arg(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise AttackError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise AttackError(f"{name} must be a positive number, got {value!r}")
    return v


# ----------------------------------------------------------------------------------------
# Box rescaling
# ----------------------------------------------------------------------------------------
class BoxMap:
    """Affine map x = lo + scale * u from the unit cube onto a box in feature space.

    `lo` is (1, d) for a batch map or (n, d) for a per-row map; `scale` is one number per map row.
    The scale is the same for every feature, so for every p-norm ||x - x'|| = scale * ||u - u'||.
    A per-row map needs the library to pass the whole batch in order (torchattacks PGD/CW do);
    attacks that drop rows (FAB, AutoAttack) get a batch map.
    """

    def __init__(self, lo: np.ndarray, scale: Any, per_row: bool = False):
        lo = np.atleast_2d(np.asarray(lo, dtype=np.float64))
        scale = np.atleast_1d(np.asarray(scale, dtype=np.float64)).reshape(-1)
        if scale.size not in (1, lo.shape[0]) or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise AttackError(f"BoxMap: scale must be finite and > 0 with one value per map row, got {scale!r}")
        if not np.all(np.isfinite(lo)):
            raise AttackError("BoxMap: lo must be finite")
        self.lo = lo
        self.scale = np.broadcast_to(scale, (lo.shape[0],)).copy()
        self.per_row = bool(per_row)

    @property
    def d(self) -> int:
        return int(self.lo.shape[1])

    @property
    def hi(self) -> np.ndarray:
        return self.lo + self.scale[:, None]

    @classmethod
    def for_ball(cls, X: np.ndarray, norm: str, eps: float, margin: float | None = None) -> "BoxMap":
        """A batch box holding every eps-ball around the rows of X, with a common side length.

        Per feature the box covers [min x - r, max x + r] with r = eps + margin (margin 0.1 * eps
        by default); the l2 and l1 balls of radius eps lie inside their linf ball, so the same box
        serves every norm. The side is the widest feature's extent, centred on each feature.
        """
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        eps = float(eps)
        if norm not in NORMS or not (math.isfinite(eps) and eps > 0):
            raise AttackError(f"BoxMap.for_ball: need a norm in {NORMS} and eps > 0, got {norm!r}, {eps!r}")
        r = eps + (0.1 * eps if margin is None else float(margin))
        lo_f = X.min(axis=0) - r
        hi_f = X.max(axis=0) + r
        side = float(np.max(hi_f - lo_f))
        centre = 0.5 * (lo_f + hi_f)
        return cls((centre - 0.5 * side)[None, :], side)

    @classmethod
    def per_row_ball(cls, X: np.ndarray, eps: Any, margin: float = 0.1) -> "BoxMap":
        """One box per row: the cube of half-side eps_i * (1 + margin) centred on x_i.

        Every row then has the same unit-space radius 1 / (2 (1 + margin)) and the clean point sits
        at u = 0.5, so the float32 resolution is relative to each row's own eps.
        """
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        e = np.broadcast_to(np.asarray(eps, dtype=np.float64), (X.shape[0],))
        r = e * (1.0 + float(margin))
        return cls(X - r[:, None], 2.0 * r, per_row=True)

    @classmethod
    def for_minimal(cls, X: np.ndarray, radius: float | None = None) -> "BoxMap":
        """A batch box for minimal attacks: linf room `radius` around every row.

        By default radius = max(widest feature spread of the batch, 1, 0.1 * max |x|), which holds
        any perturbation smaller than the data's own extent (boundaries of interest lie inside it).
        """
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if radius is None:
            spread = float(np.max(X.max(axis=0) - X.min(axis=0))) if X.shape[0] else 0.0
            radius = max(spread, 1.0, 0.1 * float(np.max(np.abs(X))) if X.size else 0.0)
        return cls.for_ball(X, "linf", float(radius), margin=0.0)

    def unit_eps(self, eps: Any) -> np.ndarray:
        """eps in unit space, per map row: eps / scale."""
        return np.asarray(eps, dtype=np.float64) / self.scale

    def to_unit(self, X: np.ndarray) -> np.ndarray:
        """u = (x - lo) / scale, float64."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        self._check_rows(X.shape[0])
        return (X - self.lo) / self.scale[:, None]

    def from_unit(self, U: Any) -> np.ndarray:
        """x = lo + scale * u in float64 (U may be a tensor of any layout with n rows)."""
        if isinstance(U, torch.Tensor):
            U = U.detach().cpu().double().numpy()
        U = np.asarray(U, dtype=np.float64).reshape(np.shape(U)[0], -1)[:, :self.d]  # drops square-layout padding
        self._check_rows(U.shape[0])
        return self.lo + self.scale[:, None] * U

    def unit_tensor(self, X: np.ndarray, layout: str = "flat", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The rows of X in unit space as a tensor in the given layout (see `to_layout`)."""
        return to_layout(torch.as_tensor(self.to_unit(X), dtype=dtype), layout)

    def module(self, model: Model, layout: str = "flat", logit_scale: Any = None) -> "BoxModule":
        """The model seen from unit space, as an nn.Module the libraries can attack."""
        return BoxModule(model, self, layout=layout, logit_scale=logit_scale)

    def _check_rows(self, n: int) -> None:
        if self.per_row and n != self.lo.shape[0]:
            raise AttackError(f"BoxMap: a per-row map of {self.lo.shape[0]} rows was given {n} rows")

    def __repr__(self) -> str:
        kind = "per-row" if self.per_row else "batch"
        return f"BoxMap({kind}, d={self.d}, scale={self.scale.min():.4g}..{self.scale.max():.4g})"


def square_side(d: int) -> int:
    """Side of the padded square image for d features (at least 5: Square's L2/L1 init needs h >= 5)."""
    return max(5, int(math.ceil(math.sqrt(d))))


def to_layout(U: torch.Tensor, layout: str) -> torch.Tensor:
    """Reshape (n, d) to the layout a library expects.

    flat (n, d); nchw (n, d, 1, 1); nhwc (n, 1, 1, d); square (n, 1, h, h), the features followed by
    padding pixels at 0.5 that the model never reads (so any perturbation of them is dropped, and
    the kept part has a norm no larger than the whole).
    """
    n, d = U.shape[0], U.reshape(U.shape[0], -1).shape[1]
    if layout == "flat":
        return U.reshape(n, d)
    if layout == "nchw":
        return U.reshape(n, d, 1, 1)
    if layout == "nhwc":
        return U.reshape(n, 1, 1, d)
    if layout == "square":
        h = square_side(d)
        out = torch.full((n, h * h), 0.5, dtype=U.dtype)
        out[:, :d] = U.reshape(n, d)
        return out.reshape(n, 1, h, h)
    raise AttackError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


class BoxModule(nn.Module):
    """u -> model.torch_logits(lo + scale * u), flattening NCHW/NHWC/square input back to (n, d).

    The map is computed in float64 and the model's input cast to its own dtype, exactly as
    `BoxMap.from_unit` followed by the model's `predict` does, so library and verifier agree.
    `logit_scale` (one positive number per row) multiplies each row's logits: it leaves the
    decision unchanged and lets CW use a per-point constant c. `calls`/`rows` count forwards.
    """

    def __init__(self, model: Model, box: BoxMap, layout: str = "flat", logit_scale: Any = None):
        super().__init__()
        if layout not in LAYOUTS:
            raise AttackError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
        object.__setattr__(self, "_model", model)  # not registered: the model need not be an nn.Module
        self.box = box
        self.layout = layout
        self._dtype = model_dtype(model)
        self.register_buffer("lo", torch.as_tensor(box.lo, dtype=torch.float64))
        self.register_buffer("scale", torch.as_tensor(box.scale, dtype=torch.float64)[:, None])
        ls = None if logit_scale is None else torch.as_tensor(np.asarray(logit_scale, dtype=np.float64))[:, None]
        self.register_buffer("logit_scale", ls)
        # a (frozen) parameter so libraries that look up the device through parameters() find one
        self.anchor = nn.Parameter(torch.zeros(1), requires_grad=False)
        self.calls = 0
        self.rows = 0

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        n = u.shape[0]
        flat = u.reshape(n, -1)[:, :self.box.d]
        if self.box.per_row and n != self.lo.shape[0]:
            raise AttackError(f"a per-row box map of {self.lo.shape[0]} rows got a batch of {n}; use a batch map for this library")
        x = self.lo + self.scale * flat.to(torch.float64)
        z = self._model.torch_logits(x.to(self._dtype))
        if self.logit_scale is not None:
            if n != self.logit_scale.shape[0]:
                raise AttackError(f"per-row logit scales for {self.logit_scale.shape[0]} rows got a batch of {n}")
            z = z * self.logit_scale.to(z.dtype)
        self.calls += 1
        self.rows += n
        return z.to(u.dtype) if u.is_floating_point() else z


# ----------------------------------------------------------------------------------------
# Fixed-eps attacks
# ----------------------------------------------------------------------------------------
def _margin(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{j != y} z_j per row (negative iff another class scores higher)."""
    zy = z.gather(1, y[:, None])[:, 0]
    other = z.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    return zy - other


class PGD(_TorchAttack, FixedEpsAttack):
    """Projected gradient descent at fixed eps (linf/l2) with random restarts, per-point best.

    loss="ce" runs torchattacks PGD / PGDL2 through a per-row unit box; loss="margin" runs the same
    iteration on the logit margin z_y - max_{j!=y} z_j directly in feature space (the CW/DLR-style
    loss that does not saturate). Restarts run only on points still robust. eps may be one value or
    one per point. Step size rel_stepsize * eps (default 2.5 / steps, Madry et al.).
    """

    name = "pgd"
    norms = ("linf", "l2")
    per_point_eps = True

    def __init__(self, steps: int = 50, restarts: int = 2, rel_stepsize: float | None = None, random_start: bool = True,
                 loss: str = "ce", seed: int = 0, batch_size: int = 2048):
        self.steps = _int_arg(steps, "pgd: steps")
        self.restarts = _int_arg(restarts, "pgd: restarts")
        self.rel_stepsize = 2.5 / self.steps if rel_stepsize is None else _pos_arg(rel_stepsize, "pgd: rel_stepsize")
        self.random_start = bool(random_start)
        if loss not in ("ce", "margin"):
            raise AttackError(f"pgd: unknown loss {loss!r}; choose 'ce' or 'margin'")
        self.loss = loss
        self.seed = int(seed)
        self.batch_size = _int_arg(batch_size, "pgd: batch_size")

    @classmethod
    def available(cls) -> bool:
        return torchattacks_available()

    def run(self, model: Model, X: np.ndarray, y: np.ndarray, norm: str, eps: Any) -> AttackResult:
        t0 = time.perf_counter()
        model, X, y, norm = self._prepare(model, X, y, norm)
        e = eps_vector(eps, X.shape[0])
        if self.loss == "ce":
            import_torchattacks()
        keeper = Keeper(model, X, y, norm, e)
        queries = np.zeros(X.shape[0], dtype=np.int64)
        todo = self._todo(model, X, y)
        with frozen_parameters(model):
            for r in range(self.restarts):
                rows = todo[~keeper.found[todo]]
                for k, ch in enumerate(chunks(rows, self.batch_size)):
                    s = derive_seed(self.seed, r, k)
                    Xa = self._one_run(model, X[ch], y[ch], norm, e[ch], s, self.random_start or r > 0)
                    keeper.offer(ch, project_to_ball(X[ch], Xa, norm, e[ch]))
                    queries[ch] += self.steps + 1
        return finalize(model, X, y, keeper.best, norm, self.name, eps=e, t0=t0, queries=queries)

    def _one_run(self, model: Model, Xc: np.ndarray, yc: np.ndarray, norm: str, e: np.ndarray, seed: int, random_start: bool) -> np.ndarray:
        if self.loss == "margin":
            return _pgd_margin(model, Xc, yc, norm, e, self.steps, self.rel_stepsize, random_start, seed)
        ta = import_torchattacks()
        box = BoxMap.per_row_ball(Xc, e)
        mod = box.module(model, layout="nchw")  # PGDL2 reshapes norms to (n,1,1,1)
        eps_u = float(np.min(box.unit_eps(e)))
        cls = ta.PGD if norm == "linf" else ta.PGDL2
        atk = cls(mod, eps=eps_u, alpha=self.rel_stepsize * eps_u, steps=self.steps, random_start=random_start)
        U = box.unit_tensor(Xc, "nchw")
        with seeded(seed):
            adv = atk(U, torch.as_tensor(yc))
        return box.from_unit(adv)


def _random_ball(shape: tuple[int, int], norm: str, eps: torch.Tensor, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """Uniform in the linf ball; for l2 a random direction with a uniform radius fraction."""
    if norm == "linf":
        return (2 * torch.rand(shape, generator=gen, dtype=dtype) - 1) * eps
    v = torch.randn(shape, generator=gen, dtype=dtype)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-30)
    return v * torch.rand((shape[0], 1), generator=gen, dtype=dtype) * eps


def _pgd_margin(model: Model, Xc: np.ndarray, yc: np.ndarray, norm: str, e: np.ndarray, steps: int, rel: float,
                random_start: bool, seed: int) -> np.ndarray:
    """Margin-loss PGD in feature space (float64 iterate); returns the first adversarial iterate per row."""
    gen = torch.Generator().manual_seed(seed)
    dt = model_dtype(model)
    x0 = torch.as_tensor(Xc, dtype=torch.float64)
    yt = torch.as_tensor(yc, dtype=torch.long)
    eps = torch.as_tensor(e, dtype=torch.float64)[:, None]
    delta = _random_ball(tuple(x0.shape), norm, eps, gen, torch.float64) if random_start else torch.zeros_like(x0)
    out = x0.clone()
    done = torch.zeros(x0.shape[0], dtype=torch.bool)
    for _ in range(steps + 1):
        delta.requires_grad_(True)
        z = model.torch_logits((x0 + delta).to(dt))
        m = _margin(z, yt)
        (g,) = torch.autograd.grad(m.sum(), delta)
        with torch.no_grad():
            adv = (z.argmax(dim=1) != yt) & ~done
            out[adv] = (x0 + delta)[adv]
            done |= adv
            if bool(done.all()):
                break
            if norm == "linf":
                delta = (delta - rel * eps * g.sign()).clamp(-eps, eps)
            else:
                delta = delta - rel * eps * g / g.norm(dim=1, keepdim=True).clamp_min(1e-30)
                delta = delta * (eps / delta.norm(dim=1, keepdim=True).clamp_min(1e-30)).clamp(max=1.0)
    out[~done] = (x0 + delta.detach())[~done]
    return out.numpy()


class PaperPGD(_TorchAttack, FixedEpsAttack):
    """The seed paper's evaluation protocol (methods spec 5.2), reproduced exactly.

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

    def __init__(self, steps: int = 20, rel_stepsize: float = 0.1, seed: int = 0, batch_size: int = 4096):
        self.steps = _int_arg(steps, "paper-pgd: steps")
        self.rel_stepsize = _pos_arg(rel_stepsize, "paper-pgd: rel_stepsize")
        self.seed = int(seed)
        self.batch_size = _int_arg(batch_size, "paper-pgd: batch_size")

    def run(self, model: Model, X: np.ndarray, y: np.ndarray, norm: str, eps: Any) -> AttackResult:
        t0 = time.perf_counter()
        model, X, y, norm = self._prepare(model, X, y, norm)
        e = eps_vector(eps, X.shape[0])
        cand = X.copy()
        with frozen_parameters(model):
            for k, ch in enumerate(chunks(np.arange(X.shape[0]), self.batch_size)):
                cand[ch] = self._iterate(model, X[ch], y[ch], e[ch], derive_seed(self.seed, k))
        cand = project_to_ball(X, cand, norm, e)  # float32 iterate -> float64 ball around the float64 X
        wrong = model.predict(cand) != y if X.shape[0] else np.zeros(0, dtype=bool)
        res = finalize(model, X, y, cand, norm, self.name, eps=e, t0=t0, claimed=wrong,
                       queries=np.full(X.shape[0], self.steps + 1, dtype=np.int64))
        if X.shape[0]:
            res.flags["paper_robust_accuracy"] = float(np.mean(~wrong))
        return res

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
            out = model.torch_logits(x).to(torch.float32)
            (g,) = torch.autograd.grad(mse(out, target), x)
            with torch.no_grad():
                x = x + self.rel_stepsize * eps * g.sign()
                x = x0 + torch.clamp(x - x0, -eps, eps)
        return x.detach().double().numpy()


# ----------------------------------------------------------------------------------------
# Minimal attacks
# ----------------------------------------------------------------------------------------
class FAB(_TorchAttack, MinimalAttack):
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
                 box_radius: float | None = None, refine: bool = True):
        self.steps = _int_arg(steps, "fab: steps")
        self.restarts = _int_arg(restarts, "fab: restarts")
        self.alpha_max = _pos_arg(alpha_max, "fab: alpha_max")
        self.eta = _pos_arg(eta, "fab: eta")
        self.beta = _pos_arg(beta, "fab: beta")
        self.targeted = targeted
        self.n_target_classes = None if n_target_classes is None else _int_arg(n_target_classes, "fab: n_target_classes")
        self.seed = int(seed)
        self.batch_size = _int_arg(batch_size, "fab: batch_size")
        self.box_radius = None if box_radius is None else _pos_arg(box_radius, "fab: box_radius")
        self.refine = bool(refine)

    @classmethod
    def available(cls) -> bool:
        return torchattacks_available()

    def run(self, model: Model, X: np.ndarray, y: np.ndarray, norm: str) -> AttackResult:
        t0 = time.perf_counter()
        model, X, y, norm = self._prepare(model, X, y, norm)
        ta = import_torchattacks()
        keeper = Keeper(model, X, y, norm)
        n_cls = int(model.n_classes)
        targeted = (n_cls > 10) if self.targeted is None else bool(self.targeted)
        n_targets = min(self.n_target_classes or 9, n_cls - 1) if targeted else 0
        queries = np.zeros(X.shape[0], dtype=np.int64)
        todo = self._todo(model, X, y)
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
                atk = ta.FAB(mod, norm={"linf": "Linf", "l2": "L2", "l1": "L1"}[norm], eps=1.0, steps=self.steps, n_restarts=1,
                             alpha_max=self.alpha_max, eta=self.eta, beta=self.beta, seed=self.seed,
                             multi_targeted=targeted, n_classes=n_cls)
                # random restarts start within half the best radius found so far (FAB's rule; its eps
                # caps that radius, so eps is set per point); points without one use half the batch's
                # median distance to its centroid
                spread = float(np.median(lp_norms(X[rows] - X[rows].mean(axis=0), norm))) if rows.size > 1 else 1.0
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
        return _finish(model, X, y, keeper, norm, self.name, t0, queries)


def _finish(model: Model, X: np.ndarray, y: np.ndarray, keeper: Keeper, norm: str, name: str, t0: float,
            queries: np.ndarray | None) -> AttackResult:
    """finalize the kept candidates (verified again) and count the claims that never verified."""
    res = finalize(model, X, y, keeper.best, norm, name, t0=t0, queries=queries)
    res.rejected += keeper.rejected()
    return res


class DeepFool(_TorchAttack, MinimalAttack):
    """DeepFool (Moosavi-Dezfooli et al. 2016) via torchattacks, minimal l2.

    The 2 % overshoot is removed afterwards by bisection along each perturbation's ray, so the
    distance is the boundary crossing in DeepFool's direction.
    """

    name = "deepfool"
    norms = ("l2",)

    def __init__(self, steps: int = 50, overshoot: float = 0.02, batch_size: int = 1024, box_radius: float | None = None,
                 refine: bool = True):
        self.steps = _int_arg(steps, "deepfool: steps")
        self.overshoot = _pos_arg(overshoot, "deepfool: overshoot")
        self.batch_size = _int_arg(batch_size, "deepfool: batch_size")
        self.box_radius = None if box_radius is None else _pos_arg(box_radius, "deepfool: box_radius")
        self.refine = bool(refine)

    @classmethod
    def available(cls) -> bool:
        return torchattacks_available()

    def run(self, model: Model, X: np.ndarray, y: np.ndarray, norm: str) -> AttackResult:
        t0 = time.perf_counter()
        model, X, y, norm = self._prepare(model, X, y, norm)
        ta = import_torchattacks()
        keeper = Keeper(model, X, y, norm)
        queries = np.zeros(X.shape[0], dtype=np.int64)
        todo = self._todo(model, X, y)
        with frozen_parameters(model):
            for ch in chunks(todo, self.batch_size):
                box = BoxMap.for_minimal(X[ch], self.box_radius)
                mod = box.module(model, layout="flat")
                atk = ta.DeepFool(mod, steps=self.steps, overshoot=self.overshoot)
                U = box.unit_tensor(X[ch])
                adv = atk(U, torch.as_tensor(y[ch]))
                claimed = (adv != U).any(dim=1).numpy()
                polish(model, keeper, ch, box.from_unit(adv), claimed, norm, refine=self.refine)
                queries[ch] += max(1, mod.calls // max(1, ch.size))
        return _finish(model, X, y, keeper, norm, self.name, t0, queries)


class CW(_TorchAttack, MinimalAttack):
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
                 batch_size: int = 1024, box_radius: float | None = None, refine: bool = True):
        self.steps = _int_arg(steps, "cw: steps")
        self.binary_steps = _int_arg(binary_steps, "cw: binary_steps")
        self.c_init = _pos_arg(c_init, "cw: c_init")
        self.lr = _pos_arg(lr, "cw: lr")
        self.seed = int(seed)
        self.batch_size = _int_arg(batch_size, "cw: batch_size")
        self.box_radius = None if box_radius is None else _pos_arg(box_radius, "cw: box_radius")
        self.refine = bool(refine)

    @classmethod
    def available(cls) -> bool:
        return torchattacks_available()

    def run(self, model: Model, X: np.ndarray, y: np.ndarray, norm: str) -> AttackResult:
        t0 = time.perf_counter()
        model, X, y, norm = self._prepare(model, X, y, norm)
        ta = import_torchattacks()
        keeper = Keeper(model, X, y, norm)
        queries = np.zeros(X.shape[0], dtype=np.int64)
        todo = self._todo(model, X, y)
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
        return _finish(model, X, y, keeper, norm, self.name, t0, queries)


def _lp(t: torch.Tensor, p: float) -> torch.Tensor:
    return t.norm(p=p, dim=1)


def project_l1_ball(delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row onto the l1 ball of radius eps (sort-based, exact)."""
    a = delta.abs()
    inside = a.sum(dim=1) <= eps
    if bool(inside.all()):
        return delta
    srt, _ = a.sort(dim=1, descending=True)
    cs = srt.cumsum(dim=1)
    k = torch.arange(1, a.shape[1] + 1, dtype=a.dtype)
    cond = srt - (cs - eps[:, None]) / k > 0
    rho = (cond * k).argmax(dim=1)  # last index where cond holds (cond is a prefix of Trues)
    theta = (cs.gather(1, rho[:, None])[:, 0] - eps) / (rho + 1).to(a.dtype)
    proj = delta.sign() * (a - theta[:, None]).clamp_min(0.0)
    return torch.where(inside[:, None], delta, proj)


def project_ball_t(delta: torch.Tensor, eps: torch.Tensor, norm: str) -> torch.Tensor:
    """Projection of rows onto the norm ball (eps per row, may be inf)."""
    fin = torch.isfinite(eps)
    if not bool(fin.any()):
        return delta
    e = torch.where(fin, eps, torch.ones_like(eps))
    if norm == "linf":
        out = torch.maximum(torch.minimum(delta, e[:, None]), -e[:, None])
    elif norm == "l2":
        n = _lp(delta, 2.0)
        out = delta * (e / n.clamp_min(1e-300)).clamp(max=1.0)[:, None]
    else:
        out = project_l1_ball(delta, e)
    return torch.where(fin[:, None], out, delta)


class FMN(_TorchAttack, MinimalAttack):
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

    def __init__(self, steps: int = 200, gamma: float = 0.1, rel_stepsizes: Sequence[float] = (1.0, 3.0, 10.0),
                 max_stepsize: float | None = None, min_stepsize_ratio: float = 0.01, n_target_classes: int = 3,
                 batch_size: int = 4096, refine: bool = True, seed: int = 0):
        self.steps = _int_arg(steps, "fmn: steps")
        self.gamma = _pos_arg(gamma, "fmn: gamma")
        if self.gamma >= 1:
            raise AttackError(f"fmn: gamma must be in (0, 1), got {gamma!r}")
        rel = [rel_stepsizes] if np.isscalar(rel_stepsizes) else list(rel_stepsizes)
        if not rel:
            raise AttackError("fmn: rel_stepsizes needs at least one value")
        self.rel_stepsizes = tuple(_pos_arg(r, "fmn: rel_stepsizes") for r in rel)
        self.max_stepsize = None if max_stepsize is None else _pos_arg(max_stepsize, "fmn: max_stepsize")
        self.min_stepsize_ratio = _pos_arg(min_stepsize_ratio, "fmn: min_stepsize_ratio")
        self.n_target_classes = _int_arg(n_target_classes, "fmn: n_target_classes", lo=0)
        self.batch_size = _int_arg(batch_size, "fmn: batch_size")
        self.refine = bool(refine)
        self.seed = int(seed)  # FMN is deterministic; kept for a uniform interface

    def run(self, model: Model, X: np.ndarray, y: np.ndarray, norm: str) -> AttackResult:
        t0 = time.perf_counter()
        model, X, y, norm = self._prepare(model, X, y, norm)
        keeper = Keeper(model, X, y, norm)
        queries = np.zeros(X.shape[0], dtype=np.int64)
        todo = self._todo(model, X, y)
        with frozen_parameters(model):
            rels = self.rel_stepsizes if self.max_stepsize is None else self.rel_stepsizes[:1]
            runs = [(r, None) for r in rels]
            # targeted runs toward the classes ranked 2nd, 3rd, ... at the clean point: the nearest
            # boundary is often not the runner-up's (the untargeted loss starts toward the runner-up)
            runs += [(rels[len(rels) // 2], k) for k in range(2, min(model.n_classes - 1, self.n_target_classes + 1) + 1)]
            for ch in chunks(todo, self.batch_size):
                for rel, rank in runs:
                    cand, found = self._attack(model, X[ch], y[ch], norm, rel, rank)
                    polish(model, keeper, ch, cand, found, norm, refine=self.refine)
                    queries[ch] += self.steps + 2
        return _finish(model, X, y, keeper, norm, self.name, t0, queries)

    def _attack(self, model: Model, Xc: np.ndarray, yc: np.ndarray, norm: str, rel: float,
                target_rank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        dt = model_dtype(model)
        p, q = _P[norm], _DUAL[norm]
        x0 = torch.as_tensor(Xc, dtype=torch.float64)
        yt = torch.as_tensor(yc, dtype=torch.long)
        target = None
        if target_rank is not None:  # the class ranked target_rank-th (1 = runner-up) at the clean point
            with torch.no_grad():
                z0 = model.torch_logits(x0.to(dt)).scatter(1, yt[:, None], float("-inf"))
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
            z = model.torch_logits((x0 + delta).to(dt))
            if target is None:
                loss = _margin(z, yt).to(torch.float64)
            else:
                loss = (z.gather(1, yt[:, None]) - z.gather(1, target[:, None]))[:, 0].to(torch.float64)
            (g,) = torch.autograd.grad(loss.sum(), delta)
            with torch.no_grad():
                delta = delta.detach()
                is_adv = z.argmax(dim=1) != yt
                nrm = _lp(delta, p)
                better = is_adv & (nrm < best_norm)
                best_norm = torch.where(better, nrm, best_norm)
                best_delta[better] = delta[better]
                adv_found |= is_adv
                if k == self.steps:
                    break
                cosk = 0.5 * (1 + math.cos(math.pi * k / self.steps))
                gamma_k = 0.001 + (self.gamma - 0.001) * cosk
                to_boundary = loss.abs() / _lp(g, q).clamp_min(1e-30)
                if alpha_max is None:
                    alpha_max = self._first_step(loss, g, norm, rel)
                # before the first success jump to the first-order boundary estimate, but always grow:
                # a ReLU net is exactly linear locally, so the estimate can land exactly on a tie
                # (margin 0, not adversarial) where it would otherwise stay forever
                eps = torch.where(is_adv, torch.minimum(eps * (1 - gamma_k), best_norm),
                                  torch.where(adv_found, eps * (1 + gamma_k),
                                              torch.maximum(nrm + to_boundary, nrm * (1 + gamma_k))))
                alpha = alpha_max * (self.min_stepsize_ratio + (1 - self.min_stepsize_ratio) * cosk)
                direction = g / _lp(g, 2.0).clamp_min(1e-30)[:, None]
                delta = project_ball_t(delta - alpha[:, None] * direction, eps, norm)
        cand = (x0 + best_delta).numpy()
        return cand, adv_found.numpy() & torch.isfinite(best_norm).numpy()

    def _first_step(self, loss: torch.Tensor, g: torch.Tensor, norm: str, rel: float) -> torch.Tensor:
        """Per-point largest step: the first-order distance to the boundary in the step's geometry."""
        if self.max_stepsize is not None:
            return torch.full_like(loss, self.max_stepsize)
        a = rel * loss.abs() / _lp(g, 2.0).clamp_min(1e-30)  # an l2 step of size a moves the margin by a*||g||_2
        ok = torch.isfinite(a) & (a > 0)
        fill = a[ok].median() if bool(ok.any()) else torch.tensor(1.0, dtype=a.dtype)
        a = torch.where(ok, a, fill)
        return a.clamp(min=fill * 1e-3)


__all__ = [
    "BoxMap", "BoxModule", "PGD", "PaperPGD", "FAB", "DeepFool", "CW", "FMN",
    "project_to_ball", "refine_along_ray", "push_over", "seeded", "frozen_parameters", "import_torchattacks",
    "torchattacks_available", "TORCHATTACKS_INSTALL", "eps_vector",
]
