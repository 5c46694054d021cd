"""``softmax`` head: detectron2's init, linear logits, CE loss, scores over the foreground only."""
import math

import pytest
import torch
import torch.nn.functional as F

from ood_det.heads import build_head


def _head():
    head = build_head("softmax", in_features=2, num_classes=2)
    with torch.no_grad():
        head.cls_score.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        head.cls_score.bias.copy_(torch.tensor([0.0, 0.5, -1.0]))
    return head


def test_init_as_detectron2():
    torch.manual_seed(0)
    head = build_head("softmax", in_features=1024, num_classes=20)
    w, b = head.cls_score.weight, head.cls_score.bias
    assert w.shape == (21, 1024) and b.shape == (21,)
    assert torch.all(b == 0)
    w = w.detach()
    assert abs(float(w.std()) - 0.01) < 0.0005 and abs(float(w.mean())) < 0.0005


def test_logits_and_loss():
    head = _head()
    z = torch.tensor([[2.0, 1.0], [0.0, 0.0]])
    logits = head(z)
    torch.testing.assert_close(logits, torch.tensor([[2.0, 1.5, 2.0], [0.0, 0.5, -1.0]]))
    labels = torch.tensor([0, 2])
    loss = head.loss(logits, labels)["loss_cls"]
    # hand: -log softmax(l)_y averaged over the rows
    l0 = -(2.0 - math.log(math.exp(2.0) + math.exp(1.5) + math.exp(2.0)))
    l1 = -(-1.0 - math.log(1.0 + math.exp(0.5) + math.exp(-1.0)))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))


def test_scores_use_foreground_columns_only():
    head = _head()
    logits = torch.tensor([[2.0, 1.5, 9.0], [0.0, 0.5, -3.0]])
    fg = logits[:, :2]
    p = torch.softmax(fg, 1)
    torch.testing.assert_close(head.ood_score(logits), p.max(1).values)  # default msp
    torch.testing.assert_close(head.ood_score(logits, score="max_logit"), torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(
        head.ood_score(logits, score="energy"),
        torch.log(torch.exp(fg).sum(1)),  # -E(x), E = -logsumexp
    )
    torch.testing.assert_close(head.ood_score(logits, score="entropic"), (p * p.log()).sum(1))
    # the background column does not influence any score
    other = logits.clone()
    other[:, 2] = -50.0
    for s in head.supported_scores:
        torch.testing.assert_close(head.ood_score(other, score=s), head.ood_score(logits, score=s))


def test_confidence_is_plain_softmax_over_all_columns():
    head = _head()
    logits = torch.tensor([[2.0, 1.5, 9.0]])
    torch.testing.assert_close(head.predict_probs(logits), torch.softmax(logits, 1))
