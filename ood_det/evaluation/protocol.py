"""The VOS box-level OOD protocol (Du et al., "VOS: Learning what you don't know by virtual outlier
synthesis", ICLR 2022; also used by SIREN, FFS, SAFE, SyncOOD).

1. :func:`f1_optimal_threshold`: a box-confidence threshold from ID validation detections: per
   class, the confidence maximising F1 at IoU 0.5; averaged over classes.
2. :func:`ood_boxes`: keep the boxes whose confidence is ``>=`` that threshold; every kept box on
   an ID image is ID (false positives included), every kept box on an OOD image is OOD; then
   :func:`~ood_det.evaluation.ood_metrics.ood_metrics` for every OOD score.
3. :func:`unknown_threshold`: the OOD-score threshold keeping ``tpr`` (95%) of the ID validation
   boxes, used to flag boxes as unknown at test time.

Differences from VOS' scripts, kept on purpose and documented here:

* Two F1 recipes. ``method="exact"`` (``TEST.OOD.CONF_THRESH: f1``, the DigitsOOD default) uses
  the exact per-class precision/recall curve at IoU 0.5. ``method="vos"`` (``f1_vos``, the VOC-OOD
  configs' default, as VOS's ``compute_average_precision``) reads COCOeval's 101-point
  interpolated precision and scores averaged over the ten IoUs 0.5:0.95 (area all, 100
  detections), takes the score at the F1 maximum of each class, drops zeros, averages over
  classes and rounds to 4 decimals; VOS ran it on the ID *test* set (VOC2007 test, there is no
  held-out split); 0.5831 for VOS' R50.
* Two box filters (``TEST.OOD.CONF_SOURCE``). ``"box"`` (DigitsOOD default): a detection enters the
  OOD metrics when its own class score reaches the threshold. ``"proposal"`` (VOC-OOD default, as
  VOS's code): when the maximum foreground probability of the proposal it came from (``roi_conf``)
  does; a proposal's boxes of other classes then enter too.
* Boxes are kept with ``confidence >= threshold``; VOS' script uses ``>`` (a measure-zero
  difference for continuous scores).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from ._common import check_images, ground_truth, match_detections, normalize_predictions, pr_curve
from .ood_metrics import ood_metrics, threshold_at_tpr

__all__ = ["f1_optimal_threshold", "ood_boxes", "unknown_threshold", "kept_ood_scores", "CONF_SOURCES"]


def _f1_exact(predictions, dataset_dicts, names, iou_thresh):
    k = len(names)
    gt = ground_truth(dataset_dicts, k, where="F1 threshold dataset")
    preds = normalize_predictions(predictions, k, where="F1 threshold predictions")
    check_images(preds, gt, "F1 threshold")
    m = match_detections(preds, gt, k, iou_thresh=iou_thresh, progress="F1 threshold: matching")
    thr, f1 = {}, {}
    for c, name in enumerate(names):
        sel = m.labels == c
        npos = int(m.npos[c])
        thr[name] = f1[name] = float("nan")
        if npos == 0 or not sel.any():
            continue
        s, tpc, fpc, _, _ = pr_curve(m.scores[sel], m.tp[sel], m.ignored[sel], npos)
        if len(s) == 0:
            continue
        # operating points: keep every box with score >= s[i], i the last of a tie group
        ends = np.append(np.flatnonzero(s[1:] != s[:-1]), len(s) - 1)
        tp, fp = tpc[ends], fpc[ends]
        # F1 = 2PR / (P + R) = 2 TP / (TP + FP + npos)
        f = 2.0 * tp / (tp + fp + npos)
        i = int(np.argmax(f))  # first maximum = highest threshold
        if f[i] > 0:
            thr[name], f1[name] = float(s[ends[i]]), float(f[i])
    return thr, f1


def _f1_vos(predictions, dataset_dicts, names):
    from .detection import evaluate_coco

    res = evaluate_coco(predictions, dataset_dicts, names, where="F1 threshold (vos)", return_cocoeval=True)
    ev = res["cocoeval"]
    thr = {n: float("nan") for n in names}
    f1 = dict(thr)
    if ev is None:
        return thr, f1
    # eval["precision"] / ["scores"]: [IoU(10), recall(101), class, area(4), maxDets(3)]
    prec = ev.eval["precision"].mean(0)[:, :, 0, 2]
    scores = ev.eval["scores"].mean(0)[:, :, 0, 2]
    rec = np.asarray(ev.params.recThrs)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        f = 2 * prec * rec / (prec + rec)
    best = f.argmax(0)  # as VOS: a NaN (0/0 at recall 0) wins argmax, giving score 0 -> dropped
    cat_ids = list(ev.params.catIds)
    for n_i, name in enumerate(names):
        col = cat_ids.index(n_i + 1)
        if np.all(prec[:, col] < 0):  # COCOeval's -1: no GT of this class
            continue
        v = float(scores[best[col], col])
        if v != 0:
            thr[name], f1[name] = v, float(f[best[col], col])
    return thr, f1


def f1_optimal_threshold(
    predictions: Any,
    dataset_dicts: Sequence[Mapping],
    class_names: Sequence[str],
    iou_thresh: float = 0.5,
    method: str = "exact",
    return_details: bool = False,
) -> Union[float, Dict[str, Any]]:
    """Box-confidence threshold: the per-class F1-optimal confidence, averaged over classes.

    ``method="exact"``: per class, detections ranked by confidence and matched to GT at
    ``iou_thresh`` (VOC rules, difficult ignored); at every distinct confidence ``t``,
    ``F1(t) = 2 TP / (TP + FP + n_gt)`` for the boxes with confidence ``>= t``; the class's
    threshold is the ``t`` of the highest F1 (the highest such ``t`` on ties). Classes without GT
    or without a true positive are skipped.

    ``method="vos"``: VOS' COCOeval-based recipe (see the module docstring; ``iou_thresh`` is
    unused there).

    Args:
        predictions: ID validation predictions (``image_id -> {"boxes", "labels", "scores"}``).
        dataset_dicts: their ground truth.
        class_names: the K known class names.

    Returns:
        The threshold (float; NaN if no class has a valid one), or with ``return_details`` the
        dict ``{"threshold", "per_class": {name: thr}, "f1": {name: best F1}, "method"}``.
    """
    names = list(class_names)
    dataset_dicts = list(dataset_dicts)
    if method == "exact":
        thr, f1 = _f1_exact(predictions, dataset_dicts, names, iou_thresh)
    elif method == "vos":
        thr, f1 = _f1_vos(predictions, dataset_dicts, names)
    else:
        raise ValueError(f"f1_optimal_threshold: method must be 'exact' or 'vos', got {method!r}")
    valid = [v for v in thr.values() if v == v]
    t = float(np.mean(valid)) if valid else float("nan")
    if method == "vos" and valid:
        t = round(t, 4)  # as VOS's script (np.round(..., 4))
    if return_details:
        return {"threshold": t, "per_class": thr, "f1": f1, "method": method}
    return t


CONF_SOURCES = ("box", "proposal")


def kept_ood_scores(
    predictions: Any, conf_thresh: float = 0.0, score_names: Optional[Sequence[str]] = None,
    where: str = "predictions", conf_source: str = "box",
) -> Dict[str, np.ndarray]:
    """``{score_name: [M]}`` OOD scores of the boxes kept at ``conf_thresh``.

    ``conf_source``: ``"box"`` keeps a box when its own class score is ``>= conf_thresh``;
    ``"proposal"`` (VOS's evaluation code) when the maximum foreground probability of the
    proposal it came from (``roi_conf``) is. ``score_names``: the scores to collect (default: every
    score the first box-carrying image has). A requested score missing from an image with boxes,
    or ``roi_conf`` missing with ``"proposal"``, raises ``ValueError``.
    """
    if conf_source not in CONF_SOURCES:
        raise ValueError(f"conf_source must be one of {CONF_SOURCES} (TEST.OOD.CONF_SOURCE), got {conf_source!r}")
    preds = normalize_predictions(predictions, where=where)
    if score_names is None:
        score_names = next((list(p["ood_scores"]) for p in preds.values() if len(p["scores"])), [])
    out: Dict[str, list] = {n: [] for n in score_names}
    for img, p in preds.items():
        if conf_source == "proposal":
            if len(p["scores"]) and "roi_conf" not in p:
                raise ValueError(f"{where}: image {img!r} has no roi_conf (the proposal's foreground probability), "
                                 "which TEST.OOD.CONF_SOURCE 'proposal' needs: re-run the inference (dumps written "
                                 "before it existed lack it) or use CONF_SOURCE 'box'")
            keep = p.get("roi_conf", p["scores"]) >= conf_thresh
        else:
            keep = p["scores"] >= conf_thresh
        if not keep.any():
            continue
        for n in score_names:
            if n not in p["ood_scores"]:
                raise ValueError(f"{where}: image {img!r} has no OOD score {n!r} (has {sorted(p['ood_scores'])})")
            out[n].append(p["ood_scores"][n][keep])
    return {n: (np.concatenate(v) if v else np.zeros(0)) for n, v in out.items()}


def ood_boxes(
    id_predictions: Any,
    ood_predictions: Any,
    conf_thresh: float,
    score_names: Optional[Sequence[str]] = None,
    tpr: float = 0.95,
) -> Dict[str, Dict[str, float]]:
    """VOS' box-level OOD metrics for every score.

    Args:
        id_predictions: predictions on the ID test images (with ``ood_scores``).
        ood_predictions: predictions on the OOD images.
        conf_thresh: keep boxes with confidence ``>=`` this (e.g. :func:`f1_optimal_threshold`).
        score_names: scores to evaluate (default: those of the ID predictions).
        tpr: TPR of the FPR operating point.

    Returns:
        ``{score_name: ood_metrics(...)}`` (``fpr95, auroc, aupr_in, aupr_out, threshold, n_id,
        n_ood``). Raises ``ValueError`` when no box is kept on one side.
    """
    id_s = kept_ood_scores(id_predictions, conf_thresh, score_names, where="ID predictions")
    names = list(id_s)
    ood_s = kept_ood_scores(ood_predictions, conf_thresh, names, where="OOD predictions")
    out = {}
    for n in names:
        if id_s[n].size == 0 or ood_s[n].size == 0:
            raise ValueError(
                f"ood_boxes: score {n!r}: {id_s[n].size} ID and {ood_s[n].size} OOD boxes have "
                f"confidence >= {conf_thresh}; both must be non-empty"
            )
        out[n] = ood_metrics(id_s[n], ood_s[n], tpr=tpr)
    return out


def unknown_threshold(id_val_scores: Any, tpr: float = 0.95) -> float:
    """OOD-score threshold keeping ``tpr`` of the ID validation boxes.

    The largest ``t`` with ``mean(id_val_scores >= t) >= tpr``; identical to the ``threshold`` of
    :func:`~ood_det.evaluation.ood_metrics.ood_metrics`. Boxes scoring ``< t`` are unknown.
    """
    return threshold_at_tpr(id_val_scores, tpr)
