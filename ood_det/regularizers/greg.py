"""GReg / GReg+ (Sharifi et al., "Gradient-Regularized Out-of-Distribution Detection", ECCV 2024;
authors' code: o4lc/Greg-OOD), adapted to detection.

Loss (as in the authors' training script):

* ``g = - mean_ID relu(m_in - E_in) + mean_OOD relu(E_out - m_out)`` with E the free energy
  ``-logsumexp`` of the K foreground logits (:func:`ood_det.regularizers.energy.free_energy`).
  g is non-zero only for samples already beyond their margin (ID below m_in, outliers above
  m_out): the regularizer asks the energy to be *flat* where the margin loss no longer acts.
* ``L_grad = mean over samples (ID and OOD together) of || dg / dx_i ||_2``, computed with double
  backprop (``torch.autograd.grad(..., create_graph=True)``). Because g averages over each group,
  a sample's gradient carries the factor 1 / N_ID or 1 / N_OOD, exactly as in the authors' code.
* ``L = GRAD_WEIGHT * L_grad + ENERGY_WEIGHT * L_energy-margin`` (the energy-margin term of
  Liu et al., reused from :func:`~ood_det.regularizers.energy.energy_margin_loss`); the authors'
  CIFAR runs use 1 and 0.1. The classification loss is the head's own.

Adaptation to detection (ours): the paper differentiates with respect to the input *image*; here
x is the ROI feature vector ``[D]`` that enters the box classifier (the box head's output), so
the penalty smooths the energy landscape of the head in feature space, and its gradient reaches
the box head through the features. ID samples are the foreground ROIs (background proposals are
neither ID objects nor outliers); OOD samples are the outlier features (VOS virtual outliers).
The margins are those of :class:`~ood_det.regularizers.energy.EnergyMargins` under
``MODEL.OOD.GREG`` (fixed, or derived from ID energies and frozen; our reconstruction).

GReg+ sampling (:meth:`GRegLoss.select_outliers`): k-means (``NUM_CLUSTERS``, the authors use
32–64) on the L2-normalised candidate features, then per cluster keep the candidate with the
**lowest energy** (the one that looks most in-distribution: the hardest outlier); with
``TWO_WAY`` also the highest-energy one (the authors' ``--sampleTwoWay``). k-means is a small
torch implementation (:func:`kmeans`: k-means++ seeding + Lloyd iterations, best of ``N_INIT``),
cross-checked against scikit-learn's ``KMeans`` in the tests; it runs on the features' device and
was measured faster than scikit-learn (see benchmarks/README.md).

Recommended setting: the VOS synthesizer produces ``K * NUM_SELECT`` candidates, which must be
(well) above ``NUM_CLUSTERS`` for the sampling to choose anything; with K = 20 and 32 clusters use
``MODEL.OOD.VOS.NUM_SELECT = 8`` (160 candidates -> 32 outliers). With fewer candidates than
clusters the batch is passed through unchanged.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_regularizer
from ._utils import foreground_mask, zero_loss
from .base import Regularizer
from .energy import EnergyMargins, add_margin_config, energy_margin_loss, free_energy, margin_kwargs


# ----------------------------------------------------------------------------- k-means
def _sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances, clamped at 0: ``[N, D], [k, D] -> [N, k]``, or batched
    ``[N, D], [B, k, D] -> [B, N, k]``."""
    cross = x @ c.transpose(-1, -2)
    return (x.pow(2).sum(1, keepdim=True) - 2.0 * cross + c.pow(2).sum(-1).unsqueeze(-2)).clamp_min_(0)


