"""Checkpoints of the torchvision backend.

A checkpoint is a ``torch.save`` d dict loadable with ``torch.load(..., weights_only=True)`` (no
numpy, plain python types only)::

    {"model": state_dict,                      # incl. OOD thresholds, DisMax temperature, queues
     "optimizer": ..., "scheduler": ..., "scaler": ...,   # training state (absent in final files
                                                          # written by the evaluator)
     "iteration": int,                         # iterations completed
     "cfg": str,                               # the config as YAML
     "ood_det": {"backend", "head", "num_classes", "class_names", "score",
                 "conf_thresh"}}               # conf_thresh: the F1 box-confidence threshold of
                                               # ID val, added by the evaluator

Files are written atomically (temporary file + rename); ``OUTPUT_DIR/last_checkpoint`` names the
newest one, so an interrupted run resumes from it (``--resume``) losing at most one period.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``DistributedDataParallel`` / ``DataParallel``."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def ood_metadata(model: nn.Module, cfg) -> Dict[str, Any]:
    m = unwrap(model)
    clf = m.classifier
    return {
        "backend": str(cfg.BACKEND),
        "head": str(clf.head.name),
        "num_classes": int(clf.num_classes),
        "class_names": [str(c) for c in getattr(m, "class_names", [])],
        "score": str(clf.score),
    }


def make_checkpoint(model, cfg, iteration: int, optimizer=None, scheduler=None, scaler=None) -> Dict[str, Any]:
    ckpt: Dict[str, Any] = {
        "model": {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()},
        "iteration": int(iteration),
        "cfg": cfg.dump(),
        "ood_det": ood_metadata(model, cfg),
    }
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        ckpt["scheduler"] = scheduler.state_dict()
    if scaler is not None and scaler.is_enabled():
        ckpt["scaler"] = scaler.state_dict()
    return ckpt


def save_checkpoint(ckpt: Dict[str, Any], path: str, tag_last: bool = True) -> str:
    """Write ``ckpt`` to ``path`` atomically; record it in ``last_checkpoint`` next to it."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(ckpt, tmp)
    os.replace(tmp, path)
    if tag_last:
        last = os.path.join(os.path.dirname(path), LAST_CHECKPOINT)
        with open(last + ".tmp", "w", encoding="utf-8") as f:
            f.write(os.path.basename(path))
        os.replace(last + ".tmp", last)
    logger.info("saved checkpoint %s (iteration %s)", path, ckpt.get("iteration"))
    return path


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{path} is not an ood_det checkpoint (no 'model' entry)")
    return ckpt


def last_checkpoint(output_dir: str) -> Optional[str]:
    """Path named by ``output_dir/last_checkpoint`` if that file exists, else None."""
    tag = os.path.join(output_dir, LAST_CHECKPOINT)
    if not os.path.isfile(tag):
        return None
    with open(tag, "r", encoding="utf-8") as f:
        name = f.read().strip()
    path = os.path.join(output_dir, name)
    if not os.path.isfile(path):
        logger.warning("%s names %s, which does not exist; starting from scratch", tag, path)
        return None
    return path


def restore(ckpt: Dict[str, Any], model, optimizer=None, scheduler=None, scaler=None, strict: bool = True) -> int:
    """Load a checkpoint's states into the given objects; returns its iteration."""
    missing, unexpected = unwrap(model).load_state_dict(ckpt["model"], strict=False)
    if strict and (missing or unexpected):
        raise KeyError(
            f"checkpoint does not fit the model: missing {list(missing)[:10]}, unexpected {list(unexpected)[:10]} "
            "(was it trained with another MODEL.OOD config?)"
        )
    if optimizer is not None and "optimizer" in ckpt:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and "scheduler" in ckpt:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    return int(ckpt.get("iteration", 0))


def save_model_state(model, cfg, path: str, iteration: Optional[int] = None,
                     extra_meta: Optional[Dict[str, Any]] = None) -> str:
    """Rewrite ``path`` with the model's current state (e.g. after the evaluator stored thresholds
    and calibration buffers), keeping the training state already in it. ``extra_meta`` (plain
    python values) is added to the checkpoint's ``"ood_det"`` entry."""
    old = load_checkpoint(path) if os.path.isfile(path) else {}
    ckpt = make_checkpoint(model, cfg, iteration if iteration is not None else old.get("iteration", 0))
    for k in ("optimizer", "scheduler", "scaler", "train_seconds"):
        if k in old:
            ckpt[k] = old[k]
    ckpt["ood_det"].update(extra_meta or {})
    return save_checkpoint(ckpt, path, tag_last=False)
