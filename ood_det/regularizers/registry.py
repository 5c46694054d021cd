"""The regularizer registry: name -> class (filled by the ``@register_regularizer`` decorator of each regularizer module)."""
from __future__ import annotations

from typing import Dict, Type

from .base import Regularizer

REGULARIZERS: Dict[str, Type[Regularizer]] = {}


def register_regularizer(cls: Type[Regularizer]) -> Type[Regularizer]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no registry name")
    if cls.name in REGULARIZERS:
        raise KeyError(f"regularizer {cls.name!r} is already registered")
    REGULARIZERS[cls.name] = cls
    return cls


def get_regularizer_class(name: str) -> Type[Regularizer]:
    try:
        return REGULARIZERS[name]
    except KeyError:
        raise KeyError(
            f"unknown OOD regularizer {name!r}; known: {', '.join(sorted(REGULARIZERS))}"
        ) from None


def build_regularizer(name: str, **kwargs) -> Regularizer:
    return get_regularizer_class(name)(**kwargs)


def build_regularizer_from_cfg(name: str, cfg) -> Regularizer:
    cls = get_regularizer_class(name)
    return cls(**cls.from_config(cfg))
