import numpy as np
import pytest

from ood_det.evaluation import plot_ood_scores


def test_plots_write_non_empty_pngs(tmp_path):
    rng = np.random.default_rng(0)
    out = plot_ood_scores(rng.normal(1, 1, 300), rng.normal(0, 1, 200), tmp_path / "plots", name="energy",
                          threshold=0.1)
    assert set(out) == {"hist", "roc"}
    for p in out.values():
        data = p.read_bytes()
        assert p.parent == tmp_path / "plots" and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    assert out["hist"].name == "energy_hist.png" and out["roc"].name == "energy_roc.png"


def test_plots_odd_names_and_constant_scores(tmp_path):
    out = plot_ood_scores([1.0, 1.0], [1.0], tmp_path, name="max logit/T=2")
    assert out["roc"].name == "max_logit_T_2_roc.png" and out["hist"].stat().st_size > 0


def test_plots_reject_bad_scores(tmp_path):
    with pytest.raises(ValueError, match="ood_scores"):
        plot_ood_scores([1.0], [np.nan], tmp_path)
    assert not list(tmp_path.iterdir())
