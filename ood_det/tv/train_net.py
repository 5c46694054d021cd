"""The torchvision backend's entry points, called by :mod:`ood_det.apps.train` for
``BACKEND: torchvision`` (the config is loaded and checked once, there).

* :func:`new_config`: the backend's config schema;
* :func:`main`: train (unless ``--eval-only``) and evaluate, in one process or several
  (``--num-gpus`` / ``torchrun``: DDP with gloo on CPUs, nccl on CUDA), holding the output
  folder's lock (:class:`~ood_det.engine.output_lock.OutputDirLock`: one writer per folder);
* :func:`evaluate`: the OOD protocol (:func:`ood_det.evaluation.driver.run_protocol`) on a
  checkpoint; rank 0 only;
* :func:`build_inference_model`: the detector with ``predict_images``, for the scoring tool.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Dict, Optional, Sequence

from ..config import get_cfg
from ..data import catalog
from ..engine import comm
from ..engine.checkpoint import evaluated_checkpoint_path
from ..engine.launch import launch
from ..engine.logger import setup_logging
from ..engine.output_lock import OutputDirLock
from ..evaluation.driver import run_protocol
from .build import build_inference_model, build_model, class_names_from_weights
from .evaluation import TVProtocolBackend

__all__ = ["new_config", "main", "run", "evaluate", "build_inference_model"]

logger = logging.getLogger("ood_det")


def new_config():
    """The torchvision backend's default config (:func:`ood_det.config.get_cfg`)."""
    return get_cfg()


def evaluate(cfg, weights: Optional[str] = None, model=None, plots: bool = True) -> Dict:
    """The OOD protocol on ``weights`` (default ``MODEL.WEIGHTS``) or an already built ``model``;
    saves the model with its thresholds (:func:`~ood_det.engine.checkpoint.evaluated_checkpoint_path`)
    and returns the metrics.json dict."""
    weights = weights or cfg.MODEL.WEIGHTS or None
    if model is None:
        test = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else None
        names = (class_names_from_weights(weights) if weights else None) or (
            catalog.thing_classes([test], cfg.MODEL.ROI_HEADS.NUM_CLASSES) if test else None)
        c = cfg.clone()
        c.defrost()
        c.MODEL.WEIGHTS = weights or ""
        model = build_model(c, names)
    backend = TVProtocolBackend(model, num_workers=cfg.DATALOADER.NUM_WORKERS)
    save = evaluated_checkpoint_path(cfg.OUTPUT_DIR, weights)
    return run_protocol(cfg, backend, output_dir=cfg.OUTPUT_DIR, weights=weights, save_path=save, plots=plots)


def run(cfg, eval_only: bool = False, resume: bool = False, argv: Sequence[str] = ()):
    """Train (unless ``eval_only``) and evaluate in this process; the metrics on rank 0."""
    from .train import train

    lock = OutputDirLock(cfg.OUTPUT_DIR, "evaluation" if eval_only else "training")
    with lock if comm.is_main_process() else contextlib.nullcontext():
        setup_logging(cfg.OUTPUT_DIR, comm.get_rank())
        logger.info("command line: %s", " ".join(argv or sys.argv))
        if eval_only:
            weights = cfg.MODEL.WEIGHTS or os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
            metrics = evaluate(cfg, weights=weights) if comm.is_main_process() else None
        else:
            final = train(cfg, resume=resume)
            metrics = evaluate(cfg, weights=final) if comm.is_main_process() else None
        comm.synchronize()
    return metrics


def main(cfg, args):
    """Run ``args`` (``eval_only``, ``resume``, ``num_gpus``, ``num_machines``, ``machine_rank``,
    ``dist_url``) on ``cfg`` in as many processes as asked."""
    return launch(run, args.num_gpus, args.num_machines, args.machine_rank, args.dist_url,
                  args=(cfg, bool(args.eval_only), bool(args.resume), tuple(sys.argv)))
