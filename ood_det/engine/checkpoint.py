"""Checkpoints of both backends: one format, written and checked here.

A checkpoint is a ``torch.save`` d dict loadable with ``torch.load(..., weights_only=True)`` (no
numpy, plain python types only)::

    {"model": state_dict,                      # incl. OOD thresholds, DisMax temperature, queues
     "optimizer": ..., "scheduler": ..., "scaler": ...,   # training state (when training wrote it)
     "iteration": int,                         # iterations completed
     "cfg": str,                               # the config as YAML
     "ood_det": {"backend", "head", "num_classes", "class_names", "score",
                 "max_iter",                   # the schedule the run was started with
                 "conf_thresh"}}               # the F1 box-confidence threshold of ID val,
                                               # added by the evaluation

detectron2's ``DetectionCheckpointer`` writes the same dict (its ``checkpointables`` carry
``ood_det`` and ``cfg``, see :mod:`ood_det.d2.train_net`); the torchvision trainer writes it with
:func:`make_checkpoint` / :func:`save_checkpoint`; the evaluation of either backend rewrites the
final file with :func:`save_model_state`. :func:`check_metadata` compares a checkpoint with a
config (``--eval-only``, the scoring tool).

Files are written atomically (temporary file + rename); ``OUTPUT_DIR/last_checkpoint`` names the
newest one, so an interrupted run resumes from it (``--resume``) losing at most one period.
"""
from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import zipfile
from typing import Any, Dict, Optional, Sequence

