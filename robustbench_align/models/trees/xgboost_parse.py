"""Live XGBoost objects (XGBClassifier, XGBRFClassifier, classification Booster) → a validated TreeEnsemble.

The structure comes from the booster's JSON (`xgboost_json`); the intercept is measured against
the library's margins on probe rows around every threshold (`checks.measure_bias`), which also
checks the parse. The sklearn API predicts with the best iteration only, and so does the parse.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from typing import Any

import numpy as np

from ...errors import ModelError
from ..base import TreeEnsemble
from .checks import EPS32, measure_bias, probe_points
from .xgboost_json import parse_xgboost_doc

log = logging.getLogger(__name__)


def import_xgboost() -> Any:
    """The xgboost module, or ModelError naming the package to install (xgboost is untyped here: Any)."""
    try:
        import xgboost
    except ImportError:  # pragma: no cover
        raise ModelError("XGBoost models need xgboost: pip install xgboost-cpu") from None
    return xgboost


def xgb_parts(obj: Any) -> tuple[Any, Any, int | None]:
    """(booster, classifier or None, iterations used by predict or None) of an XGBoost object."""
    xgb = import_xgboost()
    if isinstance(obj, xgb.XGBModel):
        if not isinstance(obj, xgb.XGBClassifier):
            raise ModelError(f"{type(obj).__name__} is not a classifier; wrap an XGBClassifier, XGBRFClassifier or a classification Booster")
        if not obj.__sklearn_is_fitted__():
            raise ModelError(f"{type(obj).__name__} is not fitted; fit it first")
        missing = getattr(obj, "missing", np.nan)
        if missing is not None and not (isinstance(missing, (float, np.floating)) and math.isnan(float(missing))):
            raise ModelError(
                f"{type(obj).__name__} treats the value {missing!r} as missing, which routes it by default_left; "
                "only missing=nan (and finite inputs) is supported"
            )
        booster = obj.get_booster()
        try:
            n_iter: int | None = int(obj.best_iteration) + 1  # the sklearn API predicts with the best iteration
        except AttributeError:
            n_iter = None
        return booster, obj, n_iter
    if isinstance(obj, xgb.Booster):
        try:
            rounds = obj.num_boosted_rounds()
        except xgb.core.XGBoostError:
            rounds = 0
        if rounds == 0:
            raise ModelError("the XGBoost Booster has no trees; train it first (xgboost.train) or load a model")
        return obj, None, None
    raise ModelError(f"cannot read a {type(obj).__name__} as an XGBoost model; pass an XGBClassifier or a Booster")


def xgb_objective(booster: Any) -> tuple[str, int]:
    """(objective name, number of classes) from the booster's configuration."""
    cfg = json.loads(booster.save_config())
    learner = cfg["learner"]
    objective = str(learner["objective"]["name"])
    k = int(learner["learner_model_param"].get("num_class", "0"))
    return objective, (k if objective.startswith("multi:") else 2)


def xgb_margin(booster: Any, clf: Any, X: np.ndarray) -> np.ndarray:
    """The library's margins (n, 1) or (n, K); through the classifier when there is one (best iteration)."""
    if clf is not None:
        m = clf.predict(X, output_margin=True)
    else:
        m = booster.inplace_predict(X, predict_type="margin", validate_features=False)
    return np.asarray(m, dtype=np.float64).reshape(X.shape[0], -1)


def parse_xgboost(obj: Any) -> TreeEnsemble:
    """Parse an XGBClassifier/XGBRFClassifier or classification Booster into a validated TreeEnsemble.

    The intercept is measured against the library's margins on probe rows around every threshold
    and must be constant there (within float32 summation error), which also checks the parse.
    """
    booster, clf, n_iter = xgb_parts(obj)
    doc = json.loads(bytearray(booster.save_raw("json")))
    xgb = import_xgboost()
    source = f"xgboost.{type(obj).__name__}"
    ens = parse_xgboost_doc(doc, n_iterations=n_iter, source=source)
    P = probe_points(ens.trees, ens.n_features)
    bias = measure_bias(ens, P, xgb_margin(booster, clf, P), f"parse_xgboost({type(obj).__name__})", rel=EPS32)
    gap = float(np.abs(bias - ens.bias).max())
    if gap > 1e-5:
        log.debug("parse_xgboost: measured intercept differs from base_score by %.3g (objective %s)", gap, ens.meta["objective"])
    meta = {**ens.meta, "library_version": xgb.__version__, "base_score_bias": [float(b) for b in ens.bias]}
    return dataclasses.replace(ens, bias=bias, meta=meta).validate()


__all__ = ["import_xgboost", "parse_xgboost", "xgb_margin", "xgb_objective", "xgb_parts"]