def kmeans_plusplus(
    x: torch.Tensor,
    k: int,
    generator: Optional[torch.Generator] = None,
    pairwise: Optional[torch.Tensor] = None,
    batch: Optional[int] = None,
) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii, 2007): ``[N, D]`` -> ``[k, D]`` initial centres.

    Each new centre is drawn with probability proportional to the squared distance to the nearest
    centre chosen so far. ``batch``: draw that many independent seedings at once, ``[batch, k, D]``.
    ``pairwise``: optional precomputed ``[N, N]`` squared distances (then each step is a row
    lookup). Runs on ``x``'s device (a ``generator`` must live there too).
    """
    n = x.shape[0]
    b = 1 if batch is None else int(batch)

    def rows(i):  # [b] indices -> [b, N] squared distances to those points
        return pairwise[i] if pairwise is not None else _sq_dists(x, x[i]).t()

    idx = torch.randint(n, (b,), generator=generator, device=x.device)
    chosen = [idx]
    d2 = rows(idx)
    for _ in range(1, k):
        # a row whose points are all chosen already (fewer distinct points than k): uniform
        empty = d2.sum(1, keepdim=True) <= 0
        weights = torch.where(empty, torch.ones_like(d2), d2).double()
        idx = torch.multinomial(weights, 1, generator=generator).squeeze(1)
        chosen.append(idx)
        d2 = torch.minimum(d2, rows(idx))
    centers = x[torch.stack(chosen, 1)]  # [b, k, D]
    return centers[0] if batch is None else centers


def lloyd(x: torch.Tensor, centers: torch.Tensor, max_iter: int = 100) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Lloyd iterations from ``centers`` until no assignment changes (or ``max_iter``).

    ``centers`` is ``[k, D]``, or ``[B, k, D]`` for B independent runs done together. An empty
    cluster keeps its previous centre. Returns ``(labels [N], centers [k, D], inertia)`` (with a
    leading B dimension when batched), inertia = sum of squared distances to the assigned centre.
    """
    single = centers.dim() == 2
    c = centers[None] if single else centers
    b, k, _ = c.shape
    offset = (torch.arange(b, device=x.device) * k)[:, None]  # flat cluster ids per run
    labels = None
    for _ in range(max_iter):
        new_labels = _sq_dists(x, c).argmin(2)  # [B, N]
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
        flat = (labels + offset).reshape(-1)
        sums = torch.zeros(b * k, x.shape[1], dtype=x.dtype, device=x.device)
        sums.index_add_(0, flat, x.repeat(b, 1))
        counts = torch.bincount(flat, minlength=b * k).to(x.dtype)[:, None]
        c = torch.where(counts > 0, sums / counts.clamp_min(1), c.reshape(b * k, -1)).reshape(b, k, -1)
    d2 = _sq_dists(x, c)
    labels = d2.argmin(2)
    inertia = d2.gather(2, labels[..., None]).squeeze(2).sum(1)
    if single:
        return labels[0], c[0], inertia[0]
    return labels, c, inertia


def kmeans(
    x: torch.Tensor,
    k: int,
    n_init: int = 3,
    max_iter: int = 100,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """k-means on ``[N, D]`` points: the best (lowest inertia) of ``n_init`` k-means++ + Lloyd
    runs, all ``n_init`` runs computed together (batched).

    Returns ``(labels [N] in 0..k-1, centers [k, D])``. Runs on ``x``'s device.
    """
    if x.dim() != 2:
        raise ValueError(f"kmeans expects [N, D] points, got shape {tuple(x.shape)}")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"kmeans: need 1 <= k <= N, got k={k}, N={x.shape[0]}")
    # the seeding's distance rows come from one matrix product when N x N is small
    pairwise = _sq_dists(x, x) if x.shape[0] <= 4096 else None
    init = kmeans_plusplus(x, k, generator, pairwise, batch=max(1, int(n_init)))
    labels, centers, inertia = lloyd(x, init, max_iter)
    best = int(inertia.argmin())
    return labels[best], centers[best]


def lowest_per_cluster(values: torch.Tensor, labels: torch.Tensor, highest: bool = False) -> torch.Tensor:
    """Index of the lowest (or highest) ``values`` entry in each non-empty cluster.

    Args:
        values: ``[N]``; labels: ``[N]`` cluster ids.

    Returns:
        ``[C]`` indices into ``values``, one per non-empty cluster, in cluster order.
    """
    order = torch.argsort(values, descending=highest, stable=True)
    sorted_labels = labels[order]
    k = int(labels.max()) + 1 if labels.numel() else 0
    pos = torch.arange(order.numel(), device=values.device)
    first = torch.full((k,), order.numel(), dtype=torch.long, device=values.device)
    first = first.scatter_reduce(0, sorted_labels, pos, reduce="amin")
    first = first[first < order.numel()]
    return order[first]


