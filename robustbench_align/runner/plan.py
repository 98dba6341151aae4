"""Plans (models × datasets × threat models × seeds), the job that evaluates one cell, and `evaluate`.

A job is one (model, dataset, seed): fit (or load the cached fit), predict the fixed sample of test
points, compute the alignment metrics once, then run every threat model; each threat model yields one
run (one `runs` row and one `points` row per point). Jobs are pure: they return records and never
touch the store, so they can run in any process or on a Dask worker.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..errors import ConfigError, RBAError
from .store import RunRecord

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 1  # bump when a change in the evaluation changes results for the same config
SEED_MAX = 2**32 - 1  # the seed range load_dataset and the estimators accept

DEFAULT_MODELS = ["mlp", "mlp-grokalign", "rfm", "rfam", "xgb", "rf", "gbdt"]
DEFAULT_DATASETS = ["breast_cancer", "wine", "digits", "sparse_parity", "xor", "synthetic"]
DEFAULT_THREATS = ["linf", "l2"]


@dataclass
class Plan:
    """What to evaluate. `points` test points per dataset (a fixed seeded sample; 0 = all)."""

    models: list[str] = field(default_factory=lambda: list(DEFAULT_MODELS))
    datasets: list[str] = field(default_factory=lambda: list(DEFAULT_DATASETS))
    threats: list[str] = field(default_factory=lambda: list(DEFAULT_THREATS))
    seeds: list[int] = field(default_factory=lambda: [0])
    points: int = 30
    attack_time_limit: float = 3.0
    attack_effort: str = "default"
    model_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    dataset_params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def jobs(self, cache_dir: str | None) -> list["Job"]:
        return [
            Job(
                model=m, dataset=d, seed=s, threats=list(self.threats), points=self.points,
                attack_time_limit=self.attack_time_limit, attack_effort=self.attack_effort,
                model_params=dict(self.model_params.get(m, {})), dataset_params=dict(self.dataset_params.get(d, {})),
                cache_dir=cache_dir,
            )
            for s in self.seeds
            for d in self.datasets
            for m in self.models
        ]

    def validate(self) -> "Plan":
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
        for s in self.seeds:
            if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= SEED_MAX:
                raise ConfigError(f"plan: seeds must be integers in 0..{SEED_MAX}, got {s!r}")
        if isinstance(self.points, bool) or not isinstance(self.points, int) or self.points < 0:
            raise ConfigError(f"plan: points must be an integer >= 0 (0 = every test point), got {self.points!r}")
        t = self.attack_time_limit
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t <= 0:
            raise ConfigError(f"plan: attack_time_limit must be a finite number of seconds > 0, got {t!r}")
        if self.attack_effort not in EFFORTS:
            raise ConfigError(f"plan: attack_effort must be one of {', '.join(EFFORTS)}, got {self.attack_effort!r}")
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
    "points": int, "attack_time_limit": (int, float), "attack_effort": str,
    "model_params": dict, "dataset_params": dict,
}


def plan_from_dict(doc: dict[str, Any], base: Plan | None = None, source: str = "config") -> Plan:
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
            if not isinstance(value, types) or isinstance(value, bool):
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
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"{p.name!r}: not valid TOML ({first})") from None
        plan = plan_from_dict(doc, plan, source=repr(p.name))
    if quick:
        plan.points = min(plan.points or 10, 10)
        plan.datasets = plan.datasets[:2]
    if full:
        plan.points = 0
        plan.attack_time_limit = max(plan.attack_time_limit, 60.0)
        plan.attack_effort = "full"
    return plan.validate()


@dataclass
class Job:
    """One (model, dataset, seed) cell of a plan and the threat models to run on it."""

    model: str
    dataset: str
    seed: int
    threats: list[str]
    points: int
    attack_time_limit: float = 10.0
    attack_effort: str = "default"
    model_params: dict[str, Any] = field(default_factory=dict)
    dataset_params: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None
    model_family: str | None = None  # for user models (not from the registry)

    def run_id(self, threat: str, resolved_params: dict[str, Any] | None = None) -> str:
        cfg = self.config(threat, resolved_params)
        return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def config(self, threat: str, resolved_params: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "protocol": PROTOCOL_VERSION, "model": self.model, "model_params": resolved_params if resolved_params is not None else self.model_params,
            "dataset": self.dataset, "dataset_params": self.dataset_params, "seed": self.seed, "threat": threat,
            "points": self.points, "attack_time_limit": self.attack_time_limit, "attack_effort": self.attack_effort,
        }

    def run_ids(self) -> dict[str, str]:
        params = resolved_model_params(self.model, self.model_params, self.seed) if self.model_family is None else self.model_params
        return {t: self.run_id(t, params) for t in self.threats}


def resolved_model_params(name: str, overrides: dict[str, Any], seed: int) -> dict[str, Any]:
    """The full parameter set a registry model is built with (defaults + overrides + seed)."""
    from ..models.registry import get_spec

    spec = get_spec(name)
    return {**spec.params, **overrides, "random_state": seed}


def library_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("robustbench-align", "torch", "numpy", "scipy", "scikit-learn", "xgboost", "xgboost-cpu", "pyautoattack", "torchattacks", "dtai-veritas"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def sample_points(n_test: int, points: int, seed: int) -> np.ndarray:
    """The fixed, seeded sample of test indices a plan evaluates (all of them when points == 0)."""
    idx = np.random.default_rng(10_007 + seed).permutation(n_test)
    return np.sort(idx if points <= 0 else idx[: min(points, n_test)])


def _eps_grid(norm: str | None) -> list[float]:
    from ..attacks.registry import default_eps_grid

    return list(default_eps_grid(norm or "linf"))


def run_job(job: Job, model_obj: Any = None) -> list[RunRecord]:
    """Evaluate one cell; never raises for model/attack failures: a failed run is recorded with its reason."""
    import torch

    torch.set_num_threads(1)
    from ..data.registry import load_dataset
    from ..models.persistence import fit_cached

    run_ids = job.run_ids()
    versions = library_versions()
    base_run = {"model": job.model, "dataset": job.dataset, "seed": job.seed, "versions": versions}

    def failed(threat: str, msg: str, fit_time: float | None = None) -> RunRecord:
        from ..attacks.registry import get_threat_model

        try:
            norm = get_threat_model(threat).norm
        except RBAError:
            norm = None
        return RunRecord(
            run={**base_run, "run_id": run_ids[threat], "threat": threat, "norm": norm, "status": "failed", "error": msg[:500],
                 "config": job.config(threat), "fit_time": fit_time, "family": job.model_family},
            points=[],
        )

    try:
        ds = load_dataset(job.dataset, seed=job.seed, **job.dataset_params)
        if model_obj is None:
            model, cached, fit_time = fit_cached(job.model, ds, job.seed, job.cache_dir, **job.model_params)
        else:
            model, cached, fit_time = model_obj, True, float("nan")
            if model.n_features != ds.n_features:
                raise ConfigError(f"model {job.model!r} expects {model.n_features} features but dataset {job.dataset!r} has {ds.n_features}")
        family = job.model_family or getattr(model, "family", None)
    except Exception as exc:  # noqa: BLE001 - recorded, the plan goes on
        msg = f"{type(exc).__name__}: {exc}"
        log.warning("fit failed for %s on %s: %s", job.model, job.dataset, msg)
        return [failed(t, f"fit: {msg}") for t in job.threats]

    idx = sample_points(ds.X_test.shape[0], job.points, job.seed)
    X, y = ds.X_test[idx], ds.y_test[idx]
    t_eval0 = time.perf_counter()
    pred = model.predict(X)
    metric_cols = _point_metrics(model, X, y)
    align_time = time.perf_counter() - t_eval0

    records = []
    for threat in job.threats:
        t0 = time.perf_counter()
        try:
            rec = _run_threat(job, threat, model, X, y, pred, idx, metric_cols)
        except Exception as exc:  # noqa: BLE001
            msg = f"{type(exc).__name__}: {exc}"
            log.warning("%s on %s (%s) failed: %s\n%s", job.model, job.dataset, threat, msg, traceback.format_exc(limit=3))
            records.append(failed(threat, msg, fit_time))
            continue
        rec.run.update(base_run)
        rec.run.update({
            "run_id": run_ids[threat], "family": family, "status": "ok", "config": job.config(threat),
            "fit_time": fit_time, "eval_time": time.perf_counter() - t0 + align_time, "fit_cached": int(bool(cached)),
            "clean_accuracy": float((pred == y).mean()) if y.size else None, "n_points": int(y.size),
        })
        records.append(rec)
    return records


def _point_metrics(model: Any, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """Alignment metrics and local-linear radii per point from one Jacobian pass (NaN where undefined, e.g. trees)."""
    from ..metrics.robustness import point_metrics

    names = ("normal_alignment", "centroid_alignment", "centroid_norm", "effective_rank", "effective_rank_normalized",
             "pc1_explained_variance", "offset_norm", "jacobian_norm", "x_norm", "r_lin_linf", "r_lin_l2", "r_lin_l1")
    cols = {m: np.full(X.shape[0], np.nan) for m in names}
    cols["x_norm"] = np.linalg.norm(X, axis=1)
    if X.shape[0] == 0:
        return cols
    df = point_metrics(model, X, y, norms=("linf", "l2", "l1"), on_unsupported="nan")
    for c in cols:
        if c in df.columns:
            cols[c] = df[c].to_numpy(dtype=np.float64)
    return cols


def _run_threat(job: Job, threat: str, model: Any, X: np.ndarray, y: np.ndarray, pred: np.ndarray, idx: np.ndarray,
                metric_cols: dict[str, np.ndarray]) -> RunRecord:
    from ..attacks.ensemble import minimal_radius
    from ..attacks.registry import get_threat_model

    tm = get_threat_model(threat)
    n = X.shape[0]
    radius = np.full(n, np.nan)
    lower = np.full(n, np.nan)
    by_attack: list[Any] = [None] * n
    robust_at: list[dict[str, int] | None] = [None] * n
    flags: dict[str, Any] = {}
    attacks_used: list[str] = []
    rejected = 0
    if tm.kind == "minimal":
        res = minimal_radius(model, X, y, norm=tm.norm, threat=threat, seed=job.seed,
                             time_limit=job.attack_time_limit, effort=job.attack_effort)
        radius = res.distance.astype(np.float64)
        if res.lower_bound is not None:
            lower = np.asarray(res.lower_bound, dtype=np.float64)
        if res.by_attack is not None:
            by_attack = [None if a is None or a == "" else str(a) for a in res.by_attack]
        grid = list(tm.eps) if getattr(tm, "eps", None) else _eps_grid(tm.norm)
        robust_at = [{f"{e:g}": int(radius[i] > e) for e in grid} for i in range(n)]
        flags = dict(res.flags or {})
        attacks_used = list(getattr(res, "attacks_used", None) or sorted({a for a in by_attack if a}))
        rejected = int(res.rejected)
    else:
        from ..attacks.ensemble import fixed_eps_per_point

        per_eps, attacks_used, rejected, flags = fixed_eps_per_point(model, X, y, threat=threat, seed=job.seed)
        robust_at = [{f"{e:g}": int(per_eps[e][i]) for e in per_eps} for i in range(n)]
    r_lin = metric_cols.get(f"r_lin_{tm.norm}", np.full(n, np.nan))
    points = []
    for i in range(n):
        row = {"idx": i, "test_index": int(idx[i]), "y": int(y[i]), "pred": int(pred[i]), "correct": int(pred[i] == y[i]),
               "radius": radius[i], "lower_bound": lower[i], "by_attack": by_attack[i], "robust_at": robust_at[i], "r_lin": r_lin[i]}
        for k, v in metric_cols.items():
            if not k.startswith("r_lin_"):
                row[k] = v[i]
        points.append(row)
    return RunRecord(
        run={"threat": threat, "norm": tm.norm, "attacks": attacks_used, "flags": flags, "rejected": rejected},
        points=points,
    )


def run_plan(plan: Plan, store_path: str | os.PathLike, *, cache_dir: str | None = None, workers: int = 1,
             dask_address: str | None = None, retry_failed: bool = False, progress: bool = True, wait: bool = False) -> dict[str, Any]:
    """Run every unfinished cell of `plan` and write it to the store; returns counts and wall time."""
    from .executors import execute
    from .store import Store, exclusive

    t0 = time.perf_counter()
    if dask_address:  # fail fast, before anything is written
        from .executors import connect_dask

        connect_dask(dask_address).close()
    with exclusive(store_path, wait=wait):
        with Store(store_path) as store:
            done = store.finished(include_failed=not retry_failed)
            todo = [j for j in plan.jobs(cache_dir) if not set(j.run_ids().values()) <= done]
            skipped = len(plan.jobs(cache_dir)) - len(todo)
            written = 0
            failed = 0

            def on_result(records: list[RunRecord]) -> None:
                nonlocal written, failed
                written += store.write(records)
                failed += sum(r.run.get("status") != "ok" for r in records)

            execute(todo, on_result, workers=workers, dask_address=dask_address, progress=progress)
    return {"jobs": len(todo), "skipped": skipped, "runs_written": written, "runs_failed": failed, "seconds": time.perf_counter() - t0}


def evaluate(model: Any, dataset: str, *, threats: Iterable[str] = ("linf", "l2"), points: int = 30, seed: int = 0,
             name: str | None = None, store: str | os.PathLike | None = None, attack_time_limit: float = 3.0,
             dataset_params: dict[str, Any] | None = None) -> "Any":
    """Evaluate one model (a registry name, or any object `wrap` accepts) on one dataset.

    Returns a pandas DataFrame with one row per threat model (clean accuracy, robust accuracy at the
    eps grid, median radius, AUC, alignment means). With `store`, the runs are also written there so
    the model appears in the same leaderboard as the registry.
    """
    from ..models.base import wrap
    from ..reports.tables import summarize_runs
    from .store import Store, exclusive

    is_registry = isinstance(model, str)
    if is_registry:
        job = Job(model=model, dataset=dataset, seed=seed, threats=list(threats), points=points,
                  attack_time_limit=attack_time_limit, dataset_params=dict(dataset_params or {}))
        records = run_job(job)
    else:
        m = wrap(model, name=name)
        from ..data.registry import load_dataset

        d = load_dataset(dataset, seed=seed, **dict(dataset_params or {})).n_features
        if m.n_features != d:  # refuse before anything runs or is written
            raise ConfigError(f"model {getattr(m, 'name', 'model')!r} expects {m.n_features} features but dataset {dataset!r} has {d}; "
                              "evaluate it on data with the columns it was trained on")
        label = name or getattr(m, "name", None) or "user-model"
        m.name = label
        job = Job(model=label, dataset=dataset, seed=seed, threats=list(threats), points=points, attack_time_limit=attack_time_limit,
                  dataset_params=dict(dataset_params or {}), model_params={"user_model": label}, model_family="user")
        records = run_job(job, model_obj=m)
    bad = [r for r in records if r.run.get("status") != "ok"]
    if bad and len(bad) == len(records):
        raise RBAError(f"evaluation of {job.model!r} on {dataset!r} failed: {bad[0].run.get('error')}")
    if store is not None:
        with exclusive(store), Store(store) as st:
            st.write(records)
    return summarize_runs(records)


__all__ = ["Plan", "Job", "load_plan", "plan_from_dict", "run_job", "run_plan", "evaluate", "sample_points"]


def plan_as_dict(plan: Plan) -> dict[str, Any]:
    return {f.name: getattr(plan, f.name) for f in fields(plan)} if plan else asdict(plan)
