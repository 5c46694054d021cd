"""Shared fixtures.

* ``smoke_run`` (session): trains + evaluates ``configs/Digits-OOD/smoke.yaml`` once into a
  temporary directory (DigitsOOD smoke splits generated there too) and returns a
  :class:`SmokeRun` (``config``, ``output_dir``, ``weights``, ``metrics``).
* ``tiny_detection_dataset``: a handful of synthetic images with boxes, registered in the dataset
  catalog for a test (train / val / ood), removed afterwards.
* ``tiny_opts`` / ``tiny_cfg``: overrides of / a very small torchvision-backend config on that
  dataset.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
import torch

from .require_d2 import (  # noqa: F401,E402  (hooks: OOD_DET_REQUIRE_D2=1 fails on a skipped detectron2 test)
    pytest_collectreport,
    pytest_runtest_logreport,
    pytest_sessionfinish,
    pytest_terminal_summary,
)

REPO = Path(__file__).resolve().parents[1]
SMOKE_CONFIG = REPO / "configs" / "Digits-OOD" / "smoke.yaml"

# two cores shared by many tests: one intra-op thread avoids oversubscription
torch.set_num_threads(1)


@dataclass
class SmokeRun:
    config: str
    output_dir: str
    weights: str
    metrics: Dict[str, Any] = field(default_factory=dict)
    opts: List[str] = field(default_factory=list)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> SmokeRun:
    """Train + evaluate the smoke config once per session (about 30-60 s on 2 CPU cores)."""
    from ood_det.data.builtin import register_digits_ood_smoke
    from ood_det.apps.train import main

    # the smoke splits are generated in a temporary directory, registered there for the session
    register_digits_ood_smoke(tmp_path_factory.mktemp("digits_ood_smoke"))
    out = tmp_path_factory.mktemp("smoke_out")
    opts = ["OUTPUT_DIR", str(out)]
    main(["--config", str(SMOKE_CONFIG), *opts])
    with open(out / "metrics.json", encoding="utf-8") as f:
        metrics = json.load(f)
    return SmokeRun(config=str(SMOKE_CONFIG), output_dir=str(out), weights=str(out / "model_final.pth"),
                    metrics=metrics, opts=opts)


# ----------------------------------------------------------------------- a tiny dataset
def _draw(rng, h=64, w=64, n_obj=2, classes=(0, 1)):
    """Dark canvas with bright filled shapes: class 0 = square, 1 = horizontal bar, 2 = cross."""
    img = np.full((h, w, 3), 20, np.uint8)
    anns = []
    for _ in range(n_obj):
        c = int(rng.choice(classes))
        s = int(rng.integers(12, 22))
        x0, y0 = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
        if c == 0:
            img[y0:y0 + s, x0:x0 + s] = 230
            box = [x0, y0, x0 + s, y0 + s]
        elif c == 1:
            img[y0:y0 + s // 2, x0:x0 + s] = 200
            box = [x0, y0, x0 + s, y0 + s // 2]
        else:
            img[y0:y0 + s, x0 + s // 2 - 2:x0 + s // 2 + 2] = 180
            img[y0 + s // 2 - 2:y0 + s // 2 + 2, x0:x0 + s] = 180
            box = [x0, y0, x0 + s, y0 + s]
        anns.append({"bbox": [float(v) for v in box], "bbox_mode": 0,
                     "category_id": c if c < 2 else -1, **({"unknown_class": "cross"} if c == 2 else {})})
    return img, anns


def write_tiny_split(root: Path, split: str, n: int, classes, seed: int) -> List[Dict]:
    import cv2

    rng = np.random.default_rng(seed)
    (root / split).mkdir(parents=True, exist_ok=True)
    dicts = []
    for i in range(n):
        img, anns = _draw(rng, classes=classes)
        fn = root / split / f"{i:03d}.png"
        cv2.imwrite(str(fn), img[:, :, ::-1])
        dicts.append({"file_name": str(fn), "image_id": i + 1, "height": 64, "width": 64, "annotations": anns})
    return dicts


@pytest.fixture
def tiny_detection_dataset(tmp_path):
    """Registers ``tiny_{train,val,ood,mixed}`` (2 known classes; unknown = crosses); yields
    ``{split: dataset dicts}``."""
    from ood_det.data import catalog

    splits = {
        "train": write_tiny_split(tmp_path, "train", 8, (0, 1), 0),
        "val": write_tiny_split(tmp_path, "val", 4, (0, 1), 1),
        "ood": write_tiny_split(tmp_path, "ood", 4, (2,), 2),
        "mixed": write_tiny_split(tmp_path, "mixed", 3, (0, 2), 3),
    }
    dist = {"train": "id", "val": "id", "ood": "ood", "mixed": "mixed"}
    for s, d in splits.items():
        catalog.register(f"tiny_{s}", (lambda d=d: [dict(x) for x in d]), overwrite=True,
                         thing_classes=["square", "bar"], distribution=dist[s], root=str(tmp_path))
    yield splits
    for s in splits:
        catalog.remove(f"tiny_{s}")


TINY_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.NORM", "BN",
    "MODEL.FPN.OUT_CHANNELS", "16", "MODEL.ROI_BOX_HEAD.FC_DIM", "32",
    "MODEL.ANCHOR_GENERATOR.SIZES", "[[8], [16], [32], [64], [128]]",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "100", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "50",
    "MODEL.RPN.PRE_NMS_TOPK_TEST", "100", "MODEL.RPN.POST_NMS_TOPK_TEST", "30",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "32",
    "MODEL.ROI_HEADS.NUM_CLASSES", "2", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "DATASETS.TRAIN", "('tiny_train',)", "DATASETS.TEST", "('tiny_val',)",
    "DATASETS.OOD_TEST", "('tiny_ood', 'tiny_mixed')",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.01", "SOLVER.MAX_ITER", "4",
    "SOLVER.STEPS", "(3,)", "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "2",
    "SEED", "0",
]


@pytest.fixture
def tiny_opts():
    """Config overrides of a very small torchvision model on the ``tiny_*`` datasets."""
    return list(TINY_OPTS)


@pytest.fixture
def tiny_cfg(tiny_detection_dataset, tmp_path):
    """A tiny torchvision config on ``tiny_*`` writing to ``tmp_path/out`` (not frozen)."""
    from ood_det.apps.config import load_config

    return load_config(None, TINY_OPTS + ["OUTPUT_DIR", str(tmp_path / "out")])
