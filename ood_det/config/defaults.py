"""``add_ood_config(cfg)``: the ``MODEL.OOD`` subtree shared by both backends.

The keys of each head and regularizer are declared next to the method itself (its
``add_config`` classmethod), so that one method stays in one file; this function only gathers them.
Works on a detectron2 ``CfgNode`` and on ours alike (both are fvcore/yacs ``CfgNode`` s).
"""
from __future__ import annotations


def add_ood_config(cfg):
    """Add ``MODEL.OOD`` (head, score, outliers, regularizers and their hyperparameters),
    ``DATASETS.OOD_TEST`` / ``DATASETS.SHIFT_TEST`` and ``TEST.OOD`` to ``cfg`` in place and return it."""
    from ..heads import HEADS
    from ..regularizers import REGULARIZERS
    from ..regularizers.vos import VirtualOutlierSynthesizer

    CN = type(cfg)
    cfg.MODEL.OOD = CN()
    ood = cfg.MODEL.OOD
    ood.HEAD = "softmax"  # softmax | isomax | isomaxplus | dismax | cfl
    ood.SCORE = ""  # "" = the head's default score
    ood.OUTLIERS = ""  # "" | "vos": where regularizers get outlier features from
    ood.REGULARIZERS = []  # any of: vos, energy, greg, fpr
    for cls in list(HEADS.values()) + list(REGULARIZERS.values()) + [VirtualOutlierSynthesizer]:
        cls.add_config(ood)

    if "OOD_TEST" not in cfg.DATASETS:
        cfg.DATASETS.OOD_TEST = ()
    # ID images under a covariate shift (contrast / noise / blur): their boxes should stay ID; the
    # evaluation reports the share flagged unknown at the stored thresholds
    if "SHIFT_TEST" not in cfg.DATASETS:
        cfg.DATASETS.SHIFT_TEST = ()
    cfg.TEST.OOD = CN()
    # ID-val recall at which the unknown threshold is set (0.95 = FPR95's operating point)
    cfg.TEST.OOD.TPR = 0.95
    # dataset of held-out ID boxes used for thresholds / calibration ("" = first of DATASETS.TEST)
    cfg.TEST.OOD.VAL_DATASET = ""
    # box-confidence threshold before OOD scoring: "f1" (per-class F1-optimal at IoU 0.5, averaged,
    # on ID val), "f1_vos" (VOS's recipe: COCOeval over IoU .5:.95, rounded to 4 decimals) or a number
    cfg.TEST.OOD.CONF_THRESH = "f1"
    # which confidence CONF_THRESH is compared with: "box" (the detection's class score) or
    # "proposal" (the maximum foreground probability of its proposal, as VOS's evaluation code;
    # the VOC-OOD configs use "f1_vos" + "proposal", VOS's recipe)
    cfg.TEST.OOD.CONF_SOURCE = "box"
    # headline ID accuracy of the summary: "voc_ap50" (VOC AP50, difficult ignored) or "coco_ap"
    # (COCO AP@[.5:.95], difficult as ordinary GT: comparable with the VOS table's 48.9)
    cfg.TEST.OOD.ID_METRIC = "voc_ap50"
    cfg.TEST.OOD.DUMP_SCORES = True
    return cfg
