"""Training-time OOD regularizers, composable with any head.

``build_regularizer(name, **kwargs)``; see :mod:`ood_det.regularizers.base` for the contract.
"""
from __future__ import annotations

from .base import Regularizer
from .registry import REGULARIZERS, register_regularizer, build_regularizer, build_regularizer_from_cfg, get_regularizer_class

# each regularizer module registers itself on import
from . import vos, energy, greg, fpr  # noqa: E402,F401

__all__ = ["Regularizer", "REGULARIZERS", "register_regularizer", "build_regularizer",
           "build_regularizer_from_cfg", "get_regularizer_class"]
