"""ECE against a direct loop and hand values; temperature fitting on a miscalibrated toy set."""
import numpy as np
import pytest
import torch

from ood_det.calibration import expected_calibration_error, fit_temperature, temperature_ece


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: thread hand-offs cost more than they save on a shared 2-core machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _ece_loop(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Straightforward reference: bins (lo, hi] on the max probability."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(float)
    edges = np.linspace(0, 1, n_bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return ece


def _miscalibrated(n=2000, c=5, true_scale=1.5, overconfidence=4.0, seed=0):
    """Labels drawn from softmax(z); the model reports overconfidence * z (needs T ~ 4)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(scale=true_scale, size=(n, c))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    labels = np.array([rng.choice(c, p=row) for row in p])
    return torch.tensor(overconfidence * z, dtype=torch.float32), torch.tensor(labels)


def test_ece_hand_values():
    # all rows at confidence 0.9 (one bin), half of them right: ECE = |0.5 - 0.9| = 0.4
    probs = torch.tensor([[0.9, 0.1]] * 4, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    assert expected_calibration_error(probs, labels) == pytest.approx(0.4, abs=1e-9)
    # perfectly calibrated two-bin case: conf 1.0 right -> 0 error
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert expected_calibration_error(probs, torch.tensor([0, 1])) == pytest.approx(0.0, abs=1e-12)
    # bin edges are (lo, hi]: conf exactly 0.6 with n_bins=5 sits in bin (0.4, 0.6]
    probs = torch.tensor([[0.6, 0.4], [0.7, 0.3]], dtype=torch.float64)
    got = expected_calibration_error(probs, torch.tensor([0, 1]), n_bins=5)
    assert got == pytest.approx(0.5 * abs(1 - 0.6) + 0.5 * abs(0 - 0.7), abs=1e-9)


def test_ece_matches_loop_and_logits_equal_probs():
    logits, labels = _miscalibrated(n=500)
    probs = torch.softmax(logits.double(), 1)
    ref = _ece_loop(probs.numpy(), labels.numpy())
    assert expected_calibration_error(logits, labels) == pytest.approx(ref, abs=1e-9)
    assert expected_calibration_error(probs, labels) == pytest.approx(ref, abs=1e-9)
    assert expected_calibration_error(probs.numpy(), labels.numpy()) == pytest.approx(ref, abs=1e-9)
    # forcing the interpretation
    assert expected_calibration_error(probs, labels, is_probs=True) == pytest.approx(ref, abs=1e-9)
    for n_bins in (1, 10, 20):
        assert expected_calibration_error(logits, labels, n_bins=n_bins) == pytest.approx(
            _ece_loop(probs.numpy(), labels.numpy(), n_bins), abs=1e-9
        )


def test_temperature_ece_vectorised():
    logits, labels = _miscalibrated(n=300)
    ts = torch.tensor([0.05, 0.5, 1.0, 3.0, 40.0])
    got = temperature_ece(logits, labels, ts, chunk=2)
    for t, g in zip(ts, got):
        assert float(g) == pytest.approx(expected_calibration_error(logits / t, labels), abs=1e-6)


def test_fit_temperature_lowers_ece_on_miscalibrated_set():
    logits, labels = _miscalibrated()
    before = expected_calibration_error(logits, labels)
    t, info = fit_temperature(logits, labels, return_info=True)
    after = expected_calibration_error(logits / t, labels)
    assert before > 0.15  # the toy set is badly overconfident
    assert after < 0.3 * before
    assert after == pytest.approx(info["ece"], abs=1e-6)
    assert 2.5 < t < 6.5  # the overconfidence factor was 4
    assert info["ece_init"] == pytest.approx(before, abs=1e-9)
    assert set(info) >= {"ece_lbfgs", "ece_grid", "t_lbfgs", "t_grid", "lbfgs_moved"}
    # here ECE is continuous enough around T = 1 for finite differences: L-BFGS does move
    assert info["lbfgs_moved"] == 1.0
    assert info["ece_lbfgs"] < 0.3 * before


def test_fit_temperature_fallback_when_lbfgs_stalls():
    # saturated logits: max softmax is exactly 1.0 in float64 around T = 1, so the finite-difference
    # gradient is 0 and L-BFGS-B stops at its start; the log-T grid search still finds large T
    logits = torch.tensor([[100.0, 0.0]] * 10)
    labels = torch.tensor([0, 1] * 5)  # half right: ECE(T=1) = |0.5 - 1.0| = 0.5
    t, info = fit_temperature(logits, labels, return_info=True)
    assert info["lbfgs_moved"] == 0.0
    assert info["ece_lbfgs"] == pytest.approx(0.5, abs=1e-9)
    assert t > 20.0
    assert expected_calibration_error(logits / t, labels, is_probs=False) < 0.3


def test_fit_temperature_underconfident_and_bounds():
    logits, labels = _miscalibrated(overconfidence=0.25, seed=1)  # underconfident: needs T < 1
    t = fit_temperature(logits, labels)
    assert t < 0.6
    assert expected_calibration_error(logits / t, labels) < expected_calibration_error(logits, labels)
    # bounds are respected even when the optimum lies outside them
    t = fit_temperature(logits, labels, bounds=(0.9, 2.0))
    assert 0.9 <= t <= 2.0


def test_fit_temperature_never_worse_than_init():
    logits, labels = _miscalibrated(n=200, overconfidence=1.0, seed=2)  # already calibrated
    for init in (0.5, 1.0, 2.0):
        t, info = fit_temperature(logits, labels, init=init, return_info=True)
        assert info["ece"] <= info["ece_init"] + 1e-12
        assert expected_calibration_error(logits / t, labels) == pytest.approx(info["ece"], abs=1e-6)


def test_bad_input():
    logits, labels = _miscalibrated(n=20)
    with pytest.raises(ValueError, match="labels must lie in 0 .. 4"):
        expected_calibration_error(logits, labels + 5)
    with pytest.raises(ValueError, match=r"labels must be \[N\]"):
        expected_calibration_error(logits, labels[:3])
    with pytest.raises(ValueError, match="NaN or inf"):
        bad = logits.clone()
        bad[3, 1] = float("nan")
        fit_temperature(bad, labels)
    with pytest.raises(ValueError, match="N = 0"):
        fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="outside bounds"):
        fit_temperature(logits, labels, init=500.0)
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(logits, labels, bounds=(2.0, 1.0))
    assert expected_calibration_error(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 0.0
