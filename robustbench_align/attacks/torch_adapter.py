"""What the gradient attacks share: the unit-box adapter for image libraries, seeding, torch-side projections.

torchattacks and pyautoattack were written for images: every iterate is clamped to [0, 1] and some
attacks want NCHW tensors. Tabular features are neither, so `BoxMap` maps a box that holds every
point's threat ball affinely onto the unit cube, x = lo + scale * u, with ONE scale shared by all
features of a row (then ||u - u'||_p * scale == ||x - x'||_p for every p, and the library's eps is
simply eps / scale), and `BoxModule` shows the model to the library in that unit space. Because the
box contains every ball, the library's clamp never binds. Candidates come back through the inverse
map and are projected onto the x-space ball in float64 (the float32 round trip can overshoot by
about 1e-7 * scale) before the base class verifies them with the model's own `predict`.

Also here: the lazy torchattacks import with its install line, `seeded` (library RNG calls inside a
forked torch RNG state), `frozen_parameters`, the logit margin z_y - max_{j!=y} z_j (the loss of
Carlini & Wagner 2017 and of FMN, Pintor et al. 2021), the row-wise ball projections in torch
(the l1 one after Duchi et al. 2008), and `TorchAttack`, the base of every attack that needs
`torch_logits`.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any, ClassVar, cast

import numpy as np
import torch
import torch.nn as nn

from ..errors import AttackError
from ..models.base import Model, TorchLogits
from .base import Attack, Norm, backend_available, clean_correct_rows, import_backend
from .candidates import Keeper
from .params import int_arg, pos_arg

TORCHATTACKS_INSTALL = "pip install --no-deps torchattacks==3.5.1"
TORCHATTACKS_HINT = f"install it with `{TORCHATTACKS_INSTALL}` (--no-deps keeps the installed torch)"
LAYOUTS = ("flat", "nchw", "nhwc", "square")


# ----------------------------------------------------------------------------------------
# The optional backend, seeds, parameters, dtypes
# ----------------------------------------------------------------------------------------
def torchattacks_available() -> bool:
    """True when torchattacks can be imported here."""
    return backend_available("torchattacks")


def import_torchattacks() -> Any:
    """Import torchattacks lazily; AttackError with the install line when it is missing."""
    return import_backend("torchattacks", TORCHATTACKS_HINT)


def library_norm_name(norm: Norm) -> str:
    """The norm as torchattacks' FAB and pyautoattack spell it ("Linf", "L2", "L1")."""
    return {"linf": "Linf", "l2": "L2", "l1": "L1"}[norm.name]


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
    mods: list[nn.Module] = [model] if isinstance(model, nn.Module) else []
    mods += [v for v in vars(model).values() if isinstance(v, nn.Module)] if hasattr(model, "__dict__") else []
    params: list[nn.Parameter] = []
    seen: set[int] = set()
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


def logits(model: Model, x: torch.Tensor) -> torch.Tensor:
    """`model.torch_logits(x)`: the differentiable outputs that `TorchAttack` requires."""
    return cast(TorchLogits, model).torch_logits(x)


