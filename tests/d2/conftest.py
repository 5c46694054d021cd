"""Fixtures of the detectron2-plugin tests: a tiny CPU detector config and random batches.

Imports of detectron2 happen inside the fixtures: every test module skips itself with
``pytest.importorskip("detectron2")`` when detectron2 is not installed.
"""
from __future__ import annotations

import pytest
import torch

NUM_CLASSES = 3
IMAGE_SIZE = 64


def make_tiny_cfg(head: str = "softmax", num_classes: int = NUM_CLASSES, **ood):
    """A detectron2 config of a tiny R18-FPN Faster R-CNN (64 px images, 16 ROIs per image,
    64-d box features) with ``OODROIHeads`` and OOD head ``head``."""
    from ood_det.d2 import get_ood_d2_cfg

    cfg = get_ood_d2_cfg()
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.MASK_ON = False
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.NORM = "FrozenBN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 32
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 200
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 100
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 64
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 32
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.NAME = "OODROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 16
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 64
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.INPUT.MIN_SIZE_TRAIN = (IMAGE_SIZE,)
    cfg.INPUT.MAX_SIZE_TRAIN = 2 * IMAGE_SIZE
    cfg.INPUT.MIN_SIZE_TEST = IMAGE_SIZE
    cfg.INPUT.MAX_SIZE_TEST = 2 * IMAGE_SIZE
    cfg.MODEL.OOD.HEAD = head
    for k, v in ood.items():
        setattr(cfg.MODEL.OOD, k, v)
    return cfg


def random_batch(n: int = 2, size: int = IMAGE_SIZE, num_classes: int = NUM_CLASSES, seed: int = 0):
    """``n`` detectron2 inputs (CHW float BGR images) with 1-3 random ground-truth boxes each."""
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(n):
        img = torch.randint(0, 256, (3, size, size), generator=g).float()
        k = int(torch.randint(1, 4, (1,), generator=g))
        xy = torch.randint(0, size // 2, (k, 2), generator=g).float()
        wh = torch.randint(8, size // 2, (k, 2), generator=g).float()
        inst = Instances((size, size))
        inst.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        inst.gt_classes = torch.randint(0, num_classes, (k,), generator=g)
        batch.append({"image": img, "height": size, "width": size, "instances": inst})
    return batch


@pytest.fixture
def d2_tiny_cfg():
    return make_tiny_cfg
