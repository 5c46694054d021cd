"""torchvision Faster R-CNN (ResNet-FPN) with the OOD box classifier of :mod:`ood_det.modeling`.

``build_tv_model(cfg)`` builds :class:`OODFasterRCNN`: torchvision's ``FasterRCNN`` whose box
predictor is an :class:`~ood_det.tv.roi_heads.OODFastRCNNPredictor` (the core
:class:`~ood_det.modeling.box_classifier.OODBoxClassifier` + box regression) inside
:class:`~ood_det.tv.roi_heads.OODRoIHeads`. Nothing is downloaded: backbones start from random
weights unless ``MODEL.BACKBONE.WEIGHTS`` / ``MODEL.WEIGHTS`` name a local checkpoint
(:func:`load_detector_weights`, :func:`load_backbone_weights`).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn
from torchvision.models import resnet as tv_resnet
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FrozenBatchNorm2d, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ..modeling.box_classifier import OODBoxClassifier
from .roi_heads import OODFastRCNNPredictor, OODRoIHeads

logger = logging.getLogger(__name__)

_TV_MISMATCH_HELP = (
    "torchvision's compiled operators do not load (torchvision.ops.nms failed: {err}). This happens "
    "when torch and torchvision are not a matching pair, typically the CPU-only torch wheel next to a "
    "torchvision wheel built for another torch. Reinstall the pinned pair: "
    "pip install -c constraints.txt --force-reinstall torch torchvision   "
    "(constraints.txt pins torch==2.14.1, torchvision==0.29.1; their CUDA build runs fine on a CPU)."
)


def check_torchvision_ops() -> None:
    """Raise a ``RuntimeError`` explaining the torch / torchvision mismatch if ``nms`` cannot run."""
    from torchvision.ops import nms

    try:
        keep = nms(torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]]), torch.tensor([0.9, 0.8]), 0.5)
    except Exception as e:  # RuntimeError: operator torchvision::nms does not exist
        raise RuntimeError(_TV_MISMATCH_HELP.format(err=e)) from e
    if keep.tolist() != [0]:
        raise RuntimeError(_TV_MISMATCH_HELP.format(err=f"wrong result {keep.tolist()}"))


# ------------------------------------------------------------------------------ backbone
def _norm_layer(name: str):
    name = str(name)
    if name == "FrozenBN":
        return FrozenBatchNorm2d
    if name in ("BN", "SyncBN"):
        return nn.BatchNorm2d
    if name == "GN":
        return lambda c: nn.GroupNorm(32, c)
    raise ValueError(f"MODEL.RESNETS.NORM={name!r}: expected FrozenBN, BN, SyncBN or GN")


_RESNET_LAYOUT = {18: ("BasicBlock", (2, 2, 2, 2)), 34: ("BasicBlock", (3, 4, 6, 3)),
                  50: ("Bottleneck", (3, 4, 6, 3)), 101: ("Bottleneck", (3, 4, 23, 3)),
                  152: ("Bottleneck", (3, 8, 36, 3))}


class _ResNet(tv_resnet.ResNet):
    """torchvision's ``ResNet`` body (same module names, so ImageNet checkpoints load) whose stage
    widths are ``width, 2 width, 4 width, 8 width`` instead of 64 .. 512 (no classifier)."""

    def __init__(self, depth: int, width: int, norm_layer):
        nn.Module.__init__(self)
        block_name, layers = _RESNET_LAYOUT[depth]
        block = getattr(tv_resnet, block_name)
        # the attributes torchvision's _make_layer reads
        self._norm_layer, self.inplanes, self.dilation, self.groups, self.base_width = norm_layer, width, 1, 1, 64
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)


def build_resnet_fpn_backbone(depth: int = 50, norm: str = "FrozenBN", freeze_at: int = 0, out_channels: int = 256,
                              width: int = 64):
    """ResNet-``depth`` + FPN (P2-P6), random init. Same construction as torchvision's
    ``resnet_fpn_backbone`` (which fixes the FPN width at 256) with a configurable FPN width and
    stage width (``width`` channels in res2, doubled at each stage; 64 = torchvision's ResNets).

    ``freeze_at`` follows detectron2: 0 trains everything, 1 freezes the stem, k freezes the stem
    and res2 .. res(k); torchvision's ``trainable_layers`` = 5 - freeze_at.
    """
    if depth not in _RESNET_LAYOUT:
        raise ValueError(f"MODEL.RESNETS.DEPTH={depth}: expected 18, 34, 50, 101 or 152")
    if not 0 <= freeze_at <= 5:
        raise ValueError(f"MODEL.BACKBONE.FREEZE_AT={freeze_at}: expected 0..5")
    if int(width) < 8 or int(width) % 8:
        raise ValueError(f"MODEL.RESNETS.WIDTH={width}: expected a multiple of 8, at least 8")
    body = _ResNet(depth, int(width), _norm_layer(norm))
    trainable = ["layer4", "layer3", "layer2", "layer1", "conv1"][: 5 - freeze_at]
    if freeze_at == 0:
        trainable.append("bn1")
    for name, p in body.named_parameters():
        if not any(name.startswith(t) for t in trainable):
            p.requires_grad_(False)
    stage2 = body.inplanes // 8  # 64 (basic blocks) or 256 (bottlenecks)
    in_channels = [stage2 * 2 ** i for i in range(4)]
    return BackboneWithFPN(
        body,
        return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=in_channels,
        out_channels=out_channels,
        extra_blocks=LastLevelMaxPool(),
    )


class _TrainTestTransform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` with separate train / test sizes (INPUT.*_TRAIN / *_TEST)."""

    def __init__(self, min_size_train, max_size_train, min_size_test, max_size_test, image_mean, image_std):
        super().__init__(tuple(min_size_train), max_size_train, image_mean, image_std)
        self._sizes = {
            True: (tuple(int(s) for s in min_size_train), int(max_size_train)),
            False: ((int(min_size_test),), int(max_size_test)),
        }

    def train(self, mode: bool = True):
        self.min_size, self.max_size = self._sizes[bool(mode)]
        return super().train(mode)


# --------------------------------------------------------------------------------- model
class OODFasterRCNN(FasterRCNN):
    """torchvision ``FasterRCNN`` with an OOD box classifier.

    Training: ``model(images, targets)`` with torchvision targets (labels 1..K) -> loss dict.
    Inference: ``model(images)`` -> per image ``boxes`` ``[N, 4]`` (input pixels), ``labels``
    ``[N]`` in ``0 .. K-1``, ``scores`` ``[N]`` (box confidence), ``roi_conf`` ``[N]`` and
    ``ood_scores`` ``{name: [N]}`` for every supported score (higher = more in-distribution).
    :meth:`predict_images` wraps this for numpy images.
    """

    def __init__(
        self,
        backbone: nn.Module,
        classifier: OODBoxClassifier,
        *,
        fc_dim: int = 1024,
        class_names: Optional[Sequence[str]] = None,
        pooler_resolution: int = 7,
        pooler_sampling_ratio: int = 2,
        min_size_train=(800,),
        max_size_train: int = 1333,
        min_size_test: int = 800,
        max_size_test: int = 1333,
        pixel_mean=(123.675, 116.28, 103.53),
        pixel_std=(58.395, 57.12, 57.375),
        anchor_sizes=((32,), (64,), (128,), (256,), (512,)),
        aspect_ratios=((0.5, 1.0, 2.0),),
        rpn_pre_nms_top_n_train: int = 2000,
        rpn_pre_nms_top_n_test: int = 1000,
        rpn_post_nms_top_n_train: int = 1000,
        rpn_post_nms_top_n_test: int = 1000,
        rpn_nms_thresh: float = 0.7,
        rpn_batch_size_per_image: int = 256,
        rpn_positive_fraction: float = 0.5,
        rpn_iou_thresholds=(0.3, 0.7),
        box_batch_size_per_image: int = 512,
        box_positive_fraction: float = 0.25,
        box_iou_threshold: float = 0.5,
        bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        box_detections_per_img: int = 100,
    ):
        check_torchvision_ops()
        anchor_sizes = tuple(tuple(int(s) for s in a) for a in anchor_sizes)
        aspect_ratios = tuple(tuple(float(r) for r in a) for a in aspect_ratios)
        if len(aspect_ratios) == 1:
            aspect_ratios = aspect_ratios * len(anchor_sizes)
        pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=pooler_resolution, sampling_ratio=pooler_sampling_ratio)
        box_head = TwoMLPHead(backbone.out_channels * pooler_resolution**2, fc_dim)
        predictor = OODFastRCNNPredictor(classifier, fc_dim)
        super().__init__(
            backbone,
            num_classes=None,
            rpn_anchor_generator=AnchorGenerator(anchor_sizes, aspect_ratios),
            rpn_pre_nms_top_n_train=rpn_pre_nms_top_n_train,
            rpn_pre_nms_top_n_test=rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_train=rpn_post_nms_top_n_train,
            rpn_post_nms_top_n_test=rpn_post_nms_top_n_test,
            rpn_nms_thresh=rpn_nms_thresh,
            rpn_fg_iou_thresh=rpn_iou_thresholds[1],
            rpn_bg_iou_thresh=rpn_iou_thresholds[0],
            rpn_batch_size_per_image=rpn_batch_size_per_image,
            rpn_positive_fraction=rpn_positive_fraction,
            box_roi_pool=pooler,
            box_head=box_head,
            box_predictor=predictor,
        )
        self.roi_heads = OODRoIHeads(
            pooler,
            box_head,
            predictor,
            box_iou_threshold,
            box_iou_threshold,
            box_batch_size_per_image,
            box_positive_fraction,
            tuple(bbox_reg_weights),
            box_score_thresh,
            box_nms_thresh,
            box_detections_per_img,
        )
        mean = [float(m) / 255.0 for m in pixel_mean]
        std = [float(s) / 255.0 for s in pixel_std]
        self.transform = _TrainTestTransform(min_size_train, max_size_train, min_size_test, max_size_test, mean, std)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(classifier.num_classes)]
        if len(self.class_names) != classifier.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names for MODEL.ROI_HEADS.NUM_CLASSES={classifier.num_classes}"
            )

    # ------------------------------------------------------------------------- config
    @classmethod
    def from_config(cls, cfg, class_names: Optional[Sequence[str]] = None) -> dict:
        m = cfg.MODEL
        if m.BACKBONE.NAME not in ("resnet_fpn", "build_resnet_fpn_backbone"):
            raise ValueError(
                f"MODEL.BACKBONE.NAME={m.BACKBONE.NAME!r}: the torchvision backend builds 'resnet_fpn' only"
            )
        backbone = build_resnet_fpn_backbone(
            m.RESNETS.DEPTH, m.RESNETS.NORM, m.BACKBONE.FREEZE_AT, m.FPN.OUT_CHANNELS, m.RESNETS.WIDTH
        )
        if len(m.ANCHOR_GENERATOR.SIZES) != 5:
            raise ValueError(
                f"MODEL.ANCHOR_GENERATOR.SIZES needs one list per FPN level (5), got {m.ANCHOR_GENERATOR.SIZES}"
            )
        classifier = OODBoxClassifier.from_config(cfg, m.ROI_BOX_HEAD.FC_DIM)
        return dict(
            backbone=backbone,
            classifier=classifier,
            fc_dim=m.ROI_BOX_HEAD.FC_DIM,
            class_names=class_names,
            pooler_resolution=m.ROI_BOX_HEAD.POOLER_RESOLUTION,
            pooler_sampling_ratio=m.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO,
            min_size_train=cfg.INPUT.MIN_SIZE_TRAIN,
            max_size_train=cfg.INPUT.MAX_SIZE_TRAIN,
            min_size_test=cfg.INPUT.MIN_SIZE_TEST,
            max_size_test=cfg.INPUT.MAX_SIZE_TEST,
            pixel_mean=m.PIXEL_MEAN,
            pixel_std=m.PIXEL_STD,
            anchor_sizes=m.ANCHOR_GENERATOR.SIZES,
            aspect_ratios=m.ANCHOR_GENERATOR.ASPECT_RATIOS,
            rpn_pre_nms_top_n_train=m.RPN.PRE_NMS_TOPK_TRAIN,
            rpn_pre_nms_top_n_test=m.RPN.PRE_NMS_TOPK_TEST,
            rpn_post_nms_top_n_train=m.RPN.POST_NMS_TOPK_TRAIN,
            rpn_post_nms_top_n_test=m.RPN.POST_NMS_TOPK_TEST,
            rpn_nms_thresh=m.RPN.NMS_THRESH,
            rpn_batch_size_per_image=m.RPN.BATCH_SIZE_PER_IMAGE,
            rpn_positive_fraction=m.RPN.POSITIVE_FRACTION,
            rpn_iou_thresholds=m.RPN.IOU_THRESHOLDS,
            box_batch_size_per_image=m.ROI_HEADS.BATCH_SIZE_PER_IMAGE,
            box_positive_fraction=m.ROI_HEADS.POSITIVE_FRACTION,
            box_iou_threshold=m.ROI_HEADS.IOU_THRESHOLDS[0],
            bbox_reg_weights=m.ROI_BOX_HEAD.BBOX_REG_WEIGHTS,
            box_score_thresh=m.ROI_HEADS.SCORE_THRESH_TEST,
            box_nms_thresh=m.ROI_HEADS.NMS_THRESH_TEST,
            box_detections_per_img=cfg.TEST.DETECTIONS_PER_IMAGE,
        )

    # ---------------------------------------------------------------------- accessors
    @property
    def classifier(self) -> OODBoxClassifier:
        return self.roi_heads.box_predictor.classifier

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ---------------------------------------------------------------------- inference
    def _to_tensors(self, images: Sequence[np.ndarray]) -> List[torch.Tensor]:
        out = []
        for i, im in enumerate(images):
            im = np.asarray(im)
            if im.ndim != 3 or im.shape[2] != 3:
                raise ValueError(f"image {i}: expected an HxWx3 RGB array, got shape {im.shape}")
            if im.dtype != np.uint8:
                raise ValueError(f"image {i}: expected uint8 pixels, got {im.dtype}")
            t = torch.from_numpy(np.ascontiguousarray(im)).to(self.device)
            out.append(t.permute(2, 0, 1).float().div_(255.0))
        return out

    @torch.no_grad()
    def predict_images(
        self, images: Sequence[np.ndarray], scores: Optional[Sequence[str]] = None, batch_size: int = 4
    ) -> List[Dict[str, object]]:
        """Detect objects in RGB images: the inference contract both backends share.

        Args:
            images: ``H x W x 3`` uint8 RGB arrays (sizes may differ).
            scores: OOD score names (default: the classifier's configured score).
            batch_size: images per forward pass.

        Returns:
            per image ``{"boxes": float32 [N, 4] xyxy input pixels, "labels": int64 [N] in 0..K-1,
            "scores": float32 [N] box confidence, "roi_conf": float32 [N] the box's ROI maximum
            foreground probability, "ood_scores": {name: float32 [N]} higher = more ID}``.
        """
        names = self.classifier.check_scores(scores)
        was_training = self.training
        self.eval()
        try:
            results = []
            for start in range(0, len(images), batch_size):
                for o in self(self._to_tensors(images[start : start + batch_size])):
                    results.append(detections_to_numpy(o, names))
            return results
        finally:
            self.train(was_training)


def detections_to_numpy(output: Dict[str, object], scores: Sequence[str]) -> Dict[str, object]:
    """One image's model output (tensors) as the numpy dict of :meth:`OODFasterRCNN.predict_images`,
    keeping the OOD scores ``scores``."""
    return {
        "boxes": output["boxes"].float().cpu().numpy().reshape(-1, 4),
        "labels": output["labels"].cpu().numpy().astype(np.int64),
        "scores": output["scores"].float().cpu().numpy(),
        "roi_conf": output["roi_conf"].float().cpu().numpy(),
        "ood_scores": {n: output["ood_scores"][n].float().cpu().numpy() for n in scores},
    }


def build_tv_model(cfg, class_names: Optional[Sequence[str]] = None) -> OODFasterRCNN:
    """Build :class:`OODFasterRCNN` from ``cfg`` (not moved to a device, no weights loaded).

    The backbone's convolutions use the channels-last memory format, which oneDNN (CPU) and
    cuDNN (AMP) run faster (about 1.4x per training iteration of ResNet-18-FPN on a CPU).
    """
    model = OODFasterRCNN(**OODFasterRCNN.from_config(cfg, class_names))
    model.backbone.to(memory_format=torch.channels_last)
    return model
