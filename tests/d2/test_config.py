"""add_ood_d2_config and the detectron2 YAML configs (VOC-OOD, Digits-OOD/d2): merge only."""
from pathlib import Path

import pytest

pytest.importorskip("detectron2", reason="detectron2 is not installed (it is on no package registry; see docs/detectron2.md)")

from detectron2.config import get_cfg  # noqa: E402

from ood_det.apps.config import load_config  # noqa: E402
from ood_det.d2 import add_ood_d2_config, get_ood_d2_cfg  # noqa: E402
from ood_det.engine.comm import resolve_device  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
VOC = sorted((ROOT / "configs" / "VOC-OOD").glob("faster_rcnn_*.yaml"))
DIGITS = sorted((ROOT / "configs" / "Digits-OOD" / "d2").glob("faster_rcnn_*.yaml"))
VARIANTS = ("softmax", "energy", "vos", "isomax", "isomaxplus", "dismax", "cfl", "greg")
#: variant -> (head, score, regularizers)
EXPECTED = {
    "softmax": ("softmax", "msp", []),
    "energy": ("softmax", "energy", []),
    "vos": ("softmax", "energy", ["vos"]),
    "isomax": ("isomax", "entropic", []),
    "isomaxplus": ("isomaxplus", "mds", []),
    "dismax": ("dismax", "mmles", ["fpr"]),
    "cfl": ("cfl", "", []),
    "greg": ("softmax", "energy", ["greg"]),
}


def _variant(path):
    return path.stem.rsplit("_", 1)[1]


def test_every_variant_has_configs():
    for v in VARIANTS:
        assert (ROOT / "configs/VOC-OOD" / f"faster_rcnn_R_50_FPN_{v}.yaml").is_file()
        assert (ROOT / "configs/Digits-OOD/d2" / f"faster_rcnn_R_18_FPN_{v}.yaml").is_file()
    for v in ("vos", "isomaxplus"):
        assert (ROOT / "configs/VOC-OOD" / f"faster_rcnn_regnetx_4gf_FPN_{v}.yaml").is_file()


def test_add_ood_d2_config_is_idempotent():
    cfg = get_cfg()
    add_ood_d2_config(cfg)
    cfg.MODEL.OOD.HEAD = "dismax"
    add_ood_d2_config(cfg)
    assert cfg.MODEL.OOD.HEAD == "dismax" and cfg.BACKEND == "detectron2"
    assert cfg.MODEL.REGNET.DEPTH == 23 and cfg.MODEL.REGNET.W_A == 38.65
    assert "OOD_TEST" in cfg.DATASETS and cfg.TEST.OOD.TPR == 0.95


@pytest.mark.parametrize("path", VOC, ids=lambda p: p.stem)
def test_voc_ood_configs(path):
    cfg = load_config(str(path))
    # the same result through plain detectron2 merging (what a user's own project does)
    cfg2 = get_ood_d2_cfg(str(path))
    for key in ("MODEL.OOD.HEAD", "MODEL.OOD.SCORE", "MODEL.BACKBONE.NAME", "SOLVER.MAX_ITER", "MODEL.WEIGHTS"):
        a, b = cfg, cfg2
        for k in key.split("."):
            a, b = a[k], b[k]
        assert a == b, key
    head, score, regs = EXPECTED[_variant(path)]
    assert cfg.BACKEND == "detectron2"
    assert cfg.MODEL.ROI_HEADS.NAME == "OODROIHeads" and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 20
    assert (cfg.MODEL.OOD.HEAD, cfg.MODEL.OOD.SCORE, list(cfg.MODEL.OOD.REGULARIZERS)) == (head, score, regs)
    # VOS's schedule
    s = cfg.SOLVER
    assert (s.IMS_PER_BATCH, s.BASE_LR, s.MAX_ITER, tuple(s.STEPS)) == (16, 0.02, 18000, (12000, 16000))
    if cfg.MODEL.OOD.OUTLIERS == "vos":
        assert cfg.MODEL.OOD.VOS.START_ITER == 12000 and cfg.MODEL.OOD.VOS.QUEUE_SIZE == 1000
    assert tuple(cfg.DATASETS.TRAIN) == ("voc_custom_train",)
    assert tuple(cfg.DATASETS.TEST) == ("voc_2007_test",)
    assert tuple(cfg.DATASETS.OOD_TEST) == ("coco_ood_val", "openimages_ood_val")
    assert cfg.TEST.OOD.VAL_DATASET
    if "R_50" in path.stem:
        assert cfg.MODEL.WEIGHTS == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
        assert cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone" and cfg.MODEL.RESNETS.DEPTH == 50
    else:
        assert cfg.MODEL.BACKBONE.NAME == "build_regnet_fpn_backbone"
        assert list(cfg.MODEL.FPN.IN_FEATURES) == ["s1", "s2", "s3", "s4"]
        assert cfg.MODEL.PIXEL_STD == [57.375, 57.120, 58.395]
    assert cfg.OUTPUT_DIR.endswith(_variant(path))


@pytest.mark.parametrize("path", DIGITS, ids=lambda p: p.stem)
def test_digits_d2_configs(path):
    cfg = load_config(str(path))
    head, score, regs = EXPECTED[_variant(path)]
    assert cfg.BACKEND == "detectron2" and cfg.MODEL.ROI_HEADS.NAME == "OODROIHeads"
    assert (cfg.MODEL.OOD.HEAD, cfg.MODEL.OOD.SCORE, list(cfg.MODEL.OOD.REGULARIZERS)) == (head, score, regs)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 5 and cfg.MODEL.WEIGHTS == ""
    assert tuple(cfg.DATASETS.TRAIN) == ("digits_ood_train",)
    if regs and cfg.MODEL.OOD.OUTLIERS == "vos":
        assert 0 < cfg.MODEL.OOD.VOS.START_ITER < cfg.SOLVER.MAX_ITER


def test_digits_d2_model_builds():
    from detectron2.modeling import build_model

    cfg = load_config(str(ROOT / "configs/Digits-OOD/d2/faster_rcnn_R_18_FPN_vos.yaml"))
    cfg.MODEL.DEVICE = resolve_device(cfg.MODEL.DEVICE).type
    assert cfg.MODEL.DEVICE in ("cpu", "cuda")
    model = build_model(cfg)
    clf = model.roi_heads.box_predictor.box_classifier
    assert clf.head.name == "softmax" and clf.outlier_source.queue.shape == (5, 200, 256)


def test_setup_resolves_the_device_like_the_torchvision_backend(tmp_path):
    """One rule for both backends: "auto" -> cuda when available, "cuda" without CUDA is an error."""
    import argparse

    import torch

    from ood_det.d2.train_net import setup

    cfg = get_ood_d2_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    args = argparse.Namespace(config_file="", eval_only=True, resume=False, opts=[])
    cfg.MODEL.DEVICE = "auto"
    assert setup(cfg, args).MODEL.DEVICE == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cuda"
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            setup(cfg, args)
