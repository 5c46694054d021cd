"""The regularizer registry: name -> class (filled by the ``@register_regularizer`` decorator of each
regularizer module)."""
from __future__ import annotations

from ..registry import NameRegistry
from .base import Regularizer

REGULARIZERS = NameRegistry("OOD regularizer")
register_regularizer = REGULARIZERS.register
get_regularizer_class = REGULARIZERS.get_class


def build_regularizer(name: str, **kwargs) -> Regularizer:
    return get_regularizer_class(name)(**kwargs)


def build_regularizer_from_cfg(name: str, cfg) -> Regularizer:
    cls = get_regularizer_class(name)
    return cls(**cls.from_config(cfg))
