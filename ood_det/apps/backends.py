"""The two backends, looked up by the config's ``BACKEND`` key (imported only when used).

A backend is a module with ``new_config()`` (its config schema), ``main(cfg, args)`` (train and
evaluate) and ``build_inference_model(cfg, class_names=None)`` (a model with ``predict_images``):
:mod:`ood_det.tv.train_net` and :mod:`ood_det.d2.train_net`.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from ..config import BACKENDS

_MODULES = {"torchvision": "ood_det.tv.train_net", "detectron2": "ood_det.d2.train_net"}

DETECTRON2_MISSING = (
    "BACKEND: detectron2 needs detectron2, which is not installed ({err}). It is on no package "
    "registry: install it from its repository (see README.md, 'detectron2'), or use BACKEND: torchvision."
)


def get_backend(name: str) -> ModuleType:
    """The backend module of ``name`` (``"torchvision"`` or ``"detectron2"``)."""
    if name not in _MODULES:
        raise ValueError(f"BACKEND={name!r}: expected one of {BACKENDS}")
    if name == "detectron2":
        try:
            import detectron2  # noqa: F401
        except ImportError as e:
            raise ImportError(DETECTRON2_MISSING.format(err=e)) from None
    return importlib.import_module(_MODULES[name])
