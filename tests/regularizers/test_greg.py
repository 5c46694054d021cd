import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score
from torch import nn

from ood_det.regularizers import build_regularizer
from ood_det.regularizers.energy import energy_margin_loss, free_energy
from ood_det.regularizers.greg import (
    GRegLoss,
    kmeans,
    kmeans_plusplus,
    lloyd,
    lowest_per_cluster,
)


def _setup(head, seed=0):
    """A batch, and GReg with margins at the median energy of each group, so that some samples
    of both groups are beyond their margin and g has both terms. (The margins are written into
    the buffers directly: the formula does not need m_in < m_out, which the constructor checks.)"""
    torch.manual_seed(seed)
    feats = (3 * torch.randn(10, head.in_features)).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 3, 3, 0, 1, 3, 2, 0])
    outliers = torch.randn(5, head.in_features)
    with torch.no_grad():
        e_in = free_energy(head(feats[labels < 3])[:, :3])
        e_out = free_energy(head(outliers)[:, :3])
    m_in, m_out = float(e_in.median()), float(e_out.median())
    reg = GRegLoss(grad_weight=1.0, energy_weight=0.1, m_in=-1e3, m_out=1e3, sampling=False)
    reg.margins.m_in.fill_(m_in)
    reg.margins.m_out.fill_(m_out)
    assert (e_in < m_in).any() and (e_out > m_out).any()
    return reg, feats, labels, outliers, m_in, m_out


def test_gradient_norm_matches_closed_form_for_a_linear_head(tiny_head):
    head = tiny_head(in_features=6, num_classes=3)
    reg, feats, labels, outliers, m_in, m_out = _setup(head)
    out = reg(head, feats, head(feats), labels, outliers, 0)

    # hand computation: E(x) = -logsumexp(W x + b) over the foreground rows of the linear layer,
    # dE/dx = -W^T softmax(W x + b); g's per-sample gradient is 1[E < m_in] dE/dx / N_in for ID
    # and 1[E > m_out] dE/dx / N_out for outliers
    w = head.linear.weight.detach().double().numpy()[:3]
    b = head.linear.bias.detach().double().numpy()[:3]

    def grads(x, mask_fn, n):
        z = x @ w.T + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        e = -np.log(np.exp(z).sum(1))
        de = -(p @ w)
        return de * mask_fn(e)[:, None] / n

    x_in = feats.detach().double().numpy()[(labels < 3).numpy()]
    x_out = outliers.double().numpy()
    g_in = grads(x_in, lambda e: (e < m_in).astype(float), len(x_in))
    g_out = grads(x_out, lambda e: (e > m_out).astype(float), len(x_out))
    expected = np.linalg.norm(np.concatenate([g_in, g_out]), axis=1).mean()
    assert expected > 0
    assert out["loss_greg_grad"].item() == pytest.approx(expected, rel=1e-5)

    e_in = free_energy(head(feats[labels < 3])[:, :3])
    e_out = free_energy(head(outliers)[:, :3])
    assert out["loss_greg_energy"].item() == pytest.approx(
        0.1 * energy_margin_loss(e_in, e_out, m_in, m_out).item(), rel=1e-6)


class _MLPHead(nn.Module):
    def __init__(self, d=5, k=3):
        super().__init__()
        self.in_features, self.num_classes = d, k
        self.net = nn.Sequential(nn.Linear(d, 7), nn.Tanh(), nn.Linear(7, k + 1))

    def forward(self, x):
        return self.net(x)

    def score_logits(self, logits):
        return logits[:, : self.num_classes]


def test_gradient_norm_matches_the_authors_jacobian_recipe():
    # the authors: jacobian of g w.r.t. the whole (ID + OOD) batch, per-sample L2 norm, mean
    torch.manual_seed(0)
    head = _MLPHead()
    reg, feats, labels, outliers, m_in, m_out = _setup(head, seed=1)
    out = reg(head, feats, head(feats), labels, outliers, 0)["loss_greg_grad"]

    x_in = feats.detach()[labels < 3]
    n_in = len(x_in)

    def g_fn(x):
        e = free_energy(head(x)[:, :3])
        return -torch.relu(m_in - e[:n_in]).mean() + torch.relu(e[n_in:] - m_out).mean()

    jac = torch.autograd.functional.jacobian(g_fn, torch.cat([x_in, outliers]))
    expected = jac.reshape(jac.shape[0], -1).norm(dim=1).mean()
    assert expected > 0
    assert out.item() == pytest.approx(expected.item(), rel=1e-5)


