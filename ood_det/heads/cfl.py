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

**Two classifiers** (``classifier``, config ``CFL.CLASSIFIER``). ``distance`` (default, above):
the logits *are* the scaled centre distances, so the energy and the representation score are two
readings of one set of distances. ``linear``: the detector keeps its linear classifier
``W z + b`` (``[K + 1, D]``, detectron2's initialisation) and the centres are a representation
branch beside it -- the other reading of the abstract, whose "energy score" is Liu et al.'s
energy of the classifier logits::

    loss_cls         = CE(W z + b, y)
    loss_cfl_cluster = w_C * mean_ROIs (1 - q_y)^γ (-log q_y),   q = softmax(-|s| d(z))   (CFL)
    E                = -logsumexp_{j<K} (W z + b)_j       (energy hinge on the linear logits)
    S_R              = -min_{j<K} d_j(z)                  (needs the features at scoring time)

The cluster term trains the centres, the scale and the features (ID ROIs are pulled towards
their centre); ``mds`` is ``-|s| min_{j<K} d_j``. On DigitsOOD the ``linear`` classifier with
small centres beats the ``distance`` one (benchmarks/README.md, "CFL, second round").

**Centre initialisation** (``centre_init_std``): only a centre's direction enters a cosine
distance, and the gradient scales as ``1 / ||c||``; N(0, 1) centres in D = 256 (norm ≈ 16) barely
turn in a 1000-iteration schedule (measured: the trained centres' norms equalled their initial
ones to 4 digits), N(0, 1/D) ones start at unit norm and learn (see ``init_prototypes``).
"""
from __future__ import annotations

import warnings
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_head
from ._utils import (
    check_features,
    check_labels,
    cross_entropy,
    init_prototypes,
    normalized_distances,
    zero_loss,
)
from .base import OODHead

#: where the logits come from: the centres themselves, or a linear classifier beside them
CLASSIFIERS = ("distance", "linear")


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
        classifier: ``"distance"`` (logits = scaled centre distances) or ``"linear"`` (a linear
            classifier gives the logits, the centres are a representation branch).
        cluster_weight: w_C of the Cluster Focal Loss on the centre distances (``linear`` only).
        centre_init_std: the centres start as N(0, std²); 1/sqrt(D) starts them at unit norm.

    Parameters: ``centres`` ``[K + 1, D]`` ~ N(0, std²), ``distance_scale`` ``[1]`` =
    ``scale_init``; with ``classifier="linear"`` also ``cls_score`` (``nn.Linear(D, K + 1)``).
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
        classifier: str = "distance",
        cluster_weight: float = 1.0,
        centre_init_std: float = 1.0,
    ):
        super().__init__(in_features, num_classes)
        if classifier not in CLASSIFIERS:
            raise ValueError(
                f"CFLHead: classifier must be one of {', '.join(CLASSIFIERS)}, got {classifier!r}"
            )
        if cluster_weight < 0:
            raise ValueError(f"CFLHead: need cluster_weight >= 0, got {cluster_weight}")
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
        self.classifier = classifier
        self.cluster_weight = float(cluster_weight)
        if classifier == "linear":
            # detectron2's cls_score initialisation, as the softmax head
            self.cls_score = nn.Linear(in_features, num_classes + 1)
            nn.init.normal_(self.cls_score.weight, std=0.01)
            nn.init.constant_(self.cls_score.bias, 0.0)
        self.centres = nn.Parameter(torch.empty(num_classes + 1, in_features))
        init_prototypes(self.centres, centre_init_std, "CFLHead")
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
        # "distance": the logits are the scaled distances to the cluster centres; "linear": a
        # linear classifier gives the logits (and the energy), the centres a separate
        # representation branch trained by the Cluster Focal Loss (see the module doc)
        c.CLASSIFIER = "distance"
        c.CLUSTER_WEIGHT = 1.0
        c.CENTRE_INIT_STD = 1.0

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
            classifier=c.CLASSIFIER,
            cluster_weight=c.CLUSTER_WEIGHT,
            centre_init_std=c.CENTRE_INIT_STD,
        )
        return kw

    # ----------------------------------------------------------------- compute
    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """``[R, D]`` -> ``[R, K + 1]`` normalised distances ``||ẑ - ĉ_j||`` in [0, 2] (float32)."""
        check_features(features, self.in_features, "CFLHead.distances")
        return normalized_distances(features, self.centres)

    def cluster_logits(self, features: torch.Tensor) -> torch.Tensor:
        """``[R, D]`` -> ``[R, K + 1]`` float32 distance logits ``-|s| d_j``."""
        return -self.distance_scale.float().abs() * self.distances(features)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[R, D]`` -> ``[R, K + 1]`` logits: :meth:`cluster_logits` (``distance``) or the linear
        classifier's ``W z + b`` (``linear``)."""
        if self.classifier == "linear":
            check_features(features, self.in_features, "CFLHead.forward")
            return self.cls_score(features.to(self.cls_score.weight.dtype))
        return self.cluster_logits(features)

    def energy(self, logits: torch.Tensor) -> torch.Tensor:
        """``[R, K + 1]`` -> ``[R]`` foreground energy ``E = -logsumexp_{j<K} logit_j`` (low = ID)."""
        return -torch.logsumexp(logits[:, : self.num_classes].float(), dim=1)

    def _focal(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cluster Focal Loss ``mean (1 - p_y)^γ (-log p_y)`` over the rows of ``logits``; a
        differentiable 0 for an empty batch."""
        if logits.shape[0] == 0:
            return zero_loss(logits)
        logp_y = torch.log_softmax(logits.float(), dim=1).gather(1, labels.long()[:, None]).squeeze(1)
        return ((1.0 - logp_y.exp()).clamp_min(1e-12).pow(self.gamma) * (-logp_y)).mean()

    def loss(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor,
        features: Optional[torch.Tensor] = None,
        outlier_features: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """``{"loss_cls", "loss_cfl_energy", "loss_cfl_margin"}`` (+ ``"loss_cfl_cluster"`` for the
        ``linear`` classifier), already weighted (see module doc).

        ``outlier_features`` ``[N, D]`` (e.g. VOS virtual outliers) switch on the energy hinge and
        the margin term; without them both are differentiable zeros (same keys). The ``linear``
        classifier needs ``features`` (the rows ``logits`` came from) for its cluster term.
        """
        check_labels(logits, labels, self.num_classes, "CFLHead.loss")
        logits = logits.float()
        zero = zero_loss(logits)
        losses = {}
        if self.classifier == "linear":
            if features is None:
                raise ValueError("CFLHead.loss: the linear classifier needs the ROI features")
            losses["loss_cls"] = cross_entropy(logits, labels)
            losses["loss_cfl_cluster"] = self.cluster_weight * self._focal(
                self.cluster_logits(features), labels
            )
        else:
            losses["loss_cls"] = self._focal(logits, labels)
        # energy hinge (only with outliers, as Liu et al.'s energy-margin loss): ID foreground ROIs
        # below m_in, outliers above m_out; and outliers beyond `margin` from every foreground
        # centre.
        l_energy = zero
        l_margin = zero
        if outlier_features is not None and outlier_features.shape[0] > 0:
            d_out = self.distances(outlier_features)
            if self.energy_weight > 0:
                fg = labels < self.num_classes
                if self.classifier == "linear":
                    e_in = self.energy(logits[fg])
                    e_out = self.energy(self(outlier_features).float())
                else:
                    # the scale is detached here (same values, no gradient into s): otherwise the
                    # hinges are met by shrinking or growing |s| instead of moving features
                    scale = self.distance_scale.float().abs()
                    e_in = self.energy(logits[fg] * (scale.detach() / scale.clamp_min(1e-12)))
                    e_out = self.energy(-scale.detach() * d_out)
                l_in = F.relu(e_in - self.m_in).square().sum() / fg.sum().clamp_min(1)
                l_energy = l_in + F.relu(self.m_out - e_out).square().mean()
            d_min = d_out[:, : self.num_classes].min(dim=1).values
            l_margin = F.relu(self.margin - d_min).square().mean()
        losses["loss_cfl_energy"] = self.energy_weight * l_energy + zero
        losses["loss_cfl_margin"] = self.margin_weight * l_margin + zero
        return losses

    # ------------------------------------------------------------------ scores
    def representation_score(
        self, logits: torch.Tensor, features: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``[R, K + 1]`` (+ ``[R, D]``) -> ``[R]`` ``S_R = -min_{j<K} d_j``.

        With the ``distance`` classifier it comes from the logits (``max_{j<K} logit_j / |s|``,
        ``features`` unused); the ``linear`` classifier needs ``features``.
        """
        if self.classifier == "linear":
            if features is None:
                raise ValueError(
                    "CFLHead: the linear classifier's representation score needs the ROI features"
                )
            return -self.distances(features)[:, : self.num_classes].min(dim=1).values
        fg = logits[:, : self.num_classes].float()
        return fg.max(dim=1).values / self.distance_scale.float().abs().clamp_min(1e-12)

    def score_components(
        self, logits: torch.Tensor, features: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``[R, K + 1]`` (+ ``[R, D]``) -> ``[R, 2]``: energy score ``S_E = logsumexp_{j<K}
        logit_j`` and :meth:`representation_score` ``S_R``."""
        s_e = torch.logsumexp(logits[:, : self.num_classes].float(), dim=1)
        return torch.stack([s_e, self.representation_score(logits, features)], dim=1)

    def cfl_score(self, logits: torch.Tensor, features: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[R, K + 1]`` (+ ``[R, D]``) -> ``[R]`` the ``cfl`` score (higher = ID)."""
        comps = self.score_components(logits, features)
        return ((comps - self.score_mean) / self.score_std).sum(dim=1)

    def ood_score(
        self,
        logits: torch.Tensor,
        features: Optional[torch.Tensor] = None,
        score: Optional[str] = None,
    ) -> torch.Tensor:
        score = score or self.default_score
        if score in ("cfl", "mds"):
            if logits.dim() != 2 or logits.shape[1] != self.num_classes + 1:
                raise ValueError(
                    f"CFLHead.ood_score: expected logits [R, {self.num_classes + 1}], got "
                    f"{tuple(logits.shape)}"
                )
            if score == "cfl":
                return self.cfl_score(logits, features)
            if self.classifier == "linear":  # minimum distance to a foreground centre, scaled
                return self.representation_score(logits, features) * self.distance_scale.float().abs()
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
        The ``linear`` classifier needs ``features`` ``[R, D]``.
        Returns ``{"mean_energy", "std_energy", "mean_repr", "std_repr", "num_rois"}``.
        """
        if logits.dim() != 2 or logits.shape[1] != self.num_classes + 1:
            raise ValueError(
                f"CFLHead.post_fit: expected logits [R, {self.num_classes + 1}], got "
                f"{tuple(logits.shape)}"
            )
        if labels is not None:
            check_labels(logits, labels, self.num_classes, "CFLHead.post_fit")
            keep = labels < self.num_classes
            logits = logits[keep]
            features = features[keep] if features is not None else None
        if logits.shape[0] < 2:
            warnings.warn(
                f"CFLHead.post_fit: {logits.shape[0]} ID foreground ROI(s), need >= 2; the cfl "
                "score weights are left unchanged"
            )
            return {}
        comps = self.score_components(logits, features).double()
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
        return (
            super().extra_repr()
            + f", classifier={self.classifier}, gamma={self.gamma}, m_in={self.m_in}, m_out={self.m_out}"
        )
