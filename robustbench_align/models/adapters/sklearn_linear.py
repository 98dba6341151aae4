"""Adapter for fitted scikit-learn linear classifiers: exact linear scores, hence `torch_logits` and the `linear` capability.

Any estimator built on sklearn's `LinearClassifierMixin` (LogisticRegression[CV], LinearSVC, SGDClassifier,
RidgeClassifier[CV], Perceptron, PassiveAggressiveClassifier, LinearDiscriminantAnalysis, ...) decides with the
scores s = X @ coef_.T + intercept_: with coef_ of shape (1, d) (binary) class 1 iff s > 0 (a tie goes to
class 0); otherwise the argmax of s, ties to the lowest class index (`LinearClassifierMixin.predict`, which
both multinomial and one-vs-rest LogisticRegression use). Here those scores become K class scores:

- binary: W = [0, w], b = [0, b], so the logits are [0, s] and argmax (ties to the lowest index) is the
  library's rule, ties included;
- multiclass: W = coef_, b = intercept_.

`linear_scores()` returns (W, b) (the "linear" capability, for the closed-form exact attack). `torch_logits`
returns the library's own decision_function values in float64 (bit for bit, so its argmax is the library's
decision even at last-ulp ties) with the gradient of x @ W.T + b.

`predict` is the library's own, mapped to class indices 0..K-1 (`classes_` order). `predict_proba` is the
library's own where the estimator has one; estimators without it (LinearSVC, RidgeClassifier, SGDClassifier
with the hinge loss, Perceptron) get the softmax of the class scores (a monotone map of the decision
function; not a calibrated probability). softmax(torch_logits) equals predict_proba for binary and
multinomial models; one-vs-rest normalised probabilities (SGDClassifier(loss="log_loss") with 3+ classes)
differ, while the decision agrees. When the fitted attributes do not reproduce the library's
decision_function/predict on probe points (a subclass that overrides them, a multilabel fit), the
estimator is wrapped as a black box instead (or refused when it has no predict_proba).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ...errors import ModelError
from ..base import Model, WrappedModel, argmax_rows, display_name, softmax_rows
from ..trees.sklearn_parse import quiet, require_sk_fitted
from .sklearn import call_sklearn

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_PROBE_ELEMENTS = 2_000_000  # at most this many probe-matrix entries for the consistency check


class HasLinearScores(Protocol):
    """The "linear" capability: the model decides by argmax (ties to the lowest index) of X @ W.T + b.

    `linear_scores()` returns (W, b): float64 arrays of shapes (n_classes, n_features) and (n_classes,).
    """

    def linear_scores(self) -> tuple[np.ndarray, np.ndarray]: ...


def linear_parameters(est: Any) -> tuple[np.ndarray, np.ndarray]:
    """(W, b) with one row per class from a fitted estimator's coef_/intercept_ (binary: W = [0, w], b = [0, b]); ModelError otherwise."""
    who = type(est).__name__
    coef = getattr(est, "coef_", None)
    classes = getattr(est, "classes_", None)
    if coef is None or classes is None:
        raise ModelError(f"{who}: no coef_/classes_; fit it first")
    if hasattr(coef, "toarray"):  # after est.sparsify()
        coef = coef.toarray()
    coef = np.asarray(coef, dtype=np.float64)
    if coef.ndim == 1:  # RidgeClassifier keeps a binary coef_ as (d,)
        coef = coef.reshape(1, -1)
    classes = np.asarray(classes)
    if classes.ndim != 1 or coef.ndim != 2:
        raise ModelError(f"{who}: has several outputs (coef_ of shape {coef.shape}); only single-output classifiers are supported")
    try:
        intercept = np.broadcast_to(np.asarray(getattr(est, "intercept_", 0.0), dtype=np.float64).reshape(-1), (coef.shape[0],))
    except ValueError:
        raise ModelError(f"{who}: intercept_ does not match coef_ of shape {coef.shape}") from None
    k = int(classes.size)
    if k < 2:
        raise ModelError(f"{who} knows a single class; a classifier needs at least two")
    if k == 2 and coef.shape[0] == 1:
        W = np.vstack([np.zeros_like(coef), coef])
        b = np.array([0.0, float(intercept[0])])
    elif coef.shape[0] == k and k > 2:
        W, b = coef.copy(), np.array(intercept, dtype=np.float64)
    else:
        raise ModelError(f"{who}: coef_ of shape {coef.shape} does not match {k} classes")
    if not (np.all(np.isfinite(W)) and np.all(np.isfinite(b))):
        raise ModelError(f"{who}: coef_/intercept_ contain NaN or inf")
    return W, b


def _label_indices(classes: np.ndarray, labels: Any, who: str) -> np.ndarray:
    """Index of each predicted label in `classes` (the predict_proba column order); ModelError for unknown labels."""
    from .sklearn import _label_indices as label_indices

    out: np.ndarray = label_indices(classes, labels, who)
    return out


