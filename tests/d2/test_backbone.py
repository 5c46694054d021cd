"""build_regnet_fpn_backbone: detectron2's RegNet configured as RegNetX-4.0GF + FPN."""
import pytest

pytest.importorskip("detectron2", reason="detectron2 is not installed (it is on no package registry; see docs/detectron2.md)")

import torch  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import BACKBONE_REGISTRY  # noqa: E402

from ood_det.d2 import build_regnet_fpn_backbone, get_ood_d2_cfg  # noqa: E402
from ood_det.d2.backbone import build_regnet_bottom_up  # noqa: E402


def _cfg():
    cfg = get_ood_d2_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_regnet_fpn_backbone"
    cfg.MODEL.FPN.IN_FEATURES = ["s1", "s2", "s3", "s4"]
    return cfg


def test_regnetx_4gf_stages():
    cfg = _cfg()
    net = build_regnet_bottom_up(cfg)
    shapes = net.output_shape()
    # RegNetX-4.0GF (Radosavovic et al. 2020): widths 80/240/560/1360, depths 2/5/14/2
    assert [shapes[f"s{i}"].channels for i in range(1, 5)] == [80, 240, 560, 1360]
    assert [shapes[f"s{i}"].stride for i in range(1, 5)] == [4, 8, 16, 32]
    assert [len(list(getattr(net, f"s{i}").children())) for i in range(1, 5)] == [2, 5, 14, 2]
    # ImageNet RegNetX-4.0GF has 22.1M parameters, 1.36M of them in its 1000-way classifier
    n = sum(p.numel() for p in net.parameters()) / 1e6
    assert 20.5 < n < 21.0, n


def test_fpn_backbone_registered_and_runs():
    assert BACKBONE_REGISTRY.get("build_regnet_fpn_backbone") is build_regnet_fpn_backbone
    cfg = _cfg()
    bb = build_regnet_fpn_backbone(cfg, ShapeSpec(channels=3))
    assert {k: (v.channels, v.stride) for k, v in bb.output_shape().items()} == {
        f"p{i}": (256, 2 ** i) for i in range(2, 7)
    }
    bb.eval()
    with torch.no_grad():
        out = bb(torch.randn(1, 3, 64, 64))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {f"p{i}": (64 >> i, 64 >> i) for i in range(2, 7)}
    # FREEZE_AT = 2: stem and s1 are frozen
    assert not any(p.requires_grad for p in bb.bottom_up.stem.parameters())
    assert not any(p.requires_grad for p in bb.bottom_up.s1.parameters())
    assert all(p.requires_grad for p in bb.bottom_up.s2.parameters())


def test_bad_in_features():
    cfg = _cfg()
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3"]
    with pytest.raises(ValueError, match="res2"):
        build_regnet_fpn_backbone(cfg, ShapeSpec(channels=3))
