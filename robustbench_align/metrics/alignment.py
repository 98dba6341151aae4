"""Per-point Jacobian-alignment metrics: normal alignment (arXiv 2605.08464), centroid alignment, effective rank.

All metrics are functions of the point x, the output f(x) and the Jacobian J_x (c × d) of the
model's differentiable outputs: the logits of an MLP (where the network is piecewise affine, so
the local affine form f(z) = J_x z + b_x holds and the offset is meaningful) and the raw kernel
outputs of RFM/RFAM (the predictor the reference code differentiates for its normal-alignment
and effective-rank logs; `predict_proba` is only a softmax of it). See `metrics.jacobian`.

Columns (one row per point):
- normal_alignment = |cos(v₁, x)|, v₁ the top right singular vector of J_x (1 iff J_x = a xᵀ);
- centroid_alignment = ⟨c, x⟩ / max(‖c‖‖x‖, 1e-8) with the centroid c(x) = J_xᵀ1;
  centroid_norm = ‖c‖ and centroid_inner = ⟨c, x⟩;
- effective_rank = (Σσ)² / Σσ² ∈ [1, min(c, d)] and effective_rank_normalized = that ÷ min(c, d);
- pc1_explained_variance = σ₁² / Σσ²;
- offset_norm = ‖f(x) − J_x x‖₂ and jacobian_norm = ‖J_x‖_F; x_norm = ‖x‖₂.
Where J_x = 0 the singular-vector metrics (normal alignment, ranks, PC1) are undefined and NaN.
"""
from __future__ import annotations

import logging
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..errors import ModelError
from ..models.base import check_features
from .jacobian import JacobianBatch, as_metric_model, outputs_and_jacobians, require_differentiable, unsupported_reason
from .registry import ALIGNMENT_METRICS

log = logging.getLogger(__name__)

METRICS = ALIGNMENT_METRICS  # the frame's metric columns, declared in `metrics.registry`
_NEEDS_JACOBIAN = [m for m in METRICS if m != "x_norm"]  # NaN where the Jacobian is not finite
_COS_EPS = 1e-8


