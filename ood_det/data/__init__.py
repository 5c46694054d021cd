"""Datasets (framework-agnostic): DigitsOOD, COCO-json and PASCAL VOC loaders, the catalog, image reading.

Dataset dicts follow detectron2's format (see :mod:`ood_det.data.coco`); unknown (OOD) objects have
``category_id`` -1 and ``"unknown_class"``. Submodules: :mod:`.catalog` (the registry:
``register`` / ``get`` / ``metadata`` / ``names``), :mod:`.builtin` (the built-in datasets,
registered when this package is imported, as ``detectron2.data`` registers its own),
:mod:`.paths` (the datasets root), :mod:`.digits_ood`, :mod:`.coco`, :mod:`.voc`, :mod:`.io`
(``read_image``), :mod:`.check` (the dataset checker).
"""
from .coco import DatasetFormatError, load_coco_json, save_coco_json
from .io import ImageReadError, read_image
from .voc import VOC_CLASS_NAMES, load_voc_instances
from . import builtin  # noqa: F401  (registers the built-in datasets)

__all__ = [
    "DatasetFormatError", "ImageReadError", "VOC_CLASS_NAMES", "load_coco_json", "load_voc_instances",
    "read_image", "save_coco_json",
]
