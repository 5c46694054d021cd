"""VOS: Virtual Outlier Synthesis (Du et al., "VOS: Learning What You Don't Know by Virtual
Outlier Synthesis", ICLR 2022).

Two parts:

* :class:`VirtualOutlierSynthesizer` — the outlier source. It queues ``QUEUE_SIZE`` foreground
  ROI features per class, fits class-conditional Gaussians ``N(mu_k, Sigma)`` with one shared
  covariance (``Sigma = X^T X / (K Q) + COV_EPS * I``, X the class-centred queue), draws
  ``NUM_SAMPLES`` per class and keeps the ``NUM_SELECT`` of lowest likelihood (VOS Sec. 3.1,
  Eq. 1–3; defaults 1000 / 10,000 / 1 / 1e-4 from the paper).
* :class:`VOSLoss` (``vos``) — the uncertainty loss (VOS Eq. 5–6): the *weighted* negative energy
  ``phi(x) = log sum_k relu(w_k) exp(f_k(x))`` of real foreground ROIs (label 1) and virtual
  outliers (label 0) goes through a logistic layer, binary cross-entropy, weight 0.1.

Efficient sampling (ours; the distribution is exactly the paper's). With ``Sigma = L L^T``
(one Cholesky per step), a draw is ``x = mu_k + L z``, ``z ~ N(0, I_D)``, and its log-likelihood
under its class Gaussian is ``-||z||^2 / 2 + const`` with the same constant for every candidate.
"Lowest likelihood" is therefore "largest ``||z||``", and only the kept candidates need ``L z``.
Two samplers, selected by ``MODEL.OOD.VOS.SAMPLER``:

* ``"exact"``: draws the full ``z`` ``[NUM_SAMPLES, D]`` for each class (class by class, to bound
  memory), keeps the largest norms; ``O(K * NUM_SAMPLES * D)`` random numbers.
* ``"radial"`` (default): for an isotropic Gaussian the norm and the direction of ``z`` are
  independent and the selection depends on the norm only, so the kept candidates are distributed
  as (top-``NUM_SELECT`` of ``NUM_SAMPLES`` draws of ``||z||^2 ~ chi^2_D``) x (independent uniform
  directions). It draws ``NUM_SAMPLES`` chi-square radii per class and one direction per kept
  sample: ``O(K * NUM_SAMPLES)`` work, the same distribution as ``"exact"`` (the tests check
  ``"exact"`` against scipy's multivariate normal on the same draws, and both samplers against the
  order-statistic law ``P(max ||z||^2 <= r) = F_chi2_D(r)^NUM_SAMPLES``).

The covariance is not re-estimated from the whole queue at every step (``K Q D^2`` = 21 GFLOP at
K = 20, Q = 1000, D = 1024): :meth:`VirtualOutlierSynthesizer.update` keeps float64 running sums
(per-class ``sum x`` and the Gram matrix ``sum x x^T``), adding the enqueued and subtracting the
evicted rows (``O(n D^2)`` for n new rows), and the covariance is read off them.

Queue state (``queue [K, Q, D]``, ``ptr [K]``, ``count [K]``, the running sums) lives in registered
buffers, so it is saved in checkpoints and survives resume (about K * Q * D * 4 bytes + 8 D^2:
90 MB for 20 x 1000 x 1024). Do not cast the module to half precision (``.half()``): the sums
need float64.
"""
from __future__ import annotations

import warnings

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_regularizer
from ._utils import foreground_mask, zero_loss
from .base import Regularizer

SAMPLERS = ("radial", "exact")


def _vos_node(ood_cfg):
    if "VOS" not in ood_cfg:
        ood_cfg.VOS = type(ood_cfg)()
    return ood_cfg.VOS


