"""Building the torchvision detector from a config.

* :func:`build_model`: :class:`~ood_det.tv.model.OODFasterRCNN` on ``MODEL.DEVICE``, with
  ``MODEL.BACKBONE.WEIGHTS`` / ``MODEL.WEIGHTS`` loaded when set;
* :func:`build_inference_model`: the same in eval mode, for ``predict_images``.
"""
from __future__ import annotations

from typing import Optional, Sequence

from ..engine.checkpoint import read_metadata
from ..engine.comm import resolve_device
from .model import OODFasterRCNN, build_tv_model
from .weights import load_backbone_weights, load_detector_weights


def class_names_from_weights(path: str) -> Optional[list]:
    """Class names stored in an ood_det checkpoint (None for other or unreadable files)."""
    try:
        meta = read_metadata(path)
    except (OSError, RuntimeError, ValueError):
        return None
    return list(meta["class_names"]) if meta and meta.get("class_names") else None


def build_model(cfg, class_names: Optional[Sequence[str]] = None, load_weights: bool = True) -> OODFasterRCNN:
    """Build the detector of ``cfg`` on its device and load the configured weights."""
    if class_names is None and cfg.MODEL.WEIGHTS:
        class_names = class_names_from_weights(cfg.MODEL.WEIGHTS)
    model = build_tv_model(cfg, class_names)
    if load_weights:
        if cfg.MODEL.BACKBONE.WEIGHTS:
            load_backbone_weights(model, cfg.MODEL.BACKBONE.WEIGHTS)
        if cfg.MODEL.WEIGHTS:
            load_detector_weights(model, cfg.MODEL.WEIGHTS)
    return model.to(resolve_device(cfg.MODEL.DEVICE))


def build_inference_model(cfg, class_names: Optional[Sequence[str]] = None) -> OODFasterRCNN:
    """The detector in eval mode (``predict_images``), weights from ``MODEL.WEIGHTS`` if set
    (:class:`~ood_det.apps.predictor.Predictor` loads them strictly itself)."""
    return build_model(cfg, class_names).eval()
