"""The per-point metrics, declared once: what each is, where it comes from, whether it is stored and shown.

The runner computes the stored metrics for every evaluated point, the store keeps one REAL column
per stored metric in its `points` table (in this order), the leaderboard summarises the
`leaderboard` metrics per run (`aggregate` over the run's points, then the mean over seeds) and
leaderboard.json reports them under `json_key`. Adding a metric is one entry here plus its
computation in `metrics.alignment.alignment_from_jacobians` (source "alignment") or in
`metrics.robustness.point_metrics` (source "local_linear", e.g. r_lin, logit_margin); a store written
before the entry existed gains the column when it is next opened for writing.

Definitions (J_x the c × d Jacobian of the model's differentiable outputs at x, σᵢ its singular
values, v₁ its top right singular vector; see arXiv 2605.08464 for normal alignment).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Source = Literal["alignment", "local_linear"]
Aggregate = Literal["mean", "median"]

NORMS: tuple[str, ...] = ("linf", "l2", "l1")  # the norms a per-norm metric is computed in


@dataclass(frozen=True)
class PointMetric:
    """One per-point metric: its column name, meaning, origin, and how it is stored and summarised."""

    name: str  # column of the metric frame, the store's points table and the leaderboard
    description: str
    source: Source = "alignment"  # a column of `metrics.alignment.alignment`, or of `metrics.robustness.point_metrics`
    stored: bool = True  # a REAL column of the store's points table
    leaderboard: bool = False  # summarised per run in the leaderboard and leaderboard.json
    aggregate: Aggregate = "mean"  # how a run's points are summarised for the leaderboard
    overall: bool = False  # also averaged across datasets in the overall ranking
    per_norm: bool = False  # computed as f"{name}_{norm}" for each of NORMS; a run stores the one of its threat norm
    json_key: str | None = None  # key in leaderboard.json (default: name)

    @property
    def key(self) -> str:
        """The key of this metric in leaderboard.json."""
        return self.json_key or self.name

    def column(self, norm: str | None) -> str:
        """The metric-frame column holding this metric for a run under `norm`."""
        return f"{self.name}_{norm}" if self.per_norm else self.name


POINT_METRICS: tuple[PointMetric, ...] = (
    PointMetric("normal_alignment", "|⟨v₁, x⟩| / ‖x‖: 1 iff J_x = a xᵀ (NaN where J_x = 0, for trees and black boxes)",
                leaderboard=True, overall=True),
    PointMetric("centroid_alignment", "⟨c, x⟩ / max(‖c‖‖x‖, 1e-8) with the centroid c = J_xᵀ1", leaderboard=True),
    PointMetric("centroid_norm", "‖J_xᵀ1‖₂"),
    PointMetric("centroid_inner", "⟨J_xᵀ1, x⟩", stored=False),
    PointMetric("effective_rank", "(Σσᵢ)² / Σσᵢ² ∈ [1, min(c, d)]", leaderboard=True),
    PointMetric("effective_rank_normalized", "effective rank ÷ min(c, d)"),
    PointMetric("pc1_explained_variance", "σ₁² / Σσᵢ²"),
    PointMetric("offset_norm", "‖f(x) − J_x x‖₂, the offset of the local affine form"),
    PointMetric("jacobian_norm", "‖J_x‖_F"),
    PointMetric("x_norm", "‖x‖₂"),
    PointMetric("logit_margin", "f_y(x) − max_{j≠y} f_j(x) on the model's differentiable outputs (the clean margin; NaN for models without gradients)",
                source="local_linear"),
    PointMetric("r_lin", "local-linear margin radius min_{j≠y} (f_y − f_j)(x) / ‖∇(f_y − f_j)(x)‖_* in the threat norm",
                source="local_linear", per_norm=True),
)

ALIGNMENT_METRICS: tuple[str, ...] = tuple(m.name for m in POINT_METRICS if m.source == "alignment")
STORED_METRICS: tuple[PointMetric, ...] = tuple(m for m in POINT_METRICS if m.stored)
LEADERBOARD_METRICS: tuple[PointMetric, ...] = tuple(m for m in POINT_METRICS if m.leaderboard)
OVERALL_METRICS: tuple[PointMetric, ...] = tuple(m for m in POINT_METRICS if m.overall)

__all__ = ["ALIGNMENT_METRICS", "LEADERBOARD_METRICS", "NORMS", "OVERALL_METRICS", "POINT_METRICS", "STORED_METRICS", "PointMetric"]
