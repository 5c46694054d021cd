"""ood_det.tv.build: the detector, its weights and class names from checkpoints."""
import pytest
import torch

from ood_det.tv.build import build_inference_model, build_model, class_names_from_weights
from ood_det.engine.checkpoint import make_checkpoint, save_checkpoint

torch.set_num_threads(1)


def test_build_model_and_inference_model_from_checkpoint(tiny_cfg, tmp_path):
    cfg = tiny_cfg
    torch.manual_seed(0)
    model = build_model(cfg, ["square", "bar"])
    assert model.class_names == ["square", "bar"] and next(model.parameters()).device.type == "cpu"
    model.classifier.set_threshold("msp", 0.3)
    path = save_checkpoint(make_checkpoint(model, cfg, 5), str(tmp_path / "m.pth"))
    assert class_names_from_weights(path) == ["square", "bar"]
    cfg.merge_from_list(["MODEL.WEIGHTS", path])
    inf = build_inference_model(cfg)
    assert not inf.training and inf.class_names == ["square", "bar"]
    assert inf.classifier.threshold("msp") == pytest.approx(0.3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, inf.state_dict()[k]) or torch.isnan(v).any(), k


def test_missing_weights(tiny_cfg, tmp_path):
    cfg = tiny_cfg
    cfg.MODEL.WEIGHTS = str(tmp_path / "missing.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_model(cfg)
    assert class_names_from_weights(str(tmp_path / "missing.pth")) is None
