"""Fractional probability regularization (FPR) of DisMax (Macêdo et al., "Distinction
Maximization Loss", arXiv 2205.05874; authors' code dlmacedo/distinction-maximization-loss),
adapted to detection.

The classification version shuffles the batch and, in its second half, builds each image from the
top-left quadrant of image i and the other three quadrants of images i-1, i-2, i-3 (a roll of the
shuffled half by 1, 2, 3); the target of a mixed image is 0.25 on each of the four source labels
(summed when labels repeat), and the loss is ``1/2 [CE + alpha * KL(target || p)]`` with
``p = softmax(E_s * logits)``, alpha = 1.

Adaptation (ours). Mixing image quadrants would cut through boxes and break the box labels, and the
regularizer only sees the box head's output, which has no spatial layout. We therefore mix at the
ROI-feature level: the foreground ROIs (labels in 0..K-1) are shuffled, and mixed feature i is the
**mean of the features of ROIs i, i-1, i-2, i-3** (the shuffled set rolled by 0..3), an equal-weight
four-way feature mix whose natural target is the same 0.25-per-source distribution. The target
has K + 1 columns with 0 on background. ``p = softmax(head.confidence_logits(head(mixed)))`` (the
head's own training-scale logits, e.g. E_s * logits for the distance heads), and
``loss_fpr = alpha / 2 * KL(target || p)`` averaged over the mixed ROIs ("batchmean"). The CE half
is the head's own loss, on all ROIs, and is not halved. Needs at least 4 foreground ROIs, else a
zero loss. Works with any head.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_regularizer
from ._utils import foreground_mask, zero_loss
from .base import Regularizer

#: number of ROIs mixed into one (the four quadrants of the paper)
NUM_MIXED = 4


def fractional_targets(labels: torch.Tensor, num_columns: int, ways: int = NUM_MIXED) -> torch.Tensor:
    """Targets of the rolled mix: row i has ``1/ways`` on each of ``labels[i], labels[i-1], ...,
    labels[i-ways+1]`` (indices mod N), summed where labels repeat.

    Args:
        labels: ``[N]`` int64 class indices; num_columns: width of the target (K + 1).

    Returns:
        ``[N, num_columns]`` float32, rows summing to 1.
    """
    n = labels.numel()
    target = torch.zeros(n, num_columns, device=labels.device)
    share = torch.full((n, 1), 1.0 / ways, device=labels.device)
    for shift in range(ways):
        target.scatter_add_(1, torch.roll(labels, shift, 0)[:, None], share)
    return target


def mix_features(features: torch.Tensor, ways: int = NUM_MIXED) -> torch.Tensor:
    """``[N, D]`` -> ``[N, D]``: row i is the mean of rows i, i-1, ..., i-ways+1 (mod N)."""
    out = features
    for shift in range(1, ways):
        out = out + torch.roll(features, shift, 0)
    return out / ways


@register_regularizer
class FractionalProbabilityRegularizer(Regularizer):
    """DisMax FPR on mixed foreground ROI features; returns ``{"loss_fpr"}`` (weighted).

    Args:
        alpha: the paper's alpha (1); the returned loss is ``alpha / 2 * KL``.
    """

    name = "fpr"
    needs_outliers = False

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = float(alpha)

    @classmethod
    def add_config(cls, ood_cfg) -> None:
        if "FPR" not in ood_cfg:
            ood_cfg.FPR = type(ood_cfg)()
        ood_cfg.FPR.ALPHA = 1.0

    @classmethod
    def from_config(cls, cfg) -> dict:
        return {"alpha": float(cfg.MODEL.OOD.FPR.ALPHA)}

    def forward(
        self,
        head: nn.Module,
        features: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor,
        outliers: Optional[torch.Tensor],
        iteration: int,
    ) -> Dict[str, torch.Tensor]:
        """Args/shapes: see :class:`ood_det.regularizers.base.Regularizer`."""
        fg = foreground_mask(labels, logits, head.num_classes, "FractionalProbabilityRegularizer")
        idx = torch.nonzero(fg).squeeze(1)
        if idx.numel() < NUM_MIXED:
            return {"loss_fpr": zero_loss(logits, device=logits.device)}
        idx = idx[torch.randperm(idx.numel(), device=idx.device)]
        mixed = mix_features(features[idx])
        target = fractional_targets(labels[idx].long(), logits.shape[1])
        log_p = F.log_softmax(head.confidence_logits(head(mixed)).float(), dim=1)
        kl = F.kl_div(log_p, target, reduction="batchmean")
        return {"loss_fpr": 0.5 * self.alpha * kl}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