# --------------------------------------------------------------------------- regularizer
@register_regularizer
class GRegLoss(Regularizer):
    """GReg gradient regularization + energy-margin term; optional GReg+ outlier sampling.

    Returns ``{"loss_greg_grad", "loss_greg_energy"}`` (weighted).

    Args:
        grad_weight: lambda_grad (authors: 1).
        energy_weight: lambda_S, weight of the energy-margin term (authors: 0.1). Set 0 when the
            ``energy`` regularizer is also on, to avoid counting that term twice.
        temperature: T of the free energy.
        sampling: GReg+ energy-based k-means sampling of the outliers.
        num_clusters, n_init, max_iter: k-means settings.
        two_way: also keep the highest-energy candidate of each cluster.
        m_in, m_out, q_in, q_out, min_gap, stats_size: see
            :class:`~ood_det.regularizers.energy.EnergyMargins`.
    """

    name = "greg"
    needs_outliers = True

    def __init__(
        self,
        grad_weight: float = 1.0,
        energy_weight: float = 0.1,
        temperature: float = 1.0,
        sampling: bool = True,
        num_clusters: int = 32,
        n_init: int = 3,
        max_iter: int = 100,
        two_way: bool = False,
        m_in: Optional[float] = None,
        m_out: Optional[float] = None,
        q_in: float = 0.5,
        q_out: float = 0.95,
        min_gap: float = 1.0,
        stats_size: int = 4096,
    ):
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"MODEL.OOD.GREG.TEMPERATURE must be > 0, got {temperature}")
        if num_clusters < 1:
            raise ValueError(f"MODEL.OOD.GREG.NUM_CLUSTERS must be >= 1, got {num_clusters}")
        self.grad_weight = float(grad_weight)
        self.energy_weight = float(energy_weight)
        self.temperature = float(temperature)
        self.sampling = bool(sampling)
        self.num_clusters = int(num_clusters)
        self.n_init = int(n_init)
        self.max_iter = int(max_iter)
        self.two_way = bool(two_way)
        self.margins = EnergyMargins(m_in, m_out, q_in, q_out, min_gap, stats_size)

    @classmethod
    def add_config(cls, ood_cfg) -> None:
        if "GREG" not in ood_cfg:
            ood_cfg.GREG = type(ood_cfg)()
        node = ood_cfg.GREG
        node.GRAD_WEIGHT = 1.0  # lambda_grad
        node.ENERGY_WEIGHT = 0.1  # lambda_S (set 0 if the 'energy' regularizer is also used)
        node.TEMPERATURE = 1.0
        node.SAMPLING = True  # GReg+ k-means energy-based outlier sampling
        node.NUM_CLUSTERS = 32
        node.KMEANS_N_INIT = 3
        node.KMEANS_MAX_ITER = 100
        node.TWO_WAY = False
        add_margin_config(node)

    @classmethod
    def from_config(cls, cfg) -> dict:
        node = cfg.MODEL.OOD.GREG
        return {
            "grad_weight": float(node.GRAD_WEIGHT),
            "energy_weight": float(node.ENERGY_WEIGHT),
            "temperature": float(node.TEMPERATURE),
            "sampling": bool(node.SAMPLING),
            "num_clusters": int(node.NUM_CLUSTERS),
            "n_init": int(node.KMEANS_N_INIT),
            "max_iter": int(node.KMEANS_MAX_ITER),
            "two_way": bool(node.TWO_WAY),
            **margin_kwargs(node),
        }

    # ------------------------------------------------------------------ GReg+ sampling
    @torch.no_grad()
    def select_outliers(self, head: nn.Module, outliers: torch.Tensor) -> torch.Tensor:
        """``[N, D]`` candidates -> ``[C, D]``, C <= NUM_CLUSTERS (x2 with TWO_WAY).

        Unchanged when sampling is off or N <= NUM_CLUSTERS.
        """
        if not self.sampling or outliers is None or outliers.shape[0] <= self.num_clusters:
            return outliers
        energy = free_energy(head.score_logits(head(outliers)), self.temperature)
        points = F.normalize(outliers.detach().float(), dim=1)
        labels, _ = kmeans(points, self.num_clusters, self.n_init, self.max_iter)
        idx = lowest_per_cluster(energy, labels)
        if self.two_way:
            idx = torch.unique(torch.cat([idx, lowest_per_cluster(energy, labels, highest=True)]))
        return outliers[idx]

    # ------------------------------------------------------------------------- loss
    def forward(
        self,
        head: nn.Module,
        features: torch.Tensor,
        logits: torch.Tensor,
        labels: torch.Tensor,
        outliers: Optional[torch.Tensor],
        iteration: int,
    ) -> Dict[str, torch.Tensor]:
        """Args/shapes: see :class:`ood_det.regularizers.base.Regularizer`.

        The foreground rows go through the head again (``head(features[fg])``) so that the
        gradient with respect to them exists even when ``features`` does not require grad; when
        it does, the double-backprop term also reaches the box head through ``features``.
        """
        fg = foreground_mask(labels, logits, head.num_classes, "GRegLoss")
        if self.training:
            with torch.no_grad():
                self.margins.observe(free_energy(head.score_logits(logits[fg]), self.temperature))
        n_in = int(fg.sum())
        if outliers is None or outliers.shape[0] == 0 or n_in == 0 or not self.margins.freeze():
            zero = zero_loss(logits, device=logits.device)
            return {"loss_greg_grad": zero, "loss_greg_energy": zero.clone()}

        x_in = features[fg]
        if not x_in.requires_grad:
            x_in = x_in.detach().requires_grad_(True)
        x_out = outliers.detach().to(dtype=features.dtype).requires_grad_(True)
        e_in = free_energy(head.score_logits(head(x_in)), self.temperature)
        e_out = free_energy(head.score_logits(head(x_out)), self.temperature)
        m_in, m_out = self.margins.margins()

        g = -F.relu(m_in - e_in).mean() + F.relu(e_out - m_out).mean()
        grad_in, grad_out = torch.autograd.grad(g, (x_in, x_out), create_graph=True)
        norms = torch.cat([grad_in.flatten(1).norm(dim=1), grad_out.flatten(1).norm(dim=1)])
        loss_grad = norms.mean()
        loss_energy = energy_margin_loss(e_in, e_out, m_in, m_out)
        return {
            "loss_greg_grad": self.grad_weight * loss_grad,
            "loss_greg_energy": self.energy_weight * loss_energy,
        }

    def extra_repr(self) -> str:
        return (f"grad_weight={self.grad_weight}, energy_weight={self.energy_weight}, "
                f"sampling={self.sampling}, num_clusters={self.num_clusters}")
