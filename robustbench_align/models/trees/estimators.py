"""The registry's tree-ensemble estimators: XGBoost, random forest (or extra trees), gradient boosting.

Three sklearn-style estimators satisfy the Model contract with the library's own
`predict_proba`/`predict` and expose `tree_ensemble()`, the parsed, validated `TreeEnsemble` the
exact attacks solve against. Ties at the decision boundary can differ between the parse and the
library (sklearn GBDT predicts class 1 at raw == 0, XGBoost compares a float32 probability with
0.5); `predict` is always the library's, and attacks re-check candidates with it.
Saved state is pickle-free: XGBoost JSON, or skops with an allow-list of scikit-learn types.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator

from ...errors import DataError, ModelError, first_line
from ..base import FittedModel, TreeEnsemble, check_training_data
from ..constraints import AnyOf, Boolean, Check, Constraint, Integer, Options, Real, Rule, is_int, optional
from .ensemble_json import tree_ensemble_from_json
from .sklearn_parse import parse_sklearn
from .xgboost_json import XGB_OBJECTIVES
from .xgboost_parse import import_xgboost, parse_xgboost, xgb_margin, xgb_objective

XGB_FILE = "xgboost.json"  # not "model.json": that name is the persistence manifest
SKOPS_FILE = "estimator.skops"
META_FILE = "trees.json"

_MAX_FEATURES = AnyOf(Options("sqrt", "log2", None), Integer(low=1), Real(0, 1, closed="right", integers=False, noun="a fraction"))
_RANDOM_STATE = optional(Integer())


class _TreeEstimator(BaseEstimator, FittedModel):  # type: ignore[misc]  # sklearn is untyped
    """Shared fit checks, Model contract and cached tree_ensemble() of the three tree families."""

    _fitted_attr = "estimator_"

    name = "trees"

    estimator_: Any
    classes_: np.ndarray

    def _fit_library(self, X: np.ndarray, y: np.ndarray, k: int) -> Any:  # pragma: no cover - overridden
        """The fitted library model for checked (X, y) with k classes."""
        raise NotImplementedError

    def _parse(self) -> TreeEnsemble:  # pragma: no cover - overridden
        """The fitted library model as a validated TreeEnsemble."""
        raise NotImplementedError

    def fit(self, X: Any, y: Any) -> _TreeEstimator:
        """Fit the library model on (X, y); labels are integers 0..K-1, every class present."""
        self._check_params()
        who = type(self).__name__
        X, y, k = check_training_data(X, y, f"{who}.fit")
        missing = sorted(set(range(k)) - set(np.unique(y).tolist()))
        if missing:
            raise DataError(f"{who}.fit: class(es) {missing[:5]} of 0..{k - 1} have no training rows; re-encode labels as 0..K-1 without gaps")
        self.__dict__.pop("_ensemble", None)
        self.estimator_ = self._fit_library(X, y, k)
        self.n_features_in_ = int(X.shape[1])
        self.n_classes_ = int(k)
        self.classes_ = np.arange(k)
        return self

    def tree_ensemble(self) -> TreeEnsemble:
        """The parsed, validated ensemble of the fitted model (parsed once, then cached)."""
        self._require_fitted()
        ens = self.__dict__.get("_ensemble")
        if ens is None:
            ens = self._parse()
            self.__dict__["_ensemble"] = ens
        return ens

    def _write_meta(self, directory: Path, library: str, version: str) -> None:
        """Write the widths and the library version next to the library's own file (`trees.json`)."""
        meta = {"n_features": self.n_features, "n_classes": self.n_classes, "library": library, "library_version": version}
        (Path(directory) / META_FILE).write_text(json.dumps(meta))

    @classmethod
    def _read_meta(cls, directory: Path) -> tuple[int, int]:
        """(n_features, n_classes) from `trees.json`; ModelError if missing or invalid."""
        path = Path(directory) / META_FILE
        if not path.exists():
            raise ModelError(f"{str(directory)!r}: {META_FILE} is missing; re-save the model")
        try:
            meta = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{path}: not valid JSON ({exc})") from None
        d: Any = meta.get("n_features") if isinstance(meta, dict) else None
        k: Any = meta.get("n_classes") if isinstance(meta, dict) else None
        if not (is_int(d) and d >= 1 and is_int(k) and k >= 2):
            raise ModelError(f"{path}: n_features/n_classes missing or invalid; re-save the model")
        return int(d), int(k)

    @classmethod
    def _new(cls, params: dict[str, Any]) -> Any:
        """An unfitted estimator from saved parameters, checked like fit checks them."""
        try:
            est = cls(**params)
        except TypeError as exc:
            raise ModelError(f"parameters do not match {cls.__name__} ({first_line(exc, with_type=False)})") from None
        est._check_params()
        return est

    def _restore(self, library_model: Any, d: int, k: int) -> None:
        """Install a loaded library model as the fitted state."""
        self.estimator_ = library_model
        self.n_features_in_ = d
        self.n_classes_ = k
        self.classes_ = np.arange(k)


