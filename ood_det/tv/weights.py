"""Load user-supplied weights into :class:`~ood_det.tv.model.OODFasterRCNN` (nothing is downloaded).

* :func:`load_detector_weights`: a full detector checkpoint, ours (``{"model": state_dict, ...}``)
  or torchvision's own key names (e.g. the ``fasterrcnn_resnet50_fpn`` ``.pth``). Every tensor
  whose name and shape fit is loaded; the rest is reported. torchvision's ``cls_score``
  (background first) goes into a head that has a ``cls_score`` linear layer of the same shape,
  rows permuted to background-last; a box predictor with another class count is skipped.
* :func:`load_backbone_weights`: an ImageNet classification ResNet (torchvision key names,
  ``conv1.weight``, ``layer1.0.conv1.weight``, ...) into ``backbone.body``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Tuple

import torch
from torch import nn

from ..engine.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)

_TV_CLS = "roi_heads.box_predictor.cls_score."
_HEAD_CLS = "roi_heads.box_predictor.classifier.head.cls_score."


@dataclass
class LoadReport:
    """What a weight file contributed: names loaded, model tensors left as they were (missing),
    checkpoint tensors with no place in the model (unexpected) and shape mismatches skipped."""

    path: str
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    skipped: List[Tuple[str, tuple, tuple]] = field(default_factory=list)

    def summary(self) -> str:
        def short(names, n=8):
            names = list(names)
            return ", ".join(names[:n]) + (f", ... (+{len(names) - n})" if len(names) > n else "")

        lines = [f"weights {self.path}: loaded {len(self.loaded)} tensors"]
        missing = [k for k in self.missing if not k.endswith("num_batches_tracked")]
        if missing:
            lines.append(f"  missing in checkpoint (kept as initialised), {len(missing)}: {short(missing)}")
        if self.unexpected:
            lines.append(f"  unexpected (ignored), {len(self.unexpected)}: {short(self.unexpected)}")
        if self.skipped:
            lines.append(
                f"  shape mismatch (skipped), {len(self.skipped)}: "
                + short(f"{k} {a}->{b}" for k, a, b in self.skipped)
            )
        return "\n".join(lines)


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """The tensor dict in ``path``: ``ckpt["model"]``, ``ckpt["state_dict"]`` or ``ckpt`` itself."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path} does not exist (MODEL.WEIGHTS / MODEL.BACKBONE.WEIGHTS)")
    ckpt = load_checkpoint(path, require_model=False)
    if isinstance(ckpt, dict):
        for key in ("model", "state_dict"):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise ValueError(f"weights file {path} holds no state dict of tensors")
    # DistributedDataParallel prefix
    if ckpt and all(k.startswith("module.") for k in ckpt):
        ckpt = {k[len("module."):]: v for k, v in ckpt.items()}
    return ckpt


def _load_matching(model: nn.Module, ckpt: Dict[str, torch.Tensor], path: str) -> LoadReport:
    own = model.state_dict()
    report = LoadReport(path=str(path))
    to_load = {}
    for k, v in ckpt.items():
        if k not in own:
            # BatchNorm's counter has no place in FrozenBatchNorm2d (nor any use): not reported
            if not k.endswith("num_batches_tracked"):
                report.unexpected.append(k)
        elif tuple(own[k].shape) != tuple(v.shape):
            report.skipped.append((k, tuple(v.shape), tuple(own[k].shape)))
        else:
            to_load[k] = v
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    report.missing = [k for k in own if k not in to_load]
    return report


def load_detector_weights(model: nn.Module, path: str) -> LoadReport:
    """Load a full detector checkpoint into ``model``, mapping what fits (see module doc)."""
    ckpt = dict(read_state_dict(path))
    num_classes = model.roi_heads.box_predictor.num_classes
    # torchvision's classification layer: background first -> our head's background-last rows
    for suffix in ("weight", "bias"):
        k = _TV_CLS + suffix
        if k in ckpt:
            v = ckpt.pop(k)
            if v.shape[0] == num_classes + 1:
                ckpt[_HEAD_CLS + suffix] = torch.cat([v[1:], v[:1]], dim=0)
            else:
                ckpt[k] = v  # reported as unexpected
    report = _load_matching(model, ckpt, path)
    if any(k.startswith("roi_heads.box_predictor.bbox_pred.") for k, _, _ in report.skipped):
        logger.info(
            "box predictor of %s not loaded: its class count differs from MODEL.ROI_HEADS.NUM_CLASSES=%d",
            path, num_classes,
        )
    logger.info(report.summary())
    return report


def load_backbone_weights(model: nn.Module, path: str) -> LoadReport:
    """Load an ImageNet ResNet classification checkpoint into ``model.backbone.body``."""
    ckpt = read_state_dict(path)
    if any(k.startswith("backbone.body.") for k in ckpt):
        ckpt = {k[len("backbone.body."):]: v for k, v in ckpt.items() if k.startswith("backbone.body.")}
    report = _load_matching(model.backbone.body, ckpt, path)
    logger.info(report.summary())
    if not report.loaded:
        raise ValueError(
            f"MODEL.BACKBONE.WEIGHTS={path}: no tensor matched the ResNet "
            f"backbone of the detector (expected torchvision ResNet key names such as 'layer1.0.conv1.weight')"
        )
    return report
