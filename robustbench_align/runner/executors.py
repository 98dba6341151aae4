"""Where jobs run: in-process, on a local process pool, or on an existing Dask cluster.

Jobs are independent and return records; `on_result` (the driver, the only store writer) is called
in the driver process as each job finishes, so a killed run keeps everything finished before it.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import ConfigError, RBAError, first_line
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
    """A Dask client for the scheduler at `address`, or ConfigError (one line) within about 10 s.

    The address is checked before any connection: a malformed one (no port, unknown scheme) fails
    at once, and for tcp:// addresses a refused or unresolvable host fails before the Client is built.
    """
    try:
        from dask.distributed import Client
    except ImportError:
        raise ConfigError("--dask needs dask.distributed: pip install 'robustbench-align[dask]'") from None
    addr = _check_address(address)
    _probe_scheduler(addr, address)
    try:
        return Client(addr, timeout=CONNECT_TIMEOUT, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise ConfigError(f"cannot reach the Dask scheduler at {address!r} within {CONNECT_TIMEOUT:g} s ({type(exc).__name__}); "
                          "start it or fix the address") from None


CONNECT_TIMEOUT = 10.0
NO_WORKER_TIMEOUT = 60.0  # default seconds a Dask run waits while the cluster has no worker
NO_WORKER_TIMEOUT_ENV = "RBA_DASK_NO_WORKER_TIMEOUT"
_POLL = 1.0  # seconds between checks of the cluster's workers while jobs are pending


def _check_address(address: str) -> str:
    """`address` normalised to scheme://host:port, or ConfigError naming the expected form."""
    from distributed.comm.addressing import parse_address, parse_host_port, unparse_address
    from distributed.comm.registry import backends

    hint = "give the scheduler's address as tcp://HOST:PORT (e.g. tcp://10.0.0.5:8786)"
    text = address.strip()
    try:
        scheme, loc = parse_address(text)
        host, port = parse_host_port(loc)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--dask {address!r} is not a Dask scheduler address ({first_line(exc, with_type=False)}); {hint}") from None
    if scheme not in backends:
        raise ConfigError(f"--dask {address!r} has the unknown scheme {scheme!r} (known: {', '.join(sorted(backends))}); {hint}")
    if not host or not 0 < int(port) < 65536:
        raise ConfigError(f"--dask {address!r} has no host or an invalid port; {hint}")
    return unparse_address(scheme, loc)


def _probe_scheduler(addr: str, shown: str) -> None:
    """For a tcp:// address, ConfigError at once when the host does not resolve or nothing listens on the port,
    and within CONNECT_TIMEOUT when what listens there does not answer as a Dask scheduler."""
    import asyncio
    import socket

    from distributed.comm.addressing import parse_address, parse_host_port

    scheme, loc = parse_address(addr)
    if scheme != "tcp":  # tls/ucx/...: the Client's own handshake (with its security settings) decides
        return
    host, port = parse_host_port(loc)
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
            pass
    except socket.gaierror:
        raise ConfigError(f"--dask {shown!r}: the host {host!r} does not resolve; fix the address") from None
    except (OSError, TimeoutError) as exc:
        reason = "nothing listens there" if isinstance(exc, ConnectionRefusedError) else first_line(exc)
        raise ConfigError(f"cannot reach the Dask scheduler at {shown!r} ({reason}); start it (`dask scheduler --port {port}`) "
                          "or fix the address") from None

    async def identity() -> Any:
        from distributed.core import rpc

        async with rpc(addr, timeout=CONNECT_TIMEOUT) as r:
            return await asyncio.wait_for(r.identity(), CONNECT_TIMEOUT)

    probe = identity()
    try:
        info = asyncio.run(probe)
    except RuntimeError:  # called inside a running event loop: leave the check to the Client
        probe.close()
        return
    except Exception:  # noqa: BLE001 - anything but an answer means it is not a scheduler
        info = None
    if not isinstance(info, dict) or info.get("type") != "Scheduler":
        raise ConfigError(f"{shown!r} accepts connections but does not answer as a Dask scheduler within {CONNECT_TIMEOUT:g} s; "
                          "fix the address (the scheduler's port, 8786 by default)")


