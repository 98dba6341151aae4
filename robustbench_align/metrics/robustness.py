"""Local robustness read off the local affine model: the local-linear margin radius in the threat norm.

Around x the model is f(z) ≈ f(x) + J_x (z − x). The class-y vs class-j boundary of that affine
model lies at the distance (f_y − f_j)(x) / ‖∇(f_y − f_j)(x)‖_* in the threat norm, where ‖·‖_* is
the dual norm (L1 for L∞, L2 for L2, L∞ for L1, by Hölder). The local-linear margin radius is the
minimum over j ≠ y. For an affine model it is the exact distance to the decision boundary; for a
bias-free model (b_x = 0) it is |wᵀx| / ‖w‖_* ≤ ‖x‖, with equality (in L2) iff the row
differences w are parallel to x — the "maximal local robustness" of a normal-aligned model.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from ..attacks.base import check_norm
from ..errors import DataError, ModelError
from ..models.base import check_features
from .jacobian import as_metric_model, outputs_and_jacobians, require_differentiable

DUAL_ORD = {"linf": 1, "l2": 2, "l1": np.inf}
PRIMAL_ORD = {"linf": np.inf, "l2": 2, "l1": 1}


def _check_y(y: Any, n: int, n_classes: int) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"y must be 1-D with {n} labels, got shape {y.shape}")
    if y.size and (not np.all(np.isfinite(y.astype(np.float64))) or np.any(y != np.round(y))):
        raise DataError("labels must be integers 0..n_classes-1")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise DataError(f"labels out of range: the model has {n_classes} classes (0..{n_classes - 1})")
    return y


def linear_radius_from_jacobians(outputs: np.ndarray, J: np.ndarray, y: np.ndarray, norm: str) -> np.ndarray:
    """min_{j≠y} (f_y − f_j) / ‖J_y − J_j‖_* per point, from outputs (n, c) and Jacobians (n, c, d).

    Signed: negative where x is already misclassified. Where a gradient difference is zero the
    local boundary to that class does not exist (+inf for a positive margin, −inf for a negative
    one, 0 for a tie). Rows with non-finite inputs give NaN.
    """
    norm = check_norm(norm)
    outputs = np.asarray(outputs, dtype=np.float64)
    J = np.asarray(J, dtype=np.float64)
    n, _, _ = J.shape
    y = np.asarray(y, dtype=np.int64)
    if n == 0:
        return np.zeros(0)
    rows = np.arange(n)
    margin = outputs[rows, y][:, None] - outputs  # (n, c)
    grad = J[rows, y][:, None, :] - J  # (n, c, d)
    dual = np.linalg.norm(grad, ord=DUAL_ORD[norm], axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = margin / dual
    flat = np.where(margin > 0, np.inf, np.where(margin < 0, -np.inf, 0.0))
    r = np.where(dual > 0, r, flat)
    r[rows, y] = np.inf
    out = r.min(axis=1)
    bad = ~(np.isfinite(outputs).all(axis=1) & np.isfinite(J).all(axis=(1, 2)))
    out[bad] = np.nan
    return out


def local_linear_radius(model: Any, X: Any, y: Any, norm: str, chunk_size: int | None = None) -> np.ndarray:
    """Local-linear margin radius r_lin(x) in `norm` ("linf", "l2", "l1") for each row of X with label y.

    Vectorised over points and classes from one batched Jacobian pass. Raises ModelError for
    models without derivatives or X of the wrong width, DataError for bad labels, AttackError for
    an unknown norm. Negative values mark misclassified points (signed distance).
    """
    norm = check_norm(norm)
    model = as_metric_model(model)
    require_differentiable(model, "local_linear_radius")
    X = check_features(X, model.n_features, who=model.name)
    y = _check_y(y, X.shape[0], model.n_classes)
    f, J = outputs_and_jacobians(model, X, chunk_size=chunk_size)
    return linear_radius_from_jacobians(f, J, y, norm)


def logit_margin(outputs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The clean margin f_y(x) − max_{j≠y} f_j(x) per point from outputs (n, c) and labels y.

    Positive iff x is classified as y (ties give 0); NaN for rows with non-finite outputs and for
    single-output models (no other class to compare with).
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    n = outputs.shape[0]
    if n == 0 or outputs.ndim != 2 or outputs.shape[1] < 2:
        return np.full(n, np.nan)
    rows = np.arange(n)
    others = outputs.copy()
    others[rows, y] = -np.inf
    out = outputs[rows, y] - others.max(axis=1)
    out[~np.isfinite(outputs).all(axis=1)] = np.nan
    return out


def point_metrics(
    model: Any,
    X: Any,
    y: Any,
    norms: Sequence[str] = ("linf", "l2", "l1"),
    *,
    center: bool = False,
    reference_mean: Any = None,
    chunk_size: int | None = None,
    on_unsupported: Literal["raise", "nan"] = "raise",
    solver: Literal["gram", "svd"] = "gram",
) -> pd.DataFrame:
    """`alignment()` columns, `logit_margin` and `r_lin_<norm>` for each norm, all from one batched Jacobian pass.

    `logit_margin` is the clean margin f_y(x) − max_{j≠y} f_j(x) of the differentiable outputs
    (`logit_margin`). The radii always use the raw x (they are distances, independent of any
    centring); the alignment columns follow `center`/`reference_mean`. Unsupported models raise
    ModelError, or with `on_unsupported="nan"` get NaN columns and the `reason` column.
    """
    from .alignment import alignment_with_jacobians

    norms = [check_norm(n) for n in norms]
    model = as_metric_model(model)
    X = check_features(X, model.n_features, who=model.name)
    y = _check_y(y, X.shape[0], model.n_classes)
    frame, batch = alignment_with_jacobians(model, X, center=center, reference_mean=reference_mean, chunk_size=chunk_size,
                                            on_unsupported=on_unsupported, solver=solver, metric="point_metrics")
    frame["logit_margin"] = np.full(X.shape[0], np.nan) if batch is None else logit_margin(batch.outputs, y)
    for norm in norms:
        if batch is None:
            frame[f"r_lin_{norm}"] = np.full(X.shape[0], np.nan)
        else:
            frame[f"r_lin_{norm}"] = linear_radius_from_jacobians(batch.outputs, batch.jacobians, y, norm)
    return frame


def radius_ratios(measured_radius: Any, r_lin: Any, X: Any, norm: str = "l2", reference_mean: Any = None) -> pd.DataFrame:
    """Measured radius against the local-linear radius and against ‖x‖ (same norm), per point.

    Columns: x_norm (‖x‖ in `norm`, of x − reference_mean when given), ratio_to_r_lin =
    measured / r_lin (NaN where r_lin <= 0 or is not finite), ratio_to_x_norm = measured / ‖x‖, and
    r_lin_to_x_norm = r_lin / ‖x‖ (≤ 1 for bias-free models by Hölder; in L2 = 1 iff every
    row difference J_y − J_j is parallel to x).
    """
    norm = check_norm(norm)
    m = np.asarray(measured_radius, dtype=np.float64).reshape(-1)
    r = np.asarray(r_lin, dtype=np.float64).reshape(-1)
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or not (m.shape[0] == r.shape[0] == X.shape[0]):
        raise ModelError(
            f"radius_ratios: measured_radius ({m.shape[0]}), r_lin ({r.shape[0]}) and X ({X.shape[0] if X.ndim else 0} rows, "
            "2-D) must have one entry per point"
        )
    if reference_mean is not None:
        X = X - np.asarray(reference_mean, dtype=np.float64).reshape(1, -1)
    xn = np.linalg.norm(X, ord=PRIMAL_ORD[norm], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        to_lin = np.where((r > 0) & np.isfinite(r), m / r, np.nan)
        to_x = np.where(xn > 0, m / xn, np.nan)
        lin_x = np.where(xn > 0, r / xn, np.nan)
    return pd.DataFrame({"x_norm": xn, "ratio_to_r_lin": to_lin, "ratio_to_x_norm": to_x, "r_lin_to_x_norm": lin_x})


__all__ = ["DUAL_ORD", "linear_radius_from_jacobians", "local_linear_radius", "logit_margin", "point_metrics", "radius_ratios"]
