"""Helpers shared by the evaluation modules: input conversion, box IoU, ground truth and
detection matching.

Everything here is numpy; torch tensors are accepted wherever arrays are and converted on the
host (``.detach().cpu()``). torch is never imported by this module: a tensor can only exist if
the caller already imported it.

Box convention: ``XYXY_ABS`` in continuous pixel coordinates (no VOC "+1"). detectron2's VOC
loader stores ``x0 - 1, y0 - 1, x1, y1`` of the 1-based XML box and its evaluator adds the 1 back
to predictions before a "+1" IoU, which equals the continuous IoU used here on the stored boxes.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence

import numpy as np

#: detectron2 ``BoxMode`` values understood here
XYXY_ABS = 0
XYWH_ABS = 1


# --------------------------------------------------------------------------- conversion
def to_numpy(x: Any, name: str, dtype=np.float64) -> np.ndarray:
    """``x`` (numpy array, list, scalar or torch tensor) as a numpy array of ``dtype``.

    Half-precision tensors are widened first; errors name ``name``.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        x = x.cpu().numpy()
    try:
        return np.asarray(x, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: cannot convert to a {np.dtype(dtype).name} array ({e})") from None


def finite_1d(x: Any, name: str) -> np.ndarray:
    """A non-empty, all-finite 1-D float64 view of ``x`` (``[N]`` or ``[N, 1]``).

    Raises ``ValueError`` naming ``name`` and how many values are NaN / inf.
    """
    a = to_numpy(x, name)
    if a.ndim > 1 and int(np.prod(a.shape[1:])) != 1:
        raise ValueError(f"{name}: expected a 1-D array of scores, got shape {a.shape}")
    a = a.reshape(-1)
    if a.size == 0:
        raise ValueError(f"{name} is empty: at least one score is needed")
    bad = a.size - int(np.count_nonzero(np.isfinite(a)))
    if bad:
        n_nan = int(np.count_nonzero(np.isnan(a)))
        raise ValueError(
            f"{name} has {bad} non-finite value(s) out of {a.size} "
            f"({n_nan} NaN, {bad - n_nan} inf)"
        )
    return a


# --------------------------------------------------------------------------------- boxes
def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of ``[N, 4]`` and ``[M, 4]`` XYXY boxes -> ``[N, M]`` (0 where the union is empty)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


# -------------------------------------------------------------------------- ground truth
@dataclass
class ImageGT:
    """Ground truth of one image.

    Attributes:
        boxes: ``[M, 4]`` float64 XYXY_ABS.
        labels: ``[M]`` int64, ``0 .. K-1`` known, ``-1`` unknown (OOD) object.
        ignore: ``[M]`` bool, "difficult" (VOC) or ``iscrowd`` (COCO) objects: a detection
            matching one is neither a true nor a false positive, and it is not counted as a miss.
    """

    boxes: np.ndarray
    labels: np.ndarray
    ignore: np.ndarray


def ground_truth(
    dataset_dicts: Iterable[Mapping], num_classes: Optional[int] = None, where: str = "dataset"
) -> Dict[Hashable, ImageGT]:
    """``{image_id: ImageGT}`` from detectron2-style dataset dicts, in dataset order.

    Args:
        dataset_dicts: dicts with ``image_id`` and ``annotations`` (``bbox``, ``bbox_mode`` 0 or 1,
            default 0; ``category_id`` in ``0 .. K-1`` or ``-1``; optional ``difficult`` /
            ``iscrowd``).
        num_classes: K; when given, category ids are checked against it.
        where: a name for error messages (e.g. the split).
    """
    out: Dict[Hashable, ImageGT] = {}
    for i, d in enumerate(dataset_dicts):
        if "image_id" not in d:
            raise ValueError(f"{where}: dataset dict #{i} ({d.get('file_name', '?')}) has no 'image_id'")
        img = d["image_id"]
        if img in out:
            raise ValueError(f"{where}: image_id {img!r} appears twice ({d.get('file_name', '?')})")
        anns = d.get("annotations", []) or []
        boxes = np.zeros((len(anns), 4), dtype=np.float64)
        labels = np.zeros(len(anns), dtype=np.int64)
        ignore = np.zeros(len(anns), dtype=bool)
        for j, ann in enumerate(anns):
            what = f"{where}: image {img!r} ({d.get('file_name', '?')}), annotation #{j}"
            try:
                bb = np.asarray(ann["bbox"], dtype=np.float64).reshape(4)
                cat = int(ann["category_id"])
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"{what}: needs 'bbox' (4 numbers) and 'category_id' ({e!r})") from None
            mode = int(ann.get("bbox_mode", XYXY_ABS))
            if mode == XYWH_ABS:
                bb = np.array([bb[0], bb[1], bb[0] + bb[2], bb[1] + bb[3]])
            elif mode != XYXY_ABS:
                raise ValueError(f"{what}: bbox_mode={mode} is not supported (0 = XYXY_ABS, 1 = XYWH_ABS)")
            if not np.all(np.isfinite(bb)):
                raise ValueError(f"{what}: non-finite bbox {bb.tolist()}")
            if cat < -1 or (num_classes is not None and cat >= num_classes):
                raise ValueError(
                    f"{what}: category_id={cat} outside -1 .. {num_classes - 1 if num_classes else 'K-1'}"
                )
            boxes[j] = bb
            labels[j] = cat
            ignore[j] = bool(ann.get("difficult", 0)) or bool(ann.get("iscrowd", 0))
        out[img] = ImageGT(boxes, labels, ignore)
    return out


