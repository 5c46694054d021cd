"""The evaluation driver both backends use: a per-box prediction store and the full OOD-detection
evaluation over named splits.

Accumulation (:class:`Predictions`, filled image by image, saved / loaded / merged across
processes) is separate from evaluation (:func:`evaluate_ood_detection`), so that a detectron2
``DatasetEvaluator`` can ``reset`` / ``process`` / ``evaluate`` per dataset and the torchvision
loop can do the same by hand.

Splits (keys of both dicts given to :func:`evaluate_ood_detection`):

* ``"val"``: ID validation; box-confidence threshold (F1) and unknown thresholds come from it.
* ``"test"``: ID test; ID mAP and the ID side of the OOD metrics.
* ``"ood"``: OOD images; the OOD side of the OOD metrics; unknown-object metrics when its dataset
  dicts carry unknown annotations (``category_id == -1``).
* ``"mixed"`` (optional): known + unknown objects; WI, AOSE, AP_U, AR_U, known mAP.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Mapping as _MappingABC
from pathlib import Path
from typing import Any, Dict, Hashable, Iterable, Iterator, List, Mapping, Optional, Sequence, Union

import numpy as np

from ..engine import jsonio
from ._common import _image_prediction, subset_dicts
from .detection import evaluate_coco, evaluate_voc
from .protocol import f1_optimal_threshold, kept_ood_scores, unknown_threshold
from .ood_metrics import ood_metrics
from .unknown import open_set_metrics, unknown_metrics

__all__ = ["Predictions", "evaluate_ood_detection", "format_table", "flatten_results", "summarize", "ID_METRICS"]

_FORMAT = "ood_det.predictions"
_VERSION = 1


class Predictions(_MappingABC):
    """Per-box predictions of one split: ``image_id -> {"boxes", "labels", "scores", "ood_scores"}``.

    A read-only ``Mapping`` in insertion order; every evaluation function accepts it directly.
    Arrays are stored as numpy (float64 boxes / scores, int64 labels), so the store holds no
    tensors and no device memory.

    Args:
        score_names: the OOD score names every image must carry (default: those of the first
            image with boxes).
    """

    def __init__(self, score_names: Optional[Sequence[str]] = None):
        self._images: Dict[Hashable, dict] = {}
        self._score_names: Optional[tuple] = tuple(score_names) if score_names is not None else None

    # ----------------------------------------------------------------- filling
    def add(
        self,
        image_id: Hashable,
        boxes: Any,
        labels: Any,
        scores: Any,
        ood_scores: Optional[Mapping[str, Any]] = None,
        roi_conf: Optional[Any] = None,
    ) -> None:
        """Store one image's detections.

        Args:
            image_id: the dataset dict's ``image_id`` (int or str; JSON-serialisable).
            boxes: ``[N, 4]`` XYXY_ABS in the original image size.
            labels: ``[N]`` in ``0 .. K-1``.
            scores: ``[N]`` box confidence (what thresholding / NMS used).
            ood_scores: ``{score_name: [N]}``, higher = more in-distribution.
            roi_conf: ``[N]`` the maximum foreground probability of the proposal each box came
                from (VOS keeps a box for the OOD metrics when it reaches the confidence threshold).
        """
        if image_id in self._images:
            raise ValueError(f"Predictions.add: image {image_id!r} was already added")
        p = _image_prediction(
            image_id, {"boxes": boxes, "labels": labels, "scores": scores, "ood_scores": ood_scores or {},
                       "roi_conf": roi_conf},
            None, "Predictions.add",
        )
        names = tuple(p["ood_scores"])
        n = len(p["scores"])
        if self._score_names is None and n:
            self._score_names = names
        if self._score_names is not None and n and set(names) != set(self._score_names):
            raise ValueError(
                f"Predictions.add: image {image_id!r} has OOD scores {sorted(names)}, "
                f"expected {sorted(self._score_names)}"
            )
        self._images[image_id] = p

    def merge(self, other: "Predictions") -> "Predictions":
        """Add every image of ``other`` (e.g. gathered from another process); returns self."""
        for img, p in other.items():
            self.add(img, p["boxes"], p["labels"], p["scores"], p["ood_scores"], p.get("roi_conf"))
        return self

    @classmethod
    def concat(cls, parts: Iterable["Predictions"]) -> "Predictions":
        """One store from several (image ids must be distinct)."""
        out = cls()
        for part in parts:
            out.merge(part)
        return out

    # ----------------------------------------------------------------- reading
    def __getitem__(self, image_id: Hashable) -> dict:
        p = self._images[image_id]
        if self._score_names and len(p["scores"]) == 0 and not p["ood_scores"]:
            p = dict(p, ood_scores={n: np.zeros(0) for n in self._score_names})
        return p

    # identity semantics: Mapping's value comparison would compare numpy arrays
    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self._images)

    def __len__(self) -> int:
        return len(self._images)

    @property
    def score_names(self) -> tuple:
        return self._score_names or ()

    @property
    def num_boxes(self) -> int:
        return int(sum(len(p["scores"]) for p in self._images.values()))

    def __repr__(self) -> str:
        return f"Predictions({len(self)} images, {self.num_boxes} boxes, scores={list(self.score_names)})"

    # ------------------------------------------------------------------ saving
    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write a per-box dump: ``.json`` (readable) or anything else as ``.npz`` (uncompressed:
        random floats barely compress and zlib was 4x slower than the write).

        The file is written next to ``path`` and renamed into place, so an interrupted save never
        leaves a half-written dump. Image ids must be ints or strings.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ids = list(self._images)
        for i in ids:
            if not isinstance(i, (int, np.integer, str)) or isinstance(i, bool):
                raise ValueError(f"Predictions.save({path}): image id {i!r} is not an int or a str")
        ids = [int(i) if isinstance(i, (int, np.integer)) else i for i in ids]
        names = list(self.score_names)
        # roi_conf is saved when every image with boxes has it
        with_rc = all("roi_conf" in p for p in self._images.values() if len(p["scores"]))
        fd, tmp = tempfile.mkstemp(dir=str(path.parent), prefix=path.name + ".", suffix=".tmp")
        os.close(fd)
        try:
            if path.suffix == ".json":
                doc = {"format": _FORMAT, "version": _VERSION, "score_names": names, "images": [
                    {"image_id": i, "boxes": p["boxes"].tolist(), "labels": p["labels"].tolist(),
                     "scores": p["scores"].tolist(),
                     "ood_scores": {n: self[i]["ood_scores"][n].tolist() for n in names},
                     **({"roi_conf": p.get("roi_conf", np.zeros(0)).tolist()} if with_rc else {})}
                    for i, p in zip(ids, self._images.values())
                ]}
                with open(tmp, "w", encoding="utf-8") as f:
                    f.write(jsonio.dumps(doc))
            else:
                ps = [self[i] for i in self._images]
                cat = lambda key, shape, dt: (np.concatenate([p[key] for p in ps]).astype(dt)  # noqa: E731
                                              if ps else np.zeros(shape, dt))
                arrays = {
                    "meta": np.array(json.dumps({"format": _FORMAT, "version": _VERSION,
                                                 "score_names": names, "image_ids": ids})),
                    "counts": np.array([len(p["scores"]) for p in ps], dtype=np.int64),
                    "boxes": cat("boxes", (0, 4), np.float64).reshape(-1, 4),
                    "labels": cat("labels", (0,), np.int64),
                    "scores": cat("scores", (0,), np.float64),
                }
                for j, n in enumerate(names):
                    arrays[f"ood_{j}"] = (np.concatenate([p["ood_scores"][n] for p in ps])
                                          if ps else np.zeros(0))
                if with_rc:
                    arrays["roi_conf"] = (np.concatenate([p.get("roi_conf", np.zeros(0)) for p in ps])
                                          if ps else np.zeros(0))
                with open(tmp, "wb") as f:
                    np.savez(f, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Predictions":
        """Read a dump written by :meth:`save` (format chosen by the ``.json`` suffix)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Predictions.load: no file {path}")
        if path.suffix == ".json":
            with open(path, encoding="utf-8") as f:
                doc = json.load(f)
            if doc.get("format") != _FORMAT:
                raise ValueError(f"Predictions.load({path}): not an {_FORMAT} dump (format={doc.get('format')!r})")
            out = cls(doc.get("score_names") or None)
            for im in doc["images"]:
                out.add(im["image_id"], im["boxes"], im["labels"], im["scores"], im.get("ood_scores"),
                        im.get("roi_conf"))
            return out
        with np.load(path, allow_pickle=False) as z:
            try:
                meta = json.loads(str(z["meta"]))
            except KeyError:
                raise ValueError(f"Predictions.load({path}): not an {_FORMAT} dump (no 'meta')") from None
            if meta.get("format") != _FORMAT:
                raise ValueError(f"Predictions.load({path}): not an {_FORMAT} dump")
            names = meta["score_names"]
            counts = z["counts"]
            ends = np.cumsum(counts)
            starts = ends - counts
            boxes, labels, scores = z["boxes"], z["labels"], z["scores"]
            roi_conf = z["roi_conf"] if "roi_conf" in z.files else None
            ood = [z[f"ood_{j}"] for j in range(len(names))]
        out = cls(names or None)
        for i, a, b in zip(meta["image_ids"], starts, ends):
            out.add(i, boxes[a:b], labels[a:b], scores[a:b], {n: o[a:b] for n, o in zip(names, ood)},
                    None if roi_conf is None else roi_conf[a:b])
        return out


