"""Data loading of the torchvision backend: detectron2-style dataset dicts -> image tensors + targets.

Images are read with :func:`ood_det.data.io.read_image` (RGB uint8). An unreadable / corrupt
image is skipped with a warning naming it (once per file and process); the batch then holds
fewer images and the file name is reported in the batch's ``"skipped"`` list, which the training
loop and the evaluator count. Images without objects are kept (background-only images) unless
``filter_empty`` drops them. Resizing and normalisation are done by the model
(torchvision's ``GeneralizedRCNNTransform``); training adds a random horizontal flip.
"""
from __future__ import annotations

import logging
from typing import Dict, Iterator, List, Sequence

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..data.io import ImageReadError, read_image

logger = logging.getLogger(__name__)

BOX_MODE_XYXY_ABS = 0
BOX_MODE_XYWH_ABS = 1


def annotation_boxes(record: Dict, known_only: bool = True):
    """``(boxes [N, 4] float32 xyxy, category_ids [N] int64)`` of a dataset dict.

    Crowd boxes are dropped; with ``known_only`` unknown objects (``category_id`` -1) too.
    """
    boxes, cats = [], []
    for j, a in enumerate(record.get("annotations", []) or []):
        if a.get("iscrowd", 0):
            continue
        cid = int(a["category_id"])
        if known_only and cid < 0:
            continue
        x0, y0, x1, y1 = (float(v) for v in a["bbox"])
        mode = int(a.get("bbox_mode", BOX_MODE_XYXY_ABS))
        if mode == BOX_MODE_XYWH_ABS:
            x1, y1 = x0 + x1, y0 + y1
        elif mode != BOX_MODE_XYXY_ABS:
            raise ValueError(
                f"{record.get('file_name')}: annotation {j} has bbox_mode={mode}; "
                "only XYXY_ABS (0) and XYWH_ABS (1) are supported"
            )
        boxes.append([x0, y0, x1, y1])
        cats.append(cid)
    return (
        torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        torch.tensor(cats, dtype=torch.int64),
    )


class DetectionDataset(Dataset):
    """Map-style dataset over dataset dicts.

    Args:
        dicts: detectron2-style dataset dicts (``category_id`` 0..K-1, -1 = unknown object).
        is_train: training mode (unknown objects dropped from the targets, random flip).
        flip: "horizontal" or "none" (training only).

    Item: ``{"image": [3, H, W] float in [0, 1], "target": {"boxes" [N, 4], "labels" [N] =
    category_id + 1 (torchvision convention)}, "index": i}`` or ``{"skipped": file_name,
    "index": i}`` when the image cannot be read.
    """

    def __init__(self, dicts: Sequence[Dict], is_train: bool, flip: str = "horizontal"):
        if flip not in ("horizontal", "none", ""):
            raise ValueError(f"INPUT.RANDOM_FLIP={flip!r}: expected 'horizontal' or 'none'")
        self.dicts = list(dicts)
        self.is_train = is_train
        self.flip = is_train and flip == "horizontal"
        self._warned = set()

    def __len__(self) -> int:
        return len(self.dicts)

    def __getitem__(self, i: int) -> Dict:
        rec = self.dicts[i]
        try:
            img = read_image(rec["file_name"])
        except ImageReadError as e:
            if rec["file_name"] not in self._warned:
                self._warned.add(rec["file_name"])
                logger.warning("skipping image: %s", e)
            return {"skipped": rec["file_name"], "index": i}
        image = torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0)
        h, w = image.shape[-2:]
        boxes, cats = annotation_boxes(rec, known_only=True)
        if boxes.numel():
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            ok = (boxes[:, 2] - boxes[:, 0] > 1e-3) & (boxes[:, 3] - boxes[:, 1] > 1e-3)
            boxes, cats = boxes[ok], cats[ok]
        if self.flip and torch.rand(()) < 0.5:
            image = image.flip(-1)
            boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
        return {"image": image, "target": {"boxes": boxes, "labels": cats + 1}, "index": i}


def collate(batch: List[Dict]) -> Dict:
    """``{"images": [...], "targets": [...], "indices": [...], "skipped": [file names]}``."""
    ok = [b for b in batch if "skipped" not in b]
    return {
        "images": [b["image"] for b in ok],
        "targets": [b["target"] for b in ok],
        "indices": [b["index"] for b in ok],
        "skipped": [b["skipped"] for b in batch if "skipped" in b],
    }


class InfiniteSampler(Sampler):
    """Endless reshuffled index stream, sharded over processes (rank r takes every world-th)."""

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True):
        if size <= 0:
            raise ValueError("InfiniteSampler needs a non-empty dataset")
        self.size, self.seed, self.rank, self.world_size, self.shuffle = size, int(seed), rank, world_size, shuffle

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed)
        while True:
            order = torch.randperm(self.size, generator=g) if self.shuffle else torch.arange(self.size)
            yield from order[self.rank :: self.world_size].tolist()


def build_train_loader(dicts, batch_size: int, seed: int, num_workers: int = 0, flip: str = "horizontal",
                       rank: int = 0, world_size: int = 1) -> DataLoader:
    """Endless training loader (``batch_size`` images per process)."""
    ds = DetectionDataset(dicts, is_train=True, flip=flip)
    g = torch.Generator().manual_seed(int(seed) + 1000 * rank)
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=InfiniteSampler(len(ds), seed, rank, world_size),
        num_workers=num_workers,
        collate_fn=collate,
        generator=g,
        persistent_workers=num_workers > 0,
    )


def build_test_loader(dicts, batch_size: int = 1, num_workers: int = 0) -> DataLoader:
    """Sequential inference loader (no augmentation)."""
    ds = DetectionDataset(dicts, is_train=False)
    return DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
