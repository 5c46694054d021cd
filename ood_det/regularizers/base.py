"""The contract of training-time OOD regularizers (composable with any head).

A regularizer adds loss terms during the ROI head's training step. It sees the head, the ROI
features and logits of the sampled proposals, their labels and, where one is configured, a batch
of outlier features (e.g. VOS virtual outliers). Its state (queues, running statistics) lives in
registered buffers so that checkpoints save and resume it.

Shapes (see :mod:`ood_det.heads.base` for the label / column conventions):

* ``features``: ``[R, D]``, still attached to the graph (gradient regularizers differentiate
  through them).
* ``logits``: ``[R, K + 1]`` = ``head(features)``.
* ``labels``: ``[R]`` in ``0 .. K`` (K = background).
* ``outliers``: ``[N, D]`` or ``None`` (before the warm-up ends, or when no source is configured).
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn


class Regularizer(nn.Module):
    """Base class. Subclasses implement :meth:`forward` and return named, *weighted* losses."""

    #: registry name
    name: str = ""
    #: True if the regularizer needs outlier features (an outlier source must be configured)
    needs_outliers: bool = False

    @classmethod
    def add_config(cls, ood_cfg) -> None:
        """Declare this regularizer's keys under ``cfg.MODEL.OOD`` (e.g. ``ood_cfg.GREG = CN()``)."""

    @classmethod
    def from_config(cls, cfg) -> dict:
        """Keyword arguments of ``__init__`` read from ``cfg.MODEL.OOD``."""
        return {}

    def select_outliers(self, head: nn.Module, outliers: torch.Tensor) -> torch.Tensor:
        """Optionally narrow the outlier batch before any regularizer sees it (GReg sampling)."""
        return outliers

    def forward(
        self,
        head: nn.Module,
        features: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor,
        outliers: Optional[torch.Tensor],
        iteration: int,
    ) -> Dict[str, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError
