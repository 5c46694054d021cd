"""``D2InferenceModel``: a detectron2 OOD detector behind the backend-neutral inference API.

:func:`ood_det.d2.train_net.build_inference_model` returns one of these;
:class:`ood_det.apps.predictor.Predictor` and the scoring tool drive it through
:meth:`D2InferenceModel.predict_images`, the inference contract both backends share.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from ..modeling.box_classifier import OODBoxClassifier
from ..engine.comm import resolve_device
from .output_layers import OODFastRCNNOutputLayers

__all__ = ["D2InferenceModel", "find_ood_predictor", "instances_to_numpy"]


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


def instances_to_numpy(inst, score_names: Sequence[str], scores: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """One image's output ``Instances`` (fields of :mod:`ood_det.d2.output_layers`) as the numpy
    dict of the inference contract: ``boxes, labels, scores, roi_conf, ood_scores: {name: [N]}``.

    Args:
        score_names: the head's ``supported_scores`` (the columns of ``ood_score_table``).
        scores: the scores to keep (default: all of them).
    """
    inst = inst.to("cpu")
    table = inst.ood_score_table.float().numpy().reshape(len(inst), len(score_names))
    keep = list(scores) if scores is not None else list(score_names)
    return {
        "boxes": inst.pred_boxes.tensor.float().numpy().reshape(-1, 4),
        "labels": inst.pred_classes.numpy().astype("int64"),
        "scores": inst.scores.float().numpy(),
        "roi_conf": inst.roi_conf.float().numpy(),
        "ood_scores": {n: table[:, list(score_names).index(n)] for n in keep},
    }


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
        self.cfg.MODEL.DEVICE = resolve_device(self.cfg.MODEL.DEVICE).type
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
        self, images: Sequence[np.ndarray], scores: Optional[Sequence[str]] = None
    ) -> List[Dict[str, object]]:
        """Detect and score: the inference contract both backends share.

        Args:
            images: ``H x W x 3`` uint8 **RGB** arrays (sizes may differ).
            scores: OOD score names (default: the classifier's configured score).

        Returns:
            per image ``{"boxes" [N, 4] float32 xyxy pixels, "labels" [N] int64 in 0..K-1,
            "scores" [N] float32 box confidence, "roi_conf" [N] float32, "ood_scores": {name: [N]
            float32} (higher = more ID)}``.
        """
        names = self.box_classifier.check_scores(scores)
        if not len(images):
            return []
        outputs = self.model([self._prepare(im) for im in images])
        supported = self.box_classifier.head.supported_scores
        return [instances_to_numpy(out["instances"], supported, names) for out in outputs]

    __call__ = predict_images