import torch
from torch import nn

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside ``DistributedDataParallel`` / ``DataParallel``."""
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


class CheckpointMismatchError(ValueError):
    """The checkpoint was trained for another model than the config describes."""


def checkpoint_metadata(cfg, classifier, class_names: Sequence[str], **extra: Any) -> Dict[str, Any]:
    """The ``"ood_det"`` entry of a checkpoint (plain python values only).

    Args:
        cfg: the run's config (``BACKEND``, ``SOLVER.MAX_ITER``).
        classifier: the model's :class:`~ood_det.modeling.box_classifier.OODBoxClassifier`.
        class_names: the K known class names.
        extra: more entries, e.g. ``conf_thresh`` (floats / ints / strings).
    """
    names = [str(c) for c in class_names]
    if len(names) != classifier.num_classes:
        raise ValueError(f"{len(names)} class names for a classifier of {classifier.num_classes} classes")
    meta = {
        "backend": str(cfg.BACKEND),
        "head": str(classifier.head.name),
        "num_classes": int(classifier.num_classes),
        "class_names": names,
        "score": str(classifier.score),
        "max_iter": int(cfg.SOLVER.MAX_ITER),
    }
    meta.update(extra)
    return meta


def read_metadata(path: str) -> Optional[Dict[str, Any]]:
    """The ``"ood_det"`` entry of the checkpoint at ``path`` (None when it has none: a checkpoint
    of another tool). Unreadable files raise as :func:`load_checkpoint` does."""
    ckpt = load_checkpoint(path, require_model=False)
    meta = ckpt.get("ood_det") if isinstance(ckpt, dict) else None
    return dict(meta) if isinstance(meta, dict) else None


def check_metadata(meta: Optional[dict], cfg, config_path: str, weights_path: str) -> None:
    """Compare a checkpoint's ``"ood_det"`` metadata with the config.

    Checks ``backend`` (``cfg.BACKEND``), ``head`` (``cfg.MODEL.OOD.HEAD``), ``num_classes``
    (``cfg.MODEL.ROI_HEADS.NUM_CLASSES``) and that ``class_names`` has ``num_classes`` entries.
    Missing metadata (a checkpoint of another tool) is not checked here; the tensor shapes still
    are, when the weights are loaded.

    Raises:
        CheckpointMismatchError: naming every differing value and both files.
    """
    if not meta:
        return
    expected = {
        "backend": ("BACKEND", cfg.get("BACKEND", None)),
        "head": ("MODEL.OOD.HEAD", cfg.MODEL.OOD.HEAD),
        "num_classes": ("MODEL.ROI_HEADS.NUM_CLASSES", cfg.MODEL.ROI_HEADS.NUM_CLASSES),
    }
    bad = []
    for key, (cfg_key, value) in expected.items():
        if key in meta and value is not None and meta[key] != value:
            bad.append(f"{key}: the checkpoint has {meta[key]!r}, the config's {cfg_key} is "
                       f"{value!r}")
    names = meta.get("class_names")
    if names is not None and "num_classes" in meta and len(names) != meta["num_classes"]:
        bad.append(f"class_names: {len(names)} names for num_classes={meta['num_classes']}")
    if bad:
        raise CheckpointMismatchError(
            f"checkpoint {weights_path} does not match config {config_path}: " + "; ".join(bad))


def make_checkpoint(model, cfg, iteration: int, optimizer=None, scheduler=None, scaler=None,
                    class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """A training checkpoint of the torchvision model (``model.classifier``, ``model.class_names``)."""
    m = unwrap(model)
    ckpt: Dict[str, Any] = {
        "model": {k: v.detach().cpu() for k, v in m.state_dict().items()},
        "iteration": int(iteration),
        "cfg": cfg.dump(),
        "ood_det": checkpoint_metadata(cfg, m.classifier, class_names or m.class_names),
    }
    if optimizer is not None:
        ckpt["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        ckpt["scheduler"] = scheduler.state_dict()
    if scaler is not None and scaler.is_enabled():
        ckpt["scaler"] = scaler.state_dict()
    return ckpt


def _write_failed(path: str, tmp: str, e: BaseException) -> OSError:
    """The error of a failed checkpoint write: the partial file removed, the cause named."""
    if os.path.exists(tmp):
        os.remove(tmp)
    folder = os.path.dirname(path)
    text = str(e)
    full = getattr(e, "errno", None) == errno.ENOSPC or "No space left" in text
    if not full and ("iostream error" in text or "file write failed" in text or isinstance(e, OSError)):
        try:  # torch's writer hides the errno: look at the disk
            full = shutil.disk_usage(folder).free < (1 << 20)
        except OSError:
            pass
    if full:
        return OSError(errno.ENOSPC, f"no space left on {folder} while writing checkpoint {path}: nothing was "
                                     "replaced (the previous checkpoint is kept) and the partial file was removed")
    return OSError(getattr(e, "errno", None) or errno.EIO,
                   f"could not write checkpoint {path} ({type(e).__name__}: {text}); the previous checkpoint is kept "
                   "and the partial file was removed")


def save_checkpoint(ckpt: Dict[str, Any], path: str, tag_last: bool = True) -> str:
    """Write ``ckpt`` to ``path`` atomically (temporary file in the same folder + rename); record it
    in ``last_checkpoint`` next to it. A failed write (e.g. a full disk) removes the temporary
    file, leaves the previous files untouched and raises ``OSError`` naming the path."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        torch.save(ckpt, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        raise _write_failed(path, tmp, e) from e
    if tag_last:
        last = os.path.join(os.path.dirname(path), LAST_CHECKPOINT)
        try:
            with open(last + ".tmp", "w", encoding="utf-8") as f:
                f.write(os.path.basename(path))
            os.replace(last + ".tmp", last)
        except OSError as e:
            raise _write_failed(last, last + ".tmp", e) from e
    logger.info("saved checkpoint %s (iteration %s)", path, ckpt.get("iteration"))
    return path


def _unreadable(path: str, e: BaseException) -> str:
    """Why torch could not read ``path``, in words (never torch's advice to load with
    ``weights_only=False``, which would run whatever code the file holds)."""
    size = os.path.getsize(path)
    if size == 0:
        return "the file is empty (0 bytes)"
    with open(path, "rb") as f:
        head = f.read(8)
    text = str(e)
    if head.startswith(b"PK\x03\x04"):
        if not zipfile.is_zipfile(path):
            return f"the file is truncated or damaged ({size} bytes: an incomplete write or copy?)"
        if "Unsupported global" in text or "weights_only" in text.lower():
            detail = next((ln.strip() for ln in text.splitlines() if "Unsupported global" in ln), "")
            detail = detail.split(" was not an allowed global")[0].replace("WeightsUnpickler error: ", "")
            return ("it holds pickled Python objects, which a checkpoint of tensors and plain values never "
                    "does; loading it could run code, so it is refused" + (f" ({detail})" if detail else ""))
        lines = [ln.strip() for ln in text.splitlines()
                 if ln.strip() and "weights_only" not in ln and "WeightsUnpickler" not in ln]
        return "it is damaged: " + (lines[0] if lines else type(e).__name__)
    if head[:1] == b"\x80":
        return ("it is a plain pickle file, not a checkpoint written by torch.save; unpickling it could run code, "
                "so it is refused")
    return f"it is not a PyTorch checkpoint (it starts with {head[:8]!r}; {size} bytes)"


