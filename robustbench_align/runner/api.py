"""Running evaluations: the driver `run_plan` (every unfinished cell of a plan into the store) and the
public `evaluate` (one model on one dataset, optionally into the same store as the registry)."""
from __future__ import annotations

import os
import time
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError, Interrupted, RBAError
from .config import DEFAULT_POINTS, Plan
from .job import Job, run_job
from .store import RunRecord, Store, exclusive


def run_plan(plan: Plan, store_path: str | os.PathLike, *, cache_dir: str | None = None, workers: int = 1,
             dask_address: str | None = None, retry_failed: bool = False, progress: bool = True, wait: bool = False) -> dict[str, Any]:
    """Run every unfinished cell of `plan` and write it to the store; returns counts and wall time.

    The driver is the only store writer: it holds the store's lock, and records are written as
    each job finishes, so a killed run keeps every finished cell and a rerun skips them.
    """
    from .executors import execute

    t0 = time.perf_counter()
    if dask_address:  # fail fast, before anything is written
        from .executors import connect_dask

        connect_dask(dask_address).close()
    with exclusive(store_path, wait=wait), Store(store_path) as store:
        done = store.finished(include_failed=not retry_failed)
        jobs = plan.jobs(cache_dir)
        todo = [j for j in jobs if not set(j.run_ids().values()) <= done]
        skipped = len(jobs) - len(todo)
        written = 0
        failed = 0
        cells = 0

        def on_result(records: list[RunRecord]) -> None:
            nonlocal written, failed, cells
            written += store.write(records)
            cells += 1
            failed += sum(r.run.get("status") != "ok" for r in records)

        try:
            execute(todo, on_result, workers=workers, dask_address=dask_address, progress=progress)
        except KeyboardInterrupt as exc:  # SIGINT, or SIGTERM through the CLI's handler (errors.Terminated)
            raise Interrupted(cells, getattr(exc, "signum", 2)) from None
    return {"jobs": len(todo), "skipped": skipped, "runs_written": written, "runs_failed": failed, "seconds": time.perf_counter() - t0}


def evaluate(model: Any, dataset: str, *, threats: Iterable[str] = ("linf", "l2"), points: int = DEFAULT_POINTS, seed: int = 0,
             name: str | None = None, store: str | os.PathLike | None = None, attack_time_limit: float = 300.0,
             dataset_params: dict[str, Any] | None = None, certify: Any = "auto") -> Any:
    """Evaluate one model (a registry name, or any object `wrap` accepts) on one dataset.

    Returns a pandas DataFrame with one row per threat model (clean accuracy, robust accuracy at the
    eps grid, median radius, AUC, alignment means, and the certified columns). `certify`: "auto"
    (default), a certifier name or "none" (see `minimal_radius`); `attack_time_limit` is a safety net
    in seconds per point, the exact attacks stop on deterministic work budgets. With `store`, the runs are also written there so
    the model appears in the same leaderboard as the registry.
    """
    from ..certify.api import check_method
    from ..models.base import wrap
    from ..reports.tables import summarize_runs

    method = check_method(certify)
    if isinstance(model, str):
        job = Job(model=model, dataset=dataset, seed=seed, threats=list(threats), points=points,
                  attack_time_limit=attack_time_limit, dataset_params=dict(dataset_params or {}), certify=method)
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
                  dataset_params=dict(dataset_params or {}), model_params={"user_model": label}, model_family="user", certify=method)
        records = run_job(job, model_obj=m)
    bad = [r for r in records if r.run.get("status") != "ok"]
    if bad and len(bad) == len(records):
        raise RBAError(f"evaluation of {job.model!r} on {dataset!r} failed: {bad[0].run.get('error')}")
    if store is not None:
        with exclusive(store), Store(store) as st:
            st.write(records)
    return summarize_runs(records)


__all__ = ["evaluate", "run_plan"]
