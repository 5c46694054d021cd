import copy
import json
import os

import pytest

from ood_det.data.coco import DatasetFormatError, load_coco_json, save_coco_json

from .conftest import TINY_COCO, write_coco


def _by_id(dicts):
    return {d["image_id"]: d for d in dicts}


def test_load_values_unknown_and_crowd(coco_files):
    json_file, root = coco_files
    dicts = load_coco_json(json_file, root, ["dog", "person"])
    assert [d["image_id"] for d in dicts] == [7, 9]
    a, b = _by_id(dicts)[7], _by_id(dicts)[9]
    assert a["file_name"] == os.path.join(str(root), "a.jpg") and (a["height"], a["width"]) == (30, 40)
    assert b["file_name"] == os.path.join(str(root), "sub/b.jpg")
    person, crowd = a["annotations"]
    assert person == {"bbox": [2.0, 3.0, 12.0, 15.0], "bbox_mode": 0, "category_id": 1, "iscrowd": 0}
    assert crowd["iscrowd"] == 1 and crowd["category_id"] == 1 and crowd["bbox"] == [0.0, 0.0, 40.0, 30.0]
    brush, dog = b["annotations"]
    assert brush == {"bbox": [1.5, 2.5, 5.5, 7.5], "bbox_mode": 0, "category_id": -1, "iscrowd": 0,
                     "unknown_class": "toothbrush"}
    assert dog["category_id"] == 0 and "unknown_class" not in dog


def test_policies(coco_files):
    json_file, root = coco_files
    dropped = load_coco_json(json_file, root, ["dog", "person"], unknown="drop", crowd="drop")
    assert [len(d["annotations"]) for d in dropped] == [1, 1]
    assert all(a["category_id"] >= 0 and a["iscrowd"] == 0 for d in dropped for a in d["annotations"])
    with pytest.raises(DatasetFormatError, match="toothbrush"):
        load_coco_json(json_file, root, ["dog", "person"], unknown="error")
    only_person = load_coco_json(json_file, root, ["person"], unknown="drop", keep_empty=False)
    assert [d["image_id"] for d in only_person] == [7]
    with pytest.raises(ValueError, match="unknown="):
        load_coco_json(json_file, root, ["dog"], unknown="ignore")


def test_json_classes_and_aliases(coco_files):
    json_file, root = coco_files
    dicts = load_coco_json(json_file, root)  # the json's own classes, sorted by id: person, dog, toothbrush
    labels = [a["category_id"] for d in dicts for a in d["annotations"]]
    assert labels == [0, 0, 2, 1]
    aliased = load_coco_json(json_file, root, ["hound", "person"], name_aliases={"dog": "hound"}, unknown="drop")
    assert [a["category_id"] for a in aliased[1]["annotations"]] == [0]


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.pop("images"), "lacks the key 'images'"),
    (lambda d: d["images"][0].pop("height"), r"images\[0\].*lacks the key 'height'"),
    (lambda d: d["annotations"][0].update(image_id=123), "image_id 123 is not in 'images'"),
    (lambda d: d["annotations"][0].update(category_id=5), "category_id 5 is not in 'categories'"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2, -3, 4]), "bad bbox"),
    (lambda d: d["annotations"][0].update(bbox=[1, 2]), "4 numbers"),
    (lambda d: d["images"].append(dict(d["images"][0])), "duplicate image id 7"),
])
def test_malformed_json_errors_name_file_and_key(tmp_path, mutate, match):
    data = copy.deepcopy(TINY_COCO)
    mutate(data)
    f = write_coco(tmp_path / "bad.json", data)
    with pytest.raises(DatasetFormatError, match=match) as e:
        load_coco_json(f, tmp_path, ["person"])
    assert str(f) in str(e.value)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_coco_json(tmp_path / "nope.json", tmp_path)
    (tmp_path / "broken.json").write_text('{"images": [}')
    with pytest.raises(DatasetFormatError, match=r"broken.json.*line 1"):
        load_coco_json(tmp_path / "broken.json", tmp_path)


def test_annotations_may_be_absent(tmp_path):
    data = copy.deepcopy(TINY_COCO)
    data.pop("annotations")
    dicts = load_coco_json(write_coco(tmp_path / "x.json", data), tmp_path, ["person"])
    assert [d["annotations"] for d in dicts] == [[], []]


def test_save_then_load_round_trip(coco_files, tmp_path):
    json_file, root = coco_files
    dicts = load_coco_json(json_file, root, ["dog", "person"])
    dicts[0]["annotations"][0]["source_index"] = 42
    out = save_coco_json(dicts, tmp_path / "out" / "x.json", ["dog", "person"], image_root=root,
                         extra_class_names=["cat"])
    written = json.loads(out.read_text())
    assert [c["name"] for c in written["categories"]] == ["dog", "person", "cat", "toothbrush"]
    assert [c["id"] for c in written["categories"]] == [1, 2, 3, 4]
    assert written["images"][1]["file_name"] == "sub/b.jpg"
    first = written["annotations"][0]
    assert first["bbox"] == [2.0, 3.0, 10.0, 12.0] and first["area"] == 120.0 and first["source_index"] == 42
    back = load_coco_json(out, root, ["dog", "person"], extra_annotation_keys=("source_index",))
    assert back == dicts
    assert not list((tmp_path / "out").glob("*.tmp*"))


def test_saved_json_reads_in_pycocotools(coco_files, tmp_path, capsys):
    from pycocotools.coco import COCO

    json_file, root = coco_files
    dicts = load_coco_json(json_file, root, ["dog", "person"])
    out = save_coco_json(dicts, tmp_path / "y.json", ["dog", "person"], image_root=root)
    coco = COCO(str(out))
    assert sorted(coco.getImgIds()) == [7, 9]
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[9]))
    names = [coco.loadCats(a["category_id"])[0]["name"] for a in anns]
    assert names == ["toothbrush", "dog"]
    assert anns[0]["bbox"] == [1.5, 2.5, 4.0, 5.0]
    assert coco.getAnnIds(imgIds=[7], iscrowd=False) == [1]  # the crowd box is flagged as such


def test_save_rejects_bad_dicts(tmp_path):
    d = [{"file_name": "a.png", "image_id": 1, "height": 4, "width": 4,
          "annotations": [{"bbox": [0, 0, 1, 1], "bbox_mode": 0, "category_id": 3}]}]
    with pytest.raises(DatasetFormatError, match="category_id 3"):
        save_coco_json(d, tmp_path / "z.json", ["a"])
    d[0]["annotations"][0].update(category_id=-1)
    with pytest.raises(DatasetFormatError, match="unknown_class"):
        save_coco_json(d, tmp_path / "z.json", ["a"])
    d[0]["annotations"][0].update(category_id=0, bbox_mode=4)
    with pytest.raises(DatasetFormatError, match="bbox_mode 4"):
        save_coco_json(d, tmp_path / "z.json", ["a"])
    d[0]["annotations"][0].update(bbox_mode=1, bbox=[1, 2, 3, 4])
    save_coco_json(d, tmp_path / "z.json", ["a"])
    assert json.loads((tmp_path / "z.json").read_text())["annotations"][0]["bbox"] == [1.0, 2.0, 3.0, 4.0]
