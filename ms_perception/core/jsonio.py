"""Strict JSON for everything the project writes: NaN and infinities become null (Python's json
writes the non-standard ``NaN``, which jq, JavaScript and most JSON readers reject), numpy
scalars and arrays become plain numbers and lists, and ``allow_nan=False`` makes any value that
slipped through an error instead of invalid output."""
from __future__ import annotations

import json
import math

import numpy as np


def clean(obj):
    """A copy of ``obj`` that strict JSON can hold (non-finite floats -> None)."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return clean(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _plain(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    raise TypeError(f"{type(o).__name__} is not JSON serializable")


def dumps(obj, **kw) -> str:
    """Strict JSON of ``obj``. Fast path: the encoder itself, numpy values converted as met, which
    raises on a non-finite number; only then the whole object is cleaned (non-finite -> null)."""
    try:
        return json.dumps(obj, allow_nan=False, default=_plain, **kw)
    except (ValueError, TypeError):
        return json.dumps(clean(obj), allow_nan=False, **kw)
