"""torchvision adapter of the box predictor: ``OODFastRCNNPredictor`` and ``OODRoIHeads``.

The adapter only moves tensors between torchvision's conventions and the core's
(:mod:`ood_det.heads.base`):

* torchvision puts **background in logit column 0** and uses labels ``0 = background``,
  ``1 .. K`` = known classes; the core puts background **last** and uses ``0 .. K-1`` = known,
  ``K`` = background. :func:`core_to_tv_logits`, :func:`tv_to_core_logits` and
  :func:`tv_to_core_labels` convert; nothing else here knows any method's math.
* The classification loss is :meth:`ood_det.modeling.box_classifier.OODBoxClassifier.losses`
  (head loss + regularizers); box regression keeps torchvision's smooth-L1 loss.
* At inference every kept box carries every OOD score the head supports (higher = more
  in-distribution) and its ROI's maximum foreground probability (``roi_conf``) through score
  thresholding, ``remove_small_boxes``, ``batched_nms`` and top-k; the box confidence used there
  is ``head.predict_probs`` (separate from the OOD scores). Output labels are the contiguous
  ``0 .. K-1`` (torchvision label - 1). All per-ROI values come from
  :meth:`OODBoxClassifier.predict`.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from torch import nn
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.ops import boxes as box_ops

from ..modeling.box_classifier import OODBoxClassifier


# ------------------------------------------------------------------------- conventions
def core_to_tv_logits(logits: torch.Tensor) -> torch.Tensor:
    """``[R, K + 1]`` background-last -> background-first (torchvision's column order)."""
    return torch.cat([logits[:, -1:], logits[:, :-1]], dim=1)


def tv_to_core_logits(logits: torch.Tensor) -> torch.Tensor:
    """``[R, K + 1]`` background-first (torchvision) -> background-last (core)."""
    return torch.cat([logits[:, 1:], logits[:, :1]], dim=1)


def tv_to_core_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[R]`` torchvision labels (0 = background, 1..K) -> core labels (0..K-1, K = background)."""
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) > num_classes):
        raise ValueError(
            f"torchvision labels must lie in 0..{num_classes}, got {int(labels.min())}..{int(labels.max())}"
        )
    return torch.where(labels == 0, torch.full_like(labels, num_classes), labels - 1)


# ----------------------------------------------------------------------------- predictor
class OODFastRCNNPredictor(nn.Module):
    """Drop-in for torchvision's ``FastRCNNPredictor``: an :class:`OODBoxClassifier` (the core)
    plus the class-specific box regression layer.

    Args:
        classifier: the core box classifier (features ``[R, D]`` -> logits ``[R, K + 1]``,
            background last).
        in_channels: D.

    ``bbox_pred`` keeps torchvision's name and layout (``[R, (K + 1) * 4]``, class 0 =
    background) so torchvision detector checkpoints load into it.
    """

    def __init__(self, classifier: OODBoxClassifier, in_channels: int):
        super().__init__()
        self.classifier = classifier
        self.num_classes = classifier.num_classes
        self.bbox_pred = nn.Linear(in_channels, (self.num_classes + 1) * 4)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward_core(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``[R, D]`` -> (core logits ``[R, K + 1]`` background last, deltas ``[R, (K+1)*4]``)."""
        x = x.flatten(start_dim=1)
        return self.classifier(x), self.bbox_pred(x)

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """torchvision's interface: (logits ``[R, K + 1]`` **background first**, deltas)."""
        logits, deltas = self.forward_core(x)
        return core_to_tv_logits(logits), deltas

    def predict_probs_tv(self, tv_logits: torch.Tensor) -> torch.Tensor:
        """Box confidence of torchvision-order logits, in torchvision order ``[R, K + 1]``."""
        return core_to_tv_logits(self.classifier.head.predict_probs(tv_to_core_logits(tv_logits)))


