"""Tiny on-disk datasets made by the tests themselves (VOC tree, COCO json, DigitsOOD)."""
import json
from pathlib import Path

import cv2
import numpy as np
import pytest


def write_jpg(path: Path, height: int, width: int, value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((height, width, 3), value, np.uint8)
    img[: height // 2, :, 2] = 255  # some structure so that the JPEG is not trivial
    assert cv2.imwrite(str(path), img)
    return path


VOC_XML = """<annotation>
  <folder>VOC2007</folder><filename>{fid}.jpg</filename>
  <size><width>{w}</width><height>{h}</height><depth>3</depth></size>
  {objects}
</annotation>"""
VOC_OBJ = """<object><name>{name}</name><pose>Left</pose><truncated>0</truncated>{difficult}
  <bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"""


def make_voc_year(root: Path, year: str, images: dict, splits: dict) -> Path:
    """``images``: fileid -> (h, w, [(name, x0, y0, x1, y1, difficult or None)]); ``splits``: split -> ids."""
    d = root / f"VOC{year}"
    (d / "Annotations").mkdir(parents=True, exist_ok=True)
    (d / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for fid, (h, w, objs) in images.items():
        xml_objs = "".join(
            VOC_OBJ.format(name=n, x0=x0, y0=y0, x1=x1, y1=y1,
                           difficult="" if diff is None else f"<difficult>{diff}</difficult>")
            for n, x0, y0, x1, y1, diff in objs
        )
        (d / "Annotations" / f"{fid}.xml").write_text(VOC_XML.format(fid=fid, w=w, h=h, objects=xml_objs))
        write_jpg(d / "JPEGImages" / f"{fid}.jpg", h, w)
    for split, ids in splits.items():
        (d / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return d


#: two images, one with a difficult box and a box without a <difficult> tag
VOC07_IMAGES = {
    "000001": (60, 80, [("dog", 11, 21, 50, 58, 0), ("person", 1, 1, 30, 40, 1)]),
    "000002": (50, 70, [("car", 5, 6, 65, 45, None)]),
}
VOC12_IMAGES = {"2008_000003": (40, 40, [("tvmonitor", 2, 3, 20, 30, 0)])}


@pytest.fixture
def voc_root(tmp_path):
    """``tmp_path`` holding VOC2007 (trainval = both images, test = 000002) and VOC2012 (one image)."""
    make_voc_year(tmp_path, "2007", VOC07_IMAGES, {"trainval": ["000001", "000002"], "test": ["000002"]})
    make_voc_year(tmp_path, "2012", VOC12_IMAGES, {"trainval": ["2008_000003"]})
    return tmp_path


def coco_dict(categories, images, annotations):
    return {"info": {}, "categories": [{"id": i, "name": n} for i, n in categories],
            "images": [{"id": i, "file_name": f, "height": h, "width": w} for i, f, h, w in images],
            "annotations": [dict(zip(("id", "image_id", "category_id", "bbox", "iscrowd"), a)) for a in annotations]}


#: person (1) and dog (18) are VOC classes, toothbrush (90) is not; annotation 2 is a crowd box
TINY_COCO = coco_dict(
    categories=[(1, "person"), (18, "dog"), (90, "toothbrush")],
    images=[(7, "a.jpg", 30, 40), (9, "sub/b.jpg", 20, 25)],
    annotations=[
        (1, 7, 1, [2.0, 3.0, 10.0, 12.0], 0),
        (2, 7, 1, [0.0, 0.0, 40.0, 30.0], 1),
        (3, 9, 90, [1.5, 2.5, 4.0, 5.0], 0),
        (4, 9, 18, [5.0, 5.0, 10.0, 10.0], 0),
    ],
)


def write_coco(json_file: Path, data: dict, image_root: Path = None) -> Path:
    json_file.parent.mkdir(parents=True, exist_ok=True)
    json_file.write_text(json.dumps(data))
    if image_root is not None:
        for img in data["images"]:
            write_jpg(image_root / img["file_name"], img["height"], img["width"])
    return json_file


@pytest.fixture
def coco_files(tmp_path):
    return write_coco(tmp_path / "ann.json", TINY_COCO, tmp_path / "images"), tmp_path / "images"


#: a DigitsOOD small enough for tests (18 images, 64 x 64)
TINY_DIGITS = dict(images={"train": 6, "val": 3, "test": 3, "ood": 3, "mixed": 3, "far": 3, "shift": 6,
                           "val_ood": 3, "val_far": 3}, canvas_size=(64, 64),
                   digit_height=(10, 24))
