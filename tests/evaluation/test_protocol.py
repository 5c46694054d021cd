import numpy as np
import pytest
from sklearn.metrics import roc_curve

from ood_det.evaluation import f1_optimal_threshold, ood_boxes, ood_metrics, unknown_threshold
from ood_det.evaluation.protocol import kept_ood_scores

from .conftest import box, image


def f1_scene():
    """Class a: 2 GT, ranked TP .9, FP .8, TP .7, FP .6 -> F1 = 2/3, 1/2, 4/5, 2/3: best at .7.
    Class b: 1 GT, ranked FP .95, TP .5 -> F1 = 0, 2/3: best at .5. Mean threshold 0.6."""
    dicts = [image(1, [(box(0, 0), 0), (box(30, 0), 0), (box(60, 0), 1)])]
    preds = {1: {"boxes": [box(0, 0), box(0, 60), box(30, 0), box(60, 60), box(30, 30), box(60, 0)],
                 "labels": [0, 0, 0, 0, 1, 1], "scores": [0.9, 0.8, 0.7, 0.6, 0.95, 0.5]}}
    return dicts, preds


def test_f1_threshold_hand_case():
    dicts, preds = f1_scene()
    d = f1_optimal_threshold(preds, dicts, ["a", "b"], return_details=True)
    assert d["per_class"] == {"a": 0.7, "b": 0.5}
    assert d["f1"]["a"] == pytest.approx(0.8) and d["f1"]["b"] == pytest.approx(2 / 3)
    assert d["threshold"] == pytest.approx(0.6)
    assert f1_optimal_threshold(preds, dicts, ["a", "b"]) == pytest.approx(0.6)


def test_f1_threshold_ties_and_skipped_classes():
    # class a: two boxes share score .8 (one TP, one FP): the tie group is one operating point;
    # class c has no GT and class b no true positive: both are skipped, not averaged as 0
    dicts = [image(1, [(box(0, 0), 0), (box(30, 0), 1)])]
    preds = {1: {"boxes": [box(0, 0), box(0, 60), box(60, 60), box(90, 90)], "labels": [0, 0, 1, 2],
                 "scores": [0.8, 0.8, 0.9, 0.9]}}
    d = f1_optimal_threshold(preds, dicts, ["a", "b", "c"], return_details=True)
    assert d["per_class"]["a"] == 0.8 and d["f1"]["a"] == pytest.approx(2 / 3)  # 2*1/(2+1)
    assert np.isnan(d["per_class"]["b"]) and np.isnan(d["per_class"]["c"])
    assert d["threshold"] == 0.8
    assert np.isnan(f1_optimal_threshold({}, dicts, ["a", "b", "c"]))


def test_f1_threshold_vos_method():
    # perfect boxes: COCOeval precision is 1 at every recall and IoU, F1 peaks at recall 1 where
    # the score is the lowest true-positive score of the class
    dicts = [image(1, [(box(0, 0), 0), (box(30, 0), 0), (box(60, 0), 1)])]
    preds = {1: {"boxes": [box(0, 0), box(30, 0), box(60, 0)], "labels": [0, 0, 1], "scores": [0.9, 0.6, 0.7]}}
    d = f1_optimal_threshold(preds, dicts, ["a", "b", "c"], method="vos", return_details=True)
    assert d["per_class"]["a"] == pytest.approx(0.6) and d["per_class"]["b"] == pytest.approx(0.7)
    assert np.isnan(d["per_class"]["c"])  # no GT
    assert d["threshold"] == pytest.approx(0.65)
    with pytest.raises(ValueError, match="method"):
        f1_optimal_threshold(preds, dicts, ["a"], method="nope")


def preds_with_scores(conf, ood):
    conf, ood = np.asarray(conf, float), np.asarray(ood, float)
    return {"boxes": np.tile(box(0, 0), (len(conf), 1)), "labels": np.zeros(len(conf), int), "scores": conf,
            "ood_scores": {"msp": ood, "energy": 2 * ood}}


