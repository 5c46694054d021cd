import numpy as np
import pytest
import torch
from scipy import stats

from ood_det.regularizers import build_regularizer
from ood_det.regularizers.vos import VOSLoss, VirtualOutlierSynthesizer, weighted_neg_energy


def _filled(k=2, q=6, d=3, seed=0, **kw):
    synth = VirtualOutlierSynthesizer(in_features=d, num_classes=k, queue_size=q, start_iter=0, **kw)
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(k).repeat_interleave(q)
    # class-dependent means and an anisotropic shared spread
    feats = torch.randn(k * q, d, generator=g) * torch.linspace(0.5, 2.0, d) + 3.0 * labels[:, None]
    synth.update(feats, labels)
    return synth


def _reference_queue(k, q, d, batches):
    """Naive FIFO: push one row at a time."""
    queue = np.zeros((k, q, d), dtype=np.float32)
    ptr = [0] * k
    count = [0] * k
    for feats, labels in batches:
        for f, c in zip(feats.numpy(), labels.tolist()):
            queue[c, ptr[c]] = f
            ptr[c] = (ptr[c] + 1) % q
            count[c] = min(count[c] + 1, q)
    return queue, ptr, count


def test_queue_wraps_like_a_fifo():
    k, q, d = 3, 4, 2
    g = torch.Generator().manual_seed(0)
    batches = []
    for n in (3, 7, 0, 11, 5):  # includes a batch with more than Q rows of one class
        labels = torch.randint(k, (n,), generator=g)
        labels[: min(n, 6)] = 1 if n > 6 else labels[: min(n, 6)]
        batches.append((torch.randn(n, d, generator=g), labels))
    synth = VirtualOutlierSynthesizer(d, k, queue_size=q)
    for feats, labels in batches:
        synth.update(feats, labels)
    queue, ptr, count = _reference_queue(k, q, d, batches)
    np.testing.assert_array_equal(synth.queue.numpy(), queue)
    assert synth.ptr.tolist() == ptr
    assert synth.count.tolist() == count


def test_running_statistics_match_the_queue_after_wrapping():
    k, q, d = 3, 5, 4
    synth = VirtualOutlierSynthesizer(d, k, queue_size=q)
    g = torch.Generator().manual_seed(1)
    for step in range(40):  # ~4 wrap-arounds per class, uneven batches
        n = int(torch.randint(0, 9, (1,), generator=g))
        synth.update(torch.randn(n, d, generator=g) + step % 3, torch.randint(k, (n,), generator=g))
    x = synth.queue.double()
    assert synth.is_full
    np.testing.assert_allclose(synth.sum_x.numpy(), x.sum(1).numpy(), rtol=1e-6, atol=1e-5)
    flat = x.reshape(-1, d)
    np.testing.assert_allclose(synth.sum_xxt.numpy(), (flat.t() @ flat).numpy(), rtol=1e-6, atol=1e-4)
    before = synth.sum_xxt.clone()
    synth.recompute_statistics()
    np.testing.assert_allclose(before.numpy(), synth.sum_xxt.numpy(), rtol=1e-6, atol=1e-4)


