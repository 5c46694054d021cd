"""``Predictor``: a trained checkpoint ready to score images, with its class names and stored
unknown thresholds.

    >>> p = Predictor.from_checkpoint("configs/x.yaml", "output/model_final.pth")
    >>> dets = p([rgb_uint8_hxwx3])            # one dict per image
    >>> unknown = dets[0]["ood_scores"] < p.threshold()

Both backends work: the model comes from the backend of ``cfg.BACKEND``
(``build_inference_model``), and is used only through the inference contract
``predict_images(images, scores=[...])`` (see :meth:`ood_det.tv.model.OODFasterRCNN.predict_images`).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..engine.checkpoint import CheckpointMismatchError, check_metadata
from ..scores import SCORE_NAMES

__all__ = ["Predictor", "CheckpointMismatchError", "ThresholdNotSetError", "check_metadata", "find_box_classifier"]


class ThresholdNotSetError(LookupError):
    """No unknown threshold is stored for the asked score."""


def find_box_classifier(model) -> Optional[nn.Module]:
    """The :class:`~ood_det.modeling.box_classifier.OODBoxClassifier` inside ``model`` (an
    ``nn.Module`` or a wrapper with a ``.model`` attribute), or None."""
    from ..modeling.box_classifier import OODBoxClassifier

    for m in (model, getattr(model, "model", None)):
        if isinstance(m, nn.Module):
            for sub in m.modules():
                if isinstance(sub, OODBoxClassifier):
                    return sub
    return None


def _state_module(model) -> nn.Module:
    for m in (model, getattr(model, "model", None)):
        if isinstance(m, nn.Module):
            return m
    raise TypeError(f"the inference model ({type(model).__name__}) is no torch module: cannot "
                    "load weights into it")


def _to_numpy(x, dtype) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu").numpy()
    return np.asarray(x, dtype=dtype)


class Predictor:
    """Runs an inference model on RGB images and knows its classes, scores and thresholds.

    Args:
        model: an object with ``predict_images(images, scores=None)`` (the inference contract of
            both backends), in eval mode.
        class_names: the K known class names (default ``class_0 ...``).
        score: default OOD score (default: the model's configured score).
        source: where the model came from (for error messages), e.g. the checkpoint path.
    """

    def __init__(self, model, class_names: Optional[Sequence[str]] = None,
                 score: Optional[str] = None, source: str = "the model"):
        if not callable(getattr(model, "predict_images", None)):
            raise TypeError(f"{type(model).__name__} has no predict_images(images, scores=None)")
        self.model = model
        self.source = source
        self.classifier = find_box_classifier(model)
        k = self.classifier.num_classes if self.classifier is not None else None
        if class_names is None:
            if k is None:
                raise ValueError("class_names are needed: no OODBoxClassifier found in the model")
            class_names = [f"class_{i}" for i in range(k)]
        self.class_names: List[str] = [str(c) for c in class_names]
        if k is not None and len(self.class_names) != k:
            raise CheckpointMismatchError(
                f"{source}: {len(self.class_names)} class names for a model of {k} classes")
        self.score: str = score or (self.classifier.score if self.classifier is not None
                                    else "msp")
        if self.score not in self.score_names:
            raise ValueError(f"score {self.score!r} is not supported by the model's head; "
                             f"supported: {', '.join(self.score_names)}")

    # -------------------------------------------------------------- properties
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def score_names(self) -> tuple:
        """The OOD scores the model's head supports."""
        if self.classifier is None:
            return tuple(SCORE_NAMES)
        return tuple(self.classifier.head.supported_scores)

    def _check_score(self, score: Optional[str]) -> str:
        score = score or self.score
        if score not in self.score_names:
            raise ValueError(f"score {score!r} is not supported by the model's head "
                             f"({self.source}); supported: {', '.join(self.score_names)}")
        return score

    @property
    def conf_thresh(self) -> Optional[float]:
        """The box-confidence threshold the evaluation stored (F1-optimal on ID validation), or
        None: the scoring tool keeps boxes above it by default."""
        return self.classifier.conf_threshold() if self.classifier is not None else None

    def threshold(self, score: Optional[str] = None, required: bool = True) -> Optional[float]:
        """Stored unknown threshold of ``score`` (default: :attr:`score`): a box is unknown when
        its OOD score is below it.

        Raises:
            ThresholdNotSetError: if none was stored (and ``required``); with ``required=False``
                returns None instead.
        """
        score = self._check_score(score)
        value = self.classifier.threshold(score) if self.classifier is not None else None
        if value is None and required:
            raise ThresholdNotSetError(
                f"{self.source} stores no unknown threshold for score {score!r}: run the "
                "evaluation on ID validation data (it stores one per score in the checkpoint) "
                "or pass --threshold T")
        return value

    # ------------------------------------------------------------------ predict
    @torch.inference_mode()
    def __call__(self, images: Union[np.ndarray, Sequence[np.ndarray]],
                 score: Optional[str] = None) -> List[Dict[str, np.ndarray]]:
        """Detect and score.

        Args:
            images: a list of ``H x W x 3`` uint8 **RGB** arrays (sizes may differ), or one.
            score: OOD score name (default :attr:`score`).

        Returns:
            one dict per image of numpy arrays: ``boxes [N, 4]`` float32 xyxy pixels,
            ``labels [N]`` int64 in ``0 .. K-1``, ``scores [N]`` float32 box confidence,
            ``ood_scores [N]`` float32 (higher = more in-distribution).
        """
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        images = list(images)
        for i, im in enumerate(images):
            if not isinstance(im, np.ndarray) or im.ndim != 3 or im.shape[2] != 3 \
                    or im.dtype != np.uint8:
                desc = (f"{type(im).__name__} {getattr(im, 'shape', '')} "
                        f"{getattr(im, 'dtype', '')}").strip()
                raise ValueError(f"images[{i}]: expected an H x W x 3 uint8 RGB array, got {desc}")
        score = self._check_score(score)
        if not images:
            return []
        outs = self.model.predict_images(images, scores=[score])
        res = []
        for o in outs:
            res.append({
                "boxes": _to_numpy(o["boxes"], np.float32).reshape(-1, 4),
                "labels": _to_numpy(o["labels"], np.int64).reshape(-1),
                "scores": _to_numpy(o["scores"], np.float32).reshape(-1),
                "ood_scores": _to_numpy(o["ood_scores"][score], np.float32).reshape(-1),
            })
        return res

    # ------------------------------------------------------------------- build
    @classmethod
    def from_checkpoint(cls, config_path: str, weights_path: str, device: Optional[str] = "cpu",
                        opts: Sequence[str] = ()) -> "Predictor":
        """Load ``config_path`` (+ ``opts`` overrides), build the inference model, load
        ``weights_path`` into it and check that they belong together.

        Args:
            device: torch device (``"cpu"``, ``"cuda:0"``, ``"auto"``); None keeps the config's
                ``MODEL.DEVICE``.

        Raises:
            FileNotFoundError: a missing config or checkpoint.
            CheckpointMismatchError: the checkpoint's ``ood_det`` metadata (backend, head, class
                count) differs from the config's, or its tensors do not fit the model (strict
                loading); the message names both values and both files.
            RuntimeError / ValueError: an unreadable checkpoint or a bad config (named).
        """
        from ..engine.checkpoint import load_checkpoint
        from .backends import get_backend
        from .config import load_config

        for what, p in (("config", config_path), ("checkpoint", weights_path)):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{what} file {p!r} does not exist")
        cfg = load_config(config_path, list(opts or ()))
        ckpt = load_checkpoint(weights_path)
        meta = ckpt.get("ood_det") or None
        check_metadata(meta, cfg, config_path, weights_path)
        names = list(meta["class_names"]) if meta and meta.get("class_names") else None

        if cfg.is_frozen():
            cfg.defrost()
        if device is not None:
            cfg.MODEL.DEVICE = str(device)
        cfg.MODEL.WEIGHTS = ""  # loaded below, strictly
        model = get_backend(cfg.BACKEND).build_inference_model(cfg, class_names=names)
        if meta is None and cfg.BACKEND == "detectron2":
            model.load(weights_path)  # not ours (e.g. a detectron2 .pkl): its own loader
        else:
            module = _state_module(model)
            try:
                module.load_state_dict(ckpt["model"], strict=True)
            except RuntimeError as e:
                lines = [x.strip() for x in str(e).splitlines() if x.strip()]
                detail = " ".join(lines[:6]) + (" ..." if len(lines) > 6 else "")
                raise CheckpointMismatchError(
                    f"checkpoint {weights_path} does not fit the model built from config "
                    f"{config_path}: {detail}") from None
        model.eval()
        if names is None:
            names = getattr(model, "class_names", None)
        return cls(model, class_names=names, source=f"checkpoint {weights_path}")