def _is_xgb_params(v: Any) -> bool:
    """A dict of parameter names to JSON values (they go into XGBoost's own configuration)."""
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        return False
    json.dumps(v)  # TypeError/ValueError: not JSON (Check treats it as refused)
    return True


class XGBoostModel(_TreeEstimator):
    """XGBoost classifier (boosted trees, or a random forest with rf=True) with the exact-attack parse.

    `learning_rate=None` means the library default (0.3 boosting, 1.0 for rf=True); `None` for
    subsample/colsample_bynode/min_child_weight/reg_lambda likewise. `num_parallel_tree` grows
    that many trees per boosting round; `rf=True` fits an XGBRFClassifier with `n_estimators`
    trees in one round. `xgb_params` passes further XGBoost parameters verbatim.
    """

    name = "xgb"

    _param_constraints: ClassVar[dict[str, Constraint]] = {
        "n_estimators": Integer(low=1),
        "max_depth": Integer(low=1),
        "learning_rate": optional(Real(0, closed="neither")),
        "rf": Boolean(),
        "num_parallel_tree": Integer(low=1),
        "subsample": optional(Real(0, 1, closed="right")),
        "colsample_bynode": optional(Real(0, 1, closed="right")),
        "min_child_weight": optional(Real(0)),
        "reg_lambda": optional(Real(0)),
        "tree_method": Options("hist", "approx", "exact"),
        "xgb_params": optional(Check(_is_xgb_params, text="a dict of XGBoost parameter names to JSON values (numbers, strings, lists)")),
        "n_jobs": Integer(low=1),
        "random_state": _RANDOM_STATE,
    }
    _param_rules: ClassVar[tuple[Rule, ...]] = (
        Rule(lambda p: bool(p["rf"]) and p["num_parallel_tree"] != 1, "with rf=True the forest has n_estimators trees; leave num_parallel_tree=1"),
        Rule(lambda p: bool((p["xgb_params"] or {}).get("enable_categorical")),
             "categorical splits are not supported; one-hot encode instead of enable_categorical"),
    )

    def __init__(
        self,
        n_estimators: int = 100,
        max_depth: int = 4,
        learning_rate: float | None = 0.3,
        rf: bool = False,
        num_parallel_tree: int = 1,
        subsample: float | None = None,
        colsample_bynode: float | None = None,
        min_child_weight: float | None = None,
        reg_lambda: float | None = None,
        tree_method: str = "hist",
        xgb_params: dict[str, Any] | None = None,
        n_jobs: int = 1,
        random_state: int | None = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.rf = rf
        self.num_parallel_tree = num_parallel_tree
        self.subsample = subsample
        self.colsample_bynode = colsample_bynode
        self.min_child_weight = min_child_weight
        self.reg_lambda = reg_lambda
        self.tree_method = tree_method
        self.xgb_params = xgb_params
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _make_classifier(self) -> Any:
        """The unfitted XGBClassifier/XGBRFClassifier these parameters describe."""
        xgb = import_xgboost()
        kw: dict[str, Any] = {
            "n_estimators": int(self.n_estimators),
            "max_depth": int(self.max_depth),
            "tree_method": self.tree_method,
            "n_jobs": int(self.n_jobs),
            "random_state": None if self.random_state is None else int(self.random_state),
        }
        for key in ("learning_rate", "subsample", "colsample_bynode", "min_child_weight", "reg_lambda"):
            v = getattr(self, key)
            if v is not None:
                kw[key] = float(v)
        if not self.rf and self.num_parallel_tree != 1:
            kw["num_parallel_tree"] = int(self.num_parallel_tree)
        kw.update(self.xgb_params or {})
        cls = xgb.XGBRFClassifier if self.rf else xgb.XGBClassifier
        try:
            return cls(**kw)
        except TypeError as exc:
            raise ModelError(f"{type(self).__name__}: invalid XGBoost parameters ({first_line(exc, with_type=False)})") from None

    def _fit_library(self, X: np.ndarray, y: np.ndarray, k: int) -> Any:
        clf = self._make_classifier()
        try:
            clf.fit(X, y)
        except Exception as exc:  # noqa: BLE001 - xgboost reports bad parameters as XGBoostError/ValueError
            raise ModelError(f"{type(self).__name__}.fit: XGBoost failed ({first_line(exc, with_type=False)})") from None
        _xgb_objective_ok(clf)
        return clf

    def _parse(self) -> TreeEnsemble:
        return parse_xgboost(self.estimator_)

    def predict_proba(self, X: Any) -> np.ndarray:
        """The XGBClassifier's own probabilities, as float64."""
        self._require_fitted()
        return np.asarray(self.estimator_.predict_proba(self._check_X(X)), dtype=np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """The XGBClassifier's own predictions (class indices)."""
        self._require_fitted()
        return np.asarray(self.estimator_.predict(self._check_X(X))).astype(np.int64)

    def decision_function(self, X: Any) -> np.ndarray:
        """The library's margins, shape (n, 1) for binary and (n, K) for multiclass."""
        self._require_fitted()
        X = self._check_X(X)
        return xgb_margin(self.estimator_.get_booster(), self.estimator_, X)

    def _save_state(self, directory: Path) -> None:
        """Write the booster as XGBoost JSON (`xgboost.json`) and the shapes (`trees.json`)."""
        self._require_fitted()
        self.estimator_.save_model(str(Path(directory) / XGB_FILE))
        self._write_meta(directory, "xgboost", import_xgboost().__version__)

    @classmethod
    def _load_state(cls, directory: Path, params: dict[str, Any]) -> XGBoostModel:
        """Rebuild from `xgboost.json` after a structural check of the JSON (never pickle)."""
        directory = Path(directory)
        path = directory / XGB_FILE
        if not path.exists():
            raise ModelError(f"{str(directory)!r}: {XGB_FILE} is missing; re-save the model")
        est: XGBoostModel = cls._new(params)
        d, k = cls._read_meta(directory)
        try:
            doc = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelError(f"{path}: not valid JSON ({exc})") from None
        ens = tree_ensemble_from_json(doc)
        if ens.n_features != d or ens.n_classes != k:
            raise ModelError(f"{path}: the model has {ens.n_features} features/{ens.n_classes} classes, {META_FILE} says {d}/{k}")
        clf = est._make_classifier()
        try:
            clf.load_model(str(path))
        except Exception as exc:  # noqa: BLE001 - XGBoostError and friends, one line
            raise ModelError(f"{path}: XGBoost could not load it ({first_line(exc, with_type=False)})") from None
        est._restore(clf, d, k)
        return est


def _xgb_objective_ok(clf: Any) -> None:
    """ModelError unless the fitted classifier's objective is one the parse supports."""
    objective, _ = xgb_objective(clf.get_booster())
    if objective not in XGB_OBJECTIVES:
        raise ModelError(f"XGBoost objective {objective!r} is not supported; use one of {', '.join(XGB_OBJECTIVES)}")


class _SklearnTreeEstimator(_TreeEstimator):
    """Shared predictions and skops persistence of the scikit-learn tree families."""

    _library_classes: tuple[str, ...] = ()

    def predict_proba(self, X: Any) -> np.ndarray:
        """The scikit-learn estimator's own probabilities."""
        self._require_fitted()
        return np.asarray(self.estimator_.predict_proba(self._check_X(X)), dtype=np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """The scikit-learn estimator's own predictions (labels are already 0..K-1)."""
        self._require_fitted()
        return np.asarray(self.estimator_.predict(self._check_X(X))).astype(np.int64)

    def _parse(self) -> TreeEnsemble:
        return parse_sklearn(self.estimator_)

    def _save_state(self, directory: Path) -> None:
        """Write the fitted estimator with skops (`estimator.skops`) and the shapes (`trees.json`)."""
        import sklearn
        import skops.io as sio

        self._require_fitted()
        sio.dump(self.estimator_, str(Path(directory) / SKOPS_FILE))
        self._write_meta(directory, "scikit-learn", sklearn.__version__)

    @classmethod
    def _load_state(cls, directory: Path, params: dict[str, Any]) -> Any:
        """Rebuild from `estimator.skops`, trusting only scikit-learn and numpy types."""
        try:
            import skops.io as sio
        except ImportError:  # pragma: no cover
            raise ModelError("loading a scikit-learn model needs skops: pip install skops") from None
        directory = Path(directory)
        path = directory / SKOPS_FILE
        if not path.exists():
            raise ModelError(f"{str(directory)!r}: {SKOPS_FILE} is missing; re-save the model")
        from ..persistence import skops_trusted_types

        est = cls._new(params)
        d, k = cls._read_meta(directory)
        untrusted = skops_trusted_types(path)  # only scikit-learn classes; functions such as numpy.load are refused
        try:
            lib = sio.load(str(path), trusted=list(untrusted))
        except Exception as exc:  # noqa: BLE001 - a corrupted or planted file, one line
            raise ModelError(f"{path}: skops could not load it ({first_line(exc)})") from None
        lib_cls = f"{type(lib).__module__.split('.')[0]}.{type(lib).__name__}"
        if lib_cls not in cls._library_classes:
            raise ModelError(f"{path}: holds a {type(lib).__name__}, expected one of {', '.join(cls._library_classes)}")
        if int(getattr(lib, "n_features_in_", -1)) != d or int(getattr(lib, "n_classes_", -1)) != k:
            raise ModelError(f"{path}: the estimator's shape does not match {META_FILE}; re-save the model")
        est._restore(lib, d, k)
        return est


class RandomForestModel(_SklearnTreeEstimator):
    """scikit-learn random forest (or extremely randomised trees with extra_trees=True) with the exact-attack parse."""

    name = "rf"
    _library_classes = ("sklearn.RandomForestClassifier", "sklearn.ExtraTreesClassifier")

    _param_constraints: ClassVar[dict[str, Constraint]] = {
        "n_estimators": Integer(low=1),
        "max_depth": optional(Integer(low=1)),
        "min_samples_leaf": Integer(low=1),
        "max_features": _MAX_FEATURES,
        "criterion": Options("gini", "entropy", "log_loss"),
        "bootstrap": Boolean(),
        "extra_trees": Boolean(),
        "class_weight": Options(None, "balanced", "balanced_subsample"),
        "n_jobs": Integer(low=1),
        "random_state": _RANDOM_STATE,
    }

    def __init__(
        self,
        n_estimators: int = 100,
        max_depth: int | None = None,
        min_samples_leaf: int = 1,
        max_features: str | float | int | None = "sqrt",
        criterion: str = "gini",
        bootstrap: bool = True,
        extra_trees: bool = False,
        class_weight: str | None = None,
        n_jobs: int = 1,
        random_state: int | None = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.criterion = criterion
        self.bootstrap = bootstrap
        self.extra_trees = extra_trees
        self.class_weight = class_weight
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _fit_library(self, X: np.ndarray, y: np.ndarray, k: int) -> Any:
        from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

        cls = ExtraTreesClassifier if self.extra_trees else RandomForestClassifier
        return cls(
            n_estimators=int(self.n_estimators), max_depth=self.max_depth, min_samples_leaf=int(self.min_samples_leaf),
            max_features=self.max_features, criterion=self.criterion, bootstrap=bool(self.bootstrap),
            class_weight=self.class_weight, n_jobs=int(self.n_jobs), random_state=self.random_state,
        ).fit(X, y)


class GradientBoostingModel(_SklearnTreeEstimator):
    """scikit-learn gradient boosting (log-loss or exponential loss) with the exact-attack parse."""

    name = "gbdt"
    _library_classes = ("sklearn.GradientBoostingClassifier",)

    _param_constraints: ClassVar[dict[str, Constraint]] = {
        "n_estimators": Integer(low=1),
        "max_depth": Integer(low=1),
        "learning_rate": Real(0, closed="neither"),
        "subsample": Real(0, 1, closed="right"),
        "min_samples_leaf": Integer(low=1),
        "max_features": _MAX_FEATURES,
        "loss": Options("log_loss", "exponential"),
        "random_state": _RANDOM_STATE,
    }

    def __init__(
        self,
        n_estimators: int = 100,
        max_depth: int = 3,
        learning_rate: float = 0.1,
        subsample: float = 1.0,
        min_samples_leaf: int = 1,
        max_features: str | float | int | None = None,
        loss: str = "log_loss",
        random_state: int | None = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.loss = loss
        self.random_state = random_state

    def _fit_library(self, X: np.ndarray, y: np.ndarray, k: int) -> Any:
        from sklearn.ensemble import GradientBoostingClassifier

        if self.loss == "exponential" and k > 2:
            raise ModelError(f"{type(self).__name__}: loss='exponential' is for two classes, got {k}; use loss='log_loss'")
        return GradientBoostingClassifier(
            n_estimators=int(self.n_estimators), max_depth=int(self.max_depth), learning_rate=float(self.learning_rate),
            subsample=float(self.subsample), min_samples_leaf=int(self.min_samples_leaf), max_features=self.max_features,
            loss=self.loss, random_state=self.random_state,
        ).fit(X, y)

    def decision_function(self, X: Any) -> np.ndarray:
        """The library's raw predictions, shape (n, 1) for binary and (n, K) for multiclass."""
        self._require_fitted()
        X = self._check_X(X)
        return np.asarray(self.estimator_.decision_function(X), dtype=np.float64).reshape(X.shape[0], -1)


__all__ = ["META_FILE", "SKOPS_FILE", "XGB_FILE", "GradientBoostingModel", "RandomForestModel", "XGBoostModel"]
