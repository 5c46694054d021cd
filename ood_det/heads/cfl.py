"""``cfl``: Semantic-Driven Energy with Cluster Focal Loss (Joshi et al., "Semantic Driven Energy
based Out-of-Distribution Detection", arXiv 2208.10787, 2022).

**This head is our reconstruction from the paper's abstract** -- the only public part of that work
(no full text, no code). The abstract says: ID energy is minimised and OOD energy maximised;
class cluster representations are learned so that ID samples come closer to their class and OOD
samples are pushed away from the known classes; a "Cluster Focal Loss" (CFL) learns the cluster
centres; ID and OOD are told apart by an energy score coupled with a representation score; the
framework extends to object detection. Every equation below is therefore our choice, not the
authors':

* learned cluster centres ``c_j`` ``[K + 1, D]`` ~ N(0, 1) -- **background gets its own centre**
  (column K), as in the other distance heads -- and a learnable scale ``s`` (init 10, used as
  ``|s|``)::

      d_j     = ||ẑ - ĉ_j||_2 in [0, 2]      (ẑ, ĉ_j L2-normalised)
      logit_j = -|s| * d_j

* loss (``y`` in 0 .. K; ID = foreground ROIs, ``y < K``; ``o`` = outlier features, e.g. VOS
  virtual outliers)::

      p_y             = softmax(logits)_y
      loss_cls        = mean_ROIs (1 - p_y)^γ * (-log p_y)                 (Cluster Focal Loss)
      E(x)            = -logsumexp_{j < K} logit_j(x)                       (foreground energy)
      loss_cfl_energy = w_E * [mean_ID relu(E - m_in)^2 + mean_o relu(m_out - E(o))^2]
      loss_cfl_margin = w_M * mean_o relu(margin - min_{j < K} d_j(o))^2

  The focal-weighted distance cross-entropy pulls an ROI towards its own centre and away from the
  others, with the focal weight concentrating on ROIs still far from their centre; the energy hinge
  is Liu et al.'s (NeurIPS 2020) energy-margin loss on these distance logits; the margin term
  pushes outliers beyond ``margin`` from every foreground centre. The energy and margin terms are
  only active when outliers are given (as Liu et al.'s loss; on a synthetic toy the ID half alone
  lowered AUROC from 0.95 to 0.87). The scale ``s`` is trained by the focal term only (detached in
  the energy terms, which would otherwise be met by changing ``|s|`` rather than the features).
  Defaults (ours, for ``|s|`` ≈ 10, where an ID ROI's energy is ≈ ``|s| d_y``, typically 6-8):
  γ = 2, m_in = 8, m_out = 12, margin = 1.0, w_E = w_M = 0.1 -- picked on a synthetic Gaussian
  toy (AUROC 0.985 vs 0.946 without the hinge; m_in = 5 / m_out = 8 gave 0.946), not on VOC.

* score ``cfl`` (higher = ID) = the energy score ``S_E = -E`` coupled with the representation score
  ``S_R = -min_{j < K} d_j = max_{j < K} logit_j / |s|``, each standardised by its mean and standard
  deviation over **ID validation** foreground ROIs (buffers ``score_mean`` / ``score_std``, fitted
  by :meth:`post_fit`, never on OOD data)::

      cfl = (S_E - μ_E) / σ_E + (S_R - μ_R) / σ_R        (before fitting: μ = 0, σ = 1)

  With distance logits the two are strongly correlated (``S_E ≈ |s| S_R + log #nearby centres``);
  standardising weights them by their ID spread. Also supported: ``energy``, ``mds``, ``msp``,
  ``max_logit`` over the K foreground logits.

Box confidence = ``softmax(logits)`` over all K + 1 columns (the scale ``|s|`` is learned with
the focal loss, so no extra entropic scale is applied).
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_head
from ._utils import check_features, check_labels, normalized_distances, zero_loss
from .base import OODHead


@register_head
class CFLHead(OODHead):
    """Cluster-centre distance head trained with the Cluster Focal Loss + energy hinge.

    Args:
        in_features: D.
        num_classes: K (a K+1-th centre is learned for background).
        scale_init: initial learnable logit scale ``s``.
        gamma: focal exponent γ of the Cluster Focal Loss.
        energy_weight: w_E; 0 disables the energy hinge (active only with outliers).
        m_in: ID energy margin (ID foreground energy pushed below it).
        m_out: outlier energy margin (outlier energy pushed above it).
        margin: outliers are pushed at least this normalised distance (in [0, 2]) from every
            foreground centre.
        margin_weight: w_M; 0 disables the margin term.

    Parameters: ``centres`` ``[K + 1, D]`` ~ N(0, 1), ``distance_scale`` ``[1]`` = ``scale_init``.
    Buffers: ``score_mean`` ``[2]`` (μ_E, μ_R), ``score_std`` ``[2]`` (σ_E, σ_R),
    ``score_fitted`` (bool scalar).
    """

    name = "cfl"
    default_score = "cfl"
    supported_scores = ("cfl", "energy", "mds", "msp", "max_logit")

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        scale_init: float = 10.0,
        gamma: float = 2.0,
        energy_weight: float = 0.1,
        m_in: float = 8.0,
        m_out: float = 12.0,
        margin: float = 1.0,
        margin_weight: float = 0.1,
    ):
        super().__init__(in_features, num_classes)
        if scale_init <= 0 or gamma < 0 or energy_weight < 0 or margin_weight < 0:
            raise ValueError(
                "CFLHead: need scale_init > 0 and gamma, energy_weight, margin_weight >= 0; got "
                f"scale_init={scale_init}, gamma={gamma}, energy_weight={energy_weight}, "
                f"margin_weight={margin_weight}"
            )
        self.gamma = float(gamma)
        self.energy_weight = float(energy_weight)
        self.m_in = float(m_in)
        self.m_out = float(m_out)
        self.margin = float(margin)
        self.margin_weight = float(margin_weight)
        self.centres = nn.Parameter(torch.empty(num_classes + 1, in_features))
        nn.init.normal_(self.centres, mean=0.0, std=1.0)
        self.distance_scale = nn.Parameter(torch.full((1,), float(scale_init)))
        self.register_buffer("score_mean", torch.zeros(2))
        self.register_buffer("score_std", torch.ones(2))
        self.register_buffer("score_fitted", torch.zeros((), dtype=torch.bool))

    # ------------------------------------------------------------------ config
    @classmethod
    def add_config(cls, ood_cfg) -> None:
        ood_cfg.CFL = type(ood_cfg)()
        c = ood_cfg.CFL
        c.SCALE_INIT = 10.0
        c.GAMMA = 2.0
        c.ENERGY_WEIGHT = 0.1
        c.M_IN = 8.0
        c.M_OUT = 12.0
        c.MARGIN = 1.0
        c.MARGIN_WEIGHT = 0.1

    @classmethod
    def from_config(cls, cfg, in_features: int) -> dict:
        kw = super().from_config(cfg, in_features)
        c = cfg.MODEL.OOD.CFL
        kw.update(
            scale_init=c.SCALE_INIT,
            gamma=c.GAMMA,
            energy_weight=c.ENERGY_WEIGHT,
            m_in=c.M_IN,
            m_out=c.M_OUT,
            margin=c.MARGIN,
            margin_weight=c.MARGIN_WEIGHT,
        )
        return kw

    # ----------------------------------------------------------------- compute
    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """``[R, D]`` -> ``[R, K + 1]`` normalised distances ``||ẑ - ĉ_j||`` in [0, 2] (float32)."""
        check_features(features, self.in_features, "CFLHead.distances")
        return normalized_distances(features, self.centres)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[R, D]`` -> ``[R, K + 1]`` float32 logits ``-|s| d_j``."""
        return -self.distance_scale.float().abs() * self.distances(features)

    def energy(self, logits: torch.Tensor) -> torch.Tensor:
        """``[R, K + 1]`` -> ``[R]`` foreground energy ``E = -logsumexp_{j<K} logit_j`` (low = ID)."""
        return -torch.logsumexp(logits[:, : self.num_classes].float(), dim=1)

    def loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        features: Optional[torch.Tensor] = None,
        outlier_features: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """``{"loss_cls", "loss_cfl_energy", "loss_cfl_margin"}``, already weighted (see module doc).

        ``outlier_features`` ``[N, D]`` (e.g. VOS virtual outliers) switch on the energy hinge and
        the margin term; without them both are differentiable zeros (same keys).
        """
        check_labels(logits, labels, self.num_classes, "CFLHead.loss")
        logits = logits.float()
        zero = zero_loss(logits)
        # Cluster Focal Loss
        if logits.shape[0]:
            logp_y = torch.log_softmax(logits, dim=1).gather(1, labels.long()[:, None]).squeeze(1)
            focal = (1.0 - logp_y.exp()).clamp_min(1e-12).pow(self.gamma) * (-logp_y)
            loss_cls = focal.mean()
        else:
            loss_cls = zero
        # energy hinge (only with outliers, as Liu et al.'s energy-margin loss): ID foreground ROIs
        # below m_in, outliers above m_out; and outliers beyond `margin` from every foreground
        # centre. The scale is detached in these terms (same values, no gradient into s):
        # otherwise the hinges are met by shrinking or growing |s| instead of moving features.
        l_energy = zero
        l_margin = zero
        if outlier_features is not None and outlier_features.shape[0] > 0:
            scale = self.distance_scale.float().abs()
            fixed_scale = logits * (scale.detach() / scale.clamp_min(1e-12))
            fg = labels < self.num_classes
            e_in = self.energy(fixed_scale[fg])
            l_in = F.relu(e_in - self.m_in).square().sum() / fg.sum().clamp_min(1)
            d_out = self.distances(outlier_features)
            e_out = self.energy(-scale.detach() * d_out)
            l_energy = l_in + F.relu(self.m_out - e_out).square().mean()
            d_min = d_out[:, : self.num_classes].min(dim=1).values
            l_margin = F.relu(self.margin - d_min).square().mean()
        return {
            "loss_cls": loss_cls,
            "loss_cfl_energy": self.energy_weight * l_energy + zero,
            "loss_cfl_margin": self.margin_weight * l_margin + zero,
        }

    # ------------------------------------------------------------------ scores
    def score_components(self, logits: torch.Tensor) -> torch.Tensor:
        """``[R, K + 1]`` -> ``[R, 2]``: energy score ``S_E = logsumexp_{j<K} logit_j`` and
        representation score ``S_R = -min_{j<K} d_j = max_{j<K} logit_j / |s|``."""
        fg = logits[:, : self.num_classes].float()
        s_e = torch.logsumexp(fg, dim=1)
        s_r = fg.max(dim=1).values / self.distance_scale.float().abs().clamp_min(1e-12)
        return torch.stack([s_e, s_r], dim=1)

    def cfl_score(self, logits: torch.Tensor) -> torch.Tensor:
        """``[R, K + 1]`` -> ``[R]`` the ``cfl`` score (higher = ID)."""
        comps = self.score_components(logits)
        return ((comps - self.score_mean) / self.score_std).sum(dim=1)

    def ood_score(
        self,
        logits: torch.Tensor,
        features: Optional[torch.Tensor] = None,
        score: Optional[str] = None,
    ) -> torch.Tensor:
        score = score or self.default_score
        if score == "cfl":
            if logits.dim() != 2 or logits.shape[1] != self.num_classes + 1:
                raise ValueError(
                    f"CFLHead.ood_score: expected logits [R, {self.num_classes + 1}], got "
                    f"{tuple(logits.shape)}"
                )
            return self.cfl_score(logits)
        return super().ood_score(logits, features=features, score=score)

    @torch.no_grad()
    def post_fit(
        self,
        logits: torch.Tensor,
        labels: Optional[torch.Tensor],
        features: Optional[torch.Tensor] = None,
    ) -> Dict[str, float]:
        """Fit the ``cfl`` score's standardisation on ID validation foreground ROIs.

        Uses the rows with ``labels < K`` (all rows when ``labels`` is None); needs at least 2.
        Returns ``{"mean_energy", "std_energy", "mean_repr", "std_repr", "num_rois"}``.
        """
        if logits.dim() != 2 or logits.shape[1] != self.num_classes + 1:
            raise ValueError(
                f"CFLHead.post_fit: expected logits [R, {self.num_classes + 1}], got "
                f"{tuple(logits.shape)}"
            )
        if labels is not None:
            check_labels(logits, labels, self.num_classes, "CFLHead.post_fit")
            logits = logits[labels < self.num_classes]
        if logits.shape[0] < 2:
            warnings.warn(
                f"CFLHead.post_fit: {logits.shape[0]} ID foreground ROI(s), need >= 2; the cfl "
                "score weights are left unchanged"
            )
            return {}
        comps = self.score_components(logits).double()
        mean = comps.mean(dim=0)
        std = comps.std(dim=0, unbiased=False)
        std = torch.where(std > 1e-12, std, torch.ones_like(std))
        self.score_mean.copy_(mean.to(self.score_mean))
        self.score_std.copy_(std.to(self.score_std))
        self.score_fitted.fill_(True)
        return {
            "mean_energy": float(mean[0]),
            "std_energy": float(std[0]),
            "mean_repr": float(mean[1]),
            "std_repr": float(std[1]),
            "num_rois": int(logits.shape[0]),
        }

    def extra_repr(self) -> str:
        return super().extra_repr() + f", gamma={self.gamma}, m_in={self.m_in}, m_out={self.m_out}"
