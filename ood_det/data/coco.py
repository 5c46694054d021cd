"""COCO-format json <-> dataset dicts (detectron2's format, framework-agnostic).

:func:`load_coco_json` turns a COCO json plus an image root into dataset dicts::

    {"file_name", "image_id", "height", "width",
     "annotations": [{"bbox": [x0, y0, x1, y1], "bbox_mode": 0, "category_id", "iscrowd"}, ...]}

Boxes are converted from COCO's ``[x, y, w, h]`` to ``XYXY_ABS`` (``bbox_mode`` 0). Category ids
become contiguous ``0 .. K-1`` following ``class_names`` (or the json's own categories sorted by id).
An annotation of a class outside ``class_names`` is an *unknown object*: kept with
``category_id = -1`` and ``"unknown_class": <its json name>`` (``unknown="mark"``), dropped
(``"drop"``) or refused (``"error"``). Crowd boxes (``iscrowd`` 1) are kept with the flag set
(detectron2's mappers skip them in training) or dropped (``crowd="drop"``).

:func:`save_coco_json` writes dataset dicts back as a COCO json (used by the DigitsOOD generator);
``load_coco_json(save_coco_json(d, ...), ...)`` gives ``d`` back.
"""
from __future__ import annotations

import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Union

PathLike = Union[str, "os.PathLike[str]"]

#: detectron2's ``BoxMode`` values used here
BOX_MODE_XYXY_ABS = 0
BOX_MODE_XYWH_ABS = 1

_UNKNOWN_POLICIES = ("mark", "drop", "error")
_CROWD_POLICIES = ("keep", "drop")


class DatasetFormatError(ValueError):
    """A dataset file is malformed; the message names the file, the entry and the key."""


