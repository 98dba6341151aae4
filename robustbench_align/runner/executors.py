"""Where jobs run: in-process, on a local process pool, or on an existing Dask cluster.

Jobs are independent and return records; `on_result` (the driver, the only store writer) is called
in the driver process as each job finishes, so a killed run keeps everything finished before it.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError
from .store import RunRecord

log = logging.getLogger(__name__)


def _init_worker() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def _job_entry(job: Any) -> list[RunRecord]:
    from .job import run_job

    _init_worker()
    return run_job(job)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="cells", unit="cell", disable=not enabled or total == 0, leave=False)


MAX_AUTO_WORKERS = 8  # each worker holds torch and a fitted model (about 0.5 GB)


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask), at most MAX_AUTO_WORKERS."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    return max(1, min(n, MAX_AUTO_WORKERS))


def execute(jobs: Sequence[Any], on_result: Callable[[list[RunRecord]], None], *, workers: int = 1,
            dask_address: str | None = None, progress: bool = True) -> None:
    """Run `jobs`, calling `on_result(records)` in this process for each finished job."""
    if not jobs:
        return
    if dask_address:
        _execute_dask(jobs, on_result, dask_address, progress)
        return
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    bar = _progress(len(jobs), progress)
    try:
        if workers == 1:
            from .job import run_job

            for job in jobs:
                bar.set_postfix_str(f"{job.model} / {job.dataset}", refresh=False)
                on_result(run_job(job))
                bar.update()
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        ctx = mp.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
            futures = {pool.submit(_job_entry, job): job for job in jobs}
            for fut in as_completed(futures):
                on_result(fut.result())
                bar.update()
    finally:
        bar.close()


def connect_dask(address: str) -> Any:
    """A Dask client for `address`, or ConfigError within about 10 s."""
    try:
        from dask.distributed import Client
    except ImportError:
        raise ConfigError("--dask needs dask.distributed: pip install 'robustbench-align[dask]'") from None
    try:
        return Client(address, timeout=10, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {address!r} within 10 s ({type(exc).__name__}); start it or fix the address") from None


def _execute_dask(jobs: Sequence[Any], on_result: Callable[[list[RunRecord]], None], address: str, progress: bool) -> None:
    from dask.distributed import as_completed

    client = connect_dask(address)
    bar = _progress(len(jobs), progress)
    try:
        futures = [client.submit(_job_entry, job, pure=False) for job in jobs]
        for _fut, records in as_completed(futures, with_results=True, loop=client.loop):
            on_result(records)
            bar.update()
    finally:
        bar.close()
        client.close()
