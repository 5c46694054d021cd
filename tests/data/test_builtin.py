"""ood_det.data.builtin + catalog helpers: class names, empty / missing datasets, smoke variant."""
import pytest
import torch

from ood_det.data import builtin, catalog, paths
from ood_det.data.builtin import SMOKE_IMAGES
from ood_det.data.catalog import get_dicts
from ood_det.data.catalog import thing_classes as get_class_names
from ood_det.tv.train import get_train_dicts, train

torch.set_num_threads(1)


def test_class_names_checked_against_num_classes(tiny_detection_dataset):
    assert get_class_names(["tiny_train", "tiny_val"], 2) == ["square", "bar"]
    with pytest.raises(ValueError, match="NUM_CLASSES=3"):
        get_class_names(["tiny_train"], 3)
    with pytest.raises(ValueError, match="DATASETS"):
        get_class_names([], 2)


def test_filter_empty_annotations(tiny_cfg, tiny_detection_dataset):
    cfg = tiny_cfg
    cfg.merge_from_list(["DATASETS.TRAIN", "('tiny_train', 'tiny_ood')"])
    n_train, n_ood = len(tiny_detection_dataset["train"]), len(tiny_detection_dataset["ood"])
    assert len(get_train_dicts(cfg)) == n_train  # OOD-only images have no known object
    cfg.merge_from_list(["DATALOADER.FILTER_EMPTY_ANNOTATIONS", "False"])
    assert len(get_train_dicts(cfg)) == n_train + n_ood


def test_smoke_variant_is_generated_small(smoke_run):
    """The smoke run registered (and generated) the tiny DigitsOOD variant in a temporary root."""
    root = catalog.metadata("digits_ood_smoke_val")["root"]
    assert not root.startswith(str(paths.datasets_root()))
    for split, n in SMOKE_IMAGES.items():
        assert len(get_dicts(f"digits_ood_smoke_{split}")) == n
    assert catalog.metadata("digits_ood_smoke_ood")["distribution"] == "ood"
    assert all(a["category_id"] == -1 for r in get_dicts("digits_ood_smoke_ood") for a in r["annotations"])
    assert all(a["category_id"] >= 0 for r in get_dicts("digits_ood_smoke_train") for a in r["annotations"])


def test_empty_and_missing_datasets(tiny_cfg, tmp_path):
    catalog.register("tiny_empty", lambda: [], overwrite=True, thing_classes=["square", "bar"])
    try:
        with pytest.raises(ValueError, match="'tiny_empty' is empty"):
            get_dicts("tiny_empty")
        cfg = tiny_cfg
        cfg.merge_from_list(["DATASETS.TRAIN", "('tiny_empty',)"])
        with pytest.raises(ValueError, match="tiny_empty"):
            train(cfg)
        cfg.merge_from_list(["DATASETS.TRAIN", "('tiny_ood',)"])  # only unknown objects
        with pytest.raises(ValueError, match="no image has a known-class object"):
            get_train_dicts(cfg)
    finally:
        catalog.remove("tiny_empty")
    # a built-in dataset whose directory is absent: the message names the path and how to get it
    (tmp_path / "no_datasets_here").mkdir()
    root = builtin.register_builtin_datasets(tmp_path / "no_datasets_here")
    try:
        cfg.merge_from_list(["DATASETS.TRAIN", "('voc_2007_trainval',)", "MODEL.ROI_HEADS.NUM_CLASSES", "20"])
        with pytest.raises(FileNotFoundError) as e:
            train(cfg)
        assert str(root / "VOC2007") in str(e.value)
    finally:
        builtin.register_builtin_datasets()
