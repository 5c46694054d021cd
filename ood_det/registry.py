"""``NameRegistry``: classes registered under their ``name`` attribute (the heads and the
regularizers each keep one), with errors that list what is registered."""
from __future__ import annotations

from typing import Dict, Type, TypeVar

T = TypeVar("T", bound=type)

__all__ = ["NameRegistry"]


class NameRegistry(Dict[str, type]):
    """``{name: class}``; :meth:`register` is a class decorator using ``cls.name``.

    Args:
        kind: what is registered, for messages (``"OOD head"``).
    """

    def __init__(self, kind: str):
        super().__init__()
        self.kind = kind

    def register(self, cls: T) -> T:
        name = getattr(cls, "name", "")
        if not name:
            raise ValueError(f"{cls.__name__} has no registry name")
        if name in self:
            raise KeyError(f"{self.kind} {name!r} is already registered")
        self[name] = cls
        return cls

    def get_class(self, name: str) -> Type:
        try:
            return self[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self))}") from None
