import os

import pytest

from ood_det.data.coco import DatasetFormatError
from ood_det.data.voc import (
    COCO_TO_VOC_NAMES, VOC_CLASS_NAMES, VOC_CLASS_SPELLINGS, load_voc_instances, parse_voc_xml,
)

from .conftest import make_voc_year


def test_class_names_standard_order():
    assert len(VOC_CLASS_NAMES) == 20 == len(set(VOC_CLASS_NAMES))
    assert VOC_CLASS_NAMES[0] == "aeroplane" and VOC_CLASS_NAMES[14] == "person" and VOC_CLASS_NAMES[-1] == "tvmonitor"
    assert list(VOC_CLASS_NAMES) == sorted(VOC_CLASS_NAMES)  # the standard order is alphabetical
    assert set(COCO_TO_VOC_NAMES.values()) <= set(VOC_CLASS_NAMES)
    assert {"airplane", "tv", "couch", "aeroplane"} <= VOC_CLASS_SPELLINGS and len(VOC_CLASS_SPELLINGS) == 26


def test_load_values(voc_root):
    dicts = load_voc_instances(voc_root / "VOC2007", "trainval")
    assert [d["image_id"] for d in dicts] == ["000001", "000002"]
    a, b = dicts
    assert a["file_name"] == os.path.join(str(voc_root / "VOC2007"), "JPEGImages", "000001.jpg")
    assert (a["height"], a["width"]) == (60, 80) and (b["height"], b["width"]) == (50, 70)
    dog, person = a["annotations"]
    # 1-based VOC pixels -> detectron2's 0-based boxes: x0 - 1, y0 - 1, x1, y1
    assert dog == {"bbox": [10.0, 20.0, 50.0, 58.0], "bbox_mode": 0,
                   "category_id": VOC_CLASS_NAMES.index("dog"), "difficult": 0}
    assert person["bbox"] == [0.0, 0.0, 30.0, 40.0] and person["difficult"] == 1
    assert person["category_id"] == 14
    (car,) = b["annotations"]
    assert car["difficult"] == 0 and car["category_id"] == 6 and car["bbox"] == [4.0, 5.0, 65.0, 45.0]
    assert [d["image_id"] for d in load_voc_instances(voc_root / "VOC2007", "test")] == ["000002"]


def test_unknown_class_policies(tmp_path):
    d = make_voc_year(tmp_path, "2007", {"1": (10, 10, [("unicorn", 1, 1, 5, 5, 0), ("cat", 2, 2, 6, 6, 0)])},
                      {"x": ["1"]})
    with pytest.raises(DatasetFormatError, match="unicorn"):
        load_voc_instances(d, "x")
    (m,) = load_voc_instances(d, "x", unknown="mark")
    assert [(a["category_id"], a.get("unknown_class")) for a in m["annotations"]] == [(-1, "unicorn"), (7, None)]
    (dr,) = load_voc_instances(d, "x", unknown="drop")
    assert [a["category_id"] for a in dr["annotations"]] == [7]


def test_problems_are_collected_and_named(voc_root):
    d = voc_root / "VOC2007"
    (d / "Annotations" / "000002.xml").write_text("<annotation><size>")  # malformed
    (d / "ImageSets" / "Main" / "trainval.txt").write_text("000001\n000002\n000404\n")
    with pytest.raises(DatasetFormatError) as e:
        load_voc_instances(d, "trainval")
    msg = str(e.value)
    assert "3 images" in msg and "000002.xml" in msg and "000404.xml" in msg and "2 problem(s)" in msg
    assert [r["image_id"] for r in e.value.partial] == ["000001"]  # what did load is not lost


def test_missing_split_and_size(voc_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/val.txt.*host.robots.ox.ac.uk"):
        load_voc_instances(voc_root / "VOC2007", "val")
    x = tmp_path / "nosize.xml"
    x.write_text("<annotation><object><name>cat</name></object></annotation>")
    with pytest.raises(DatasetFormatError, match="nosize.xml.*lacks <size>"):
        parse_voc_xml(x)
