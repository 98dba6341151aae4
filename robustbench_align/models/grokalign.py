"""GrokAlign: the MLP trained with a Jacobian-norm (and offset) regulariser (Walker et al., GrokAlign, arXiv 2506.12284).

    L = task_loss + λ · ( E_x ‖J_x‖_F + E_x ‖b_x‖₂² )       (offset=True: Walker et al., arXiv 2605.08464)
    L = task_loss + λ ·   E_x ‖J_x‖_F                        (offset=False, GrokAlign v1)

J_x = ∂f/∂x is the logits' input Jacobian and b_x = f(x) − J_x x the offset of the local affine
form f(x) = J_x x + b_x. ‖J_x‖_F is estimated per sample with one Hutchinson projection: draw
v ~ N(0, I_k), normalise it to ‖v‖ = 1, and use sqrt(max(k‖J_xᵀv‖², 1e-8)); because
E[vvᵀ] = I/k, k‖J_xᵀv‖² is unbiased for ‖J_x‖_F². J_xᵀv comes from reverse mode with
create_graph=True and J_x x from forward mode (`torch.func.jvp`), so both terms are differentiable
with respect to the parameters. The forward-mode pass also yields f(x), so the regularised step
needs no separate forward pass.

The Hutchinson probes are drawn from their own local generator, so with λ = 0 a GrokAlignMLP
follows exactly the trajectory (initialisation, batch order, updates) of an MLP with the same
parameters; the regulariser terms are then only measured, for `history_`.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch

from ..errors import ModelError
from .constraints import Boolean, Constraint, Real
from .mlp import MLP, task_loss

log = logging.getLogger(__name__)

HUTCHINSON_FLOOR = 1e-8  # the max(·, 1e-8) under the square root of the estimator

Module = Callable[[torch.Tensor], torch.Tensor]


def _input_leaf(x: torch.Tensor) -> torch.Tensor:
    """x itself when it already tracks gradients, else a detached leaf that does."""
    if not isinstance(x, torch.Tensor):
        raise ModelError(f"expected a torch.Tensor input, got {type(x).__name__}")
    if x.ndim != 2:
        raise ModelError(f"expected inputs of shape (n, d), got {tuple(x.shape)}")
    return x if x.requires_grad else x.detach().requires_grad_(True)


def hutchinson_sq_from(logits: torch.Tensor, x: torch.Tensor, generator: torch.Generator | None = None, *, create_graph: bool = False) -> torch.Tensor:
    """Per-sample k‖J_xᵀv‖² for already computed `logits` = f(x) (x must require grad), shape (n,).

    One normalised Gaussian probe v per sample; unbiased for ‖J_x‖_F².
    """
    n, k = logits.shape
    v = torch.randn(n, k, generator=generator, dtype=logits.dtype, device=logits.device)
    v = v / v.norm(dim=1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    (jtv,) = torch.autograd.grad(logits, x, grad_outputs=v, create_graph=create_graph, retain_graph=True)
    return k * (jtv * jtv).sum(dim=1)


def hutchinson_frobenius(module: Module, x: torch.Tensor, generator: torch.Generator | None = None, *, create_graph: bool = False) -> torch.Tensor:
    """One-projection Hutchinson estimate of ‖J_x‖_F per sample: sqrt(max(k‖J_xᵀv‖², 1e-8)), shape (n,).

    `module` maps (n, d) inputs to (n, k) outputs row by row (an nn.Module or `model.torch_logits`).
    Pass `create_graph=True` to differentiate the estimate with respect to the parameters.
    """
    xi = _input_leaf(x)
    with torch.enable_grad():
        logits = module(xi)
        sq = hutchinson_sq_from(logits, xi, generator, create_graph=create_graph)
    return torch.sqrt(sq.clamp_min(HUTCHINSON_FLOOR))


def _require_matrix(x: object) -> None:
    """ModelError unless x is a 2-D torch.Tensor (callers may pass anything at run time)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        raise ModelError(f"expected a torch.Tensor of shape (n, d), got {getattr(x, 'shape', type(x).__name__)}")


def _jvp(module: Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x), J_x x) by forward mode (`torch.func.jvp` with tangent x)."""
    res = torch.func.jvp(module, (x,), (x.detach(),))
    return res[0], res[1]


def jacobians(module: Module, x: torch.Tensor) -> torch.Tensor:
    """Exact per-sample input Jacobians J_x, shape (n, k, d), by vmap(jacrev)."""
    _require_matrix(x)

    def one(z: torch.Tensor) -> torch.Tensor:
        return module(z.unsqueeze(0)).squeeze(0)

    J: torch.Tensor = torch.func.vmap(torch.func.jacrev(one))(x.detach())
    return J


def exact_frobenius(module: Module, x: torch.Tensor) -> torch.Tensor:
    """Exact ‖J_x‖_F per sample, shape (n,)."""
    J = jacobians(module, x)
    norms: torch.Tensor = J.flatten(1).norm(dim=1)
    return norms


def output_and_jvp(module: Module, x: torch.Tensor, method: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(f(x), J_x x), both differentiable w.r.t. x and the parameters.

    method="forward" uses forward mode (`torch.func.jvp`, one pass); "double-backward" uses
    `torch.autograd.functional.jvp(create_graph=True)`; "auto" tries forward mode and falls back
    for modules whose operations have no forward-mode rule.
    """
    if method not in ("auto", "forward", "double-backward"):
        raise ModelError(f"output_and_jvp: method must be 'auto', 'forward' or 'double-backward', got {method!r}")
    if method != "double-backward":
        try:
            return _jvp(module, x)
        except (RuntimeError, NotImplementedError) as exc:
            if method == "forward":
                raise
            log.debug("forward-mode jvp unavailable (%s); using the double-backward jvp", exc)
    with torch.enable_grad():
        xi = _input_leaf(x)
        out, jx = torch.autograd.functional.jvp(module, xi, x.detach(), create_graph=True)  # type: ignore[no-untyped-call]
    return out, jx