# ------------------------------------------------------------------------ outlier source
class VirtualOutlierSynthesizer(nn.Module):
    """Per-class feature queues and class-conditional Gaussian outlier sampling (VOS).

    Args:
        in_features: D.
        num_classes: K (known classes; background is never queued).
        queue_size: Q, features kept per class.
        num_samples: draws per class from its Gaussian.
        num_select: lowest-likelihood draws kept per class.
        start_iter: :meth:`sample` returns None before this iteration.
        cov_eps: ridge added to the shared covariance.
        sampler: ``"radial"`` or ``"exact"`` (see the module docstring).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        queue_size: int = 1000,
        num_samples: int = 10000,
        num_select: int = 1,
        start_iter: int = 12000,
        cov_eps: float = 1e-4,
        sampler: str = "radial",
    ):
        super().__init__()
        for key, val in (("in_features", in_features), ("num_classes", num_classes),
                         ("QUEUE_SIZE", queue_size), ("NUM_SAMPLES", num_samples),
                         ("NUM_SELECT", num_select)):
            if int(val) <= 0:
                raise ValueError(f"VirtualOutlierSynthesizer: {key} must be > 0, got {val}")
        if num_select > num_samples:
            raise ValueError(
                f"MODEL.OOD.VOS.NUM_SELECT={num_select} exceeds MODEL.OOD.VOS.NUM_SAMPLES={num_samples}"
            )
        if sampler not in SAMPLERS:
            raise ValueError(f"MODEL.OOD.VOS.SAMPLER={sampler!r}: expected one of {SAMPLERS}")
        if cov_eps < 0:
            raise ValueError(f"MODEL.OOD.VOS.COV_EPS must be >= 0, got {cov_eps}")
        self.in_features = int(in_features)
        self.num_classes = int(num_classes)
        self.queue_size = int(queue_size)
        self.num_samples = int(num_samples)
        self.num_select = int(num_select)
        self.start_iter = int(start_iter)
        self.cov_eps = float(cov_eps)
        self.sampler = sampler
        self.register_buffer("queue", torch.zeros(self.num_classes, self.queue_size, self.in_features))
        self.register_buffer("ptr", torch.zeros(self.num_classes, dtype=torch.long))
        self.register_buffer("count", torch.zeros(self.num_classes, dtype=torch.long))
        # running sufficient statistics of the queue contents, float64 so that the add/subtract
        # updates do not drift: per-class sums [K, D] and the Gram matrix sum x x^T [D, D]
        self.register_buffer("sum_x", torch.zeros(self.num_classes, self.in_features, dtype=torch.float64))
        self.register_buffer("sum_xxt", torch.zeros(self.in_features, self.in_features, dtype=torch.float64))

    # ------------------------------------------------------------------ config
    @classmethod
    def add_config(cls, ood_cfg) -> None:
        node = _vos_node(ood_cfg)
        node.QUEUE_SIZE = 1000
        node.NUM_SAMPLES = 10000
        node.NUM_SELECT = 1  # use e.g. 8 with GReg+ sampling (greg.py): K*8 candidates
        node.START_ITER = 12000
        node.COV_EPS = 1e-4
        node.SAMPLER = "radial"  # radial | exact (same distribution; radial is O(K*NUM_SAMPLES))

    @classmethod
    def from_config(cls, cfg, in_features: int) -> dict:
        node = cfg.MODEL.OOD.VOS
        return {
            "in_features": int(in_features),
            "num_classes": int(cfg.MODEL.ROI_HEADS.NUM_CLASSES),
            "queue_size": int(node.QUEUE_SIZE),
            "num_samples": int(node.NUM_SAMPLES),
            "num_select": int(node.NUM_SELECT),
            "start_iter": int(node.START_ITER),
            "cov_eps": float(node.COV_EPS),
            "sampler": str(node.SAMPLER),
        }

    # ------------------------------------------------------------------- queue
    @property
    def is_full(self) -> bool:
        """True when every class queue holds ``queue_size`` features."""
        return bool((self.count >= self.queue_size).all())

    @torch.no_grad()
    def update(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Push foreground features into their class queues (FIFO; oldest overwritten).

        Args:
            features: ``[N, D]``; labels: ``[N]`` in ``0 .. K-1``. Rows of one class are
                enqueued in their order, as if pushed one by one.
        """
        if features.dim() != 2 or features.shape[1] != self.in_features:
            raise ValueError(
                f"VirtualOutlierSynthesizer.update: expected features [N, {self.in_features}], "
                f"got {tuple(features.shape)}"
            )
        if labels.shape != features.shape[:1]:
            raise ValueError(
                f"VirtualOutlierSynthesizer.update: labels {tuple(labels.shape)} do not match "
                f"features {tuple(features.shape)}"
            )
        n = labels.numel()
        if n == 0:
            return
        labels = labels.to(device=self.queue.device, dtype=torch.long)
        if bool(((labels < 0) | (labels >= self.num_classes)).any()):
            bad = labels[(labels < 0) | (labels >= self.num_classes)][:5].tolist()
            raise ValueError(
                f"VirtualOutlierSynthesizer.update: labels must be foreground classes "
                f"0..{self.num_classes - 1}, got e.g. {bad}"
            )
        q = self.queue_size
        order = torch.argsort(labels, stable=True)
        lab = labels[order]
        feats = features.detach()[order.to(features.device)].to(self.queue)
        new = torch.bincount(lab, minlength=self.num_classes)  # [K]
        start = torch.cumsum(new, 0) - new
        rank = torch.arange(n, device=lab.device) - start[lab]  # position within its class
        keep = rank >= new[lab] - q  # only the last Q of a class survive this push
        pos = (self.ptr[lab] + rank) % q
        rows, slots, incoming = lab[keep], pos[keep], feats[keep]
        outgoing = self.queue[rows, slots]  # zeros for never-filled slots: no contribution
        self._accumulate(rows, incoming, outgoing)
        self.queue[rows, slots] = incoming
        self.ptr.copy_((self.ptr + new) % q)
        self.count.copy_(torch.clamp(self.count + new, max=q))

    def _accumulate(self, rows: torch.Tensor, incoming: torch.Tensor, outgoing: torch.Tensor) -> None:
        """Add ``incoming`` ``[n, D]`` and remove ``outgoing`` ``[n, D]`` (class ``rows``) from the
        running sums: ``O(n D^2)`` per step instead of ``O(K Q D^2)`` for a fresh covariance."""
        # float64 increments: float32 ones accumulate rounding drift over thousands of updates
        a = torch.cat([incoming, outgoing]).double()
        b = torch.cat([incoming, -outgoing]).double()
        self.sum_xxt += a.t() @ b
        self.sum_x.index_add_(0, rows, (incoming.double() - outgoing.double()))

    @torch.no_grad()
    def recompute_statistics(self) -> None:
        """Recompute the running sums exactly from the queue (e.g. after editing ``queue``)."""
        filled = torch.arange(self.queue_size, device=self.queue.device)[None] < self.count[:, None]
        x = self.queue.double() * filled[..., None]  # [K, Q, D]; unfilled slots count as 0
        self.sum_x.copy_(x.sum(1))
        flat = x.reshape(-1, self.in_features)
        self.sum_xxt.copy_(flat.t() @ flat)

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def gaussians(self):
        """Class means ``[K, D]`` and the lower Cholesky factor ``[D, D]`` of the shared covariance.

        ``Sigma = (sum_x x x^T - sum_k n_k mu_k mu_k^T) / sum_k n_k + cov_eps * I``: the biased
        estimate on class-centred features (as the authors' ``X^T X / len(X)``), read from the
        float64 running sums kept by :meth:`update`, factored in float64.
        """
        n = self.count.to(torch.float64).clamp_min(1)[:, None]  # [K, 1]
        means = self.sum_x / n
        cov = (self.sum_xxt - (means * n).t() @ means) / n.sum()
        cov.diagonal().add_(self.cov_eps)
        # (the Cholesky factorisation reads the lower triangle only: no symmetrisation needed)
        chol, info = torch.linalg.cholesky_ex(cov)
        # A rank-deficient queue (few features per class, early in training) or drift of the
        # running sums can make the estimate indefinite: add jitter (10x COV_EPS per try, up to
        # 1e5x) rather than stopping a long training run; warn once with the jitter used.
        jitter = 0.0
        for power in range(1, 6):
            if int(info) == 0:
                break
            step = self.cov_eps * 10**power
            cov.diagonal().add_(step - jitter)
            jitter = step
            chol, info = torch.linalg.cholesky_ex(cov)
        if jitter and int(info) == 0 and not getattr(self, "_warned_jitter", False):
            self._warned_jitter = True
            warnings.warn(
                f"VirtualOutlierSynthesizer: shared covariance not positive definite with "
                f"COV_EPS={self.cov_eps}; added {jitter:g} to its diagonal"
            )
        if int(info) != 0:
            raise RuntimeError(
                "VirtualOutlierSynthesizer: the shared feature covariance is not positive definite "
                f"(Cholesky failed at column {int(info)}); raise MODEL.OOD.VOS.COV_EPS "
                f"(now {self.cov_eps})"
            )
        dtype = self.queue.dtype
        return means.to(dtype), chol.to(dtype)

    def _select_z(self) -> torch.Tensor:
        """``[K, NUM_SELECT, D]`` standard-normal draws of largest norm among NUM_SAMPLES per class."""
        k, s, d, m = self.num_classes, self.num_samples, self.in_features, self.num_select
        device = self.queue.device
        if self.sampler == "exact":
            out = []
            for _ in range(k):
                z = torch.randn(s, d, device=device)
                top = z.pow(2).sum(1).topk(m).indices
                out.append(z[top])
            return torch.stack(out)
        # radial: ||z||^2 ~ chi2_D = Gamma(D/2, rate 1/2); top-m radii x uniform directions
        chi2 = torch.distributions.Chi2(torch.tensor(float(d), device=device))
        r2 = chi2.sample((k, s))  # [K, S]
        top_r2 = r2.topk(m, dim=1).values  # [K, m]
        u = F.normalize(torch.randn(k, m, d, device=device), dim=2)
        return u * top_r2.sqrt()[..., None]

    @torch.no_grad()
    def sample(self, iteration: int) -> Optional[torch.Tensor]:
        """Virtual outliers ``[K * NUM_SELECT, D]`` (class-major), or None before ``start_iter``
        or while any class queue is not full. Uses the global torch RNG of the buffers' device."""
        if iteration < self.start_iter or not self.is_full:
            return None
        means, chol = self.gaussians()
        z = self._select_z()  # [K, m, D]
        x = means[:, None, :] + z @ chol.t()
        return x.reshape(-1, self.in_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, num_classes={self.num_classes}, "
                f"queue_size={self.queue_size}, num_samples={self.num_samples}, "
                f"num_select={self.num_select}, start_iter={self.start_iter}, sampler={self.sampler}")


