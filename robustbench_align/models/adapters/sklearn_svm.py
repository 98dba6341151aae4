"""Adapter for scikit-learn's `SVC` / `NuSVC`: library predictions plus `torch_logits`, the decision function in float64 torch.

The decision values are rebuilt from the fitted attributes, f_p(x) = sum_s a_ps K(s, x) + b_p, with
the support vectors `support_vectors_`, the kernel `kernel` ("linear": <s, x>; "rbf":
exp(-gamma ||s - x||^2); "poly": (gamma <s, x> + coef0)^degree; "sigmoid": tanh(gamma <s, x> + coef0))
at the resolved `_gamma`, and a / b from `dual_coef_` / `intercept_`:

- binary: one value f = `decision_function`, with sklearn's public sign convention (`dual_coef_`
  and `intercept_` are the negated libsvm `_dual_coef_` / `_intercept_`, so f > 0 means
  `classes_[1]`). The logits are [0, f]: argmax is class 1 iff f > 0 (at f == 0 exactly libsvm says
  class 1 and the logits class 0: a measure-zero tie the verifier settles);
- multiclass: the K(K-1)/2 one-vs-one values in libsvm's pair order (0,1), (0,2), ..., (K-2,K-1)
  (`decision_function` with `decision_function_shape="ovo"`); the coefficients of pair (i, j) are
  `dual_coef_[j-1]` on the support vectors of class i and `dual_coef_[i]` on those of class j, the
  intercept `intercept_[p]`. `predict` is libsvm's one-vs-one vote (pair (i, j) votes i iff
  f_ij > 0, else j; the most votes wins, ties to the lowest class index). Votes are piecewise
  constant, so the logits follow sklearn's own `_ovr_decision_function` construction: votes plus
  the summed pairwise confidences c_k = sum_j f_kj squashed into an interval narrower than one vote,
  so argmax(logits) is the vote winner wherever the votes are not tied. Tied votes are settled as
  `predict` settles them: with `break_ties=True` (and "ovr") by the confidences, exactly sklearn's
  `decision_function` = votes + c / (3 (|c| + 1)); otherwise (libsvm) by the lowest class index,
  with logits votes + (K-1-k)/K + c / (2K (|c| + 1)) (the rank term orders tied classes, the
  squashed confidences, within +-1/(2K), never reorder them). The logits' argmax thus equals
  `predict` except where some f_ij == 0 exactly; whatever remains is resolved by verification:
  every attack's candidate is re-checked with `predict`, which is the library's.
  Gradients: the squashed confidences carry the decision values' gradient; the votes, piecewise
  constant, get that of sigmoid(f / `vote_temperature`) straight through (their values unchanged;
  default 0.1, None = no vote gradient), which lets DeepFool/FAB-style linearisations see the vote
  boundaries f_ij = 0.

`predict_proba` is the library's with `probability=True`, else the softmax of those logits (the
attacks' verifier uses `predict`, the library's, in either case). A callable or "precomputed"
kernel cannot be rebuilt: the model is then a black box (a logged warning, the reason in
`path_note`). The rebuilt function is checked against `decision_function` when wrapped.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ...errors import ModelError
from ..base import Model, WrappedModel, check_width, display_name, softmax_rows
from ..trees.sklearn_parse import require_sk_fitted
from .sklearn import _label_indices, call_sklearn
from .torch import TorchCopy

log = logging.getLogger(__name__)

KERNELS = ("linear", "rbf", "poly", "sigmoid")
TIE_BREAKS = ("index", "confidence")
VOTE_TEMPERATURE = 0.1  # straight-through vote gradient: sigmoid(f / 0.1) (SVM margins sit at |f| = 1)
CHECK_TOL = 1e-6  # relative to 1 + max |decision value| on the probe points


def ovr_from_ovo(dec: np.ndarray, n_classes: int, tie_break: str = "index") -> np.ndarray:
    """The vote logits of one-vs-one decision values (numpy twin of `SVMModule.forward`, see the module docstring).

    tie_break="confidence" is sklearn's `_ovr_decision_function(dec < 0, -dec, K)`; "index" follows
    libsvm's vote (f > 0 votes i; ties to the lowest class index).
    """
    n = dec.shape[0]
    votes = np.zeros((n, n_classes))
    conf = np.zeros((n, n_classes))
    p = 0
    for i in range(n_classes):
        for j in range(i + 1, n_classes):
            pos = dec[:, p] >= 0 if tie_break == "confidence" else dec[:, p] > 0
            votes[pos, i] += 1
            votes[~pos, j] += 1
            conf[:, i] += dec[:, p]
            conf[:, j] -= dec[:, p]
            p += 1
    squashed = conf / (3.0 * (np.abs(conf) + 1.0))
    if tie_break == "confidence":
        out: np.ndarray = votes + squashed
        return out
    rank = (n_classes - 1 - np.arange(n_classes)) / n_classes
    out = votes + rank + squashed * (3.0 / (2.0 * n_classes))
    return out


def _pairs(k: int) -> list[tuple[int, int]]:
    return [(i, j) for i in range(k) for j in range(i + 1, k)]


class SVMModule(nn.Module):
    """x -> logits of a fitted SVC/NuSVC (float64; see the module docstring). `decision(x)` gives the raw values."""

    sv: torch.Tensor
    sv_sq: torch.Tensor
    coef: torch.Tensor
    intercept: torch.Tensor
    a_i: torch.Tensor
    a_j: torch.Tensor
    rank: torch.Tensor

    def __init__(self, sv: np.ndarray, coef: np.ndarray, intercept: np.ndarray, kernel: str, gamma: float, coef0: float,
                 degree: int, n_classes: int, tie_break: str = "index", vote_temperature: float | None = None) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ModelError(f"kernel {kernel!r} cannot be rebuilt in torch; supported: {', '.join(KERNELS)}")
        self.kernel, self.gamma, self.coef0, self.degree = kernel, float(gamma), float(coef0), int(degree)
        self.n_classes = int(n_classes)
        if tie_break not in TIE_BREAKS:
            raise ModelError(f"tie_break {tie_break!r} is not one of {', '.join(TIE_BREAKS)}")
        self.tie_break = tie_break
        self.vote_temperature = None if vote_temperature is None else float(vote_temperature)
        self.register_buffer("sv", torch.as_tensor(np.asarray(sv, dtype=np.float64)))
        self.register_buffer("sv_sq", torch.as_tensor(np.sum(np.asarray(sv, dtype=np.float64) ** 2, axis=1)))
        self.register_buffer("coef", torch.as_tensor(np.asarray(coef, dtype=np.float64)))  # (n_pairs, n_sv)
        self.register_buffer("intercept", torch.as_tensor(np.asarray(intercept, dtype=np.float64).reshape(-1)))
        pairs = _pairs(self.n_classes)
        a_i = np.zeros((len(pairs), self.n_classes))
        a_j = np.zeros((len(pairs), self.n_classes))
        for p, (i, j) in enumerate(pairs):
            a_i[p, i] = 1.0
            a_j[p, j] = 1.0
        self.register_buffer("a_i", torch.as_tensor(a_i))
        self.register_buffer("a_j", torch.as_tensor(a_j))
        k = self.n_classes
        self.register_buffer("rank", torch.as_tensor((k - 1 - np.arange(k)) / k if tie_break == "index" else np.zeros(k)))
        self.conf_scale = 3.0 / (2.0 * k) if tie_break == "index" else 1.0

    def kernel_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """K(x_n, s_m), shape (n, n_sv)."""
        dot = x @ self.sv.T
        if self.kernel == "linear":
            return dot
        if self.kernel == "rbf":
            sq = ((x * x).sum(dim=1, keepdim=True) + self.sv_sq[None, :] - 2.0 * dot).clamp_min(0.0)
            return torch.exp(-self.gamma * sq)
        if self.kernel == "poly":
            return (self.gamma * dot + self.coef0) ** self.degree
        return torch.tanh(self.gamma * dot + self.coef0)

    def decision(self, x: torch.Tensor) -> torch.Tensor:
        """The raw decision values (n, 1) binary / (n, K(K-1)/2) one-vs-one, as sklearn's decision_function ("ovo")."""
        out: torch.Tensor = self.kernel_matrix(x.to(torch.float64)) @ self.coef.T + self.intercept
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.decision(x)
        if self.n_classes == 2:
            return torch.cat([torch.zeros_like(f), f], dim=1)
        pos = ((f >= 0) if self.tie_break == "confidence" else (f > 0)).to(f.dtype)
        if self.vote_temperature is not None:
            soft = torch.sigmoid(f / self.vote_temperature)
            pos = pos + (soft - soft.detach())  # same values, gradient of the smooth vote
        votes = pos @ self.a_i + (1.0 - pos) @ self.a_j
        conf = f @ (self.a_i - self.a_j)
        out: torch.Tensor = votes + self.rank + (self.conf_scale / 3.0) * conf / (conf.abs() + 1.0)
        return out


