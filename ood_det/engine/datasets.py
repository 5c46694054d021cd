"""Dataset access of the engine: catalog look-ups with clear errors, class names, and the tiny
``digits_ood_smoke_*`` variant of DigitsOOD used by ``configs/Digits-OOD/smoke.yaml``.

``digits_ood_smoke_{train,val,test,ood,mixed}`` are generated (like ``digits_ood_*``) on first
use, in ``<datasets root>/digits_ood_smoke`` with :data:`SMOKE_IMAGES` images per split.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..data import catalog

logger = logging.getLogger(__name__)

#: images per split of the smoke-test variant of DigitsOOD
SMOKE_IMAGES: Dict[str, int] = {"train": 64, "val": 24, "test": 24, "ood": 24, "mixed": 16}
SMOKE_PREFIX = "digits_ood_smoke"


def register_digits_ood_smoke(root: Optional[Path] = None) -> None:
    """(Re-)register ``digits_ood_smoke_*`` under ``root`` (default: the catalog's datasets root)."""
    from ..data.digits_ood import (
        DIGITS_SPLITS,
        SPLIT_DISTRIBUTION,
        DigitsOODConfig,
        digits_ood_class_names,
        ensure_digits_ood,
        load_digits_ood,
    )

    droot = Path(root) if root is not None else catalog.datasets_root() / SMOKE_PREFIX
    config = DigitsOODConfig(images=SMOKE_IMAGES)

    def loader(split):
        def load():
            ensure_digits_ood(droot, config, regenerate="auto", progress=False)
            return load_digits_ood(split, droot, regenerate="never")

        return load

    for split in DIGITS_SPLITS:
        dist = SPLIT_DISTRIBUTION[split]
        catalog.register(
            f"{SMOKE_PREFIX}_{split}", loader(split), overwrite=True,
            thing_classes=list(digits_ood_class_names(droot)), distribution=dist,
            evaluator_type="coco" if dist == "id" else "ood", root=str(droot), split=split, generated=True,
        )


register_digits_ood_smoke()


def get_dicts(name: str) -> List[Dict]:
    """Dataset dicts of ``name``; an empty dataset is an error naming it."""
    dicts = catalog.get(name)
    if not dicts:
        md = catalog.metadata(name)
        where = md.get("json_file") or md.get("dirname") or md.get("root") or "?"
        raise ValueError(f"dataset {name!r} is empty: no images (read from {where})")
    return dicts


def get_class_names(names: Sequence[str], num_classes: Optional[int] = None) -> List[str]:
    """The known classes (``thing_classes``) shared by the datasets ``names``; checked against
    ``MODEL.ROI_HEADS.NUM_CLASSES``."""
    if not names:
        raise ValueError("no dataset given (DATASETS.TRAIN / DATASETS.TEST is empty)")
    classes = None
    for n in names:
        c = catalog.metadata(n).get("thing_classes")
        if c is None:
            continue
        if classes is not None and list(c) != classes:
            raise ValueError(f"datasets {list(names)} have different classes: {classes} vs {list(c)} ({n!r})")
        classes = list(c)
    if classes is None:
        if num_classes is None:
            raise ValueError(f"datasets {list(names)} declare no thing_classes")
        classes = [str(i) for i in range(num_classes)]
    if num_classes is not None and len(classes) != num_classes:
        raise ValueError(
            f"MODEL.ROI_HEADS.NUM_CLASSES={num_classes} but datasets {list(names)} have {len(classes)} "
            f"known classes {classes}"
        )
    return classes


def get_train_dicts(cfg) -> List[Dict]:
    """DATASETS.TRAIN concatenated; unknown objects dropped from the targets later; images with no
    known object removed when ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``."""
    names = list(cfg.DATASETS.TRAIN)
    if not names:
        raise ValueError("DATASETS.TRAIN is empty: nothing to train on")
    dicts = [d for n in names for d in get_dicts(n)]
    if cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS:
        kept = [
            d for d in dicts
            if any(int(a["category_id"]) >= 0 and not a.get("iscrowd", 0) for a in d.get("annotations", []))
        ]
        if len(kept) < len(dicts):
            logger.info("removed %d training image(s) without known objects", len(dicts) - len(kept))
        if not kept:
            raise ValueError(f"DATASETS.TRAIN {names}: no image has a known-class object")
        dicts = kept
    return dicts
