"""Batched per-point input–output Jacobians J_x = ∂f/∂x (c × d) of differentiable models.

Every alignment and local-robustness metric is a function of (f(x), J_x), so this is the one
place that differentiates a model. The output space is the model's `torch_logits`: the logits of
an MLP (pre-softmax, where the network is piecewise affine and the offset b_x = f(x) − J_x x is
meaningful) and the raw kernel outputs K_M(x, X)A of RFM/RFAM (the quantity their AGOP and the
reference normal-alignment code differentiate; their `predict_proba` is only a softmax of it).

Jacobians are computed for a whole chunk of points at once with `torch.func.vmap` over
`jacrev` (c backward passes' worth of work, used when c <= d) or `jacfwd` (d forward passes,
used when d < c); models that expose an analytic batched `gradient(X) -> (n, c, d)` (RFM/RFAM)
use it instead. If a model cannot be vmapped (e.g. it calls `.item()` inside), the fallback is
one batched backward pass per output class, which is still exact for any model whose rows are
independent and never loops over points.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from ..errors import ModelError, first_line
from ..models.base import Model, check_features, wrap

if TYPE_CHECKING:
    from ..models.base import TorchLogits

log = logging.getLogger(__name__)

_CHUNK_ELEMS = 1 << 20  # Jacobian entries per chunk (8 MB in float64): bounded memory, large enough GEMMs
_MAX_CHUNK = 2048

Mode = Literal["auto", "rev", "fwd"]


@dataclass
class JacobianBatch:
    """Outputs f(x) (n, c) and Jacobians J_x (n, c, d) of a batch, plus the rows that are not finite.

    `nonfinite` holds the indices of the points whose output or Jacobian contains NaN/inf; those
    rows are kept as computed (never dropped or averaged away) so callers can report them.
    Unpacks as `outputs, jacobians = batch`.
    """

    outputs: np.ndarray
    jacobians: np.ndarray
    nonfinite: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    method: str = ""

    @property
    def n_nonfinite(self) -> int:
        return int(self.nonfinite.size)

    def __iter__(self) -> Iterator[np.ndarray]:
        yield self.outputs
        yield self.jacobians


def as_metric_model(model: Any) -> Model:
    """The Model for `model` (torch modules and other wrappable objects are wrapped)."""
    return model if isinstance(model, Model) else wrap(model)


def unsupported_reason(model: Model) -> str | None:
    """Why Jacobians are undefined for `model` (None when they are defined).

    Jacobians need differentiable outputs: `torch_logits`, or an analytic `gradient(X)` together
    with `decision_function` for the outputs. Tree ensembles are piecewise constant (J_x = 0 almost
    everywhere, undefined at splits) and black boxes expose no derivatives, so no number is given.
    """
    if _has_torch(model) or (callable(getattr(model, "gradient", None)) and callable(getattr(model, "decision_function", None))):
        return None
    if model.has("tree_ensemble"):
        return "no torch_logits: tree ensemble"
    return "no torch_logits: black box (predict_proba only)"


def require_differentiable(model: Model, metric: str) -> None:
    """Raise ModelError naming `metric` and the missing capability when Jacobians are undefined."""
    reason = unsupported_reason(model)
    if reason is not None:
        caps = ", ".join(sorted(model.capabilities))
        raise ModelError(
            f"{metric}: model {model.name!r} has no torch_logits capability (it has {caps}), so its Jacobian is undefined; "
            "use a differentiable model or pass on_unsupported='nan'"
        )


def _has_torch(model: Model) -> bool:
    return callable(getattr(model, "torch_logits", None))


def _torch_dtype(model: Model) -> Any:
    """The dtype the model computes in (TorchModel.torch_dtype, RFM's `dtype`), float64 otherwise."""
    import torch

    dt = getattr(model, "torch_dtype", None)
    if isinstance(dt, torch.dtype):
        return dt
    name = getattr(model, "dtype", None)
    if name in ("float32", "float64"):
        return getattr(torch, name)
    return torch.float64


def default_chunk_size(n_classes: int, n_features: int) -> int:
    """Points per chunk so one chunk's Jacobian stack stays near 2^20 entries (16..2048 points)."""
    return int(max(16, min(_MAX_CHUNK, _CHUNK_ELEMS // max(1, n_classes * n_features))))


def _check_chunk(chunk_size: int | None, c: int, d: int) -> int:
    if chunk_size is None:
        return default_chunk_size(c, d)
    if not isinstance(cast(object, chunk_size), (int, np.integer)) or chunk_size < 1:  # typed int; untyped callers may pass anything
        raise ModelError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return int(chunk_size)


def _pick_mode(mode: str, c: int, d: int) -> str:
    if mode == "auto":
        return "fwd" if d < c else "rev"
    if mode not in ("rev", "fwd"):
        raise ModelError(f"mode must be 'auto', 'rev' or 'fwd', got {mode!r}")
    return mode


def _vmap_chunk(model: TorchLogits, x: Any, mode: str) -> tuple[Any, Any]:
    """(outputs (m, c), Jacobians (m, c, d)) of one chunk by vmap over per-point jacrev/jacfwd."""
    from torch.func import jacfwd, jacrev, vmap

    def f(xi: Any) -> tuple[Any, Any]:
        out = model.torch_logits(xi.unsqueeze(0)).squeeze(0)
        return out, out

    jac = jacfwd(f, has_aux=True) if mode == "fwd" else jacrev(f, has_aux=True)
    J, out = vmap(jac)(x)
    return out, J


def _per_class_chunk(model: TorchLogits, x: Any) -> tuple[Any, Any]:
    """Fallback without vmap: one batched backward pass per output class (rows are independent)."""
    import torch

    xr = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        out = model.torch_logits(xr)
        c = out.shape[1]
        rows = [torch.autograd.grad(out[:, k].sum(), xr, retain_graph=k + 1 < c)[0] for k in range(c)]
    return out.detach(), torch.stack(rows, dim=1)


def _torch_jacobians(model: Model, X: np.ndarray, chunk: int, mode: str) -> tuple[np.ndarray, np.ndarray, str]:
    import torch

    n, d = X.shape
    c = model.n_classes
    dt = _torch_dtype(model)
    mode = _pick_mode(mode, c, d)
    outs = np.empty((n, c), dtype=np.float64)
    jacs = np.empty((n, c, d), dtype=np.float64)
    use_vmap = True
    method = f"vmap-jac{mode}"
    differentiable = cast("TorchLogits", model)  # callers have checked the capability (require_differentiable)
    module: Any = getattr(model, "module", None)
    was_training = bool(getattr(module, "training", False))
    if was_training:
        module.eval()
    try:
        for s in range(0, n, chunk):
            x = torch.as_tensor(X[s : s + chunk], dtype=dt)
            if use_vmap:
                try:
                    out, J = _vmap_chunk(differentiable, x, mode)
                except Exception as exc:  # noqa: BLE001 - any vmap incompatibility: fall back, still batched
                    log.info("%s: vmap Jacobian failed (%s); using one batched backward pass per class", model.name, first_line(exc))
                    use_vmap = False
                    method = "per-class-backward"
            if not use_vmap:
                out, J = _per_class_chunk(differentiable, x)
            if tuple(J.shape) != (x.shape[0], c, d):
                raise ModelError(f"{model.name}: torch_logits gave Jacobians of shape {tuple(J.shape)}, expected {(x.shape[0], c, d)}")
            outs[s : s + chunk] = out.detach().double().numpy()
            jacs[s : s + chunk] = J.detach().double().numpy()
    finally:
        if was_training:
            module.train()
    return outs, jacs, method


def _analytic_jacobians(model: Model, X: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray, str]:
    """Outputs and the model's own batched analytic gradient (RFM/RFAM).

    The outputs come from `decision_function` when the model has one (it must return the same raw
    outputs `gradient` differentiates, as RFM's does), else from `torch_logits` without autograd.
    """
    import torch

    n, d = X.shape
    c = model.n_classes
    gradient: Any = getattr(model, "gradient", None)  # callers have checked it is callable
    J = np.asarray(gradient(X), dtype=np.float64)
    if J.shape != (n, c, d):
        raise ModelError(f"{model.name}: gradient(X) returned shape {J.shape}, expected {(n, c, d)} (n, n_classes, n_features)")
    decision_function: Any = getattr(model, "decision_function", None)
    if callable(decision_function):  # the raw outputs `gradient` differentiates, no autograd graph
        outs = np.asarray(decision_function(X), dtype=np.float64)
    else:
        dt = _torch_dtype(model)
        outs = np.empty((n, c), dtype=np.float64)
        with torch.no_grad():
            for s in range(0, n, chunk):
                outs[s : s + chunk] = cast("TorchLogits", model).torch_logits(torch.as_tensor(X[s : s + chunk], dtype=dt)).double().numpy()
    if outs.shape != (n, c):
        raise ModelError(f"{model.name}: outputs have shape {outs.shape}, expected {(n, c)}")
    return outs, J, "analytic-gradient"


def nonfinite_rows(outputs: np.ndarray, jacobians: np.ndarray) -> np.ndarray:
    """Indices of points whose outputs or Jacobian contain NaN/inf."""
    bad = ~np.isfinite(jacobians).all(axis=(1, 2)) | ~np.isfinite(outputs).all(axis=1)
    return np.flatnonzero(bad)


def outputs_and_jacobians(model: Any, X: Any, chunk_size: int | None = None, mode: Mode = "auto",
                          analytic: bool = True) -> JacobianBatch:
    """Outputs f(x) (n, c) and Jacobians J_x (n, c, d), float64, for every row of X at once.

    Uses the model's analytic `gradient(X)` when it has one (and `analytic=True`), else vmap of
    jacrev (c <= d) or jacfwd (d < c) over `torch_logits`, `chunk_size` points at a time.
    Non-finite rows are logged (count and first indices) and listed in `.nonfinite`.
    Raises ModelError for models without derivatives or X of the wrong width.
    """
    model = as_metric_model(model)
    require_differentiable(model, "jacobians")
    X = check_features(X, model.n_features, who=model.name)
    n, d = X.shape
    c = model.n_classes
    chunk = _check_chunk(chunk_size, c, d)
    if n == 0:
        return JacobianBatch(np.zeros((0, c)), np.zeros((0, c, d)), np.zeros(0, dtype=np.int64), "empty")
    if analytic and callable(getattr(model, "gradient", None)):
        outs, J, method = _analytic_jacobians(model, X, chunk)
    else:
        outs, J, method = _torch_jacobians(model, X, chunk, mode)
    bad = nonfinite_rows(outs, J)
    if bad.size:
        log.warning("%s: %d of %d points have non-finite outputs or Jacobians (rows %s%s)", model.name, bad.size, n,
                    ", ".join(map(str, bad[:10])), ", ..." if bad.size > 10 else "")
    return JacobianBatch(outs, J, bad, method)


def jacobians(model: Any, X: Any, chunk_size: int | None = None, mode: Mode = "auto", analytic: bool = True) -> np.ndarray:
    """Per-point Jacobians J_x (n, c, d) of the model's differentiable outputs; see `outputs_and_jacobians`."""
    return outputs_and_jacobians(model, X, chunk_size=chunk_size, mode=mode, analytic=analytic).jacobians


__all__ = [
    "JacobianBatch",
    "default_chunk_size",
    "jacobians",
    "nonfinite_rows",
    "outputs_and_jacobians",
    "require_differentiable",
    "unsupported_reason",
]