def _dense(a: Any) -> np.ndarray:
    """A (possibly scipy-sparse) fitted array as dense float64."""
    if hasattr(a, "toarray"):
        a = a.toarray()
    out: np.ndarray = np.asarray(a, dtype=np.float64)
    return out


def svm_module(est: Any, vote_temperature: float | None = None) -> SVMModule:
    """The torch rebuild of a fitted SVC/NuSVC; ModelError (one line) when it cannot be rebuilt."""
    kernel = est.kernel
    if callable(kernel):
        raise ModelError("a callable kernel cannot be rebuilt in torch")
    if kernel == "precomputed":
        raise ModelError("a precomputed kernel takes kernel values, not features: no feature-space gradient")
    if kernel not in KERNELS:
        raise ModelError(f"kernel {kernel!r} cannot be rebuilt in torch; supported: {', '.join(KERNELS)}")
    k = int(np.asarray(est.classes_).size)
    sv = _dense(est.support_vectors_)
    dual = _dense(est.dual_coef_)
    b = np.asarray(est.intercept_, dtype=np.float64).reshape(-1)
    if k == 2:
        coef = dual.reshape(1, -1)
    else:
        n_sup = np.asarray(est.n_support_, dtype=np.int64)
        start = np.concatenate([[0], np.cumsum(n_sup)])
        pairs = _pairs(k)
        coef = np.zeros((len(pairs), sv.shape[0]))
        for p, (i, j) in enumerate(pairs):
            si, sj = slice(start[i], start[i + 1]), slice(start[j], start[j + 1])
            coef[p, si] = dual[j - 1, si]
            coef[p, sj] = dual[i, sj]
    if coef.shape[0] != b.size:
        raise ModelError(f"{b.size} intercepts for {coef.shape[0]} decision functions; the estimator is inconsistent")
    return SVMModule(sv, coef, b, str(kernel), float(est._gamma), float(est.coef0), int(est.degree), k, tie_break_of(est),
                     vote_temperature)


