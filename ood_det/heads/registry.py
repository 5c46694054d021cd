"""The head registry: name -> class (filled by the ``@register_head`` decorator of each head module)."""
from __future__ import annotations

from typing import Dict, Type

from .base import OODHead

HEADS: Dict[str, Type[OODHead]] = {}


def register_head(cls: Type[OODHead]) -> Type[OODHead]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no registry name")
    if cls.name in HEADS:
        raise KeyError(f"head {cls.name!r} is already registered")
    HEADS[cls.name] = cls
    return cls


def get_head_class(name: str) -> Type[OODHead]:
    try:
        return HEADS[name]
    except KeyError:
        raise KeyError(f"unknown OOD head {name!r}; known: {', '.join(sorted(HEADS))}") from None


def build_head(name: str, in_features: int, num_classes: int, **kwargs) -> OODHead:
    """Build head ``name`` for ``in_features``-d ROI features and ``num_classes`` known classes."""
    return get_head_class(name)(in_features=in_features, num_classes=num_classes, **kwargs)


def build_head_from_cfg(cfg, in_features: int) -> OODHead:
    """Build ``cfg.MODEL.OOD.HEAD`` with the keyword arguments its ``from_config`` reads."""
    cls = get_head_class(cfg.MODEL.OOD.HEAD)
    return cls(**cls.from_config(cfg, in_features))


