"""Energy-margin regularization (Liu et al., "Energy-based Out-of-distribution Detection",
NeurIPS 2020), applied to the foreground ROIs of a detector and to outlier box features.

Equations (Liu et al., Eq. 5 and Sec. 4):

* free energy ``E(x) = -T * logsumexp_k(f_k(x) / T)`` over the K **foreground** logits
  (``head.score_logits``), T = 1;
* ``L_energy = beta * [ mean_in relu(E_in - m_in)^2 + mean_out relu(m_out - E_out)^2 ]`` with
  beta = 0.1. ID samples are the foreground ROIs (background proposals are neither ID objects nor
  outliers and are left out); OOD samples are the outlier features (e.g. VOS virtual outliers),
  passed through ``head(outliers)`` so the loss works with any head.

Margins. Liu et al. use m_in = -25, m_out = -7 for linear logits on CIFAR. Bounded distance logits
(IsoMax+, DisMax) have energies in a range of a few nats, so those numbers would make the loss a
constant pull. ``MODEL.OOD.ENERGY.M_IN / M_OUT`` set them explicitly; left at ``None`` they are
**derived** (our reconstruction, not from the paper) by :class:`EnergyMargins`:

1. while the regularizer waits for outliers (e.g. the VOS warm-up), the energies of the foreground
   ROIs are kept in a ring buffer (``MARGIN_STATS`` values, a registered buffer);
2. at the first step that has outliers, the margins are set once and **frozen**:
   ``m_in = quantile(E_ID, Q_IN)`` (default the median) and
   ``m_out = max(quantile(E_ID, Q_OUT), m_in + MIN_GAP)`` (default the 95th percentile, i.e. the
   FPR95 operating point of the ID boxes at that time, and at least 1 nat above m_in).

Why frozen: margins that keep tracking the ID energies chase their own target (ID energies are
pushed below m_in, which then moves down, without end for unbounded logits), and a gap measured
from a shrinking ID spread tends to zero, so m_out would fall onto m_in. Frozen margins with a
positive floor on the gap cannot collapse; they are saved with the checkpoint and survive resume.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_regularizer
from ._utils import foreground_mask, zero_loss
from .base import Regularizer


# ----------------------------------------------------------------------------- the math
def free_energy(fg_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Free energy ``E = -T * logsumexp(fg_logits / T)`` (Liu et al., Eq. 1).

    Args:
        fg_logits: ``[N, K]`` foreground logits.
        temperature: T > 0.

    Returns:
        ``[N]`` float32 energies (lower = more in-distribution).
    """
    if fg_logits.dim() != 2:
        raise ValueError(f"free_energy expects [N, K] logits, got shape {tuple(fg_logits.shape)}")
    t = float(temperature)
    return -t * torch.logsumexp(fg_logits.float() / t, dim=1)


def energy_margin_loss(
    energy_in: torch.Tensor,
    energy_out: torch.Tensor,
    m_in,
    m_out,
) -> torch.Tensor:
    """Unweighted energy-margin loss of Liu et al. (Eq. 5, without beta).

    ``mean_in relu(E_in - m_in)^2 + mean_out relu(m_out - E_out)^2``; an empty set contributes 0.

    Args:
        energy_in: ``[N_in]`` energies of ID samples.
        energy_out: ``[N_out]`` energies of outliers.
        m_in, m_out: margins (floats or 0-d tensors).
    """
    terms = []
    if energy_in.numel():
        terms.append(F.relu(energy_in - m_in).pow(2).mean())
    if energy_out.numel():
        terms.append(F.relu(m_out - energy_out).pow(2).mean())
    if not terms:
        return zero_loss(energy_in, energy_out)
    return terms[0] if len(terms) == 1 else terms[0] + terms[1]


