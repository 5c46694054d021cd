"""Numerics shared by the distance heads: float32 distances with safe gradients, empty-batch losses.

Not a method: only the pieces every distance-based head (IsoMax, IsoMax+, DisMax, CFL) needs, so
that each head's file holds its own equations and nothing else.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

#: squared-distance floor: below it the square root's gradient is cut (no inf/NaN at d = 0)
_D2_FLOOR = 1e-12
#: norm floor of the L2 normalisation (as ``F.normalize``'s default ``eps``)
_NORM_EPS = 1e-12


def no_autocast(device: torch.device):
    """A context that turns autocast off on ``device`` if it is on (distances need float32)."""
    try:
        enabled = torch.is_autocast_enabled(device.type)
    except (TypeError, RuntimeError):  # older torch / device types without autocast
        enabled = torch.is_autocast_enabled()
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


def check_features(features: torch.Tensor, in_features: int, who: str) -> None:
    if features.dim() != 2 or features.shape[1] != in_features:
        raise ValueError(
            f"{who}: expected features of shape [R, {in_features}], got {tuple(features.shape)}"
        )


class _SquaredDistances(torch.autograd.Function):
    """``d2[r, p] = ||x_r||² + ||y_p||² - 2 x_r·y_p`` with a hand-written backward.

    Backward: ``dx = 2 (rowsum(G) x - G y)``, ``dy = 2 (colsum(G) y - Gᵀ x)`` -- one matrix
    product and one fused multiply-add per input, where autograd through ``cdist`` or the
    expanded formula makes several extra passes over ``[R, D]``.
    """

    @staticmethod
    def forward(ctx, x, y):
        xx = x.square().sum(dim=1)
        yy = y.square().sum(dim=1)
        d2 = torch.addmm(xx[:, None] + yy[None, :], x, y.t(), alpha=-2.0)
        ctx.save_for_backward(x, y)
        return d2

    @staticmethod
    def backward(ctx, g):
        x, y = ctx.saved_tensors
        gx = gy = None
        if ctx.needs_input_grad[0]:
            gx = (g @ y).mul_(-2.0).addcmul_(x, g.sum(dim=1, keepdim=True), value=2.0)
        if ctx.needs_input_grad[1]:
            gy = (g.t() @ x).mul_(-2.0).addcmul_(y, g.sum(dim=0)[:, None], value=2.0)
        return gx, gy


class _NormalizedSquaredDistances(torch.autograd.Function):
    """``d2[r, p] = ||x̂_r - ŷ_p||²`` for ``x̂ = x / max(||x||, eps)`` (``F.normalize``'s rule).

    Forward: ``||x̂||² + ||ŷ||² - 2 (x·ŷ) / max(||x||, eps)`` from one matrix product, without
    materialising ``x̂``. Backward (``G = dL/dd2``, ``s = x̂ ŷᵀ``): the norm terms are constant
    (exactly 1, or ~0 for an all-zero row), and through ``s``
    ``dx_r = -2 [ (G ŷ)_r / dx_r - x_r · (Σ_p G_rp s_rp) / (dx_r ||x_r||) ]`` (the last term only
    where ``||x_r|| > eps``), likewise for ``y``. Zero rows get a finite gradient.
    """

    @staticmethod
    def forward(ctx, x, y):
        nx = torch.linalg.vector_norm(x, dim=1)
        ny = torch.linalg.vector_norm(y, dim=1)
        dx = nx.clamp_min(_NORM_EPS)
        dy = ny.clamp_min(_NORM_EPS)
        yh = y / dy[:, None]
        s = (x @ yh.t()).div_(dx[:, None])
        d2 = ((nx / dx).square()[:, None] + (ny / dy).square()[None, :]).sub_(s, alpha=2.0)
        ctx.save_for_backward(x, yh, nx, dx, ny, dy, s)
        return d2

    @staticmethod
    def backward(ctx, g):
        x, yh, nx, dx, ny, dy, s = ctx.saved_tensors
        gs = g * -2.0  # dL/ds
        gss = gs * s
        gx = gy = None
        g_over_dx = gs / dx[:, None]
        if ctx.needs_input_grad[0]:
            cx = torch.where(nx > _NORM_EPS, gss.sum(dim=1) / (dx * nx.clamp_min(_NORM_EPS)), 0.0)
            gx = (g_over_dx @ yh).addcmul_(x, cx[:, None], value=-1.0)
        if ctx.needs_input_grad[1]:
            cy = torch.where(ny > _NORM_EPS, gss.sum(dim=0) / (dy * ny.clamp_min(_NORM_EPS)), 0.0)
            gy = (g_over_dx.t() @ x).div_(dy[:, None]).addcmul_(yh * dy[:, None], cy[:, None], value=-1.0)
        return gx, gy


def _safe_sqrt(d2: torch.Tensor) -> torch.Tensor:
    # floored square root: below the floor the gradient is cut to 0 (no inf / NaN at d = 0)
    return d2.clamp_min(_D2_FLOOR).sqrt()


def euclidean_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[R, D]``, ``[P, D]`` -> ``[R, P]`` Euclidean distances ``||x_r - y_p||_2`` in float32.

    Matrix-product form (as ``torch.cdist`` uses for large R) with a hand-written backward;
    about 2x faster forward+backward than ``cdist`` at R=512, D=1024, P=21 on one CPU thread, and
    cross-checked against ``cdist`` and ``gradcheck`` in the tests. The square root's gradient is
    cut below a 1e-12 squared distance: an all-zero ReLU feature at IsoMax's zero-initialised
    prototypes gives 0, not NaN. Precision: the expanded form loses ~1e-7·||x||² absolute in d².
    """
    with no_autocast(x.device):
        return _safe_sqrt(_SquaredDistances.apply(x.float(), y.float()))


def normalized_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[R, D]``, ``[P, D]`` -> ``[R, P]`` distances ``||x̂_r - ŷ_p||_2`` of L2-normalised rows.

    ``x̂ = x / max(||x||, 1e-12)`` as ``F.normalize``. One matrix product, ``x̂`` never
    materialised, hand-written backward (about 2x faster forward+backward than autograd through
    ``cdist(F.normalize(x), F.normalize(y))`` at R=512, D=1024, P=21 on one CPU thread);
    cross-checked against that reference and ``gradcheck`` in the tests. float32, floored square
    root (no NaN at zero distance).
    """
    with no_autocast(x.device):
        return _safe_sqrt(_NormalizedSquaredDistances.apply(x.float(), y.float()))


def init_prototypes(prototypes: torch.Tensor, std: float, who: str) -> None:
    """Fill ``prototypes`` ``[K + 1, D]`` in place with N(0, std²) (the papers: std = 1).

    Only the direction of a prototype enters a normalised distance, and the gradient of a
    normalised distance with respect to ``p`` scales as ``1 / ||p||``: a prototype of norm ``r``
    turns about ``r²`` times slower under SGD than a unit one. At std = 1 and D = 256 (norm ≈ 16)
    the prototypes of a short detection schedule barely leave their random initial directions;
    std = 1/sqrt(D) starts them at about unit norm.
    """
    if not std > 0:
        raise ValueError(f"{who}: prototype init std must be > 0, got {std}")
    with torch.no_grad():
        torch.nn.init.normal_(prototypes, mean=0.0, std=float(std))


def zero_loss(*tensors: torch.Tensor) -> torch.Tensor:
    """A float32 scalar 0 that still backpropagates (zeros) into every tensor given (R = 0 batches)."""
    total = None
    for t in tensors:
        if t is None:
            continue
        s = t.float().sum() * 0.0
        total = s if total is None else total + s
    if total is None:
        raise ValueError("zero_loss needs at least one tensor")
    return total


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in float32; a differentiable 0 (not NaN) for an empty batch."""
    if logits.shape[0] == 0:
        return zero_loss(logits)
    return F.cross_entropy(logits.float(), labels.long())


def check_labels(logits: torch.Tensor, labels: torch.Tensor, num_classes: int, who: str) -> None:
    """Shape checks only (a value check would synchronise the device every step; out-of-range
    labels are caught by ``F.cross_entropy``)."""
    if logits.dim() != 2 or logits.shape[1] != num_classes + 1:
        raise ValueError(
            f"{who}: expected logits of shape [R, {num_classes + 1}], got {tuple(logits.shape)}"
        )
    if labels.dim() != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"{who}: labels must be [R] with R = {logits.shape[0]}, got {tuple(labels.shape)}"
        )
