"""Where jobs run: in-process, on a local process pool, or on an existing Dask cluster.

Jobs are independent and return records; `on_result` (the driver, the only store writer) is called
in the driver process as each job finishes, so a killed run keeps everything finished before it.
A SIGINT/SIGTERM that arrives while `on_result` runs is handled once it returns, so every result
is stored whole or not at all. Local pool workers ignore SIGINT (a terminal's Ctrl-C reaches the
whole process group; only the driver reacts, and stops the pool) and, on Linux, are killed when
the driver dies, even by SIGKILL.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..errors import ConfigError, RBAError, first_line
from .store import RunRecord

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _limit_threads() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)


def _die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when `parent` dies (Linux; elsewhere only the check below),
    and exit now when `parent` already died before that was set (this process was re-parented)."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(ctypes.c_int(_PR_SET_PDEATHSIG), ctypes.c_ulong(signal.SIGKILL), ctypes.c_ulong(0),
                          ctypes.c_ulong(0), ctypes.c_ulong(0)) != 0:
                log.debug("prctl(PR_SET_PDEATHSIG) failed: %s", os.strerror(ctypes.get_errno()))
        except (OSError, AttributeError):  # no libc prctl (e.g. a static or non-glibc build)
            log.debug("prctl is not available; pool workers outlive a killed driver")
    if os.getppid() != parent:
        os._exit(1)


def _init_worker(parent: int | None = None) -> None:
    """Set up a worker process: one torch/OpenMP thread.

    With `parent` (the driver's pid; local pool workers): also ignore SIGINT, so a terminal's
    Ctrl-C stops only the driver, and die with the driver (see `_die_with_parent`).
    """
    if parent is not None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with contextlib.suppress(AttributeError, OSError):  # started with SIGINT blocked by the driver
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        _die_with_parent(parent)
    _limit_threads()


def _job_entry(job: Any) -> list[RunRecord]:
    from .job import run_job

    _limit_threads()
    return run_job(job)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _signals_deferred(*, replay: bool = True) -> Iterator[None]:
    """Hold back SIGINT and SIGTERM (their Python handlers) inside the block; on leaving, run the handler of
    the first one that arrived (replay=True) or drop them (replay=False). A no-op outside the main thread."""
    if not _in_main_thread():
        yield
        return
    caught: list[tuple[int, Any]] = []
    saved: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if callable(handler):
            saved[sig] = handler
            signal.signal(sig, lambda signum, frame: caught.append((signum, frame)))
    try:
        yield
    finally:
        for signum, handler in saved.items():
            signal.signal(signum, handler)
        if replay and caught:
            signum, frame = caught[0]
            saved[signum](signum, frame)


@contextlib.contextmanager
def _interrupt_watch() -> Iterator[Callable[[], None]]:
    """Remember every SIGINT/SIGTERM that reaches its Python handler inside the block (main thread only); yields
    `check`, which raises that handler's exception again when one arrived.

    A handler's KeyboardInterrupt raised inside a C library's callback (xgboost's data iterator, a ctypes
    callback) is swallowed and only reported as "Exception ignored"; `check` after each job makes such an
    interrupt stop the run all the same, and such reports of a KeyboardInterrupt are silenced meanwhile.
    """
    if not _in_main_thread():
        yield lambda: None
        return
    seen: list[tuple[int, Any]] = []
    saved: dict[int, Any] = {}

    def watching(handler: Any) -> Callable[[int, Any], None]:
        def remember(signum: int, frame: Any) -> None:
            seen.append((signum, frame))
            handler(signum, frame)
        return remember

    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if callable(handler):
            saved[sig] = handler
            signal.signal(sig, watching(handler))
    hook = sys.unraisablehook

    def unraisable(info: Any) -> None:
        if not (isinstance(info.exc_type, type) and issubclass(info.exc_type, KeyboardInterrupt)):
            hook(info)

    def check() -> None:
        if seen:
            signum, frame = seen[0]
            seen.clear()
            saved[signum](signum, frame)

    sys.unraisablehook = unraisable
    try:
        yield check
    finally:
        sys.unraisablehook = hook
        for signum, handler in saved.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread inside the block, so processes started in it begin with SIGINT blocked
    (until their initializer ignores it); a SIGINT that arrives meanwhile is delivered on leaving."""
    if not _in_main_thread() or not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _pool_processes(pool: Any) -> list[Any]:
    """The worker processes of a ProcessPoolExecutor (its private `_processes` map; empty once it is shut down)."""
    return list((getattr(pool, "_processes", None) or {}).values())


def _how_workers_died(processes: Sequence[Any]) -> str:
    """How the dead ones of `processes` ended, e.g. "killed by SIGKILL, as the kernel does when memory runs out".

    The pool's own thread reaps the workers concurrently; a poll that loses that race reads None
    although the process is dead, so wait (at most 2 s) until every dead worker has its exit code.
    """
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and not all(p.exitcode is not None for p in processes):
        time.sleep(0.05)
    codes = sorted({p.exitcode for p in processes if p.exitcode not in (None, 0)})
    if len(codes) > 1:  # the pool SIGTERMs the other workers once one died
        codes = [c for c in codes if c != -signal.SIGTERM]
    if not codes:
        return "it ended without a result"
    how = []
    for code in codes:
        try:
            how.append(f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}")
        except ValueError:
            how.append(f"killed by signal {-code}")
    oom = ", as the kernel does when memory runs out" if -signal.SIGKILL in codes else ""
    return ", ".join(how) + oom


def _stop_pool(pool: Any, started: Sequence[Any]) -> None:
    """Stop a process pool at once: cancel its pending jobs and terminate its workers (SIGKILL after 2 s)."""
    with _signals_deferred(replay=False):  # a second Ctrl-C must not cut the clean-up short
        processes = list({id(p): p for p in [*started, *_pool_processes(pool)]}.values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            with contextlib.suppress(Exception):
                proc.terminate()
        deadline = time.monotonic() + 2.0
        for proc in processes:
            with contextlib.suppress(Exception):
                proc.join(max(0.0, deadline - time.monotonic()))
                if proc.is_alive():
                    proc.kill()
                    proc.join(1.0)


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
    """Run `jobs`, calling `on_result(records)` in this process for each finished job.

    A KeyboardInterrupt (SIGINT, or SIGTERM through the CLI's handler) propagates once the result being
    handed over is stored, also when a library swallowed it inside a job (that job's result is then
    dropped); with workers > 1 the pool is stopped first (pending jobs cancelled, workers terminated).
    A worker process that dies abruptly (e.g. killed by the OOM killer) stops the run with RBAError.
    """
    if not jobs:
        return
    if workers < 1 and not dask_address:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    with _interrupt_watch() as check:
        if dask_address:
            _execute_dask(jobs, on_result, dask_address, progress)
            return
        bar = _progress(len(jobs), progress)
        try:
            if workers == 1:
                from .job import run_job

                for job in jobs:
                    bar.set_postfix_str(f"{job.model} / {job.dataset}", refresh=False)
                    records = run_job(job)
                    check()
                    with _signals_deferred():
                        on_result(records)
                    bar.update()
                return
            _execute_pool(jobs, on_result, workers, bar, check)
        finally:
            bar.close()


def _execute_pool(jobs: Sequence[Any], on_result: Callable[[list[RunRecord]], None], workers: int, bar: Any,
                  check: Callable[[], None]) -> None:
    """Run `jobs` on `workers` spawned processes; on any exception (KeyboardInterrupt included) stop the pool at once."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(),))
    processes: list[Any] = []
    try:
        with _sigint_blocked():  # the workers start here and inherit the mask: none can die of an early Ctrl-C
            futures = {pool.submit(_job_entry, job): job for job in jobs}
            processes = _pool_processes(pool)
        for fut in as_completed(futures):
            try:
                records = fut.result()
            except BrokenProcessPool:
                raise RBAError(f"a worker process died abruptly ({_how_workers_died(processes)}); the cells finished before "
                               "are in the store; rerun (with fewer --workers if memory ran out) to resume") from None
            check()
            with _signals_deferred():
                on_result(records)
            bar.update()
    except BaseException:
        _stop_pool(pool, processes)
        raise
    pool.shutdown(wait=True)


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
                    with _signals_deferred():
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
