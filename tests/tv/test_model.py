"""ood_det.tv.model: building, inference API, torchvision ops check."""
import numpy as np
import pytest
import torch
import torchvision

from ood_det.tv.model import check_torchvision_ops

torch.set_num_threads(1)


def test_ops_check_explains_mismatch(monkeypatch):
    check_torchvision_ops()  # the pinned pair works here

    def broken(*a, **k):
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(torchvision.ops, "nms", broken)
    with pytest.raises(RuntimeError) as e:
        check_torchvision_ops()
    msg = str(e.value)
    assert "constraints.txt" in msg and "torch==2.14.1" in msg and "CPU-only" in msg


def test_predict_images_numpy_api(tiny_model):
    model, _ = tiny_model("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (64, 80, 3), dtype=np.uint8), rng.integers(0, 255, (50, 64, 3), dtype=np.uint8)]
    out = model.predict_images(images)
    assert len(out) == 2
    for o, im in zip(out, images):
        n = len(o["boxes"])
        assert o["boxes"].shape == (n, 4) and o["boxes"].dtype == np.float32
        assert o["labels"].dtype == np.int64 and o["scores"].dtype == np.float32
        assert list(o["ood_scores"]) == [model.classifier.score]  # default: the configured score only
        s = o["ood_scores"][model.classifier.score]
        assert s.dtype == np.float32 and o["roi_conf"].dtype == np.float32
        assert len(o["labels"]) == len(o["scores"]) == len(s) == len(o["roi_conf"]) == n
        if n:
            assert o["labels"].min() >= 0 and o["labels"].max() < 2
            assert o["boxes"][:, 2].max() <= im.shape[1] + 1e-3 and o["boxes"][:, 3].max() <= im.shape[0] + 1e-3
    assert model.training is False or model.training is True  # restored, whatever it was
    with pytest.raises(ValueError, match="HxWx3"):
        model.predict_images([np.zeros((8, 8), np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        model.predict_images([np.zeros((8, 8, 3), np.float32)])
    with pytest.raises(ValueError, match="supported: msp, max_logit, energy"):
        model.predict_images(images, scores=["mds"])


def test_predict_images_scores_equal_the_forward_outputs(tiny_model):
    """predict_images returns, for the requested scores, exactly what forward computes (no module
    attribute is changed to choose them)."""
    model, _ = tiny_model("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    model.eval()
    img = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    t = torch.from_numpy(img).permute(2, 0, 1).float() / 255
    with torch.no_grad():
        o = model([t])[0]
    e = model.predict_images([img], scores=["energy", "msp"])[0]
    assert list(e["ood_scores"]) == ["energy", "msp"]
    for n in ("energy", "msp"):
        assert np.allclose(e["ood_scores"][n], o["ood_scores"][n].numpy(), atol=1e-6)
    assert np.allclose(e["roi_conf"], o["roi_conf"].numpy()) and np.allclose(e["boxes"], o["boxes"].numpy())


def test_freeze_at_and_bad_backbone_keys(tiny_model):
    model, _ = tiny_model("MODEL.BACKBONE.FREEZE_AT", "2")
    body = model.backbone.body
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad
    with pytest.raises(ValueError, match="MODEL.RESNETS.DEPTH"):
        tiny_model("MODEL.RESNETS.DEPTH", "20")
    with pytest.raises(ValueError, match="MODEL.RESNETS.NORM"):
        tiny_model("MODEL.RESNETS.NORM", "LN")
