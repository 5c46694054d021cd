"""Evaluation of the torchvision backend (the VOS box-level OOD protocol of :mod:`ood_det.evaluation`).

:func:`evaluate` runs, in order:

1. **post-fit** on ID validation ROIs (``TEST.OOD.VAL_DATASET``, default the first of
   ``DATASETS.TEST``): proposals of the trained RPN plus the ground-truth boxes, labelled and
   sampled exactly as in training (IoU matching, ``ROI_HEADS.BATCH_SIZE_PER_IMAGE``), go through
   ``head.post_fit(logits, labels, features)`` (DisMax temperature, CFL score weights);
2. inference over the ID val / ID test / OOD test (and ``mixed``) splits, every box carrying all
   OOD scores the head supports -> a :class:`~ood_det.evaluation.Predictions` per split;
3. :func:`~ood_det.evaluation.evaluate_ood_detection` per OOD test dataset (ID mAP, F1 box
   confidence threshold, FPR95 / AUROC / AUPR, unknown thresholds at ``TEST.OOD.TPR`` ID recall on
   val, AP_U / AR_U, WI / AOSE on mixed splits);
4. the unknown thresholds of every score go into the model's ``OODBoxClassifier`` buffers
   (``set_threshold``) and are saved with the checkpoint (with the post-fit buffers), so the scoring
   tool needs no other file;
5. ``OUTPUT_DIR/metrics.json``, ``OUTPUT_DIR/predictions/<dataset>.npz`` (per-box dumps),
   ``OUTPUT_DIR/plots/<ood dataset>/*.png`` and the printed table.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..data import catalog
from .build import build_model, class_names_from_weights
from .checkpoint import save_model_state, unwrap
from .datasets import get_class_names, get_dicts

logger = logging.getLogger("ood_det")

INFERENCE_BATCH = 4


# ------------------------------------------------------------------------------ inference
@torch.no_grad()
def inference_on_dataset(model, dicts: Sequence[Dict], score_names: Sequence[str] = (), num_workers: int = 0,
                         desc: str = "inference", batch_size: int = INFERENCE_BATCH):
    """Run ``model`` over ``dicts``.

    Returns:
        ``(Predictions, skipped)``: ``image_id -> {boxes, labels, scores, ood_scores: {name: [N]}}``
        (every name of ``score_names``, default the model's score) and the unreadable file names.
    """
    from tqdm import tqdm

    from ..evaluation import Predictions
    from ..tv.data import build_test_loader

    model = unwrap(model)
    rh = model.roi_heads
    names = tuple(score_names) or (model.classifier.score,)
    old = rh.extra_scores
    rh.extra_scores = names
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    preds, skipped = Predictions(names), []
    try:
        loader = build_test_loader(dicts, batch_size=batch_size, num_workers=num_workers)
        with tqdm(total=len(dicts), desc=desc, unit="img", leave=False) as bar:
            for batch in loader:
                skipped += batch["skipped"]
                if batch["images"]:
                    outs = model([im.to(device) for im in batch["images"]])
                    for i, o in zip(batch["indices"], outs):
                        preds.add(
                            dicts[i]["image_id"],
                            o["boxes"].cpu().numpy(),
                            o["labels"].cpu().numpy(),
                            o["scores"].cpu().numpy(),
                            {n: o["ood_scores_by_name"][n].cpu().numpy() for n in names},
                        )
                bar.update(len(batch["indices"]) + len(batch["skipped"]))
    finally:
        rh.extra_scores = old
        model.train(was_training)
    if skipped:
        logger.warning("%s: %d unreadable image(s) skipped: %s", desc, len(skipped), ", ".join(skipped[:5]))
    return preds, skipped


@torch.no_grad()
def collect_val_rois(model, dicts: Sequence[Dict], seed: int = 0, desc: str = "val ROIs"):
    """ROIs of ID validation images labelled and sampled as in training.

    Returns:
        ``(logits [R, K + 1], labels [R] in 0..K, features [R, D])`` (core conventions, CPU).
    """
    from tqdm import tqdm

    from ..tv.data import build_test_loader
    from ..tv.roi_heads import tv_to_core_labels

    model = unwrap(model)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rh = model.roi_heads
    all_logits, all_labels, all_feats = [], [], []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            loader = build_test_loader(dicts, batch_size=INFERENCE_BATCH)
            for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
                if not batch["images"]:
                    continue
                images = [im.to(device) for im in batch["images"]]
                targets = [{k: v.to(device) for k, v in t.items()} for t in batch["targets"]]
                image_list, targets = model.transform(images, targets)
                feats = model.backbone(image_list.tensors)
                proposals, _ = model.rpn(image_list, feats)
                proposals, _, labels, _ = rh.select_training_samples(proposals, targets)
                box_feats = rh.box_features(feats, proposals, image_list.image_sizes)
                logits, _ = rh.box_predictor.forward_core(box_feats)
                all_logits.append(logits.float().cpu())
                all_labels.append(tv_to_core_labels(torch.cat(labels), model.classifier.num_classes).cpu())
                all_feats.append(box_feats.float().cpu())
    finally:
        model.train(was_training)
    if not all_logits:
        raise ValueError("no readable validation image: cannot fit the head's post-training state")
    return torch.cat(all_logits), torch.cat(all_labels), torch.cat(all_feats)


def post_fit(model, dicts, seed: int = 0) -> Dict[str, float]:
    """``head.post_fit`` on ID validation ROIs (see :func:`collect_val_rois`); returns its log dict."""
    model = unwrap(model)
    head = model.classifier.head
    logits, labels, feats = collect_val_rois(model, dicts, seed)
    device = next(head.parameters(), torch.empty(0)).device
    info = head.post_fit(logits.to(device), labels.to(device), feats.to(device)) or {}
    if info:
        logger.info("post-fit of head %s on %d val ROIs: %s", head.name, len(labels),
                    ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items()))
    return {k: (float(v) if isinstance(v, (int, float, bool)) else str(v)) for k, v in info.items()}


# ------------------------------------------------------------------------------ evaluate
def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.ndarray):
        return _json_safe(x.tolist())
    return x


def _splits(cfg) -> Tuple[str, str, List[str], List[str]]:
    if not cfg.DATASETS.TEST:
        raise ValueError("DATASETS.TEST is empty: nothing to evaluate on")
    test = cfg.DATASETS.TEST[0]
    if len(cfg.DATASETS.TEST) > 1:
        logger.warning("DATASETS.TEST has %d datasets; the ID evaluation uses the first, %s",
                       len(cfg.DATASETS.TEST), test)
    val = cfg.TEST.OOD.VAL_DATASET or test
    ood, mixed = [], []
    for n in cfg.DATASETS.OOD_TEST:
        (mixed if catalog.metadata(n).get("distribution") == "mixed" else ood).append(n)
    return val, test, ood, mixed


def evaluate_id(cfg, model) -> Dict:
    """ID detection accuracy only (VOC AP50 on the first of ``DATASETS.TEST``): the periodic
    evaluation during training."""
    from ..evaluation import evaluate_voc

    model = unwrap(model)
    name = cfg.DATASETS.TEST[0]
    dicts = get_dicts(name)
    preds, _ = inference_on_dataset(model, dicts, desc=f"eval {name}", num_workers=cfg.DATALOADER.NUM_WORKERS)
    res = evaluate_voc(preds, dicts, model.class_names, where=name)
    logger.info("%s: VOC mAP50 %.2f", name, 100 * res["map50"])
    return res


def evaluate(cfg, weights: Optional[str] = None, model=None, save_thresholds: bool = True,
             plots: bool = True) -> Dict:
    """Full OOD evaluation (see the module doc); returns the dict written to ``metrics.json``.

    Args:
        cfg: the config.
        weights: checkpoint to evaluate (default ``MODEL.WEIGHTS``); it is rewritten with the
            fitted thresholds when it lies in ``OUTPUT_DIR``, otherwise
            ``OUTPUT_DIR/model_final.pth`` is written.
        model: an already built model (skips building / loading).
        save_thresholds: write the thresholds / post-fit state into a checkpoint.
        plots: write the score histograms / ROC curves (PNG).
    """
    from ..evaluation import evaluate_ood_detection, format_table

    t0 = time.perf_counter()
    out = cfg.OUTPUT_DIR
    os.makedirs(out, exist_ok=True)
    weights = weights or cfg.MODEL.WEIGHTS or None
    val_name, test_name, ood_names, mixed_names = _splits(cfg)
    if model is None:
        class_names = (class_names_from_weights(weights) if weights else None) or get_class_names(
            [test_name], cfg.MODEL.ROI_HEADS.NUM_CLASSES)
        c = cfg.clone()
        c.defrost()
        c.MODEL.WEIGHTS = weights or ""
        model = build_model(c, class_names)
    model = unwrap(model)
    model.eval()
    head = model.classifier.head
    class_names = list(model.class_names)
    score_names = list(head.supported_scores)
    nw = cfg.DATALOADER.NUM_WORKERS

    dicts = {val_name: get_dicts(val_name), test_name: get_dicts(test_name)}
    for n in ood_names + mixed_names:
        dicts[n] = get_dicts(n)

    # 1. post-fit on ID validation ROIs (before any score is computed)
    fitted = post_fit(model, dicts[val_name], seed=max(int(cfg.SEED), 0))

    # 2. inference
    preds, skipped = {}, {}
    for name in dict.fromkeys([val_name, test_name] + ood_names + mixed_names):
        preds[name], skipped[name] = inference_on_dataset(model, dicts[name], score_names, nw, desc=f"eval {name}")
        if cfg.TEST.OOD.DUMP_SCORES:
            preds[name].save(os.path.join(out, "predictions", f"{name}.npz"))

    # 3. metrics, one evaluation per OOD dataset (val / test shared)
    results = {}
    targets = ood_names or [None]
    for i, ood in enumerate(targets):
        dd = {"val": dicts[val_name], "test": dicts[test_name]}
        pp = {"val": preds[val_name], "test": preds[test_name]}
        if ood is not None:
            dd["ood"], pp["ood"] = dicts[ood], preds[ood]
        if mixed_names and i == 0:
            dd["mixed"], pp["mixed"] = dicts[mixed_names[0]], preds[mixed_names[0]]
        results[ood or test_name] = evaluate_ood_detection(
            dd, pp, class_names, tpr=float(cfg.TEST.OOD.TPR), conf_thresh=cfg.TEST.OOD.CONF_THRESH,
            score_names=score_names, plot_dir=os.path.join(out, "plots", ood or test_name) if plots else None,
        )
    first = results[targets[0] or test_name]

    # 4. unknown thresholds into the model (every score), saved with the checkpoint
    for s, v in first.get("unknown_threshold", {}).items():
        if v is not None and math.isfinite(v):
            model.classifier.set_threshold(s, v)
    final_path = None
    if save_thresholds:
        in_out = weights and os.path.abspath(os.path.dirname(weights)) == os.path.abspath(out)
        final_path = weights if in_out else os.path.join(out, "model_final.pth")
        conf = first.get("conf_thresh")
        meta = {"conf_thresh": float(conf)} if conf is not None and math.isfinite(conf) else {}
        save_model_state(model, cfg, final_path, extra_meta=meta)

    # 5. report
    score = model.classifier.score
    summary = {}
    for name, r in results.items():
        det = r.get("detection", {}).get("voc", {})
        o = r.get("ood", {}).get(score, {})
        summary[name] = {
            "map50": det.get("map50"),
            "fpr95": o.get("fpr95"),
            "auroc": o.get("auroc"),
            "aupr_in": o.get("aupr_in"),
            "aupr_out": o.get("aupr_out"),
            "unknown_threshold": r.get("unknown_threshold", {}).get(score),
            "conf_thresh": r.get("conf_thresh"),
        }
    metrics = {
        "head": head.name,
        "score": score,
        "regularizers": [r.name for r in model.classifier.regularizers],
        "weights": final_path or weights,
        "datasets": {"val": val_name, "test": test_name, "ood": ood_names, "mixed": mixed_names},
        "post_fit": fitted,
        "skipped_images": {k: v for k, v in skipped.items() if v},
        "summary": summary,
        "results": results,
        "eval_seconds": round(time.perf_counter() - t0, 2),
    }
    with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as f:
        json.dump(_json_safe(metrics), f, indent=1)
    for name, r in results.items():
        table = format_table(r)
        print(f"\n== {head.name} (score {score}) | ID {test_name} vs OOD {name} ==\n{table}\n", flush=True)
        logger.debug("results vs %s:\n%s", name, table)
    n_skip = sum(len(v) for v in skipped.values())
    if n_skip:
        logger.warning("%d unreadable image(s) skipped during evaluation", n_skip)
    logger.info("metrics written to %s", os.path.join(out, "metrics.json"))
    return metrics
