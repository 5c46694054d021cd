"""Shared toy problem for the head tests: K well-separated classes + a background cluster in the
first K + 1 feature dimensions; "far-away" OOD points lie along the unused dimensions."""
from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

from ood_det.heads import build_head


def toy_problem(seed: int = 0, num_classes: int = 3, dim: int = 16, n_per: int = 40):
    g = torch.Generator().manual_seed(seed)
    k1 = num_classes + 1
    centres = torch.zeros(k1, dim)
    centres[torch.arange(k1), torch.arange(k1)] = 3.0  # class c (and background K) along e_c
    labels = torch.arange(k1).repeat_interleave(n_per)
    x = centres[labels] + 0.3 * torch.randn(len(labels), dim, generator=g)
    x = x.clamp_min(0.0)  # ROI features come out of a ReLU
    n_ood = 2 * n_per
    ood = torch.zeros(n_ood, dim)
    free = torch.arange(k1, dim)
    ood[torch.arange(n_ood), free[torch.arange(n_ood) % len(free)]] = 6.0
    ood = (ood + 0.3 * torch.randn(n_ood, dim, generator=g)).clamp_min(0.0)
    return x, labels, ood


def train_head(head, x, y, steps: int = 80, lr: float = 0.3, outliers=None, seed: int = 0):
    """Full-batch SGD (momentum 0.9) on fixed toy features; returns the last total loss."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9)
    head.train()
    for _ in range(steps):
        logits = head(x)
        losses = head.loss(logits, y, features=x, outlier_features=outliers)
        total = sum(losses.values())
        opt.zero_grad()
        total.backward()
        opt.step()
    head.eval()
    return float(total.detach())


def id_vs_ood_auroc(head, x, y, ood, score=None):
    """AUROC (ID positive) of the head's score: ID = foreground toy points, OOD = far-away points."""
    with torch.no_grad():
        fg = y < head.num_classes
        s_id = head.ood_score(head(x[fg]), features=x[fg], score=score)
        s_ood = head.ood_score(head(ood), features=ood, score=score)
    truth = torch.cat([torch.ones(len(s_id)), torch.zeros(len(s_ood))]).numpy()
    return roc_auc_score(truth, torch.cat([s_id, s_ood]).numpy()), s_id, s_ood


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: thread hand-offs cost more than they save on a shared 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def toy():
    return toy_problem()


#: head variants the common tests run besides the registry names: name -> (head, keyword args)
VARIANTS = {"cfl_linear": ("cfl", {"classifier": "linear"})}


def variant(name):
    """``(registry name, keyword args)`` of a head name or of a :data:`VARIANTS` entry."""
    return VARIANTS.get(name, (name, {}))


def fresh(name, **kw):
    torch.manual_seed(0)
    head, extra = variant(name)
    return build_head(head, 16, 3, **{**extra, **kw})


@pytest.fixture
def make_head():
    """``make_head(name, **kw)``: a head for the toy problem (D = 16, K = 3), seeded."""
    return fresh


@pytest.fixture
def train():
    return train_head


@pytest.fixture
def auroc():
    return id_vs_ood_auroc


@pytest.fixture
def toy_factory():
    return toy_problem