def reachable_radius(model: Model) -> float:
    """The largest perturbation radius worth searching: sqrt of the largest float32 (or model dtype) number.

    About 1.8e19 (256 for float16 models). Beyond it the model's own arithmetic overflows (inputs or
    logits become inf, then NaN; models that declare no dtype may compute in float32 internally), so
    a fixed-eps attack given a larger eps searches the ball of this radius instead: a sub-ball of the
    threat ball, so every adversarial it finds is within eps. Ordinary eps are far below it.
    """
    dt = model_dtype(model)
    top = float(torch.finfo(torch.float32).max)
    if dt.is_floating_point:
        top = min(top, float(torch.finfo(dt).max))
    return math.sqrt(top)


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

    def __init__(self, lo: np.ndarray, scale: Any, per_row: bool = False) -> None:
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
        out: np.ndarray = self.lo + self.scale[:, None]
        return out

    @classmethod
    def for_ball(cls, X: np.ndarray, norm: Norm | str, eps: float, margin: float | None = None) -> BoxMap:
        """A batch box holding every eps-ball around the rows of X, with a common side length.

        Per feature the box covers [min x - r, max x + r] with r = eps + margin (margin 0.1 * eps
        by default); the l2 and l1 balls of radius eps lie inside their linf ball, so the same box
        serves every norm. The side is the widest feature's extent, centred on each feature.
        """
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        eps = float(eps)
        Norm.of(norm)  # AttackError for an unknown norm
        if not (math.isfinite(eps) and eps > 0):
            raise AttackError(f"BoxMap.for_ball: need eps > 0, got {eps!r}")
        r = eps + (0.1 * eps if margin is None else float(margin))
        lo_f = X.min(axis=0) - r
        hi_f = X.max(axis=0) + r
        side = float(np.max(hi_f - lo_f))
        centre = 0.5 * (lo_f + hi_f)
        return cls((centre - 0.5 * side)[None, :], side)

    @classmethod
    def per_row_ball(cls, X: np.ndarray, eps: Any, margin: float = 0.1) -> BoxMap:
        """One box per row: the cube of half-side eps_i * (1 + margin) centred on x_i.

        Every row then has the same unit-space radius 1 / (2 (1 + margin)) and the clean point sits
        at u = 0.5, so the float32 resolution is relative to each row's own eps.
        """
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        e = np.broadcast_to(np.asarray(eps, dtype=np.float64), (X.shape[0],))
        r = e * (1.0 + float(margin))
        return cls(X - r[:, None], 2.0 * r, per_row=True)

    @staticmethod
    def minimal_radius(X: np.ndarray) -> float:
        """The default linf room of `for_minimal`: max(widest feature spread of the batch, 1, 0.1 * max |x|)."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        spread = float(np.max(X.max(axis=0) - X.min(axis=0))) if X.shape[0] else 0.0
        return max(spread, 1.0, 0.1 * float(np.max(np.abs(X))) if X.size else 0.0)

    @classmethod
    def for_minimal(cls, X: np.ndarray, radius: float | None = None) -> BoxMap:
        """A batch box for minimal attacks: linf room `radius` around every row.

        By default `minimal_radius(X)`, which holds any perturbation smaller than the data's own
        extent. A boundary farther away than that lies outside the box; attacks that clamp to the
        box (DeepFool) retry such points in a larger one (see `on_face`).
        """
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if radius is None:
            radius = cls.minimal_radius(X)
        return cls.for_ball(X, "linf", float(radius), margin=0.0)

    def unit_eps(self, eps: Any) -> np.ndarray:
        """eps in unit space, per map row: eps / scale."""
        out: np.ndarray = np.asarray(eps, dtype=np.float64) / self.scale
        return out

    def to_unit(self, X: np.ndarray) -> np.ndarray:
        """u = (x - lo) / scale, float64."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        self._check_rows(X.shape[0])
        out: np.ndarray = (X - self.lo) / self.scale[:, None]
        return out

    def from_unit(self, U: Any) -> np.ndarray:
        """x = lo + scale * u in float64 (U may be a tensor of any layout with n rows)."""
        if isinstance(U, torch.Tensor):
            U = U.detach().cpu().double().numpy()
        U = np.asarray(U, dtype=np.float64).reshape(np.shape(U)[0], -1)[:, :self.d]  # drops square-layout padding
        self._check_rows(U.shape[0])
        out: np.ndarray = self.lo + self.scale[:, None] * U
        return out

    @staticmethod
    def on_face(U: torch.Tensor) -> np.ndarray:
        """Rows of a unit-space batch with a coordinate on the cube's surface (0 or 1): where a library's clamp bound."""
        flat = U.detach().reshape(U.shape[0], -1)
        return ((flat <= 0) | (flat >= 1)).any(dim=1).cpu().numpy()

    def unit_tensor(self, X: np.ndarray, layout: str = "flat", dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The rows of X in unit space as a tensor in the given layout (see `to_layout`)."""
        return to_layout(torch.as_tensor(self.to_unit(X), dtype=dtype), layout)

    def module(self, model: Model, layout: str = "flat", logit_scale: Any = None) -> BoxModule:
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
    return max(5, math.ceil(math.sqrt(d)))


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

    _model: Model
    lo: torch.Tensor
    scale: torch.Tensor
    logit_scale: torch.Tensor | None

    def __init__(self, model: Model, box: BoxMap, layout: str = "flat", logit_scale: Any = None) -> None:
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
        z = logits(self._model, x.to(self._dtype))
        if self.logit_scale is not None:
            if n != self.logit_scale.shape[0]:
                raise AttackError(f"per-row logit scales for {self.logit_scale.shape[0]} rows got a batch of {n}")
            z = z * self.logit_scale.to(z.dtype)
        self.calls += 1
        self.rows += n
        return z.to(u.dtype) if u.is_floating_point() else z


# ----------------------------------------------------------------------------------------
# Losses and projections in torch
# ----------------------------------------------------------------------------------------
def logit_margin(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """z_y - max_{j != y} z_j per row (negative iff another class scores higher)."""
    zy = z.gather(1, y[:, None])[:, 0]
    other = z.scatter(1, y[:, None], float("-inf")).max(dim=1).values
    return zy - other


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


def project_ball_t(delta: torch.Tensor, eps: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Projection of rows onto the norm ball (eps per row, may be inf): clip, rescale or the l1 projection."""
    fin = torch.isfinite(eps)
    if not bool(fin.any()):
        return delta
    e = torch.where(fin, eps, torch.ones_like(eps))
    if norm.p == math.inf:
        out = torch.maximum(torch.minimum(delta, e[:, None]), -e[:, None])
    elif norm.p == 2:
        n = delta.norm(p=2.0, dim=1)
        out = delta * (e / n.clamp_min(1e-300)).clamp(max=1.0)[:, None]
    else:
        out = project_l1_ball(delta, e)
    return torch.where(fin[:, None], out, delta)


# ----------------------------------------------------------------------------------------
# The attack bases
# ----------------------------------------------------------------------------------------
class TorchAttack(Attack):
    """Base of the attacks that differentiate the model: they need the `torch_logits` capability.

    Combine with the kind of attack, e.g. `class PGD(TorchAttack, FixedEpsAttack)`.
    """

    requires: frozenset[str] = frozenset({"torch_logits"})


class TorchattacksAttack(TorchAttack):
    """A torch attack that runs through torchattacks: available only where torchattacks is installed."""

    install_hint: ClassVar[str] = TORCHATTACKS_HINT

    @classmethod
    def available(cls) -> bool:
        return torchattacks_available()


class BoxedMinimalAttack(TorchattacksAttack):
    """A minimal torchattacks attack run batch by batch through a unit box (FAB, DeepFool, CW).

    Shares the batch size, the box radius (None: `BoxMap.for_minimal`'s data-sized box) and the ray
    refinement switch, and the start of every run: the library, a `Keeper` for the per-point best
    candidate, per-point query counters and the clean-correct rows to attack.
    """

    batch_size: int = 1024
    box_radius: float | None = None
    refine: bool = True

    def _box_options(self, batch_size: int, box_radius: float | None, refine: bool) -> None:
        self.batch_size = int_arg(batch_size, f"{self.name}: batch_size")
        self.box_radius = None if box_radius is None else pos_arg(box_radius, f"{self.name}: box_radius")
        self.refine = bool(refine)

    def _start(self, model: Model, X: np.ndarray, y: np.ndarray, norm: Norm) -> tuple[Any, Keeper, np.ndarray, np.ndarray]:
        """(torchattacks, keeper, queries, rows to attack) for a run."""
        return import_torchattacks(), Keeper(model, X, y, norm), np.zeros(X.shape[0], dtype=np.int64), clean_correct_rows(model, X, y)


__all__ = [
    "LAYOUTS",
    "TORCHATTACKS_HINT",
    "TORCHATTACKS_INSTALL",
    "BoxMap",
    "BoxModule",
    "BoxedMinimalAttack",
    "TorchAttack",
    "TorchattacksAttack",
    "frozen_parameters",
    "import_torchattacks",
    "library_norm_name",
    "logit_margin",
    "logits",
    "model_dtype",
    "project_ball_t",
    "project_l1_ball",
    "reachable_radius",
    "seeded",
    "square_side",
    "to_layout",
    "torchattacks_available",
]
