"""Registry of OOD scores computed from foreground logits.

Every score maps ``[R, K]`` foreground logits (already divided by any temperature the head uses)
to ``[R]`` and is **higher = more in-distribution**. Head-specific scores that need more than the
logits (``cfl``: distances to learned centres) live in their head and are dispatched by
:meth:`ood_det.heads.base.OODHead.ood_score`.

References:
* ``msp``: maximum softmax probability, Hendrycks & Gimpel, ICLR 2017.
* ``max_logit``: maximum logit, Hendrycks et al., ICML 2022.
* ``energy``: ``-E(x) = T * logsumexp(f(x) / T)`` with T = 1, Liu et al., NeurIPS 2020.
* ``entropic``: ``sum_j p_j log p_j`` (negative entropy), IsoMax, Macêdo et al., TNNLS 2021.
* ``mds``: minimum-distance score = max logit of a distance head, IsoMax+, Macêdo & Ludermir 2021.
* ``mmles``: max logit + mean logit + ``sum_j p_j log p_j``, DisMax, Macêdo et al. 2022.
* ``mmls``: max logit + mean logit, DisMax, Macêdo et al. 2022.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
SCORES: Dict[str, ScoreFn] = {}

#: every score name any head may report, in a fixed order (used to index stored thresholds)
SCORE_NAMES = ("msp", "max_logit", "energy", "entropic", "mds", "mmles", "cfl", "mmls")


def register(name: str) -> Callable[[ScoreFn], ScoreFn]:
    def deco(fn: ScoreFn) -> ScoreFn:
        if name in SCORES:
            raise KeyError(f"score {name!r} is already registered")
        SCORES[name] = fn
        return fn

    return deco


def _neg_entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(logits, dim=-1)
    return (logp.exp() * logp).sum(dim=-1)


@register("msp")
def msp(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=-1).max(dim=-1).values


@register("max_logit")
def max_logit(logits: torch.Tensor) -> torch.Tensor:
    return logits.max(dim=-1).values


@register("mds")
def minimum_distance(logits: torch.Tensor) -> torch.Tensor:
    # for a distance head logit_j = -scale * d_j, so max logit = -scale * min_j d_j
    return logits.max(dim=-1).values


@register("energy")
def energy(logits: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(logits, dim=-1)


@register("entropic")
def entropic(logits: torch.Tensor) -> torch.Tensor:
    return _neg_entropy(logits)


@register("mmles")
def mmles(logits: torch.Tensor) -> torch.Tensor:
    return logits.max(dim=-1).values + logits.mean(dim=-1) + _neg_entropy(logits)


@register("mmls")
def mmls(logits: torch.Tensor) -> torch.Tensor:
    return logits.max(dim=-1).values + logits.mean(dim=-1)


def compute(name: str, logits: torch.Tensor) -> torch.Tensor:
    """Score ``name`` of ``[R, K]`` foreground logits; ``[R]``, higher = more ID."""
    try:
        fn = SCORES[name]
    except KeyError:
        raise KeyError(f"unknown score {name!r}; known: {', '.join(sorted(SCORES))}") from None
    if logits.dim() != 2:
        raise ValueError(f"score {name!r} expects [R, K] logits, got shape {tuple(logits.shape)}")
    return fn(logits)
