"""``add_ood_d2_config(cfg)``: the config keys the detectron2 plugin needs.

Usage in one's own detectron2 project::

    from detectron2.config import get_cfg
    from ood_det.d2 import add_ood_d2_config

    cfg = get_cfg()
    add_ood_d2_config(cfg)
    cfg.merge_from_file("configs/VOC-OOD/faster_rcnn_R_50_FPN_isomaxplus.yaml")
"""
from __future__ import annotations

from typing import Optional, Sequence

from detectron2.config import CfgNode as CN

from ..config import add_ood_config

#: RegNetX-4.0GF as parameterised in Radosavovic et al., "Designing Network Design Spaces"
#: (CVPR 2020), the backbone of VOS's RegNet detector.
REGNETX_4GF = dict(DEPTH=23, W_A=38.65, W_0=96, W_M=2.43, GROUP_WIDTH=40, STEM_WIDTH=32)


def add_ood_d2_config(cfg: CN) -> CN:
    """Add ``MODEL.OOD`` / ``DATASETS.OOD_TEST`` / ``TEST.OOD`` (the shared core keys, see
    :func:`ood_det.config.add_ood_config`), ``BACKEND = "detectron2"`` and ``MODEL.REGNET``
    (the parameters of :func:`ood_det.d2.backbone.build_regnet_fpn_backbone`) to a detectron2
    config, in place. Returns ``cfg``. Calling it twice is harmless."""
    if "OOD" not in cfg.MODEL:
        add_ood_config(cfg)
    cfg.BACKEND = "detectron2"
    if "REGNET" not in cfg.MODEL:
        cfg.MODEL.REGNET = CN()
        r = cfg.MODEL.REGNET
        # RegNetX-4.0GF by default (no squeeze-excitation = the "X" family)
        for k, v in REGNETX_4GF.items():
            setattr(r, k, v)
        r.BOTTLENECK_RATIO = 1.0
        r.SE_RATIO = 0.0
        r.STRIDE = 2
        r.NORM = "FrozenBN"
        r.OUT_FEATURES = ["s1", "s2", "s3", "s4"]
        # the FPN's freezing follows MODEL.BACKBONE.FREEZE_AT like the ResNet builder
    return cfg


def get_ood_d2_cfg(config_file: Optional[str] = None, opts: Optional[Sequence[str]] = None) -> CN:
    """A detectron2 default config with the OOD keys, merged with ``config_file`` and ``opts``
    (``["KEY", "VALUE", ...]``)."""
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_ood_d2_config(cfg)
    if config_file:
        cfg.merge_from_file(str(config_file))
    if opts:
        cfg.merge_from_list(list(opts))
    return cfg
