"""``OODROIHeads``: detectron2's ``StandardROIHeads`` with :class:`OODFastRCNNOutputLayers`.

Select it with ``MODEL.ROI_HEADS.NAME: OODROIHeads`` after :func:`ood_det.d2.add_ood_d2_config`.
Only two things differ from ``StandardROIHeads``:

* ``_init_box_head`` builds an :class:`OODFastRCNNOutputLayers` as the box predictor (detectron2
  has no box-predictor registry; ``RROIHeads`` overrides the same hook);
* ``_forward_box`` hands the ``[R, D]`` box features to the predictor's ``losses`` /
  ``inference`` (the regularizers and the CFL score need them).

Everything else (proposal sampling, mask / keypoint branches) is inherited unchanged.
"""
from __future__ import annotations

from typing import Dict, List

import torch
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, StandardROIHeads
from detectron2.structures import Boxes, Instances

from .output_layers import OODFastRCNNOutputLayers

__all__ = ["OODROIHeads"]


@ROI_HEADS_REGISTRY.register()
class OODROIHeads(StandardROIHeads):
    """``StandardROIHeads`` whose box predictor is OOD-aware. Constructible without a config
    exactly like ``StandardROIHeads`` (keyword arguments of its ``__init__``), with an
    :class:`OODFastRCNNOutputLayers` as ``box_predictor``."""

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = OODFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret

    def _forward_box(self, features: Dict[str, torch.Tensor], proposals: List[Instances]):
        """As ``StandardROIHeads._forward_box``, passing the box features to the predictor.

        Returns a dict of losses in training, a list of ``Instances`` (with ``ood_scores``) in
        inference.
        """
        features = [features[f] for f in self.box_in_features]
        box_features = self.box_pooler(features, [x.proposal_boxes for x in proposals])
        box_features = self.box_head(box_features)
        predictions = self.box_predictor(box_features)
        ood_predictor = isinstance(self.box_predictor, OODFastRCNNOutputLayers)
        extra = {"features": box_features} if ood_predictor else {}

        if self.training:
            losses = self.box_predictor.losses(predictions, proposals, **extra)
            # proposals are changed in place below: losses first (as detectron2 does)
            if self.train_on_pred_boxes:
                with torch.no_grad():
                    pred_boxes = self.box_predictor.predict_boxes_for_gt_classes(
                        predictions, proposals
                    )
                    for p, boxes in zip(proposals, pred_boxes):
                        p.proposal_boxes = Boxes(boxes)
            return losses
        pred_instances, _ = self.box_predictor.inference(predictions, proposals, **extra)
        return pred_instances
