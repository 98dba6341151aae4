"""The floating-point dtypes the torch-backed estimators (MLP, GrokAlign, RFM) compute in, by name."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

DTYPES = ("float32", "float64")  # the accepted values of an estimator's `dtype` parameter


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype for a dtype name ('float64' → torch.float64, else torch.float32); imports torch lazily."""
    import torch

    return torch.float64 if name == "float64" else torch.float32


__all__ = ["DTYPES", "torch_dtype"]