# ---------------------------------------------------------------------- uncertainty loss
def weighted_neg_energy(fg_logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """VOS's weighted negative energy ``log sum_k relu(w_k) exp(f_k)`` (VOS Eq. 5).

    Args:
        fg_logits: ``[N, K]``; weights: ``[K]`` learnable class weights.

    Returns:
        ``[N]`` float32. ``relu(w)`` is floored at 1e-12 so that the log stays finite.
    """
    logw = torch.log(F.relu(weights.float()).clamp_min(1e-12))
    return torch.logsumexp(fg_logits.float() + logw, dim=1)


@register_regularizer
class VOSLoss(Regularizer):
    """VOS uncertainty loss; returns ``{"loss_vos"}`` (weighted).

    ``loss = LOSS_WEIGHT * BCE(sigmoid(a * phi + b), y)`` over the foreground ROIs (y = 1) and
    the outliers (y = 0), ``phi`` = :func:`weighted_neg_energy` of ``head.score_logits``. The
    authors use a ``Linear(1, 2)`` + softmax cross-entropy, which is the same model as our
    ``Linear(1, 1)`` + sigmoid (a two-way softmax only depends on the logit difference).

    Args:
        num_classes: K.
        loss_weight: the paper's 0.1.
    """

    name = "vos"
    needs_outliers = True

    def __init__(self, num_classes: int, loss_weight: float = 0.1):
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"VOSLoss: num_classes must be > 0, got {num_classes}")
        self.num_classes = int(num_classes)
        self.loss_weight = float(loss_weight)
        # the authors initialise the class weights uniformly in [0, 1)
        self.energy_weight = nn.Parameter(torch.rand(self.num_classes))
        self.logistic = nn.Linear(1, 1)

    @classmethod
    def add_config(cls, ood_cfg) -> None:
        _vos_node(ood_cfg).LOSS_WEIGHT = 0.1

    @classmethod
    def from_config(cls, cfg) -> dict:
        return {"num_classes": int(cfg.MODEL.ROI_HEADS.NUM_CLASSES),
                "loss_weight": float(cfg.MODEL.OOD.VOS.LOSS_WEIGHT)}

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
        if head.num_classes != self.num_classes:
            raise ValueError(f"VOSLoss built for {self.num_classes} classes, head has {head.num_classes}")
        fg = foreground_mask(labels, logits, self.num_classes, "VOSLoss")
        n_in = int(fg.sum())
        if outliers is None or outliers.shape[0] == 0 or n_in == 0:
            return {"loss_vos": zero_loss(logits, self, device=logits.device)}
        phi_in = weighted_neg_energy(head.score_logits(logits[fg]), self.energy_weight)
        phi_out = weighted_neg_energy(head.score_logits(head(outliers)), self.energy_weight)
        phi = torch.cat([phi_in, phi_out])
        target = torch.cat([torch.ones_like(phi_in), torch.zeros_like(phi_out)])
        out = self.logistic(phi[:, None]).squeeze(1)
        loss = F.binary_cross_entropy_with_logits(out, target)
        return {"loss_vos": self.loss_weight * loss}

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, loss_weight={self.loss_weight}"
