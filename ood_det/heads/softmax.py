"""``softmax``: the detector's stock linear classifier, the baseline every other head is compared to.

    logits = W z + b,   W: [K+1, D],   loss = CE(logits, y)

Initialised as detectron2's ``FastRCNNOutputLayers.cls_score`` (weights ~ N(0, 0.01²), bias 0).
Box confidence = ``softmax(logits)`` over all K + 1 columns (unchanged from the detector).
OOD scores over the K foreground logits: ``msp`` (default; Hendrycks & Gimpel, ICLR 2017),
``max_logit`` (Hendrycks et al., ICML 2022), ``energy`` (Liu et al., NeurIPS 2020; with an
energy-margin regularizer this is the "energy" baseline) and ``entropic``.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from .registry import register_head
from ._utils import check_features, check_labels, cross_entropy
from .base import OODHead


@register_head
class SoftmaxHead(OODHead):
    """Linear ``[R, D] -> [R, K + 1]`` classifier with cross-entropy loss.

    Args:
        in_features: D.
        num_classes: K (background is added as column K).
    """

    name = "softmax"
    default_score = "msp"
    supported_scores = ("msp", "max_logit", "energy", "entropic")

    def __init__(self, in_features: int, num_classes: int):
        super().__init__(in_features, num_classes)
        self.cls_score = nn.Linear(in_features, num_classes + 1)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.constant_(self.cls_score.bias, 0.0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[R, D]`` -> ``[R, K + 1]`` logits (in the weights' dtype unless autocast is on)."""
        check_features(features, self.in_features, "SoftmaxHead.forward")
        return self.cls_score(features.to(self.cls_score.weight.dtype))

    def loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        features: Optional[torch.Tensor] = None,
        outlier_features: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """``{"loss_cls": CE(logits, labels)}`` (float32; 0 with gradient for R = 0)."""
        check_labels(logits, labels, self.num_classes, "SoftmaxHead.loss")
        return {"loss_cls": cross_entropy(logits, labels)}
