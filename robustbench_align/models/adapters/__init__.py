"""The adapter table behind `wrap()`: which foreign object becomes which Model.

Each entry is (name, match, factory). `wrap(obj)` tries the entries in order and the first whose
`match` accepts `obj` builds the Model: `factory(obj, n_features=, n_classes=, name=)`. A match is

- a class name string "package.ClassName": true when a class in type(obj)'s MRO is called
  ClassName and is defined in that top-level package ("torch.Module", "sklearn.Pipeline"), or a
  bare package "package" (any class of the MRO defined there). Checking names, not classes, means
  importing `wrap` never imports torch, xgboost, lightgbm, ...;
- a type: isinstance(obj, type);
- any other callable: a predicate obj -> bool.

A factory is a callable or a "module:attr" string, imported only when its entry matches.
Adding a framework is one adapter module plus one `register_adapter` line below (or a call
from user code); specific entries come before the duck-typed fallbacks (`fallback=True`), so a
new adapter registered without `before=` is still tried before "has predict_proba"/"is callable".
"""
from __future__ import annotations

import builtins
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from ...errors import ModelError
from ..base import Model


class AdapterFactory(Protocol):
    """Builds a Model from a matched object; n_features/n_classes/name are wrap()'s keywords."""

    def __call__(self, obj: Any, *, n_features: int | None, n_classes: int | None, name: str | None) -> Model: ...


Match = type[Any] | str | Callable[[Any], bool]


def _names_match(obj: Any, spec: str) -> bool:
    """True when a class of type(obj)'s MRO is defined in top-level package `spec` ("pkg") and named as `spec` says ("pkg.Class")."""
    package, _, cls_name = spec.partition(".")
    return any(
        str(getattr(cls, "__module__", "")).split(".")[0] == package and (not cls_name or cls.__name__ == cls_name) for cls in type(obj).__mro__
    )


@dataclass(frozen=True)
class AdapterEntry:
    """One row of the table: `matches(obj)` decides, `build(obj, ...)` makes the Model."""

    name: str
    match: Match
    factory: AdapterFactory | str
    fallback: bool = False

    def matches(self, obj: Any) -> bool:
        """Whether this entry handles `obj` (see the module docstring for the kinds of match)."""
        m = self.match
        if isinstance(m, str):
            return _names_match(obj, m)
        if isinstance(m, type):
            return isinstance(obj, m)
        return bool(m(obj))

    def build(self, obj: Any, *, n_features: int | None, n_classes: int | None, name: str | None) -> Model:
        """The Model for `obj`, importing a lazy "module:attr" factory first."""
        factory = self.factory
        if isinstance(factory, str):
            module, _, attr = factory.partition(":")
            factory = getattr(importlib.import_module(module), attr)
        return factory(obj, n_features=n_features, n_classes=n_classes, name=name)


_TABLE: list[AdapterEntry] = []


def register_adapter(match: Match, factory: AdapterFactory | str, *, name: str, before: str | None = None, fallback: bool = False) -> None:
    """Add an entry to the table used by `wrap()`.

    `match` is a type, a "package.ClassName" string or a predicate; `factory(obj, *, n_features,
    n_classes, name) -> Model` (or a lazy "module:attr" path). The entry goes before the entry
    called `before`, else before the first fallback entry (else last when `fallback=True`).
    Raises ModelError for a name already in the table or an unknown `before`.
    """
    if any(e.name == name for e in _TABLE):
        raise ModelError(f"register_adapter: an adapter named {name!r} exists already; pick another name or unregister_adapter({name!r})")
    entry = AdapterEntry(name=name, match=match, factory=factory, fallback=fallback)
    if before is not None:
        names = [e.name for e in _TABLE]
        if before not in names:
            raise ModelError(f"register_adapter: no adapter named {before!r}; known: {', '.join(names)}")
        _TABLE.insert(names.index(before), entry)
    elif fallback:
        _TABLE.append(entry)
    else:
        first_fallback = next((i for i, e in enumerate(_TABLE) if e.fallback), len(_TABLE))
        _TABLE.insert(first_fallback, entry)


