"""The built-in datasets, registered in :mod:`ood_det.data.catalog` on import.

All live under one root (:func:`ood_det.data.paths.datasets_root`: ``$OOD_DET_DATASETS``, else
the checkout's ``datasets/``, else ``./datasets``), in VOS's layout (see ``datasets/README.md``)::

    <root>/digits_ood/                      generated on first use (DigitsOOD)
    <root>/digits_ood_smoke/                the tiny variant of configs/Digits-OOD/smoke.yaml
    <root>/VOC2007/{Annotations,ImageSets/Main,JPEGImages}
    <root>/VOC2012/{Annotations,ImageSets/Main,JPEGImages}
    <root>/VOC_0712_converted/{JPEGImages,voc0712_train_all.json,val_coco_format.json}   (VOS's, optional)
    <root>/COCO/val2017/  <root>/COCO/annotations/instances_val2017_ood_rm_overlap.json
    <root>/OpenImages/ood_classes_rm_overlap/{images/,COCO-Format/val_coco_format.json}

Besides the catalog's keys, built-ins carry ``expected_images`` / ``expected_annotations``
where published. :func:`register_builtin_datasets` re-registers them under another root,
:func:`register_digits_ood_smoke` the smoke splits (``digits_ood_smoke_*``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

from .catalog import DatasetNotFoundError, register, remove
from .coco import PathLike, load_coco_json
from .digits_ood import (
    DIGITS_SPLITS,
    SPLIT_DISTRIBUTION,
    DigitsOODConfig,
    digits_ood_class_names,
    ensure_digits_ood,
    load_digits_ood,
)
from .paths import datasets_root
from .voc import COCO_TO_VOC_NAMES, VOC_CLASS_NAMES, VOC_DOWNLOAD_HINT, VOC_SPLIT_SIZES, load_voc_instances

#: names registered by :func:`register_builtin_datasets`
BUILTIN_NAMES: List[str] = []

#: images per split of the smoke-test variant of DigitsOOD (``digits_ood_smoke_*``)
SMOKE_IMAGES: Dict[str, int] = {"train": 64, "val": 24, "test": 24, "ood": 24, "mixed": 16, "far": 16, "shift": 16}
SMOKE_PREFIX = "digits_ood_smoke"

COCO_OOD_DOWNLOAD = (
    "COCO val2017 images: http://images.cocodataset.org/zips/val2017.zip, unzipped to <root>/COCO/val2017; "
    "the OOD annotation file instances_val2017_ood_rm_overlap.json is VOS's (github.com/deeplearning-wisc/vos, "
    "README 'COCO': Google-Drive link 'OOD dataset (json file) when the in-distribution dataset is Pascal VOC'), "
    "put in <root>/COCO/annotations/"
)
OPENIMAGES_OOD_DOWNLOAD = (
    "VOS's OpenImages OOD split (github.com/deeplearning-wisc/vos, README 'OpenImages': Google-Drive tarball); "
    "untar so that <root>/OpenImages/ood_classes_rm_overlap/images/ and "
    "<root>/OpenImages/ood_classes_rm_overlap/COCO-Format/val_coco_format.json exist"
)
VOS_VOC_DOWNLOAD = (
    "VOS's converted VOC (github.com/deeplearning-wisc/vos, README 'PASCAL VOC': Google-Drive link) unpacked to "
    "<root>/VOC_0712_converted/{JPEGImages,voc0712_train_all.json,val_coco_format.json}"
)


def _missing(paths, name: str, how: str) -> None:
    """Raise :class:`DatasetNotFoundError` listing the absent ``paths`` (an absent folder is named once,
    not with everything below it)."""
    absent = []
    for p in map(Path, paths):
        if p.exists():
            continue
        while not p.parent.exists() and p.parent != p.parent.parent:
            p = p.parent
        if str(p) not in absent:
            absent.append(str(p))
    if absent:
        raise DatasetNotFoundError(f"dataset {name!r}: missing {', '.join(absent)}. To get it: {how}")


def _coco_ood_loader(name: str, json_file: Path, image_root: Path, how: str):
    def load():
        _missing([json_file, image_root], name, how)
        return load_coco_json(json_file, image_root, VOC_CLASS_NAMES, unknown="mark",
                              name_aliases=COCO_TO_VOC_NAMES)

    return load


def _voc_loader(name: str, dirname: Path, split: str):
    def load():
        _missing([dirname / "ImageSets" / "Main" / f"{split}.txt", dirname / "Annotations", dirname / "JPEGImages"],
                 name, VOC_DOWNLOAD_HINT)
        return load_voc_instances(dirname, split)

    return load


def _vos_voc_available(json_file: Path, image_root: Path, xml_parts) -> bool:
    """VOS's converted layout is used when it is present and the XML layout is not complete."""
    xml_ok = all((d / "ImageSets" / "Main" / f"{s}.txt").is_file() for d, s in xml_parts)
    return not xml_ok and json_file.is_file() and image_root.is_dir()


def _voc_combined_loader(name: str, xml_parts, vos_json: Path, vos_images: Path):
    def load():
        if _vos_voc_available(vos_json, vos_images, xml_parts):
            return load_coco_json(vos_json, vos_images, VOC_CLASS_NAMES, unknown="error",
                                  name_aliases=COCO_TO_VOC_NAMES)
        paths = [p for d, s in xml_parts for p in (d / "ImageSets" / "Main" / f"{s}.txt", d / "Annotations",
                                                   d / "JPEGImages")]
        _missing(paths, name, f"{VOC_DOWNLOAD_HINT}; or {VOS_VOC_DOWNLOAD}")
        return [rec for d, s in xml_parts for rec in load_voc_instances(d, s)]

    return load


