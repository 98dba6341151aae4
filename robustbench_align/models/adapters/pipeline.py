"""Adapter for scikit-learn Pipelines of affine scalers followed by a classifier.

A Pipeline whose steps before the final estimator are StandardScaler, MaxAbsScaler, RobustScaler,
MinMaxScaler (clip=False) or 'passthrough' computes z = a * x + c feature-wise. The final estimator is
wrapped with `wrap()` (so it gets its strongest path) and composed with the scalers:

- `torch_logits(x)` = inner.torch_logits(scalers(x)) in float64, applying the scalers' own operations
  (x - mean) / scale, x * scale + min, ... in the order scikit-learn does;
- `linear_scores()` (linear finals) = (W * a, W @ c + b), the folded raw-space scores.

`predict`/`predict_proba` are the Pipeline's own, so every adversarial is verified by the Pipeline in the
user's raw feature space, and radii are measured in that raw space (`input_space = "raw"`).
Tree finals are attacked as a black box: the raw-space threshold of float32(scaler(x)) <= t is a float64
point that the ensemble's float32 input comparison cannot represent, so an exact raw-space parse would
not be exact. Any other preprocessing step (PCA, OneHotEncoder, ColumnTransformer, ...) also means a black
box; `path_note` says which path was taken and why.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ...errors import ModelError
from ..base import Model, WrappedModel, argmax_rows, display_name, wrap
from ..trees.sklearn_parse import require_sk_fitted
from .sklearn import _label_indices, call_sklearn

if TYPE_CHECKING:
    import torch

AFFINE_SCALERS = ("StandardScaler", "MinMaxScaler", "MaxAbsScaler", "RobustScaler")

# One scaler operation on float64 columns: ("sub", v) x - v, ("div", v) x / v, ("mul", v) x * v, ("add", v) x + v.
Op = tuple[str, np.ndarray]


def _vec(v: Any, d: int) -> np.ndarray:
    out: np.ndarray = np.broadcast_to(np.asarray(v, dtype=np.float64).reshape(-1), (d,)).copy()
    return out


def scaler_ops(step: Any, d: int) -> list[Op] | str:
    """The float64 operations scikit-learn's `transform` applies for an affine scaler, or why the step is not one."""
    kind = type(step).__name__
    if isinstance(step, str) or step is None:
        return [] if step in ("passthrough", None) else f"step {step!r}"
    if kind not in AFFINE_SCALERS or not str(type(step).__module__).startswith("sklearn."):
        return f"preprocessing step {kind} is not an affine scaler"
    require_sk_fitted(step)
    if int(getattr(step, "n_features_in_", d)) != d:
        return f"{kind} changes the feature count"
    ops: list[Op] = []
    if kind in ("StandardScaler", "RobustScaler"):
        std = kind == "StandardScaler"
        centre = step.mean_ if std else step.center_
        if (step.with_mean if std else step.with_centering) and centre is not None:  # sklearn keeps mean_ even when unused
            ops.append(("sub", _vec(centre, d)))
        if (step.with_std if std else step.with_scaling) and step.scale_ is not None:
            ops.append(("div", _vec(step.scale_, d)))
    elif kind == "MaxAbsScaler":
        ops.append(("div", _vec(step.scale_, d)))
    else:  # MinMaxScaler
        if getattr(step, "clip", False):
            return "MinMaxScaler(clip=True) is not affine"
        ops += [("mul", _vec(step.scale_, d)), ("add", _vec(step.min_, d))]
    return ops


