"""The suite's error types: one per category, each message says what was wrong and what to do."""


class RBAError(Exception):
    """Base class of every error the suite raises on purpose (the CLI prints it on one line, exit 2)."""


class DataError(RBAError, ValueError):
    """A dataset, file, split or label array that cannot be used as given."""


class ModelError(RBAError, ValueError):
    """A model that cannot be built, fitted, loaded, wrapped or queried as asked."""


class AttackError(RBAError, ValueError):
    """An attack or threat model asked for something invalid or inapplicable."""


class StoreError(RBAError):
    """A result store that is not a store, is from a newer schema, or is locked."""


class ConfigError(RBAError, ValueError):
    """A plan/config file with unknown keys or values of the wrong type."""


class BudgetError(ConfigError, AttackError):
    """A work budget (solver nodes, search steps, bisection steps) that is not a whole number >= its minimum."""


class Interrupted(RBAError):
    """A run stopped by SIGINT/SIGTERM; `stored` cells (or chunks) were written and a rerun resumes after them.

    `signum` is the signal (2 for SIGINT, 15 for SIGTERM); the CLI exits 128 + signum.
    """

    def __init__(self, stored: int, signum: int = 2, what: str = "cells") -> None:
        self.stored, self.signum = stored, signum
        super().__init__(f"interrupted; {stored} {what} stored, rerun to resume")


class Terminated(KeyboardInterrupt):
    """Raised in the driver by the CLI's SIGTERM handler, so a terminated run unwinds like Ctrl-C (exit 143)."""

    signum = 15


def first_line(exc: BaseException, *, with_type: bool = True) -> str:
    """The first line of an exception's message, for one-line errors (the type name when it has no text).

    with_type=True prefixes the type ("ValueError: bad shape"); False gives the bare text.
    """
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    return f"{type(exc).__name__}: {line}" if with_type else line


class OutputError(RBAError, OSError):
    """A report, table or plot that cannot be written where asked (read-only directory, a parent that is a file,
    an invalid path); the message names the path and the option to change."""


class ResourceError(RBAError, ValueError):
    """A job refused before it starts: its estimated memory (or size) exceeds a limit.

    The message states the estimate, the limit and the option that raises it (see `guards`).
    """
