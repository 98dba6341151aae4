"""Adapter for torch `nn.Module`s: differentiable logits, hence the `torch_logits` capability (gradient attacks)."""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ModelError, first_line
from ..base import Model, WrappedModel, argmax_rows, check_n_classes, check_width, display_name, softmax_rows


class TorchModel(WrappedModel):
    """A torch `nn.Module` mapping (n, d) inputs to (n, c) logits."""

    def __init__(self, module: Any, n_features: int, n_classes: int | None = None, name: str = "torch-model", dtype: Any = None) -> None:
        import torch

        self.name = str(name)
        self._d = check_width(n_features, self.name)
        if n_classes is not None:
            n_classes = check_n_classes(n_classes, self.name)
        self.module = module.eval()
        if dtype is None:
            params = list(module.parameters())
            dtype = params[0].dtype if params else torch.float32
        self.torch_dtype = dtype
        who = display_name(self.name)
        try:
            with torch.no_grad():
                out = self.module(torch.zeros(1, self._d, dtype=dtype))
        except Exception as exc:
            raise ModelError(f"{who}: the module fails on a (1, {self._d}) input ({first_line(exc)}); check n_features and the module") from exc
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ModelError(f"{who}: module must return (n, n_classes) logits, got {shape}")
        if out.shape[1] < 2:
            raise ModelError(f"{who}: module returns {int(out.shape[1])} output; wrap a module with one logit per class (>= 2)")
        if n_classes is not None and n_classes != int(out.shape[1]):
            raise ModelError(f"{who}: n_classes={n_classes} but the module returns {int(out.shape[1])} logits")
        self._c = int(out.shape[1])

    def torch_logits(self, x: Any) -> Any:
        return self.module(x.to(self.torch_dtype))

    def predict_logits(self, X: np.ndarray) -> np.ndarray:
        """Logits as float64 (n, c); ModelError when the module fails or returns NaN."""
        import torch

        X = self._check_X(X)
        who = display_name(self.name)
        try:
            with torch.no_grad():
                out = self.torch_logits(torch.as_tensor(X, dtype=self.torch_dtype))
        except Exception as exc:
            raise ModelError(f"{who}: the module failed on X of shape {X.shape} ({first_line(exc)})") from exc
        z: np.ndarray = out.detach().double().cpu().numpy()
        if z.shape != (X.shape[0], self._c):
            raise ModelError(f"{who}: module returned shape {z.shape}, expected {(X.shape[0], self._c)}")
        if np.isnan(z).any():
            raise ModelError(
                f"{who}: module returned NaN logits for {int(np.isnan(z).any(axis=1).sum())} of {z.shape[0]} rows; "
                "check the module's weights and the input scale"
            )
        return z

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return softmax_rows(self.predict_logits(X))

    def predict(self, X: np.ndarray) -> np.ndarray:
        return argmax_rows(self.predict_logits(X))


def infer_in_features(module: Any) -> int | None:
    """The input width of the module's first `nn.Linear` layer, or None."""
    import torch.nn as nn

    for m in module.modules():
        if isinstance(m, nn.Linear):
            return int(m.in_features)
    return None


def adapt(obj: Any, *, n_features: int | None = None, n_classes: int | None = None, name: str | None = None) -> Model:
    """The table's factory for nn.Modules: the width from n_features= or the first Linear layer."""
    d = n_features if n_features is not None else infer_in_features(obj)
    if d is None:
        raise ModelError("wrap: cannot infer the input width of this torch module; pass n_features=")
    return TorchModel(obj, d, n_classes, name=name or type(obj).__name__)


class TorchCopy:
    """Mixin for adapters of library models that also carry an exact float64 torch copy of their scores in
    `self.module` (MLPClassifier, SVC/NuSVC): `torch_logits` runs that copy; predictions stay the library's own.

    Put it first in the bases: `class TorchMLP(TorchCopy, WrappedMLP)`; the constructor takes the module after the
    estimator and passes the rest on.
    """

    module: Any

    def __init__(self, est: Any, module: Any, name: str | None = None, n_features: int | None = None) -> None:
        import torch

        super().__init__(est, name=name, n_features=n_features)  # type: ignore[call-arg]  # the library adapter's constructor
        self.module = module.eval()
        self.torch_dtype = torch.float64

    def torch_logits(self, x: Any) -> Any:
        """Differentiable logits (n, K) from the float64 torch copy."""
        import torch

        return self.module(x.to(torch.float64))


__all__ = ["TorchCopy", "TorchModel", "adapt", "infer_in_features"]
