"""The Model contract every downstream component talks to, the parsed tree ensemble, and `wrap()`.

A Model answers `predict_proba`/`predict` on numpy arrays and may expose two capabilities:
`torch_logits(x)` (differentiable outputs, for gradient attacks and Jacobian metrics) and
`tree_ensemble()` (a library-independent parse of a tree ensemble, for exact attacks).
`wrap()` turns a foreign object into a Model through the adapter table in `models.adapters`.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np

from ..errors import DataError, ModelError, first_line
from .constraints import Constraint, Rule, check_params

if TYPE_CHECKING:  # torch is only needed to spell the torch_logits capability's types
    import torch

MAX_FEATURES = 10_000_000  # a sanity bound on declared input widths (a probe row of this size is 80 MB)


def display_name(name: Any) -> str:
    """A model name as it appears in an error message: on one line (control characters escaped)."""
    s = str(name)
    return s if s.isprintable() else "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in s)


def check_features(X: Any, n_features: int, who: str = "model") -> np.ndarray:
    """Return X as a 2-D float64 array, or raise ModelError naming the width/finite problem."""
    who = display_name(who)
    try:
        if np.iscomplexobj(X):
            raise ModelError(f"{who}: X is complex; pass real-valued features")
        A = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ModelError):
            raise
        raise ModelError(f"{who}: X must be numeric, got {type(X).__name__} ({first_line(exc)}); convert it to a float array") from None
    if A.ndim == 1:
        A = A.reshape(1, -1)
    if A.ndim != 2:
        raise ModelError(f"{who}: X must be 2-D (n_samples, n_features), got shape {A.shape}")
    if A.shape[1] != n_features:
        raise ModelError(
            f"{who}: expects {n_features} features but X has {A.shape[1]}; pass data with the same columns the model was fitted on"
        )
    if not np.all(np.isfinite(A)):
        raise ModelError(f"{who}: X contains NaN or inf; impute or drop those rows first")
    return A


def check_labels(y: Any, n_samples: int, who: str = "fit") -> tuple[np.ndarray, int]:
    """Validate integer class labels 0..K-1; return (y as int64, K). Raises DataError."""
    who = display_name(who)
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n_samples:
        raise DataError(f"{who}: y must be 1-D with {n_samples} labels, got shape {y.shape}")
    if y.size == 0:
        raise DataError(f"{who}: no training rows; pass at least one row per class")
    if not np.issubdtype(y.dtype, np.integer):
        if np.issubdtype(y.dtype, np.floating) and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise DataError(f"{who}: labels must be integers 0..K-1; encode them first (load_dataset does this)")
    y = y.astype(np.int64)
    if y.min() < 0:
        raise DataError(f"{who}: labels must be integers 0..K-1, found {int(y.min())}")
    k = int(y.max()) + 1
    if np.unique(y).size < 2:
        raise DataError(f"{who}: only one class present in y; a classifier needs at least two")
    if n_samples < k:
        raise DataError(f"{who}: {n_samples} rows for {k} classes; need at least one row per class")
    return y, k


def check_training_data(X: Any, y: Any, who: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate a training set for `fit`: X 2-D, finite, numeric; y integer labels 0..K-1. Returns (X, y, K)."""
    try:
        shape = np.shape(X)
    except ValueError:  # ragged nested sequences
        shape = ()
    if len(shape) != 2:
        raise ModelError(f"{who}: X must be a 2-D array (n_samples, n_features), got shape {shape or 'ragged'}")
    X = check_features(X, shape[1], who=who)
    y, k = check_labels(y, X.shape[0], who=who)
    return X, y, k


