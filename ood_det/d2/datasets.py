"""Mirror :mod:`ood_det.data.catalog` into detectron2's ``DatasetCatalog`` / ``MetadataCatalog``.

Every catalog dataset (DigitsOOD splits, VOC, VOS's ``voc_custom_*``, ``coco_ood_val``,
``openimages_ood_val`` and anything a user registered with ``ood_det.data.catalog.register``) is
registered under the same name with a loader that calls ``catalog.get(name)`` lazily, and the
catalog's metadata (``thing_classes``, ``evaluator_type``, ...) is copied to ``MetadataCatalog``.

detectron2 registers its own ``voc_2007_*`` / ``voc_2012_*`` at import (reading
``$DETECTRON2_DATASETS``); the names the catalog also defines are replaced by the catalog's (same
dict format and class order, files under the catalog's root, see ``ood_det.data.catalog``), so
that both backends read the same data.
"""
from __future__ import annotations

import logging
from typing import Iterable, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..data import catalog

__all__ = ["register_ood_datasets"]

logger = logging.getLogger(__name__)

#: marks the MetadataCatalog entries this module made
_MARK = "ood_det_catalog"


def _loader(name: str):
    def load():
        return catalog.get(name)

    return load


def register_ood_datasets(names: Optional[Iterable[str]] = None) -> List[str]:
    """Register ``names`` (default: every catalog dataset) into detectron2's catalogs.

    Idempotent: a dataset already registered by this function with the same metadata is left
    alone; one whose catalog metadata changed (e.g. after
    ``ood_det.data.builtin.register_builtin_datasets(other_root)``) is re-registered. Returns the
    names newly (re-)registered. (Importing ``ood_det.data`` registered the built-ins.)
    """
    done = []
    for name in list(names) if names is not None else catalog.names():
        md = {k: v for k, v in catalog.metadata(name).items() if k != "name"}
        md[_MARK] = True
        registered = name in DatasetCatalog.list()
        if registered:
            old = MetadataCatalog.get(name)
            if old.get(_MARK, False) and all(old.get(k, None) == v for k, v in md.items()):
                continue
            if not old.get(_MARK, False):
                logger.debug("replacing detectron2's registration of %r by ood_det's catalog", name)
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, _loader(name))
        MetadataCatalog.get(name).set(**md)
        done.append(name)
    return done
