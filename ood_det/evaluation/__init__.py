"""Evaluation: OOD metrics, detection AP, the VOS protocol, unknown-object metrics, plots.

Framework-agnostic (numpy / torch in, python floats out); both backends call these.

* :func:`ood_metrics` - FPR95 / AUROC / AUPR-In / AUPR-Out (ID positive, higher = more ID).
* :mod:`.detection` - VOC AP50 (11-point and area) and COCO AP via pycocotools.
* :mod:`.protocol` - VOS: F1-optimal box-confidence threshold, box-level OOD metrics, unknown
  threshold at 95% ID TPR.
* :mod:`.unknown` - AP_U / AR_U of boxes flagged unknown, WI / AOSE on mixed splits.
* :mod:`.evaluator` - :class:`Predictions` store, :func:`evaluate_ood_detection`, :func:`summarize`.
* :mod:`.driver` - the protocol end to end for any backend (:func:`~.driver.run_protocol`).
* :mod:`.plots` - score histogram and ROC PNGs.
"""
from .ood_metrics import ood_metrics, threshold_at_tpr
from .detection import evaluate_coco, evaluate_voc
from .protocol import f1_optimal_threshold, ood_boxes, unknown_threshold
from .unknown import open_set_metrics, unknown_metrics
from .evaluator import Predictions, evaluate_ood_detection, flatten_results, format_table, summarize
from .plots import plot_ood_scores

__all__ = [
    "ood_metrics",
    "threshold_at_tpr",
    "evaluate_voc",
    "evaluate_coco",
    "f1_optimal_threshold",
    "ood_boxes",
    "unknown_threshold",
    "unknown_metrics",
    "open_set_metrics",
    "Predictions",
    "evaluate_ood_detection",
    "flatten_results",
    "format_table",
    "summarize",
    "plot_ood_scores",
]