def tie_break_of(est: Any) -> str:
    """How `est.predict` settles tied votes: "confidence" (break_ties=True with "ovr") or libsvm's "index"."""
    return "confidence" if getattr(est, "break_ties", False) and est.decision_function_shape == "ovr" else "index"


def _has_proba(est: Any) -> bool:
    try:
        return callable(getattr(est, "predict_proba", None))
    except AttributeError:  # available_if: probability=False
        return False


class WrappedSVM(WrappedModel):
    """A fitted SVC/NuSVC attacked as a black box: library predict, decision_function and (if enabled) predict_proba.

    Without `probability=True`, predict_proba is the softmax of the vote logits (see the module
    docstring) computed from the library's decision_function. `path_note` says why there is no
    gradient path.
    """

    def __init__(self, est: Any, name: str | None = None, n_features: int | None = None) -> None:
        require_sk_fitted(est)
        fitted = getattr(est, "n_features_in_", None)
        if fitted is None:  # a callable kernel: sklearn does not record the width; shape_fit_ has it for array input
            shape = tuple(getattr(est, "shape_fit_", ()))
            fitted = shape[1] if len(shape) == 2 else None
        if fitted is not None and n_features is not None and int(n_features) != int(fitted):
            raise ModelError(f"wrap: n_features={n_features} but the estimator was fitted on {fitted} features")
        if fitted is None and n_features is None:
            raise ModelError(f"wrap: cannot tell how many features {type(est).__name__} takes; pass n_features=")
        d = check_width(fitted if fitted is not None else n_features, name or type(est).__name__)
        self.est = est
        self.classes_ = np.asarray(est.classes_)
        self._d, self._c = d, int(self.classes_.size)
        if self._c < 2:
            raise ModelError(f"{type(est).__name__} knows a single class; a classifier needs at least two")
        self.name = name or type(est).__name__
        self.has_library_proba = _has_proba(est)

    def _library(self, method: Any, X: np.ndarray) -> Any:
        return call_sklearn(method, X, self.name)

    def decision_function(self, X: Any) -> np.ndarray:
        """The library's decision_function (its `decision_function_shape` applies)."""
        out: np.ndarray = np.asarray(self._library(self.est.decision_function, self._check_X(X)), dtype=np.float64)
        return out

    def ovo_decision(self, X: Any) -> np.ndarray:
        """The library's raw decision values: (n, 1) binary, (n, K(K-1)/2) one-vs-one multiclass."""
        X = self._check_X(X)
        if self._c == 2:
            return self.decision_function(X).reshape(-1, 1)
        if self.est.decision_function_shape == "ovo":
            return self.decision_function(X)
        # with "ovr" the public method returns the vote transform; the one-vs-one values behind it are
        # BaseLibSVM._decision_function's (private, but stable since sklearn 0.x; no mutation of the estimator)
        out: np.ndarray = np.asarray(self._library(self.est._decision_function, X), dtype=np.float64)
        return out

    def library_logits(self, X: Any) -> np.ndarray:
        """The vote logits computed from the library's decision values (binary: [0, f])."""
        f = self.ovo_decision(X)
        if self._c == 2:
            return np.hstack([np.zeros_like(f), f])
        return ovr_from_ovo(f, self._c, tie_break_of(self.est))

    def predict_proba(self, X: Any) -> np.ndarray:
        X = self._check_X(X)
        if self.has_library_proba:
            p = self._proba_checked(self._library(self.est.predict_proba, X), X.shape[0])
            return p
        return softmax_rows(self.library_logits(X))

    def predict(self, X: Any) -> np.ndarray:
        """The library's predict (one-vs-one vote), as class indices in `classes_` order."""
        X = self._check_X(X)
        return _label_indices(self.classes_, self._library(self.est.predict, X), display_name(self.name))


