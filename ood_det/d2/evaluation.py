"""The detectron2 backend's side of the evaluation protocol (:mod:`ood_det.evaluation.driver`).

* :class:`OODEvaluator` - a detectron2 ``DatasetEvaluator`` that collects per-box predictions
  (boxes, labels, confidences, ``roi_conf`` and every OOD score of the ``ood_score_table`` field)
  into the shared :class:`ood_det.evaluation.Predictions` store, gathered over processes. It also
  works inside detectron2's own ``DefaultTrainer.test``.
* :class:`D2ProtocolBackend` - what the protocol asks of a backend: predictions of a dataset
  (detectron2's ``inference_on_dataset`` with :class:`OODEvaluator`) and the labelled ROIs of ID
  validation images (proposals of the trained RPN labelled and sampled exactly as in training by
  ``roi_heads.label_and_sample_proposals``), with their box features, for the head's post-fit.

Dataset dicts and their roles come from detectron2's ``DatasetCatalog`` / ``MetadataCatalog``
(every ood_det dataset is mirrored there, see :mod:`ood_det.d2.datasets`).
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_test_loader
from detectron2.data import transforms as T
from detectron2.data.dataset_mapper import DatasetMapper
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset
from detectron2.utils import comm
from detectron2.utils.events import EventStorage
from tqdm import tqdm

from ..evaluation import Predictions, flatten_results
from ..evaluation.driver import ProtocolBackend
from .inference import find_ood_predictor, instances_to_numpy

__all__ = ["OODEvaluator", "D2ProtocolBackend", "flat_metrics"]

logger = logging.getLogger(__name__)


def _unwrap(model):
    return model.module if hasattr(model, "module") and isinstance(model.module, torch.nn.Module) else model


class OODEvaluator(DatasetEvaluator):
    """Collects detectron2 outputs into a :class:`Predictions` store.

    Args:
        score_names: the head's ``supported_scores`` (columns of the ``ood_score_table`` field).
        dataset_name: for logs and the dump file name.
        scores: the scores to keep (default: all).
        distributed: gather the predictions of all processes on the main one.
        output_dir: if given, :meth:`evaluate` dumps the predictions to
            ``output_dir/<dataset_name>.npz``.

    After :meth:`evaluate`, :attr:`predictions` holds the (gathered) store on the main process
    (None elsewhere); :meth:`evaluate` itself returns only counts.
    """

    def __init__(self, score_names: Sequence[str], dataset_name: str = "", scores: Optional[Sequence[str]] = None,
                 distributed: bool = True, output_dir: Optional[str] = None):
        self.score_names = tuple(score_names)
        self.scores = tuple(scores) if scores is not None else self.score_names
        self.dataset_name = dataset_name
        self.distributed = distributed
        self.output_dir = output_dir
        self.predictions: Optional[Predictions] = None
        self._store = Predictions(self.scores)

    def reset(self):
        self._store = Predictions(self.scores)
        self.predictions = None

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            d = instances_to_numpy(out["instances"], self.score_names, self.scores)
            self._store.add(inp["image_id"], d["boxes"], d["labels"], d["scores"], d["ood_scores"],
                            roi_conf=d["roi_conf"])

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
            store.save(os.path.join(self.output_dir, f"{self.dataset_name or 'dataset'}.npz"))
        return {"ood_det": {"num_images": float(len(store)), "num_boxes": float(store.num_boxes)}}


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


class D2ProtocolBackend(ProtocolBackend):
    """Args:
        cfg: the detectron2 config (test-time input sizes, ``DATALOADER.NUM_WORKERS``).
        model: the detectron2 model with :class:`~ood_det.d2.roi_heads.OODROIHeads` (DDP ok).
        max_val_images: use only the first images of the validation set (tests, quick runs).
    """

    name = "detectron2"

    def __init__(self, cfg, model, max_val_images: Optional[int] = None):
        self.cfg = cfg
        self.model = _unwrap(model)
        self.predictor = find_ood_predictor(self.model)
        self.max_val_images = max_val_images

    @property
    def class_names(self) -> List[str]:
        for name in list(self.cfg.DATASETS.TEST) + list(self.cfg.DATASETS.TRAIN):
            names = list(MetadataCatalog.get(name).get("thing_classes", []) or [])
            if names:
                return names
        return [f"class_{i}" for i in range(self.box_classifier.num_classes)]

    @property
    def box_classifier(self):
        return self.predictor.box_classifier

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    def dataset_dicts(self, name: str) -> List[Dict[str, Any]]:
        dicts = DatasetCatalog.get(name)
        if not dicts:
            raise ValueError(f"dataset {name!r} is empty: no images")
        return dicts

    def distribution(self, name: str) -> str:
        return MetadataCatalog.get(name).get("distribution", "ood")

    def predict_dataset(self, name: str, scores: Sequence[str]) -> Tuple[Optional[Predictions], List[str]]:
        # images only: the test mapper drops annotations anyway, and detectron2's dataset
        # statistics refuse unknown objects (category_id -1)
        dicts = [{k: v for k, v in d.items() if k != "annotations"} for d in self.dataset_dicts(name)]
        loader = build_detection_test_loader(
            dicts, mapper=DatasetMapper(self.cfg, is_train=False), num_workers=self.cfg.DATALOADER.NUM_WORKERS
        )
        clf = self.box_classifier
        ev = OODEvaluator(clf.head.supported_scores, name, scores=clf.check_scores(scores))
        inference_on_dataset(
            self.model, tqdm(loader, desc=f"inference {name}", disable=not comm.is_main_process(), leave=False), ev
        )
        return ev.predictions, []

    @torch.no_grad()
    def validation_rois(self, name: str, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        dicts = self.dataset_dicts(name)
        if self.max_val_images is not None:
            dicts = dicts[: int(self.max_val_images)]
        loader = build_detection_test_loader(dicts, mapper=_LabelledMapper(self.cfg), num_workers=0)
        model, roi = self.model, self.model.roi_heads
        was_training = model.training
        model.eval()
        logits, labels, feats = [], [], []
        try:
            with EventStorage(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for batch in tqdm(loader, desc=f"ROIs of {name}", disable=not comm.is_main_process(), leave=False):
                    images = model.preprocess_image(batch)
                    fmap = model.backbone(images.tensor)
                    proposals, _ = model.proposal_generator(images, fmap, None)
                    targets = [b["instances"].to(model.device) for b in batch]
                    proposals = roi.label_and_sample_proposals(proposals, targets)
                    x = roi.box_pooler([fmap[f] for f in roi.box_in_features], [p.proposal_boxes for p in proposals])
                    x = torch.flatten(roi.box_head(x), start_dim=1)
                    logits.append(self.predictor.cls_score(x).float().cpu())
                    labels.append(torch.cat([p.gt_classes for p in proposals]).cpu())
                    feats.append(x.float().cpu())
        finally:
            model.train(was_training)
        k1 = self.box_classifier.num_classes + 1
        lg = torch.cat(logits) if logits else torch.zeros(0, k1)
        lb = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
        ft = torch.cat(feats) if feats else torch.zeros(0, 0)
        if comm.get_world_size() > 1:
            parts = comm.all_gather((lg, lb, ft))
            lg, lb, ft = (torch.cat([p[i] for p in parts]) for i in range(3))
        return lg, lb, ft


def flat_metrics(metrics: Dict[str, Any]) -> Dict[str, float]:
    """The floats of the protocol's ``summary`` and ``results``, keyed ``<ood set>/<metric path>``
    (what detectron2's ``EvalHook`` / ``EventStorage`` accept)."""
    return flatten_results({"summary": metrics.get("summary", {}), "results": metrics.get("results", {})})
