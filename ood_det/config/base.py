"""The config schema of the torchvision backend, and the YAML reading both backends share.

``get_cfg()`` returns an fvcore :class:`CfgNode` that uses detectron2's key names wherever a
concept is shared (``MODEL.ROI_HEADS.NUM_CLASSES``, ``SOLVER.BASE_LR``, ``INPUT.MIN_SIZE_TRAIN``,
...) plus the ``MODEL.OOD`` / ``TEST.OOD`` / ``DATASETS.OOD_TEST`` keys of
:func:`ood_det.config.add_ood_config`. The top-level key ``BACKEND`` ("torchvision" or
"detectron2") picks the backend, so one YAML schema serves both.

Units that differ from detectron2 are documented next to the key (``MODEL.PIXEL_MEAN`` is RGB
0-255 here because the torchvision backend reads RGB images).

This package holds schemas and file reading only: :func:`read_config_chain` (``_BASE_`` resolved
file by file), :func:`peek_backend` and :func:`merge_config` (errors name the file or the command
line a bad key came from). Which schema a file is merged into (ours or detectron2's) is decided
above the backends, by :func:`ood_det.apps.config.load_config`.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from fvcore.common.config import CfgNode as _FvCfgNode

from .defaults import add_ood_config

BACKENDS = ("torchvision", "detectron2")


class CfgNode(_FvCfgNode):
    """fvcore's ``CfgNode`` (``_BASE_`` inheritance, ``merge_from_list``)."""


def get_cfg() -> CfgNode:
    """A fresh default config of the torchvision backend (with the ``MODEL.OOD`` keys)."""
    C = CfgNode
    cfg = C()
    cfg.BACKEND = "torchvision"
    cfg.OUTPUT_DIR = "./output"
    # -1: pick a seed at random (logged); >= 0: deterministic data order and initialisation
    cfg.SEED = -1

    cfg.MODEL = C()
    # "auto" = cuda when available, else cpu; or any torch device string ("cpu", "cuda:1")
    cfg.MODEL.DEVICE = "auto"
    # full detector checkpoint (ours, or torchvision's own key names) loaded before training /
    # evaluation; "" = none
    cfg.MODEL.WEIGHTS = ""
    # RGB, 0-255 units (detectron2's default is BGR; this backend reads RGB)
    cfg.MODEL.PIXEL_MEAN = [123.675, 116.28, 103.53]
    cfg.MODEL.PIXEL_STD = [58.395, 57.12, 57.375]

    cfg.MODEL.BACKBONE = C()
    # "resnet_fpn" (torchvision's resnet_fpn_backbone); detectron2's name
    # "build_resnet_fpn_backbone" is accepted as an alias
    cfg.MODEL.BACKBONE.NAME = "resnet_fpn"
    # detectron2's meaning: 0 = train everything, 1 = freeze the stem, 2 = stem + res2, ... 5
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    # an ImageNet classification checkpoint of the ResNet (torchvision key names); "" = none
    cfg.MODEL.BACKBONE.WEIGHTS = ""

    cfg.MODEL.RESNETS = C()
    cfg.MODEL.RESNETS.DEPTH = 50  # 18, 34, 50 or 101
    # channels of res2 (doubled at each stage): 64 = torchvision's ResNets (ImageNet checkpoints
    # load only then); smaller = a narrower network for CPU-sized problems (torchvision backend)
    cfg.MODEL.RESNETS.WIDTH = 64
    # FrozenBN (pretrained backbones), BN (trainable BatchNorm, for training from scratch) or GN
    cfg.MODEL.RESNETS.NORM = "FrozenBN"

    cfg.MODEL.FPN = C()
    cfg.MODEL.FPN.OUT_CHANNELS = 256

    cfg.MODEL.ANCHOR_GENERATOR = C()
    # one list of sizes per FPN level (5 levels: P2-P6)
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[32], [64], [128], [256], [512]]
    cfg.MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS = [[0.5, 1.0, 2.0]]

    cfg.MODEL.RPN = C()
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 2000
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 1000
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 1000
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 1000
    cfg.MODEL.RPN.NMS_THRESH = 0.7
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = 256
    cfg.MODEL.RPN.POSITIVE_FRACTION = 0.5
    cfg.MODEL.RPN.IOU_THRESHOLDS = [0.3, 0.7]

    cfg.MODEL.ROI_HEADS = C()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 80  # K known classes (background not counted)
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 512
    cfg.MODEL.ROI_HEADS.POSITIVE_FRACTION = 0.25
    cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS = [0.5]
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.05
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = 0.5

    cfg.MODEL.ROI_BOX_HEAD = C()
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 1024
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO = 2
    cfg.MODEL.ROI_BOX_HEAD.BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)

    cfg.INPUT = C()
    # a tuple: one is drawn per training batch (multi-scale training)
    cfg.INPUT.MIN_SIZE_TRAIN = (800,)
    cfg.INPUT.MAX_SIZE_TRAIN = 1333
    cfg.INPUT.MIN_SIZE_TEST = 800
    cfg.INPUT.MAX_SIZE_TEST = 1333
    cfg.INPUT.RANDOM_FLIP = "horizontal"  # "horizontal" or "none"

    cfg.DATASETS = C()
    cfg.DATASETS.TRAIN = ()
    cfg.DATASETS.TEST = ()
    cfg.DATASETS.OOD_TEST = ()

    cfg.DATALOADER = C()
    cfg.DATALOADER.NUM_WORKERS = 2
    # drop training images without (known-class) objects
    cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS = True

    cfg.SOLVER = C()
    cfg.SOLVER.IMS_PER_BATCH = 16  # total over all processes
    cfg.SOLVER.BASE_LR = 0.02
    cfg.SOLVER.MOMENTUM = 0.9
    cfg.SOLVER.WEIGHT_DECAY = 0.0001
    cfg.SOLVER.MAX_ITER = 40000
    cfg.SOLVER.STEPS = (30000,)
    cfg.SOLVER.GAMMA = 0.1
    cfg.SOLVER.WARMUP_ITERS = 1000
    cfg.SOLVER.WARMUP_FACTOR = 1.0 / 1000
    cfg.SOLVER.WARMUP_METHOD = "linear"  # linear | constant
    cfg.SOLVER.CHECKPOINT_PERIOD = 5000
    cfg.SOLVER.AMP = C()
    cfg.SOLVER.AMP.ENABLED = False  # only used on CUDA
    cfg.SOLVER.CLIP_GRADIENTS = C()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = False
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"  # value | norm
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    cfg.SOLVER.CLIP_GRADIENTS.NORM_TYPE = 2.0

    cfg.TEST = C()
    cfg.TEST.EVAL_PERIOD = 0  # 0 = evaluate only at the end
    cfg.TEST.DETECTIONS_PER_IMAGE = 100

    add_ood_config(cfg)
    return cfg