def fold(ops: list[Op], d: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, c) with ops(x) = a * x + c feature-wise (up to float64 rounding)."""
    a, c = np.ones(d), np.zeros(d)
    for op, v in ops:
        if op == "sub":
            c = c - v
        elif op == "add":
            c = c + v
        elif op == "mul":
            a, c = a * v, c * v
        else:
            a, c = a / v, c / v
    return a, c


class PipelineModel(WrappedModel):
    """A fitted scikit-learn Pipeline attacked as a black box; radii are measured in the user's raw feature space.

    `predict`/`predict_proba` are the Pipeline's own; `path_note` says why no stronger path applies.
    """

    input_space: str = "raw"

    def __init__(self, pipe: Any, path_note: str, name: str | None = None, inner: Model | None = None,
                 ops: list[Op] | None = None) -> None:
        self.pipe = pipe
        self.inner = inner
        self.ops = ops or []
        self.path_note = path_note
        d = getattr(pipe, "n_features_in_", None)
        if d is None:
            raise ModelError("wrap: cannot tell how many features the Pipeline takes; fit it on an array")
        self._d = int(d)
        self.scale_, self.shift_ = fold(self.ops, self._d)
        classes = getattr(pipe, "classes_", None)
        if classes is None or np.asarray(classes).ndim != 1:
            raise ModelError("wrap: the Pipeline's final estimator has no 1-D classes_; wrap a fitted single-output classifier")
        self.classes_ = np.asarray(classes)
        self._c = int(self.classes_.size)
        if self._c < 2:
            raise ModelError("wrap: the Pipeline knows a single class; a classifier needs at least two")
        if inner is None and not callable(getattr(pipe, "predict_proba", None)):
            raise ModelError(f"wrap: the Pipeline's final estimator {type(pipe[-1]).__name__} has no predict_proba; enable it or wrap a predict_proba callable")
        self.name = name or "Pipeline(" + ", ".join(type(s).__name__ if not isinstance(s, str) else s for _, s in pipe.steps) + ")"

    def _library(self, method: Any, X: np.ndarray) -> Any:
        return call_sklearn(method, X, self.name, who="the Pipeline")

    def transform(self, X: Any) -> np.ndarray:
        """The scalers' output for raw X (float64), as the Pipeline computes it."""
        Xc = self._check_X(X)
        if len(self.pipe.steps) == 1:
            return Xc
        out: np.ndarray = np.asarray(self._library(self.pipe[:-1].transform, Xc), dtype=np.float64)
        return out

    def predict_proba(self, X: Any) -> np.ndarray:
        """The Pipeline's predict_proba on raw X (the final estimator's model on the scaled features if it has none)."""
        X = self._check_X(X)
        if callable(getattr(self.pipe, "predict_proba", None)):
            return self._proba_checked(self._library(self.pipe.predict_proba, X), X.shape[0])
        return self._proba_checked(cast(Model, self.inner).predict_proba(self.transform(X)), X.shape[0])

    def predict(self, X: Any) -> np.ndarray:
        """The Pipeline's predict on raw X, as class indices 0..K-1 (classes_ order)."""
        X = self._check_X(X)
        if not callable(getattr(self.pipe, "predict", None)):
            return argmax_rows(self.predict_proba(X))
        return _label_indices(self.classes_, self._library(self.pipe.predict, X), display_name(self.name))


class PipelineTorch(PipelineModel):
    """A scaler Pipeline whose final estimator has torch logits: gradient attacks in raw feature space."""

    def __init__(self, pipe: Any, path_note: str, name: str | None, inner: Model, ops: list[Op]) -> None:
        import torch

        super().__init__(pipe, path_note, name=name, inner=inner, ops=ops)
        self.torch_dtype = torch.float64
        self._tops = [(op, torch.as_tensor(v, dtype=torch.float64)) for op, v in self.ops]

    def torch_logits(self, x: torch.Tensor) -> torch.Tensor:
        """inner.torch_logits(scalers(x)), the scalers applied in float64 as scikit-learn does."""
        import torch

        z = x.to(torch.float64)
        for op, v in self._tops:
            v = v.to(z.device)
            z = z - v if op == "sub" else z / v if op == "div" else z * v if op == "mul" else z + v
        out: torch.Tensor = cast(Any, self.inner).torch_logits(z)
        return out