# -------------------------------------------------------------------------- the margins
def add_margin_config(node) -> None:
    """Declare the margin keys (shared by ``ENERGY`` and ``GREG``) on a config node."""
    node.M_IN = None  # None: derived from ID energies (see ood_det.regularizers.energy)
    node.M_OUT = None
    node.MARGIN_Q_IN = 0.5
    node.MARGIN_Q_OUT = 0.95
    node.MARGIN_MIN_GAP = 1.0
    node.MARGIN_STATS = 4096


def margin_kwargs(node) -> dict:
    """Keyword arguments of :class:`EnergyMargins` read from a config node."""
    return {
        "m_in": None if node.M_IN is None else float(node.M_IN),
        "m_out": None if node.M_OUT is None else float(node.M_OUT),
        "q_in": float(node.MARGIN_Q_IN),
        "q_out": float(node.MARGIN_Q_OUT),
        "min_gap": float(node.MARGIN_MIN_GAP),
        "stats_size": int(node.MARGIN_STATS),
    }


class EnergyMargins(nn.Module):
    """The energy margins ``(m_in, m_out)``: fixed, or derived once from ID energies and frozen.

    State (registered buffers, saved with checkpoints): ``m_in``, ``m_out`` (NaN until set),
    ``frozen``, and the ring buffer ``stats`` ``[stats_size]`` of recent ID energies with
    ``stats_ptr`` / ``stats_count``. See the module docstring for the derivation.

    Args:
        m_in, m_out: fixed margins, or None to derive that margin.
        q_in, q_out: quantiles of the ID energies giving the derived m_in / m_out.
        min_gap: derived margins keep ``m_out >= m_in + min_gap`` (> 0).
        stats_size: how many recent ID energies are kept for the derivation.
    """

    def __init__(
        self,
        m_in: Optional[float] = None,
        m_out: Optional[float] = None,
        q_in: float = 0.5,
        q_out: float = 0.95,
        min_gap: float = 1.0,
        stats_size: int = 4096,
    ):
        super().__init__()
        if not 0.0 <= q_in < q_out <= 1.0:
            raise ValueError(f"energy margins: need 0 <= MARGIN_Q_IN < MARGIN_Q_OUT <= 1, got {q_in}, {q_out}")
        if min_gap <= 0:
            raise ValueError(f"energy margins: MARGIN_MIN_GAP must be > 0, got {min_gap}")
        if stats_size <= 0:
            raise ValueError(f"energy margins: MARGIN_STATS must be > 0, got {stats_size}")
        if m_in is not None and m_out is not None and not m_in < m_out:
            raise ValueError(f"energy margins: need M_IN < M_OUT, got M_IN={m_in}, M_OUT={m_out}")
        self.fixed_in, self.fixed_out = m_in, m_out
        self.q_in, self.q_out, self.min_gap = float(q_in), float(q_out), float(min_gap)
        nan = float("nan")
        self.register_buffer("m_in", torch.tensor(nan if m_in is None else float(m_in)))
        self.register_buffer("m_out", torch.tensor(nan if m_out is None else float(m_out)))
        both_fixed = m_in is not None and m_out is not None
        self.register_buffer("frozen", torch.tensor(both_fixed))
        self.register_buffer("stats", torch.zeros(int(stats_size)))
        self.register_buffer("stats_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("stats_count", torch.zeros((), dtype=torch.long))

    @property
    def is_frozen(self) -> bool:
        return bool(self.frozen)

    @torch.no_grad()
    def observe(self, energy_in: torch.Tensor) -> None:
        """Append ``[N]`` ID energies to the ring buffer (no-op once frozen)."""
        if self.is_frozen or energy_in.numel() == 0:
            return
        e = energy_in.detach().reshape(-1).to(self.stats)
        e = e[torch.isfinite(e)]
        size = self.stats.numel()
        if e.numel() > size:
            e = e[-size:]
        n = e.numel()
        if n == 0:
            return
        pos = (self.stats_ptr + torch.arange(n, device=self.stats.device)) % size
        self.stats[pos] = e
        self.stats_ptr.copy_((self.stats_ptr + n) % size)
        self.stats_count.copy_(torch.clamp(self.stats_count + n, max=size))

    @torch.no_grad()
    def freeze(self) -> bool:
        """Derive the unset margins from the collected ID energies and freeze them.

        Returns False (and changes nothing) while no ID energy has been observed.
        """
        if self.is_frozen:
            return True
        n = int(self.stats_count)
        if n == 0:
            return False
        e = self.stats[:n]
        q = torch.quantile(e, torch.tensor([self.q_in, self.q_out], device=e.device, dtype=e.dtype))
        m_in = torch.tensor(self.fixed_in, device=e.device) if self.fixed_in is not None else q[0]
        if self.fixed_out is not None:
            m_out = torch.tensor(self.fixed_out, device=e.device)
        else:
            m_out = torch.maximum(q[1], m_in + self.min_gap)
        if self.fixed_in is None and self.fixed_out is not None:
            m_in = torch.minimum(m_in, m_out - self.min_gap)
        self.m_in.copy_(m_in)
        self.m_out.copy_(m_out)
        self.frozen.fill_(True)
        return True

    def margins(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(m_in, m_out)`` as 0-d tensors (NaN before :meth:`freeze`)."""
        return self.m_in, self.m_out

    def extra_repr(self) -> str:
        if self.fixed_in is not None and self.fixed_out is not None:
            return f"m_in={self.fixed_in}, m_out={self.fixed_out} (fixed)"
        return (f"derived: q_in={self.q_in}, q_out={self.q_out}, min_gap={self.min_gap}, "
                f"stats={self.stats.numel()}")


# ------------------------------------------------------------------------ the regularizer
@register_regularizer
class EnergyMarginLoss(Regularizer):
    """Energy-margin loss on foreground ROIs vs outliers; returns ``{"loss_energy"}`` (weighted).

    Args:
        loss_weight: beta (Liu et al.: 0.1).
        temperature: T of the free energy.
        m_in, m_out, q_in, q_out, min_gap, stats_size: see :class:`EnergyMargins`.
    """

    name = "energy"
    needs_outliers = True

    def __init__(
        self,
        loss_weight: float = 0.1,
        temperature: float = 1.0,
        m_in: Optional[float] = None,
        m_out: Optional[float] = None,
        q_in: float = 0.5,
        q_out: float = 0.95,
        min_gap: float = 1.0,
        stats_size: int = 4096,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"MODEL.OOD.ENERGY.TEMPERATURE must be > 0, got {temperature}")
        self.loss_weight = float(loss_weight)
        self.temperature = float(temperature)
        self.margins = EnergyMargins(m_in, m_out, q_in, q_out, min_gap, stats_size)

    @classmethod
    def add_config(cls, ood_cfg) -> None:
        if "ENERGY" not in ood_cfg:
            ood_cfg.ENERGY = type(ood_cfg)()
        node = ood_cfg.ENERGY
        node.LOSS_WEIGHT = 0.1  # beta
        node.TEMPERATURE = 1.0
        add_margin_config(node)

    @classmethod
    def from_config(cls, cfg) -> dict:
        node = cfg.MODEL.OOD.ENERGY
        return {"loss_weight": float(node.LOSS_WEIGHT), "temperature": float(node.TEMPERATURE),
                **margin_kwargs(node)}

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
        fg = foreground_mask(labels, logits, head.num_classes, "EnergyMarginLoss")
        e_in = free_energy(head.score_logits(logits[fg]), self.temperature)
        if self.training:
            self.margins.observe(e_in)
        if outliers is None or outliers.shape[0] == 0 or e_in.numel() == 0 or not self.margins.freeze():
            return {"loss_energy": zero_loss(logits, device=logits.device)}
        e_out = free_energy(head.score_logits(head(outliers)), self.temperature)
        m_in, m_out = self.margins.margins()
        loss = energy_margin_loss(e_in, e_out, m_in, m_out)
        return {"loss_energy": self.loss_weight * loss}

    def extra_repr(self) -> str:
        return f"loss_weight={self.loss_weight}, temperature={self.temperature}"