def test_update_rejects_bad_input():
    synth = VirtualOutlierSynthesizer(4, 3, queue_size=2)
    with pytest.raises(ValueError, match="foreground classes 0..2"):
        synth.update(torch.randn(2, 4), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        synth.update(torch.randn(2, 5), torch.tensor([0, 1]))
    assert int(synth.count.sum()) == 0  # nothing half-written


def test_sample_waits_for_start_iter_and_full_queues():
    synth = VirtualOutlierSynthesizer(3, 2, queue_size=4, num_samples=20, start_iter=5)
    synth.update(torch.randn(4, 3), torch.tensor([0, 0, 0, 0]))
    assert synth.sample(10) is None  # class 1 queue empty
    synth.update(torch.randn(4, 3), torch.tensor([1, 1, 1, 1]))
    assert synth.sample(4) is None  # before START_ITER
    out = synth.sample(5)
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_gaussians_match_numpy():
    synth = _filled(k=3, q=8, d=4, cov_eps=1e-3)
    means, chol = synth.gaussians()
    queue = synth.queue.double().numpy()
    mu = queue.mean(1)
    centred = (queue - mu[:, None]).reshape(-1, 4)
    cov = centred.T @ centred / centred.shape[0] + 1e-3 * np.eye(4)
    np.testing.assert_allclose(means.numpy(), mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose((chol @ chol.t()).double().numpy(), cov, rtol=1e-4, atol=1e-5)
    assert torch.equal(chol, torch.tril(chol))


def test_exact_sampler_keeps_lowest_likelihood_draws():
    k, q, d, s, m = 2, 6, 3, 50, 3
    synth = _filled(k=k, q=q, d=d, num_samples=s, num_select=m, sampler="exact")
    torch.manual_seed(123)
    out = synth.sample(0).reshape(k, m, d).double().numpy()

    # reference: the same standard-normal draws (class by class, [S, D] each), turned into
    # candidates with numpy's covariance / Cholesky, ranked by scipy's log-density
    queue = synth.queue.double().numpy()
    mu = queue.mean(1)
    centred = (queue - mu[:, None]).reshape(-1, d)
    cov = centred.T @ centred / centred.shape[0] + 1e-4 * np.eye(d)
    chol = np.linalg.cholesky(cov)
    torch.manual_seed(123)
    for c in range(k):
        z = torch.randn(s, d).double().numpy()
        cand = mu[c] + z @ chol.T
        logp = stats.multivariate_normal(mean=mu[c], cov=cov).logpdf(cand)
        expected = cand[np.argsort(logp)[:m]]  # the m least likely, least likely first
        np.testing.assert_allclose(out[c], expected, rtol=1e-4, atol=1e-4)


def _mahalanobis_sq(synth, x):
    queue = synth.queue.double().numpy()
    mu = queue.mean(1)
    centred = (queue - mu[:, None]).reshape(-1, synth.in_features)
    cov = centred.T @ centred / centred.shape[0] + synth.cov_eps * np.eye(synth.in_features)
    k = synth.num_classes
    diff = x.reshape(k, -1, synth.in_features) - mu[:, None]
    return np.einsum("kmd,de,kme->km", diff, np.linalg.inv(cov), diff).reshape(-1)


@pytest.mark.parametrize("sampler", ["radial", "exact"])
def test_sampler_follows_the_order_statistic_law(sampler):
    # the kept draw is the max of S chi2_D Mahalanobis radii: CDF F_chi2(x)^S
    k, d, s = 3, 4, 40
    synth = _filled(k=k, q=6, d=d, num_samples=s, num_select=1, sampler=sampler)
    torch.manual_seed(7)
    r2 = np.concatenate([_mahalanobis_sq(synth, synth.sample(0).double().numpy()) for _ in range(150)])
    p = stats.kstest(r2, lambda x: stats.chi2.cdf(x, d) ** s).pvalue
    assert p > 0.01, p


def test_radial_directions_are_isotropic():
    synth = _filled(k=1, q=10, d=3, num_samples=30, num_select=5)
    means, chol = synth.gaussians()
    torch.manual_seed(3)
    xs = torch.cat([synth.sample(0) for _ in range(400)]).double()
    z = torch.linalg.solve_triangular(chol.double(), (xs - means.double()).t(), upper=False).t()
    u = z / z.norm(dim=1, keepdim=True)
    # mean direction ~ 0 and second moment ~ I/3 for uniform directions on the sphere
    assert u.mean(0).abs().max() < 0.05
    np.testing.assert_allclose((u.t() @ u / len(u)).numpy(), np.eye(3) / 3, atol=0.03)


def test_state_dict_round_trip_reproduces_sampling():
    a = _filled(k=3, q=5, d=4, num_samples=30, num_select=2)
    a.update(torch.randn(7, 4), torch.tensor([0, 1, 2, 0, 0, 1, 2]))  # pointers off zero
    b = VirtualOutlierSynthesizer(4, 3, queue_size=5, num_samples=30, num_select=2, start_iter=0)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.ptr, b.ptr) and torch.equal(a.count, b.count)
    torch.manual_seed(11)
    sa = a.sample(0)
    torch.manual_seed(11)
    sb = b.sample(0)
    assert torch.equal(sa, sb)
    # and the queues keep evolving identically
    f, lab = torch.randn(6, 4), torch.tensor([2, 2, 1, 0, 2, 1])
    a.update(f, lab)
    b.update(f, lab)
    assert torch.equal(a.queue, b.queue) and torch.equal(a.ptr, b.ptr)


def test_from_config_keys():
    from fvcore.common.config import CfgNode as CN

    from ood_det.config import add_ood_config

    cfg = CN()
    cfg.MODEL = CN()
    cfg.MODEL.ROI_HEADS = CN()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 20
    cfg.DATASETS = CN()
    cfg.TEST = CN()
    add_ood_config(cfg)
    vos = cfg.MODEL.OOD.VOS
    assert (vos.QUEUE_SIZE, vos.NUM_SAMPLES, vos.NUM_SELECT, vos.START_ITER, vos.COV_EPS, vos.LOSS_WEIGHT) == (
        1000, 10000, 1, 12000, 1e-4, 0.1)
    kw = VirtualOutlierSynthesizer.from_config(cfg, 1024)
    assert kw["num_classes"] == 20 and kw["in_features"] == 1024
    assert VOSLoss.from_config(cfg) == {"num_classes": 20, "loss_weight": 0.1}


def test_weighted_neg_energy_formula():
    f = torch.tensor([[1.0, -2.0, 0.5], [3.0, 0.0, -1.0]])
    w = torch.tensor([0.3, -0.2, 1.5])  # a negative weight is cut by relu
    expected = np.log((np.maximum(w.numpy(), 0) * np.exp(f.numpy())).sum(1))
    np.testing.assert_allclose(weighted_neg_energy(f, w).numpy(), expected, rtol=1e-6)


def test_vos_loss_value_and_gradients(tiny_head):
    head = tiny_head(in_features=5, num_classes=3)
    reg = VOSLoss(num_classes=3, loss_weight=0.1)
    with torch.no_grad():
        reg.energy_weight.copy_(torch.tensor([0.2, 0.7, 1.1]))
        reg.logistic.weight.fill_(0.8)
        reg.logistic.bias.fill_(-0.3)
    torch.manual_seed(0)
    feats = torch.randn(6, 5, requires_grad=True)
    labels = torch.tensor([0, 3, 2, 1, 3, 0])
    outliers = torch.randn(4, 5)
    logits = head(feats)
    loss = reg(head, feats, logits, labels, outliers, 0)["loss_vos"]

    w = np.array([0.2, 0.7, 1.1])
    fg = (labels < 3).numpy()
    phi_in = np.log((w * np.exp(logits.detach().numpy()[fg][:, :3])).sum(1))
    phi_out = np.log((w * np.exp(head(outliers).detach().numpy()[:, :3])).sum(1))
    a_in, a_out = 0.8 * phi_in - 0.3, 0.8 * phi_out - 0.3
    bce = np.concatenate([np.log1p(np.exp(-a_in)), np.log1p(np.exp(a_out))]).mean()
    assert loss.item() == pytest.approx(0.1 * bce, rel=1e-5)
    loss.backward()
    for p in (reg.energy_weight, reg.logistic.weight, head.linear.weight, feats):
        assert p.grad is not None and p.grad.abs().sum() > 0


@pytest.mark.parametrize("case", ["empty", "no_fg", "no_outliers"])
def test_vos_zero_cases(tiny_head, case):
    head = tiny_head(in_features=4, num_classes=2)
    reg = build_regularizer("vos", num_classes=2)
    r = 0 if case == "empty" else 5
    feats = torch.randn(r, 4, requires_grad=True)
    labels = torch.full((r,), 2) if case == "no_fg" else torch.zeros(r, dtype=torch.long)
    outliers = None if case == "no_outliers" else torch.randn(3, 4)
    loss = reg(head, feats, head(feats), labels, outliers, 0)["loss_vos"]
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()
    # zero gradients, but every parameter took part (DistributedDataParallel needs that)
    assert reg.energy_weight.grad is not None and reg.energy_weight.grad.abs().sum() == 0


def test_indefinite_covariance_gets_jitter_instead_of_crashing():
    """A rank-deficient / drifted covariance estimate is repaired with diagonal jitter (warned)."""
    syn = VirtualOutlierSynthesizer(in_features=6, num_classes=2, queue_size=3, num_samples=50,
                                    num_select=1, start_iter=0, cov_eps=1e-4)
    syn.update(torch.randn(6, 6), torch.tensor([0, 0, 0, 1, 1, 1]))
    syn.sum_xxt -= 10.0 * torch.eye(6, dtype=torch.float64)  # make the estimate indefinite
    with pytest.warns(UserWarning, match="added 10 to its diagonal"):
        means, chol = syn.gaussians()
    cov = chol.double() @ chol.double().t()
    assert torch.isfinite(chol).all()
    # the repaired covariance is the estimate plus 10 (the largest jitter) on the diagonal
    n = syn.count.double().clamp_min(1)[:, None]
    mu = syn.sum_x / n
    est = (syn.sum_xxt - (mu * n).t() @ mu) / n.sum()
    assert torch.allclose(cov, est + (1e-4 + 10.0) * torch.eye(6, dtype=torch.float64), atol=1e-5)