# ----------------------------------------------------------------------------- ROI heads
class OODRoIHeads(RoIHeads):
    """torchvision ``RoIHeads`` whose box classification is an :class:`OODBoxClassifier`.

    Overrides ``forward`` (box branch only: masks / keypoints are not supported) and
    ``postprocess_detections``. Inference output per image (torchvision's keys plus two):
    ``boxes [N, 4]``, ``labels [N]`` in ``0 .. K-1``, ``scores [N]`` (box confidence),
    ``roi_conf [N]`` (the ROI's maximum foreground probability) and ``ood_scores``:
    ``{score: [N]}`` for every score the head supports (higher = more ID). Nothing is toggled on
    the module to choose scores.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not isinstance(self.box_predictor, OODFastRCNNPredictor):
            raise TypeError(f"OODRoIHeads needs an OODFastRCNNPredictor, got {type(self.box_predictor).__name__}")

    @property
    def classifier(self) -> OODBoxClassifier:
        return self.box_predictor.classifier

    # ------------------------------------------------------------------------ helpers
    def box_features(self, features: Dict[str, torch.Tensor], boxes: List[torch.Tensor], image_shapes) -> torch.Tensor:
        """``[sum_i R_i, D]`` box-head features of ``boxes`` (per image, transformed coordinates)."""
        return self.box_head(self.box_roi_pool(features, boxes, image_shapes))

    # ------------------------------------------------------------------------ forward
    def forward(self, features, proposals, image_shapes, targets=None):
        if self.has_mask() or self.has_keypoint():
            raise NotImplementedError("OODRoIHeads supports box detection only (no mask / keypoint heads)")
        if targets is not None:
            for t in targets:
                if t["boxes"].dtype not in (torch.float, torch.double, torch.half):
                    raise TypeError(f"target boxes must be of float type, got {t['boxes'].dtype}")
                if t["labels"].dtype != torch.int64:
                    raise TypeError(f"target labels must be of int64 type, got {t['labels'].dtype}")

        if self.training:
            proposals, _, labels, regression_targets = self.select_training_samples(proposals, targets)
        box_features = self.box_features(features, proposals, image_shapes)
        logits, box_regression = self.box_predictor.forward_core(box_features)

        if self.training:
            # box regression: torchvision's loss (its classification term is discarded: the
            # classification loss is the core's)
            _, loss_box_reg = fastrcnn_loss(core_to_tv_logits(logits), box_regression, labels, regression_targets)
            core_labels = tv_to_core_labels(torch.cat(labels, dim=0), self.classifier.num_classes)
            losses = dict(self.classifier.losses(box_features, logits, core_labels))
            if "loss_box_reg" in losses:
                raise KeyError("the classifier produced a loss named 'loss_box_reg'")
            losses["loss_box_reg"] = loss_box_reg
            return [], losses

        with torch.no_grad():
            out = self.classifier.predict(box_features.flatten(start_dim=1), logits)
            per_roi = {"roi_conf": out["roi_conf"], **{f"ood/{n}": v for n, v in out["ood_scores"].items()}}
            boxes, scores, labels, extras = self.postprocess_detections(
                core_to_tv_logits(logits), box_regression, proposals, image_shapes, per_roi=per_roi,
                probs=core_to_tv_logits(out["probs"]),
            )
        result = []
        for b, s, l, e in zip(boxes, scores, labels, extras):
            result.append({
                "boxes": b, "labels": l - 1, "scores": s, "roi_conf": e["roi_conf"],
                "ood_scores": {k[len("ood/"):]: v for k, v in e.items() if k.startswith("ood/")},
            })
        return result, {}

    def postprocess_detections(
        self,
        class_logits: torch.Tensor,
        box_regression: torch.Tensor,
        proposals: List[torch.Tensor],
        image_shapes: List[Tuple[int, int]],
        per_roi: Optional[Dict[str, torch.Tensor]] = None,
        probs: Optional[torch.Tensor] = None,
    ):
        """torchvision's box selection, carrying per-ROI tensors along with the boxes.

        Args:
            class_logits: ``[R, K + 1]`` torchvision order (background first).
            box_regression: ``[R, (K + 1) * 4]``.
            proposals: per image ``[R_i, 4]``.
            image_shapes: per image (H, W).
            per_roi: ``{name: [R, ...]}`` tensors indexed by ROI (e.g. OOD scores); each kept
                box gets the row of the ROI it came from.
            probs: ``[R, K + 1]`` box confidences in torchvision order, when already computed
                (default: the head's ``predict_probs`` of ``class_logits``).

        Returns:
            boxes, scores, labels (torchvision labels 1..K) per image, and per image a dict with
            the ``per_roi`` rows of the kept boxes.
        """
        per_roi = per_roi or {}
        device = class_logits.device
        num_classes = class_logits.shape[-1]
        boxes_per_image = [p.shape[0] for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals)
        pred_scores = probs if probs is not None else self.box_predictor.predict_probs_tv(class_logits)

        roi_index = torch.arange(class_logits.shape[0], device=device)
        out_boxes, out_scores, out_labels, out_extras = [], [], [], []
        for boxes, scores, rois, image_shape in zip(
            pred_boxes.split(boxes_per_image, 0),
            pred_scores.split(boxes_per_image, 0),
            roi_index.split(boxes_per_image, 0),
            image_shapes,
        ):
            boxes = box_ops.clip_boxes_to_image(boxes, image_shape)
            labels = torch.arange(num_classes, device=device).view(1, -1).expand_as(scores)
            rois = rois.view(-1, 1).expand_as(scores)
            # drop the background column; one candidate per (ROI, known class)
            boxes = boxes[:, 1:].reshape(-1, 4)
            scores = scores[:, 1:].reshape(-1)
            labels = labels[:, 1:].reshape(-1)
            rois = rois[:, 1:].reshape(-1)

            inds = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels, rois = boxes[inds], scores[inds], labels[inds], rois[inds]
            keep = box_ops.remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels, rois = boxes[keep], scores[keep], labels[keep], rois[keep]
            keep = box_ops.batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            boxes, scores, labels, rois = boxes[keep], scores[keep], labels[keep], rois[keep]

            out_boxes.append(boxes)
            out_scores.append(scores)
            out_labels.append(labels)
            out_extras.append({k: v[rois] for k, v in per_roi.items()})
        return out_boxes, out_scores, out_labels, out_extras
