"""The OOD evaluation protocol end to end, written once for every backend.

A backend (torchvision, detectron2, or a fake one in the tests) implements the small
:class:`ProtocolBackend` interface — "labelled validation ROIs of dataset X" and "predictions of
dataset X with scores S" — and hands plain arrays over, the way a detectron2
``DatasetEvaluator`` never sees the model. :func:`run_protocol` does the rest, in this order:

1. **split roles** (:func:`split_roles`): ``val`` = ``TEST.OOD.VAL_DATASET`` (default: the first of
   ``DATASETS.TEST``), ``test`` = the first of ``DATASETS.TEST``, ``ood`` / ``mixed`` = each
   ``DATASETS.OOD_TEST`` by its catalog ``distribution``, ``shift`` = ``DATASETS.SHIFT_TEST``
   (ID images under a covariate shift);
2. **post-fit** of the head on ID validation ROIs (proposals of the trained RPN plus ground truth,
   labelled and sampled as in training): ``head.post_fit(logits, labels, features)`` (DisMax
   temperature, CFL score weights), on every process; skipped for heads without one;
3. **inference** of every dataset once, every box carrying every score the head supports;
4. **metrics** per OOD set (:func:`~ood_det.evaluation.evaluator.evaluate_ood_detection`: ID mAP,
   box-confidence threshold on ID val, FPR95 / AUROC / AUPR, unknown thresholds at
   ``TEST.OOD.TPR`` of the ID-val boxes, AP_U / AR_U, WI / AOSE on the first mixed set) and the
   share of covariate-shifted ID boxes flagged unknown;
5. the **unknown thresholds** of every score and the box-confidence threshold into the model's
   ``OODBoxClassifier`` buffers (identical on every process) and the model saved with them
   (:func:`ood_det.engine.checkpoint.save_model_state`), so the scoring tool needs no other file;
6. **reports**: ``metrics.json``, ``predictions/<dataset>.npz``, ``plots/<ood set>/*.png`` and the
   printed table.
"""
from __future__ import annotations

import abc
import logging
import math
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data import catalog
from ..engine import comm
from ..engine.checkpoint import checkpoint_metadata, save_model_state
from ..engine.jsonio import write_json
from .evaluator import Predictions, evaluate_ood_detection, format_table, summarize
from .protocol import kept_ood_scores

__all__ = ["ProtocolBackend", "split_roles", "post_fit", "run_protocol", "run_id_evaluation"]

logger = logging.getLogger("ood_det")


