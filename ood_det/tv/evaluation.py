"""The torchvision backend's side of the evaluation protocol (:mod:`ood_det.evaluation.driver`).

:class:`TVProtocolBackend` runs the model and hands the protocol plain arrays:

* :meth:`~TVProtocolBackend.predict_dataset`: every image of a dataset through the model
  (batched, unreadable images skipped and named) -> a :class:`~ood_det.evaluation.Predictions`
  store with every requested OOD score and ``roi_conf`` per box;
* :meth:`~TVProtocolBackend.validation_rois`: proposals of the trained RPN plus the ground-truth
  boxes of ID validation images, labelled and sampled exactly as in training (IoU matching,
  ``ROI_HEADS.BATCH_SIZE_PER_IMAGE``) -> core logits, labels and box features for the head's
  post-fit.

The protocol runs on the main process only (the torchvision trainer evaluates on rank 0).
"""
from __future__ import annotations

import logging
from typing import List, Sequence, Tuple

import torch

from ..engine.checkpoint import unwrap
from ..evaluation import Predictions
from ..evaluation.driver import ProtocolBackend
from ..data import catalog
from .data import build_test_loader
from .model import OODFasterRCNN, detections_to_numpy
from .roi_heads import tv_to_core_labels

logger = logging.getLogger("ood_det")

INFERENCE_BATCH = 4


class TVProtocolBackend(ProtocolBackend):
    """Args:
        model: an :class:`OODFasterRCNN` (or DDP-wrapped one).
        num_workers: data-loading processes (``DATALOADER.NUM_WORKERS``).
        batch_size: images per forward pass.
    """

    name = "torchvision"

    def __init__(self, model: OODFasterRCNN, num_workers: int = 0, batch_size: int = INFERENCE_BATCH):
        self.model = unwrap(model)
        self.num_workers = int(num_workers)
        self.batch_size = int(batch_size)

    @property
    def class_names(self) -> List[str]:
        return list(self.model.class_names)

    @property
    def box_classifier(self):
        return self.model.classifier

    @property
    def module(self) -> torch.nn.Module:
        return self.model

    @torch.no_grad()
    def predict_dataset(self, name: str, scores: Sequence[str]) -> Tuple[Predictions, List[str]]:
        from tqdm import tqdm

        dicts = catalog.get_dicts(name)
        names = self.model.classifier.check_scores(scores)
        model = self.model
        was_training = model.training
        model.eval()
        device = model.device
        preds, skipped = Predictions(names), []
        try:
            loader = build_test_loader(dicts, batch_size=self.batch_size, num_workers=self.num_workers)
            with tqdm(total=len(dicts), desc=f"inference {name}", unit="img", leave=False) as bar:
                for batch in loader:
                    skipped += batch["skipped"]
                    if batch["images"]:
                        outs = model([im.to(device) for im in batch["images"]])
                        for i, o in zip(batch["indices"], outs):
                            d = detections_to_numpy(o, names)
                            preds.add(dicts[i]["image_id"], d["boxes"], d["labels"], d["scores"], d["ood_scores"],
                                      roi_conf=d["roi_conf"])
                    bar.update(len(batch["indices"]) + len(batch["skipped"]))
        finally:
            model.train(was_training)
        if skipped:
            logger.warning("%s: %d unreadable image(s) skipped: %s", name, len(skipped), ", ".join(skipped[:5]))
        return preds, skipped

    @torch.no_grad()
    def validation_rois(self, name: str, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from tqdm import tqdm

        model = self.model
        was_training = model.training
        model.eval()
        device = model.device
        rh = model.roi_heads
        all_logits, all_labels, all_feats = [], [], []
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                loader = build_test_loader(catalog.get_dicts(name), batch_size=self.batch_size)
                for batch in tqdm(loader, desc=f"ROIs of {name}", unit="batch", leave=False):
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
            return (torch.zeros(0, model.classifier.num_classes + 1), torch.zeros(0, dtype=torch.long),
                    torch.zeros(0, 0))
        return torch.cat(all_logits), torch.cat(all_labels), torch.cat(all_feats)
