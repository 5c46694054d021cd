"""``OODFastRCNNOutputLayers``: detectron2's box predictor with an OOD head as classifier.

The classification layer ``cls_score`` (an ``nn.Linear`` in detectron2) is replaced by the core
:class:`ood_det.modeling.box_classifier.OODBoxClassifier`; box regression is detectron2's.
detectron2 already orders logits with background **last** and labels in ``0 .. K``, the core's
convention, so nothing is permuted here.

Shapes: ``features`` ``[R, D]`` (box-head output), ``logits`` ``[R, K + 1]``, ``deltas``
``[R, 4K]`` (or ``[R, 4]`` class-agnostic). Every output ``Instances`` carries, next to
detectron2's fields, ``ood_scores`` ``[N]`` (the configured score, higher = more ID),
``ood_score_table`` ``[N, S]`` (every score the head supports, columns in the order of
``head.supported_scores``) and ``roi_conf`` ``[N]`` (the ROI's maximum foreground probability).
All per-ROI values come from :meth:`OODBoxClassifier.predict`; nothing is toggled on the module.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple, Union

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec, cat
from detectron2.modeling.roi_heads.fast_rcnn import (
    FastRCNNOutputLayers,
    _log_classification_stats,
    fast_rcnn_inference_single_image,
)
from detectron2.structures import Instances

from ..heads import OODHead
from ..modeling.box_classifier import OODBoxClassifier

__all__ = ["OODFastRCNNOutputLayers", "ood_fast_rcnn_inference"]


def ood_fast_rcnn_inference(
    boxes: List[torch.Tensor],
    scores: List[torch.Tensor],
    ood_scores: List[torch.Tensor],
    image_shapes: List[Tuple[int, int]],
    score_thresh: float,
    nms_thresh: float,
    topk_per_image: int,
    extra_fields: Optional[Dict[str, List[torch.Tensor]]] = None,
) -> Tuple[List[Instances], List[torch.Tensor]]:
    """detectron2's ``fast_rcnn_inference`` that also carries a per-box OOD score.

    Wraps :func:`detectron2.modeling.roi_heads.fast_rcnn.fast_rcnn_inference_single_image`
    (which does thresholding + per-class NMS). That function first drops rows whose boxes or
    class scores are not finite and returns ``kept`` indices into the *remaining* rows; the OOD
    score is filtered the same way before indexing, so ``ood_scores`` stays aligned with boxes.

    Args:
        boxes: per image ``[Ri, 4K]`` or ``[Ri, 4]``; scores: per image ``[Ri, K + 1]``;
        ood_scores: per image ``[Ri]``;
        extra_fields: ``{field: per image [Ri, ...]}``, more per-box values to carry the same way
            (e.g. one field per OOD score); the rest as in detectron2.

    Returns:
        Instances with ``pred_boxes``, ``scores``, ``pred_classes`` and ``ood_scores``; and per
        image the kept indices into the image's **input** rows ``0 .. Ri-1`` (detectron2 returns
        indices into the finite rows only, which differ when a row was dropped).
    """
    extra_fields = extra_fields or {}
    results, kept = [], []
    for i, (b, s, o, shape) in enumerate(zip(boxes, scores, ood_scores, image_shapes)):
        fields = {"ood_scores": o, **{k: v[i] for k, v in extra_fields.items()}}
        for k, v in fields.items():
            if v.shape[0] != b.shape[0]:
                raise ValueError(f"image {i}: {k} has {v.shape[0]} rows for {b.shape[0]} boxes")
        valid = torch.isfinite(b).all(dim=1) & torch.isfinite(s).all(dim=1)
        inst, keep = fast_rcnn_inference_single_image(
            b, s, shape, score_thresh, nms_thresh, topk_per_image
        )
        rows = torch.nonzero(valid, as_tuple=True)[0][keep]
        for k, v in fields.items():
            inst.set(k, v[rows])
        results.append(inst)
        kept.append(rows)
    return results, kept


class OODFastRCNNOutputLayers(FastRCNNOutputLayers):
    """Fast R-CNN output layers whose classifier is an :class:`OODBoxClassifier`.

    ``forward(x)`` is detectron2's: it returns the 2-tuple ``(logits [R, K+1], deltas)`` that
    :meth:`predict_boxes` / :meth:`predict_probs` expect. :meth:`losses` and :meth:`inference`
    take the box features as an extra keyword (``features``), which
    :class:`ood_det.d2.roi_heads.OODROIHeads` passes; regularizers and feature-based scores
    (CFL) need them.

    Args:
        input_shape: the box head's output shape (D = channels * height * width).
        box_classifier: an :class:`OODBoxClassifier`, or a bare :class:`OODHead` (wrapped with no
            regularizers).
        **kwargs: every keyword of :class:`FastRCNNOutputLayers` (``box2box_transform``,
            ``num_classes``, ``test_score_thresh``, ...). Sigmoid / federated classification
            losses do not apply to OOD heads and are refused.
    """

    @configurable
    def __init__(
        self,
        input_shape: Union[ShapeSpec, int],
        *,
        box_classifier: Union[OODBoxClassifier, OODHead],
        **kwargs,
    ):
        if kwargs.get("use_sigmoid_ce") or kwargs.get("use_fed_loss"):
            raise ValueError(
                "OODFastRCNNOutputLayers: MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE / USE_FED_LOSS are not "
                "supported; the OOD head defines the classification loss"
            )
        super().__init__(input_shape, **kwargs)
        if isinstance(box_classifier, OODHead):
            box_classifier = OODBoxClassifier(box_classifier)
        if not isinstance(box_classifier, OODBoxClassifier):
            raise TypeError(
                f"box_classifier must be an OODBoxClassifier or OODHead, got {type(box_classifier)}"
            )
        in_size = self.cls_score.in_features
        if box_classifier.head.in_features != in_size:
            raise ValueError(
                f"OOD head expects {box_classifier.head.in_features}-d features but the box head "
                f"produces {in_size}-d ones"
            )
        if box_classifier.num_classes != self.num_classes:
            raise ValueError(
                f"OOD head has {box_classifier.num_classes} classes, "
                f"MODEL.ROI_HEADS.NUM_CLASSES={self.num_classes}"
            )
        # replaces detectron2's nn.Linear: forward() calls self.cls_score(x) -> [R, K + 1] logits
        self.cls_score = box_classifier

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        if isinstance(input_shape, int):
            input_shape = ShapeSpec(channels=input_shape)
        in_size = input_shape.channels * (input_shape.width or 1) * (input_shape.height or 1)
        ret["box_classifier"] = OODBoxClassifier.from_config(cfg, in_size)
        # the sigmoid / federated loss options are refused above, the rest is detectron2's
        ret.pop("get_fed_loss_cls_weights", None)
        return ret

    @property
    def box_classifier(self) -> OODBoxClassifier:
        return self.cls_score

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a stock detectron2 checkpoint (cls_score = nn.Linear) loads into the softmax head,
        # which holds the same linear layer one level deeper
        from ..heads.softmax import SoftmaxHead

        if isinstance(self.cls_score.head, SoftmaxHead):
            for p in ("weight", "bias"):
                old, new = f"{prefix}cls_score.{p}", f"{prefix}cls_score.head.cls_score.{p}"
                if old in state_dict and new not in state_dict:
                    state_dict[new] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ---------------------------------------------------------------- training
    def losses(
        self,
        predictions: Tuple[torch.Tensor, torch.Tensor],
        proposals: List[Instances],
        features: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """Classification (+ regularizer) losses from the OOD classifier, box regression as
        detectron2 computes it.

        Args:
            predictions: ``(logits [R, K+1], deltas)`` from :meth:`forward`.
            proposals: sampled proposals with ``proposal_boxes``, ``gt_classes`` (``gt_boxes``).
            features: ``[R, D]`` box features the logits came from, attached to the graph.
                Required when the classifier has regularizers or an outlier source.
        """
        logits, deltas = predictions
        clf = self.cls_score
        if features is None and (len(clf.regularizers) or clf.outlier_source is not None):
            raise ValueError(
                "OODFastRCNNOutputLayers.losses: the OOD regularizers need the box features; "
                "use OODROIHeads (MODEL.ROI_HEADS.NAME: OODROIHeads) or pass features="
            )
        if features is not None and features.dim() > 2:
            features = torch.flatten(features, start_dim=1)
        if len(proposals):
            gt_classes = cat([p.gt_classes for p in proposals], dim=0)
            proposal_boxes = cat([p.proposal_boxes.tensor for p in proposals], dim=0)
            gt_boxes = cat(
                [(p.gt_boxes if p.has("gt_boxes") else p.proposal_boxes).tensor for p in proposals],
                dim=0,
            )
        else:
            gt_classes = torch.empty(0, dtype=torch.long, device=logits.device)
            proposal_boxes = gt_boxes = torch.empty((0, 4), device=deltas.device)
        try:
            _log_classification_stats(logits, gt_classes)
        except AssertionError:  # no EventStorage (called outside a trainer)
            pass

        losses = dict(clf.losses(features, logits, gt_classes))
        if "loss_box_reg" in losses:
            raise KeyError("the OOD classifier must not produce 'loss_box_reg'")
        losses["loss_box_reg"] = self.box_reg_loss(proposal_boxes, gt_boxes, deltas, gt_classes)
        return {k: v * self.loss_weight.get(k, 1.0) for k, v in losses.items()}

    # --------------------------------------------------------------- inference
    def predict_probs(
        self, predictions: Tuple[torch.Tensor, torch.Tensor], proposals: List[Instances]
    ):
        """Per image ``[Ri, K + 1]`` box confidences: the head's ``predict_probs`` (softmax of
        its confidence logits), not a plain softmax of the raw logits."""
        logits, _ = predictions
        probs = self.cls_score.head.predict_probs(logits)
        return probs.split([len(p) for p in proposals], dim=0)

    def inference(
        self,
        predictions: Tuple[torch.Tensor, torch.Tensor],
        proposals: List[Instances],
        features: Optional[torch.Tensor] = None,
    ):
        """detectron2's inference (score threshold, per-class NMS, top-k) with the OOD fields.

        Returns ``(instances, kept)`` like detectron2; each ``Instances`` also has ``ood_scores``
        ``[Ni]``, ``ood_score_table`` ``[Ni, S]`` and ``roi_conf`` ``[Ni]`` aligned with
        ``pred_boxes`` / ``scores`` / ``pred_classes`` (see the module docstring).
        """
        logits, _ = predictions
        if features is not None and features.dim() > 2:
            features = torch.flatten(features, start_dim=1)
        clf = self.cls_score
        out = clf.predict(features, logits)
        table = torch.stack([out["ood_scores"][n] for n in clf.head.supported_scores], dim=1)
        sizes = [len(p) for p in proposals]
        return ood_fast_rcnn_inference(
            self.predict_boxes(predictions, proposals),
            out["probs"].split(sizes, dim=0),
            out["ood_scores"][clf.score].split(sizes, dim=0),
            [x.image_size for x in proposals],
            self.test_score_thresh,
            self.test_nms_thresh,
            self.test_topk_per_image,
            extra_fields={"ood_score_table": table.split(sizes, dim=0),
                          "roi_conf": out["roi_conf"].split(sizes, dim=0)},
        )
