"""``isomax``: Isotropy Maximization loss head (Macêdo, Ren, Zanchettin, Oliveira, Ludermir,
"Entropic Out-of-Distribution Detection", IJCNN 2021 / TNNLS 2021).

Equations (as in the paper and its authors' code), for a feature ``z`` ``[D]`` and learnable
prototypes ``p_j`` ``[D]``, ``j = 0 .. K`` (prototypes initialised to 0, no bias)::

    logit_j = -||z - p_j||_2                                    (isometric distance logits)
    loss    = -log softmax(E_s * logits)_y = CE(E_s * logits, y),   E_s = 10 (entropic scale)
    score   = sum_j p_j log p_j,   p = softmax(logits[:K])       (entropic score, scale 1)

Detection changes (ours):

* **background has its own prototype** (column K, like every other class); the entropic score is
  computed over the K foreground logits only.
* box **confidence** (for score-thresholding and NMS) = ``softmax(E_s * logits)`` over all K + 1
  columns, i.e. at the scale the loss was trained at. At scale 1 the softmax of distance logits
  is nearly uniform and no box would pass detectron2's 0.05 threshold. The OOD score stays at
  scale 1 as the paper has it.
* distances and the loss are computed in float32; the square root's gradient is cut at zero
  distance, so all-zero ReLU features with the prototypes still at 0 give no NaN.
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import register_head
from ._utils import check_features, euclidean_distances
from .base import EntropicScaleHead


@register_head
class IsoMaxHead(EntropicScaleHead):
    """IsoMax distance head.

    Args:
        in_features: D.
        num_classes: K (a K+1-th prototype is learned for background).
        entropic_scale: E_s, the logit scale of the training loss and of the box confidence.

    Parameters: ``prototypes`` ``[K + 1, D]``, initialised to 0.
    """

    name = "isomax"
    default_score = "entropic"
    supported_scores = ("entropic", "msp", "max_logit", "mds", "energy")

    def __init__(self, in_features: int, num_classes: int, entropic_scale: float = 10.0):
        super().__init__(in_features, num_classes, entropic_scale)
        self.prototypes = nn.Parameter(torch.zeros(num_classes + 1, in_features))

    @classmethod
    def add_config(cls, ood_cfg) -> None:
        ood_cfg.ISOMAX = type(ood_cfg)()
        ood_cfg.ISOMAX.ENTROPIC_SCALE = 10.0

    @classmethod
    def from_config(cls, cfg, in_features: int) -> dict:
        kw = super().from_config(cfg, in_features)
        kw["entropic_scale"] = cfg.MODEL.OOD.ISOMAX.ENTROPIC_SCALE
        return kw

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[R, D]`` -> ``[R, K + 1]`` float32 logits ``-||z - p_j||``."""
        check_features(features, self.in_features, "IsoMaxHead.forward")
        return -euclidean_distances(features, self.prototypes)
