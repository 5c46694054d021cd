"""Evaluation of detectron2 OOD detectors through the shared :mod:`ood_det.evaluation` code.

* :class:`OODEvaluator` - a detectron2 ``DatasetEvaluator`` that collects per-box predictions
  (boxes, labels, confidences and *every* OOD score the head supports) into the shared
  :class:`ood_det.evaluation.Predictions` store, gathered over processes.
* :func:`collect_val_rois` - labelled ROIs of the ID validation set (for the head's ``post_fit``:
  DisMax temperature, CFL score standardisation).
* :func:`evaluate_ood` - the driver: ``post_fit`` on ID val, inference on ID val / ID test / every
  ``DATASETS.OOD_TEST`` set, :func:`ood_det.evaluation.evaluate_ood_detection` per OOD set, the
  unknown thresholds (95% ID-val TPR) stored in the model's ``OODBoxClassifier``, score dumps,
  plots and ``metrics.json`` in the output folder -- the same files as the torchvision backend's
  :func:`ood_det.engine.evaluate.evaluate`.

Split roles follow :mod:`ood_det.evaluation.evaluator`: ``val`` = ``TEST.OOD.VAL_DATASET``
(default: the first ``DATASETS.TEST``), ``test`` = the first ``DATASETS.TEST``, ``ood`` / ``mixed``
= each ``DATASETS.OOD_TEST`` by its catalog ``distribution``.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional, Sequence

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.data.dataset_mapper import DatasetMapper
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from tqdm import tqdm

from ..evaluation import Predictions, evaluate_ood_detection, flatten_results, format_table
from ..heads.base import OODHead
from .inference import find_ood_predictor

__all__ = ["OODEvaluator", "collect_val_rois", "evaluate_ood", "evaluate_id", "flat_metrics",
           "SCORE_FIELD_PREFIX"]

logger = logging.getLogger(__name__)

#: ``Instances`` fields ``ood_score_<name>`` carry every score while evaluating
SCORE_FIELD_PREFIX = "ood_score_"


def _unwrap(model):
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


class OODEvaluator(DatasetEvaluator):
    """Collects detectron2 outputs into a :class:`Predictions` store.

    Reads ``instances.pred_boxes / pred_classes / scores`` and the OOD scores: every
    ``ood_score_<name>`` field (set when the predictor's ``extra_score_names`` is non-empty, as
    :func:`evaluate_ood` does), else the single ``ood_scores`` field under ``default_score``.

    Args:
        dataset_name: for logs and the dump file name.
        default_score: the name given to a lone ``ood_scores`` field.
        distributed: gather the predictions of all processes on the main one.
        output_dir: if given, :meth:`evaluate` dumps the predictions to
            ``output_dir/<dataset_name>.npz``.

    After :meth:`evaluate`, :attr:`predictions` holds the (gathered) store on the main process
    (None elsewhere); :meth:`evaluate` itself returns only counts (floats), so the evaluator also
    works inside detectron2's own ``DefaultTrainer.test``.
    """

    def __init__(
        self,
        dataset_name: str = "",
        default_score: str = "ood",
        distributed: bool = True,
        output_dir: Optional[str] = None,
    ):
        self.dataset_name = dataset_name
        self.default_score = default_score
        self.distributed = distributed
        self.output_dir = output_dir
        self.predictions: Optional[Predictions] = None
        self._store = Predictions()

    def reset(self):
        self._store = Predictions()
        self.predictions = None

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            inst = out["instances"].to("cpu")
            fields = inst.get_fields()
            scores = {
                k[len(SCORE_FIELD_PREFIX):]: v.numpy()
                for k, v in fields.items()
                if k.startswith(SCORE_FIELD_PREFIX)
            }
            if not scores and "ood_scores" in fields:
                scores = {self.default_score: fields["ood_scores"].numpy()}
            self._store.add(
                inp["image_id"],
                inst.pred_boxes.tensor.numpy(),
                inst.pred_classes.numpy(),
                inst.scores.numpy(),
                scores,
            )

    def evaluate(self):
        store = self._store
        if self.distributed and comm.get_world_size() > 1:
            comm.synchronize()
            parts = comm.gather(store, dst=0)
            if not comm.is_main_process():
                return {}
            store = Predictions.concat(parts)
        self.predictions = store
        if self.output_dir:
            name = self.dataset_name or "dataset"
            store.save(os.path.join(self.output_dir, f"{name}.npz"))
        return {"ood_det": {"num_images": float(len(store)), "num_boxes": float(store.num_boxes)}}


# ------------------------------------------------------------------------------ ROIs
class _LabelledMapper:
    """Test-time resize, keeping the known-class annotations (unknowns dropped) as Instances."""

    def __init__(self, cfg):
        self.mapper = DatasetMapper(
            is_train=True,
            augmentations=[T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
            image_format=cfg.INPUT.FORMAT,
            use_instance_mask=False,
        )

    def __call__(self, d):
        d = dict(d)
        d["annotations"] = [a for a in d.get("annotations", []) if a.get("category_id", -1) >= 0]
        return self.mapper(d)


@torch.no_grad()
def collect_val_rois(cfg, model, dataset_name: str, max_images: Optional[int] = None):
    """Box-head logits and labels of proposals on ``dataset_name`` (ID validation data).

    Proposals come from the model's RPN at test settings and are labelled and sampled exactly as
    in training (``roi_heads.label_and_sample_proposals``: IoU matching, ground truth appended,
    ``BATCH_SIZE_PER_IMAGE`` per image). Runs on this process's shard and gathers over processes.

    Returns:
        ``(logits [R, K + 1], labels [R])`` on the CPU, labels in ``0 .. K`` (K = background).
    """
    model = _unwrap(model)
    dicts = DatasetCatalog.get(dataset_name)
    if max_images is not None:
        dicts = dicts[: int(max_images)]
    loader = build_detection_test_loader(dicts, mapper=_LabelledMapper(cfg), num_workers=0)
    roi = model.roi_heads
    predictor = find_ood_predictor(model)
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        with EventStorage():
            for batch in tqdm(loader, desc=f"ROIs of {dataset_name}", disable=not comm.is_main_process()):
                images = model.preprocess_image(batch)
                feats = model.backbone(images.tensor)
                proposals, _ = model.proposal_generator(images, feats, None)
                targets = [b["instances"].to(model.device) for b in batch]
                proposals = roi.label_and_sample_proposals(proposals, targets)
                x = roi.box_pooler([feats[f] for f in roi.box_in_features], [p.proposal_boxes for p in proposals])
                x = roi.box_head(x)
                logits.append(predictor.cls_score(x).float().cpu())
                labels.append(torch.cat([p.gt_classes for p in proposals]).cpu())
    finally:
        model.train(was_training)
    k1 = predictor.num_classes + 1
    lg = torch.cat(logits) if logits else torch.zeros(0, k1)
    lb = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
    if comm.get_world_size() > 1:
        parts = comm.all_gather((lg, lb))
        lg = torch.cat([p[0] for p in parts])
        lb = torch.cat([p[1] for p in parts])
    return lg, lb


def _head_has_post_fit(head: OODHead) -> bool:
    return type(head).post_fit is not OODHead.post_fit


# ---------------------------------------------------------------------------- driver
def _split_roles(cfg) -> Dict[str, Any]:
    if not len(cfg.DATASETS.TEST):
        raise ValueError("DATASETS.TEST is empty: nothing to evaluate (ID test set needed)")
    test = cfg.DATASETS.TEST[0]
    val = cfg.TEST.OOD.VAL_DATASET or test
    ood, mixed = [], []
    for name in cfg.DATASETS.OOD_TEST:
        dist = MetadataCatalog.get(name).get("distribution", "ood")
        (mixed if dist == "mixed" else ood).append(name)
    return {"val": val, "test": test, "ood": ood, "mixed": mixed}


def _run_inference(cfg, model, dataset_name: str, score_names: Sequence[str], output_dir: Optional[str]):
    predictor = find_ood_predictor(model)
    old = tuple(predictor.extra_score_names)
    predictor.extra_score_names = tuple(score_names)
    try:
        # images only: the test mapper drops annotations anyway, and detectron2's dataset
        # statistics refuse unknown objects (category_id -1)
        dicts = [{k: v for k, v in d.items() if k != "annotations"} for d in DatasetCatalog.get(dataset_name)]
        loader = build_detection_test_loader(
            dicts, mapper=DatasetMapper(cfg, is_train=False), num_workers=cfg.DATALOADER.NUM_WORKERS
        )
        ev = OODEvaluator(dataset_name, default_score=predictor.box_classifier.score,
                          output_dir=output_dir)
        inference_on_dataset(
            model, tqdm(loader, desc=f"inference {dataset_name}", disable=not comm.is_main_process()), ev
        )
    finally:
        predictor.extra_score_names = old
    return ev.predictions


def evaluate_ood(cfg, model, output_dir: Optional[str] = None, post_fit: bool = True,
                 max_val_images: Optional[int] = None, weights: Optional[str] = None) -> Dict[str, Any]:
    """Evaluate ``model`` on ID val + ID test + every OOD test set and store thresholds in it.

    The same steps and outputs as the torchvision backend's :func:`ood_det.engine.evaluate.evaluate`:

    1. the head's ``post_fit`` on ID-val ROIs (:func:`collect_val_rois`; DisMax temperature, CFL
       score standardisation; a no-op for the other heads);
    2. inference with every score the head supports, each dataset once;
    3. :func:`evaluate_ood_detection` per OOD set (ID test mAP, the VOS box-level protocol,
       unknown-object metrics; open-set metrics on the first ``mixed`` set, with the first OOD set);
    4. the unknown thresholds (``TEST.OOD.TPR`` of the ID-val boxes, first OOD set's evaluation)
       written into the model's ``OODBoxClassifier`` (``set_threshold``) on every process;
    5. on the main process, under ``output_dir``: ``metrics.json``, ``predictions/<dataset>.npz``
       (if ``TEST.OOD.DUMP_SCORES``), ``plots/<ood set>/*.png`` and the table in the log.

    Saving the model with its thresholds is the caller's business (see
    :mod:`ood_det.d2.train_net`).

    Returns:
        The ``metrics.json`` dict (``head, score, regularizers, weights, datasets, post_fit,
        summary, results, eval_seconds``) on the main process; ``{}`` elsewhere.
    """
    import math
    import time

    from ..engine.evaluate import _json_safe

    t0 = time.perf_counter()
    model = _unwrap(model)
    predictor = find_ood_predictor(model)
    clf = predictor.box_classifier
    head = clf.head
    roles = _split_roles(cfg)
    names = list(MetadataCatalog.get(roles["test"]).get("thing_classes", []))
    if len(names) != clf.num_classes:
        raise ValueError(
            f"dataset {roles['test']!r} has {len(names)} thing_classes, the model "
            f"{clf.num_classes} classes (MODEL.ROI_HEADS.NUM_CLASSES)"
        )
    main = comm.is_main_process()
    if output_dir and main:
        os.makedirs(output_dir, exist_ok=True)

    # 1. post-training fit on ID validation ROIs
    fitted: Dict[str, Any] = {}
    if post_fit and _head_has_post_fit(head):
        lg, lb = collect_val_rois(cfg, model, roles["val"], max_images=max_val_images)
        info = head.post_fit(lg.to(model.device), lb.to(model.device), None) or {}
        logger.info("post-fit of head %s on %d ROIs of %s: %s", head.name, len(lb), roles["val"], info)
        fitted = {k: (float(v) if isinstance(v, (int, float, bool)) else str(v)) for k, v in info.items()}

    # 2. inference, each dataset once
    score_names = list(head.supported_scores)
    ordered = list(dict.fromkeys([roles["val"], roles["test"]] + roles["ood"] + roles["mixed"]))
    dump_dir = os.path.join(output_dir, "predictions") if output_dir and cfg.TEST.OOD.DUMP_SCORES else None
    preds = {n: _run_inference(cfg, model, n, score_names, dump_dir) for n in ordered}

    # 3. metrics on the main process, one evaluation per OOD set
    thresholds: Dict[str, float] = {}
    metrics: Dict[str, Any] = {}
    if main:
        dicts = {n: DatasetCatalog.get(n) for n in ordered}
        results = {}
        targets = roles["ood"] or [None]
        for i, ood in enumerate(targets):
            splits = {"val": roles["val"], "test": roles["test"]}
            if ood is not None:
                splits["ood"] = ood
            if roles["mixed"] and i == 0:
                splits["mixed"] = roles["mixed"][0]
            key = ood or roles["test"]
            results[key] = evaluate_ood_detection(
                {k: dicts[v] for k, v in splits.items()},
                {k: preds[v] for k, v in splits.items()},
                names,
                tpr=float(cfg.TEST.OOD.TPR),
                conf_thresh=cfg.TEST.OOD.CONF_THRESH,
                score_names=score_names,
                plot_dir=os.path.join(output_dir, "plots", key) if output_dir else None,
            )
            logger.info("== %s (score %s) | ID %s vs OOD %s ==\n%s", head.name, clf.score, roles["test"],
                        key, format_table(results[key]))
        first = results[targets[0] or roles["test"]]
        thresholds = {k: float(v) for k, v in first.get("unknown_threshold", {}).items()
                      if v is not None and math.isfinite(v)}
        summary = {}
        for key, r in results.items():
            o = r.get("ood", {}).get(clf.score, {})
            summary[key] = {
                "map50": r.get("detection", {}).get("voc", {}).get("map50"),
                **{m: o.get(m) for m in ("fpr95", "auroc", "aupr_in", "aupr_out")},
                "unknown_threshold": r.get("unknown_threshold", {}).get(clf.score),
                "conf_thresh": r.get("conf_thresh"),
            }
        metrics = {
            "backend": "detectron2",
            "head": head.name,
            "score": clf.score,
            "regularizers": [r.name for r in clf.regularizers],
            "weights": weights,
            "datasets": {"val": roles["val"], "test": roles["test"], "ood": roles["ood"], "mixed": roles["mixed"]},
            "post_fit": fitted,
            "summary": summary,
            "results": results,
            "eval_seconds": round(time.perf_counter() - t0, 2),
        }
        if output_dir:
            path = os.path.join(output_dir, "metrics.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(_json_safe(metrics), f, indent=1)
            logger.info("metrics written to %s", path)

    # 4. thresholds into the model, identical on every process
    if comm.get_world_size() > 1:
        thresholds = comm.all_gather(thresholds)[0]
    for score, value in thresholds.items():
        clf.set_threshold(score, value)
    return metrics


def evaluate_id(cfg, model) -> Dict[str, Any]:
    """ID detection accuracy only (VOC AP50 on the first of ``DATASETS.TEST``), for the periodic
    evaluation during training: no post-fit and no thresholds, so the training state (e.g.
    DisMax's temperature, which enters the training loss) is left alone.

    Returns ``{"id": {"map50", "map50_07", ...}}`` on the main process, ``{}`` elsewhere."""
    from ..evaluation import evaluate_voc

    model = _unwrap(model)
    clf = find_ood_predictor(model).box_classifier
    name = cfg.DATASETS.TEST[0]
    preds = _run_inference(cfg, model, name, [clf.score], None)
    if not comm.is_main_process():
        return {}
    names = list(MetadataCatalog.get(name).get("thing_classes", []))
    res = evaluate_voc(preds, DatasetCatalog.get(name), names, where=name)
    logger.info("%s: VOC mAP50 %.2f", name, 100 * res["map50"])
    return {"id": res}


def flat_metrics(metrics: Dict[str, Any]) -> Dict[str, float]:
    """The floats of :func:`evaluate_ood`'s ``summary`` and ``results``, keyed
    ``<ood set>/<metric path>`` (what detectron2's ``EvalHook`` / ``EventStorage`` accept)."""
    return flatten_results({"summary": metrics.get("summary", {}), "results": metrics.get("results", {})})
