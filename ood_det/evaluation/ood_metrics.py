"""Threshold-free OOD metrics: FPR at 95% TPR, AUROC, AUPR-In, AUPR-Out.

Convention (Hendrycks & Gimpel, ICLR 2017; VOS, Du et al., ICLR 2022): scores are **higher =
more in-distribution** and the in-distribution (ID) sample is the **positive** class. (pytorch-ood
uses the opposite convention.)

Reference definitions, reproduced to 1e-9 ties included, with ``y = [1]*n_id + [0]*n_ood`` and
``s = concat(id_scores, ood_scores)``:

* ``fpr95``: VOS's ``get_measures`` / Hendrycks' ``fpr_and_fdr_at_recall`` (the number the
  published tables report): operating points at every distinct score from the highest down, up to
  the first one whose recall (``tps / n_id``) reaches 1; among them the one whose recall is
  **closest** to ``tpr``, and among equally close ones the one accepting the most OOD samples;
  ``fpr95`` = its OOD acceptance rate. This is not the first point with recall ``>= tpr``: the two
  can be far apart on small sets (ID ``1..20``, OOD ``[1.5, 30]``: the closest point accepts 100%
  of OOD, the first point reaching 95% accepts 50%).
* ``threshold``: the largest score ``t`` with ``mean(id_scores >= t) >= tpr`` (``fpr, tpr_, thr =
  roc_curve(y, s, drop_intermediate=False)``, ``k = np.searchsorted(tpr_, tpr)``, ``thr[k]``): the
  unknown threshold a deployment uses; ``fpr_at_threshold = mean(ood_scores >= threshold)``
  (``fpr[k]``) is the OOD acceptance there.
* ``auroc = roc_auc_score(y, s)``;
* ``aupr_in = average_precision_score(y, s)``;
* ``aupr_out = average_precision_score(1 - y, -s)``.

Implementation: one ``argsort`` of the pooled scores and cumulative sums over the tie groups
(distinct score values); AUROC is the trapezoid rule evaluated exactly in int64 (the Mann-Whitney
U statistic with ties counted one half).
"""
from __future__ import annotations

from typing import Any, Dict

import numpy as np

from ._common import finite_1d

__all__ = ["ood_metrics", "threshold_at_tpr"]


def _check_tpr(tpr: float) -> float:
    tpr = float(tpr)
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    return tpr


def threshold_at_tpr(id_scores: Any, tpr: float = 0.95) -> float:
    """The largest score ``t`` keeping at least ``tpr`` of ``id_scores`` (``score >= t``).

    Equal to :func:`ood_metrics`' ``threshold`` (which depends on the ID scores only).

    Args:
        id_scores: ``[N]`` ID scores (array, list or tensor), higher = more ID.
    """
    tpr = _check_tpr(tpr)
    s = finite_1d(id_scores, "id_scores")
    desc = np.sort(s)[::-1]
    # recall after the j-th highest score, computed as sklearn does (count / n in float64)
    frac = np.arange(1, s.size + 1, dtype=np.float64) / float(s.size)
    return float(desc[int(np.searchsorted(frac, tpr))])


def ood_metrics(id_scores: Any, ood_scores: Any, tpr: float = 0.95) -> Dict[str, float]:
    """FPR at ``tpr`` TPR, AUROC, AUPR-In, AUPR-Out of ID vs OOD scores (ID = positive).

    Args:
        id_scores: ``[N_id]`` scores of in-distribution samples (numpy, list or torch tensor).
        ood_scores: ``[N_ood]`` scores of OOD samples. Higher = more ID for both.
        tpr: the TPR of the FPR operating point (0.95 for FPR95).

    Returns:
        ``{"fpr95", "auroc", "aupr_in", "aupr_out", "threshold", "fpr_at_threshold", "n_id",
        "n_ood"}``: fractions in ``[0, 1]`` (``fpr95`` is VOS's FPR at ``tpr`` whatever its value),
        the score keeping ``tpr`` of the ID samples and the OOD acceptance there, and the sample
        counts. See the module docstring for the exact reference definitions.

    Raises:
        ValueError: empty input, NaN / inf values (naming the array and the count), bad ``tpr``.
    """
    tpr = _check_tpr(tpr)
    s_id = finite_1d(id_scores, "id_scores")
    s_ood = finite_1d(ood_scores, "ood_scores")
    n_pos, n_neg = s_id.size, s_ood.size
    s = np.concatenate([s_id, s_ood])
    order = np.argsort(s)[::-1]  # descending; the order inside a tie group is irrelevant
    s_desc = s[order]
    is_id = order < n_pos
    # last index of each tie group (distinct thresholds, from the highest score down)
    ends = np.flatnonzero(s_desc[1:] != s_desc[:-1])
    ends = np.append(ends, s.size - 1)
    tps = np.cumsum(is_id, dtype=np.int64)[ends]  # ID with score >= t
    fps = ends + 1 - tps  # OOD with score >= t
    tps_prev = np.concatenate(([0], tps[:-1]))
    fps_prev = np.concatenate(([0], fps[:-1]))
    d_tp = tps - tps_prev  # ID samples in the tie group
    d_fp = fps - fps_prev  # OOD samples in the tie group

    # AUROC: trapezoids between consecutive ROC points, 2 * area * P * N exactly in int64
    twice_u = int(np.sum(d_fp * (tps + tps_prev)))
    auroc = twice_u / (2.0 * n_pos * n_neg)

    # the threshold: first point with TPR >= tpr (TPR computed as sklearn does: tps / P in float64)
    recall = tps / float(n_pos)
    k = int(np.searchsorted(recall, tpr))
    threshold = float(s_desc[ends[k]])
    # FPR95 as VOS / Hendrycks: points up to the first reaching recall 1, visited from there back
    # to the highest score (then a (recall 1, fps 0) point, as their code appends), the recall
    # closest to tpr, the first such in that order (= the most OOD accepted among equal ones)
    last = int(np.searchsorted(tps, tps[-1]))
    rec_r = np.append(recall[last::-1], 1.0)
    fps_r = np.append(fps[last::-1], 0)
    fpr = fps_r[int(np.argmin(np.abs(rec_r - tpr)))] / float(n_neg)

    # AUPR-In: sum over groups of delta-recall * precision, ID positive, ranking by s
    aupr_in = float(np.sum(d_tp * (tps / (tps + fps)))) / n_pos
    # AUPR-Out: OOD positive ranked by -s, i.e. the same groups visited from the lowest score up;
    # at group g, "score <= s_g" holds n_neg - fps_prev OOD and n_pos - tps_prev ID samples
    out_tp = n_neg - fps_prev
    out_all = out_tp + (n_pos - tps_prev)
    aupr_out = float(np.sum(d_fp * (out_tp / out_all))) / n_neg

    return {
        "fpr95": float(fpr),
        "auroc": float(auroc),
        "aupr_in": max(0.0, aupr_in),
        "aupr_out": max(0.0, aupr_out),
        "threshold": threshold,
        "fpr_at_threshold": float(fps[k] / float(n_neg)),
        "n_id": int(n_pos),
        "n_ood": int(n_neg),
    }
