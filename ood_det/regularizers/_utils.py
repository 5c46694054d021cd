"""Small helpers shared by the regularizers (no method math lives here)."""
from __future__ import annotations

from typing import Iterable

import torch


def zero_loss(*sources, device=None) -> torch.Tensor:
    """A finite scalar ``0.`` still attached to the graph of ``sources``.

    ``sources`` are tensors or modules (whose parameters are used). Returning ``0 * sum(...)``
    instead of a constant keeps every parameter of the step "used", so DistributedDataParallel
    with ``find_unused_parameters=False`` (detectron2's default) does not fail on iterations where
    a regularizer is inactive (warm-up, no foreground, R = 0). The gradients it produces are zero.
    """
    total = None
    for src in sources:
        tensors: Iterable[torch.Tensor]
        if isinstance(src, torch.nn.Module):
            tensors = [p for p in src.parameters() if p.requires_grad]
        elif src is None:
            tensors = []
        else:
            tensors = [src]
        for t in tensors:
            if device is None:
                device = t.device
            if not t.is_floating_point():
                continue
            # nan_to_num: a non-finite input must not turn the zero into NaN
            s = torch.nan_to_num(t.sum(), nan=0.0, posinf=0.0, neginf=0.0).float() * 0.0
            total = s if total is None else total + s
    if total is None:
        return torch.zeros((), device=device)
    return total


def foreground_mask(labels: torch.Tensor, logits: torch.Tensor, num_classes: int, who: str) -> torch.Tensor:
    """``[R]`` bool mask of foreground ROIs (labels in ``0 .. K-1``), after checking shapes.

    Args:
        labels: ``[R]`` in ``0 .. K`` (K = background).
        logits: ``[R, K + 1]``.
        num_classes: K.
        who: the caller's name, used in error messages.
    """
    if logits.dim() != 2 or logits.shape[1] != num_classes + 1:
        raise ValueError(
            f"{who}: expected logits of shape [R, K + 1] = [R, {num_classes + 1}], "
            f"got {tuple(logits.shape)}"
        )
    if labels.shape != logits.shape[:1]:
        raise ValueError(
            f"{who}: labels of shape {tuple(labels.shape)} do not match logits of shape "
            f"{tuple(logits.shape)}"
        )
    return (labels >= 0) & (labels < num_classes)