def _reference_point(X: np.ndarray, center: bool, reference_mean: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """The points the metrics are measured against: X itself, or X − mean (given mean or X's)."""
    if reference_mean is None and not center:
        return X, None
    if reference_mean is None:
        mu = X.mean(axis=0) if X.shape[0] else np.zeros(X.shape[1])
    else:
        mu = np.asarray(reference_mean, dtype=np.float64).reshape(-1)
        if mu.shape != (X.shape[1],) or not np.all(np.isfinite(mu)):
            raise ModelError(f"reference_mean must be a finite vector of length {X.shape[1]}, got shape {mu.shape}")
    return X - mu, mu


def singular_spectrum(J: Any, solver: Literal["gram", "svd"] = "gram") -> tuple[Any, Any]:
    """Singular values (n, min(c, d)), largest first, and top right singular vectors (n, d) of a (n, c, d) stack.

    "svd" runs torch.linalg.svd on the stack. "gram" (about twice as fast for small c) takes the
    eigenvectors of the smaller Gram matrix (J Jᵀ or JᵀJ) and re-measures each singular value as
    ‖Jᵀuᵢ‖ (or ‖J vᵢ‖) rather than √λᵢ, so small singular values keep rounding-level accuracy
    (a rank-one J gives an effective rank of 1 to ~1e-15); their order follows the eigenvalues, so
    near-equal values may swap at rounding level. Both return torch tensors in J's dtype.
    """
    import torch

    if solver == "svd":
        _, S, Vh = torch.linalg.svd(J, full_matrices=False)
        return S, Vh[:, 0, :]
    if solver != "gram":
        raise ModelError(f"solver must be 'gram' or 'svd', got {solver!r}")
    _, c, d = J.shape
    if c <= d:
        _, U = torch.linalg.eigh(torch.bmm(J, J.transpose(1, 2)))  # eigenvalues ascending
        W = torch.bmm(U.transpose(1, 2), J)  # (n, c, d): rows uᵢᵀJ = σᵢvᵢᵀ, smallest first
        S = torch.linalg.vector_norm(W, dim=2)
        v1 = W[:, -1, :] / S[:, -1:].clamp_min(torch.finfo(J.dtype).tiny)
    else:
        _, V = torch.linalg.eigh(torch.bmm(J.transpose(1, 2), J))
        S = torch.linalg.vector_norm(torch.bmm(J, V), dim=1)  # (n, d): ‖J vᵢ‖ = σᵢ, smallest first
        v1 = V[:, :, -1]
    return S.flip(1), v1


def alignment_from_jacobians(J: np.ndarray, X: np.ndarray, outputs: np.ndarray | None = None,
                             solver: Literal["gram", "svd"] = "gram") -> pd.DataFrame:
    """The metric frame from precomputed Jacobians (n, c, d), points (n, d) and outputs (n, c).

    X is the point the metrics are measured against (already centred if wanted); without
    outputs the offset_norm column is NaN. One batched singular decomposition of the whole stack
    in torch float64 (see `singular_spectrum`).
    """
    import torch

    J = np.asarray(J, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64)
    if J.ndim != 3:
        raise ModelError(f"Jacobians must be a (n, c, d) stack, got shape {J.shape}")
    n, c, d = J.shape
    if X.shape != (n, d):
        raise ModelError(f"points have shape {X.shape}, expected {(n, d)} to match the Jacobians")
    Jt = torch.from_numpy(J)
    finite = torch.isfinite(Jt.reshape(n, c * d)).all(dim=1)
    Jsafe = torch.where(finite[:, None, None], Jt, torch.zeros((), dtype=Jt.dtype))
    S, v1 = singular_spectrum(Jsafe, solver)
    S = S.numpy()
    v1 = v1.numpy()
    sum_s = S.sum(axis=1)
    sum_s2 = (S**2).sum(axis=1)
    x_norm = np.linalg.norm(X, axis=1)
    defined = finite.numpy() & (sum_s2 > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        normal = np.abs(np.einsum("nd,nd->n", v1, X)) / np.maximum(x_norm, _COS_EPS)
        eff = sum_s**2 / sum_s2
        pc1 = S[:, 0] ** 2 / sum_s2
    centroid = J.sum(axis=1)
    c_norm = np.linalg.norm(centroid, axis=1)
    c_inner = np.einsum("nd,nd->n", centroid, X)
    c_align = c_inner / np.maximum(c_norm * x_norm, _COS_EPS)
    out_ok = np.ones(n, dtype=bool)
    if outputs is None:
        offset_norm = np.full(n, np.nan)
    else:
        outputs = np.asarray(outputs, dtype=np.float64).reshape(n, c)
        out_ok = np.asarray(np.isfinite(outputs).all(axis=1))
        offset_norm = np.linalg.norm(outputs - np.einsum("ncd,nd->nc", J, X), axis=1)
    nan = np.full(n, np.nan)
    frame = pd.DataFrame({
        "normal_alignment": np.where(defined, normal, nan),
        "centroid_alignment": c_align,
        "centroid_norm": c_norm,
        "centroid_inner": c_inner,
        "effective_rank": np.where(defined, eff, nan),
        "effective_rank_normalized": np.where(defined, eff / min(c, d), nan),
        "pc1_explained_variance": np.where(defined, pc1, nan),
        "offset_norm": offset_norm,
        "jacobian_norm": np.sqrt(np.einsum("ncd,ncd->n", J, J)),
        "x_norm": x_norm,
    })
    reason = np.full(n, None, dtype=object)
    reason[~out_ok] = "non-finite output"
    reason[finite.numpy() & (sum_s2 == 0)] = "zero Jacobian: singular vectors undefined"
    reason[~finite.numpy()] = "non-finite Jacobian"
    bad_rows = ~finite.numpy()
    if bad_rows.any():
        frame.loc[bad_rows, _NEEDS_JACOBIAN] = np.nan
    frame["reason"] = reason
    return frame


def offsets(model: Any, X: Any, *, center: bool = False, reference_mean: Any = None, chunk_size: int | None = None) -> np.ndarray:
    """Offsets b_x = f(x) − J_x x (n, c) of the local affine form (x centred as in `alignment`)."""
    model = as_metric_model(model)
    require_differentiable(model, "offsets")
    X = check_features(X, model.n_features, who=model.name)
    f, J = outputs_and_jacobians(model, X, chunk_size=chunk_size)
    Xr, _ = _reference_point(X, center, reference_mean)
    return f - np.einsum("ncd,nd->nc", J, Xr)


def alignment_with_jacobians(
    model: Any,
    X: Any,
    *,
    center: bool = False,
    reference_mean: Any = None,
    chunk_size: int | None = None,
    on_unsupported: Literal["raise", "nan"] = "raise",
    solver: Literal["gram", "svd"] = "gram",
    metric: str = "alignment",
) -> tuple[pd.DataFrame, JacobianBatch | None]:
    """`alignment()` plus the Jacobian batch it was computed from (None for unsupported models).

    Lets callers derive further per-point quantities (e.g. local-linear radii) from the same
    single Jacobian pass; `metric` names the caller in error messages.
    """
    if on_unsupported not in ("raise", "nan"):
        raise ModelError(f"on_unsupported must be 'raise' or 'nan', got {on_unsupported!r}")
    if solver not in ("gram", "svd"):
        raise ModelError(f"solver must be 'gram' or 'svd', got {solver!r}")
    model = as_metric_model(model)
    X = check_features(X, model.n_features, who=model.name)
    Xr, mu = _reference_point(X, center, reference_mean)
    reason = unsupported_reason(model)
    if reason is not None:
        if on_unsupported == "raise":
            require_differentiable(model, metric)
        frame = pd.DataFrame({m: np.full(X.shape[0], np.nan) for m in METRICS})
        frame["x_norm"] = np.linalg.norm(Xr, axis=1)
        frame["reason"] = np.full(X.shape[0], reason, dtype=object)
        frame.attrs.update({"model": model.name, "output_space": None, "method": None, "nonfinite": [], "center": mu is not None})
        return frame, None
    batch = outputs_and_jacobians(model, X, chunk_size=chunk_size)
    frame = alignment_from_jacobians(batch.jacobians, Xr, batch.outputs, solver=solver)
    frame.attrs.update({
        "model": model.name,
        "output_space": "raw kernel outputs" if callable(getattr(model, "gradient", None)) else "logits",
        "method": batch.method,
        "nonfinite": batch.nonfinite.tolist(),
        "center": mu is not None,
    })
    return frame, batch


def alignment(
    model: Any,
    X: Any,
    *,
    center: bool = False,
    reference_mean: Any = None,
    chunk_size: int | None = None,
    on_unsupported: Literal["raise", "nan"] = "raise",
    solver: Literal["gram", "svd"] = "gram",
) -> pd.DataFrame:
    """Per-point alignment metrics of `model` at the rows of X, one column per metric (see module doc).

    The Jacobian is that of the model's differentiable outputs: logits for MLPs (pre-softmax, so
    the local affine form and its offset are exact on each linear region) and the raw kernel
    outputs for RFM/RFAM (what their AGOP and the reference metric code differentiate).
    `center=True` measures against x − mean (the mean of X, or `reference_mean` when given; giving
    `reference_mean` implies centring); the offset then refers to the same origin. Models without
    derivatives (tree ensembles, black boxes) raise ModelError, or with `on_unsupported="nan"` get
    NaN metrics and a `reason` column. The `reason` column is otherwise None, or says why a row is
    NaN (non-finite or zero Jacobian). `frame.attrs` records the output space, the Jacobian method
    and the indices of non-finite Jacobians. `solver` picks the batched singular decomposition
    ("gram" or "svd", equal to rounding; see `singular_spectrum`).
    """
    frame, _ = alignment_with_jacobians(model, X, center=center, reference_mean=reference_mean, chunk_size=chunk_size,
                                        on_unsupported=on_unsupported, solver=solver)
    return frame


__all__ = ["METRICS", "alignment", "alignment_from_jacobians", "alignment_with_jacobians", "offsets", "singular_spectrum"]
