"""ood_det.tv.weights: torchvision detector / ImageNet backbone checkpoints written by the tests."""
import pytest
import torch
import torchvision

from ood_det.tv.weights import load_backbone_weights, load_detector_weights

torch.set_num_threads(1)


def _tv_style_state_dict(model):
    """Our model's state dict under torchvision's own key names (cls_score, background first)."""
    sd = {}
    for k, v in model.state_dict().items():
        if k.startswith("roi_heads.box_predictor.classifier."):
            if ".head.cls_score." in k:
                sd["roi_heads.box_predictor.cls_score." + k.rsplit(".", 1)[1]] = torch.cat([v[-1:], v[:-1]])
            continue
        sd[k] = v.clone()
    return sd


def test_load_torchvision_fasterrcnn_checkpoint(tmp_path, tiny_model):
    """torchvision's own fasterrcnn_resnet50_fpn state dict (random weights) loads key by key."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    torch.manual_seed(0)
    tv = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3)
    path = tmp_path / "fasterrcnn.pth"
    torch.save(tv.state_dict(), path)
    ours, _ = tiny_model("MODEL.RESNETS.DEPTH", "50", "MODEL.RESNETS.NORM", "FrozenBN",
                         "MODEL.FPN.OUT_CHANNELS", "256", "MODEL.ROI_BOX_HEAD.FC_DIM", "1024",
                         "MODEL.ANCHOR_GENERATOR.SIZES", "[[32], [64], [128], [256], [512]]")
    rep = load_detector_weights(ours, str(path))
    assert rep.unexpected == [] and rep.skipped == []
    # only our classifier's own state is left: its buffers
    assert all(k.startswith("roi_heads.box_predictor.classifier.") for k in rep.missing), rep.missing
    sd = ours.state_dict()
    for k in ("backbone.body.layer3.2.conv2.weight", "backbone.fpn.layer_blocks.0.0.weight",
              "rpn.head.conv.0.0.weight", "roi_heads.box_head.fc7.weight", "roi_heads.box_predictor.bbox_pred.weight"):
        assert torch.equal(sd[k], tv.state_dict()[k]), k
    w_tv = tv.state_dict()["roi_heads.box_predictor.cls_score.weight"]
    w_ours = sd["roi_heads.box_predictor.classifier.head.cls_score.weight"]
    assert torch.equal(w_ours[:2], w_tv[1:]) and torch.equal(w_ours[2], w_tv[0])  # background last
    # same logits up to the column permutation on the same features
    x = torch.randn(4, 1024)
    tv_logits, _ = tv.roi_heads.box_predictor(x)
    our_tv_logits, _ = ours.roi_heads.box_predictor(x)
    assert torch.allclose(tv_logits, our_tv_logits, atol=1e-5)


def test_load_detector_weights_other_class_count(tmp_path, tiny_model):
    src, _ = tiny_model()
    path = tmp_path / "det.pth"
    torch.save({"model": _tv_style_state_dict(src)}, path)
    dst, _ = tiny_model("MODEL.ROI_HEADS.NUM_CLASSES", "3", class_names=None)
    rep = load_detector_weights(dst, str(path))
    skipped = {k for k, _, _ in rep.skipped}
    assert skipped == {"roi_heads.box_predictor.bbox_pred.weight", "roi_heads.box_predictor.bbox_pred.bias"}
    assert set(rep.unexpected) == {"roi_heads.box_predictor.cls_score.weight", "roi_heads.box_predictor.cls_score.bias"}
    assert torch.equal(dst.state_dict()["backbone.body.conv1.weight"], src.state_dict()["backbone.body.conv1.weight"])
    assert "shape mismatch" in rep.summary() and "unexpected" in rep.summary()


def test_load_backbone_imagenet_checkpoint(tmp_path, tiny_model):
    torch.manual_seed(1)
    r = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(r.state_dict(), path)
    model, _ = tiny_model()
    rep = load_backbone_weights(model, str(path))
    assert set(rep.unexpected) == {"fc.weight", "fc.bias"}
    assert torch.equal(model.backbone.body.layer4[1].conv2.weight, r.layer4[1].conv2.weight)
    assert torch.equal(model.backbone.body.bn1.running_var, r.bn1.running_var)
    bad = tmp_path / "bad.pth"
    torch.save({"something": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="no tensor matched"):
        load_backbone_weights(model, str(bad))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_backbone_weights(model, str(tmp_path / "nope.pth"))