class ProtocolBackend(abc.ABC):
    """What the protocol needs from a backend, and nothing more.

    Implementations: :class:`ood_det.tv.evaluation.TVProtocolBackend`,
    :class:`ood_det.d2.evaluation.D2ProtocolBackend`, and a fake made of arrays in the tests.
    """

    #: recorded in metrics.json
    name: str = "backend"

    @property
    @abc.abstractmethod
    def class_names(self) -> List[str]:
        """The K known class names, in label order."""

    @property
    @abc.abstractmethod
    def box_classifier(self):
        """The model's :class:`~ood_det.modeling.box_classifier.OODBoxClassifier`."""

    @property
    def module(self) -> Optional[torch.nn.Module]:
        """The module whose ``state_dict`` a checkpoint holds (None: nothing to save)."""
        return None

    def dataset_dicts(self, name: str) -> List[Dict[str, Any]]:
        """Ground-truth dataset dicts of ``name`` (default: the ood_det catalog)."""
        return catalog.get_dicts(name)

    def distribution(self, name: str) -> str:
        """``"id"``, ``"ood"`` or ``"mixed"`` (default: the catalog's metadata, else ``"ood"``)."""
        try:
            return catalog.metadata(name).get("distribution", "ood")
        except KeyError:
            return "ood"

    @abc.abstractmethod
    def validation_rois(self, name: str, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ROIs of the ID dataset ``name`` labelled and sampled as in training, gathered over
        processes: ``(logits [R, K + 1], labels [R] in 0..K, features [R, D])`` on the CPU."""

    @abc.abstractmethod
    def predict_dataset(self, name: str, scores: Sequence[str]) -> Tuple[Optional[Predictions], List[str]]:
        """Detections of every image of ``name`` with the OOD ``scores`` (and ``roi_conf``),
        gathered on the main process: ``(Predictions, unreadable file names)``; ``(None, [])`` on
        the other processes."""


# ---------------------------------------------------------------------------------- roles
def split_roles(cfg, distribution: Callable[[str], str]) -> Dict[str, Any]:
    """``{"val", "test", "ood": [...], "mixed": [...], "shift": [...]}`` dataset names of ``cfg``."""
    if not len(cfg.DATASETS.TEST):
        raise ValueError("DATASETS.TEST is empty: nothing to evaluate on (the ID test set is needed)")
    test = cfg.DATASETS.TEST[0]
    if len(cfg.DATASETS.TEST) > 1:
        logger.warning("DATASETS.TEST has %d datasets; the ID evaluation uses the first, %s",
                       len(cfg.DATASETS.TEST), test)
    ood, mixed = [], []
    for name in cfg.DATASETS.OOD_TEST:
        (mixed if distribution(name) == "mixed" else ood).append(name)
    shift = list(cfg.DATASETS.get("SHIFT_TEST", ()) or ())
    return {"val": cfg.TEST.OOD.VAL_DATASET or test, "test": test, "ood": ood, "mixed": mixed, "shift": shift}


# ------------------------------------------------------------------------------- post-fit
def post_fit(backend: ProtocolBackend, dataset: str, seed: int = 0) -> Dict[str, Any]:
    """``head.post_fit`` on the validation ROIs of ``dataset`` (every process, same data);
    returns its log dict (plain python values)."""
    head = backend.box_classifier.head
    logits, labels, feats = backend.validation_rois(dataset, seed)
    if len(labels) == 0:
        raise ValueError(f"no readable ROI in validation dataset {dataset!r}: cannot fit the head's "
                         "post-training state")
    device = next(head.parameters(), torch.empty(0)).device
    info = head.post_fit(logits.to(device), labels.to(device), feats.to(device)) or {}
    if info:
        logger.info("post-fit of head %s on %d ROIs of %s: %s", head.name, len(labels), dataset,
                    ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items()))
    return {k: (float(v) if isinstance(v, (int, float, bool)) else str(v)) for k, v in info.items()}


# ---------------------------------------------------------------------------------- report
def covariate_shift_rates(preds: Predictions, conf_thresh: float, thresholds: Dict[str, float],
                          conf_source: str = "box") -> Dict[str, Any]:
    """Share of the boxes (kept at ``conf_thresh``, as the OOD metrics keep them) of ID images
    under a covariate shift that each score flags unknown (score ``<`` its stored threshold);
    they should stay ID."""
    names = [n for n in thresholds if thresholds[n] is not None and math.isfinite(thresholds[n])]
    kept = kept_ood_scores(preds, conf_thresh, names, where="covariate-shift predictions", conf_source=conf_source)
    out: Dict[str, Any] = {"num_boxes": int(kept[names[0]].size) if names else 0}
    for n in names:
        s = kept[n]
        out[n] = float(np.mean(s < thresholds[n])) if s.size else None
    return out


# ---------------------------------------------------------------------------------- driver
def run_protocol(
    cfg,
    backend: ProtocolBackend,
    output_dir: Optional[str] = None,
    weights: Optional[str] = None,
    save_path: Optional[str] = None,
    do_post_fit: bool = True,
    plots: bool = True,
) -> Dict[str, Any]:
    """Evaluate the backend's model on ID val + ID test + every OOD / shift set (see the module
    docstring) and store the thresholds in it.

    Args:
        cfg: the config (``DATASETS.*``, ``TEST.OOD.*``, ``SEED``).
        backend: a :class:`ProtocolBackend`.
        output_dir: where metrics.json, dumps and plots go (None: nothing is written).
        weights: the checkpoint evaluated (recorded in metrics.json).
        save_path: where to save the model with its thresholds (None: not saved).
        do_post_fit: run the head's post-fit first.
        plots: write the score histograms / ROC curves.

    Returns:
        The ``metrics.json`` dict on the main process (``backend, head, score, regularizers,
        weights, datasets, post_fit, skipped_images, summary, covariate_shift, results,
        eval_seconds``); ``{}`` on the others.
    """
    t0 = time.perf_counter()
    clf = backend.box_classifier
    head = clf.head
    names = list(backend.class_names)
    if len(names) != clf.num_classes:
        raise ValueError(f"{len(names)} class names for a model of {clf.num_classes} classes "
                         "(MODEL.ROI_HEADS.NUM_CLASSES)")
    roles = split_roles(cfg, backend.distribution)
    conf_source = str(cfg.TEST.OOD.get("CONF_SOURCE", "box"))
    id_metric = str(cfg.TEST.OOD.get("ID_METRIC", "voc_ap50"))
    main = comm.is_main_process()
    if output_dir and main:
        os.makedirs(output_dir, exist_ok=True)

    # 1-2. post-fit on ID validation ROIs, before any score is computed
    fitted = post_fit(backend, roles["val"], seed=max(int(cfg.SEED), 0)) if do_post_fit and head.has_post_fit else {}

    # 3. inference, each dataset once, every supported score
    score_names = list(head.supported_scores)
    ordered = list(dict.fromkeys([roles["val"], roles["test"]] + roles["ood"] + roles["mixed"] + roles["shift"]))
    dump = bool(output_dir) and bool(cfg.TEST.OOD.DUMP_SCORES)
    preds, skipped = {}, {}
    for name in ordered:
        preds[name], skipped[name] = backend.predict_dataset(name, score_names)
        if main and dump:
            preds[name].save(os.path.join(output_dir, "predictions", f"{name}.npz"))

    # 4. metrics on the main process, one evaluation per OOD set (val / test shared)
    metrics: Dict[str, Any] = {}
    thresholds: Dict[str, float] = {}
    conf = None
    if main:
        dicts = {n: backend.dataset_dicts(n) for n in ordered}
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
                {k: dicts[v] for k, v in splits.items()}, {k: preds[v] for k, v in splits.items()}, names,
                tpr=float(cfg.TEST.OOD.TPR), conf_thresh=cfg.TEST.OOD.CONF_THRESH, score_names=score_names,
                conf_source=conf_source,
                plot_dir=os.path.join(output_dir, "plots", key) if (output_dir and plots) else None,
            )
        first = results[targets[0] or roles["test"]]
        thresholds = {k: float(v) for k, v in first.get("unknown_threshold", {}).items()
                      if v is not None and math.isfinite(v)}
        c = first.get("conf_thresh")
        conf = float(c) if c is not None and math.isfinite(c) else None
        shift = {n: covariate_shift_rates(preds[n], conf or 0.0, thresholds, conf_source) for n in roles["shift"]}
        metrics = {
            "backend": backend.name,
            "head": head.name,
            "score": clf.score,
            "regularizers": [r.name for r in clf.regularizers],
            "weights": save_path or weights,
            "datasets": {k: roles[k] for k in ("val", "test", "ood", "mixed", "shift")},
            "post_fit": fitted,
            "skipped_images": {k: v for k, v in skipped.items() if v},
            "summary": {k: summarize(r, clf.score, id_metric) for k, r in results.items()},
            "covariate_shift": shift,
            "results": results,
        }

    # 5. thresholds into the model, identical on every process; saved with the checkpoint
    thresholds, conf = comm.broadcast_object((thresholds, conf))
    for score, value in thresholds.items():
        clf.set_threshold(score, value)
    clf.set_conf_threshold(conf)
    if save_path and main:
        if backend.module is None:
            raise ValueError(f"{type(backend).__name__} has no module to save")
        extra = {"conf_thresh": conf} if conf is not None else {}
        save_model_state(backend.module, cfg, save_path, checkpoint_metadata(cfg, clf, names, **extra))
        logger.info("model with its unknown thresholds saved to %s", save_path)

    # 6. reports
    if main:
        metrics["eval_seconds"] = round(time.perf_counter() - t0, 2)
        if output_dir:
            path = os.path.join(output_dir, "metrics.json")
            write_json(metrics, path)
            logger.info("metrics written to %s", path)
        for key, r in metrics["results"].items():
            table = format_table(r, id_metric)
            print(f"\n== {head.name} (score {clf.score}) | ID {roles['test']} vs OOD {key} ==\n{table}\n", flush=True)
            logger.debug("results vs %s:\n%s", key, table)
        for n, rates in metrics["covariate_shift"].items():
            print(f"covariate shift {n}: {rates.get(clf.score, float('nan')) * 100:.2f}% of "
                  f"{rates['num_boxes']} ID boxes flagged unknown by {clf.score}", flush=True)
        n_skip = sum(len(v) for v in skipped.values())
        if n_skip:
            logger.warning("%d unreadable image(s) skipped during evaluation", n_skip)
    comm.synchronize()
    return metrics


def run_id_evaluation(cfg, backend: ProtocolBackend) -> Dict[str, Any]:
    """ID detection accuracy only (VOC AP50 on the first of ``DATASETS.TEST``): the periodic
    evaluation during training. No post-fit and no thresholds, so training state (DisMax's
    temperature enters the loss) is left alone. ``{"id": {...}}`` on the main process."""
    from .detection import evaluate_voc

    clf = backend.box_classifier
    name = cfg.DATASETS.TEST[0]
    preds, _ = backend.predict_dataset(name, [clf.score])
    if not comm.is_main_process():
        return {}
    res = evaluate_voc(preds, backend.dataset_dicts(name), backend.class_names, where=name)
    logger.info("%s: VOC mAP50 %.2f", name, 100 * res["map50"])
    return {"id": res}
