import numpy as np
import pytest
import torch

from ood_det.regularizers import build_regularizer
from ood_det.regularizers.fpr import (
    FractionalProbabilityRegularizer,
    fractional_targets,
    mix_features,
)


def test_targets_rolled_and_summed_for_repeated_labels():
    labels = torch.tensor([0, 1, 1, 2, 3])
    t = fractional_targets(labels, num_columns=5).numpy()
    # row i collects labels i, i-1, i-2, i-3 (mod 5), 0.25 each; column 4 (background) stays 0
    expected = np.array([
        [0.25, 0.25, 0.25, 0.25, 0.0],  # 0, 3, 2, 1
        [0.25, 0.25, 0.25, 0.25, 0.0],  # 1, 0, 3, 2
        [0.25, 0.50, 0.00, 0.25, 0.0],  # 1, 1, 0, 3  (label 1 twice: 0.5)
        [0.25, 0.50, 0.25, 0.00, 0.0],  # 2, 1, 1, 0
        [0.00, 0.50, 0.25, 0.25, 0.0],  # 3, 2, 1, 1
    ])
    np.testing.assert_allclose(t, expected)
    # four copies of one label: all the mass on it
    np.testing.assert_allclose(fractional_targets(torch.tensor([2, 2, 2, 2]), 4)[0].numpy(), [0, 0, 1, 0])


def test_mix_is_the_mean_of_four_rolled_rows():
    f = torch.arange(10, dtype=torch.float32).reshape(5, 2)
    mixed = mix_features(f).numpy()
    rows = f.numpy()
    for i in range(5):
        np.testing.assert_allclose(mixed[i], rows[[i, i - 1, i - 2, i - 3]].mean(0))


def test_loss_value_uses_confidence_logits(tiny_head):
    head = tiny_head(in_features=4, num_classes=3, conf_scale=10.0)
    reg = FractionalProbabilityRegularizer(alpha=0.6)
    torch.manual_seed(0)
    feats = torch.randn(9, 4, requires_grad=True)
    labels = torch.tensor([0, 3, 1, 1, 3, 2, 0, 3, 2])
    torch.manual_seed(5)
    loss = reg(head, feats, head(feats), labels, None, 0)["loss_fpr"]

    # reference with the same permutation of the foreground rows
    fg = torch.nonzero(labels < 3).squeeze(1)
    torch.manual_seed(5)
    fg = fg[torch.randperm(fg.numel())]
    x = feats.detach().numpy()[fg.numpy()]
    y = labels.numpy()[fg.numpy()]
    n = len(y)
    mixed = np.stack([x[[i, i - 1, i - 2, i - 3]].mean(0) for i in range(n)])
    target = np.zeros((n, 4))
    for i in range(n):
        for j in range(4):
            target[i, y[i - j]] += 0.25
    z = 10.0 * (mixed @ head.linear.weight.detach().numpy().T + head.linear.bias.detach().numpy())
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.where(target > 0, target * (np.log(target) - logp), 0.0).sum() / n
    assert kl > 0
    assert loss.item() == pytest.approx(0.3 * kl, rel=1e-5)
    loss.backward()
    assert head.linear.weight.grad.abs().sum() > 0 and feats.grad.abs().sum() > 0


@pytest.mark.parametrize("n_fg", [0, 3])
def test_too_few_foreground_gives_zero(tiny_head, n_fg):
    head = tiny_head(in_features=4, num_classes=2)
    reg = build_regularizer("fpr")
    labels = torch.tensor([0] * n_fg + [2] * 4)
    feats = torch.randn(len(labels), 4, requires_grad=True)
    loss = reg(head, feats, head(feats), labels, None, 0)["loss_fpr"]
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()


def test_empty_batch(tiny_head):
    head = tiny_head(in_features=4, num_classes=2)
    feats = torch.zeros(0, 4, requires_grad=True)
    loss = build_regularizer("fpr")(head, feats, head(feats), torch.zeros(0, dtype=torch.long), None, 0)
    assert loss["loss_fpr"].item() == 0.0
