"""Running evaluations: the driver `run_plan` (every unfinished cell of a plan into the store) and the
public `evaluate` (one model on one dataset, optionally into the same store as the registry)."""
from __future__ import annotations

import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import ConfigError, Interrupted, RBAError
from .config import DEFAULT_CHUNK_POINTS, DEFAULT_POINTS, Plan
from .job import Job, run_job
from .store import RunRecord, Store, exclusive


def _points_bar(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="points", unit="pt", disable=not enabled or total == 0, leave=False)


def _raise_if_all_failed(records: list[RunRecord], job: Job, dataset: str) -> None:
    bad = [r for r in records if r.run.get("status") != "ok"]
    if bad and len(bad) == len(records):
        raise RBAError(f"evaluation of {job.model!r} on {dataset!r} failed: {bad[0].run.get('error')}")


def summarize_runs_records(records: list[RunRecord]) -> Any:
    """Leaderboard-style rows for freshly computed records."""
    from ..reports.tables import summarize_runs

    return summarize_runs(records)


def _summary(runs: Any, pts: Any) -> Any:
    """Leaderboard-style rows (without rank) for the runs read back from a store."""
    import pandas as pd

    from ..reports.tables import leaderboard_from_frames

    if runs.empty or pts.empty:
        return pd.DataFrame()
    return leaderboard_from_frames(runs, pts).drop(columns=["rank"], errors="ignore")


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
        partial = store.stored_chunks(include_failed=not retry_failed)
        jobs = plan.jobs(cache_dir)

        def pending(j: Job) -> bool:
            ids = set(j.run_ids().values())
            return not ids <= done and not (j.n_chunks > 1 and all(j.chunk in partial.get(r, ()) for r in ids))

        todo = [j for j in jobs if pending(j)]
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
             dataset_params: dict[str, Any] | None = None, certify: Any = "auto", chunk_points: int = DEFAULT_CHUNK_POINTS,
             wait: bool = False, progress: bool = False, model_params: dict[str, Any] | None = None,
             attack_effort: str = "default", replace: bool = False) -> Any:
    """Evaluate one model (a registry name, or any object `wrap` accepts) on one dataset.

    Returns a pandas DataFrame with one row per threat model (clean accuracy, robust accuracy at the
    eps grid, median radius, AUC, alignment means, and the certified columns). `certify`: "auto"
    (default), a certifier name or "none" (see `minimal_radius`); `attack_time_limit` is a safety net
    in seconds per point, the exact attacks stop on deterministic work budgets. With `store`, the runs are also written there so
    the model appears in the same leaderboard as the registry; the store is locked before anything
    is computed (busy: StoreError, or wait for it with `wait=True`), and runs already stored for the
    same model, data and settings are reused, not recomputed.

    A user model is identified by its content, not its name: the bytes of the file it was loaded
    from, else the state of the object (and its outputs on probe points where the state is not
    visible); a file-backed dataset by its content hash. A `name` that is a registry model, or that
    already holds a different model's results in `store`, is refused (`replace=True` drops that
    other model's runs first); a name taken from the model itself (no `name`) is disambiguated
    with the fingerprint instead, and a warning says so.

    `attack_effort` is "fast", "default" or "full" (as in a plan). `model_params` override a
    registry model's parameters (as a plan's `[model_params.<name>]` does).
    `points` > `chunk_points` (0 = every test point) evaluates the sample in chunks of
    `chunk_points` points, each stored as it finishes: memory is bounded by the chunk, a rerun into
    the same store resumes after the last stored chunk, and `progress` shows points done and the ETA.
    """
    import contextlib
    import tempfile

    from ..certify.api import check_method
    from ..data.registry import load_dataset
    from ..models.base import wrap

    method = check_method(certify)
    from ..attacks.registry import EFFORTS

    if attack_effort not in EFFORTS:
        raise ConfigError(f"attack_effort must be one of {', '.join(EFFORTS)}, got {attack_effort!r}")
    cp: Any = chunk_points  # Any: a Python caller is not type-checked at run time
    if isinstance(cp, bool) or not isinstance(cp, int) or cp < 0:
        raise ConfigError(f"chunk_points must be an integer >= 0 (0 = no chunks), got {chunk_points!r}")
    ds = load_dataset(dataset, seed=seed, **dict(dataset_params or {}))
    common: dict[str, Any] = {"dataset": dataset, "seed": seed, "threats": list(threats), "points": points, "attack_time_limit": attack_time_limit,
              "dataset_params": dict(dataset_params or {}), "certify": method, "chunk_size": chunk_points,
                              "attack_effort": attack_effort, "data_sha256": ds.meta.get("sha256")}
    model_obj = None
    fingerprint = None
    if isinstance(model, str):
        if replace:
            raise ConfigError("replace applies to user models only; a registry model's runs are keyed by its parameters")
        job = Job(model=model, model_params=dict(model_params or {}), **common)
    else:
        if model_params:
            raise ConfigError("model_params apply to registry models only; configure your own model before passing it")
        m = wrap(model, name=name)
        if m.n_features != ds.n_features:  # refuse before anything runs or is written
            raise ConfigError(f"model {getattr(m, 'name', 'model')!r} expects {m.n_features} features but dataset {dataset!r} has {ds.n_features}; "
                              "evaluate it on data with the columns it was trained on")
        from ..fingerprint import model_fingerprint

        fingerprint = model_fingerprint(model, m)
        model_obj = m
    n_test = int(ds.X_test.shape[0])

    def user_job(label: str) -> Job:
        if model_obj is not None:
            model_obj.name = label
        return Job(model=label, model_params={"user_model": label, "fingerprint": fingerprint}, model_family="user", **common)

    if model_obj is not None:
        label = _user_label(name, getattr(model_obj, "name", None), fingerprint, None, replace)
        job = user_job(label)
    chunks = job.chunks(n_test)
    if store is None and len(chunks) == 1:
        recs = run_job(chunks[0], model_obj=model_obj, data=ds)
        _raise_if_all_failed(recs, job, dataset)
        return summarize_runs_records(recs)
    with contextlib.ExitStack() as stack:
        if store is None:  # chunks go through a scratch store: the same assembly, bounded memory
            store = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rba-eval-"))) / "scratch.sqlite"
        stack.enter_context(exclusive(store, wait=wait))
        st = stack.enter_context(Store(store))
        if model_obj is not None:  # under the lock: no other run can take the name in between
            label = _user_label(name, label, fingerprint, st, replace)
            job = user_job(label)
            chunks = job.chunks(n_test)
        run_ids = sorted(set(chunks[0].run_ids().values()))
        done = st.finished(include_failed=False)
        partial = st.stored_chunks()  # an interrupted evaluation resumes after its stored chunks
        if set(run_ids) <= done:  # the same model, data and settings are stored: reuse them
            todo: list[Job] = []
        else:
            todo = [c for c in chunks if not (c.n_chunks > 1 and all(c.chunk in partial.get(r, ()) for r in run_ids))]
        bar = _points_bar(sum(c.n_points() for c in chunks), progress and len(chunks) > 1)
        bar.update(sum(c.n_points() for c in chunks) - sum(c.n_points() for c in todo))
        records: list[RunRecord] = []
        fitted: list[Any] = []
        stored = len(chunks) - len(todo)
        try:
            for c in todo:
                recs = run_job(c, model_obj=model_obj, on_model=fitted.append if model_obj is None else None, data=ds)
                if model_obj is None and fitted and c.n_chunks > 1:  # fit once: the later chunks reuse the fitted model
                    model_obj = fitted[0]
                st.write(recs)
                stored += 1
                if c.n_chunks == 1:
                    records = recs
                bar.update(c.n_points())
        except KeyboardInterrupt as exc:
            raise Interrupted(stored, getattr(exc, "signum", 2), "chunks") from None
        finally:
            bar.close()
        runs = st.runs(history=True)
        runs = runs[runs["run_id"].isin(run_ids)]
        pts = st.points(run_ids)
    if records:
        _raise_if_all_failed(records, job, dataset)
        return summarize_runs_records(records)
    if runs.empty or (runs["status"] != "ok").all():
        err = runs["error"].iloc[0] if not runs.empty else "no run was stored"
        raise RBAError(f"evaluation of {job.model!r} on {dataset!r} failed: {err}")
    return _summary(runs, pts)


