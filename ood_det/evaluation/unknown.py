"""Unknown-object (open-set) detection metrics.

A detection is **flagged unknown** when its OOD score is below the unknown threshold
(:func:`~ood_det.evaluation.protocol.unknown_threshold`, 95% of ID validation boxes kept); the
others stay detections of their known class. Ground-truth unknown objects are the annotations
with ``category_id == -1``. Matching is PASCAL VOC's greedy rule at IoU >= 0.5
(:func:`~ood_det.evaluation._common.match_detections`); ``difficult`` / ``iscrowd`` objects are
ignored. Detections are ranked by their box confidence.

* ``ap_u``: class-agnostic AP50 (VOC area metric) of the flagged boxes against the unknown
  objects (flagged boxes on known objects or background are false positives).
* ``ar_u``: recall of the unknown objects at IoU 0.5 with at most ``max_dets`` flagged boxes per
  image (AR_U of OWOD / OpenDet at one IoU).

On a **mixed** split (known and unknown objects; e.g. VOC + COCO, OpenDet's VOC-COCO-T2):

* ``aose``: Absolute Open-Set Error (Miller et al., ICRA 2018; OWOD, OpenDet) = the number of
  known-class (not flagged) boxes whose best unknown-object IoU is >= 0.5, counted per box as
  OpenDet's code does (several boxes on one unknown object count several times);
  ``aose_objects`` counts the distinct unknown objects hit instead.
* ``wi``: Wilderness Impact (Dhamija et al., WACV 2020), ``WI = P_K / P_{K∪U} - 1`` at recall
  ``recall_level`` (0.8). **Our reconstruction:** for each known class, rank its not-flagged
  boxes by confidence and match them to that class's GT on the mixed split; take the first rank
  whose recall is closest to 0.8 and, at that rank, ``TP``, ``FP`` (all false positives) and
  ``FP_U`` (false positives whose best unknown-object IoU is >= 0.5). ``P_{K∪U} = TP / (TP +
  FP)`` is the precision with the unknown objects present; ``P_K = TP / (TP + FP - FP_U)`` is the
  precision had those objects been absent (same rank, hence same recall). Pooling the counts over
  classes, ``WI = sum(FP_U) / sum(TP + FP - FP_U)``.
* ``wi_opendet``: what OWOD's / OpenDet's code computes, ``mean_c(FP_os) / mean_c(TP + FP)``
  where ``FP_os`` counts every box (true positives included) overlapping an unknown object; it
  equals ``1 - P_{K∪U} / P_K`` rather than ``P_K / P_{K∪U} - 1`` (the two agree to first order).
  Use it to compare with published WI numbers.
* ``map_known``: VOC AP50 over the known classes of the not-flagged boxes (OpenDet's mAP_K).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from ._common import (
    check_images,
    ground_truth,
    match_detections,
    normalize_predictions,
    pr_curve,
    voc_ap,
)

__all__ = ["unknown_metrics", "open_set_metrics", "flag_unknown"]


def flag_unknown(pred: Mapping, score_name: Optional[str], threshold: Optional[float]) -> np.ndarray:
    """``[N]`` bool: boxes of one image whose OOD score ``score_name`` is ``< threshold``.

    ``score_name`` / ``threshold`` None: nothing is flagged (the closed-set detector).
    """
    n = len(pred["scores"])
    if score_name is None or threshold is None:
        return np.zeros(n, dtype=bool)
    try:
        s = pred["ood_scores"][score_name]
    except KeyError:
        if n == 0:
            return np.zeros(0, dtype=bool)
        raise ValueError(f"prediction has no OOD score {score_name!r} (has {sorted(pred['ood_scores'])})") from None
    return np.asarray(s) < threshold


def _prepare(predictions, dataset_dicts, num_classes, where):
    gt = ground_truth(dataset_dicts, num_classes, where=f"{where} dataset")
    preds = normalize_predictions(predictions, num_classes, where=f"{where} predictions")
    check_images(preds, gt, where)
    return gt, preds


def _unknown_from(preds, gt, score_name, threshold, iou_thresh, max_dets, conf_thresh, use_07_metric, where):
    m = match_detections(
        preds, gt, 1, iou_thresh=iou_thresh, class_agnostic=True,
        det_filter=lambda p: (p["scores"] >= conf_thresh) & flag_unknown(p, score_name, threshold),
        gt_filter=lambda g: g.labels == -1, max_dets=max_dets, progress=f"{where}: unknown matching",
    )
    npos = int(m.npos[0])
    out = {"ap_u": float("nan"), "ar_u": float("nan"), "num_unknown_gt": npos,
           "num_flagged": int(len(m.scores))}
    if npos > 0:
        _, _, _, rec, prec = pr_curve(m.scores, m.tp, m.ignored, npos)
        out["ap_u"] = voc_ap(rec, prec, use_07_metric) if len(rec) else 0.0
        out["ar_u"] = float(m.tp.sum()) / npos
    return out


def unknown_metrics(
    predictions: Any,
    dataset_dicts: Sequence[Mapping],
    score_name: Optional[str],
    threshold: Optional[float],
    iou_thresh: float = 0.5,
    max_dets: int = 100,
    conf_thresh: float = 0.0,
    use_07_metric: bool = False,
    where: str = "unknown",
) -> Dict[str, Any]:
    """AP_U / AR_U of the boxes flagged unknown (``ood_scores[score_name] < threshold``).

    Args:
        predictions: ``image_id -> {"boxes", "labels", "scores", "ood_scores"}`` on the split.
        dataset_dicts: the split's dataset dicts; unknown objects have ``category_id == -1``.
        conf_thresh: only boxes with confidence ``>=`` this count (0: all, as OpenDet).
        max_dets: flagged boxes per image considered (highest confidence first).

    Returns:
        ``{"ap_u", "ar_u", "num_unknown_gt", "num_flagged"}`` (AP/AR NaN without unknown GT).
    """
    gt, preds = _prepare(predictions, list(dataset_dicts), None, where)
    return _unknown_from(preds, gt, score_name, threshold, iou_thresh, max_dets, conf_thresh, use_07_metric, where)


def open_set_metrics(
    predictions: Any,
    dataset_dicts: Sequence[Mapping],
    class_names: Sequence[str],
    score_name: Optional[str],
    threshold: Optional[float],
    iou_thresh: float = 0.5,
    recall_level: float = 0.8,
    max_dets: int = 100,
    conf_thresh: float = 0.0,
    use_07_metric: bool = False,
    where: str = "mixed",
) -> Dict[str, Any]:
    """WI, AOSE, known mAP and AP_U / AR_U on a split with known and unknown objects.

    See the module docstring for the definitions (WI is our reconstruction of Dhamija et al.;
    ``wi_opendet`` reproduces OpenDet's code). ``score_name`` / ``threshold`` None evaluate the
    closed-set detector (nothing flagged).

    Returns:
        ``{"wi", "wi_opendet", "aose", "aose_objects", "map_known", "ap_u", "ar_u",
        "num_unknown_gt", "num_flagged", "recall_level"}``.
    """
    names = list(class_names)
    k = len(names)
    gt, preds = _prepare(predictions, list(dataset_dicts), k, where)

    def known(p):
        return (p["scores"] >= conf_thresh) & ~flag_unknown(p, score_name, threshold)

    mk = match_detections(preds, gt, k, iou_thresh=iou_thresh, det_filter=known, max_dets=max_dets,
                          progress=f"{where}: known matching")
    mu = match_detections(preds, gt, k, iou_thresh=iou_thresh, class_agnostic=True, det_filter=known,
                          gt_filter=lambda g: g.labels == -1, max_dets=max_dets,
                          progress=f"{where}: open-set matching")
    assert np.array_equal(mk.image, mu.image) and np.array_equal(mk.det, mu.det)
    on_unknown = (mu.best_gt >= 0) & (mu.max_iou >= iou_thresh) & ~mu.ignored
    aose = int(on_unknown.sum())
    hit = np.unique(np.stack([mu.image[on_unknown], mu.best_gt[on_unknown]], axis=1), axis=0)

    aps = []
    tot_all = tot_fpu = tot_os = 0
    for c in range(k):
        npos = int(mk.npos[c])
        sel = (mk.labels == c) & ~mk.ignored
        if npos == 0:
            continue
        _, _, _, rec, prec = pr_curve(mk.scores[sel], mk.tp[sel], mk.ignored[sel], npos)
        aps.append(voc_ap(rec, prec, use_07_metric) if len(rec) else 0.0)
        if len(rec) == 0:
            continue
        order = np.argsort(-mk.scores[sel], kind="stable")
        tp = mk.tp[sel][order]
        unk = on_unknown[sel][order]
        i = int(np.argmin(np.abs(rec - recall_level)))
        n_all = i + 1  # TP + FP at that rank (ignored boxes were dropped)
        tot_all += n_all
        tot_fpu += int(np.sum(unk[: i + 1] & ~tp[: i + 1]))
        tot_os += int(np.sum(unk[: i + 1]))
    wi = tot_fpu / (tot_all - tot_fpu) if tot_all - tot_fpu > 0 else float("nan")
    wi_od = tot_os / tot_all if tot_all > 0 else float("nan")
    out = {
        "wi": float(wi),
        "wi_opendet": float(wi_od),
        "aose": aose,
        "aose_objects": int(len(hit)),
        "map_known": float(np.mean(aps)) if aps else float("nan"),
        "recall_level": float(recall_level),
    }
    out.update(_unknown_from(preds, gt, score_name, threshold, iou_thresh, max_dets, conf_thresh,
                             use_07_metric, where))
    return out
