"""Model construction dispatching on ``cfg.BACKEND``.

* :func:`build_model`: the trainable detector (torchvision: :class:`~ood_det.tv.model.OODFasterRCNN`;
  detectron2: ``detectron2.modeling.build_model`` with the plugin registered), on
  ``MODEL.DEVICE``, with ``MODEL.BACKBONE.WEIGHTS`` / ``MODEL.WEIGHTS`` loaded when set.
* :func:`build_inference_model`: something with ``predict_images(images, score=None)`` (see
  :meth:`ood_det.tv.model.OODFasterRCNN.predict_images`), in eval mode, weights loaded.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence

from .comm import resolve_device

logger = logging.getLogger(__name__)


def class_names_from_weights(path: str) -> Optional[list]:
    """Class names stored in an ood_det checkpoint (None for other files)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    meta = ckpt.get("ood_det") if isinstance(ckpt, dict) else None
    return list(meta["class_names"]) if meta and meta.get("class_names") else None


def build_model(cfg, class_names: Optional[Sequence[str]] = None, load_weights: bool = True):
    """Build the detector of ``cfg.BACKEND`` on its device and load the configured weights."""
    if cfg.BACKEND == "detectron2":
        try:
            from detectron2.modeling import build_model as d2_build_model
            from detectron2.checkpoint import DetectionCheckpointer
        except ImportError as e:
            raise ImportError(f"BACKEND detectron2 needs detectron2 installed ({e})") from None
        import ood_det.d2  # noqa: F401  (registers the plugin's ROI heads / backbones)

        model = d2_build_model(cfg)
        if load_weights and cfg.MODEL.WEIGHTS:
            DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
        return model
    if cfg.BACKEND != "torchvision":
        raise ValueError(f"BACKEND={cfg.BACKEND!r}: expected 'torchvision' or 'detectron2'")

    from ..tv.model import build_tv_model
    from ..tv.weights import load_backbone_weights, load_detector_weights

    if class_names is None and cfg.MODEL.WEIGHTS:
        class_names = class_names_from_weights(cfg.MODEL.WEIGHTS)
    model = build_tv_model(cfg, class_names)
    if load_weights:
        if cfg.MODEL.BACKBONE.WEIGHTS:
            load_backbone_weights(model, cfg.MODEL.BACKBONE.WEIGHTS)
        if cfg.MODEL.WEIGHTS:
            load_detector_weights(model, cfg.MODEL.WEIGHTS)
    return model.to(resolve_device(cfg.MODEL.DEVICE))


def build_inference_model(cfg):
    """A model with ``predict_images`` for ``cfg.BACKEND``, weights from ``MODEL.WEIGHTS``."""
    if cfg.BACKEND == "detectron2":
        from ..d2.inference import D2InferenceModel

        return D2InferenceModel(cfg)
    if not cfg.MODEL.WEIGHTS:
        logger.warning("MODEL.WEIGHTS is empty: the inference model has random weights")
    model = build_model(cfg)
    model.eval()
    return model
