"""ood_det.config.validate: every impossible value is refused, naming the key and the value."""
import logging

import pytest

from ood_det.config import get_cfg
from ood_det.config.validate import validate_config


def test_defaults_and_shipped_configs_are_valid():
    from pathlib import Path

    from ood_det.apps.config import load_config

    validate_config(get_cfg())
    root = Path(__file__).resolve().parents[2] / "configs" / "Digits-OOD"
    paths = sorted(root.glob("*.yaml")) + sorted((root / "ablations").glob("*.yaml"))
    assert len(paths) > 10
    for path in paths:
        validate_config(load_config(str(path)))


@pytest.mark.parametrize("key,value,words", [
    ("SOLVER.IMS_PER_BATCH", 0, "positive number of images"),
    ("SOLVER.IMS_PER_BATCH", -2, "positive number of images"),
    ("SOLVER.MAX_ITER", -1, ">= 0"),
    ("SOLVER.BASE_LR", 0.0, "learning rate > 0"),
    ("SOLVER.BASE_LR", float("nan"), "finite learning rate"),
    ("SOLVER.BASE_LR", float("inf"), "finite learning rate"),
    ("SOLVER.MOMENTUM", 1.5, "[0, 1)"),
    ("SOLVER.CHECKPOINT_PERIOD", -5, ">= 0"),
    ("MODEL.ROI_HEADS.NUM_CLASSES", 0, "known classes"),
    ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 0, "ROIs"),
    ("TEST.OOD.TPR", 1.0, "strictly between 0 and 1"),
    ("TEST.OOD.TPR", 0.0, "strictly between 0 and 1"),
    ("TEST.OOD.CONF_THRESH", "nan", "finite confidence"),
    ("TEST.OOD.CONF_THRESH", "f2", "expected 'f1'"),
    ("TEST.OOD.CONF_SOURCE", "roi", "expected 'box' or 'proposal'"),
    ("TEST.OOD.ID_METRIC", "map", "expected 'voc_ap50' or 'coco_ap'"),
    ("INPUT.MIN_SIZE_TRAIN", (0,), "positive sizes"),
    ("INPUT.MAX_SIZE_TEST", 0, "positive size"),
    ("SOLVER.STEPS", (30, 20), "increasing"),
])
def test_impossible_values_name_key_and_value(key, value, words):
    cfg = get_cfg()
    node = cfg
    *path, last = key.split(".")
    for p in path:
        node = node[p]
    node[last] = value
    with pytest.raises(ValueError) as e:
        validate_config(cfg)
    assert key in str(e.value) and repr(value) in str(e.value) and words in str(e.value)


def test_several_problems_reported_at_once_and_steps_warning(caplog):
    cfg = get_cfg()
    cfg.SOLVER.IMS_PER_BATCH = 0
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 0
    with pytest.raises(ValueError) as e:
        validate_config(cfg)
    assert "SOLVER.IMS_PER_BATCH" in str(e.value) and "MODEL.ROI_HEADS.NUM_CLASSES" in str(e.value)
    cfg = get_cfg()
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.STEPS = 100, (50, 150)
    with caplog.at_level(logging.WARNING):
        validate_config(cfg)
    assert "never happen" in caplog.text


def test_the_entry_point_validates_first(tmp_path):
    """Issue: SOLVER.IMS_PER_BATCH 0 did not name the key. The entry point checks before writing."""
    from pathlib import Path

    from ood_det.apps.train import main

    smoke = str(Path(__file__).resolve().parents[2] / "configs" / "Digits-OOD" / "smoke.yaml")
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="SOLVER.IMS_PER_BATCH = 0"):
        main(["--config", smoke, "SOLVER.IMS_PER_BATCH", "0", "OUTPUT_DIR", str(out)])
    assert not out.exists()