def read_json(json_file: PathLike) -> Any:
    """Read a json file with errors that name it (missing file, bad json)."""
    json_file = os.fspath(json_file)
    try:
        with open(json_file, "r", encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file {json_file!r} does not exist") from None
    except json.JSONDecodeError as e:
        raise DatasetFormatError(
            f"{json_file!r} is not valid json (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None
    except UnicodeDecodeError as e:
        raise DatasetFormatError(f"{json_file!r} is not UTF-8 text: {e}") from None


def _require(entry: Mapping, key: str, where: str):
    try:
        return entry[key]
    except (KeyError, TypeError):
        raise DatasetFormatError(f"{where} lacks the key {key!r}") from None


def coco_categories(data: Mapping, json_file: str = "<json>") -> Dict[Any, str]:
    """``{category id: name}`` of a loaded COCO json, in id order."""
    cats = _require(data, "categories", f"{json_file!r}")
    if not isinstance(cats, list):
        raise DatasetFormatError(f"{json_file!r}: 'categories' must be a list")
    out = {}
    for i, c in enumerate(cats):
        where = f"{json_file!r} categories[{i}]"
        cid, name = _require(c, "id", where), _require(c, "name", where)
        if cid in out:
            raise DatasetFormatError(f"{where}: duplicate category id {cid!r}")
        out[cid] = str(name)
    return dict(sorted(out.items(), key=lambda kv: (str(type(kv[0])), kv[0])))


def load_coco_json(
    json_file: PathLike,
    image_root: PathLike,
    class_names: Optional[Sequence[str]] = None,
    *,
    unknown: str = "mark",
    crowd: str = "keep",
    name_aliases: Optional[Mapping[str, str]] = None,
    extra_annotation_keys: Iterable[str] = (),
    keep_empty: bool = True,
) -> List[Dict[str, Any]]:
    """Load a COCO-format json into dataset dicts.

    Args:
        json_file: the COCO json (needs ``images`` and ``categories``; ``annotations`` may be absent
            or empty, as in the OpenImages OOD split).
        image_root: folder the images' ``file_name`` s are relative to.
        class_names: the known classes, in contiguous-id order. ``None``: the json's categories
            sorted by id are the known classes (then nothing is unknown).
        unknown: what to do with an annotation whose class is not in ``class_names``:
            ``"mark"`` (``category_id`` -1 + ``"unknown_class"``), ``"drop"`` or ``"error"``.
        crowd: ``"keep"`` crowd boxes with ``"iscrowd": 1`` or ``"drop"`` them.
        name_aliases: json name -> class name, applied before matching (e.g. COCO -> VOC names).
        extra_annotation_keys: further annotation keys copied into the dicts when present.
        keep_empty: keep images without (remaining) annotations.

    Returns:
        one dict per image, in the json's image order.
    """
    if unknown not in _UNKNOWN_POLICIES:
        raise ValueError(f"unknown={unknown!r}: expected one of {_UNKNOWN_POLICIES}")
    if crowd not in _CROWD_POLICIES:
        raise ValueError(f"crowd={crowd!r}: expected one of {_CROWD_POLICIES}")
    json_file = os.fspath(json_file)
    data = read_json(json_file)
    if not isinstance(data, dict):
        raise DatasetFormatError(f"{json_file!r}: expected a json object at the top level")
    categories = coco_categories(data, json_file)
    aliases = dict(name_aliases or {})
    if class_names is None:
        class_names = [aliases.get(n, n) for n in categories.values()]
    class_names = list(class_names)
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"class_names has duplicates: {class_names}")
    name_to_contiguous = {n: i for i, n in enumerate(class_names)}
    cat_to_name = {cid: aliases.get(n, n) for cid, n in categories.items()}
    cat_to_contiguous = {cid: name_to_contiguous.get(n, -1) for cid, n in cat_to_name.items()}
    extra_keys = tuple(extra_annotation_keys)

    images = _require(data, "images", f"{json_file!r}")
    if not isinstance(images, list):
        raise DatasetFormatError(f"{json_file!r}: 'images' must be a list")
    anns = data.get("annotations") or []
    if not isinstance(anns, list):
        raise DatasetFormatError(f"{json_file!r}: 'annotations' must be a list")

    image_ids = set()
    for i, img in enumerate(images):
        iid = _require(img, "id", f"{json_file!r} images[{i}]")
        if iid in image_ids:
            raise DatasetFormatError(f"{json_file!r} images[{i}]: duplicate image id {iid!r}")
        image_ids.add(iid)

    per_image: Dict[Any, List[Dict[str, Any]]] = defaultdict(list)
    for j, a in enumerate(anns):
        where = f"{json_file!r} annotations[{j}] (id {a.get('id') if isinstance(a, dict) else None!r})"
        iid = _require(a, "image_id", where)
        if iid not in image_ids:
            raise DatasetFormatError(f"{where}: image_id {iid!r} is not in 'images'")
        cid = _require(a, "category_id", where)
        if cid not in cat_to_contiguous:
            raise DatasetFormatError(f"{where}: category_id {cid!r} is not in 'categories'")
        is_crowd = int(a.get("iscrowd", 0) or 0)
        if is_crowd and crowd == "drop":
            continue
        bbox = _require(a, "bbox", where)
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            raise DatasetFormatError(f"{where}: bbox must be 4 numbers [x, y, w, h], got {bbox!r}") from None
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
            raise DatasetFormatError(f"{where}: bad bbox {bbox!r} (non-finite or negative size)")
        label = cat_to_contiguous[cid]
        obj: Dict[str, Any] = {
            "bbox": [x, y, x + w, y + h],
            "bbox_mode": BOX_MODE_XYXY_ABS,
            "category_id": label,
            "iscrowd": is_crowd,
        }
        if label < 0:
            if unknown == "drop":
                continue
            if unknown == "error":
                raise DatasetFormatError(
                    f"{where}: class {cat_to_name[cid]!r} is not one of the known classes {class_names}"
                )
            obj["unknown_class"] = cat_to_name[cid]
        for k in extra_keys:
            if k in a:
                obj[k] = a[k]
        per_image[iid].append(obj)

    root = os.fspath(image_root)
    out = []
    for i, img in enumerate(images):
        where = f"{json_file!r} images[{i}] (id {img['id']!r})"
        rec = {
            "file_name": os.path.join(root, str(_require(img, "file_name", where))),
            "image_id": img["id"],
            "height": int(_require(img, "height", where)),
            "width": int(_require(img, "width", where)),
            "annotations": per_image.get(img["id"], []),
        }
        if rec["annotations"] or keep_empty:
            out.append(rec)
    return out


def _xyxy(obj: Mapping, where: str) -> List[float]:
    bbox = [float(v) for v in _require(obj, "bbox", where)]
    mode = int(obj.get("bbox_mode", BOX_MODE_XYXY_ABS))
    if len(bbox) != 4:
        raise DatasetFormatError(f"{where}: bbox must have 4 numbers, got {bbox}")
    if mode == BOX_MODE_XYWH_ABS:
        return [bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]]
    if mode != BOX_MODE_XYXY_ABS:
        raise DatasetFormatError(f"{where}: bbox_mode {mode} is not supported (use 0 = XYXY_ABS or 1 = XYWH_ABS)")
    return bbox