def no_worker_timeout() -> float:
    """Seconds a Dask run waits while its cluster has no worker before it fails: $RBA_DASK_NO_WORKER_TIMEOUT or 60."""
    raw = os.environ.get(NO_WORKER_TIMEOUT_ENV, "").strip()
    if not raw:
        return NO_WORKER_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"{NO_WORKER_TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def _n_workers(client: Any) -> int | None:
    """Workers connected to the client's scheduler, None when the scheduler does not answer."""
    try:
        return len(client.nthreads())
    except Exception:  # noqa: BLE001 - the scheduler is gone or the comm broke
        return None


def _execute_dask(jobs: Sequence[Any], on_result: Callable[[list[RunRecord]], None], address: str, progress: bool) -> None:
    """Submit every job to the cluster and hand each result to `on_result` in this process as it arrives.

    A job whose worker dies is rescheduled on another worker by the scheduler (up to
    `distributed.scheduler.allowed-failures` times, 3 by default); each job's records reach
    `on_result` once. When the cluster has had no worker (or the scheduler has not answered) for
    `no_worker_timeout()` seconds, or the client loses the scheduler for good, the run stops with
    RBAError; the results handed over before stay written. A job that raises or that killed too many workers is reported after every other
    job has finished, as one RBAError naming it.
    """
    import asyncio
    import uuid
    from concurrent.futures import CancelledError

    from dask.distributed import wait

    limit = no_worker_timeout()
    client = connect_dask(address)
    bar = _progress(len(jobs), progress)
    futures: dict[Any, Any] = {}
    finished = 0

    def lost() -> RBAError:
        return RBAError(f"lost the connection to the Dask scheduler at {address}; {finished} of {len(jobs)} cells finished and are "
                        "in the store; restart the scheduler and its workers and re-run to compute the rest")

    try:
        token = uuid.uuid4().hex[:8]
        for i, job in enumerate(jobs):
            key = f"rba-{job.model}-{job.dataset}-s{job.seed}-{token}-{i}"
            futures[client.submit(_job_entry, job, key=key, pure=False)] = job
        pending = set(futures)
        errors: list[str] = []
        workers = _n_workers(client)
        alone_since: float | None = None if workers else time.monotonic()
        if not workers:
            log.warning("no Dask worker is connected to %s; waiting up to %g s for one (start `dask worker %s`)", address, limit, address)
        last_check = time.monotonic()
        while pending:
            try:
                with client.as_current():
                    done, pending = wait(pending, timeout=_POLL, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = set()
            except (CancelledError, asyncio.CancelledError):  # the client gave up reconnecting to the scheduler
                raise lost() from None
            for fut in done:
                job = futures[fut]
                if fut.status == "finished":
                    try:
                        records = fut.result(timeout=limit)
                    except TimeoutError:  # its data went with a worker: the scheduler recomputes it
                        pending.add(fut)
                        continue
                    except (CancelledError, asyncio.CancelledError):
                        raise lost() from None
                    on_result(records)
                    finished += 1
                    bar.set_postfix_str(f"{job.model} / {job.dataset}", refresh=False)
                    bar.update()
                elif fut.status == "cancelled" and client.status != "running":
                    raise lost()
                else:
                    exc = fut.exception() if fut.status == "error" else None
                    errors.append(f"{job.model} on {job.dataset} (seed {job.seed}): {first_line(exc) if exc else fut.status}")
            now = time.monotonic()
            if not pending or (done and now - last_check < _POLL):
                continue
            last_check = now
            n = _n_workers(client)
            if n != workers and n is not None and workers is not None and n < workers:
                log.warning("a Dask worker left %s (%d left); its unfinished jobs are rescheduled", address, n)
            workers = n
            if n:
                alone_since = None
                continue
            if alone_since is None:
                alone_since = now
                log.warning("no Dask worker is connected to %s; waiting up to %g s for one", address, limit)
            elif now - alone_since >= limit:
                what = "has had no worker" if n == 0 else "has not answered"
                raise RBAError(f"the Dask cluster at {address} {what} for {limit:g} s; {finished} of {len(jobs)} cells finished "
                               f"and are in the store; start workers (`dask worker {address}`) and re-run to compute the rest")
        if errors:
            hint = ("; install robustbench-align and its dependencies on every worker host" if "ModuleNotFoundError" in errors[0]
                    else "; re-run to retry them")
            raise RBAError(f"{len(errors)} of {len(jobs)} cells failed on the Dask cluster, the other {finished} are in the store; "
                           f"first: {errors[0][:300]}{hint}")
    finally:
        bar.close()
        with contextlib.suppress(Exception):
            client.cancel([f for f in futures if not f.done()])
        with contextlib.suppress(Exception):
            client.close(timeout=5)
