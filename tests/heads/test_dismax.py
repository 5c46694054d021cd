"""``dismax`` head: logits = -(d + mean d) / T, the mean term's effect, MMLES, calibration."""
import math

import pytest
import torch
import torch.nn.functional as F

from ood_det.calibration import expected_calibration_error
from ood_det.heads import build_head


def _head(seed=0, **kw):
    torch.manual_seed(seed)
    return build_head("dismax", in_features=8, num_classes=3, **kw)


def test_logits_hand_values():
    head = build_head("dismax", in_features=2, num_classes=2)
    with torch.no_grad():
        head.prototypes.copy_(torch.tensor([[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0]]))
        head.distance_scale.fill_(2.0)
    z = torch.tensor([[3.0, 0.0]])
    # ||ẑ - p̂|| = (0, sqrt 2, 2); d = 2 * that / sqrt 2 = (0, 2, 2 sqrt 2); mean = (2 + 2 sqrt 2) / 3
    d = torch.tensor([0.0, 2.0, 2.0 * math.sqrt(2.0)])
    want = -(d + d.mean())[None]
    torch.testing.assert_close(head(z), want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        head.temperature.fill_(0.5)
    torch.testing.assert_close(head(z), want / 0.5, atol=1e-5, rtol=1e-5)


def test_mean_term_leaves_softmax_and_loss_unchanged_but_shifts_mmles():
    head = _head()
    z = torch.randn(12, 8)
    y = torch.arange(12) % 4
    logits = head(z)
    d = head.distances(z)  # |s| ||ẑ - p̂|| / sqrt 2
    plain = -d  # the same head without the mean term (IsoMax+ with d / sqrt 2)
    # softmax and loss identical
    torch.testing.assert_close(torch.softmax(10 * logits, 1), torch.softmax(10 * plain, 1))
    loss = head.loss(logits, y)["loss_cls"]
    torch.testing.assert_close(loss, F.cross_entropy(10 * plain, y))
    torch.testing.assert_close(loss, F.cross_entropy(10 * logits, y))
    # MMLES = max + mean + sum p log p over foreground logits: shifted by -2 mean_k d_k
    fg = logits[:, :3]
    p = torch.softmax(fg, 1)
    mmles = fg.max(1).values + fg.mean(1) + (p * p.log()).sum(1)
    assert head.default_score == "mmles"
    torch.testing.assert_close(head.ood_score(logits), mmles)
    from ood_det.scores import compute

    shift = head.ood_score(logits) - compute("mmles", plain[:, :3])
    torch.testing.assert_close(shift, -2 * d.mean(1))  # mean over all K + 1 prototypes
    # entropic / msp unchanged by the mean term, mmls = max + mean
    torch.testing.assert_close(head.ood_score(logits, score="entropic"), compute("entropic", plain[:, :3]))
    torch.testing.assert_close(head.ood_score(logits, score="mmls"), fg.max(1).values + fg.mean(1))
    torch.testing.assert_close(head.ood_score(logits, score="mds"), fg.max(1).values)


def test_confidence_before_and_after_calibration():
    head = _head()
    logits = head(torch.randn(5, 8))
    torch.testing.assert_close(head.predict_probs(logits), torch.softmax(10 * logits, 1))
    with torch.no_grad():
        head.temperature.fill_(0.2)
        head.calibrated.fill_(True)
    logits = head(torch.randn(5, 8))
    torch.testing.assert_close(head.predict_probs(logits), torch.softmax(logits, 1))


def test_gradients_reach_prototypes_and_scale():
    head = _head()
    z = torch.randn(10, 8, requires_grad=True)
    head.loss(head(z), torch.arange(10) % 4)["loss_cls"].backward()
    assert head.prototypes.grad.abs().sum() > 0 and head.distance_scale.grad.abs() > 0
    assert "temperature" not in dict(head.named_parameters())  # a buffer, not trained
    assert "temperature" in head.state_dict() and "calibrated" in head.state_dict()


def test_post_fit_calibrates_on_id_rois(toy, train):
    torch.manual_seed(0)
    head = build_head("dismax", in_features=16, num_classes=3)
    x, y, _ = toy
    train(head, x, y, steps=10)
    # a noisy validation set: misclassified ROIs make the E_s = 10 confidence overconfident
    g = torch.Generator().manual_seed(5)
    xv = x + 1.5 * torch.randn(x.shape, generator=g)
    with torch.no_grad():
        logits = head(xv)
    before = expected_calibration_error(torch.softmax(10 * logits, 1), y)
    info = head.post_fit(logits, y, xv)
    assert bool(head.calibrated)
    t = float(head.temperature)
    assert info["temperature"] == pytest.approx(t)
    assert 1e-3 <= t <= 100
    with torch.no_grad():
        new_logits = head(xv)  # now divided by T
    torch.testing.assert_close(new_logits, logits / t, rtol=1e-5, atol=1e-5)
    after = expected_calibration_error(head.predict_probs(new_logits), y)
    assert info["ece_before"] == pytest.approx(before, abs=1e-5)
    assert after == pytest.approx(info["ece_after"], abs=1e-5)
    assert after < before
    # calling it again starts from the calibrated state (logits already / T) and stays calibrated
    info2 = head.post_fit(new_logits, y, xv)
    assert info2["ece_after"] <= after + 1e-9


def test_post_fit_options_and_errors():
    head = _head(calibrate=False)
    assert head.post_fit(torch.zeros(3, 4), torch.tensor([0, 1, 3])) == {}
    assert not bool(head.calibrated)
    head = _head()
    with pytest.raises(ValueError, match="labels"):
        head.post_fit(torch.zeros(3, 4), None)
    with pytest.warns(UserWarning, match="no ROIs"):
        assert head.post_fit(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)) == {}
    assert float(head.temperature) == 1.0
