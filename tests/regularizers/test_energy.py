import math

import numpy as np
import pytest
import torch

from ood_det.regularizers import build_regularizer
from ood_det.regularizers.energy import (
    EnergyMarginLoss,
    EnergyMargins,
    energy_margin_loss,
    free_energy,
)


def test_free_energy_matches_formula():
    logits = torch.tensor([[1.0, 2.0, -1.0], [0.0, 0.0, 0.0], [-3.0, 5.0, 2.0]])
    for t in (1.0, 2.5):
        expected = -t * np.log(np.exp(logits.numpy() / t).sum(1))
        np.testing.assert_allclose(free_energy(logits, t).numpy(), expected, rtol=1e-6)


def test_margin_loss_numbers():
    e_in = torch.tensor([-30.0, -20.0, -24.0])  # relu(E - (-25)) = 0, 5, 1
    e_out = torch.tensor([-10.0, -5.0])  # relu(-7 - E) = 3, 0
    loss = energy_margin_loss(e_in, e_out, -25.0, -7.0)
    assert loss.item() == pytest.approx((0 + 25 + 1) / 3 + (9 + 0) / 2)
    # empty sets contribute nothing
    assert energy_margin_loss(e_in[:0], e_out, -25.0, -7.0).item() == pytest.approx(4.5)
    assert energy_margin_loss(e_in, e_out[:0], -25.0, -7.0).item() == pytest.approx(26 / 3)
    z = energy_margin_loss(e_in[:0], e_out[:0], -25.0, -7.0)
    assert z.item() == 0.0 and torch.isfinite(z)


def test_regularizer_value_with_fixed_margins(tiny_head):
    head = tiny_head(in_features=5, num_classes=3)
    torch.manual_seed(1)
    feats = torch.randn(8, 5, requires_grad=True)
    labels = torch.tensor([0, 1, 3, 2, 3, 0, 1, 3])
    outliers = torch.randn(4, 5)
    reg = EnergyMarginLoss(loss_weight=0.1, m_in=-1.5, m_out=-1.2)
    logits = head(feats)
    out = reg(head, feats, logits, labels, outliers, iteration=0)["loss_energy"]

    fg = (labels < 3).numpy()
    lin = logits.detach().numpy()[fg][:, :3]
    lout = head(outliers).detach().numpy()[:, :3]
    e_in = -np.log(np.exp(lin).sum(1))
    e_out = -np.log(np.exp(lout).sum(1))
    expected = 0.1 * (np.mean(np.maximum(e_in + 1.5, 0) ** 2) + np.mean(np.maximum(-1.2 - e_out, 0) ** 2))
    assert expected > 0
    assert out.item() == pytest.approx(expected, rel=1e-5)
    out.backward()
    assert head.linear.weight.grad.abs().sum() > 0
    assert feats.grad.abs().sum() > 0


def test_derived_margins_are_quantiles_and_frozen():
    m = EnergyMargins(q_in=0.5, q_out=0.95, min_gap=1.0, stats_size=200)
    e = torch.arange(100, dtype=torch.float32)
    m.observe(e)
    assert m.freeze()
    assert m.m_in.item() == pytest.approx(np.quantile(e.numpy(), 0.5))
    assert m.m_out.item() == pytest.approx(np.quantile(e.numpy(), 0.95))
    # frozen: later energies change nothing
    m.observe(torch.full((50,), -1000.0))
    m.freeze()
    assert m.m_in.item() == pytest.approx(49.5)
    assert int(m.stats_count) == 100


def test_derived_margins_cannot_collapse():
    m = EnergyMargins(q_in=0.5, q_out=0.95, min_gap=0.7, stats_size=16)
    assert not m.freeze()  # nothing observed yet: nothing derived
    assert math.isnan(m.m_in.item())
    m.observe(torch.full((10,), -3.0))  # zero spread of ID energies
    m.freeze()
    assert m.m_in.item() == pytest.approx(-3.0)
    assert m.m_out.item() - m.m_in.item() == pytest.approx(0.7)


def test_margins_stay_put_while_training_pushes_id_energies(tiny_head):
    head = tiny_head(in_features=4, num_classes=2)
    reg = EnergyMarginLoss(loss_weight=1.0, stats_size=64)
    torch.manual_seed(0)
    feats = torch.randn(16, 4) + 2.0
    labels = torch.tensor([0, 1] * 8)
    outliers = torch.randn(8, 4) - 2.0
    # warm-up: no outliers, statistics only
    for _ in range(3):
        reg(head, feats, head(feats), labels, None, 0)
    margins = []
    losses = []
    for _ in range(15):
        loss = reg(head, feats, head(feats), labels, outliers, 1)["loss_energy"]
        head.zero_grad()
        loss.backward()
        with torch.no_grad():  # plain SGD step
            for p in head.parameters():
                p -= 0.05 * p.grad
        margins.append((reg.margins.m_in.item(), reg.margins.m_out.item()))
        losses.append(loss.item())
    assert len(set(margins)) == 1  # frozen at the first step with outliers
    m_in, m_out = margins[0]
    assert m_out - m_in >= 1.0
    assert losses[-1] < losses[0]
    with torch.no_grad():
        e_in = free_energy(head(feats)[:, :2])
    assert e_in.median().item() < m_in  # the ID energies moved, the margin did not follow


def test_stats_ring_buffer_wraps():
    m = EnergyMargins(stats_size=5)
    m.observe(torch.tensor([1.0, 2.0, 3.0]))
    m.observe(torch.tensor([4.0, 5.0, 6.0, 7.0]))
    assert sorted(m.stats.tolist()) == [3.0, 4.0, 5.0, 6.0, 7.0]
    assert int(m.stats_count) == 5 and int(m.stats_ptr) == 2
    m.observe(torch.arange(10.0, 22.0))  # more than the buffer: the last 5 survive
    assert sorted(m.stats.tolist()) == [17.0, 18.0, 19.0, 20.0, 21.0]


def test_margins_state_dict_round_trip():
    a = EnergyMargins(stats_size=8)
    a.observe(torch.randn(20))
    a.freeze()
    b = EnergyMargins(stats_size=8)
    b.load_state_dict(a.state_dict())
    assert b.is_frozen
    assert b.m_in.item() == a.m_in.item() and b.m_out.item() == a.m_out.item()


def test_bad_margins_rejected():
    with pytest.raises(ValueError, match="M_IN < M_OUT"):
        EnergyMarginLoss(m_in=-5.0, m_out=-7.0)
    with pytest.raises(ValueError, match="MARGIN_MIN_GAP"):
        EnergyMarginLoss(min_gap=0.0)


@pytest.mark.parametrize("case", ["empty", "no_fg", "no_outliers"])
def test_zero_cases_are_finite_zeros(tiny_head, case):
    head = tiny_head(in_features=4, num_classes=2)
    reg = build_regularizer("energy", m_in=-3.0, m_out=-1.0)
    r = 0 if case == "empty" else 5
    feats = torch.randn(r, 4, requires_grad=True)
    labels = torch.full((r,), 2, dtype=torch.long) if case != "no_outliers" else torch.zeros(r, dtype=torch.long)
    outliers = None if case == "no_outliers" else torch.randn(3, 4)
    loss = reg(head, feats, head(feats), labels, outliers, 0)["loss_energy"]
    assert torch.isfinite(loss) and loss.item() == 0.0
    loss.backward()  # still attached to the graph
    assert head.linear.weight.grad is not None