def _user_label(name: str | None, derived: str | None, fingerprint: Any, store: Store | None, replace: bool) -> str:
    """The leaderboard name of a user model: refuse an explicit `name` that is taken, disambiguate a derived one."""
    import logging

    from ..models.registry import list_models

    label: Any = name if name is not None else (derived or "user-model")  # Any: a Python caller may pass anything
    if not isinstance(label, str) or not label.strip():
        raise ConfigError(f"name must be a non-empty string, got {label!r}")
    fp = str(fingerprint)
    short = fp.split(":", 1)[-1]

    def taken(candidate: str) -> tuple[str | None, list[str]]:
        """Why `candidate` cannot hold this model (None: it can), and the other model's run ids."""
        if candidate in list_models():
            return "is a registry model", []
        if store is None:
            return None, []
        others = {k: v for k, v in store.model_identities(candidate).items() if k != fp}
        if not others:
            return None, []
        return "already holds the results of a different model in this store", [r for v in others.values() for r in v]

    why, other_ids = taken(label)
    if why is None:
        return label
    if name is not None:
        if replace and other_ids and "registry" not in (store.model_identities(label) if store is not None else {}):
            n = store.delete_runs(other_ids) if store is not None else 0
            logging.getLogger(__name__).warning("replaced %d run(s) of the earlier model named %r", n, label)
            return label
        fix = "give your model another name" + ("" if why == "is a registry model" else ", or replace the other model's runs (CLI: --replace)")
        raise ConfigError(f"name {label!r} {why}; {fix}")
    for width in (8, 16, 32):
        candidate = f"{label}-{short[:width]}"
        if taken(candidate)[0] is None:
            logging.getLogger(__name__).warning("name %r %s; this model is stored as %r (pass a name to choose one)", label, why, candidate)
            return candidate
    raise ConfigError(f"name {label!r} {why}; give your model another name")


__all__ = ["evaluate", "run_plan"]
