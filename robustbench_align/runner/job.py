"""The job that evaluates one (model, dataset, seed) cell of a plan.

fit (or load the cached fit) → predict the fixed sample of test points → compute the per-point
metrics once (one Jacobian pass) → run every threat model; each threat model yields one run
(one `runs` row and one `points` row per point). Jobs are pure: they return records and never
touch the store, so they can run in any process or on a Dask worker.

A cell with more sampled points than its `chunk_size` is split into chunk jobs (`Job.chunks`), each
evaluating one contiguous slice of the sample; their records carry the chunk number and the store
assembles the run when the last chunk arrives, so memory is bounded by the chunk and an
interrupted cell resumes after its last stored chunk.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import platform
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, RBAError
from ..metrics.registry import NORMS, STORED_METRICS
from .store import RunRecord

log = logging.getLogger(__name__)

PROTOCOL_VERSION = 2  # bump when a change in the evaluation changes results for the same config


@dataclass
class Job:
    """One (model, dataset, seed) cell of a plan and the threat models to run on it."""

    model: str
    dataset: str
    seed: int
    threats: list[str]
    points: int
    attack_time_limit: float = 300.0
    attack_effort: str = "default"
    certify: str = "auto"
    model_params: dict[str, Any] = field(default_factory=dict)
    dataset_params: dict[str, Any] = field(default_factory=dict)
    cache_dir: str | None = None
    model_family: str | None = None  # for user models (not from the registry)
    chunk_size: int = 0  # points per chunk job (0 = the whole sample in one job)
    chunk: int = 0  # which slice of the sample this job evaluates
    n_chunks: int = 1  # slices of the sample; 1 = not chunked (the run's config then has no chunk key)
    sample_size: int | None = None  # the sample's size when the chunks were planned (set by `chunks`)
    data_sha256: str | None = None  # content hash of a file-backed dataset (data.registry.source_digest): part of the key

    def run_id(self, threat: str, resolved_params: dict[str, Any] | None = None) -> str:
        """The store key of this cell under `threat`: a hash of everything that determines the result."""
        cfg = self.config(threat, resolved_params)
        return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def config(self, threat: str, resolved_params: dict[str, Any] | None = None) -> dict[str, Any]:
        """The run's configuration as recorded in the store (and hashed into its run_id).

        A chunked run records its chunk size: attacks draw their random starts per batch, so the
        same points in other batches are another (equally valid) run.
        """
        cfg = {
            "protocol": PROTOCOL_VERSION, "model": self.model, "model_params": resolved_params if resolved_params is not None else self.model_params,
            "dataset": self.dataset, "dataset_params": self.dataset_params, "seed": self.seed, "threat": threat,
            "points": self.points, "attack_time_limit": self.attack_time_limit, "attack_effort": self.attack_effort,
            "certify": self.certify,
        }
        if self.n_chunks > 1:
            cfg["chunk_points"] = self.chunk_size
        if self.data_sha256 is not None:  # a file's content, not its path, identifies the data
            cfg["data_sha256"] = self.data_sha256
        return cfg

    def chunks(self, n_test: int) -> list[Job]:
        """This cell as chunk jobs over a test set of `n_test` points (itself when one chunk holds the sample)."""
        from dataclasses import replace

        n = int(sample_points(n_test, self.points, self.seed).size)
        if self.chunk_size <= 0 or n <= self.chunk_size:
            return [replace(self, chunk=0, n_chunks=1, sample_size=n)]
        k = -(-n // self.chunk_size)
        return [replace(self, chunk=c, n_chunks=k, sample_size=n) for c in range(k)]

    def n_points(self) -> int:
        """Points this job evaluates (its chunk's share of the planned sample; the plan's `points` if unplanned)."""
        if self.sample_size is None:
            return self.points
        part = self.slice(self.sample_size)
        return part.stop - part.start

    def slice(self, n: int) -> slice:
        """The positions of this job's points within the sample of `n` points."""
        if self.n_chunks <= 1:
            return slice(0, n)
        a = self.chunk * self.chunk_size
        return slice(a, min(a + self.chunk_size, n))

    def run_ids(self) -> dict[str, str]:
        """run_id per threat model; registry models hash their full resolved parameters."""
        params = resolved_model_params(self.model, self.model_params, self.seed) if self.model_family is None else self.model_params
        return {t: self.run_id(t, params) for t in self.threats}


