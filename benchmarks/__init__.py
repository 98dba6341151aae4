"""Performance and quality comparisons of robustbench-align's hot paths against their anchor libraries.

Every comparison runs both sides in the same process run, on the same data, and reports ratios
(ours / anchor); absolute timings depend on the machine and its load and are recorded only as context.
`python -m benchmarks [--quick]` runs them all and writes benchmarks/RESULTS.md.
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (platform.processor() is empty on most Linux systems)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """CPU, core count, load averages and library versions, to print beside every timing."""
    import numpy
    import torch

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "loadavg": os.getloadavg(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": numpy.__version__,
        "milp": milp_backend(),
    }


def milp_backend() -> str:
    """What the exact tree MILP runs on here: HiGHS, or Gurobi (with its version) where its licence takes the program."""
    from robustbench_align.attacks.trees.mip import gurobi_unavailable

    why = gurobi_unavailable()
    if why:
        return f"HiGHS ({why})"
    import gurobipy

    return f"Gurobi {'.'.join(map(str, gurobipy.gurobi.version()))} where licensed, else HiGHS"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median_time(fn: Callable[[], Any], repeats: int) -> tuple[float, list[float], Any]:
    """(median wall seconds, all times, first result) over `repeats` calls."""
    times, first = [], None
    for i in range(max(1, int(repeats))):
        t, out = timed(fn)
        times.append(t)
        if i == 0:
            first = out
    return statistics.median(times), times, first


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, list[float], Any]]:
    """median_time for several methods with the repeats interleaved, so load swings hit every method alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    first: dict[str, Any] = {}
    for _ in range(max(1, int(repeats))):
        for k, fn in fns.items():
            t, out = timed(fn)
            times[k].append(t)
            first.setdefault(k, out)
    return {k: (statistics.median(v), v, first[k]) for k, v in times.items()}
