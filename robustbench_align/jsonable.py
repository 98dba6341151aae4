"""The one conversion of nested results into values `json` can encode (store columns and report files)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def jsonable(value: Any, *, finite: bool = False) -> Any:
    """A copy of `value` built from JSON types only.

    Mapping keys become strings, tuples/lists lists, sets sorted lists (by repr, so the text is
    stable), DataFrames lists of row records, and numpy scalars/arrays Python numbers and lists
    (through `tolist`). With `finite=True`, NaN and ±inf become None (strict JSON, for report files
    whose reasons are stored beside the value); otherwise floats are kept as they are (the store
    writes them with Python's NaN/Infinity tokens). Anything else is returned unchanged.
    """
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, finite=finite) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [jsonable(v, finite=finite) for v in items]
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # a pandas DataFrame: one record per row
        return [jsonable(r, finite=finite) for r in value.to_dict("records")]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return jsonable(value.tolist(), finite=finite)
    if finite and isinstance(value, float) and not math.isfinite(value):
        return None
    return value


__all__ = ["jsonable"]
