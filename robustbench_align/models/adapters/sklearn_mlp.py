"""Adapter for scikit-learn's `MLPClassifier`: library predictions plus `torch_logits`, a float64 torch copy of the network.

The copy is built from `coefs_` / `intercepts_`: every hidden layer is affine followed by the
estimator's `activation` ("identity", "logistic", "tanh", "relu"); the output layer is affine and
its activation is folded into the logits:

- binary (one output unit z, `out_activation_ == "logistic"`): logits [0, z], so that
  softmax(logits) = [1 - sigmoid(z), sigmoid(z)] = `predict_proba`, and argmax is class 1 iff z > 0
  (sklearn's threshold p > 0.5);
- multiclass (`out_activation_ == "softmax"`): the K pre-softmax outputs.

`predict` and `predict_proba` stay the library's own, so every adversarial candidate is verified
by the original estimator. The copy is checked against `predict_proba` when the model is wrapped;
a mismatch, a multilabel network or an unknown activation leaves a black box (a logged warning,
and the reason in `path_note`).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ...errors import ModelError
from ..base import Model, softmax_rows
from ..trees.sklearn_parse import quiet
from .sklearn import WrappedSklearn
from .torch import TorchCopy

log = logging.getLogger(__name__)

HIDDEN_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda h: h,
    "logistic": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
}
OUTPUT_ACTIVATIONS = ("logistic", "softmax")
CHECK_TOL = 1e-4  # the wrap-time self-check catches structural mismatches, not float32 rounding of float32-fitted nets


class MLPModule(nn.Module):
    """x -> logits of a fitted MLPClassifier, in float64 (weights are buffers: nothing to train)."""

    def __init__(self, coefs: list[np.ndarray], intercepts: list[np.ndarray], activation: str, binary: bool) -> None:
        super().__init__()
        if activation not in HIDDEN_ACTIVATIONS:
            raise ModelError(f"MLPClassifier activation {activation!r} is not one of {', '.join(HIDDEN_ACTIVATIONS)}")
        self.activation = activation
        self.binary = bool(binary)
        self.n_layers = len(coefs)
        for i, (w, b) in enumerate(zip(coefs, intercepts, strict=True)):
            self.register_buffer(f"w{i}", torch.as_tensor(np.asarray(w, dtype=np.float64)))
            self.register_buffer(f"b{i}", torch.as_tensor(np.asarray(b, dtype=np.float64).reshape(-1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = HIDDEN_ACTIVATIONS[self.activation]
        h = x.to(torch.float64)
        for i in range(self.n_layers):
            w: torch.Tensor = getattr(self, f"w{i}")
            b: torch.Tensor = getattr(self, f"b{i}")
            h = h @ w + b
            if i < self.n_layers - 1:
                h = act(h)
        if self.binary:
            return torch.cat([torch.zeros_like(h), h], dim=1)
        return h


def mlp_module(est: Any) -> MLPModule:
    """The torch copy of a fitted MLPClassifier; ModelError when the network cannot be reproduced."""
    out = getattr(est, "out_activation_", None)
    if out not in OUTPUT_ACTIVATIONS:
        raise ModelError(f"output activation {out!r} is not logistic/softmax (not a single-label classifier)")
    lb = getattr(est, "_label_binarizer", None)
    if lb is not None and str(getattr(lb, "y_type_", "")).startswith("multilabel"):
        raise ModelError("a multilabel MLPClassifier has no single predicted class")
    n_out = int(getattr(est, "n_outputs_", 0))
    k = int(np.asarray(est.classes_).size)
    binary = out == "logistic"
    if (binary and not (n_out == 1 and k == 2)) or (not binary and n_out != k):
        raise ModelError(f"{n_out} output units for {k} classes with a {out} output; cannot map them to class logits")
    return MLPModule(list(est.coefs_), list(est.intercepts_), str(est.activation), binary)


class WrappedMLP(WrappedSklearn):
    """A fitted MLPClassifier attacked as a black box (no torch copy): the reason is in `path_note`."""


class TorchMLP(TorchCopy, WrappedMLP):
    """A fitted MLPClassifier: the library's predict/predict_proba plus `torch_logits`, its float64 torch copy
    (softmax of the logits is `predict_proba` to float64 rounding)."""

    def predict_logits(self, X: Any) -> np.ndarray:
        """The torch copy's logits for X as float64 numpy (no gradient)."""
        X = self._check_X(X)
        with torch.no_grad():
            z: np.ndarray = self.torch_logits(torch.as_tensor(X)).numpy()
        return z


def _probe(est: Any, d: int) -> np.ndarray:
    """Points to check the copy on: a fixed pseudo-random cloud around the first layer's scale, plus the origin."""
    rng = np.random.default_rng(0)
    w0 = np.asarray(est.coefs_[0], dtype=np.float64)
    scale = 1.0 / max(float(np.abs(w0).max()), 1e-12) if w0.size else 1.0
    pts: np.ndarray = np.vstack([np.zeros((1, d)), rng.normal(size=(31, d)) * min(scale * 3.0, 1e6)])
    return pts


def adapt_mlp(est: Any, name: str | None = None, n_features: int | None = None) -> Model:
    """TorchMLP when the copy reproduces predict_proba on probe points, else WrappedMLP (black box) with the reason."""
    who = name or type(est).__name__
    try:
        module = mlp_module(est)
        model = TorchMLP(est, module, name=name, n_features=n_features)
        P = _probe(est, model.n_features)
        err = float(np.abs(softmax_rows(model.predict_logits(P)) - np.asarray(quiet(est.predict_proba, P), dtype=np.float64)).max())
        if not err <= CHECK_TOL:
            raise ModelError(f"the torch copy differs from predict_proba by {err:.2g} on probe points")
        return model
    except (ModelError, AttributeError, TypeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        bb = WrappedMLP(est, name=name, n_features=n_features)
        bb.path_note = f"gradient path refused: {reason}"
        log.warning("%s: no gradient path, attacked as a black box (%s)", who, reason)
        return bb


def adapt(obj: Any, *, n_features: int | None = None, n_classes: int | None = None, name: str | None = None) -> Model:
    """The table's factory for MLPClassifier."""
    return adapt_mlp(obj, name=name, n_features=n_features)


__all__ = ["MLPModule", "TorchMLP", "WrappedMLP", "adapt", "adapt_mlp", "mlp_module"]
