"""The contract every OOD box-classification head follows.

A head replaces the detector's box *classification* layer (box regression is not its business).
It maps ROI box features to class logits and knows its own training loss, its box confidence and
its OOD scores. Heads are framework-agnostic: the detectron2 and torchvision adapters only plug
them in.

Conventions (the same in every head and every regularizer):

* ``features``: ``[R, D]`` ROI box features (the box head's output, e.g. D = 1024).
* ``logits``: ``[R, K + 1]``; columns ``0 .. K-1`` are the K known classes, column ``K`` is
  **background** (detectron2's order; the torchvision adapter permutes it).
* ``labels``: ``[R]`` int64 in ``0 .. K``; ``K`` means background.
* OOD scores are computed over the K foreground columns only and are **higher = more
  in-distribution**.
* The box *confidence* (what score-thresholding and NMS see) is ``softmax(confidence_logits)``
  over all K + 1 columns. It is kept separate from the OOD score because the softmax of bounded
  distance logits at scale 1 is nearly uniform.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import nn

from .. import scores as score_registry


class OODHead(nn.Module):
    """Base class of the OOD-aware box classification heads.

    Subclasses implement :meth:`forward` and :meth:`loss`; they may override
    :meth:`confidence_logits`, :meth:`score_logits`, :meth:`ood_score` and :meth:`post_fit`.

    Args:
        in_features: D, the size of a ROI feature vector.
        num_classes: K, the number of known classes (the head adds background itself).
    """

    #: registry name, set by subclasses (``softmax``, ``isomax``, ...)
    name: str = ""
    #: the score used when none is asked for
    default_score: str = "msp"
    #: the scores this head can produce (names of :mod:`ood_det.scores` or head-specific ones)
    supported_scores: Sequence[str] = ("msp", "max_logit", "energy", "entropic")

    def __init__(self, in_features: int, num_classes: int):
        super().__init__()
        if in_features <= 0 or num_classes <= 0:
            raise ValueError(
                f"{type(self).__name__}: in_features and num_classes must be positive, "
                f"got in_features={in_features}, num_classes={num_classes}"
            )
        self.in_features = int(in_features)
        self.num_classes = int(num_classes)

    # ------------------------------------------------------------------ config
    @classmethod
    def add_config(cls, ood_cfg) -> None:
        """Declare this head's keys under ``cfg.MODEL.OOD`` (e.g. ``ood_cfg.ISOMAX = CN()``)."""

    @classmethod
    def from_config(cls, cfg, in_features: int) -> dict:
        """Keyword arguments of ``__init__`` read from a config (``cfg.MODEL.OOD``).

        Follows detectron2's ``@configurable`` / ``from_config`` split: the head itself never
        needs a config. Subclasses extend the dict with their own keys.
        """
        return {"in_features": in_features, "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES}

    # ----------------------------------------------------------------- compute
    def forward(self, features: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """``[R, D]`` features -> ``[R, K + 1]`` logits (background last)."""
        raise NotImplementedError

    def loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        features: Optional[torch.Tensor] = None,
        outlier_features: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:  # pragma: no cover - abstract
        """Training loss. Returns at least ``{"loss_cls": scalar}``.

        Args:
            logits: ``[R, K + 1]`` from :meth:`forward`.
            labels: ``[R]`` in ``0 .. K`` (K = background).
            features: ``[R, D]``, the features the logits came from (heads that need them).
            outlier_features: ``[N, D]`` outlier features (e.g. VOS virtual outliers) or None.
        """
        raise NotImplementedError

    def confidence_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits whose softmax over all K + 1 columns is the box confidence."""
        return logits

    def predict_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """``[R, K + 1]`` box-confidence probabilities (background last)."""
        return torch.softmax(self.confidence_logits(logits).float(), dim=-1)

    def score_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``[R, K]`` foreground logits the generic scores are computed from."""
        return logits[:, : self.num_classes]

    def ood_score(
        self,
        logits: torch.Tensor,
        features: Optional[torch.Tensor] = None,
        score: Optional[str] = None,
    ) -> torch.Tensor:
        """``[R]`` OOD score, higher = more in-distribution.

        Args:
            logits: ``[R, K + 1]``.
            features: ``[R, D]``; only head-specific scores (e.g. ``cfl``) need them.
            score: a name from :attr:`supported_scores`; default :attr:`default_score`.
        """
        score = score or self.default_score
        if score not in self.supported_scores:
            raise ValueError(
                f"head {self.name!r} does not support score {score!r}; "
                f"supported: {', '.join(self.supported_scores)}"
            )
        return score_registry.compute(score, self.score_logits(logits).float())

    # -------------------------------------------------------------- post-fit
    @property
    def has_post_fit(self) -> bool:
        """Whether this head overrides :meth:`post_fit` (the protocol skips collecting ROIs if not)."""
        return type(self).post_fit is not OODHead.post_fit

    @torch.no_grad()
    def post_fit(
        self,
        logits: torch.Tensor,
        labels: Optional[torch.Tensor],
        features: Optional[torch.Tensor] = None,
    ) -> Dict[str, float]:
        """Fit post-training state on held-out **in-distribution** validation ROIs.

        The evaluation protocol calls this once after training, before it sets the unknown thresholds, with
        the ROIs of the ID validation split (never OOD data). Heads that need it override it
        (DisMax fits its temperature, CFL its score weights) and keep the result in buffers so it
        travels with the checkpoint; the default does nothing (:attr:`has_post_fit` is False, and
        no validation ROI is collected for it). The protocol stays method-agnostic:
        it must recompute logits and scores *after* this call (they may change).

        Args:
            logits: ``[R, K + 1]`` from :meth:`forward` (background last).
            labels: ``[R]`` in ``0 .. K`` (K = background), e.g. proposals labelled by the same
                IoU matching as in training; may be None for heads that don't need it.
            features: ``[R, D]`` the ROI features the logits came from, or None.

        Returns:
            a dict of plain python numbers describing what was fitted (for the log); ``{}`` here.
        """
        return {}

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, num_classes={self.num_classes}"


class EntropicScaleHead(OODHead):
    """Base of the IsoMax family (``isomax``, ``isomaxplus``, ``dismax``).

    Their distance logits are bounded (IsoMax+: in ``[-2|s|, 0]``), so a softmax at scale 1 is
    nearly uniform. Training and the box confidence therefore use ``E_s * logits`` with the
    entropic scale ``E_s`` (= 10 in Macêdo et al.): loss = ``CE(E_s * logits, labels)``,
    confidence = ``softmax(E_s * logits)``; the OOD scores keep scale 1.

    Args:
        entropic_scale: E_s (> 0).
    """

    def __init__(self, in_features: int, num_classes: int, entropic_scale: float = 10.0):
        super().__init__(in_features, num_classes)
        if entropic_scale <= 0:
            raise ValueError(
                f"{type(self).__name__}: entropic_scale must be > 0, got {entropic_scale}"
            )
        self.entropic_scale = float(entropic_scale)

    def loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        features: Optional[torch.Tensor] = None,
        outlier_features: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """``{"loss_cls": CE(E_s * logits, labels)}``."""
        from ._utils import check_labels, cross_entropy

        check_labels(logits, labels, self.num_classes, f"{type(self).__name__}.loss")
        return {"loss_cls": cross_entropy(self.entropic_scale * logits.float(), labels)}

    def confidence_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return self.entropic_scale * logits.float()

    def extra_repr(self) -> str:
        return super().extra_repr() + f", entropic_scale={self.entropic_scale}"