def resolved_model_params(name: str, overrides: dict[str, Any], seed: int) -> dict[str, Any]:
    """The full parameter set a registry model is built with (defaults + overrides + seed)."""
    from ..models.registry import get_spec

    spec = get_spec(name)
    return {**spec.params, **overrides, "random_state": seed}


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries that can change results, recorded with every run."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("robustbench-align", "torch", "numpy", "scipy", "scikit-learn", "xgboost", "xgboost-cpu", "pyautoattack", "torchattacks",
                 "dtai-veritas", "gurobipy"):
        with contextlib.suppress(md.PackageNotFoundError):  # not installed: not recorded
            out[dist] = md.version(dist)
    return out


def sample_points(n_test: int, points: int, seed: int) -> np.ndarray:
    """The fixed, seeded sample of test indices a plan evaluates (all of them when points == 0)."""
    idx = np.random.default_rng(10_007 + seed).permutation(n_test)
    return np.sort(idx if points <= 0 else idx[: min(points, n_test)])


def run_job(job: Job, model_obj: Any = None, on_model: Any = None, data: Any = None) -> list[RunRecord]:
    """Evaluate one cell (or chunk); never raises for model/attack failures: a failed run is recorded with its reason.

    `on_model(model)`, if given, receives the fitted model (so chunks of one cell can share one fit);
    `data`, if given, is the job's dataset already loaded (`load_dataset(job.dataset, seed=job.seed, **job.dataset_params)`).
    """
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
            points=[], chunk=job.chunk, n_chunks=job.n_chunks,
        )

    try:
        ds = data if data is not None else load_dataset(job.dataset, seed=job.seed, **job.dataset_params)
        if model_obj is None:
            model, cached, fit_time = fit_cached(job.model, ds, job.seed, job.cache_dir, **job.model_params)
        else:
            model, cached, fit_time = model_obj, True, float("nan")
            if model.n_features != ds.n_features:
                raise ConfigError(f"model {job.model!r} expects {model.n_features} features but dataset {job.dataset!r} has {ds.n_features}")
        family = job.model_family or getattr(model, "family", None)
        if on_model is not None:
            on_model(model)
    except Exception as exc:  # noqa: BLE001 - recorded, the plan goes on
        msg = f"{type(exc).__name__}: {exc}"
        log.warning("fit failed for %s on %s: %s", job.model, job.dataset, msg)
        return [failed(t, f"fit: {msg}") for t in job.threats]

    if job.data_sha256 is not None and ds.meta.get("sha256") != job.data_sha256:
        msg = (f"dataset {job.dataset!r} changed since the plan was made (its content hash differs); "
               "rerun to evaluate the new content")
        return [failed(t, msg, fit_time) for t in job.threats]
    sample = sample_points(ds.X_test.shape[0], job.points, job.seed)
    if job.n_chunks > 1 and sample.size != job.sample_size:  # the data changed between planning and running
        msg = (f"dataset {job.dataset!r} gives a sample of {sample.size} test points, the chunks were planned for {job.sample_size}; "
               "rerun to plan again")
        return [failed(t, msg, fit_time) for t in job.threats]
    part = job.slice(sample.size)
    idx = sample[part]
    X, y = ds.X_test[idx], ds.y_test[idx]
    t_eval0 = time.perf_counter()
    pred = model.predict(X)
    metric_cols = _point_metrics(model, X, y)
    align_time = time.perf_counter() - t_eval0

    records = []
    for threat in job.threats:
        t0 = time.perf_counter()
        try:
            rec = _run_threat(job, threat, model, X, y, pred, idx, metric_cols, offset=part.start)
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
        rec.chunk, rec.n_chunks = job.chunk, job.n_chunks
        records.append(rec)
    return records


