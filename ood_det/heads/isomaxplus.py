"""``isomaxplus``: Enhanced Isotropy Maximization loss head (Macêdo & Ludermir, "Enhanced Isotropy
Maximization Loss: Seamless and High-Performance Out-of-Distribution Detection Simply Replacing the
SoftMax Loss", arXiv 2105.14399, 2021).

Equations (as in the paper and its authors' code), with ``ẑ = z / ||z||``, ``p̂_j = p_j / ||p_j||``,
learnable prototypes ``p_j ~ N(0, 1)`` ``[K + 1, D]`` and a learnable distance scale ``s`` (init 1,
used as ``|s|``)::

    logit_j = -|s| * ||ẑ - p̂_j||_2                 (in [-2|s|, 0])
    loss    = CE(E_s * logits, y),   E_s = 10
    score   = mds = max_j logit_j = -|s| * min_j ||ẑ - p̂_j||   (minimum-distance score)

Detection changes (ours): background has its own prototype (column K) and is excluded from the
scores, which use the K foreground logits; the box **confidence** is ``softmax(E_s * logits)`` over
all K + 1 columns (at scale 1 the softmax is nearly uniform: max prob <= 0.27 with 21 classes),
while the OOD score is the paper's. Distances are computed in float32 without materialising the
normalised features, with a guarded square root (no NaN at zero distance).
"""
from __future__ import annotations

import torch
from torch import nn

from .registry import register_head
from ._utils import check_features, init_prototypes, normalized_distances
from .base import EntropicScaleHead


@register_head
class IsoMaxPlusHead(EntropicScaleHead):
    """IsoMax+ head: scaled distances between L2-normalised features and prototypes.

    Args:
        in_features: D.
        num_classes: K (a K+1-th prototype is learned for background).
        entropic_scale: E_s of the loss and the box confidence.
        prototype_init_std: the prototypes start as N(0, std²) (the paper: 1; 1/sqrt(D) starts
            them at unit norm, see ``init_prototypes``).

    Parameters: ``prototypes`` ``[K + 1, D]`` ~ N(0, std²); ``distance_scale`` ``[1]`` = 1.
    """

    name = "isomaxplus"
    default_score = "mds"
    supported_scores = ("mds", "msp", "max_logit", "energy", "entropic")

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        entropic_scale: float = 10.0,
        prototype_init_std: float = 1.0,
    ):
        super().__init__(in_features, num_classes, entropic_scale)
        self.prototypes = nn.Parameter(torch.empty(num_classes + 1, in_features))
        init_prototypes(self.prototypes, prototype_init_std, type(self).__name__)
        self.distance_scale = nn.Parameter(torch.ones(1))

    @classmethod
    def add_config(cls, ood_cfg) -> None:
        ood_cfg.ISOMAXPLUS = type(ood_cfg)()
        ood_cfg.ISOMAXPLUS.ENTROPIC_SCALE = 10.0
        ood_cfg.ISOMAXPLUS.PROTOTYPE_INIT_STD = 1.0

    @classmethod
    def from_config(cls, cfg, in_features: int) -> dict:
        kw = super().from_config(cfg, in_features)
        kw["entropic_scale"] = cfg.MODEL.OOD.ISOMAXPLUS.ENTROPIC_SCALE
        kw["prototype_init_std"] = cfg.MODEL.OOD.ISOMAXPLUS.PROTOTYPE_INIT_STD
        return kw

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """``[R, D]`` -> ``[R, K + 1]`` unscaled distances ``||ẑ - p̂_j||`` in [0, 2] (float32)."""
        check_features(features, self.in_features, f"{type(self).__name__}.distances")
        return normalized_distances(features, self.prototypes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[R, D]`` -> ``[R, K + 1]`` float32 logits ``-|s| ||ẑ - p̂_j||``."""
        return -self.distance_scale.float().abs() * self.distances(features)