def unregister_adapter(name: str) -> None:
    """Remove the entry called `name` (ModelError if there is none)."""
    for i, e in enumerate(_TABLE):
        if e.name == name:
            del _TABLE[i]
            return
    raise ModelError(f"unregister_adapter: no adapter named {name!r}")


def list_adapters() -> list[str]:
    """Names of the table's entries, in the order wrap() tries them."""
    return [e.name for e in _TABLE]


def find_adapter(obj: Any) -> AdapterEntry | None:
    """The first entry whose match accepts `obj`, or None."""
    return next((e for e in _TABLE if e.matches(obj)), None)


def wrap(obj: Any, *, n_features: int | None = None, n_classes: int | None = None, name: str | None = None) -> Model:
    """`obj` as a Model, built by the first matching adapter (see the module docstring); ModelError if none matches."""
    entry = find_adapter(obj)
    if entry is None:
        raise ModelError(
            f"wrap: cannot wrap a {type(obj).__name__}; pass a torch nn.Module, an sklearn classifier, "
            "an XGBClassifier/Booster or a predict_proba callable"
        )
    return entry.build(obj, n_features=n_features, n_classes=n_classes, name=None if name is None else str(name))


def _already_a_model(obj: Any, *, n_features: int | None, n_classes: int | None, name: str | None) -> Model:
    """A Model is used as it is (its own name and widths)."""
    model: Model = obj
    return model


def _has_predict_proba(obj: Any) -> bool:
    """Duck-typed fallback: anything with a predict_proba method is treated like an sklearn classifier."""
    return hasattr(obj, "predict_proba")


# The table, in the order wrap() tries it. Optional libraries are matched by class name and their
# adapter module is imported only on a match. (`builtins.callable`: importing the submodule
# `adapters.callable` binds the name `callable` in this package's namespace.)
register_adapter(Model, _already_a_model, name="model")
register_adapter("torch.Module", "robustbench_align.models.adapters.torch:adapt", name="torch")
register_adapter("xgboost", "robustbench_align.models.adapters.xgboost:adapt", name="xgboost")
register_adapter("catboost", "robustbench_align.models.adapters.catboost:adapt", name="catboost")
register_adapter("sklearn.MLPClassifier", "robustbench_align.models.adapters.sklearn_mlp:adapt", name="sklearn-mlp")
register_adapter("sklearn.SVC", "robustbench_align.models.adapters.sklearn_svm:adapt", name="sklearn-svc")
register_adapter("sklearn.NuSVC", "robustbench_align.models.adapters.sklearn_svm:adapt", name="sklearn-nusvc")
register_adapter("sklearn.Pipeline", "robustbench_align.models.adapters.pipeline:adapt", name="sklearn-pipeline")
register_adapter("onnx.ModelProto", "robustbench_align.models.adapters.onnx:adapt", name="onnx")
register_adapter("sklearn", "robustbench_align.models.adapters.sklearn:adapt", name="sklearn")
register_adapter("lightgbm", "robustbench_align.models.adapters.lightgbm:adapt", name="lightgbm", before="sklearn")
register_adapter("sklearn.LinearClassifierMixin", "robustbench_align.models.adapters.sklearn_linear:adapt", name="sklearn-linear", before="sklearn")
register_adapter(_has_predict_proba, "robustbench_align.models.adapters.sklearn:adapt", name="predict_proba", fallback=True)
register_adapter(builtins.callable, "robustbench_align.models.adapters.callable:adapt", name="callable", fallback=True)


__all__ = ["AdapterEntry", "AdapterFactory", "Match", "find_adapter", "list_adapters", "register_adapter", "unregister_adapter", "wrap"]