# ---------------------------------------------------------------------------- evaluation
def _parse_conf(conf_thresh) -> Union[str, float]:
    if isinstance(conf_thresh, str):
        c = conf_thresh.strip().lower()
        if c in ("f1", "f1_vos"):
            return c
        try:
            return float(c)
        except ValueError:
            raise ValueError(f"conf_thresh must be 'f1', 'f1_vos' or a number, got {conf_thresh!r}") from None
    return float(conf_thresh)


def evaluate_ood_detection(
    dataset_dicts_by_split: Mapping[str, Sequence[Mapping]],
    predictions_by_split: Mapping[str, Any],
    class_names: Sequence[str],
    tpr: float = 0.95,
    conf_thresh: Union[str, float] = "f1",
    score_names: Optional[Sequence[str]] = None,
    iou_thresh: float = 0.5,
    only_predicted_images: bool = False,
    coco: bool = True,
    plot_dir: Optional[Union[str, os.PathLike]] = None,
    unknown_conf_thresh: Union[str, float] = 0.0,
    conf_source: str = "box",
) -> Dict[str, Any]:
    """Full evaluation: ID mAP, the VOS OOD protocol, unknown-object and open-set metrics.

    Args:
        dataset_dicts_by_split: ``{"val"|"test"|"ood"|"mixed": dataset dicts}``.
        predictions_by_split: ``{split: Predictions or mapping image_id -> prediction dict}``.
        class_names: the K known class names.
        tpr: ID recall of the FPR operating point and of the unknown thresholds.
        conf_thresh: ``"f1"`` (exact per-class F1 optimum on val, averaged), ``"f1_vos"`` (VOS'
            COCOeval recipe) or a number; boxes below it are left out of the OOD metrics.
        score_names: OOD scores to evaluate (default: those of the test predictions).
        only_predicted_images: restrict each split's GT to images that have predictions (quick
            runs on part of a dataset); otherwise unpredicted images count as missed.
        coco: also run COCOeval on the test split.
        plot_dir: if given, score histograms and ROC curves per score are written there.
        unknown_conf_thresh: box confidence a detection needs to count in the unknown-object and
            open-set metrics: 0 (default) counts every detection, as OpenDet does; ``"same"``
            uses the OOD protocol's ``conf_thresh``.
        conf_source: which confidence ``conf_thresh`` is compared with for the OOD metrics and the
            unknown thresholds: ``"box"`` (the box's class score) or ``"proposal"`` (the maximum
            foreground probability of its proposal, ``roi_conf``, as VOS's code does).

    Returns:
        A nested dict (fractions in ``[0, 1]``)::

            {"notes": [str], "num_images": {split: n}, "num_boxes": {split: n},
             "detection": {"voc": evaluate_voc(...), "coco": {AP, AP50, AP75, ...}},
             "conf_thresh": float, "conf_thresh_source": str,
             "conf_thresh_per_class": {class: thr},
             "ood": {score: {fpr95, auroc, aupr_in, aupr_out, threshold, n_id, n_ood}},
             "unknown_threshold": {score: float},
             "unknown_conf_thresh": float,
             "unknown": {score: {ap_u, ar_u, num_unknown_gt, num_flagged}},
             "open_set": {"closed_set" | score: {wi, wi_opendet, aose, ...}},
             "plots": {score: [paths]}}

        A missing split skips what needs it, with a line in ``notes``.
    """
    notes: List[str] = []
    names = list(class_names)
    dd = {k: list(v) for k, v in dataset_dicts_by_split.items() if v is not None}
    pp = {k: v for k, v in predictions_by_split.items() if v is not None}
    for split in sorted(set(dd) | set(pp)):
        if split not in ("val", "test", "ood", "mixed"):
            notes.append(f"split {split!r} is not one of val/test/ood/mixed and is ignored")
    if only_predicted_images:
        for k in list(dd):
            if k in pp:
                dd[k] = subset_dicts(dd[k], _image_ids(pp[k]))
    res: Dict[str, Any] = {
        "notes": notes,
        "num_images": {k: len(v) for k, v in pp.items()},
        "num_boxes": {k: int(sum(len(p["scores"]) for p in _values(v))) for k, v in pp.items()},
    }

    def have(split, need_gt=True):
        return split in pp and (not need_gt or split in dd)

    # ---- ID detection accuracy (all detections, detectron2's defaults)
    if have("test"):
        res["detection"] = {"voc": evaluate_voc(pp["test"], dd["test"], names, iou_thresh, where="test")}
        if coco:
            c = evaluate_coco(pp["test"], dd["test"], names, where="test")
            c.pop("cocoeval", None)
            res["detection"]["coco"] = c
    else:
        notes.append("no 'test' split (predictions + dataset dicts): ID mAP skipped")

    # ---- box-confidence threshold
    conf = _parse_conf(conf_thresh)
    if isinstance(conf, float):
        res["conf_thresh"], res["conf_thresh_source"] = conf, "given"
    else:
        method = "vos" if conf == "f1_vos" else "exact"
        src = "val" if have("val") else ("test" if have("test") else None)
        if src is None:
            res["conf_thresh"], res["conf_thresh_source"] = 0.0, "none"
            notes.append("no 'val' or 'test' split with dataset dicts: F1 threshold not computed, "
                         "all boxes are kept (conf_thresh = 0)")
        else:
            if src == "test":
                notes.append("no 'val' split: the F1 confidence threshold is computed on 'test' "
                             "(as VOS' scripts do)")
            det = f1_optimal_threshold(pp[src], dd[src], names, iou_thresh, method=method, return_details=True)
            t = det["threshold"]
            if t != t:
                notes.append(f"F1 threshold undefined on {src!r} (no true positive): conf_thresh = 0")
                t = 0.0
            res["conf_thresh"], res["conf_thresh_source"] = float(t), f"{conf} on {src}"
            res["conf_thresh_per_class"] = det["per_class"]
    thr = res["conf_thresh"]
    res["conf_source"] = conf_source

    # ---- scores
    if score_names is None:
        for split in ("test", "val", "ood", "mixed"):
            if split in pp:
                p = pp[split]
                score_names = list(getattr(p, "score_names", ()) or _first_names(p))
                if score_names:
                    break
    score_names = list(score_names or [])
    if not score_names:
        notes.append("no OOD scores in the predictions: OOD metrics skipped")
    res["score_names"] = score_names

    # ---- unknown thresholds (from val boxes above the confidence threshold)
    res["unknown_threshold"] = {}
    src = "val" if "val" in pp else ("test" if "test" in pp else None)
    if src is None:
        notes.append("no 'val' or 'test' predictions: unknown thresholds not computed")
    elif score_names:
        if src == "test":
            notes.append("no 'val' predictions: unknown thresholds computed on 'test'")
        vs = kept_ood_scores(pp[src], thr, score_names, where=f"{src} predictions", conf_source=conf_source)
        for n in score_names:
            if vs[n].size:
                res["unknown_threshold"][n] = unknown_threshold(vs[n], tpr)
            else:
                notes.append(f"score {n!r}: no {src} box with confidence >= {thr:.4f}: no unknown threshold")

    # ---- VOS OOD metrics
    res["ood"] = {}
    if "test" in pp and "ood" in pp and score_names:
        ids = kept_ood_scores(pp["test"], thr, score_names, where="test predictions", conf_source=conf_source)
        oods = kept_ood_scores(pp["ood"], thr, score_names, where="ood predictions", conf_source=conf_source)
        for n in score_names:
            if ids[n].size == 0 or oods[n].size == 0:
                notes.append(f"score {n!r}: {ids[n].size} ID / {oods[n].size} OOD boxes above "
                             f"conf {thr:.4f}: OOD metrics skipped")
                continue
            res["ood"][n] = ood_metrics(ids[n], oods[n], tpr=tpr)
            if plot_dir is not None:
                from .plots import plot_ood_scores

                res.setdefault("plots", {})[n] = [str(x) for x in plot_ood_scores(
                    ids[n], oods[n], plot_dir, name=n, tpr=tpr,
                    threshold=res["unknown_threshold"].get(n)).values()]
    elif score_names:
        notes.append("OOD metrics need 'test' and 'ood' predictions: skipped")

    # ---- unknown-object metrics on the OOD split, open-set metrics on the mixed split
    res["unknown"], res["open_set"] = {}, {}
    if isinstance(unknown_conf_thresh, str) and unknown_conf_thresh.strip().lower() == "same":
        u_conf = thr
    else:
        try:
            u_conf = float(unknown_conf_thresh)
        except (TypeError, ValueError):
            raise ValueError(f"unknown_conf_thresh must be a number or 'same', got {unknown_conf_thresh!r}") from None
    res["unknown_conf_thresh"] = u_conf
    if have("ood") and score_names:
        if any(a.get("category_id") == -1 for d in dd["ood"] for a in (d.get("annotations") or [])):
            for n in score_names:
                if n in res["unknown_threshold"]:
                    res["unknown"][n] = unknown_metrics(pp["ood"], dd["ood"], n, res["unknown_threshold"][n],
                                                        iou_thresh, conf_thresh=u_conf, where="ood")
        else:
            notes.append("'ood' dataset dicts have no unknown annotations (category_id -1): "
                         "AP_U / AR_U skipped")
    if have("mixed"):
        for n in [None] + score_names:
            t = None if n is None else res["unknown_threshold"].get(n)
            if n is not None and t is None:
                continue
            res["open_set"]["closed_set" if n is None else n] = open_set_metrics(
                pp["mixed"], dd["mixed"], names, n, t, iou_thresh, conf_thresh=u_conf, where="mixed")
    elif "mixed" in pp or "mixed" in dd:
        notes.append("'mixed' needs both predictions and dataset dicts: WI / AOSE skipped")
    return res


