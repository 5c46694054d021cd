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
* ``conf_thresh``: ``[]`` the box-confidence threshold of the evaluation protocol (F1-optimal on
  ID validation; NaN = not set): the scoring tool keeps the boxes above it by default.
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
        self.register_buffer("conf_thresh", torch.tensor(float("nan")))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before the confidence threshold was stored load with it unset
        state_dict.setdefault(prefix + "conf_thresh", torch.tensor(float("nan")))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
    def check_scores(self, scores: Optional[Sequence[str]]) -> Tuple[str, ...]:
        """``scores`` validated against the head (None: the configured score alone)."""
        names = tuple(scores) if scores is not None else (self.score,)
        bad = [n for n in names if n not in self.head.supported_scores]
        if bad:
            raise ValueError(
                f"score(s) {bad} not supported by head {self.head.name!r}; "
                f"supported: {', '.join(self.head.supported_scores)}"
            )
        return names

    @torch.no_grad()
    def predict(
        self,
        features: torch.Tensor,
        logits: Optional[torch.Tensor] = None,
        scores: Optional[Sequence[str]] = None,
    ) -> Dict[str, object]:
        """Inference outputs of R ROIs, the one place both backends get them from.

        Args:
            features: ``[R, D]`` box-head features.
            logits: ``[R, K + 1]`` (computed from ``features`` when None).
            scores: OOD score names (default: every score the head supports).

        Returns:
            ``{"probs": [R, K + 1]`` box confidences (``head.predict_probs``), ``"roi_conf": [R]``
            the ROI's maximum foreground probability (VOS keeps a box when its proposal's value
            reaches the confidence threshold), ``"ood_scores": {name: [R]}`` float32, higher = more
            in-distribution``}``.
        """
        if logits is None:
            logits = self.head(features)
        names = self.check_scores(scores) if scores is not None else tuple(self.head.supported_scores)
        probs = self.head.predict_probs(logits)
        return {
            "probs": probs,
            "roi_conf": probs[:, : self.num_classes].max(dim=1).values.float(),
            "ood_scores": {n: self.head.ood_score(logits, features=features, score=n).float() for n in names},
        }

    # -------------------------------------------------------------- thresholds
    def set_threshold(self, score: str, value: float) -> None:
        self.thresholds[SCORE_NAMES.index(score)] = float(value)

    def set_conf_threshold(self, value: Optional[float]) -> None:
        self.conf_thresh.fill_(float("nan") if value is None else float(value))

    def conf_threshold(self) -> Optional[float]:
        """Stored box-confidence threshold, None if unset."""
        v = float(self.conf_thresh)
        return None if v != v else v

    def threshold(self, score: Optional[str] = None) -> Optional[float]:
        """Stored unknown threshold for ``score`` (default: the model's score), None if unset."""
        v = float(self.thresholds[SCORE_NAMES.index(score or self.score)])
        return None if v != v else v
