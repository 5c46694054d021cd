"""The score registry against its equations (numpy / scipy references on hand-made logits)."""
import numpy as np
import pytest
import torch
from scipy.special import entr, logsumexp, softmax

from ood_det import scores

LOGITS = np.array(
    [
        [2.0, 0.5, -1.0, 0.0],
        [0.1, 0.1, 0.1, 0.1],  # uniform: least ID-looking for every score but energy/max
        [-3.0, -2.0, -1.0, -4.0],
        [10.0, -10.0, 0.0, 3.0],
    ]
)


def _t(a):
    return torch.tensor(a, dtype=torch.float32)


def test_registry_names():
    assert {"msp", "max_logit", "energy", "entropic", "mds", "mmles", "mmls"} <= set(scores.SCORES)
    # every registered score has a slot in the stored thresholds, and the names are unique
    assert set(scores.SCORES) <= set(scores.SCORE_NAMES)
    assert len(set(scores.SCORE_NAMES)) == len(scores.SCORE_NAMES)


def test_msp():
    ref = softmax(LOGITS, axis=1).max(axis=1)
    np.testing.assert_allclose(scores.compute("msp", _t(LOGITS)).numpy(), ref, rtol=1e-6)
    # hand value: logits [0, log 3] -> p = [1/4, 3/4]
    assert scores.compute("msp", _t([[0.0, np.log(3.0)]])).item() == pytest.approx(0.75, abs=1e-6)


def test_max_logit_and_mds():
    ref = LOGITS.max(axis=1)
    np.testing.assert_allclose(scores.compute("max_logit", _t(LOGITS)).numpy(), ref)
    np.testing.assert_allclose(scores.compute("mds", _t(LOGITS)).numpy(), ref)


def test_energy_is_minus_free_energy():
    # E(x) = -T log sum_j exp(f_j / T), T = 1; the score is -E(x)
    free_energy = -logsumexp(LOGITS, axis=1)
    np.testing.assert_allclose(
        scores.compute("energy", _t(LOGITS)).numpy(), -free_energy, rtol=1e-6
    )
    # hand value: two zero logits -> log 2
    assert scores.compute("energy", torch.zeros(1, 2)).item() == pytest.approx(np.log(2.0), abs=1e-6)


def test_entropic_is_sum_p_log_p():
    p = softmax(LOGITS, axis=1)
    ref = (p * np.log(p)).sum(axis=1)
    np.testing.assert_allclose(scores.compute("entropic", _t(LOGITS)).numpy(), ref, rtol=1e-5)
    np.testing.assert_allclose(ref, -entr(p).sum(axis=1))
    # uniform over 4 classes: -log 4, the minimum
    assert scores.compute("entropic", torch.zeros(1, 4)).item() == pytest.approx(-np.log(4.0), abs=1e-6)


def test_mmles_and_mmls():
    p = softmax(LOGITS, axis=1)
    mmls = LOGITS.max(axis=1) + LOGITS.mean(axis=1)
    mmles = mmls + (p * np.log(p)).sum(axis=1)
    np.testing.assert_allclose(scores.compute("mmls", _t(LOGITS)).numpy(), mmls, rtol=1e-6)
    np.testing.assert_allclose(scores.compute("mmles", _t(LOGITS)).numpy(), mmles, rtol=1e-5)


@pytest.mark.parametrize("name", ["msp", "max_logit", "energy", "entropic", "mds", "mmles", "mmls"])
def test_higher_means_in_distribution(name):
    # one confident (peaked) row vs a flat row of the same mean: the peaked one is more ID
    peaked = torch.tensor([[6.0, 0.0, 0.0, 0.0]])
    flat = torch.full((1, 4), 1.5)
    assert scores.compute(name, peaked).item() > scores.compute(name, flat).item()


@pytest.mark.parametrize("name", ["msp", "max_logit", "energy", "entropic", "mds", "mmles", "mmls"])
def test_empty_and_extreme(name):
    assert scores.compute(name, torch.zeros(0, 5)).shape == (0,)
    big = torch.tensor([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]])
    assert torch.isfinite(scores.compute(name, big)).all()


def test_errors():
    with pytest.raises(KeyError, match="unknown score 'nope'"):
        scores.compute("nope", torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"expects \[R, K\]"):
        scores.compute("msp", torch.zeros(3))
    with pytest.raises(KeyError, match="already registered"):
        scores.register("msp")(lambda x: x)
