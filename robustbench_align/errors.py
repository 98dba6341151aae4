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