# --------------------------------------------------------------------------- predictions
_LABEL_KEYS = ("labels", "classes", "pred_classes")
_SCORE_KEYS = ("scores",)


def _image_prediction(img: Hashable, p: Mapping, num_classes: Optional[int], where: str) -> dict:
    what = f"{where}: image {img!r}"
    if not isinstance(p, Mapping):
        raise ValueError(f"{what}: expected a dict with boxes / labels / scores, got {type(p).__name__}")
    label_key = next((k for k in _LABEL_KEYS if k in p), None)
    missing = [k for k, ok in (("boxes", "boxes" in p), ("labels", label_key), ("scores", "scores" in p)) if not ok]
    if missing:
        raise ValueError(f"{what}: prediction lacks {missing}; has {sorted(p)}")
    boxes = to_numpy(p["boxes"], f"{what} boxes")
    if boxes.size == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what}: boxes must be [N, 4], got shape {boxes.shape}")
    n = boxes.shape[0]
    labels = to_numpy(p[label_key], f"{what} labels", dtype=np.float64).reshape(-1)
    scores = to_numpy(p["scores"], f"{what} scores").reshape(-1)
    if labels.shape[0] != n or scores.shape[0] != n:
        raise ValueError(f"{what}: {n} boxes but {labels.shape[0]} labels and {scores.shape[0]} scores")
    if n and (np.any(labels != np.round(labels)) or labels.min() < 0 or
              (num_classes is not None and labels.max() >= num_classes)):
        bad = labels[(labels != np.round(labels)) | (labels < 0) |
                     (labels >= (num_classes if num_classes is not None else np.inf))]
        raise ValueError(f"{what}: labels must be integers in 0 .. K-1 (K={num_classes}); got {bad[:5].tolist()}")
    if n and not (np.all(np.isfinite(boxes)) and np.all(np.isfinite(scores))):
        raise ValueError(f"{what}: non-finite boxes or scores")
    ood = {}
    for name, v in (p.get("ood_scores") or {}).items():
        a = to_numpy(v, f"{what} ood_scores[{name!r}]").reshape(-1)
        if a.shape[0] != n:
            raise ValueError(f"{what}: ood_scores[{name!r}] has {a.shape[0]} values for {n} boxes")
        ood[name] = a
    out = {"boxes": boxes, "labels": labels.astype(np.int64), "scores": scores, "ood_scores": ood}
    if p.get("roi_conf") is not None:
        rc = to_numpy(p["roi_conf"], f"{what} roi_conf").reshape(-1)
        if rc.shape[0] != n:
            raise ValueError(f"{what}: roi_conf has {rc.shape[0]} values for {n} boxes")
        out["roi_conf"] = rc
    return out


def normalize_predictions(
    predictions: Any, num_classes: Optional[int] = None, where: str = "predictions"
) -> Dict[Hashable, dict]:
    """``{image_id: {"boxes" [N,4], "labels" [N] int64, "scores" [N], "ood_scores" {name: [N]}}}``
    (plus ``"roi_conf" [N]``, the box's proposal maximum foreground probability, when given).

    Accepts a mapping ``image_id -> per-image dict`` (e.g. :class:`~ood_det.evaluation.evaluator.
    Predictions`) or a sequence of per-image dicts that carry ``image_id``. ``labels`` may also be
    called ``classes`` / ``pred_classes``.
    """
    if isinstance(predictions, Mapping):
        items = predictions.items()
    elif isinstance(predictions, (list, tuple)):
        items = []
        for i, p in enumerate(predictions):
            if not isinstance(p, Mapping) or "image_id" not in p:
                raise ValueError(f"{where}: item #{i} is not a dict with an 'image_id'")
            items.append((p["image_id"], p))
    else:
        raise ValueError(
            f"{where}: expected a mapping image_id -> prediction dict or a list of prediction dicts, "
            f"got {type(predictions).__name__}"
        )
    out: Dict[Hashable, dict] = {}
    for img, p in items:
        if img in out:
            raise ValueError(f"{where}: image {img!r} has predictions twice")
        out[img] = _image_prediction(img, p, num_classes, where)
    return out


