"""``OODBoxClassifier``: one head + its regularizers + stored thresholds, the unit both backends plug in.

The detectron2 and torchvision adapters own one of these in place of the detector's box
classification layer. Everything method-specific happens here or below; the adapters only move
tensors between their framework's conventions and this module's (background last, labels in
``0 .. K``; see :mod:`ood_det.heads.base`).

State kept in buffers (saved with the checkpoint, no numpy):

* ``iteration``: training steps seen (drives regularizer warm-ups, survives ``--resume``).
* ``thresholds``: ``[len(SCORE_NAMES)]`` unknown-object threshold per score (NaN = not set);
  boxes whose score is below it are OOD. Set at evaluation time from ID validation boxes (95%
  TPR) so that the scoring tool needs no extra file.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from ..heads import OODHead, build_head_from_cfg
from ..regularizers import Regularizer, build_regularizer_from_cfg
from ..scores import SCORE_NAMES


class OODBoxClassifier(nn.Module):
    """Args:
        head: the OOD head (features ``[R, D]`` -> logits ``[R, K + 1]``).
        regularizers: training-time regularizers, applied in order.
        outlier_source: a module with ``update(features, labels)`` and
            ``sample(iteration) -> [N, D] or None`` (e.g. VOS virtual outliers); required when a
            regularizer or the head needs outliers.
        score: the OOD score reported by default (None: the head's default).
    """

    def __init__(
        self,
        head: OODHead,
        regularizers: Sequence[Regularizer] = (),
        outlier_source: Optional[nn.Module] = None,
        score: Optional[str] = None,
    ):
        super().__init__()
        self.head = head
        self.regularizers = nn.ModuleList(regularizers)
        self.outlier_source = outlier_source
        missing = [r.name for r in self.regularizers if r.needs_outliers]
        if missing and outlier_source is None:
            raise ValueError(
                f"regularizer(s) {missing} need outliers: set MODEL.OOD.OUTLIERS (e.g. 'vos')"
            )
        self.score = score or head.default_score
        if self.score not in head.supported_scores:
            raise ValueError(
                f"MODEL.OOD.SCORE={self.score!r} is not supported by head {head.name!r}; "
                f"supported: {', '.join(head.supported_scores)}"
            )
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))
        self.register_buffer("thresholds", torch.full((len(SCORE_NAMES),), float("nan")))

    # ------------------------------------------------------------------ config
    @classmethod
    def from_config(cls, cfg, in_features: int) -> "OODBoxClassifier":
        from ..regularizers.vos import VirtualOutlierSynthesizer

        ood = cfg.MODEL.OOD
        head = build_head_from_cfg(cfg, in_features)
        regs = [build_regularizer_from_cfg(name, cfg) for name in ood.REGULARIZERS]
        source = None
        if ood.OUTLIERS == "vos":
            source = VirtualOutlierSynthesizer(
                **VirtualOutlierSynthesizer.from_config(cfg, in_features)
            )
        elif ood.OUTLIERS not in ("", "none", None):
            raise ValueError(f"MODEL.OOD.OUTLIERS={ood.OUTLIERS!r}: expected 'vos' or ''")
        return cls(head, regs, source, score=ood.SCORE or None)

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    # ---------------------------------------------------------------- training
    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[R, D]`` -> ``[R, K + 1]`` logits (background last)."""
        return self.head(features)

    def losses(
        self, features: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor
    ) -> Dict[str, torch.Tensor]:
        """Head loss plus every regularizer's weighted losses for one training step.

        Args:
            features: ``[R, D]`` attached to the graph; logits: ``[R, K + 1]``;
            labels: ``[R]`` in ``0 .. K``.
        """
        it = int(self.iteration)
        if self.training:
            self.iteration += 1
        outliers = None
        if self.outlier_source is not None:
            fg = labels < self.num_classes
            self.outlier_source.update(features[fg].detach(), labels[fg])
            outliers = self.outlier_source.sample(it)
            if outliers is not None:
                for reg in self.regularizers:
                    select = getattr(reg, "select_outliers", None)
                    if select is not None:
                        outliers = select(self.head, outliers)
        losses = dict(self.head.loss(logits, labels, features=features, outlier_features=outliers))
        for reg in self.regularizers:
            for k, v in reg(self.head, features, logits, labels, outliers, it).items():
                if k in losses:
                    raise KeyError(f"loss name {k!r} produced twice (regularizer {reg.name!r})")
                losses[k] = v
        return losses

    # --------------------------------------------------------------- inference
    @torch.no_grad()
    def predict(
        self, features: torch.Tensor, logits: Optional[torch.Tensor] = None, score: Optional[str] = None
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Box confidence ``[R, K + 1]`` and OOD score ``[R]`` (higher = more ID)."""
        if logits is None:
            logits = self.head(features)
        probs = self.head.predict_probs(logits)
        ood = self.head.ood_score(logits, features=features, score=score or self.score)
        return probs, ood.float()

    # -------------------------------------------------------------- thresholds
    def set_threshold(self, score: str, value: float) -> None:
        self.thresholds[SCORE_NAMES.index(score)] = float(value)

    def threshold(self, score: Optional[str] = None) -> Optional[float]:
        """Stored unknown threshold for ``score`` (default: the model's score), None if unset."""
        v = float(self.thresholds[SCORE_NAMES.index(score or self.score)])
        return None if v != v else v
