"""The head registry: name -> class (filled by the ``@register_head`` decorator of each head module)."""
from __future__ import annotations

from typing import Type

from ..registry import NameRegistry
from .base import OODHead

HEADS = NameRegistry("OOD head")
register_head = HEADS.register
get_head_class = HEADS.get_class


def build_head(name: str, in_features: int, num_classes: int, **kwargs) -> OODHead:
    """Build head ``name`` for ``in_features``-d ROI features and ``num_classes`` known classes."""
    return get_head_class(name)(in_features=in_features, num_classes=num_classes, **kwargs)


def build_head_from_cfg(cfg, in_features: int) -> OODHead:
    """Build ``cfg.MODEL.OOD.HEAD`` with the keyword arguments its ``from_config`` reads."""
    cls: Type[OODHead] = get_head_class(cfg.MODEL.OOD.HEAD)
    return cls(**cls.from_config(cfg, in_features))