def _values(p) -> Iterable[Mapping]:
    if isinstance(p, Mapping):
        return p.values()
    return list(p)


def _image_ids(p) -> list:
    if isinstance(p, Mapping):
        return list(p.keys())
    return [d["image_id"] for d in p]


def _first_names(p) -> list:
    for v in _values(p):
        if len(v.get("scores", ())) and v.get("ood_scores"):
            return list(v["ood_scores"])
    return []


# ------------------------------------------------------------------------------ output
def flatten_results(results: Mapping[str, Any], sep: str = "/") -> Dict[str, float]:
    """Numbers of :func:`evaluate_ood_detection`'s result as a flat ``{"a/b/c": float}`` dict
    (for loggers / detectron2's ``print_csv_format``); strings and lists are left out."""
    out: Dict[str, float] = {}

    def walk(prefix, v):
        if isinstance(v, Mapping):
            for k, x in v.items():
                walk(f"{prefix}{sep}{k}" if prefix else str(k), x)
        elif isinstance(v, (bool, np.bool_)):
            return
        elif isinstance(v, (int, float, np.integer, np.floating)):
            out[prefix] = float(v)

    walk("", results)
    return out


def _pct(v, width=7) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-".rjust(width)
    return f"{100 * v:{width}.2f}"


ID_METRICS = ("voc_ap50", "coco_ap")


