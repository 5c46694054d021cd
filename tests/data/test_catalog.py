import json

import pytest

from ood_det.data import builtin, catalog, paths
from ood_det.data.digits_ood import DigitsOODConfig, ensure_digits_ood
from ood_det.data.voc import VOC_CLASS_NAMES

from .conftest import TINY_COCO, TINY_DIGITS, VOC07_IMAGES, coco_dict, write_coco


@pytest.fixture
def builtin_root(voc_root, monkeypatch):
    """Built-ins registered under a tiny tmp root (and the defaults restored afterwards)."""
    monkeypatch.setenv(paths.ENV_VAR, str(voc_root))
    builtin.register_builtin_datasets()
    yield voc_root
    monkeypatch.delenv(paths.ENV_VAR)
    builtin.register_builtin_datasets()


def test_register_get_metadata_names():
    calls = []

    def loader():
        calls.append(1)
        return [{"file_name": "x.png", "image_id": 1, "height": 2, "width": 2, "annotations": []}]

    catalog.register("tmp_test_ds", loader, thing_classes=["a"], distribution="id")
    try:
        assert "tmp_test_ds" in catalog.names() and catalog.names() == sorted(catalog.names())
        assert catalog.get("tmp_test_ds")[0]["image_id"] == 1 and len(calls) == 1
        md = catalog.metadata("tmp_test_ds")
        assert md == {"thing_classes": ["a"], "distribution": "id", "name": "tmp_test_ds"}
        md["thing_classes"] = ["changed"]
        assert catalog.metadata("tmp_test_ds")["thing_classes"] == ["a"]
        with pytest.raises(KeyError, match="already registered"):
            catalog.register("tmp_test_ds", loader)
        catalog.register("tmp_test_ds", lambda: "oops", overwrite=True)
        with pytest.raises(TypeError, match="returned str"):
            catalog.get("tmp_test_ds")
    finally:
        catalog.remove("tmp_test_ds")
    with pytest.raises(KeyError, match="not registered; registered: .*coco_ood_val"):
        catalog.get("tmp_test_ds")


def test_datasets_root(monkeypatch, tmp_path):
    monkeypatch.setenv(paths.ENV_VAR, str(tmp_path))
    assert paths.datasets_root() == tmp_path
    monkeypatch.delenv(paths.ENV_VAR)
    repo = paths.repo_root()
    assert repo is not None and (repo / "setup.py").is_file()
    assert paths.datasets_root() == repo / "datasets"


def test_builtin_names_and_metadata():
    for name in ("digits_ood_train", "digits_ood_val", "digits_ood_test", "digits_ood_ood", "digits_ood_mixed",
                 "voc_2007_trainval", "voc_2012_trainval", "voc_2007_test", "voc_custom_train", "voc_custom_val",
                 "coco_ood_val", "openimages_ood_val"):
        assert name in catalog.names()
    coco = catalog.metadata("coco_ood_val")
    assert coco["thing_classes"] == list(VOC_CLASS_NAMES) and coco["distribution"] == "ood"
    assert coco["expected_images"] == 930 and coco["expected_annotations"] == 2824
    assert coco["json_file"].endswith("COCO/annotations/instances_val2017_ood_rm_overlap.json")
    assert catalog.metadata("openimages_ood_val")["json_file"].endswith(
        "OpenImages/ood_classes_rm_overlap/COCO-Format/val_coco_format.json")
    assert catalog.metadata("voc_2007_test")["expected_images"] == 4952
    assert catalog.metadata("voc_custom_train")["expected_images"] == 16551
    v = catalog.metadata("voc_2007_test")
    assert (v["evaluator_type"], v["year"], v["split"]) == ("pascal_voc", 2007, "test")
    assert catalog.metadata("digits_ood_mixed")["distribution"] == "mixed"
    assert catalog.metadata("digits_ood_train")["thing_classes"] == ["0", "1", "2", "3", "4"]


