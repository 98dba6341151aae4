"""What a benchmark run evaluates: the Plan (models × datasets × threat models × seeds), its defaults,
its validation, and loading it from a TOML file.

Validation happens before anything runs, so a bad entry fails as one ConfigError line naming it
and nothing is written to the store.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RBAError, first_line
from .job import Job

SEED_MAX = 2**32 - 1  # the seed range load_dataset and the estimators accept

DEFAULT_DATASETS = ["breast_cancer", "wine", "digits", "sparse_parity", "xor", "synthetic"]
DEFAULT_THREATS = ["linf", "l2"]
# 50 points of one seed: the gradient ensemble's cost per run hardly grows with the point count (its
# iterations dominate), so points narrow the intervals far more cheaply than seeds; exact tree attacks
# cost per point. The cold default run stays within 10 minutes on 2 cores.
DEFAULT_POINTS = 50
# Points per chunk job: a cell with a larger sample is evaluated (and stored, and resumed) chunk by
# chunk, so memory is bounded by the chunk, not by the test set.
DEFAULT_CHUNK_POINTS = 500


def _default_models() -> list[str]:
    """The registry models marked as part of the default leaderboard."""
    from ..models.registry import default_models

    return default_models()


@dataclass
class Plan:
    """What to evaluate. `points` test points per dataset (a fixed seeded sample; 0 = all)."""

    models: list[str] = field(default_factory=_default_models)
    datasets: list[str] = field(default_factory=lambda: list(DEFAULT_DATASETS))
    threats: list[str] = field(default_factory=lambda: list(DEFAULT_THREATS))
    seeds: list[int] = field(default_factory=lambda: [0])
    points: int = DEFAULT_POINTS
    attack_time_limit: float = 300.0  # a safety net only: exact attacks stop on their work budgets
    attack_effort: str = "default"
    certify: str = "auto"
    model_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    dataset_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    chunk_points: int = DEFAULT_CHUNK_POINTS

    def jobs(self, cache_dir: str | None) -> list[Job]:
        """One Job per (seed, dataset, model) cell, in that nesting order; a cell whose sample exceeds
        `chunk_points` becomes one job per chunk (the dataset is loaded to count its test points)."""
        n_test: dict[tuple[str, int], int] = {}

        def test_points(d: str, s: int) -> int:
            if (d, s) not in n_test:
                from ..data.registry import load_dataset

                try:
                    n_test[(d, s)] = int(load_dataset(d, seed=s, **self.dataset_params.get(d, {})).X_test.shape[0])
                except RBAError:  # the job records the failure itself
                    n_test[(d, s)] = 0
            return n_test[(d, s)]

        digests: dict[str, str | None] = {}

        def digest(d: str) -> str | None:
            if d not in digests:
                from ..data.registry import source_digest

                digests[d] = source_digest(d, **self.dataset_params.get(d, {}))
            return digests[d]

        out: list[Job] = []
        for s in self.seeds:
            for d in self.datasets:
                for m in self.models:
                    job = Job(
                        model=m, dataset=d, seed=s, threats=list(self.threats), points=self.points,
                        attack_time_limit=self.attack_time_limit, attack_effort=self.attack_effort, certify=self.certify,
                        model_params=dict(self.model_params.get(m, {})), dataset_params=dict(self.dataset_params.get(d, {})),
                        cache_dir=cache_dir, chunk_size=self.chunk_points, data_sha256=digest(d),
                    )
                    small = 0 < self.points <= self.chunk_points or self.chunk_points <= 0
                    out.extend([job] if small else job.chunks(test_points(d, s)))
        return out

    def validate(self) -> Plan:
        """Check every entry before anything runs; ConfigError (one line) naming the first bad value."""
        from ..attacks.registry import EFFORTS, get_threat_model
        from ..data.registry import FAMILIES, list_datasets
        from ..models.registry import get_spec

        for key in ("models", "datasets", "threats", "seeds"):
            value = getattr(self, key)
            if not isinstance(value, list) or not value:
                raise ConfigError(f"plan: {key} must be a non-empty list, got {value!r}")
        for m in self.models:
            try:
                get_spec(m)
            except RBAError as exc:
                raise ConfigError(f"plan: {exc}") from None
        known = set(list_datasets())
        for d in self.datasets:
            family, sep, arg = str(d).partition(":")
            if d not in known and not (sep and family in FAMILIES and arg.strip()):
                raise ConfigError(
                    f"unknown dataset {d!r} in plan; valid: {', '.join(sorted(known))}, uci121:<name>, csv:<path>, parquet:<path>"
                )
        try:  # canonical names, so "LINF" and "linf" are one threat model in the store
            self.threats = [get_threat_model(t).name for t in self.threats]
        except RBAError as exc:
            raise ConfigError(f"plan: {exc}") from None
        seeds: list[Any] = self.seeds  # Any: a plan built in Python is not type-checked at run time
        for s in seeds:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= SEED_MAX:
                raise ConfigError(f"plan: seeds must be integers in 0..{SEED_MAX}, got {s!r}")
        points: Any = self.points
        if isinstance(points, bool) or not isinstance(points, int) or points < 0:
            raise ConfigError(f"plan: points must be an integer >= 0 (0 = every test point), got {points!r}")
        chunk: Any = self.chunk_points
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
            raise ConfigError(f"plan: chunk_points must be an integer >= 0 (points per chunk job; 0 = no chunks), got {chunk!r}")
        t: Any = self.attack_time_limit
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ConfigError(f"plan: attack_time_limit must be a finite number of seconds > 0, got {t!r}")
        if self.attack_effort not in EFFORTS:
            raise ConfigError(f"plan: attack_effort must be one of {', '.join(EFFORTS)}, got {self.attack_effort!r}")
        from ..certify.api import check_method

        try:
            self.certify = check_method(self.certify)
        except ConfigError as exc:
            raise ConfigError(f"plan: certify: {exc}") from None
        for key in ("model_params", "dataset_params"):
            table = getattr(self, key)
            if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
                raise ConfigError(f"plan: {key!r} must be a table of tables (name -> parameters)")
        for m in self.model_params:
            try:
                get_spec(m)
            except RBAError as exc:
                raise ConfigError(f"plan: model_params: {exc}") from None
        return self


_PLAN_TYPES: dict[str, Any] = {
    "models": (list, str), "datasets": (list, str), "threats": (list, str), "seeds": (list, int),
    "points": int, "attack_time_limit": (int, float), "attack_effort": str, "certify": (str, bool),
    "model_params": dict, "dataset_params": dict, "chunk_points": int,
}


def plan_from_dict(doc: Any, base: Plan | None = None, source: str = "config") -> Plan:
    """Build a Plan from a TOML/dict document, refusing unknown keys and wrong types."""
    plan = base or Plan()
    if isinstance(doc, dict) and "plan" in doc:
        extra = [k for k in doc if k != "plan"]
        if extra:
            raise ConfigError(f"{source}: unknown key {extra[0]!r} next to [plan]; put every setting inside [plan]")
        doc = doc["plan"]
        if not isinstance(doc, dict):
            raise ConfigError(f"{source}: [plan] must be a table of plan settings, got {type(doc).__name__}")
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a table of plan settings")
    doc = dict(doc)
    for key, value in doc.items():
        if key not in _PLAN_TYPES:
            raise ConfigError(f"{source}: unknown key {key!r}; valid keys: {', '.join(_PLAN_TYPES)}")
        want = _PLAN_TYPES[key]
        if isinstance(want, tuple) and want[0] is list:
            if not isinstance(value, list) or not all(isinstance(v, want[1]) and not isinstance(v, bool) for v in value):
                raise ConfigError(f"{source}: {key!r} must be a list of {want[1].__name__}, got {value!r}")
        elif want is dict:
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise ConfigError(f"{source}: {key!r} must be a table of tables (name -> parameters)")
        else:
            types = want if isinstance(want, tuple) else (want,)
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise ConfigError(f"{source}: {key!r} must be {' or '.join(t.__name__ for t in types)}, got {type(value).__name__}")
        setattr(plan, key, value)
    return plan


def load_plan(path: str | os.PathLike | None = None, *, quick: bool = False, full: bool = False) -> Plan:
    """The default plan, or the plan in a TOML file; `quick` shrinks it for smoke runs, `full` uses every test point."""
    import tomllib

    plan = Plan()
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} is not a regular file")
        try:
            doc = tomllib.loads(p.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError, OSError) as exc:
            raise ConfigError(f"{p.name!r}: not valid TOML ({first_line(exc, with_type=False)})") from None
        plan = plan_from_dict(doc, plan, source=repr(p.name))
    if quick:
        plan.points = min(plan.points or 10, 10)
        plan.datasets = plan.datasets[:2]
    if full:
        plan.points = 0
        plan.attack_effort = "full"
    return plan.validate()


__all__ = ["DEFAULT_CHUNK_POINTS", "DEFAULT_DATASETS", "DEFAULT_POINTS", "DEFAULT_THREATS", "SEED_MAX", "Plan", "load_plan", "plan_from_dict"]
