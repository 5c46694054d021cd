"""Strict JSON for every file ood_det writes: NaN / infinity become ``null`` (``json`` would write
the bare ``NaN`` that strict readers refuse), numpy values become python ones, and files are
written next to their destination and renamed into place."""
from __future__ import annotations

import json
import math
import os
from typing import Any, Optional

import numpy as np

__all__ = ["json_safe", "dumps", "write_json"]


def json_safe(x: Any) -> Any:
    """``x`` with numpy values as python ones and non-finite floats as None."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def dumps(obj: Any, indent: Optional[int] = None) -> str:
    """Strict JSON text of ``obj`` (see :func:`json_safe`)."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)


def write_json(obj: Any, path: str, indent: Optional[int] = 1) -> str:
    """Write ``obj`` as strict JSON to ``path`` atomically (temporary file + rename)."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(dumps(obj, indent=indent))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