def test_missing_dataset_says_how_to_get_it(tmp_path):
    builtin.register_builtin_datasets(tmp_path)
    try:
        with pytest.raises(catalog.DatasetNotFoundError) as e:
            catalog.get("coco_ood_val")
        msg = str(e.value)
        assert str(tmp_path / "COCO") in msg and "val2017.zip" in msg and "deeplearning-wisc/vos" in msg
        with pytest.raises(catalog.DatasetNotFoundError, match=r"VOC2007.*host.robots.ox.ac.uk"):
            catalog.get("voc_2007_test")
    finally:
        builtin.register_builtin_datasets()


def test_voc_builtins_from_xml(builtin_root):
    d07 = catalog.get("voc_2007_trainval")
    assert [d["image_id"] for d in d07] == list(VOC07_IMAGES)
    custom = catalog.get("voc_custom_train")  # 2007 + 2012 trainval
    assert [d["image_id"] for d in custom] == ["000001", "000002", "2008_000003"]
    assert custom[2]["annotations"][0]["category_id"] == VOC_CLASS_NAMES.index("tvmonitor")
    assert [d["image_id"] for d in catalog.get("voc_custom_val")] == ["000002"]


def test_voc_custom_from_vos_converted_json(tmp_path, monkeypatch):
    vos = tmp_path / "VOC_0712_converted"
    data = coco_dict([(1, "person"), (8, "airplane"), (20, "tv")], [("000005", "000005.jpg", 10, 10)],
                     [(0, "000005", 8, [1, 1, 3, 3], 0), (1, "000005", 20, [2, 2, 2, 2], 0)])
    write_coco(vos / "voc0712_train_all.json", data, vos / "JPEGImages")
    builtin.register_builtin_datasets(tmp_path)
    try:
        (rec,) = catalog.get("voc_custom_train")
        assert [a["category_id"] for a in rec["annotations"]] == [0, VOC_CLASS_NAMES.index("tvmonitor")]
        assert rec["annotations"][0]["bbox"] == [1.0, 1.0, 4.0, 4.0]
        assert rec["file_name"] == str(vos / "JPEGImages" / "000005.jpg")
    finally:
        builtin.register_builtin_datasets()


def test_coco_ood_val_marks_everything_unknown(builtin_root):
    data = dict(TINY_COCO, categories=[{"id": 1, "name": "toaster"}, {"id": 18, "name": "kite"},
                                       {"id": 90, "name": "toothbrush"}])
    write_coco(builtin_root / "COCO" / "annotations" / "instances_val2017_ood_rm_overlap.json", data,
               builtin_root / "COCO" / "val2017")
    dicts = catalog.get("coco_ood_val")
    anns = [a for d in dicts for a in d["annotations"]]
    assert len(anns) == 4 and all(a["category_id"] == -1 for a in anns)
    assert [a["unknown_class"] for a in anns] == ["toaster", "toaster", "toothbrush", "kite"]
    assert dicts[0]["file_name"] == str(builtin_root / "COCO" / "val2017" / "a.jpg")


def test_digits_builtin_reuses_an_existing_dataset(builtin_root):
    cfg = DigitsOODConfig(**{**TINY_DIGITS, "id_digits": (3, 4, 5), "ood_digits": (8, 9)})
    ensure_digits_ood(builtin_root / "digits_ood", cfg, progress=False)
    builtin.register_builtin_datasets()
    assert catalog.metadata("digits_ood_val")["thing_classes"] == ["3", "4", "5"]
    manifest = json.loads((builtin_root / "digits_ood" / "manifest.json").read_text())
    ood = catalog.get("digits_ood_ood")  # reused: not regenerated with the default parameters
    assert len(ood) == 3 and json.loads((builtin_root / "digits_ood" / "manifest.json").read_text()) == manifest
    assert {a["unknown_class"] for d in ood for a in d["annotations"]} <= {"8", "9"}