class WrappedSklearnLinear(WrappedModel):
    """A fitted scikit-learn linear classifier: the library's predictions, `torch_logits` and `linear_scores()`."""

    def __init__(self, est: Any, name: str | None = None, n_features: int | None = None, n_classes: int | None = None) -> None:
        require_sk_fitted(est)
        self.est = est
        self._W, self._b = linear_parameters(est)
        self.classes_ = np.asarray(est.classes_)
        self._c, self._d = int(self._W.shape[0]), int(self._W.shape[1])
        if n_features is not None and int(n_features) != self._d:
            raise ModelError(f"wrap: n_features={n_features} but the estimator was fitted on {self._d} features")
        if n_classes is not None and int(n_classes) != self._c:
            raise ModelError(f"wrap: n_classes={n_classes} but the estimator knows {self._c} classes")
        self.has_library_proba = callable(getattr(est, "predict_proba", None))
        self.name = name or type(est).__name__
        self._torch: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # --- the linear capability ---------------------------------------------------------
    def linear_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """(W, b), float64 copies: class scores X @ W.T + b, decided by argmax with ties to the lowest index."""
        return self._W.copy(), self._b.copy()

    def scores(self, X: Any) -> np.ndarray:
        """The library's class scores (n, K) in float64: decision_function (binary: [0, decision_function])."""
        X = self._check_X(X)
        dec = np.asarray(self._library(self.est.decision_function, X), dtype=np.float64)
        s: np.ndarray = np.column_stack([np.zeros(X.shape[0]), dec.reshape(-1)]) if self._c == 2 else dec.reshape(X.shape[0], self._c)
        return s

    def torch_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The class scores as differentiable float64 logits (binary: [0, s]).

        The values are the library's own decision_function, bit for bit (so argmax decides like its
        predict, ties and last-ulp roundings included); the gradient is that of x @ W.T + b, attached by
        (lin - lin.detach()) + scores, whose first term is exactly zero.
        """
        import torch

        key = str(x.device)
        if key not in self._torch:
            self._torch[key] = (torch.as_tensor(self._W, dtype=torch.float64, device=x.device),
                                torch.as_tensor(self._b, dtype=torch.float64, device=x.device))
        W, b = self._torch[key]
        x64 = x.to(torch.float64)
        lin: torch.Tensor = x64 @ W.T + b
        if x64.ndim != 2 or x64.shape[1] != self._d or not bool(torch.isfinite(x64).all()):
            return lin
        lib = torch.as_tensor(self.scores(x64.detach().cpu().numpy()), dtype=torch.float64, device=x.device)
        out: torch.Tensor = (lin - lin.detach()) + lib
        return out

    # --- the Model contract ------------------------------------------------------------
    def _library(self, method: Any, X: np.ndarray) -> Any:
        return call_sklearn(method, X, self.name, hint="; keep features within float32 range")

    def predict_proba(self, X: Any) -> np.ndarray:
        """The library's predict_proba; softmax of the class scores for estimators without one."""
        X = self._check_X(X)
        if not self.has_library_proba:
            return softmax_rows(self.scores(X))
        p = self._proba_checked(self._library(self.est.predict_proba, X), X.shape[0])
        return p

    def predict(self, X: Any) -> np.ndarray:
        """The library's predict, as class indices 0..K-1."""
        X = self._check_X(X)
        if X.shape[0] == 0:
            return np.zeros(0, dtype=np.int64)
        return _label_indices(self.classes_, self._library(self.est.predict, X), display_name(self.name))


def consistent(model: WrappedSklearnLinear, seed: int = 0) -> bool:
    """True when coef_/intercept_ reproduce the library's decision_function and predict on probe points."""
    d = model.n_features
    rows = max(1, min(16, _PROBE_ELEMENTS // max(d, 1)))
    P = np.random.default_rng(seed).standard_normal((rows, d))
    P[0] = 0.0
    try:
        lib = np.asarray(quiet(model.est.decision_function, P), dtype=np.float64)
        pred = np.asarray(quiet(model.est.predict, P))
    except Exception as exc:  # noqa: BLE001 - any failure means "not the plain linear rule": wrapped as a black box instead
        log.debug("%s: probe failed (%s)", model.name, exc)
        return False
    s = P @ model._W.T + model._b
    mine = s[:, 1] if model.n_classes == 2 else s
    if lib.shape != mine.shape or pred.shape != (rows,):
        return False
    mag = np.abs(P) @ np.abs(model._W).T + np.abs(model._b)
    tol = 1e-9 * (mag[:, 1] if model.n_classes == 2 else mag) + 1e-12
    if not np.all(np.abs(lib - mine) <= tol):
        return False
    try:
        idx = _label_indices(model.classes_, pred, model.name)
    except ModelError:
        return False
    srt = np.sort(s, axis=1)
    clear = srt[:, -1] - srt[:, -2] > 1e-9 * mag.max(axis=1) + 1e-12  # no near-tie: the rule decides unambiguously
    return bool(np.all(idx[clear] == argmax_rows(s)[clear]))


def adapt(obj: Any, *, n_features: int | None = None, n_classes: int | None = None, name: str | None = None) -> Model:
    """The table's factory for sklearn linear classifiers (falls back to the black-box sklearn adapter when the rule does not check out)."""
    from .sklearn import wrap_sklearn

    has_proba = callable(getattr(obj, "predict_proba", None))
    try:
        model = WrappedSklearnLinear(obj, name=name, n_features=n_features, n_classes=n_classes)
    except ModelError as exc:
        if not has_proba:
            raise
        log.info("%s: not a plain linear rule (%s); wrapped as a black box", type(obj).__name__, exc)
        return wrap_sklearn(obj, name=name, n_features=n_features)  # raises "not fitted" itself
    if consistent(model):
        return model
    if not has_proba:
        raise ModelError(f"{type(obj).__name__}: its decision_function/predict do not follow coef_/intercept_ and it has no predict_proba; "
                         "wrap a predict_proba callable with n_features=")
    log.info("%s: decision_function/predict do not follow coef_/intercept_; wrapped as a black box", type(obj).__name__)

    return wrap_sklearn(obj, name=name, n_features=n_features)


__all__ = ["HasLinearScores", "WrappedSklearnLinear", "adapt", "consistent", "linear_parameters"]