def summarize(results: Mapping[str, Any], score: str, id_metric: str = "voc_ap50") -> Dict[str, Any]:
    """The flat summary row of one OOD set for ``score`` (what metrics.json's ``summary`` holds).

    ``id_metric`` names the headline ID accuracy ``id_map``: ``"voc_ap50"`` (VOC AP50, difficult
    objects ignored) or ``"coco_ap"`` (COCO AP@[.5:.95] with difficult objects as ordinary ground
    truth: the number the VOS table reports). Both are always in the row, labelled.
    """
    if id_metric not in ID_METRICS:
        raise ValueError(f"id_metric must be one of {ID_METRICS} (TEST.OOD.ID_METRIC), got {id_metric!r}")
    det = results.get("detection", {})
    voc = det.get("voc", {}).get("map50")
    coco = det.get("coco", {}).get("AP")
    o = results.get("ood", {}).get(score, {})
    return {
        "id_metric": id_metric,
        "id_map": coco if id_metric == "coco_ap" else voc,
        "map50": voc,
        "coco_ap": coco,
        **{m: o.get(m) for m in ("fpr95", "auroc", "aupr_in", "aupr_out")},
        "unknown_threshold": results.get("unknown_threshold", {}).get(score),
        "conf_thresh": results.get("conf_thresh"),
        "conf_source": results.get("conf_source", "box"),
    }


