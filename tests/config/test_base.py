"""ood_det.config.base: defaults, _BASE_ inheritance, overrides, typo errors."""
import pytest

from ood_det.apps.config import load_config
from ood_det.config import get_cfg


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_use_detectron2_key_names():
    cfg = get_cfg()
    assert cfg.BACKEND == "torchvision"
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 80
    assert cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST == 0.05 and cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST == 0.5
    assert cfg.TEST.DETECTIONS_PER_IMAGE == 100
    assert cfg.SOLVER.AMP.ENABLED is False
    # the OOD keys of add_ood_config are there
    assert cfg.MODEL.OOD.HEAD == "softmax" and cfg.TEST.OOD.TPR == 0.95
    assert tuple(cfg.DATASETS.OOD_TEST) == ()


def test_base_inheritance_relative_to_file_and_overrides(tmp_path):
    sub = tmp_path / "sub"
    sub.mkdir()
    _write(tmp_path / "base.yaml", "MODEL:\n  ROI_HEADS:\n    NUM_CLASSES: 5\nSOLVER:\n  BASE_LR: 0.01\n  MAX_ITER: 7\n")
    _write(sub / "mid.yaml", "_BASE_: ../base.yaml\nSOLVER:\n  BASE_LR: 0.05\n")
    child = _write(sub / "child.yaml", "_BASE_: mid.yaml\nMODEL:\n  OOD:\n    HEAD: isomaxplus\n")
    cfg = load_config(str(child), ["SOLVER.MAX_ITER", "11", "OUTPUT_DIR", "/tmp/x"])
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 5  # from the grand-parent
    assert cfg.SOLVER.BASE_LR == 0.05  # the nearer file wins
    assert cfg.MODEL.OOD.HEAD == "isomaxplus"
    assert cfg.SOLVER.MAX_ITER == 11 and cfg.OUTPUT_DIR == "/tmp/x"  # command line wins


def test_typo_names_key_and_file(tmp_path):
    _write(tmp_path / "base.yaml", "SOLVER:\n  BASE_LRR: 0.01\n")
    child = _write(tmp_path / "child.yaml", "_BASE_: base.yaml\n")
    with pytest.raises(KeyError) as e:
        load_config(str(child))
    msg = str(e.value)
    assert "SOLVER.BASE_LRR" in msg and "base.yaml" in msg


def test_typo_on_command_line_and_odd_opts(tmp_path):
    with pytest.raises(KeyError, match="command-line.*SOLVER.MAXITER"):
        load_config(None, ["SOLVER.MAXITER", "3"])
    with pytest.raises(ValueError, match="KEY VALUE"):
        load_config(None, ["SOLVER.MAX_ITER"])


def test_missing_base_and_bad_backend(tmp_path):
    child = _write(tmp_path / "c.yaml", "_BASE_: nope.yaml\n")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(str(child))
    with pytest.raises(ValueError, match="BACKEND"):
        load_config(None, ["BACKEND", "caffe"])


def test_detectron2_backend_without_detectron2(tmp_path):
    pytest.importorskip("yaml")
    try:
        import detectron2  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="detectron2"):
            load_config(None, ["BACKEND", "detectron2"])
    else:  # pragma: no cover - only where detectron2 is installed
        cfg = load_config(None, ["BACKEND", "detectron2"])
        assert cfg.BACKEND == "detectron2" and "OOD" in cfg.MODEL


def test_shipped_configs_load():
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "configs" / "Digits-OOD"
    files = sorted(root.glob("*.yaml"))
    assert files, f"no configs in {root}"
    for f in files:
        cfg = load_config(str(f))
        assert cfg.BACKEND == "torchvision", f
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 5, f