def dataset_dicts_to_coco(
    dataset_dicts: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    *,
    extra_class_names: Sequence[str] = (),
    image_root: Optional[PathLike] = None,
    info: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Build a COCO json dict from dataset dicts (see :func:`save_coco_json`)."""
    names = list(class_names) + [n for n in extra_class_names if n not in class_names]
    for d in dataset_dicts:
        for a in d.get("annotations", []):
            if int(a.get("category_id", 0)) < 0 and a.get("unknown_class") not in names:
                if "unknown_class" not in a:
                    raise DatasetFormatError(
                        f"image {d.get('image_id')!r}: an annotation with category_id -1 has no 'unknown_class'"
                    )
                names.append(str(a["unknown_class"]))
    name_to_id = {n: i + 1 for i, n in enumerate(names)}
    root = os.fspath(image_root) if image_root is not None else None
    images, annotations = [], []
    for i, d in enumerate(dataset_dicts):
        where = f"dataset dict {i} (image_id {d.get('image_id')!r})"
        file_name = os.fspath(_require(d, "file_name", where))
        if root is not None:
            file_name = os.path.relpath(file_name, root)
        iid = _require(d, "image_id", where)
        images.append(
            {"id": iid, "file_name": file_name, "height": int(_require(d, "height", where)),
             "width": int(_require(d, "width", where))}
        )
        for j, a in enumerate(d.get("annotations", [])):
            awhere = f"{where} annotations[{j}]"
            x0, y0, x1, y1 = _xyxy(a, awhere)
            label = int(_require(a, "category_id", awhere))
            if label >= len(class_names):
                raise DatasetFormatError(f"{awhere}: category_id {label} >= number of classes {len(class_names)}")
            name = class_names[label] if label >= 0 else str(a["unknown_class"])
            ann = {k: v for k, v in a.items()
                   if k not in ("bbox", "bbox_mode", "category_id", "unknown_class", "iscrowd")}
            ann.update(
                id=len(annotations) + 1, image_id=iid, category_id=name_to_id[name],
                bbox=[x0, y0, x1 - x0, y1 - y0], area=(x1 - x0) * (y1 - y0),
                iscrowd=int(a.get("iscrowd", 0)),
            )
            annotations.append(ann)
    return {
        "info": dict(info or {}),
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n} for n, i in name_to_id.items()],
    }


def save_coco_json(
    dataset_dicts: Sequence[Mapping[str, Any]],
    json_file: PathLike,
    class_names: Sequence[str],
    *,
    extra_class_names: Sequence[str] = (),
    image_root: Optional[PathLike] = None,
    info: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write dataset dicts as a COCO json (atomically: a temporary file, then a rename).

    Categories are ``class_names`` (ids 1..K), then ``extra_class_names``, then any further
    ``unknown_class`` name met (ids K+1..). Known annotations (``category_id`` k >= 0) get the
    category of ``class_names[k]``; unknown ones (-1) the category named by ``unknown_class``, so
    the json keeps every object's true class. ``file_name`` s are written relative to
    ``image_root`` when given. Extra annotation keys (e.g. ``source_index``) are written as they are.
    """
    coco = dataset_dicts_to_coco(
        dataset_dicts, class_names, extra_class_names=extra_class_names, image_root=image_root, info=info
    )
    json_file = Path(json_file)
    json_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = json_file.with_name(json_file.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(coco, f)
    os.replace(tmp, json_file)
    return json_file