# ---------------------------------------------------------------------------------- loading
def read_config_chain(path: str, _seen: Tuple[str, ...] = ()) -> List[Tuple[str, Dict[str, Any]]]:
    """``[(file, its keys without _BASE_), ...]`` base-first, resolving ``_BASE_`` relative to
    each file (what fvcore's ``load_yaml_with_base`` does, but file by file so that errors can
    name the file a key came from)."""
    import yaml

    path = os.path.abspath(os.path.expanduser(str(path)))
    if path in _seen:
        raise ValueError(f"config {path}: _BASE_ cycle through {' -> '.join(_seen + (path,))}")
    if not os.path.isfile(path):
        where = f" (a _BASE_ of {_seen[-1]})" if _seen else ""
        raise FileNotFoundError(f"config file {path}{where} does not exist")
    with open(path, "r", encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"config {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config {path}: expected a mapping at the top level, got {type(data).__name__}")
    bases = data.pop("_BASE_", None)
    chain: List[Tuple[str, Dict[str, Any]]] = []
    if bases:
        for b in [bases] if isinstance(bases, str) else list(bases):
            b = os.path.expanduser(str(b))
            if not os.path.isabs(b):
                b = os.path.join(os.path.dirname(path), b)
            chain.extend(read_config_chain(b, _seen + (path,)))
    chain.append((path, data))
    return chain


def peek_backend(chain, opts: Sequence[str] = ()) -> str:
    """The ``BACKEND`` a config chain + overrides select (default ``torchvision``)."""
    backend = "torchvision"
    for _, d in chain:
        backend = d.get("BACKEND", backend)
    opts = list(opts)
    for k, v in zip(opts[0::2], opts[1::2]):
        if k == "BACKEND":
            backend = v
    if backend not in BACKENDS:
        raise ValueError(f"BACKEND={backend!r}: expected one of {BACKENDS}")
    return backend


def _merge(cfg, data: Dict[str, Any], where: str) -> None:
    try:
        cfg.merge_from_other_cfg(type(cfg)(data))
    except KeyError as e:
        msg = e.args[0] if e.args else str(e)
        raise KeyError(f"{where}: {msg} (a typo? see ood_det/config/base.py for the keys)") from None
    except (ValueError, AssertionError) as e:
        raise ValueError(f"{where}: {e}") from None


def merge_config(cfg, chain: Sequence[Tuple[str, Dict[str, Any]]], opts: Optional[Sequence[str]] = None,
                 freeze: bool = False):
    """Merge the files of ``chain`` (from :func:`read_config_chain`) and the ``KEY VALUE`` pairs
    ``opts`` into ``cfg`` in place; returns it. An unknown key raises a ``KeyError`` naming the key
    and the file (or "command line") it came from."""
    opts = list(opts or [])
    if len(opts) % 2:
        raise ValueError(f"command-line overrides must be KEY VALUE pairs, got an odd list: {opts}")
    for file, data in chain:
        _merge(cfg, data, f"config {file}")
    if opts:
        try:
            cfg.merge_from_list(opts)
        except (KeyError, ValueError, AssertionError) as e:
            msg = e.args[0] if e.args else str(e)
            kind = KeyError if "Non-existent" in str(msg) else type(e)
            raise kind(f"command-line override: {msg}") from None
    if freeze:
        cfg.freeze()
    return cfg
