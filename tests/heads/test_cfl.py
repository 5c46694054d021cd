"""``cfl`` head (our reconstruction of Joshi et al. 2022): focal loss, energy hinge, outlier margin,
and the cfl score whose weights are fitted on ID data only."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ood_det.heads import build_head


def _head(seed=0, **kw):
    torch.manual_seed(seed)
    return build_head("cfl", in_features=8, num_classes=3, **kw)


def test_structure_and_logits():
    head = _head()
    assert head.centres.shape == (4, 8)  # K + 1: background has its own centre
    assert float(head.distance_scale.detach()) == 10.0
    z = torch.randn(5, 8) * 4
    want = -10.0 * torch.cdist(F.normalize(z), F.normalize(head.centres.detach()))
    torch.testing.assert_close(head(z), want, atol=1e-4, rtol=1e-5)


def test_focal_loss_against_formula():
    logits = torch.tensor([[-1.0, -2.0, -0.5, -3.0], [-0.2, -4.0, -4.0, -1.0], [-3.0, -3.0, -3.0, -0.1]])
    y = torch.tensor([0, 0, 3])
    logp = torch.log_softmax(logits, 1)[torch.arange(3), y]
    for gamma in (0.0, 2.0, 0.5):
        head = _head(gamma=gamma, energy_weight=0.0)
        want = ((1 - logp.exp()) ** gamma * (-logp)).mean()
        torch.testing.assert_close(head.loss(logits, y)["loss_cls"], want)
    # gamma = 0 is plain cross-entropy
    head = _head(gamma=0.0)
    torch.testing.assert_close(head.loss(logits, y)["loss_cls"], F.cross_entropy(logits, y))


def test_energy_hinge_on_hand_logits():
    head = _head(energy_weight=0.5, m_in=-1.0, m_out=-1000.0)  # outlier half inactive here
    logits = torch.tensor([[0.0, -1.0, -2.0, 5.0], [-3.0, -3.0, -3.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    y = torch.tensor([0, 3, 2])  # row 1 is background: not ID for the energy term
    e = -np.log(np.exp(logits[:, :3].numpy()).sum(1))  # foreground energy
    want = 0.5 * (max(e[0] + 1.0, 0) ** 2 + max(e[2] + 1.0, 0) ** 2) / 2
    got = head.loss(logits, y, outlier_features=torch.randn(2, 8))["loss_cfl_energy"].item()
    assert got == pytest.approx(want, rel=1e-5)
    torch.testing.assert_close(head.energy(logits), torch.tensor(e, dtype=torch.float32))
    # like Liu et al.'s energy-margin loss, the hinge is only active when outliers are given
    no = head.loss(logits, y)["loss_cfl_energy"]
    assert no.item() == 0.0


def test_outlier_terms():
    head = _head(energy_weight=0.3, m_in=100.0, m_out=13.0, margin=1.5, margin_weight=0.7)
    logits = head(torch.randn(4, 8))
    y = torch.tensor([0, 1, 2, 3])
    o = torch.randn(6, 8)
    losses = head.loss(logits, y, outlier_features=o)
    with torch.no_grad():
        d = torch.cdist(F.normalize(o), F.normalize(head.centres))
        e_out = -torch.logsumexp(-10.0 * d[:, :3], 1)
        want_energy = 0.3 * F.relu(13.0 - e_out).square().mean()  # ID half is 0 (m_in = 100)
        want_margin = 0.7 * F.relu(1.5 - d[:, :3].min(1).values).square().mean()
    torch.testing.assert_close(losses["loss_cfl_energy"], want_energy, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(losses["loss_cfl_margin"], want_margin, atol=1e-5, rtol=1e-4)
    assert want_margin > 0 and want_energy > 0
    # without outliers both terms are differentiable zeros and the keys stay the same
    no = head.loss(logits, y)
    assert set(no) == set(losses) == {"loss_cls", "loss_cfl_energy", "loss_cfl_margin"}
    for k in ("loss_cfl_energy", "loss_cfl_margin"):
        assert no[k].item() == 0.0 and no[k].requires_grad


def test_outlier_loss_pushes_outliers_away():
    head = _head(energy_weight=1.0, m_in=100.0, m_out=12.0, margin=1.5, margin_weight=1.0)
    o = head.centres.detach()[:1] + 0.1 * torch.randn(5, 8)  # outliers sitting on centre 0
    before = head.distances(o)[:, 0].mean().item()
    opt = torch.optim.SGD(head.parameters(), lr=0.5)
    for _ in range(20):
        losses = head.loss(head(torch.zeros(0, 8)), torch.zeros(0, dtype=torch.long), outlier_features=o)
        opt.zero_grad()
        (losses["loss_cfl_energy"] + losses["loss_cfl_margin"]).backward()
        opt.step()
    assert head.distances(o)[:, 0].mean().item() > before + 0.2


def test_score_components_and_unfitted_score():
    head = _head()
    z = torch.randn(7, 8)
    logits = head(z)
    comps = head.score_components(logits)
    torch.testing.assert_close(comps[:, 0], torch.logsumexp(logits[:, :3], 1))  # -E
    torch.testing.assert_close(comps[:, 1], -head.distances(z)[:, :3].min(1).values)  # -min d
    torch.testing.assert_close(head.ood_score(logits), comps.sum(1))  # mu = 0, sigma = 1
    torch.testing.assert_close(head.ood_score(logits, score="energy"), comps[:, 0])
    torch.testing.assert_close(head.ood_score(logits, score="mds"), logits[:, :3].max(1).values)


def test_post_fit_standardises_on_id_foreground_only():
    head = _head()
    z = torch.randn(30, 8)
    y = torch.arange(30) % 4
    logits = head(z).detach()
    fg = y < 3
    comps = head.score_components(logits[fg]).detach().double().numpy()
    info = head.post_fit(logits, y, z)
    np.testing.assert_allclose(head.score_mean.numpy(), comps.mean(0), rtol=1e-5)
    np.testing.assert_allclose(head.score_std.numpy(), comps.std(0), rtol=1e-5)
    assert info["num_rois"] == int(fg.sum()) and bool(head.score_fitted)
    # on the fitting set each standardised component has mean 0 / std 1, so the score has mean 0
    s = head.ood_score(logits[fg]).detach().double()
    assert abs(s.mean().item()) < 1e-4
    want = ((comps - comps.mean(0)) / comps.std(0)).sum(1)
    np.testing.assert_allclose(s.numpy(), want, rtol=1e-4, atol=1e-4)
    # background rows, however odd, do not change the fit
    wild = logits.clone()
    wild[~fg] = -1000.0
    head2 = _head()
    head2.post_fit(wild, y)
    torch.testing.assert_close(head2.score_mean, head.score_mean)


def test_post_fit_too_few_rois_keeps_weights():
    head = _head()
    with pytest.warns(UserWarning, match="need >= 2"):
        assert head.post_fit(torch.zeros(3, 4), torch.tensor([0, 3, 3])) == {}
    assert torch.equal(head.score_mean, torch.zeros(2)) and not bool(head.score_fitted)


def test_cfl_score_separates_after_training(toy, train, auroc):
    head = _head()
    head = build_head("cfl", in_features=16, num_classes=3)
    x, y, ood = toy
    g = torch.Generator().manual_seed(3)
    outliers = 3.0 * torch.rand(30, 16, generator=g)  # generic outliers (stand-in for VOS)
    train(head, x, y, steps=60, outliers=outliers)
    with torch.no_grad():
        head.post_fit(head(x), y, x)  # weights from ID data only
    value, s_id, s_ood = auroc(head, x, y, ood)
    assert value > 0.95
    # the combined score is at least as good as its weaker component here
    e_auc, _, _ = auroc(head, x, y, ood, score="energy")
    assert value >= e_auc - 0.02
    assert math.isfinite(s_id.mean().item())


def test_energy_terms_do_not_train_the_scale():
    head = _head(energy_weight=1.0, m_in=-5.0, m_out=50.0, margin=2.0, margin_weight=1.0)
    z = torch.randn(6, 8, requires_grad=True)
    losses = head.loss(head(z), torch.tensor([0, 1, 2, 0, 1, 2]), outlier_features=torch.randn(4, 8))
    (losses["loss_cfl_energy"] + losses["loss_cfl_margin"]).backward()
    assert losses["loss_cfl_energy"].item() > 0
    assert abs(head.distance_scale.grad.item()) < 1e-5  # only the focal term moves s
    assert head.centres.grad.abs().sum() > 0 and z.grad.abs().sum() > 0


# ----------------------------------------------------------------------- linear classifier
def _linear(seed=0, **kw):
    return _head(seed, classifier="linear", **kw)


def test_linear_structure_logits_and_cluster_logits():
    head = _linear()
    assert head.cls_score.weight.shape == (4, 8) and head.centres.shape == (4, 8)
    z = torch.randn(5, 8) * 4
    torch.testing.assert_close(head(z), head.cls_score(z))
    want = -10.0 * torch.cdist(F.normalize(z), F.normalize(head.centres.detach()))
    torch.testing.assert_close(head.cluster_logits(z), want, atol=1e-4, rtol=1e-5)


def test_linear_loss_against_formula():
    head = _linear(gamma=2.0, cluster_weight=0.5)
    z = torch.randn(6, 8, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 3, 0])
    logits = head(z)
    losses = head.loss(logits, y, features=z)
    assert set(losses) == {"loss_cls", "loss_cfl_cluster", "loss_cfl_energy", "loss_cfl_margin"}
    torch.testing.assert_close(losses["loss_cls"], F.cross_entropy(logits, y))
    logp = torch.log_softmax(head.cluster_logits(z), 1)[torch.arange(6), y]
    want = 0.5 * ((1 - logp.exp()) ** 2 * (-logp)).mean()
    torch.testing.assert_close(losses["loss_cfl_cluster"], want)
    # the cluster term trains the centres, the scale and the features (ID features pulled in)
    losses["loss_cfl_cluster"].backward()
    assert head.centres.grad.abs().sum() > 0 and head.distance_scale.grad.abs().sum() > 0
    assert z.grad.abs().sum() > 0 and head.cls_score.weight.grad is None
    with pytest.raises(ValueError, match="needs the ROI features"):
        head.loss(logits, y)


def test_linear_outlier_energy_uses_the_linear_logits():
    head = _linear(energy_weight=0.3, m_in=100.0, m_out=5.0, margin=1.5, margin_weight=0.7)
    z = torch.randn(4, 8)
    o = torch.randn(6, 8) * 50
    losses = head.loss(head(z), torch.tensor([0, 1, 2, 3]), features=z, outlier_features=o)
    with torch.no_grad():
        e_out = -torch.logsumexp(head.cls_score(o)[:, :3], 1)
        d = torch.cdist(F.normalize(o), F.normalize(head.centres))
    torch.testing.assert_close(losses["loss_cfl_energy"], 0.3 * F.relu(5.0 - e_out).square().mean())
    torch.testing.assert_close(
        losses["loss_cfl_margin"], 0.7 * F.relu(1.5 - d[:, :3].min(1).values).square().mean(),
        atol=1e-5, rtol=1e-4,
    )


def test_linear_scores_need_features_and_post_fit_uses_them():
    head = _linear()
    z = torch.randn(30, 8)
    y = torch.arange(30) % 4
    logits = head(z).detach()
    comps = head.score_components(logits, z).detach()
    torch.testing.assert_close(comps[:, 0], torch.logsumexp(logits[:, :3], 1))
    torch.testing.assert_close(comps[:, 1], -head.distances(z)[:, :3].min(1).values.detach())
    torch.testing.assert_close(head.ood_score(logits, features=z, score="energy"), comps[:, 0])
    torch.testing.assert_close(head.ood_score(logits, features=z, score="mds"), 10.0 * comps[:, 1])
    with pytest.raises(ValueError, match="needs the ROI features"):
        head.ood_score(logits)
    fg = y < 3
    head.post_fit(logits, y, z)
    c = comps[fg].double()
    np.testing.assert_allclose(head.score_mean.numpy(), c.mean(0).numpy(), rtol=1e-5)
    np.testing.assert_allclose(head.score_std.numpy(), c.std(0, unbiased=False).numpy(), rtol=1e-5)


def test_linear_cfl_score_beats_energy_alone_on_the_toy(toy, train, auroc):
    torch.manual_seed(0)
    head = build_head("cfl", in_features=16, num_classes=3, classifier="linear", margin_weight=0.0)
    x, y, ood = toy
    train(head, x, y, steps=60)
    with torch.no_grad():
        head.post_fit(head(x), y, x)
    value, _, _ = auroc(head, x, y, ood)
    r_auc, _, _ = auroc(head, x, y, ood, score="mds")
    e_auc, _, _ = auroc(head, x, y, ood, score="energy")
    assert value > 0.95 and value >= max(e_auc, r_auc) - 0.02


def test_classifier_is_checked_and_configurable():
    with pytest.raises(ValueError, match="classifier must be one of distance, linear"):
        _head(classifier="cosine")
    from ood_det.config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    cfg.MODEL.OOD.CFL.CLASSIFIER = "linear"
    cfg.MODEL.OOD.CFL.CLUSTER_WEIGHT = 0.25
    kw = type(_head()).from_config(cfg, 8)
    assert kw["classifier"] == "linear" and kw["cluster_weight"] == 0.25