def test_double_backprop_reaches_head_and_box_head(tiny_head):
    head = tiny_head(in_features=6, num_classes=3)
    box_head = nn.Sequential(nn.Linear(4, 6), nn.Tanh())
    torch.manual_seed(2)
    x = torch.randn(10, 4)
    feats = box_head(x)
    labels = torch.tensor([0, 1, 2, 3, 3, 0, 1, 3, 2, 0])
    outliers = torch.randn(5, 6) * 2
    with torch.no_grad():
        e_in = free_energy(head(feats[labels < 3])[:, :3])
        e_out = free_energy(head(outliers)[:, :3])
    # margins that every sample is beyond (the energy term is then 0, g is active everywhere)
    reg = GRegLoss(m_in=-1e3, m_out=1e3, sampling=False)
    reg.margins.m_in.fill_(float(e_in.max()) + 1)
    reg.margins.m_out.fill_(float(e_out.min()) - 1)
    out = reg(head, feats, head(feats), labels, outliers, 0)
    assert out["loss_greg_energy"].item() == 0.0
    out["loss_greg_grad"].backward()
    assert head.linear.weight.grad.abs().sum() > 0
    assert box_head[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("case", ["empty", "no_fg", "no_outliers", "before_margins"])
def test_zero_cases(tiny_head, case):
    head = tiny_head(in_features=4, num_classes=2)
    margins = {} if case == "before_margins" else {"m_in": -2.0, "m_out": -0.5}
    reg = build_regularizer("greg", **margins)
    r = 0 if case == "empty" else 5
    feats = torch.randn(r, 4, requires_grad=True)
    labels = torch.full((r,), 2) if case == "no_fg" else torch.zeros(r, dtype=torch.long)
    outliers = None if case == "no_outliers" else torch.randn(3, 4)
    if case == "before_margins":
        reg.eval()  # no statistics collected: derived margins do not exist yet
    out = reg(head, feats, head(feats), labels, outliers, 0)
    total = out["loss_greg_grad"] + out["loss_greg_energy"]
    assert torch.isfinite(total) and total.item() == 0.0
    total.backward()


def test_lloyd_matches_sklearn_from_the_same_start():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(200, 8)))
    init = kmeans_plusplus(x, 6, generator=torch.Generator().manual_seed(0))
    labels, centers, inertia = lloyd(x, init, max_iter=300)
    ref = KMeans(n_clusters=6, init=init.numpy(), n_init=1, algorithm="lloyd", tol=0.0, max_iter=300).fit(x.numpy())
    np.testing.assert_array_equal(labels.numpy(), ref.labels_)
    np.testing.assert_allclose(centers.numpy(), ref.cluster_centers_, rtol=1e-10, atol=1e-10)
    assert inertia.item() == pytest.approx(ref.inertia_, rel=1e-10)


def test_batched_runs_equal_separate_runs():
    x = torch.from_numpy(np.random.default_rng(2).normal(size=(60, 5)))
    init = kmeans_plusplus(x, 4, generator=torch.Generator().manual_seed(3), batch=3)
    assert init.shape == (3, 4, 5)
    labels, centers, inertia = lloyd(x, init)
    for b in range(3):
        lb, cb, ib = lloyd(x, init[b])
        assert torch.equal(labels[b], lb)
        np.testing.assert_allclose(centers[b].numpy(), cb.numpy(), rtol=1e-12)
        assert inertia[b].item() == pytest.approx(ib.item(), rel=1e-12)


def test_kmeans_quality_close_to_sklearn():
    x, truth = make_blobs(n_samples=160, centers=8, n_features=16, cluster_std=0.5, random_state=0)
    x = torch.from_numpy(x)
    torch.manual_seed(0)
    labels, _ = kmeans(x, 8, n_init=3)
    assert adjusted_rand_score(truth, labels.numpy()) == pytest.approx(1.0)
    # unstructured data: inertia within 5% of scikit-learn's best of 3
    y = torch.from_numpy(np.random.default_rng(1).normal(size=(160, 32)))
    labels, centers = kmeans(y, 32, n_init=3)
    ours = ((y - centers[labels]) ** 2).sum().item()
    ref = KMeans(n_clusters=32, n_init=3, random_state=0).fit(y.numpy()).inertia_
    assert ours <= 1.05 * ref


def test_lowest_per_cluster():
    values = torch.tensor([5.0, 1.0, 3.0, -2.0, 0.0, 4.0, 9.0])
    labels = torch.tensor([0, 0, 1, 1, 3, 3, 3])  # cluster 2 empty
    assert lowest_per_cluster(values, labels).tolist() == [1, 3, 4]
    assert lowest_per_cluster(values, labels, highest=True).tolist() == [0, 2, 6]


def test_select_outliers_keeps_the_lowest_energy_per_cluster(tiny_head):
    head = tiny_head(in_features=6, num_classes=3)
    # 4 well separated directions (the sampler clusters L2-normalised features), 10 points each
    g = torch.Generator().manual_seed(0)
    dirs = torch.eye(6)[:4] * 5
    cand = torch.cat([d + 0.2 * torch.randn(10, 6, generator=g) for d in dirs])
    cand = cand * torch.rand(40, 1, generator=g).add(0.5)  # vary the norms inside a cluster
    truth = torch.arange(4).repeat_interleave(10)
    reg = GRegLoss(num_clusters=4)
    torch.manual_seed(0)
    picked = reg.select_outliers(head, cand)
    with torch.no_grad():
        energy = free_energy(head(cand)[:, :3])
    expected = {int(torch.nonzero(truth == c).squeeze(1)[energy[truth == c].argmin()]) for c in range(4)}
    got = {int((cand == p).all(1).nonzero()) for p in picked}
    assert got == expected

    two = GRegLoss(num_clusters=4, two_way=True).select_outliers(head, cand)
    highest = {int(torch.nonzero(truth == c).squeeze(1)[energy[truth == c].argmax()]) for c in range(4)}
    got_two = {int((cand == p).all(1).nonzero()) for p in two}
    assert got_two == expected | highest

    # too few candidates, or sampling off: unchanged
    assert GRegLoss(num_clusters=64).select_outliers(head, cand) is cand
    assert GRegLoss(sampling=False).select_outliers(head, cand) is cand
