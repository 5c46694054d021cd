"""detectron2 plugin of ood_det (layout like detectron2's ``projects/PointRend``).

Importing it registers ``OODROIHeads`` (``ROI_HEADS_REGISTRY``), ``build_regnet_fpn_backbone``
(``BACKBONE_REGISTRY``) and every :mod:`ood_det.data.catalog` dataset in detectron2's
``DatasetCatalog`` / ``MetadataCatalog``. Use in one's own detectron2 project::

    from detectron2.config import get_cfg
    from ood_det.d2 import add_ood_d2_config

    cfg = get_cfg()
    add_ood_d2_config(cfg)          # MODEL.OOD, TEST.OOD, DATASETS.OOD_TEST, MODEL.REGNET
    cfg.MODEL.ROI_HEADS.NAME = "OODROIHeads"
    cfg.MODEL.OOD.HEAD = "isomaxplus"

Needs detectron2, which is on no package registry (see docs/detectron2.md).
"""
from .config import add_ood_d2_config, get_ood_d2_cfg
from .backbone import build_regnet_fpn_backbone
from .output_layers import OODFastRCNNOutputLayers, ood_fast_rcnn_inference
from .roi_heads import OODROIHeads
from .datasets import register_ood_datasets

register_ood_datasets()

__all__ = [
    "add_ood_d2_config",
    "get_ood_d2_cfg",
    "build_regnet_fpn_backbone",
    "OODFastRCNNOutputLayers",
    "ood_fast_rcnn_inference",
    "OODROIHeads",
    "register_ood_datasets",
]
