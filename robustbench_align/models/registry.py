"""The model registry: named specs as plain data, and `build(name, **overrides)`.

A spec is (family, estimator class path, default parameters, card, default flag). `build` returns
an unfitted sklearn-style estimator that also satisfies the Model contract once fitted. The specs
are the one source of truth: `default_models()` (the default leaderboard) and the classes that
persistence may instantiate from a saved manifest are derived from them. Adding a model family
is its estimator module plus one spec here.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from ..errors import ModelError


@dataclass(frozen=True)
class ModelSpec:
    """One registry entry: `cls` is the estimator's "module:Class" path, `params` its defaults here."""

    name: str
    family: str
    cls: str  # "module:Class"
    params: dict[str, Any] = field(default_factory=dict)
    card: dict[str, str] = field(default_factory=dict)
    default: bool = False  # part of the default leaderboard (`default_models()`)

    def estimator_class(self) -> type[Any]:
        """The estimator class `cls` names (imported on first use)."""
        mod, _, attr = self.cls.partition(":")
        est_cls: type[Any] = getattr(importlib.import_module(mod), attr)
        return est_cls


_MLP = "robustbench_align.models.mlp:MLP"
_GROK = "robustbench_align.models.grokalign:GrokAlignMLP"
_RFM = "robustbench_align.models.rfm:RFM"
_RFAM = "robustbench_align.models.rfm:RFAM"
_XGB = "robustbench_align.models.trees:XGBoostModel"
_RF = "robustbench_align.models.trees:RandomForestModel"
_GB = "robustbench_align.models.trees:GradientBoostingModel"

_SPECS: dict[str, ModelSpec] = {
    s.name: s
    for s in [
        ModelSpec(
            "mlp", "mlp", _MLP, {"hidden": [128, 128], "activation": "relu", "epochs": 100, "lr": 1e-3, "weight_decay": 1e-4},
            {"summary": "ReLU MLP, 2 hidden layers of 128, AdamW, cross-entropy, 100 epochs.", "reference": "baseline"},
            default=True,
        ),
        ModelSpec(
            "mlp-grokalign", "mlp-grokalign", _GROK,
            {"hidden": [128, 128], "activation": "relu", "epochs": 100, "lr": 1e-3, "weight_decay": 1e-4, "lam": 0.1, "offset": True},
            {
                "summary": "The same MLP trained with the GrokAlign Jacobian regulariser (lambda=0.1, with offset term).",
                "reference": "Walker et al., GrokAlign (arXiv 2506.12284); 'The Geometric Structure of Models Learning Sparse Data' (arXiv 2605.08464)",
            },
            default=True,
        ),
        ModelSpec(
            "rfm", "rfm", _RFM, {"alpha": 1.0, "bandwidth": 10.0, "iters": 5},
            {
                "summary": "Recursive Feature Machine: Laplace-Mahalanobis kernel ridge, AGOP updates from M=I, trace-normalised.",
                "reference": "Radhakrishnan et al., Science 383:1461 (2024)",
            },
            default=True,
        ),
        ModelSpec(
            "rfam", "rfam", _RFAM, {"alpha": 0.0, "bandwidth": 10.0, "iters": 5},
            {
                "summary": "Recursive Feature Alignment Machine: the RFM started at the centred data covariance (alpha=0).",
                "reference": "Walker et al., arXiv 2605.08464; code ThomasWalker1/RFAM",
            },
            default=True,
        ),
        ModelSpec(
            "xgb", "xgboost", _XGB, {"n_estimators": 50, "max_depth": 4, "learning_rate": 0.3},
            {"summary": "XGBoost, 50 rounds of depth-4 trees (hist).", "reference": "Chen & Guestrin, KDD 2016"},
            default=True,
        ),
        ModelSpec(
            "xgb-depth6", "xgboost", _XGB, {"n_estimators": 100, "max_depth": 6, "learning_rate": 0.3},
            {"summary": "Larger XGBoost: 100 rounds of depth-6 trees.", "reference": "Chen & Guestrin, KDD 2016"},
        ),
        ModelSpec(
            "rf", "random-forest", _RF, {"n_estimators": 30, "max_depth": 5},
            {"summary": "Random forest, 30 trees of depth <= 5 (scikit-learn).", "reference": "Breiman, Machine Learning 45 (2001)"},
            default=True,
        ),
        ModelSpec(
            "rf-large", "random-forest", _RF, {"n_estimators": 100, "max_depth": 8},
            {"summary": "Random forest, 100 trees of depth <= 8 (exact L2/L1 attacks get slow: raise attack_time_limit).",
             "reference": "Breiman, Machine Learning 45 (2001)"},
        ),
        ModelSpec(
            "gbdt", "gradient-boosting", _GB, {"n_estimators": 50, "max_depth": 3},
            {"summary": "Gradient boosting, 50 depth-3 trees (scikit-learn).", "reference": "Friedman, Annals of Statistics 29 (2001)"},
            default=True,
        ),
    ]
}

def list_models() -> list[str]:
    """Names of the registry's model specs."""
    return list(_SPECS)


def default_models() -> list[str]:
    """Names of the specs marked `default`, in registry order: the default leaderboard."""
    return [s.name for s in _SPECS.values() if s.default]


def get_spec(name: str) -> ModelSpec:
    """The spec called `name`; ModelError listing the valid names otherwise."""
    try:
        return _SPECS[name]
    except KeyError:
        raise ModelError(f"unknown model {name!r}; valid names: {', '.join(_SPECS)}") from None


def build(name: str, **overrides: Any) -> Any:
    """An unfitted estimator for registry entry `name`, with parameters overridden by keyword."""
    spec = get_spec(name)
    cls = spec.estimator_class()
    params = {**spec.params, **overrides}
    valid = set(cls().get_params()) if hasattr(cls, "get_params") else set(params)
    unknown = sorted(set(params) - valid)
    if unknown:
        raise ModelError(f"model {name!r} has no parameter(s) {', '.join(unknown)}; valid: {', '.join(sorted(valid))}")
    est = cls(**params)
    est.name = name
    est.family = spec.family
    return est


def describe_models() -> list[dict[str, Any]]:
    """One row per registry entry: name, family, parameters and card, for tables and reports."""
    return [
        {"name": s.name, "family": s.family, "params": dict(s.params), "summary": s.card.get("summary", ""), "reference": s.card.get("reference", "")}
        for s in _SPECS.values()
    ]