def _digits_loader(root: Path, split: str):
    def load():
        return load_digits_ood(split, root, regenerate="auto")

    return load


def register_builtin_datasets(root: Optional[PathLike] = None) -> Path:
    """(Re-)register the built-in datasets under ``root`` (default :func:`datasets_root`); returns it."""
    root = Path(root) if root is not None else datasets_root()
    for n in BUILTIN_NAMES:
        remove(n)
    BUILTIN_NAMES.clear()

    def reg(name, loader, **md):
        register(name, loader, overwrite=True, root=str(root), **md)
        BUILTIN_NAMES.append(name)

    # DigitsOOD ------------------------------------------------------------------------------
    droot = root / "digits_ood"
    dclasses = list(digits_ood_class_names(droot))
    for split in DIGITS_SPLITS:
        dist = SPLIT_DISTRIBUTION[split]
        reg(f"digits_ood_{split}", _digits_loader(droot, split),
            thing_classes=dclasses, evaluator_type="coco" if dist == "id" else "ood", distribution=dist,
            # the json's category id of digit d is d + 1 (all ten digits are categories)
            thing_dataset_id_to_contiguous_id={int(c) + 1: i for i, c in enumerate(dclasses)},
            json_file=str(droot / "annotations" / f"{split}.json"), image_root=str(droot), split=split,
            generated=True,
            download=f"python -m ood_det.data.digits_ood --root {droot}")

    # PASCAL VOC (XML layout) ------------------------------------------------------------------
    voc = list(VOC_CLASS_NAMES)
    for year, split in (("2007", "trainval"), ("2007", "train"), ("2007", "val"), ("2007", "test"),
                        ("2012", "trainval")):
        dirname = root / f"VOC{year}"
        reg(f"voc_{year}_{split}", _voc_loader(f"voc_{year}_{split}", dirname, split),
            thing_classes=voc, evaluator_type="pascal_voc", distribution="id", dirname=str(dirname),
            year=int(year), split=split, expected_images=VOC_SPLIT_SIZES[(year, split)],
            download=VOC_DOWNLOAD_HINT)

    # VOS names: VOC07+12 trainval and VOC07 test, from the XML layout or VOS's converted jsons -----
    vos_dir = root / "VOC_0712_converted"
    for name, parts, json_name, n_images in (
        ("voc_custom_train", [(root / "VOC2007", "trainval"), (root / "VOC2012", "trainval")],
         "voc0712_train_all.json", VOC_SPLIT_SIZES[("2007", "trainval")] + VOC_SPLIT_SIZES[("2012", "trainval")]),
        ("voc_custom_val", [(root / "VOC2007", "test")], "val_coco_format.json", VOC_SPLIT_SIZES[("2007", "test")]),
    ):
        reg(name, _voc_combined_loader(name, parts, vos_dir / json_name, vos_dir / "JPEGImages"),
            thing_classes=voc, evaluator_type="coco", distribution="id",
            components=[f"voc_{d.name[3:]}_{s}" for d, s in parts],
            vos_json_file=str(vos_dir / json_name), vos_image_root=str(vos_dir / "JPEGImages"),
            expected_images=n_images, download=f"{VOC_DOWNLOAD_HINT}; or {VOS_VOC_DOWNLOAD}")

    # OOD test sets (VOS protocol) --------------------------------------------------------------
    coco_json = root / "COCO" / "annotations" / "instances_val2017_ood_rm_overlap.json"
    coco_images = root / "COCO" / "val2017"
    reg("coco_ood_val", _coco_ood_loader("coco_ood_val", coco_json, coco_images, COCO_OOD_DOWNLOAD),
        thing_classes=voc, evaluator_type="ood", distribution="ood", json_file=str(coco_json),
        image_root=str(coco_images), expected_images=930, expected_annotations=2824, download=COCO_OOD_DOWNLOAD)

    oi_dir = root / "OpenImages" / "ood_classes_rm_overlap"
    oi_json, oi_images = oi_dir / "COCO-Format" / "val_coco_format.json", oi_dir / "images"
    reg("openimages_ood_val", _coco_ood_loader("openimages_ood_val", oi_json, oi_images, OPENIMAGES_OOD_DOWNLOAD),
        thing_classes=voc, evaluator_type="ood", distribution="ood", json_file=str(oi_json),
        image_root=str(oi_images), download=OPENIMAGES_OOD_DOWNLOAD)
    return root



def register_digits_ood_smoke(root: Optional[PathLike] = None) -> Path:
    """(Re-)register ``digits_ood_smoke_{train,val,test,ood,mixed,far,shift}`` (generated on first use, like
    ``digits_ood_*``, with :data:`SMOKE_IMAGES` images per split) under ``root`` (default:
    ``<datasets root>/digits_ood_smoke``); returns it."""
    droot = Path(root) if root is not None else datasets_root() / SMOKE_PREFIX
    config = DigitsOODConfig(images={s: SMOKE_IMAGES.get(s, 0) for s in DIGITS_SPLITS})

    def loader(split):
        def load():
            ensure_digits_ood(droot, config, regenerate="auto", progress=False)
            return load_digits_ood(split, droot, regenerate="never")

        return load

    for split in DIGITS_SPLITS:
        if not SMOKE_IMAGES.get(split):
            continue
        dist = SPLIT_DISTRIBUTION[split]
        register(
            f"{SMOKE_PREFIX}_{split}", loader(split), overwrite=True,
            thing_classes=list(digits_ood_class_names(droot)), distribution=dist,
            evaluator_type="coco" if dist == "id" else "ood", root=str(droot), split=split, generated=True,
        )
    return droot


register_builtin_datasets()
register_digits_ood_smoke()
