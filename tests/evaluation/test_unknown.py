import numpy as np
import pytest

from ood_det.evaluation import open_set_metrics, unknown_metrics
from ood_det.evaluation.unknown import flag_unknown

from .conftest import box, image

U = {"unknown_class": "zebra"}


def pred(rows):
    """rows: (box, label, confidence, msp)."""
    return {"boxes": [r[0] for r in rows], "labels": [r[1] for r in rows], "scores": [r[2] for r in rows],
            "ood_scores": {"msp": [r[3] for r in rows]}}


def mixed_scene():
    """Image 1: known A (class 0), unknown U1, U2. Image 2: known B (class 0), C (class 1).

    Detections (box, label, confidence, msp); msp < 0.5 means flagged unknown:
      d1 class 0 on A .9 (TP)        d2 class 0 on U1 .8 (FP on unknown, AOSE)
      d3 class 1 on U2 .7, flagged   d4 class 0 background .6 (FP)
      d7 class 1 on U1 .4 (AOSE, same object as d2)
      d5 class 0 on B .5 (TP)        d6 class 1 on C .95 (TP)
    """
    dicts = [image(1, [(box(0, 0), 0), (box(30, 0), -1, U), (box(60, 0), -1, U)]),
             image(2, [(box(0, 0), 0), (box(30, 0), 1)])]
    preds = {
        1: pred([(box(0, 0), 0, 0.9, 0.9), (box(30, 0), 0, 0.8, 0.9), (box(60, 0), 1, 0.7, 0.1),
                 (box(0, 60), 0, 0.6, 0.8), (box(30.5, 0), 1, 0.4, 0.9)]),
        2: pred([(box(0, 0), 0, 0.5, 0.9), (box(30, 0), 1, 0.95, 0.9)]),
    }
    return dicts, preds


def test_open_set_metrics_hand_made_scene():
    dicts, preds = mixed_scene()
    r = open_set_metrics(preds, dicts, ["a", "b"], "msp", 0.5)
    # class 0 ranked .9 TP, .8 FP_U, .6 FP, .5 TP; 2 GT: recall .5 .5 .5 1 -> closest to .8 is the
    # 4th box: TP + FP = 4, FP_U = 1. Class 1 (d3 flagged): .95 TP, .4 FP_U; 1 GT: recall 1 at
    # the 1st box: TP + FP = 1, FP_U = 0. Pooled P_{K∪U} = 3/5, P_K = 3/4 -> WI = 0.75/0.6 - 1
    assert r["wi"] == pytest.approx(0.75 / 0.6 - 1)
    assert r["wi_opendet"] == pytest.approx(1 / 5)
    assert r["aose"] == 2 and r["aose_objects"] == 1  # d2 and d7, both on U1
    # known AP: class 0 recall .5 at precision 1, recall 1 at precision .5 -> .75; class 1 -> 1
    assert r["map_known"] == pytest.approx((0.75 + 1.0) / 2)
    # unknown: the flagged d3 finds U2 of the two unknown objects
    assert r["ap_u"] == pytest.approx(0.5) and r["ar_u"] == pytest.approx(0.5)
    assert r["num_flagged"] == 1 and r["num_unknown_gt"] == 2


def test_closed_set_detector_on_mixed_scene():
    dicts, preds = mixed_scene()
    r = open_set_metrics(preds, dicts, ["a", "b"], None, None)
    # nothing flagged: d3 is now a class-1 box on U2 -> 3 open-set errors on 2 unknown objects
    assert r["aose"] == 3 and r["aose_objects"] == 2
    assert r["wi"] == pytest.approx(0.25)  # class 1 still reaches recall 1 at its first box
    assert r["num_flagged"] == 0 and r["ap_u"] == 0.0 and r["ar_u"] == 0.0


def ood_scene():
    """OOD image: unknown U1, U2 and a crowd of unknowns. Flagged detections (msp < thr)."""
    dicts = [image(1, [(box(0, 0), -1, U), (box(30, 0), -1, U), (box(60, 0), -1, dict(U, iscrowd=1))])]
    preds = {1: pred([(box(0, 0), 2, 0.9, 0.1),  # TP on U1
                      (box(0.5, 0), 0, 0.8, 0.2),  # duplicate on U1: FP
                      (box(0, 60), 1, 0.7, 0.3),  # background: FP
                      (box(60, 0), 1, 0.6, 0.2),  # on the crowd: ignored
                      (box(30, 0), 0, 0.5, 0.6)])}  # on U2, msp 0.6
    return dicts, preds


def test_unknown_metrics_ap_and_recall():
    dicts, preds = ood_scene()
    r = unknown_metrics(preds, dicts, "msp", 0.5)
    # ranked .9 TP, .8 FP, .7 FP (crowd box ignored, U2's box not flagged): AP .5, recall .5
    assert r["ap_u"] == pytest.approx(0.5) and r["ar_u"] == pytest.approx(0.5)
    assert r["num_unknown_gt"] == 2 and r["num_flagged"] == 4
    r = unknown_metrics(preds, dicts, "msp", 0.7)  # U2's box flagged too, ranked last
    assert r["ap_u"] == pytest.approx(0.5 * 1 + 0.5 * 0.5) and r["ar_u"] == 1.0
    r = unknown_metrics(preds, dicts, "msp", 0.7, max_dets=2)  # only .9 and .8 count
    assert r["ar_u"] == 0.5
    r = unknown_metrics(preds, dicts, "msp", 0.7, conf_thresh=0.55)  # .5 dropped
    assert r["ar_u"] == 0.5
    assert np.isnan(unknown_metrics(preds, [image(1, [])], "msp", 0.5)["ap_u"])  # no unknown GT


def test_flag_unknown():
    p = {"scores": np.array([0.9, 0.8]), "ood_scores": {"msp": np.array([0.2, 0.6])}}
    np.testing.assert_array_equal(flag_unknown(p, "msp", 0.5), [True, False])
    np.testing.assert_array_equal(flag_unknown(p, None, None), [False, False])
    with pytest.raises(ValueError, match="no OOD score 'energy'"):
        flag_unknown(p, "energy", 0.5)
