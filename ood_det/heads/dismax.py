"""``dismax``: Distinction Maximization loss head (Macêdo, Zanchettin, Ludermir, "Distinction
Maximization Loss: Efficiently Improving Out-of-Distribution Detection and Uncertainty Estimation
by Replacing the Loss and Calibrating", arXiv 2205.05874, 2022).

Equations (as in the paper and its authors' code), with ``ẑ``, ``p̂_j`` L2-normalised, learnable
prototypes ``p_j ~ N(0, 1)`` ``[K + 1, D]``, a learnable distance scale ``s`` (init 1, used as
``|s|``) and a non-trainable temperature ``T`` (1 until calibrated)::

    d_j     = |s| * ||ẑ - p̂_j||_2 / sqrt(2)
    logit_j = -(d_j + mean_k d_k) / T           (mean over all K + 1 prototypes)
    loss    = CE(E_s * logits, y),   E_s = 10
    p       = softmax(logits[:K])                (the logits already carry 1 / T)
    MMLES   = max_j logit_j + mean_j logit_j + sum_j p_j log p_j     (default score)

The mean term is the same for every column of a row: the softmax and the loss equal those of
IsoMax+ with ``d / sqrt(2)``; it only shifts the logit-based scores (``mds``, ``mmls``,
``mmles``, ``max_logit``, ``energy``). Other scores: ``msp`` (MPS), ``entropic`` (ES), ``mds``
(max logit), ``mmls`` (max + mean logit), ``max_logit``, ``energy``.

Calibration: :meth:`post_fit` fits ``T`` on held-out **ID validation** ROIs by minimising the ECE
(15 bins) with bounded L-BFGS, bounds [1e-3, 100], as the authors do (their script calibrates on
the test loader; we never do) -- see :func:`ood_det.calibration.fit_temperature` for the robust
fallback we add because ECE is discontinuous in ``T``.

Detection changes (ours):

* background has its own prototype (column K) and takes part in the mean term (the mean is over
  all K + 1 distances, exactly the authors' formula applied to K + 1 classes); the scores use the
  K foreground logits, so their ``mean_j logit_j`` is over foreground columns only.
* box **confidence** = ``softmax(E_s * logits)`` before calibration (the training scale) and
  ``softmax(logits)`` -- i.e. ``softmax(-(d + mean d) / T)`` -- after it (buffer ``calibrated``).
  The temperature is fitted on the box-confidence task (all K + 1 columns, labels 0 .. K, start
  ``1 / E_s`` = the uncalibrated confidence), so it is never worse in ECE than before.
* the fractional probability regularization (FPR) is a separate regularizer (``fpr``).
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from .registry import register_head
from ._utils import check_features, check_labels, init_prototypes, normalized_distances
from .base import EntropicScaleHead


@register_head
class DisMaxHead(EntropicScaleHead):
    """DisMax head with a calibratable temperature.

    Args:
        in_features: D.
        num_classes: K (a K+1-th prototype is learned for background).
        entropic_scale: E_s of the loss and of the uncalibrated box confidence.
        calibrate: whether :meth:`post_fit` fits the temperature.
        temperature_bounds: bounds of the fitted temperature.
        n_bins: ECE bins used for calibration.
        prototype_init_std: the prototypes start as N(0, std²) (the paper: 1; 1/sqrt(D) starts
            them at unit norm, see ``init_prototypes``).

    Parameters: ``prototypes`` ``[K + 1, D]`` ~ N(0, std²), ``distance_scale`` ``[1]`` = 1.
    Buffers: ``temperature`` (scalar, 1.0), ``calibrated`` (bool scalar, False).
    """

    name = "dismax"
    default_score = "mmles"
    supported_scores = ("mmles", "mmls", "mds", "msp", "max_logit", "energy", "entropic")

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        entropic_scale: float = 10.0,
        calibrate: bool = True,
        temperature_bounds: Tuple[float, float] = (1e-3, 100.0),
        n_bins: int = 15,
        prototype_init_std: float = 1.0,
    ):
        super().__init__(in_features, num_classes, entropic_scale)
        self.calibrate = bool(calibrate)
        self.temperature_bounds = (float(temperature_bounds[0]), float(temperature_bounds[1]))
        self.n_bins = int(n_bins)
        self.prototypes = nn.Parameter(torch.empty(num_classes + 1, in_features))
        init_prototypes(self.prototypes, prototype_init_std, type(self).__name__)
        self.distance_scale = nn.Parameter(torch.ones(1))
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("calibrated", torch.zeros((), dtype=torch.bool))

    @classmethod
    def add_config(cls, ood_cfg) -> None:
        ood_cfg.DISMAX = type(ood_cfg)()
        ood_cfg.DISMAX.ENTROPIC_SCALE = 10.0
        # fit the temperature on ID validation ROIs after training (post_fit)
        ood_cfg.DISMAX.CALIBRATE = True
        ood_cfg.DISMAX.TEMPERATURE_BOUNDS = (1e-3, 100.0)
        ood_cfg.DISMAX.PROTOTYPE_INIT_STD = 1.0

    @classmethod
    def from_config(cls, cfg, in_features: int) -> dict:
        kw = super().from_config(cfg, in_features)
        c = cfg.MODEL.OOD.DISMAX
        kw.update(
            entropic_scale=c.ENTROPIC_SCALE,
            calibrate=c.CALIBRATE,
            temperature_bounds=tuple(c.TEMPERATURE_BOUNDS),
            prototype_init_std=c.PROTOTYPE_INIT_STD,
        )
        return kw

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """``[R, D]`` -> ``[R, K + 1]`` isometric distances ``d_j = |s| ||ẑ - p̂_j|| / sqrt(2)``."""
        check_features(features, self.in_features, "DisMaxHead.distances")
        scale = self.distance_scale.float().abs() / math.sqrt(2.0)
        return scale * normalized_distances(features, self.prototypes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``[R, D]`` -> ``[R, K + 1]`` float32 logits ``-(d_j + mean_k d_k) / T``."""
        d = self.distances(features)
        return -(d + d.mean(dim=1, keepdim=True)) / self.temperature.float()

    def confidence_logits(self, logits: torch.Tensor) -> torch.Tensor:
        if bool(self.calibrated):
            return logits.float()
        return self.entropic_scale * logits.float()

    @torch.no_grad()
    def post_fit(
        self,
        logits: torch.Tensor,
        labels: Optional[torch.Tensor],
        features: Optional[torch.Tensor] = None,
    ) -> Dict[str, float]:
        """Fit the temperature on ID validation ROIs (all K + 1 columns, labels in 0 .. K).

        ``logits`` are this head's output with the current temperature; the uncalibrated logits
        are recovered as ``logits * T``. Sets the buffers ``temperature`` and ``calibrated``.
        Logits and scores computed before this call are stale: recompute them.

        Returns:
            ``{"temperature", "ece_before", "ece_after", "lbfgs_moved"}`` (``{}`` when
            calibration is off or there are no ROIs).
        """
        from ..calibration import fit_temperature

        if not self.calibrate:
            return {}
        if labels is None:
            raise ValueError("DisMaxHead.post_fit: labels (in 0 .. K) are required to calibrate")
        check_labels(logits, labels, self.num_classes, "DisMaxHead.post_fit")
        if logits.shape[0] == 0:
            warnings.warn("DisMaxHead.post_fit: no ROIs given; the temperature is left unchanged")
            return {}
        raw = logits.double() * self.temperature.double()
        # the confidence now in use: softmax(E_s * raw) before calibration, softmax(raw / T) after
        t_now = float(self.temperature) if bool(self.calibrated) else 1.0 / self.entropic_scale
        lo, hi = self.temperature_bounds
        init = min(max(t_now, lo), hi)
        t, info = fit_temperature(
            raw, labels, bounds=(lo, hi), init=init, n_bins=self.n_bins, return_info=True
        )
        self.temperature.fill_(t)
        self.calibrated.fill_(True)
        return {
            "temperature": float(t),
            "ece_before": info["ece_init"],
            "ece_after": info["ece"],
            "lbfgs_moved": info["lbfgs_moved"],
        }

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", temperature={float(self.temperature):.4g}"
        )
