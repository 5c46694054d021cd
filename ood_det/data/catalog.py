"""A small framework-agnostic dataset registry (it knows no particular dataset).

``register(name, loader_fn, **metadata)``, ``get(name) -> list[dict]``, ``metadata(name)``,
``names()``, ``remove(name)``; :func:`get_dicts` and :func:`thing_classes` add the checks the
trainers and the evaluation need. The built-in datasets (DigitsOOD, VOC, COCO-OOD, OpenImages-OOD)
are registered by :mod:`ood_det.data.builtin`, as detectron2 separates ``data/catalog.py`` from
``data/datasets/builtin.py``; the detectron2 plugin mirrors the registry into its
``DatasetCatalog`` / ``MetadataCatalog``.

Metadata keys used by ood_det: ``thing_classes`` (the known classes), ``evaluator_type``
(``"coco"``, ``"pascal_voc"`` or ``"ood"``), ``distribution`` (``"id"``, ``"ood"`` or ``"mixed"``),
``root`` and the paths a loader reads (``json_file`` / ``image_root`` / ``dirname``), ``download``
(how to get the files).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

_LOADERS: Dict[str, Callable[[], List[Dict[str, Any]]]] = {}
_METADATA: Dict[str, Dict[str, Any]] = {}


class DatasetNotFoundError(FileNotFoundError):
    """A registered dataset's files are not where its loader looks; the message says how to get them."""


# --------------------------------------------------------------------------------------- catalog
def register(name: str, loader_fn: Callable[[], List[Dict[str, Any]]], *, overwrite: bool = False,
             **metadata: Any) -> None:
    """Register ``loader_fn`` (no arguments -> list of dataset dicts) as ``name`` with ``metadata``."""
    if not callable(loader_fn):
        raise TypeError(f"register({name!r}): loader_fn must be callable, got {type(loader_fn).__name__}")
    if name in _LOADERS and not overwrite:
        raise KeyError(f"dataset {name!r} is already registered (pass overwrite=True to replace it)")
    _LOADERS[name] = loader_fn
    _METADATA[name] = dict(metadata, name=name)


def remove(name: str) -> None:
    """Unregister ``name`` (no error if it is not registered)."""
    _LOADERS.pop(name, None)
    _METADATA.pop(name, None)


def _check_name(name: str) -> None:
    if name not in _LOADERS:
        raise KeyError(f"dataset {name!r} is not registered; registered: {', '.join(names())}")


def get(name: str) -> List[Dict[str, Any]]:
    """Load dataset ``name``: a fresh list of dataset dicts."""
    _check_name(name)
    dicts = _LOADERS[name]()
    if not isinstance(dicts, list):
        raise TypeError(f"the loader of dataset {name!r} returned {type(dicts).__name__}, not a list")
    return dicts


def metadata(name: str) -> Dict[str, Any]:
    """A copy of ``name`` 's metadata."""
    _check_name(name)
    return dict(_METADATA[name])


def names() -> List[str]:
    """All registered names, sorted."""
    return sorted(_LOADERS)


# --------------------------------------------------------------------------------------- helpers
def get_dicts(name: str) -> List[Dict[str, Any]]:
    """Dataset dicts of ``name``; an empty dataset is an error naming it and where it was read."""
    dicts = get(name)
    if not dicts:
        md = metadata(name)
        where = md.get("json_file") or md.get("dirname") or md.get("root") or "?"
        raise ValueError(f"dataset {name!r} is empty: no images (read from {where})")
    return dicts


def thing_classes(dataset_names: Sequence[str], num_classes: Optional[int] = None) -> List[str]:
    """The known classes (``thing_classes``) shared by ``dataset_names``, checked against
    ``num_classes`` (``MODEL.ROI_HEADS.NUM_CLASSES``); ``0 .. K-1`` as strings when no dataset
    declares them."""
    if not dataset_names:
        raise ValueError("no dataset given (DATASETS.TRAIN / DATASETS.TEST is empty)")
    classes = None
    for n in dataset_names:
        c = metadata(n).get("thing_classes")
        if c is None:
            continue
        if classes is not None and list(c) != classes:
            raise ValueError(f"datasets {list(dataset_names)} have different classes: {classes} vs {list(c)} ({n!r})")
        classes = list(c)
    if classes is None:
        if num_classes is None:
            raise ValueError(f"datasets {list(dataset_names)} declare no thing_classes")
        classes = [str(i) for i in range(num_classes)]
    if num_classes is not None and len(classes) != num_classes:
        raise ValueError(
            f"MODEL.ROI_HEADS.NUM_CLASSES={num_classes} but datasets {list(dataset_names)} have {len(classes)} "
            f"known classes {classes}"
        )
    return classes

