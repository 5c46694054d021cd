"""``isomax`` head against its equations: logit_j = -||z - p_j||, loss = CE(10 logits), entropic score."""
import math

import pytest
import torch
import torch.nn.functional as F

from ood_det.heads import build_head


def _head():
    head = build_head("isomax", in_features=2, num_classes=2)
    with torch.no_grad():
        head.prototypes.copy_(torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]]))
    return head


def test_init_zero_prototypes_background_included():
    head = build_head("isomax", in_features=8, num_classes=5)
    assert head.prototypes.shape == (6, 8)  # K + 1: background has its own prototype
    assert torch.all(head.prototypes == 0)
    assert not any("bias" in n for n, _ in head.named_parameters())
    # all prototypes at 0: every logit is -||z||, the loss is log(K + 1)
    z = torch.tensor([[3.0, 4.0, 0, 0, 0, 0, 0, 0]])
    torch.testing.assert_close(head(z), torch.full((1, 6), -5.0))
    loss = head.loss(head(z), torch.tensor([2]))["loss_cls"]
    assert loss.item() == pytest.approx(math.log(6.0), rel=1e-6)


def test_logits_are_negative_euclidean_distances():
    head = _head()
    z = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    # distances: row 0 -> (5, 4, 3); row 1 -> (0, 3, 4)
    torch.testing.assert_close(head(z), -torch.tensor([[5.0, 4.0, 3.0], [0.0, 3.0, 4.0]]))
    # a larger batch: the matrix-product form still equals the direct formula
    torch.manual_seed(0)
    zz = torch.randn(300, 2) * 3
    direct = -(zz[:, None, :] - head.prototypes[None].detach()).norm(dim=-1)
    torch.testing.assert_close(head(zz), direct, atol=1e-4, rtol=1e-4)


def test_loss_is_ce_on_scaled_logits():
    head = _head()
    z = torch.tensor([[3.0, 4.0], [0.5, 0.2], [1.0, 1.0]])
    labels = torch.tensor([2, 0, 1])
    logits = head(z)
    loss = head.loss(logits, labels)["loss_cls"]
    torch.testing.assert_close(loss, F.cross_entropy(10.0 * logits, labels))
    # hand value for the first row alone: logits (-5, -4, -3), label 2
    one = head.loss(logits[:1], labels[:1])["loss_cls"].item()
    assert one == pytest.approx(math.log(1 + math.exp(-20) + math.exp(-10)), rel=1e-3)  # float32
    # a different entropic scale
    head5 = build_head("isomax", in_features=2, num_classes=2, entropic_scale=5.0)
    torch.testing.assert_close(head5.loss(logits, labels)["loss_cls"], F.cross_entropy(5 * logits, labels))


def test_entropic_score_at_scale_one_and_confidence_at_scale_ten():
    head = _head()
    logits = head(torch.tensor([[3.0, 4.0], [1.0, 0.5]]))
    fg = logits[:, :2]
    p = torch.softmax(fg, 1)
    torch.testing.assert_close(head.ood_score(logits), (p * torch.log(p)).sum(1))
    assert head.default_score == "entropic"
    torch.testing.assert_close(head.ood_score(logits, score="mds"), fg.max(1).values)
    torch.testing.assert_close(head.predict_probs(logits), torch.softmax(10 * logits, 1))


def test_gradients_reach_prototypes_from_zero_init():
    head = build_head("isomax", in_features=3, num_classes=2)
    z = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]], requires_grad=True)
    loss = head.loss(head(z), torch.tensor([0, 1, 2]))["loss_cls"]
    loss.backward()
    assert torch.isfinite(head.prototypes.grad).all() and torch.isfinite(z.grad).all()
    # row 0 pulls prototype 0 towards (1, 0, 0): a descent step moves it in +x
    assert head.prototypes.grad[0, 0] < 0
    assert torch.all(z.grad[2] == 0)  # zero distance: cut gradient, not NaN