def test_ood_boxes_keeps_boxes_above_confidence_on_both_sides():
    id_p = {1: preds_with_scores([0.9, 0.2, 0.6], [0.8, 0.1, 0.7]),
            2: preds_with_scores([0.5], [0.3])}  # every kept ID box counts, FPs included
    ood_p = {"a": preds_with_scores([0.7, 0.4, 0.5], [0.75, 0.9, 0.2])}
    res = ood_boxes(id_p, ood_p, conf_thresh=0.5)
    assert set(res) == {"msp", "energy"}
    ref = ood_metrics([0.8, 0.7, 0.3], [0.75, 0.2])
    assert res["msp"] == ref
    assert res["energy"]["auroc"] == ref["auroc"] and res["msp"]["n_id"] == 3 and res["msp"]["n_ood"] == 2
    assert set(ood_boxes(id_p, ood_p, 0.5, score_names=["energy"])) == {"energy"}
    with pytest.raises(ValueError, match="OOD boxes"):
        ood_boxes(id_p, ood_p, conf_thresh=0.95)


def test_kept_scores_missing_score_raises():
    p = {1: preds_with_scores([0.9], [0.8])}
    with pytest.raises(ValueError, match="no OOD score 'foo'"):
        kept_ood_scores(p, 0.0, ["foo"])


def test_unknown_threshold_keeps_95_percent():
    s = np.arange(1, 21, dtype=float)  # 19 of 20 scores are >= 2
    assert unknown_threshold(s) == 2.0
    assert unknown_threshold(s, tpr=0.5) == 11.0
    rng = np.random.default_rng(0)
    v = np.round(rng.normal(0, 1, 333), 1)
    t = unknown_threshold(v)
    assert np.mean(v >= t) >= 0.95 and np.mean(v > t) < 0.95  # the largest such threshold
    # the ood_metrics / roc_curve definition
    y = np.r_[np.ones(v.size), np.zeros(3)]
    _, tpr, thr = roc_curve(y, np.r_[v, [0.0, 1.0, 2.0]], drop_intermediate=False)
    assert t == thr[np.searchsorted(tpr, 0.95)] == ood_metrics(v, [0.0, 1.0, 2.0])["threshold"]


def test_f1_vos_threshold_by_hand_through_cocoeval():
    """VOS's recipe: COCOeval's interpolated precision / scores averaged over IoU .5:.95 (all
    detections here have IoU 1 or 0, so every IoU agrees), F1 maximum per class, mean over classes,
    rounded to 4 decimals. Class a: 2 GT, TP .9, FP .8, TP .7: interpolated precision 1 up to
    recall .5, 2/3 above; F1 = .667 at recall .5 (score .9) < .8 at recall 1 (score .7). Class b:
    1 GT, TP .55555: F1 = 1 at score .55555. Mean .627775 -> .6278."""
    dicts = [image(1, [(box(0, 0), 0), (box(30, 0), 0), (box(60, 0), 1)])]
    preds = {1: {"boxes": [box(0, 0), box(0, 60), box(30, 0), box(60, 0)], "labels": [0, 0, 0, 1],
                 "scores": [0.9, 0.8, 0.7, 0.55555]}}
    d = f1_optimal_threshold(preds, dicts, ["a", "b"], method="vos", return_details=True)
    assert d["per_class"]["a"] == pytest.approx(0.7) and d["per_class"]["b"] == pytest.approx(0.55555)
    assert d["f1"]["a"] == pytest.approx(0.8) and d["f1"]["b"] == pytest.approx(1.0)
    assert d["threshold"] == 0.6278  # rounded, exactly as VOS's script
    # the exact IoU-0.5 recipe gives the unrounded mean of the same per-class optima here
    assert f1_optimal_threshold(preds, dicts, ["a", "b"]) == pytest.approx(0.627775)


def test_proposal_level_filter_uses_roi_conf():
    """VOS keeps a box when its proposal's maximum foreground probability reaches the threshold,
    not its own class score: a second-class box of a confident proposal enters, a confident-looking
    box of a weak proposal cannot exist (roi_conf >= score), a box of a weak proposal stays out."""
    p = {1: {"boxes": np.tile(box(0, 0), (3, 1)), "labels": [0, 1, 0], "scores": [0.8, 0.3, 0.2],
             "roi_conf": [0.8, 0.8, 0.4], "ood_scores": {"msp": [1.0, 2.0, 3.0]}}}
    assert kept_ood_scores(p, 0.5)["msp"].tolist() == [1.0]
    assert kept_ood_scores(p, 0.5, conf_source="proposal")["msp"].tolist() == [1.0, 2.0]
    del p[1]["roi_conf"]
    with pytest.raises(ValueError, match="roi_conf"):
        kept_ood_scores(p, 0.5, conf_source="proposal")
    with pytest.raises(ValueError, match="CONF_SOURCE"):
        kept_ood_scores(p, 0.5, conf_source="roi")