def offset(module: Module, x: torch.Tensor) -> torch.Tensor:
    """The offset b_x = f(x) − J_x x of the local affine form f(x) = J_x x + b_x, shape (n, k)."""
    _require_matrix(x)
    out, jx = output_and_jvp(module, x)
    return out - jx


def grokalign_loss(
    module: Module,
    xb: torch.Tensor,
    yb: torch.Tensor,
    probe: torch.Generator | None = None,
    *,
    lam: float,
    offset: bool = True,
    loss: str = "ce",
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GrokAlign objective on one batch, task + lam·(E‖J_x‖_F [+ E‖b_x‖² when offset]), and its named terms.

    `module` maps the (n, d) batch `xb` to (n, k) logits; `yb` holds the integer labels and `loss` names the
    task loss ("ce" or "mse", see `mlp.task_loss`). E‖J_x‖_F is the one-probe Hutchinson estimate with the
    probes drawn from `probe`; b_x = f(x) − J_x x comes from forward mode. With lam <= 0 the loss is the task
    loss alone and the regulariser terms are only measured. Returns (loss, terms) with the terms "task", "jac"
    and, with offset, "offset" as floats (what `GrokAlignMLP.history_` records).
    """
    lam = float(lam)
    train_reg = lam > 0
    xg = xb.detach().requires_grad_(True)
    if offset and train_reg:
        logits, jx = output_and_jvp(module, xg)
    else:
        logits = module(xg)
    task = task_loss(logits, yb, loss)
    sq = hutchinson_sq_from(logits, xg, probe, create_graph=train_reg)
    jac = torch.sqrt(sq.clamp_min(HUTCHINSON_FLOOR)).mean()
    terms = {"task": float(task.detach()), "jac": float(jac.detach())}
    reg = jac
    if offset:
        if train_reg:
            off = ((logits - jx) ** 2).sum(dim=1).mean()
        else:
            with torch.no_grad():
                out, jx0 = _jvp(module, xb.detach())
                off = ((out - jx0) ** 2).sum(dim=1).mean()
        terms["offset"] = float(off.detach())
        reg = reg + off
    total = task + lam * reg if train_reg else task
    return total, terms


class GrokAlignMLP(MLP):
    """MLP trained with the GrokAlign regulariser: task + lam·(E‖J_x‖_F [+ E‖b_x‖² when offset]).

    `history_` holds per epoch the total `loss`, the `task` loss, the Hutchinson estimate `jac` of
    E‖J_x‖_F and, with offset=True, `offset` = E‖b_x‖² (batch-size weighted means over the epoch).
    """

    name = "mlp-grokalign"

    _param_constraints: ClassVar[dict[str, Constraint]] = {
        **MLP._param_constraints,
        "lam": Real(0, noun="a finite number"),
        "offset": Boolean(text="True (Jacobian + offset penalty) or False (Jacobian only, v1)"),
    }

    def __init__(
        self,
        hidden: Sequence[int] = (200, 200),
        activation: str = "relu",
        bias: bool = True,
        init_scale: float = 1.0,
        optimizer: str = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        epochs: int = 100,
        batch_size: int | None = 128,
        loss: str = "ce",
        dtype: str = "float32",
        early_stopping: bool = False,
        validation_fraction: float = 0.1,
        patience: int = 20,
        random_state: int | None = 0,
        lam: float = 0.1,
        offset: bool = True,
    ):
        super().__init__(
            hidden=hidden, activation=activation, bias=bias, init_scale=init_scale, optimizer=optimizer, lr=lr,
            weight_decay=weight_decay, momentum=momentum, epochs=epochs, batch_size=batch_size, loss=loss, dtype=dtype,
            early_stopping=early_stopping, validation_fraction=validation_fraction, patience=patience, random_state=random_state,
        )
        self.lam = lam
        self.offset = offset

    def _batch_loss(self, module: Any, xb: torch.Tensor, yb: torch.Tensor, probe: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """`grokalign_loss` with this estimator's lam, offset and task loss; with lam = 0 the terms are measured only."""
        return grokalign_loss(module, xb, yb, probe, lam=self.lam, offset=self.offset, loss=self.loss)


__all__ = [
    "GrokAlignMLP", "exact_frobenius", "grokalign_loss", "hutchinson_frobenius", "hutchinson_sq_from", "jacobians", "offset", "output_and_jvp",
]
