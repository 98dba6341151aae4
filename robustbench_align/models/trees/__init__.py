"""Tree ensembles: the registry's estimators and the library-independent parse behind `tree_ensemble()`.

- `estimators`: XGBoostModel, RandomForestModel, GradientBoostingModel (registry families);
- `xgboost_json`, `xgboost_parse`: XGBoost model JSON / live XGBoost objects → TreeEnsemble;
- `sklearn_parse`: fitted scikit-learn tree classifiers → TreeEnsemble;
- `ensemble_json`: the library-independent TreeEnsemble JSON format;
- `checks`: probe rows on split boundaries, the measured intercept, reachability.

Wrapping foreign objects (a fitted XGBClassifier, a RandomForestClassifier, ...) is the adapters'
job (`models.adapters`); their classes stay importable from here under the old names.
"""
from __future__ import annotations

import importlib
from typing import Any

from .checks import probe_points
from .ensemble_json import tree_ensemble_from_json, tree_ensemble_to_json
from .estimators import GradientBoostingModel, RandomForestModel, XGBoostModel
from .sklearn_parse import float32_floor, parse_sklearn, parse_sklearn_forest, parse_sklearn_gbdt
from .xgboost_parse import parse_xgboost

_ADAPTER_NAMES = {  # importing them eagerly would be an import cycle (the adapters import the parsers)
    "WrappedXGBoost": "robustbench_align.models.adapters.xgboost",
    "wrap_xgboost": "robustbench_align.models.adapters.xgboost",
    "WrappedSklearn": "robustbench_align.models.adapters.sklearn",
    "WrappedSklearnTrees": "robustbench_align.models.adapters.sklearn",
    "wrap_sklearn": "robustbench_align.models.adapters.sklearn",
}


def __getattr__(name: str) -> Any:
    """The adapters' tree wrappers under their old address (`from models.trees import WrappedXGBoost`)."""
    if name in _ADAPTER_NAMES:
        return getattr(importlib.import_module(_ADAPTER_NAMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GradientBoostingModel",
    "RandomForestModel",
    "WrappedSklearn",
    "WrappedSklearnTrees",
    "WrappedXGBoost",
    "XGBoostModel",
    "float32_floor",
    "parse_sklearn",
    "parse_sklearn_forest",
    "parse_sklearn_gbdt",
    "parse_xgboost",
    "probe_points",
    "tree_ensemble_from_json",
    "tree_ensemble_to_json",
    "wrap_sklearn",
    "wrap_xgboost",
]