def format_table(results: Mapping[str, Any], id_metric: str = "voc_ap50") -> str:
    """A plain-text summary of :func:`evaluate_ood_detection`'s result (percentages); the ID
    metric ``id_metric`` (see :func:`summarize`) is printed first."""
    lines: List[str] = []
    det = results.get("detection")
    if det:
        v = det["voc"]
        voc = f"VOC AP50 {_pct(v['map50'], 0)} (difficult ignored; VOC07 11-point {_pct(v['map50_07'], 0)})"
        coco = ""
        if "coco" in det:
            c = det["coco"]
            coco = (f"COCO AP@[.5:.95] {_pct(c['AP'], 0)} (difficult as ordinary GT; AP50 {_pct(c['AP50'], 0)}, "
                    f"AP75 {_pct(c['AP75'], 0)})")
        parts = [coco, voc] if (id_metric == "coco_ap" and coco) else [voc, coco]
        lines.append("ID detection (test): " + " | ".join(x for x in parts if x))
    if "conf_thresh" in results:
        src = results.get("conf_source", "box")
        lines.append(f"box-confidence threshold: {results['conf_thresh']:.4f} ({results.get('conf_thresh_source', '')}), "
                     f"compared with {'the proposal' if src == 'proposal' else 'the box'}'s confidence")
    nb = results.get("num_boxes", {})
    if nb:
        lines.append("boxes: " + ", ".join(f"{k} {v}" for k, v in nb.items()))
    ood, unk, thr = results.get("ood", {}), results.get("unknown", {}), results.get("unknown_threshold", {})
    names = [n for n in results.get("score_names", []) if n in ood or n in unk or n in thr]
    if names:
        head = (f"{'score':<10} {'FPR95':>7} {'AUROC':>7} {'AUPR-In':>7} {'AUPR-Out':>8} "
                f"{'n_id':>7} {'n_ood':>7} {'unk.thr':>10} {'AP_U':>7} {'AR_U':>7}")
        lines += ["", head, "-" * len(head)]
        for n in names:
            o, u = ood.get(n, {}), unk.get(n, {})
            t = thr.get(n)
            lines.append(
                f"{n:<10} {_pct(o.get('fpr95'))} {_pct(o.get('auroc'))} {_pct(o.get('aupr_in'))} "
                f"{_pct(o.get('aupr_out'), 8)} {o.get('n_id', '-'):>7} {o.get('n_ood', '-'):>7} "
                f"{(f'{t:10.4f}' if t is not None else '-'.rjust(10))} {_pct(u.get('ap_u'))} {_pct(u.get('ar_u'))}"
            )
    osr = results.get("open_set", {})
    if osr:
        head = (f"{'mixed':<10} {'WI':>7} {'WI(OD)':>7} {'AOSE':>6} {'AOSE-obj':>8} {'mAP_K':>7} "
                f"{'AP_U':>7} {'AR_U':>7}")
        lines += ["", head, "-" * len(head)]
        for n, o in osr.items():
            lines.append(
                f"{n:<10} {_pct(o['wi'])} {_pct(o['wi_opendet'])} {o['aose']:>6} {o['aose_objects']:>8} "
                f"{_pct(o['map_known'])} {_pct(o['ap_u'])} {_pct(o['ar_u'])}"
            )
    for note in results.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