def load_checkpoint(path: str, require_model: bool = True) -> Dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; errors name the file and say why in words.
    ``require_model``: it must be a dict with a ``"model"`` entry."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RuntimeError(f"cannot read checkpoint {path}: {_unreadable(path, e)}") from None
    if require_model and (not isinstance(ckpt, dict) or "model" not in ckpt):
        raise ValueError(f"{path} is not an ood_det checkpoint (no 'model' entry)")
    return ckpt


def _intact(path: str) -> bool:
    """Cheap integrity check: a complete zip archive (torch's format) of non-zero size."""
    return os.path.isfile(path) and os.path.getsize(path) > 0 and zipfile.is_zipfile(path)


def last_checkpoint(output_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` continues from: the one named by ``output_dir/last_checkpoint``,
    or, when that file is missing or truncated, the newest intact periodic ``model_*.pth`` (with a
    warning naming both); None when there is none."""
    tag = os.path.join(output_dir, LAST_CHECKPOINT)
    if not os.path.isfile(tag):
        return None
    with open(tag, "r", encoding="utf-8") as f:
        name = f.read().strip()
    path = os.path.join(output_dir, name)
    if _intact(path):
        return path
    why = "does not exist" if not os.path.isfile(path) else "is truncated or damaged"
    periodic = sorted((f for f in os.listdir(output_dir) if re.fullmatch(r"model_\d+\.pth", f)), reverse=True)
    for f in periodic:
        candidate = os.path.join(output_dir, f)
        if candidate != path and _intact(candidate):
            logger.warning("%s names %s, which %s; resuming from the newest intact checkpoint %s instead",
                           tag, path, why, candidate)
            return candidate
    logger.warning("%s names %s, which %s, and no intact periodic checkpoint is left: starting from scratch",
                   tag, path, why)
    return None


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


def save_model_state(module: nn.Module, cfg, path: str, metadata: Dict[str, Any]) -> str:
    """Write ``module``'s current state to ``path`` (e.g. after the evaluation stored thresholds and
    post-fit buffers), keeping every other entry already in that file (training state,
    iteration, detectron2's extra entries). ``metadata`` (see :func:`checkpoint_metadata`)
    replaces the ``"ood_det"`` entry. Both backends' evaluations save through this function."""
    old: Dict[str, Any] = {}
    if os.path.isfile(path):
        try:
            old = load_checkpoint(path, require_model=False)
        except (RuntimeError, ValueError, OSError) as e:  # not ours / unreadable: replaced, said so
            logger.warning("could not read %s (%s); writing a fresh checkpoint", path, e)
    ckpt = dict(old) if isinstance(old, dict) else {}
    ckpt["model"] = {k: v.detach().cpu() for k, v in unwrap(module).state_dict().items()}
    ckpt.setdefault("iteration", 0)
    ckpt["cfg"] = cfg.dump()
    ckpt["ood_det"] = dict(metadata)
    return save_checkpoint(ckpt, path, tag_last=False)


def evaluated_checkpoint_path(output_dir: str, weights: Optional[str]) -> str:
    """Where an evaluation saves the model with its thresholds: ``weights`` itself when it lies in
    ``output_dir`` (the run's own checkpoint gains its thresholds), else
    ``output_dir/model_final.pth`` (a checkpoint from elsewhere is never modified)."""
    if weights and os.path.isfile(weights) and \
            os.path.abspath(os.path.dirname(weights)) == os.path.abspath(output_dir):
        return weights
    return os.path.join(output_dir, "model_final.pth")