def check_width(value: Any, who: str) -> int:
    """A declared input width (wrap's n_features=): an integer in 1..MAX_FEATURES, else ModelError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not 1 <= int(value) <= MAX_FEATURES:
        raise ModelError(f"{display_name(who)}: n_features must be an integer in 1..{MAX_FEATURES}, got {value!r}")
    return int(value)


def check_n_classes(value: Any, who: str) -> int:
    """A declared number of classes (wrap's n_classes=): an integer >= 2, else ModelError."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or int(value) < 2:
        raise ModelError(f"{display_name(who)}: n_classes must be an integer >= 2 (one output per class), got {value!r}")
    return int(value)


def softmax_rows(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax that also handles +inf logits (the mass goes to the +inf entries)."""
    z = np.asarray(z, dtype=np.float64)
    top = z.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(z - top)
    inf_rows = np.isposinf(top[:, 0])
    if inf_rows.any():
        e[inf_rows] = np.isposinf(z[inf_rows]).astype(np.float64)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def argmax_rows(z: np.ndarray) -> np.ndarray:
    """Column index of each row's maximum, ties to the lowest index (the decision rule of every Model)."""
    idx: np.ndarray = np.argmax(z, axis=1)
    return idx


class Model:
    """Base class of the contract. Subclasses implement `predict_proba`; the rest is derived.

    Optional capabilities are methods a subclass may define (typed by the `TorchLogits` and
    `HasTreeEnsemble` protocols below; `capabilities` lists the ones a model has):
    - `torch_logits(x: torch.Tensor) -> torch.Tensor` (differentiable, shape (n, n_classes));
    - `tree_ensemble() -> TreeEnsemble`.
    """

    name: str = "model"
    # why a stronger attack path was refused for this model (e.g. "exact path refused: categorical splits"), or None
    path_note: str | None = None

    # --- required -----------------------------------------------------------------
    @property
    def n_features(self) -> int:  # pragma: no cover - overridden
        """Input width d: predict/predict_proba take (n, d) arrays."""
        raise NotImplementedError

    @property
    def n_classes(self) -> int:  # pragma: no cover - overridden
        """Number of classes K >= 2 (columns of predict_proba, labels 0..K-1)."""
        raise NotImplementedError

    def predict_proba(self, X: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        """Class probabilities (n, K), float64, rows summing to 1; ModelError for a wrong width or NaN."""
        raise NotImplementedError

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class index with the highest probability (ties to the lowest index, as numpy/sklearn)."""
        return argmax_rows(self.predict_proba(X))

    # --- capabilities ---------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[str]:
        """"predict_proba" plus the optional capability methods this model defines."""
        caps = {"predict_proba"}
        for cap, method in (("torch_logits", "torch_logits"), ("tree_ensemble", "tree_ensemble"), ("linear", "linear_scores")):
            if callable(getattr(self, method, None)):
                caps.add(cap)
        return frozenset(caps)

    def has(self, capability: str) -> bool:
        """True when `capability` is in `capabilities`."""
        return capability in self.capabilities

    def _check_X(self, X: Any) -> np.ndarray:
        """X as a checked 2-D float64 array of this model's width (see check_features)."""
        return check_features(X, self.n_features, who=self.name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} d={self.n_features} c={self.n_classes}>"


class TorchLogits(Protocol):
    """The "torch_logits" capability: differentiable outputs of shape (n, n_classes) for a (n, n_features) tensor.

    Not declared on `Model` (it is optional): code that has checked the capability (`model.has("torch_logits")`,
    an attack's `requires`) says so with `cast(TorchLogits, model)`.
    """

    def torch_logits(self, x: torch.Tensor) -> torch.Tensor: ...


class HasTreeEnsemble(Protocol):
    """The "tree_ensemble" capability: the model's library-independent parse (see `TreeEnsemble`)."""

    def tree_ensemble(self) -> TreeEnsemble: ...


class FittedModel(Model):
    """The Model contract for sklearn-style estimators: widths come from the fitted attributes.

    Subclasses name the attribute whose presence means "fitted" in `_fitted_attr`, set
    `n_features_in_` and `n_classes_` in `fit`, and declare their hyperparameters' allowed values
    in `_param_constraints` (and cross-parameter `_param_rules`), which `_check_params`
    checks (see `models.constraints`).
    """

    _fitted_attr: str = "n_features_in_"
    _param_constraints: ClassVar[dict[str, Constraint]] = {}
    _param_rules: ClassVar[tuple[Rule, ...]] = ()

    n_features_in_: int
    n_classes_: int
    family: str | None
    saved_extra_: dict[str, Any]

    def _require_fitted(self) -> None:
        if not hasattr(self, self._fitted_attr):
            raise ModelError(f"{type(self).__name__} is not fitted; call fit(X, y) first")

    def _check_params(self) -> None:
        """Raise ModelError (one line) for a hyperparameter outside its declared constraint."""
        check_params(self)

    @property
    def n_features(self) -> int:
        self._require_fitted()
        return int(self.n_features_in_)

    @property
    def n_classes(self) -> int:
        self._require_fitted()
        return int(self.n_classes_)


class WrappedModel(Model):
    """A Model around a foreign object whose width and class count are fixed when it is wrapped (the adapters).

    Subclasses set `_d` (input width) and `_c` (number of classes) in their constructor.
    """

    _d: int
    _c: int

    @property
    def n_features(self) -> int:
        return self._d

    @property
    def n_classes(self) -> int:
        return self._c

    def _proba_checked(self, p: Any, n: int) -> np.ndarray:
        """The library's probabilities as float64 (n, n_classes); ModelError when it returned another shape."""
        out = np.asarray(p, dtype=np.float64)
        if out.shape != (n, self._c):
            raise ModelError(f"{display_name(self.name)}: predict_proba returned shape {out.shape}, expected {(n, self._c)}")
        return out


# ----------------------------------------------------------------------------------------
# Parsed tree ensembles
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tree:
    """One decision tree in array form. Node 0 is the root.

    feature[i] = -1 and left/right[i] = -1 mark a leaf. threshold has the ensemble's
    `threshold_dtype` (float32 unless stated) and is exact for its comparison rule (see
    TreeEnsemble.strict). value[i] is the leaf's output vector (length n_outputs, already scaled
    by any learning rate); zeros at internal nodes.
    """

    feature: np.ndarray  # int64 (n_nodes,)
    threshold: np.ndarray  # float32 or float64 (n_nodes,), the ensemble's threshold_dtype
    left: np.ndarray  # int64 (n_nodes,)
    right: np.ndarray  # int64 (n_nodes,)
    value: np.ndarray  # float64 (n_nodes, n_outputs)

    @property
    def n_nodes(self) -> int:
        return int(self.feature.shape[0])

    @property
    def is_leaf(self) -> np.ndarray:
        leaf: np.ndarray = self.left < 0
        return leaf

    def leaf_index(self, X32: np.ndarray, strict: bool) -> np.ndarray:
        """Node index of the leaf each row of X reaches (vectorised); X already cast to the threshold dtype."""
        node = np.zeros(X32.shape[0], dtype=np.int64)
        rows = np.arange(X32.shape[0])
        active = self.left[node] >= 0
        while active.any():
            n = node[active]
            xv = X32[rows[active], self.feature[n]]
            thr = self.threshold[n]
            go_left = (xv < thr) if strict else (xv <= thr)
            node[active] = np.where(go_left, self.left[n], self.right[n])
            active = self.left[node] >= 0
        return node


@dataclass(frozen=True)
class TreeEnsemble:
    """A library-independent tree ensemble.

    raw(x) = bias + agg_t value_t(leaf_t(x)) with agg = sum ("sum", boosting) or mean ("mean", forests).
    Comparisons are done on x cast to `threshold_dtype`: float32(x) for XGBoost and scikit-learn's
    forests/GBDT, the float64 input itself for LightGBM ("float64"); left iff x < thr when `strict`
    (XGBoost) else x <= thr (scikit-learn, LightGBM). Thresholds are stored in that dtype.
    Decision: with n_outputs == 1, class 1 iff raw > 0 (binary margin); otherwise argmax(raw),
    ties to the lowest class index. `link` maps raw to probabilities: "logistic" (binary margin),
    "softmax" (multiclass margins) or "identity" (forests: raw already holds class probabilities).
    """

    trees: tuple[Tree, ...]
    n_features: int
    n_classes: int
    n_outputs: int
    strict: bool
    bias: np.ndarray
    combine: Literal["sum", "mean"] = "sum"
    link: Literal["logistic", "softmax", "identity"] = "softmax"
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    threshold_dtype: Literal["float32", "float64"] = "float32"

    @property
    def dtype(self) -> type[np.floating[Any]]:
        """The numpy type inputs are cast to before comparing (np.float32 or np.float64)."""
        return np.float64 if self.threshold_dtype == "float64" else np.float32

    def cast(self, X: np.ndarray) -> np.ndarray:
        """X as the comparison dtype (the libraries' own cast of the input)."""
        out: np.ndarray = np.asarray(X, dtype=self.dtype)
        return out

    def leaves(self, X: np.ndarray) -> np.ndarray:
        X32 = self.cast(X)
        return np.stack([t.leaf_index(X32, self.strict) for t in self.trees], axis=1)

    def raw(self, X: np.ndarray) -> np.ndarray:
        X32 = self.cast(X)
        if X32.ndim == 1:
            X32 = X32[None, :]
        acc = np.zeros((X32.shape[0], self.n_outputs), dtype=np.float64)
        for t in self.trees:
            acc += t.value[t.leaf_index(X32, self.strict)]
        if self.combine == "mean":
            acc /= len(self.trees)
        out: np.ndarray = acc + np.asarray(self.bias, dtype=np.float64)
        return out

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        r = self.raw(X)
        if self.link == "logistic":
            p1 = 1.0 / (1.0 + np.exp(-r[:, 0]))
            return np.stack([1.0 - p1, p1], axis=1)
        if self.link == "softmax":
            return softmax_rows(r)
        return r

    def predict(self, X: np.ndarray) -> np.ndarray:
        r = self.raw(X)
        if self.n_outputs == 1:
            return (r[:, 0] > 0).astype(np.int64)
        return argmax_rows(r)

    def validate(self) -> TreeEnsemble:
        """Check structural sanity (indices in range, no cycles, finite thresholds, float64 ones if declared); raise ModelError."""
        if self.threshold_dtype not in ("float32", "float64"):
            raise ModelError(f"threshold_dtype must be 'float32' or 'float64', got {self.threshold_dtype!r}")
        for ti, t in enumerate(self.trees):
            if self.threshold_dtype == "float64" and t.threshold.dtype != np.float64:
                raise ModelError(f"tree {ti}: thresholds are {t.threshold.dtype}, the ensemble declares float64")
            n = t.n_nodes
            if n == 0:
                raise ModelError(f"tree {ti} has no nodes; the model file is malformed")
            internal = t.left >= 0
            if np.any((t.right >= 0) != internal):
                raise ModelError(f"tree {ti}: a node has exactly one child; the model file is malformed")
            ch = np.concatenate([t.left[internal], t.right[internal]])
            if ch.size and (ch.min() < 1 or ch.max() >= n):
                raise ModelError(f"tree {ti}: child index out of range [1, {n}); the model file is malformed")
            if ch.size != np.unique(ch).size:
                raise ModelError(f"tree {ti}: a node has two parents (cycle or shared subtree); the model file is malformed")
            if np.any(~np.isfinite(t.threshold[internal])):
                raise ModelError(f"tree {ti}: NaN/inf split threshold; the model file is malformed")
            f = t.feature[internal]
            if f.size and (f.min() < 0 or f.max() >= self.n_features):
                raise ModelError(f"tree {ti}: split feature out of range [0, {self.n_features}); the model file is malformed")
            # reachability from the root without revisits (ch unique + count == n-1 and all reached)
            seen = np.zeros(n, dtype=bool)
            stack = [0]
            while stack:
                i = stack.pop()
                if seen[i]:
                    raise ModelError(f"tree {ti}: cycle through node {i}; the model file is malformed")
                seen[i] = True
                if t.left[i] >= 0:
                    stack.extend((int(t.left[i]), int(t.right[i])))
            if not np.all(np.isfinite(t.value[t.is_leaf & seen])):
                raise ModelError(f"tree {ti}: NaN/inf leaf value; the model file is malformed")
        return self


# ----------------------------------------------------------------------------------------
# wrap(): the adapter table lives in models.adapters (imported lazily: it imports this module)
# ----------------------------------------------------------------------------------------
def wrap(obj: Any, *, n_features: int | None = None, n_classes: int | None = None, name: str | None = None) -> Model:
    """Turn a torch module, sklearn classifier, XGBoost model or predict_proba callable into a Model.

    This is how a new model joins the suite: tree ensembles get the exact-attack capability,
    torch modules the gradient capability, everything else is attacked as a black box. The
    first matching entry of the adapter table decides (`models.adapters.register_adapter` adds one).
    """
    from .adapters import wrap as wrap_with_table

    return wrap_with_table(obj, n_features=n_features, n_classes=n_classes, name=name)


_MOVED = {  # names that used to be defined here, now in their adapter module
    "TorchModel": "robustbench_align.models.adapters.torch",
    "ProbaModel": "robustbench_align.models.adapters.callable",
}


def __getattr__(name: str) -> Any:
    """Lazy access to the adapters' Model classes under their old address (`from models.base import TorchModel`)."""
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__: Sequence[str] = [
    "MAX_FEATURES",
    "FittedModel",
    "HasTreeEnsemble",
    "Model",
    "TorchLogits",
    "Tree",
    "TreeEnsemble",
    "WrappedModel",
    "argmax_rows",
    "check_features",
    "check_labels",
    "check_n_classes",
    "check_training_data",
    "check_width",
    "display_name",
    "softmax_rows",
    "wrap",
]