class TorchSVM(TorchCopy, WrappedSVM):
    """A fitted SVC/NuSVC with `torch_logits`: the decision function rebuilt in float64 torch (module docstring)."""

    def torch_decision(self, X: Any) -> np.ndarray:
        """The rebuilt raw decision values for X (numpy, no gradient), comparable with `ovo_decision`."""
        X = self._check_X(X)
        with torch.no_grad():
            out: np.ndarray = self.module.decision(torch.as_tensor(X)).numpy()
        return out

    def predict_proba(self, X: Any) -> np.ndarray:
        if self.has_library_proba:
            return super().predict_proba(X)
        X = self._check_X(X)
        with torch.no_grad():
            z = self.torch_logits(torch.as_tensor(X)).numpy()
        return softmax_rows(z)


def _probe(est: Any, d: int) -> np.ndarray:
    """Check points: up to 32 support vectors, each nudged, plus a seeded cloud at the support vectors' scale."""
    sv = _dense(est.support_vectors_)
    rng = np.random.default_rng(0)
    mu = sv.mean(axis=0) if sv.size else np.zeros(d)
    sd = sv.std(axis=0) + 1e-3 if sv.size else np.ones(d)
    pick = sv[rng.permutation(sv.shape[0])[:32]]
    pts: np.ndarray = np.vstack([pick + 0.1 * sd * rng.normal(size=pick.shape), mu + sd * rng.normal(size=(32, d))])
    return pts


def adapt_svm(est: Any, name: str | None = None, n_features: int | None = None,
              vote_temperature: float | None = VOTE_TEMPERATURE) -> Model:
    """TorchSVM when the rebuild reproduces decision_function on probe points, else WrappedSVM (black box) with the reason."""
    who = name or type(est).__name__
    try:
        require_sk_fitted(est)
        module = svm_module(est, vote_temperature)
        model = TorchSVM(est, module, name=name, n_features=n_features)
        P = _probe(est, model.n_features)
        ref = model.ovo_decision(P)
        err = float(np.abs(model.torch_decision(P) - ref).max() / (1.0 + np.abs(ref).max()))
        if not err <= CHECK_TOL:
            raise ModelError(f"the torch rebuild differs from decision_function by {err:.2g} (relative) on probe points")
        return model
    except (ModelError, AttributeError, TypeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        bb = WrappedSVM(est, name=name, n_features=n_features)
        bb.path_note = f"gradient path refused: {reason}"
        log.warning("%s: no gradient path, attacked as a black box (%s)", display_name(who), reason)
        return bb


def adapt(obj: Any, *, n_features: int | None = None, n_classes: int | None = None, name: str | None = None) -> Model:
    """The table's factory for SVC / NuSVC."""
    return adapt_svm(obj, name=name, n_features=n_features)


__all__ = ["KERNELS", "SVMModule", "TorchSVM", "WrappedSVM", "adapt", "adapt_svm", "ovr_from_ovo", "svm_module"]
