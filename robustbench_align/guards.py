"""Resource limits checked before expensive work starts: memory estimates and size caps.

- Memory: `check_memory(needed, what)` refuses (ResourceError, one line) a job whose estimated
  peak memory exceeds the limit: $RBA_MEMORY_LIMIT_GB if set, else half of the memory available
  now (MemAvailable from /proc/meminfo, bounded by a cgroup limit when one is set; the physical
  memory from os.sysconf where /proc is missing).
- Caps: `env_cap(name, default)` reads a whole-number cap from an environment variable (the
  table column cap $RBA_MAX_COLUMNS, the tree depth and node caps $RBA_MAX_TREE_DEPTH and
  $RBA_MAX_TREE_NODES); a malformed value is a ConfigError naming the variable.
- Paths: `file_kind(mode)` names what a non-regular file is (a directory, a FIFO, ...), so data and
  model loaders can refuse it without opening it (reading a FIFO could block forever).
"""
from __future__ import annotations

import math
import os
import stat
from pathlib import Path

from .errors import ConfigError, ResourceError

MEMORY_ENV = "RBA_MEMORY_LIMIT_GB"
DEFAULT_MEMORY_FRACTION = 0.5  # of the memory available when the check runs
_GB = 1024**3


def format_bytes(n: float) -> str:
    """A byte count as text with a binary unit ("23.4 GB", "512 MB", "3 KB")."""
    n = float(n)
    for unit, size in (("TB", 1024**4), ("GB", _GB), ("MB", 1024**2), ("KB", 1024)):
        if n >= size:
            v = n / size
            return f"{v:.1f} {unit}" if v < 100 else f"{v:.0f} {unit}"
    return f"{n:.0f} B"


def _meminfo_available() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where it cannot be read)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """Bytes this process's cgroup may still allocate (limit minus usage), None without a finite limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            raw = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if not raw.isdigit() or int(raw) >= 1 << 60:  # "max" or the v1 "unlimited" sentinel
            return None
        try:
            used = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            used = 0
        return max(int(raw) - used, 0)
    return None


def available_memory() -> int | None:
    """Bytes of memory available to this process now, or None when the system does not say."""
    avail = _meminfo_available()
    if avail is None:
        try:
            avail = int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
        except (AttributeError, ValueError, OSError):
            avail = None
    room = _cgroup_room()
    if room is not None:
        avail = room if avail is None else min(avail, room)
    return avail


def memory_limit() -> tuple[float, str]:
    """The memory limit in bytes and how it was set: $RBA_MEMORY_LIMIT_GB, else half the available memory.

    Without either (a system that reports no memory figures) the limit is infinite.
    """
    raw = os.environ.get(MEMORY_ENV, "").strip()
    if raw:
        try:
            gb = float(raw)
        except ValueError:
            gb = math.nan
        if not (gb > 0 and math.isfinite(gb)):
            raise ConfigError(f"{MEMORY_ENV}={raw!r} is not a number of gigabytes > 0; set it like {MEMORY_ENV}=16")
        return gb * _GB, f"{MEMORY_ENV}={raw}"
    avail = available_memory()
    if avail is None:
        return math.inf, "no memory figure from the system"
    return DEFAULT_MEMORY_FRACTION * avail, f"half of the {format_bytes(avail)} available"


def check_memory(needed: float, what: str, hint: str = "") -> None:
    """ResourceError (one line) when `needed` bytes exceed `memory_limit()`; `what` names the job, `hint` a way to shrink it."""
    limit, source = memory_limit()
    if needed <= limit:
        return
    shrink = f"{hint}, or " if hint else ""
    raise ResourceError(
        f"{what} needs about {format_bytes(needed)} of memory, above the limit of {format_bytes(limit)} ({source}); "
        f"{shrink}set {MEMORY_ENV} to a larger number of gigabytes to try anyway"
    )


def env_cap(name: str, default: int) -> int:
    """A whole-number cap >= 1 from environment variable `name` (its default when unset); ConfigError if malformed."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return int(default)
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{name}={raw!r} is not a whole number >= 1; set it like {name}={default}")
    return value


__all__ = ["DEFAULT_MEMORY_FRACTION", "MEMORY_ENV", "available_memory", "check_memory", "env_cap", "format_bytes", "memory_limit"]


def file_kind(mode: int) -> str | None:
    """What a non-regular file is ("a directory", "a FIFO (named pipe)", ...) from its st_mode; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
    return next((text for test, text in kinds if test(mode)), "not a regular file")
