"""PASCAL VOC loader: ``ImageSets/Main/<split>.txt`` + ``Annotations/*.xml`` -> dataset dicts.

The directory is a VOC year folder (``VOC2007/`` or ``VOC2012/``) holding ``Annotations/``,
``ImageSets/Main/`` and ``JPEGImages/``. Boxes follow detectron2's VOC loader: VOC's 1-based pixel
indices become 0-based ``XYXY_ABS`` boxes by ``x0 - 1, y0 - 1`` (x1, y1 unchanged). Each
annotation keeps VOC's ``difficult`` flag (0/1); evaluators ignore difficult boxes, training uses
them as detectron2 does. Classes are :data:`VOC_CLASS_NAMES` in the standard (alphabetical) order.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Optional, Sequence

from tqdm import tqdm

from .coco import BOX_MODE_XYXY_ABS, DatasetFormatError, PathLike

#: the 20 PASCAL VOC classes, standard order (detectron2's ``CLASS_NAMES``)
VOC_CLASS_NAMES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)

#: VOC name -> COCO name of the same class (the other 14 are spelled alike)
VOC_TO_COCO_NAMES = {
    "aeroplane": "airplane",
    "diningtable": "dining table",
    "motorbike": "motorcycle",
    "pottedplant": "potted plant",
    "sofa": "couch",
    "tvmonitor": "tv",
}
#: COCO name -> VOC name, for reading COCO-format jsons (VOS's converted VOC, COCO OOD) with VOC classes
COCO_TO_VOC_NAMES = {v: k for k, v in VOC_TO_COCO_NAMES.items()}
#: every spelling of a VOC class, VOC's and COCO's
VOC_CLASS_SPELLINGS = frozenset(VOC_CLASS_NAMES) | frozenset(VOC_TO_COCO_NAMES.values())

#: images per split of the official releases, for the dataset checker
VOC_SPLIT_SIZES = {
    ("2007", "train"): 2501,
    ("2007", "val"): 2510,
    ("2007", "trainval"): 5011,
    ("2007", "test"): 4952,
    ("2012", "train"): 5717,
    ("2012", "val"): 5823,
    ("2012", "trainval"): 11540,
}

VOC_DOWNLOAD_HINT = (
    "PASCAL VOC comes from http://host.robots.ox.ac.uk/pascal/VOC/ (VOCtrainval_06-Nov-2007.tar, "
    "VOCtest_06-Nov-2007.tar, VOCtrainval_11-May-2012.tar); untar and move VOCdevkit/VOC2007 and "
    "VOCdevkit/VOC2012 to <root>/VOC2007 and <root>/VOC2012 (see datasets/README.md)"
)


def _text(node: ET.Element, tag: str, xml_file: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None:
        raise DatasetFormatError(f"{xml_file!r}: <{node.tag}> lacks <{tag}>")
    return child.text.strip()


def parse_voc_xml(xml_file: PathLike) -> Dict[str, Any]:
    """Parse one VOC annotation xml into ``{"height", "width", "objects": [{"name", "bbox",
    "difficult"}]}`` with 0-based XYXY boxes (x0 - 1, y0 - 1, x1, y1)."""
    xml_file = os.fspath(xml_file)
    try:
        tree = ET.parse(xml_file)
    except FileNotFoundError:
        raise FileNotFoundError(f"VOC annotation {xml_file!r} does not exist") from None
    except ET.ParseError as e:
        raise DatasetFormatError(f"{xml_file!r} is not valid xml: {e}") from None
    root = tree.getroot()
    size = root.find("size")
    if size is None:
        raise DatasetFormatError(f"{xml_file!r} lacks <size>")
    try:
        height, width = int(_text(size, "height", xml_file)), int(_text(size, "width", xml_file))
    except ValueError:
        raise DatasetFormatError(f"{xml_file!r}: <size> is not integer") from None
    objects = []
    for k, obj in enumerate(root.findall("object")):
        name = _text(obj, "name", xml_file)
        diff = obj.find("difficult")
        difficult = int(diff.text.strip()) if diff is not None and diff.text and diff.text.strip() else 0
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DatasetFormatError(f"{xml_file!r}: object {k} ({name!r}) lacks <bndbox>")
        try:
            x0, y0, x1, y1 = (float(_text(bnd, t, xml_file)) for t in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            raise DatasetFormatError(f"{xml_file!r}: object {k} ({name!r}) has a non-numeric box") from None
        objects.append({"name": name, "bbox": [x0 - 1.0, y0 - 1.0, x1, y1], "difficult": difficult})
    return {"height": height, "width": width, "objects": objects}


def read_split_ids(dirname: PathLike, split: str) -> List[str]:
    """Image ids listed in ``<dirname>/ImageSets/Main/<split>.txt``."""
    path = os.path.join(os.fspath(dirname), "ImageSets", "Main", f"{split}.txt")
    try:
        with open(path, "r", encoding="utf-8") as f:
            return [line.split()[0] for line in f if line.strip()]
    except FileNotFoundError:
        raise FileNotFoundError(f"VOC split list {path!r} does not exist. {VOC_DOWNLOAD_HINT}") from None


def load_voc_instances(
    dirname: PathLike,
    split: str,
    class_names: Sequence[str] = VOC_CLASS_NAMES,
    *,
    unknown: str = "error",
    progress: Optional[bool] = None,
) -> List[Dict[str, Any]]:
    """Load one VOC split as dataset dicts.

    Args:
        dirname: a VOC year folder (``.../VOC2007``).
        split: ``train`` / ``val`` / ``trainval`` / ``test``.
        class_names: known classes in contiguous-id order.
        unknown: an object whose name is not in ``class_names``: ``"error"`` (default, VOC has only
            its 20 classes), ``"mark"`` (``category_id`` -1 and ``"unknown_class"``) or ``"drop"``.
        progress: show a tqdm bar (``None``: only on a terminal).

    Every problem met (missing or malformed xml, unknown class) is collected and reported together.
    """
    if unknown not in ("mark", "drop", "error"):
        raise ValueError(f"unknown={unknown!r}: expected 'mark', 'drop' or 'error'")
    dirname = os.fspath(dirname)
    ids = read_split_ids(dirname, split)
    name_to_id = {n: i for i, n in enumerate(class_names)}
    out, problems = [], []
    it = tqdm(ids, desc=f"VOC {os.path.basename(dirname)} {split}", unit="img",
              disable=(None if progress is None else not progress), leave=False)
    for fileid in it:
        xml_file = os.path.join(dirname, "Annotations", fileid + ".xml")
        try:
            ann = parse_voc_xml(xml_file)
        except (OSError, DatasetFormatError) as e:
            problems.append(str(e))
            continue
        objs = []
        for o in ann["objects"]:
            label = name_to_id.get(o["name"], -1)
            obj = {"bbox": o["bbox"], "bbox_mode": BOX_MODE_XYXY_ABS, "category_id": label,
                   "difficult": o["difficult"]}
            if label < 0:
                if unknown == "drop":
                    continue
                if unknown == "error":
                    problems.append(f"{xml_file!r}: class {o['name']!r} is not one of {list(class_names)}")
                    continue
                obj["unknown_class"] = o["name"]
            objs.append(obj)
        out.append({
            "file_name": os.path.join(dirname, "JPEGImages", fileid + ".jpg"),
            "image_id": fileid,
            "height": ann["height"],
            "width": ann["width"],
            "annotations": objs,
        })
    if problems:
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        err = DatasetFormatError(
            f"VOC {dirname!r} split {split!r}: {len(problems)} problem(s) in {len(ids)} images:\n  "
            + "\n  ".join(problems[:20]) + more
        )
        err.partial = out  # the images that did load, for callers that want to go on without the rest
        err.problems = problems
        raise err
    return out
