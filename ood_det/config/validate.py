"""``validate_config(cfg)``: impossible values are refused before a run writes or computes
anything, with the key and the value named. Works on both backends' configs (the keys are
detectron2's names in both)."""
from __future__ import annotations

import logging
import math
from typing import Any, List

__all__ = ["validate_config"]

logger = logging.getLogger(__name__)


def _get(cfg, key: str, default: Any = None) -> Any:
    node = cfg
    for part in key.split("."):
        if not hasattr(node, "get") or part not in node:
            return default
        node = node[part]
    return node


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_config(cfg) -> None:
    """Raise ``ValueError`` listing every impossible value (key = value: why); warn about odd ones."""
    bad: List[str] = []

    def need(key, ok, why):
        v = _get(cfg, key)
        if v is not None and not ok(v):
            bad.append(f"{key} = {v!r}: {why}")

    positive_int = lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0  # noqa: E731
    finite_pos = lambda v: _number(v) and math.isfinite(v) and v > 0  # noqa: E731
    need("SOLVER.IMS_PER_BATCH", positive_int, "must be a positive number of images")
    need("SOLVER.MAX_ITER", lambda v: isinstance(v, int) and v >= 0, "must be an iteration count >= 0")
    need("SOLVER.BASE_LR", finite_pos, "must be a finite learning rate > 0")
    need("SOLVER.MOMENTUM", lambda v: _number(v) and 0 <= v < 1, "must be in [0, 1)")
    need("SOLVER.WEIGHT_DECAY", lambda v: _number(v) and math.isfinite(v) and v >= 0, "must be finite and >= 0")
    need("SOLVER.GAMMA", finite_pos, "must be a finite factor > 0")
    need("SOLVER.WARMUP_ITERS", lambda v: isinstance(v, int) and v >= 0, "must be >= 0")
    need("SOLVER.CHECKPOINT_PERIOD", lambda v: isinstance(v, int) and v >= 0, "must be >= 0 (0 = only the final one)")
    need("TEST.EVAL_PERIOD", lambda v: isinstance(v, int) and v >= 0, "must be >= 0 (0 = only at the end)")
    need("MODEL.ROI_HEADS.NUM_CLASSES", positive_int, "must be a positive number of known classes")
    need("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", positive_int, "must be a positive number of ROIs")
    need("MODEL.ROI_HEADS.POSITIVE_FRACTION", lambda v: _number(v) and 0 < v <= 1, "must be in (0, 1]")
    need("MODEL.ROI_HEADS.SCORE_THRESH_TEST", lambda v: _number(v) and 0 <= v <= 1, "must be in [0, 1]")
    need("MODEL.ROI_HEADS.NMS_THRESH_TEST", lambda v: _number(v) and 0 <= v <= 1, "must be in [0, 1]")
    need("MODEL.RPN.BATCH_SIZE_PER_IMAGE", positive_int, "must be a positive number of anchors")
    need("TEST.DETECTIONS_PER_IMAGE", positive_int, "must be a positive number of boxes")
    need("DATALOADER.NUM_WORKERS", lambda v: isinstance(v, int) and v >= 0, "must be >= 0")
    need("INPUT.MAX_SIZE_TRAIN", positive_int, "must be a positive size in pixels")
    need("INPUT.MAX_SIZE_TEST", positive_int, "must be a positive size in pixels")
    need("INPUT.MIN_SIZE_TEST", lambda v: isinstance(v, int) and v >= 0, "must be a size in pixels >= 0")
    need("INPUT.MIN_SIZE_TRAIN", lambda v: len(v) > 0 and all(isinstance(s, int) and s > 0 for s in v),
         "must be one or more positive sizes in pixels")
    need("TEST.OOD.TPR", lambda v: _number(v) and 0 < v < 1, "must be an ID recall strictly between 0 and 1")
    conf = _get(cfg, "TEST.OOD.CONF_THRESH")
    if conf is not None and not (isinstance(conf, str) and conf.strip().lower() in ("f1", "f1_vos")):
        try:
            c = float(conf)
            if not (math.isfinite(c) and 0 <= c <= 1):
                bad.append(f"TEST.OOD.CONF_THRESH = {conf!r}: a number must be a finite confidence in [0, 1]")
        except (TypeError, ValueError):
            bad.append(f"TEST.OOD.CONF_THRESH = {conf!r}: expected 'f1', 'f1_vos' or a number in [0, 1]")
    need("TEST.OOD.CONF_SOURCE", lambda v: v in ("box", "proposal"), "expected 'box' or 'proposal'")
    need("TEST.OOD.ID_METRIC", lambda v: v in ("voc_ap50", "coco_ap"), "expected 'voc_ap50' or 'coco_ap'")
    steps = _get(cfg, "SOLVER.STEPS")
    max_iter = _get(cfg, "SOLVER.MAX_ITER")
    if steps is not None:
        if any(not isinstance(s, int) or s < 0 for s in steps):
            bad.append(f"SOLVER.STEPS = {steps!r}: must be iteration counts >= 0")
        elif list(steps) != sorted(steps):
            bad.append(f"SOLVER.STEPS = {steps!r}: must be increasing")
        elif isinstance(max_iter, int) and any(s >= max_iter for s in steps):
            logger.warning("SOLVER.STEPS %s reach SOLVER.MAX_ITER %s: those decays never happen", list(steps), max_iter)
    if bad:
        raise ValueError("invalid config value(s):\n  " + "\n  ".join(bad))