def _metric_columns() -> list[str]:
    """The metric-frame columns the stored metrics are read from (per-norm metrics once per norm)."""
    return [c for m in STORED_METRICS for c in ([f"{m.name}_{n}" for n in NORMS] if m.per_norm else [m.name])]


def _point_metrics(model: Any, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """The stored metrics per point from one Jacobian pass (NaN where undefined, e.g. for trees)."""
    from ..metrics.robustness import point_metrics

    cols = {c: np.full(X.shape[0], np.nan) for c in _metric_columns()}
    if X.shape[0] == 0:
        return cols
    df = point_metrics(model, X, y, norms=NORMS, on_unsupported="nan")
    for c in cols:
        if c in df.columns:
            cols[c] = df[c].to_numpy(dtype=np.float64)
    return cols


def _run_threat(job: Job, threat: str, model: Any, X: np.ndarray, y: np.ndarray, pred: np.ndarray, idx: np.ndarray,
                metric_cols: dict[str, np.ndarray], offset: int = 0) -> RunRecord:
    """One threat model on the cell's points: radii (minimal) or per-eps robustness (fixed-eps), one row per point.

    Point i of the job is point `offset + i` of the run's sample (the chunk's start).
    """
    from ..attacks.api import fixed_eps_per_point, minimal_radius
    from ..attacks.registry import default_eps_grid, get_threat_model

    tm = get_threat_model(threat)
    n = X.shape[0]
    radius = np.full(n, np.nan)
    lower = np.full(n, np.nan)
    exact: list[int | None] = [None] * n
    cert: list[str | None] = [None] * n
    by_attack: list[Any] = [None] * n
    robust_at: list[dict[str, int] | None] = [None] * n
    flags: dict[str, Any] = {}
    attacks_used: list[str] = []
    rejected = 0
    if tm.kind == "minimal":
        res = minimal_radius(model, X, y, norm=tm.norm, threat=threat, seed=job.seed, certify=job.certify,
                             time_limit=job.attack_time_limit, effort=job.attack_effort)
        radius = res.distance.astype(np.float64)
        if res.lower_bound is not None:
            lower = np.asarray(res.lower_bound, dtype=np.float64)
        if res.exact is not None:
            exact = [int(bool(v)) for v in res.exact]
        if res.certifier is not None:
            cert = [str(v) if v else None for v in res.certifier]
        if res.by_attack is not None:
            by_attack = [None if a is None or a == "" else str(a) for a in res.by_attack]
        grid = list(tm.eps) if tm.eps else list(default_eps_grid(tm.norm or "linf"))
        robust_at = [{f"{e:g}": int(radius[i] > e) for e in grid} for i in range(n)]
        flags = dict(res.flags or {})
        attacks_used = list(res.attacks_used or sorted({a for a in by_attack if a}))
        rejected = int(res.rejected)
    else:
        per_eps, attacks_used, rejected, flags = fixed_eps_per_point(model, X, y, threat=threat, seed=job.seed)
        robust_at = [{f"{e:g}": int(per_eps[e][i]) for e in per_eps} for i in range(n)]
    metrics = {m.name: metric_cols.get(m.column(tm.norm), np.full(n, np.nan)) for m in STORED_METRICS}
    points = []
    for i in range(n):
        row = {"idx": offset + i, "test_index": int(idx[i]), "y": int(y[i]), "pred": int(pred[i]), "correct": int(pred[i] == y[i]),
               "radius": radius[i], "lower_bound": lower[i], "by_attack": by_attack[i], "robust_at": robust_at[i],
               "exact": exact[i], "cert": cert[i]}
        row.update({name: col[i] for name, col in metrics.items()})
        points.append(row)
    return RunRecord(
        run={"threat": threat, "norm": tm.norm, "attacks": attacks_used, "flags": flags, "rejected": rejected},
        points=points,
    )


__all__ = ["PROTOCOL_VERSION", "Job", "library_versions", "resolved_model_params", "run_job", "sample_points"]
