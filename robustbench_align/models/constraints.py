"""Declarative hyperparameter constraints of the registry estimators (scikit-learn's `_parameter_constraints` idea).

An estimator class states its parameters' allowed values as data,

    _param_constraints = {"n_estimators": Integer(low=1), "max_depth": optional(Integer(low=1)), ...}
    _param_rules = (Rule(lambda p: p["rf"] and p["num_parallel_tree"] != 1, "with rf=True ..."),)

and one shared function, `check_params`, checks them (in declaration order, then the
cross-parameter rules) on fit and on load, raising a one-line ModelError that names the parameter
and the allowed values: "<Class>: <name> must be <allowed values>, got <value>".
The attribute is not called `_parameter_constraints` because scikit-learn reads that name
(`BaseEstimator._validate_params`, `check_estimator`) and expects its own constraint objects.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import ModelError


def is_int(v: Any) -> bool:
    """An integer (Python or numpy), not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """A finite real number (Python or numpy), not a bool."""
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and math.isfinite(float(v))


def _fmt(x: float) -> str:
    """An interval bound as written in messages: 0, 1, 0.5, 1e-06."""
    return f"{x:g}"


def join_phrases(phrases: list[str]) -> str:
    """'a', 'a or b', 'a, b or c': the allowed values as one phrase."""
    if len(phrases) <= 1:
        return "".join(phrases)
    return f"{', '.join(phrases[:-1])} or {phrases[-1]}"


class Constraint:
    """The allowed values of one parameter: `accepts(value)` and the phrases that name them."""

    text: str | None = None  # overrides the generated description

    def accepts(self, value: Any) -> bool:  # pragma: no cover - overridden
        """True when `value` is allowed."""
        raise NotImplementedError

    def _phrases(self) -> list[str]:  # pragma: no cover - overridden
        """The generated alternatives ("an integer >= 1", "'hist'", ...)."""
        raise NotImplementedError

    def phrases(self) -> list[str]:
        """The alternatives this constraint allows, for `join_phrases` (the `text` override if set)."""
        return [self.text] if self.text else self._phrases()

    def describe(self) -> str:
        """The allowed values as one phrase, as it follows "must be" in the error message."""
        return join_phrases(self.phrases())


@dataclass(frozen=True)
class Integer(Constraint):
    """An integer (not a bool) in low..high (both inclusive, either open-ended when None)."""

    low: int | None = None
    high: int | None = None
    text: str | None = None

    def accepts(self, value: Any) -> bool:
        return is_int(value) and (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def _phrases(self) -> list[str]:
        if self.low is not None and self.high is not None:
            return [f"an integer in {self.low}..{self.high}"]
        if self.low is not None:
            return [f"an integer >= {self.low}"]
        if self.high is not None:
            return [f"an integer <= {self.high}"]
        return ["an integer"]


@dataclass(frozen=True)
class Real(Constraint):
    """A finite real number in an interval; `closed` says which ends belong to it (as scikit-learn's Interval).

    integers=False refuses int values (a fraction such as max_features=0.5, where 5 means a count).
    """

    low: float | None = None
    high: float | None = None
    closed: Literal["both", "left", "right", "neither"] = "both"
    integers: bool = True
    noun: str = "a number"
    text: str | None = None

    def accepts(self, value: Any) -> bool:
        if not is_number(value) or (not self.integers and is_int(value)):
            return False
        v = float(value)
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.low is not None and not (v >= self.low if left else v > self.low):
            return False
        return self.high is None or (v <= self.high if right else v < self.high)

    def _phrases(self) -> list[str]:
        left = self.closed in ("both", "left")
        right = self.closed in ("both", "right")
        if self.low is not None and self.high is not None:
            return [f"{self.noun} in {'[' if left else '('}{_fmt(self.low)}, {_fmt(self.high)}{']' if right else ')'}"]
        if self.low is not None:
            if self.low == 0 and not left and self.noun == "a number":
                return ["a positive number"]
            return [f"{self.noun} {'>=' if left else '>'} {_fmt(self.low)}"]
        if self.high is not None:
            return [f"{self.noun} {'<=' if right else '<'} {_fmt(self.high)}"]
        return [self.noun]


class Options(Constraint):
    """One of the listed values (strings compare by value, None by identity)."""

    def __init__(self, *values: Any, text: str | None = None) -> None:
        self.values = values
        self.text = text

    def accepts(self, value: Any) -> bool:
        return any(value is o if o is None else (isinstance(value, type(o)) and value == o) for o in self.values)

    def _phrases(self) -> list[str]:
        return [repr(o) for o in self.values]

    def __repr__(self) -> str:
        return f"Options{self.values!r}"


@dataclass(frozen=True)
class Boolean(Constraint):
    """True or False (Python or numpy bool)."""

    text: str | None = None

    def accepts(self, value: Any) -> bool:
        return isinstance(value, (bool, np.bool_))

    def _phrases(self) -> list[str]:
        return ["True", "False"]


@dataclass(frozen=True)
class Check(Constraint):
    """A value accepted by `predicate`, described by `text` (for structured values: lists, dicts)."""

    predicate: Callable[[Any], bool]
    text: str | None = None

    def accepts(self, value: Any) -> bool:
        try:
            return bool(self.predicate(value))
        except (TypeError, ValueError):
            return False

    def _phrases(self) -> list[str]:
        return ["a valid value"]


class AnyOf(Constraint):
    """A value accepted by any of the member constraints."""

    def __init__(self, *members: Constraint, text: str | None = None) -> None:
        self.members = members
        self.text = text

    def accepts(self, value: Any) -> bool:
        return any(m.accepts(value) for m in self.members)

    def _phrases(self) -> list[str]:
        return [p for m in self.members for p in m.phrases()]

    def __repr__(self) -> str:
        return f"AnyOf{self.members!r}"


def optional(constraint: Constraint) -> Constraint:
    """`constraint` or None."""
    return AnyOf(constraint, Options(None))


@dataclass(frozen=True)
class Rule:
    """A constraint between parameters: `violated(params)` true means ModelError with `message`."""

    violated: Callable[[Mapping[str, Any]], bool]
    message: str


def check_params(est: Any) -> None:
    """Check `est`'s parameters against its class's `_param_constraints` and `_param_rules`.

    Raises ModelError "<Class>: <name> must be <allowed values>, got <value>" (one line) for the
    first parameter, in declaration order, that is not allowed; then the rules' messages.
    """
    from .base import display_name  # control characters escaped: a value's repr cannot break the line (lazy: base imports us)

    cls = type(est)
    who = cls.__name__
    constraints: Mapping[str, Constraint] = getattr(cls, "_param_constraints", {})
    params = {name: getattr(est, name) for name in constraints}
    for name, constraint in constraints.items():
        if not constraint.accepts(params[name]):
            raise ModelError(f"{who}: {name} must be {constraint.describe()}, got {display_name(repr(params[name]))}")
    for rule in getattr(cls, "_param_rules", ()):
        if rule.violated(params):
            raise ModelError(f"{who}: {rule.message}")


__all__ = [
    "AnyOf", "Boolean", "Check", "Constraint", "Integer", "Options", "Real", "Rule",
    "check_params", "is_int", "is_number", "join_phrases", "optional",
]
