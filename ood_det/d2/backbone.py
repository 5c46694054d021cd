"""RegNet + FPN backbone for detectron2's ``BACKBONE_REGISTRY`` (VOS's RegNetX-4.0GF detector).

Uses detectron2's own :class:`detectron2.modeling.backbone.RegNet`; only the wiring to the yacs
config (``cfg.MODEL.REGNET``, added by :func:`ood_det.d2.config.add_ood_d2_config`) is ours.
The defaults give RegNetX-4.0GF (Radosavovic et al., "Designing Network Design Spaces",
CVPR 2020: depth 23, w_a 38.65, w_0 96, w_m 2.43, group width 40), whose stages ``s1 .. s4``
have 80 / 240 / 560 / 1360 channels at strides 4 / 8 / 16 / 32.

Select it with ``MODEL.BACKBONE.NAME: build_regnet_fpn_backbone`` and
``MODEL.FPN.IN_FEATURES: ["s1", "s2", "s3", "s4"]``. pycls' ImageNet weights (``.pyth``, which
detectron2's checkpointer reads) expect BGR input with ``PIXEL_STD = [57.375, 57.120, 58.395]``;
the VOC-OOD RegNet configs set that.
"""
from __future__ import annotations

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, RegNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from detectron2.modeling.backbone.regnet import ResBottleneckBlock, SimpleStem


def build_regnet_bottom_up(cfg) -> RegNet:
    """The bare RegNet described by ``cfg.MODEL.REGNET`` (RegNetX-4.0GF by default)."""
    r = cfg.MODEL.REGNET
    return RegNet(
        stem_class=SimpleStem,
        stem_width=r.STEM_WIDTH,
        block_class=ResBottleneckBlock,
        depth=r.DEPTH,
        w_a=r.W_A,
        w_0=r.W_0,
        w_m=r.W_M,
        group_width=r.GROUP_WIDTH,
        stride=r.STRIDE,
        bottleneck_ratio=r.BOTTLENECK_RATIO,
        se_ratio=r.SE_RATIO,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        norm=r.NORM,
        out_features=list(r.OUT_FEATURES),
    )


@BACKBONE_REGISTRY.register()
def build_regnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """RegNet (``cfg.MODEL.REGNET``) + FPN (``cfg.MODEL.FPN``) with a max-pooled P6 level,
    the same pyramid as detectron2's ResNet-FPN builder."""
    if input_shape.channels != 3:
        raise ValueError(
            f"build_regnet_fpn_backbone: RegNet's stem takes 3 input channels, "
            f"got MODEL.PIXEL_MEAN of length {input_shape.channels}"
        )
    bottom_up = build_regnet_bottom_up(cfg)
    missing = [f for f in cfg.MODEL.FPN.IN_FEATURES if f not in bottom_up.output_shape()]
    if missing:
        raise ValueError(
            f"MODEL.FPN.IN_FEATURES={list(cfg.MODEL.FPN.IN_FEATURES)}: {missing} not produced by "
            f"the RegNet (MODEL.REGNET.OUT_FEATURES={list(cfg.MODEL.REGNET.OUT_FEATURES)})"
        )
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