class PipelineLinear(PipelineTorch):
    """A scaler Pipeline with a linear final estimator: also the folded raw-space `linear_scores()`."""

    def linear_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """(W * a, W @ c + b): the final estimator's class scores as a function of the raw features."""
        W, b = cast(Any, self.inner).linear_scores()
        W = np.asarray(W, dtype=np.float64)
        b = np.asarray(b, dtype=np.float64)
        Wr: np.ndarray = W * self.scale_[None, :]
        br: np.ndarray = W @ self.shift_ + b
        return Wr, br

    def linear_score_magnitudes(self, X: np.ndarray) -> tuple[np.ndarray, int]:
        """Bounds on the terms the Pipeline's own arithmetic adds: |W| @ m + |b| per point and class, with m the
        feature magnitudes propagated through the scaler ops (|x|, then + |v| for add/sub, * or / |v| for mul/div),
        and one rounding step per op. This lets the exact linear attack certify against the Pipeline's arithmetic,
        not only against the folded raw-space scores."""
        W, b = cast(Any, self.inner).linear_scores()
        m = np.abs(np.asarray(X, dtype=np.float64))
        for op, v in self.ops:
            av = np.abs(np.asarray(v, dtype=np.float64))
            m = m + av if op in ("sub", "add") else m * av if op == "mul" else m / av
        mags: np.ndarray = m @ np.abs(np.asarray(W, dtype=np.float64)).T + np.abs(np.asarray(b, dtype=np.float64)).reshape(1, -1)
        return mags, len(self.ops) + 2


def adapt_pipeline(pipe: Any, name: str | None = None, n_features: int | None = None) -> Model:
    """A Model for a fitted Pipeline: the final estimator's strongest path behind folded affine scalers, else a black box."""
    steps = list(getattr(pipe, "steps", []))
    if not steps:
        raise ModelError("wrap: the Pipeline has no steps")
    final = steps[-1][1]
    if isinstance(final, str) or final is None:
        raise ModelError("wrap: the Pipeline's final step is 'passthrough'; it must be a fitted classifier")
    require_sk_fitted(pipe)
    d = getattr(pipe, "n_features_in_", None)
    if d is None:
        raise ModelError("wrap: cannot tell how many features the Pipeline takes; fit it on an array")
    d = int(d)
    if n_features is not None and int(n_features) != d:
        raise ModelError(f"wrap: n_features={n_features} but the Pipeline was fitted on {d} features")
    ops: list[Op] = []
    for step_name, step in steps[:-1]:
        got = scaler_ops(step, d)
        if isinstance(got, str):
            return PipelineModel(pipe, f"black box: {got} (step {step_name!r}); attacked through the Pipeline's predict", name=name)
        ops += got
    inner = wrap(final, n_features=d)
    caps = inner.capabilities
    if "tree_ensemble" in caps:
        note = ("black box: exact tree path refused: a raw-space split float32(scaler(x)) <= t is a float64 point "
                "the ensemble's float32 input comparison cannot represent")
        return PipelineModel(pipe, note, name=name, inner=inner, ops=ops)
    if "torch_logits" in caps:
        inner_note = str(getattr(inner, "path_note", "") or "")
        if "linear" in caps and callable(getattr(inner, "linear_scores", None)):
            return PipelineLinear(pipe, "linear path: final estimator's scores folded through the affine scalers", name, inner, ops)
        note = "gradient path: torch logits of the final estimator behind the affine scalers (float64)"
        return PipelineTorch(pipe, note + (f"; inner: {inner_note}" if inner_note else ""), name, inner, ops)
    inner_note = str(getattr(inner, "path_note", "") or "")
    return PipelineModel(pipe, f"black box: final estimator {type(final).__name__} has no gradient or exact path"
                         + (f" ({inner_note})" if inner_note else ""), name=name, inner=inner, ops=ops)


def adapt(obj: Any, *, n_features: int | None = None, n_classes: int | None = None, name: str | None = None) -> Model:
    """The table's factory for scikit-learn Pipelines."""
    model = adapt_pipeline(obj, name=name, n_features=n_features)
    if n_classes is not None and int(n_classes) != model.n_classes:
        raise ModelError(f"wrap: n_classes={n_classes} but the Pipeline knows {model.n_classes} classes")
    return model


__all__ = ["AFFINE_SCALERS", "PipelineLinear", "PipelineModel", "PipelineTorch", "adapt", "adapt_pipeline", "fold", "scaler_ops"]
