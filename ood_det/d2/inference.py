"""``D2InferenceModel``: a detectron2 OOD detector behind the backend-neutral inference API.

``ood_det.engine.build.build_inference_model(cfg)`` returns one of these when
``cfg.BACKEND == "detectron2"``; :class:`ood_det.engine.predictor.Predictor` drives it.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from ..modeling.box_classifier import OODBoxClassifier
from .config import resolve_device
from .output_layers import OODFastRCNNOutputLayers

__all__ = ["D2InferenceModel", "find_ood_predictor"]


def find_ood_predictor(model: torch.nn.Module) -> OODFastRCNNOutputLayers:
    """The :class:`OODFastRCNNOutputLayers` inside a detectron2 model (unwrapping DDP)."""
    model = getattr(model, "module", model)
    for m in model.modules():
        if isinstance(m, OODFastRCNNOutputLayers):
            return m
    raise ValueError(
        f"{type(model).__name__} has no OODFastRCNNOutputLayers: set "
        "MODEL.ROI_HEADS.NAME: OODROIHeads (and call add_ood_d2_config)"
    )


class D2InferenceModel:
    """A detectron2 model built from ``cfg`` in eval mode, taking RGB uint8 images.

    Resizes like detectron2's ``DefaultPredictor`` (shortest edge ``INPUT.MIN_SIZE_TEST``, at most
    ``INPUT.MAX_SIZE_TEST``), converts to ``INPUT.FORMAT`` and runs the images as one batch; boxes
    come back in the original image's pixels.

    Attributes:
        model: the detectron2 ``GeneralizedRCNN`` (its ``state_dict`` is what checkpoints hold).
        cfg: a clone of the config.
    """

    def __init__(self, cfg, weights: Optional[str] = None):
        self.cfg = cfg.clone()
        if self.cfg.is_frozen():
            self.cfg.defrost()
        resolve_device(self.cfg)
        self.model = build_model(self.cfg)
        self.model.eval()
        self.predictor = find_ood_predictor(self.model)
        self.aug = T.ResizeShortestEdge(
            [self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MIN_SIZE_TEST], self.cfg.INPUT.MAX_SIZE_TEST
        )
        if self.cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT={self.cfg.INPUT.FORMAT!r}: expected RGB or BGR")
        weights = weights if weights is not None else self.cfg.MODEL.WEIGHTS
        if weights:
            self.load(weights)

    @property
    def box_classifier(self) -> OODBoxClassifier:
        return self.predictor.box_classifier

    @property
    def device(self) -> torch.device:
        return self.model.device

    def load(self, weights: str) -> Dict:
        """Load a checkpoint (ours, or any detectron2 ``.pth`` / ``.pkl``) with detectron2's
        checkpointer. Returns what the checkpointer did not consume (e.g. ``"ood_det"``)."""
        return DetectionCheckpointer(self.model).load(weights, checkpointables=[])

    def eval(self) -> "D2InferenceModel":
        self.model.eval()
        return self

    def to(self, device) -> "D2InferenceModel":
        self.model.to(device)
        return self

    def _prepare(self, image: np.ndarray) -> dict:
        if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(
                f"expected an H x W x 3 uint8 RGB image, got {type(image).__name__} "
                f"{getattr(image, 'shape', '')}"
            )
        h, w = image.shape[:2]
        if self.cfg.INPUT.FORMAT == "BGR":
            image = image[:, :, ::-1]
        image = self.aug.get_transform(image).apply_image(np.ascontiguousarray(image))
        tensor = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
        return {"image": tensor, "height": h, "width": w}

    @torch.no_grad()
    def predict_images(
        self, images: Sequence[np.ndarray], score: Optional[str] = None
    ) -> List[Dict[str, np.ndarray]]:
        """Detect and score.

        Args:
            images: ``H x W x 3`` uint8 **RGB** arrays (sizes may differ).
            score: OOD score name (default: ``MODEL.OOD.SCORE`` / the head's default).

        Returns:
            per image ``{"boxes" [N, 4] float32 xyxy pixels, "labels" [N] int64 in 0..K-1,
            "scores" [N] float32 box confidence, "ood_scores" [N] float32 (higher = more ID)}``.
        """
        if not len(images):
            return []
        inputs = [self._prepare(im) for im in images]
        old = self.predictor.ood_score_name
        self.predictor.ood_score_name = score
        try:
            outputs = self.model(inputs)
        finally:
            self.predictor.ood_score_name = old
        res = []
        for out in outputs:
            inst = out["instances"].to("cpu")
            res.append(
                {
                    "boxes": inst.pred_boxes.tensor.numpy().astype(np.float32).reshape(-1, 4),
                    "labels": inst.pred_classes.numpy().astype(np.int64),
                    "scores": inst.scores.numpy().astype(np.float32),
                    "ood_scores": inst.ood_scores.numpy().astype(np.float32),
                }
            )
        return res

    __call__ = predict_images
