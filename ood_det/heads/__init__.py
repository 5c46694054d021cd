"""OOD-aware box classification heads (framework-agnostic).

``build_head(name, in_features, num_classes, **kwargs)`` builds one by name; see
:mod:`ood_det.heads.base` for the shared conventions.
"""
from __future__ import annotations

from .base import OODHead
from .registry import HEADS, register_head, build_head, build_head_from_cfg, get_head_class

# each head module registers itself on import
from . import softmax, isomax, isomaxplus, dismax, cfl  # noqa: E402,F401

__all__ = ["OODHead", "HEADS", "register_head", "build_head", "build_head_from_cfg", "get_head_class"]
