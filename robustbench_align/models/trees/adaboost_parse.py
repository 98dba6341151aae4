"""scikit-learn's `AdaBoostClassifier` (SAMME, decision-tree members) → a validated TreeEnsemble.

The semantics encoded (scikit-learn's `AdaBoostClassifier.decision_function` / `predict_proba`, SAMME,
the only algorithm since scikit-learn 1.6):

- member m (weight w_m = `estimator_weights_[m]`) votes for the class its tree predicts, the
  argmax of the leaf's stored `tree_.value` (ties to the lowest index, as `DecisionTreeClassifier.predict`);
  the vote is coded w_m for that class and -w_m/(K-1) for every other class, and the decision is
  Σ_m codes / W with W = Σ_m w_m;
- binary: decision = column 1 − column 0 = Σ_m ±2 w_m / W, class 1 iff decision > 0 and
  predict_proba = softmax([-decision, decision] / 2) = expit(decision): one output, link "logistic";
- multiclass: argmax(decision) (ties to the lowest index) and predict_proba = softmax(decision / (K-1)):
  K outputs holding decision / (K-1), link "softmax" (the positive scale leaves the argmax as it is).

Each member's leaf value is its code scaled as above (2/W binary, 1/(W (K-1)) multiclass), so the
ensemble's probabilities are the library's. Members compare float32(x) <= float64 threshold as every
scikit-learn tree does; thresholds are float32-floored (`sklearn_parse.float32_floor`, `strict=False`).
The library sums the codes before scaling, so at an exact vote tie (raw = 0, or two equal class sums)
the rounding of the two sums may differ; the exact attacks re-check every point with the model's
own predict (and retry with a margin guard), so such a tie cannot produce an unverified flip.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ...errors import ModelError
from ..base import Tree, TreeEnsemble
from .checks import check_tree_caps, probe_points
from .sklearn_parse import _sk_tree, quiet, require_sk_fitted

PROBA_TOL = 1e-9


def _member_tree(member: Any, w: float, W: float, k: int, classes: np.ndarray) -> Tree:
    """One decision-tree member as a Tree whose leaves hold its SAMME vote, scaled (see the module docstring)."""
    from sklearn.tree import DecisionTreeClassifier

    if not isinstance(member, DecisionTreeClassifier):
        raise ModelError(f"base estimator {type(member).__name__} is not a decision tree")
    if int(getattr(member, "n_outputs_", 1)) != 1 or not np.array_equal(np.asarray(member.classes_), classes):
        raise ModelError("a member tree knows other classes than the ensemble")
    t = member.tree_
    vote = np.argmax(np.asarray(t.value, dtype=np.float64)[:, 0, :k], axis=1)  # DecisionTreeClassifier.predict's argmax
    if k == 2:
        v = np.where(vote == 1, w, -w)[:, None] * (2.0 / W)
    else:
        code = np.where(vote[:, None] == np.arange(k)[None, :], w, -1 / (k - 1) * w)
        v = code / W / (k - 1)
    return _sk_tree(t, 1 if k == 2 else k, v)


def parse_sklearn_adaboost(est: Any) -> TreeEnsemble:
    """AdaBoostClassifier (SAMME) over decision trees as a sum of scaled vote trees; ModelError if refused."""
    from sklearn.ensemble import AdaBoostClassifier

    if not isinstance(est, AdaBoostClassifier):
        raise ModelError(f"parse_sklearn_adaboost: {type(est).__name__} is not an AdaBoostClassifier")
    require_sk_fitted(est)
    algorithm = str(getattr(est, "algorithm", "SAMME"))
    if algorithm not in ("SAMME", "deprecated"):
        raise ModelError(f"AdaBoost algorithm {algorithm!r} (only SAMME's weighted votes are supported)")
    classes = np.asarray(est.classes_)
    k = int(classes.size)
    d = int(est.n_features_in_)
    members = list(est.estimators_)
    weights = np.asarray(est.estimator_weights_, dtype=np.float64)
    W = float(weights.sum())
    if not members or not (np.isfinite(W) and W > 0) or not np.all(np.isfinite(weights)):
        raise ModelError(f"{type(est).__name__}: no members with positive weight")
    n_outputs = 1 if k == 2 else k
    trees = tuple(_member_tree(m, float(w), W, k, classes) for m, w in zip(members, weights, strict=False))
    import sklearn

    ens = TreeEnsemble(
        trees=trees, n_features=d, n_classes=k, n_outputs=n_outputs, strict=False, bias=np.zeros(n_outputs),
        combine="sum", link="logistic" if n_outputs == 1 else "softmax", source=f"sklearn.{type(est).__name__}",
        meta={"library": "scikit-learn", "library_version": sklearn.__version__, "algorithm": "SAMME",
              "raw_scale": 1.0 if k == 2 else 1.0 / (k - 1), "classes": [str(c) for c in classes]},
    ).validate()
    check_tree_caps(ens)
    _check(ens, est)
    return ens


def _check(ens: TreeEnsemble, est: Any) -> None:
    """Raw output (decision_function × raw_scale) and probabilities on float32 boundary probes, else ModelError."""
    who = type(est).__name__
    P = probe_points(ens.trees, ens.n_features)
    lib = np.asarray(quiet(est.decision_function, P), dtype=np.float64).reshape(P.shape[0], -1) * float(ens.meta["raw_scale"])
    dev = float(np.max(np.abs(ens.raw(P) - lib)))
    if not dev <= 1e-12 * (len(ens.trees) + 1):
        raise ModelError(f"{who}: the parsed votes differ from decision_function by {dev:.3g} on boundary probes; not supported")
    perr = float(np.max(np.abs(ens.predict_proba(P) - np.asarray(quiet(est.predict_proba, P), dtype=np.float64))))
    if not perr <= PROBA_TOL:
        raise ModelError(f"{who}: the parsed probabilities differ from predict_proba by {perr:.3g}; not supported")


__all__ = ["parse_sklearn_adaboost"]