def check_images(preds: Mapping, gt: Mapping, where: str) -> None:
    """Raise if predictions name images the dataset does not have (a split mix-up)."""
    extra = [k for k in preds if k not in gt]
    if extra:
        raise ValueError(
            f"{where}: {len(extra)} predicted image(s) are not in the dataset dicts, e.g. {extra[:5]}"
        )


# ------------------------------------------------------------------------------ matching
@dataclass
class Matches:
    """Per-detection matching results, flat over all images (image order, then score order).

    Attributes (all ``[M]`` for the M detections kept by the filter):
        image: index of the image in the GT order; det: index of the box in its image's arrays;
        labels, scores: the detection's label and ranking score;
        tp: true positive; ignored: best match is an ignored (difficult / crowd) GT;
        max_iou: IoU with the best eligible GT (0 if none); best_gt: its index in the image (-1).
        npos: ``[C]`` number of non-ignored GT per class (C = K, or 1 when class-agnostic).
    """

    image: np.ndarray
    det: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    tp: np.ndarray
    ignored: np.ndarray
    max_iou: np.ndarray
    best_gt: np.ndarray
    npos: np.ndarray


def match_detections(
    preds: Mapping[Hashable, dict],
    gt: Mapping[Hashable, ImageGT],
    num_classes: int,
    iou_thresh: float = 0.5,
    class_agnostic: bool = False,
    det_filter: Optional[Callable[[dict], np.ndarray]] = None,
    gt_filter: Optional[Callable[[ImageGT], np.ndarray]] = None,
    max_dets: Optional[int] = None,
    progress: Optional[str] = None,
) -> Matches:
    """PASCAL VOC greedy matching (``voc_eval``), vectorised per image.

    Detections of an image are visited by decreasing score. Each is compared with the eligible
    GT of its class (all eligible GT when ``class_agnostic``); with ``j`` its highest-IoU GT
    (first on ties) and ``IoU >= iou_thresh``: an ignored ``j`` makes the detection ignored, an
    unclaimed ``j`` makes it a true positive and claims ``j``, a claimed ``j`` makes it a false
    positive (duplicate). Below the threshold it is a false positive. Because a detection only
    competes with earlier detections *of the same image*, the per-image order equals VOC's global
    order. (VOC's code uses ``IoU > 0.5``; we use ``>=`` as COCO does.)

    Args:
        preds: normalised predictions (:func:`normalize_predictions`); images absent are empty.
        gt: ground truth (:func:`ground_truth`); images of ``preds`` absent from it have no GT.
        num_classes: K (sizes ``npos``).
        det_filter: ``pred -> [N] bool`` detections to evaluate (e.g. not flagged unknown).
        gt_filter: ``ImageGT -> [M] bool`` eligible GT (e.g. ``labels == -1``); default known.
        max_dets: keep at most this many detections per image (highest score first).
        progress: a tqdm description, or None for no progress bar.
    """
    from tqdm import tqdm

    if gt_filter is None:
        gt_filter = lambda g: g.labels >= 0  # noqa: E731
    ncls = 1 if class_agnostic else num_classes
    npos = np.zeros(ncls, dtype=np.int64)
    images = list(gt.keys()) + [k for k in preds if k not in gt]
    cols: Dict[str, List[np.ndarray]] = {k: [] for k in
                                         ("image", "det", "labels", "scores", "tp", "ignored", "max_iou", "best_gt")}
    empty_gt = ImageGT(np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool))
    it = images if progress is None else tqdm(images, desc=progress, leave=False, disable=None)
    for ii, img in enumerate(it):
        g = gt.get(img, empty_gt)
        gmask = np.asarray(gt_filter(g), dtype=bool)
        gboxes, glabels, gign = g.boxes[gmask], g.labels[gmask], g.ignore[gmask]
        if class_agnostic:
            glabels = np.zeros_like(glabels)
        elif len(glabels) and (glabels.min() < 0 or glabels.max() >= num_classes):
            raise ValueError(f"image {img!r}: class-aware matching needs GT labels in 0 .. {num_classes - 1}")
        if len(glabels):
            np.add.at(npos, glabels[~gign], 1)
        p = preds.get(img)
        if p is None or len(p["scores"]) == 0:
            continue
        keep = np.ones(len(p["scores"]), dtype=bool) if det_filter is None else np.asarray(det_filter(p), bool)
        idx = np.flatnonzero(keep)
        order = np.argsort(-p["scores"][idx], kind="stable")
        if max_dets is not None:
            order = order[:max_dets]
        idx = idx[order]
        if len(idx) == 0:
            continue
        dlabels = np.zeros(len(idx), np.int64) if class_agnostic else p["labels"][idx]
        n = len(idx)
        tp = np.zeros(n, dtype=bool)
        ign = np.zeros(n, dtype=bool)
        max_iou = np.zeros(n)
        best = np.full(n, -1, dtype=np.int64)
        if len(gboxes):
            iou = pairwise_iou(p["boxes"][idx], gboxes)
            iou[dlabels[:, None] != glabels[None, :]] = -1.0
            best = iou.argmax(axis=1)
            max_iou = iou[np.arange(n), best]
            best = np.where(max_iou >= 0, best, -1)
            max_iou = np.maximum(max_iou, 0.0)
            hit = (max_iou >= iou_thresh) & (best >= 0)
            ign = hit & gign[np.maximum(best, 0)]
            cand = np.flatnonzero(hit & ~ign)
            if len(cand):
                _, first = np.unique(best[cand], return_index=True)
                tp[cand[first]] = True
        cols["image"].append(np.full(n, ii, dtype=np.int64))
        cols["det"].append(idx)
        cols["labels"].append(dlabels)
        cols["scores"].append(p["scores"][idx])
        cols["tp"].append(tp)
        cols["ignored"].append(ign)
        cols["max_iou"].append(max_iou)
        cols["best_gt"].append(best)
    dtypes = {"image": np.int64, "det": np.int64, "labels": np.int64, "scores": np.float64,
              "tp": bool, "ignored": bool, "max_iou": np.float64, "best_gt": np.int64}
    arrays = {k: (np.concatenate(v) if v else np.zeros(0, dtypes[k])) for k, v in cols.items()}
    return Matches(npos=npos, **arrays)


