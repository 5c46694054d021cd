"""ID detection accuracy: PASCAL VOC AP50 (VOC2007 11-point and area metrics) and COCO AP.

Inputs (both functions):

* ``predictions``: a mapping ``image_id -> {"boxes": [N, 4] XYXY_ABS, "labels": [N] in 0..K-1,
  "scores": [N] box confidence}`` (e.g. :class:`~ood_det.evaluation.evaluator.Predictions`), or a
  list of such dicts carrying ``image_id``; numpy arrays, lists or torch tensors.
* ``dataset_dicts``: detectron2-style dataset dicts (see :func:`ood_det.evaluation._common.
  ground_truth`); annotations with ``category_id == -1`` (unknown objects) are not ID ground
  truth and are left out here.

All results are fractions in ``[0, 1]`` (detectron2 prints percentages).

VOC (Everingham et al., IJCV 2010; the ``voc_eval`` code detectron2 ships): detections of a class
ranked by score over the whole split, greedily matched at IoU >= 0.5 (see
:func:`~ood_det.evaluation._common.match_detections`); "difficult" (or ``iscrowd``) GT are
ignored. Classes without any non-ignored GT get ``NaN`` AP and are left out of the mean.

COCO (Lin et al., ECCV 2014): pycocotools' ``COCOeval`` on a ``COCO`` object built in memory from
the dataset dicts (category ids ``1..K``, images numbered in dataset order). "difficult" objects
are ordinary GT there; ``iscrowd`` is passed through.
"""
from __future__ import annotations

import contextlib
import io
from typing import Any, Dict, Mapping, Sequence

import numpy as np

from ._common import (
    check_images,
    ground_truth,
    match_detections,
    normalize_predictions,
    pr_curve,
    voc_ap,
)

__all__ = ["evaluate_voc", "evaluate_coco", "build_coco_gt", "voc_ap"]


def _names(class_names: Sequence[str]) -> list:
    names = list(class_names)
    if not names:
        raise ValueError("class_names is empty: the K known class names are needed")
    return names


def evaluate_voc(
    predictions: Any,
    dataset_dicts: Sequence[Mapping],
    class_names: Sequence[str],
    iou_thresh: float = 0.5,
    where: str = "voc",
) -> Dict[str, Any]:
    """PASCAL VOC AP at ``iou_thresh`` per class and their mean, with both VOC metrics.

    Args:
        predictions: see the module docstring.
        dataset_dicts: the split's dataset dicts (all their images count, predicted or not).
        class_names: the K known class names (index = label).
        iou_thresh: matching IoU (0.5 = AP50).

    Returns:
        ``{"map50": mean area AP, "map50_07": mean 11-point AP, "ap50": {name: area AP},
        "ap50_07": {name: 11-point AP}, "num_gt": {name: int}, "num_det": {name: int}}``.
    """
    names = _names(class_names)
    k = len(names)
    gt = ground_truth(dataset_dicts, k, where=f"{where} dataset")
    preds = normalize_predictions(predictions, k, where=f"{where} predictions")
    check_images(preds, gt, where)
    m = match_detections(preds, gt, k, iou_thresh=iou_thresh, progress=f"{where}: matching")
    ap, ap07, ndet = {}, {}, {}
    for c, name in enumerate(names):
        sel = m.labels == c
        ndet[name] = int(sel.sum())
        if m.npos[c] == 0:
            ap[name] = ap07[name] = float("nan")
            continue
        _, _, _, rec, prec = pr_curve(m.scores[sel], m.tp[sel], m.ignored[sel], int(m.npos[c]))
        ap[name] = voc_ap(rec, prec, use_07_metric=False)
        ap07[name] = voc_ap(rec, prec, use_07_metric=True)

    def mean(d):
        v = [x for x in d.values() if x == x]
        return float(np.mean(v)) if v else float("nan")

    return {
        "map50": mean(ap),
        "map50_07": mean(ap07),
        "ap50": ap,
        "ap50_07": ap07,
        "num_gt": {n: int(m.npos[c]) for c, n in enumerate(names)},
        "num_det": ndet,
    }


def build_coco_gt(dataset_dicts: Sequence[Mapping], class_names: Sequence[str], where: str = "coco"):
    """A pycocotools ``COCO`` ground-truth object built in memory (no file).

    Returns ``(coco, image_index)`` where ``image_index`` maps each dataset ``image_id`` to the
    integer COCO image id used inside (``1..I`` in dataset order). Category ``c`` becomes COCO
    category ``c + 1``; unknown objects (``category_id == -1``) are left out.
    """
    from pycocotools.coco import COCO

    names = _names(class_names)
    dataset_dicts = list(dataset_dicts)
    gt = ground_truth(dataset_dicts, len(names), where=f"{where} dataset")
    images, anns, index = [], [], {}
    for i, d in enumerate(dataset_dicts, start=1):
        img = d["image_id"]
        g = gt[img]
        index[img] = i
        images.append({"id": i, "height": d.get("height"), "width": d.get("width")})
        raw = d.get("annotations") or []
        for j in np.flatnonzero(g.labels >= 0):
            x0, y0, x1, y1 = (float(v) for v in g.boxes[j])
            w, h = max(x1 - x0, 0.0), max(y1 - y0, 0.0)
            anns.append({
                "id": len(anns) + 1, "image_id": i, "category_id": int(g.labels[j]) + 1,
                "bbox": [x0, y0, w, h], "area": w * h, "iscrowd": int(bool(raw[j].get("iscrowd", 0))),
            })
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": c + 1, "name": n} for c, n in enumerate(names)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, index


def evaluate_coco(
    predictions: Any,
    dataset_dicts: Sequence[Mapping],
    class_names: Sequence[str],
    where: str = "coco",
    return_cocoeval: bool = False,
) -> Dict[str, Any]:
    """COCO box AP through pycocotools' ``COCOeval`` (AP@[.5:.95], AP50, AP75, by size).

    Returns:
        ``{"AP", "AP50", "AP75", "APs", "APm", "APl", "summary": str}`` as fractions (NaN where
        COCOeval reports -1, e.g. no GT of a size); with ``return_cocoeval`` also ``"cocoeval"``:
        the evaluated ``COCOeval`` object (its ``eval["precision"]`` feeds the VOS F1 threshold).
        No detection at all gives AP 0 without running COCOeval.
    """
    from pycocotools.cocoeval import COCOeval

    names = _names(class_names)
    coco_gt, index = build_coco_gt(dataset_dicts, names, where=where)
    preds = normalize_predictions(predictions, len(names), where=f"{where} predictions")
    check_images(preds, index, where)
    dets = []
    for img, p in preds.items():
        i = index[img]
        b = p["boxes"]
        xywh = np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], axis=1).tolist()
        for bb, c, sc in zip(xywh, (p["labels"] + 1).tolist(), p["scores"].tolist()):
            dets.append({"image_id": i, "category_id": c, "bbox": bb, "score": sc})
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl")
    if not dets:
        out: Dict[str, Any] = {k: 0.0 for k in keys}
        out["summary"] = "no detections"
        if return_cocoeval:
            out["cocoeval"] = None
        return out
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(dets)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(x) if x >= 0 else float("nan") for x in ev.stats[:6]]
    out = dict(zip(keys, stats))
    out["summary"] = "\n".join(line for line in buf.getvalue().splitlines() if "Average" in line)
    if return_cocoeval:
        out["cocoeval"] = ev
    return out
