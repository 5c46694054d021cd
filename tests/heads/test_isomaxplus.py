"""``isomaxplus`` head: logit = -|s| ||ẑ - p̂_j||, loss = CE(10 logits), mds score."""
import math

import pytest
import torch
import torch.nn.functional as F

from ood_det.heads import build_head
from ood_det.heads._utils import normalized_distances


def test_init():
    torch.manual_seed(0)
    head = build_head("isomaxplus", in_features=512, num_classes=20)
    assert head.prototypes.shape == (21, 512)
    assert abs(float(head.prototypes.detach().std()) - 1.0) < 0.02  # N(0, 1)
    assert float(head.distance_scale.detach()) == 1.0


def test_logits_hand_values():
    head = build_head("isomaxplus", in_features=2, num_classes=2)
    with torch.no_grad():
        head.prototypes.copy_(torch.tensor([[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0]]))
        head.distance_scale.fill_(-3.0)  # used as |s|
    z = torch.tensor([[10.0, 0.0]])
    # ẑ = (1, 0): distances to (1,0), (0,1), (-1,0) = 0, sqrt 2, 2
    want = -3.0 * torch.tensor([[0.0, math.sqrt(2.0), 2.0]])
    torch.testing.assert_close(head(z), want, atol=1e-5, rtol=1e-5)


def test_logits_against_direct_formula_and_range():
    torch.manual_seed(1)
    head = build_head("isomaxplus", in_features=16, num_classes=5)
    with torch.no_grad():
        head.distance_scale.fill_(2.5)
    z = torch.randn(40, 16) * 7
    direct = -2.5 * torch.cdist(F.normalize(z), F.normalize(head.prototypes.detach()))
    logits = head(z)
    torch.testing.assert_close(logits, direct, atol=1e-5, rtol=1e-5)
    assert logits.min() >= -2 * 2.5 - 1e-5 and logits.max() <= 1e-3


def test_normalized_distances_helper_matches_cdist():
    torch.manual_seed(2)
    x, y = torch.randn(50, 9) * 3, torch.randn(7, 9)
    x[3] = 0.0  # F.normalize maps 0 to 0: distance = ||ŷ|| = 1
    want = torch.cdist(F.normalize(x), F.normalize(y), compute_mode="donot_use_mm_for_euclid_dist")
    torch.testing.assert_close(normalized_distances(x, y), want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(normalized_distances(x, y)[3], torch.ones(7), atol=1e-6, rtol=0)


def test_loss_is_ce_on_ten_times_logits_and_scores():
    torch.manual_seed(3)
    head = build_head("isomaxplus", in_features=8, num_classes=3)
    z = torch.randn(6, 8)
    y = torch.tensor([0, 1, 2, 3, 3, 0])
    logits = head(z)
    torch.testing.assert_close(head.loss(logits, y)["loss_cls"], F.cross_entropy(10.0 * logits, y))
    fg = logits[:, :3]
    assert head.default_score == "mds"
    torch.testing.assert_close(head.ood_score(logits), fg.max(1).values)
    p = torch.softmax(fg, 1)
    torch.testing.assert_close(head.ood_score(logits, score="entropic"), (p * p.log()).sum(1))
    torch.testing.assert_close(head.predict_probs(logits), torch.softmax(10.0 * logits, 1))
    # scale-1 softmax of the bounded logits is nearly uniform (why the confidence uses E_s)
    assert torch.softmax(logits, 1).max() <= math.exp(0) / (math.exp(0) + 3 * math.exp(-2)) + 1e-6


def test_gradients_reach_prototypes_and_scale():
    torch.manual_seed(4)
    head = build_head("isomaxplus", in_features=8, num_classes=3)
    z = torch.randn(10, 8, requires_grad=True)
    head.loss(head(z), torch.arange(10) % 4)["loss_cls"].backward()
    assert head.prototypes.grad.abs().sum() > 0
    assert head.distance_scale.grad.abs().item() > 0
    assert z.grad.abs().sum() > 0


def test_bad_scale():
    with pytest.raises(ValueError, match="entropic_scale"):
        build_head("isomaxplus", 4, 2, entropic_scale=0.0)
