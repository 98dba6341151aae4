"""robustbench-align: adversarial robustness and Jacobian alignment of tabular classifiers.

Public API (imported lazily so `import robustbench_align` stays cheap):
load_dataset, list_datasets, wrap, list_models, build, minimal_radius, robust_accuracy,
alignment, correlate, evaluate, leaderboard, and the error types.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import AttackError, ConfigError, DataError, ModelError, RBAError, StoreError

__version__ = "0.1.0"

_EXPORTS = {
    "load_dataset": "robustbench_align.data.registry",
    "list_datasets": "robustbench_align.data.registry",
    "Dataset": "robustbench_align.data.tabular",
    "Model": "robustbench_align.models.base",
    "wrap": "robustbench_align.models.base",
    "list_models": "robustbench_align.models.registry",
    "build": "robustbench_align.models.registry",
    "save_model": "robustbench_align.models.persistence",
    "load_model": "robustbench_align.models.persistence",
    "minimal_radius": "robustbench_align.attacks.api",
    "robust_accuracy": "robustbench_align.attacks.api",
    "alignment": "robustbench_align.metrics.alignment",
    "correlate": "robustbench_align.metrics.stats",
    "evaluate": "robustbench_align.runner.api",
    "leaderboard": "robustbench_align.reports.tables",
}

__all__ = sorted(_EXPORTS) + ["AttackError", "ConfigError", "DataError", "ModelError", "RBAError", "StoreError"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'robustbench_align' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