def pr_curve(scores: np.ndarray, tp: np.ndarray, ignored: np.ndarray, npos: int):
    """Cumulative TP / FP counts of detections ranked by decreasing score (stable on ties).

    Ignored detections are dropped (in VOC they add neither a TP nor an FP, so they only repeat
    the previous point of the curve). Returns ``(sorted_scores, tp_cum, fp_cum, recall,
    precision)``, each ``[M']``; recall is NaN when ``npos == 0``.
    """
    keep = ~ignored
    s = scores[keep]
    order = np.argsort(-s, kind="stable")
    s = s[order]
    t = tp[keep][order]
    tpc = np.cumsum(t, dtype=np.int64)
    fpc = np.arange(1, len(t) + 1, dtype=np.int64) - tpc
    with np.errstate(divide="ignore", invalid="ignore"):
        rec = tpc / float(npos) if npos > 0 else np.full(len(t), np.nan)
        prec = tpc / np.maximum(tpc + fpc, np.finfo(np.float64).eps)
    return s, tpc, fpc, rec, prec


def voc_ap(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool = False) -> float:
    """PASCAL VOC average precision of a PR curve (``[M]`` recall / precision by rank).

    ``use_07_metric``: the VOC2007 11-point metric, mean over ``t in {0, 0.1, .., 1}`` of the
    highest precision at recall ``>= t`` (0 if none). Otherwise the area under the monotone
    precision envelope (VOC2010+): ``sum_i (r_i - r_{i-1}) * max_{j >= i} p_j``.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if use_07_metric:
        ps = []
        for t in np.linspace(0.0, 1.0, 11):
            m = recall >= t
            ps.append(float(precision[m].max()) if m.any() else 0.0)
        return float(np.mean(ps))
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def subset_dicts(dataset_dicts: Sequence[Mapping], image_ids: Iterable[Hashable]) -> List[Mapping]:
    """The dataset dicts whose ``image_id`` is in ``image_ids`` (dataset order kept)."""
    ids = set(image_ids)
    return [d for d in dataset_dicts if d.get("image_id") in ids]
