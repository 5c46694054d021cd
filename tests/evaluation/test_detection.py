import numpy as np
import pytest
import torch

from ood_det.evaluation import evaluate_coco, evaluate_voc
from ood_det.evaluation._common import (
    ground_truth,
    match_detections,
    normalize_predictions,
    pairwise_iou,
    pr_curve,
    voc_ap,
)
from ood_det.evaluation.detection import build_coco_gt

from .conftest import box, image, make_scene

NAMES = ["a", "b", "c"]


def test_pairwise_iou_matches_torchvision():
    from torchvision.ops import box_iou

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 50, (12, 2))
    a = np.c_[xy, xy + rng.uniform(1, 30, (12, 2))]
    xy = rng.uniform(0, 50, (7, 2))
    b = np.c_[xy, xy + rng.uniform(1, 30, (7, 2))]
    ref = box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(pairwise_iou(a, b), ref, rtol=0, atol=1e-12)
    assert pairwise_iou(np.zeros((0, 4)), b).shape == (0, 7)
    assert pairwise_iou([[0, 0, 0, 0]], [[0, 0, 0, 0]])[0, 0] == 0  # empty union -> 0


def perfect(dicts):
    preds = {}
    for d in dicts:
        anns = [a for a in d["annotations"] if a["category_id"] >= 0]
        preds[d["image_id"]] = {"boxes": [a["bbox"] for a in anns],
                                "labels": [a["category_id"] for a in anns],
                                "scores": np.linspace(0.9, 0.5, len(anns))}
    return preds


def test_perfect_detections_give_ap_one():
    dicts, _ = make_scene(0, n_images=5)
    preds = perfect(dicts)
    voc = evaluate_voc(preds, dicts, NAMES)
    assert voc["map50"] == 1.0 and voc["map50_07"] == 1.0
    assert all(v == 1.0 for v in voc["ap50"].values() if v == v)
    coco = evaluate_coco(preds, dicts, NAMES)
    for k in ("AP", "AP50", "AP75"):
        assert coco[k] == pytest.approx(1.0)


def one_class_curve():
    """4 GT over two images; ranked detections TP, FP, TP, duplicate, TP (hand-made PR curve)."""
    dicts = [image(1, [(box(0, 0), 0), (box(50, 0), 0)]), image(2, [(box(0, 0), 0), (box(50, 50), 0)])]
    preds = {
        1: {"boxes": [box(0, 0), box(20, 20), box(0.5, 0), box(50, 0)], "labels": [0, 0, 0, 0],
            "scores": [0.9, 0.8, 0.6, 0.5]},
        2: {"boxes": [box(0, 0)], "labels": [0], "scores": [0.7]},
    }
    # rank: .9 TP, .8 FP, .7 TP, .6 duplicate of the .9 box -> FP, .5 TP
    return dicts, preds


def test_known_precision_recall_curve():
    dicts, preds = one_class_curve()
    m = match_detections(normalize_predictions(preds), ground_truth(dicts), 1)
    _, tpc, fpc, rec, prec = pr_curve(m.scores, m.tp, m.ignored, int(m.npos[0]))
    np.testing.assert_array_equal(tpc, [1, 1, 2, 2, 3])
    np.testing.assert_array_equal(fpc, [0, 1, 1, 2, 2])
    np.testing.assert_allclose(rec, [0.25, 0.25, 0.5, 0.5, 0.75])
    np.testing.assert_allclose(prec, [1, 0.5, 2 / 3, 0.5, 0.6])
    voc = evaluate_voc(preds, dicts, ["a"])
    # area: envelope 1 on (0, .25], 2/3 on (.25, .5], .6 on (.5, .75]
    assert voc["ap50"]["a"] == pytest.approx(0.25 * 1 + 0.25 * 2 / 3 + 0.25 * 0.6, abs=1e-12)
    # 11-point: t = 0, .1, .2 -> 1; .3, .4, .5 -> 2/3; .6, .7 -> .6; .8, .9, 1 -> 0
    assert voc["ap50_07"]["a"] == pytest.approx((3 + 3 * 2 / 3 + 2 * 0.6) / 11, abs=1e-12)


def test_voc_ap_function():
    assert voc_ap(np.array([]), np.array([])) == 0.0
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == 1.0
    assert voc_ap(np.array([1.0]), np.array([0.5]), use_07_metric=True) == pytest.approx(0.5)


def test_difficult_and_crowd_are_ignored():
    dicts = [image(1, [(box(0, 0), 0), (box(50, 0), 0, {"difficult": 1}), (box(0, 50), 0, {"iscrowd": 1})])]
    # detection on the difficult box: neither TP nor FP; missing the crowd box: no miss
    preds = {1: {"boxes": [box(50, 0), box(0, 0)], "labels": [0, 0], "scores": [0.9, 0.8]}}
    voc = evaluate_voc(preds, dicts, ["a"])
    assert voc["num_gt"]["a"] == 1 and voc["ap50"]["a"] == 1.0


def test_wrong_class_is_false_positive_and_class_without_gt_is_nan():
    dicts = [image(1, [(box(0, 0), 0)])]
    preds = {1: {"boxes": [box(0, 0), box(0, 0)], "labels": [1, 0], "scores": [0.9, 0.8]}}
    voc = evaluate_voc(preds, dicts, ["a", "b"])
    assert voc["ap50"]["a"] == 1.0
    assert np.isnan(voc["ap50"]["b"]) and voc["map50"] == 1.0  # NaN classes are left out of the mean
    assert voc["num_det"] == {"a": 1, "b": 1}


def test_iou_threshold_is_inclusive():
    # a 10x10 GT and a 10x5 box inside it: IoU exactly 0.5
    dicts = [image(1, [(box(0, 0), 0)])]
    preds = {1: {"boxes": [[0.0, 0.0, 10.0, 5.0]], "labels": [0], "scores": [0.9]}}
    assert evaluate_voc(preds, dicts, ["a"])["ap50"]["a"] == 1.0


def test_xywh_boxes_tensor_and_list_inputs():
    d = image(1, [])
    d["annotations"] = [{"bbox": [0, 0, 10, 10], "bbox_mode": 1, "category_id": 0}]
    preds = [{"image_id": 1, "boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "classes": torch.tensor([0]),
              "scores": torch.tensor([0.5])}]
    assert evaluate_voc(preds, [d], ["a"])["map50"] == 1.0


def coco_101_ap50(preds, dicts, k):
    """COCO's 101-point interpolated AP at IoU 0.5 computed from our VOC matching."""
    m = match_detections(normalize_predictions(preds), ground_truth(dicts), k)
    aps = []
    for c in range(k):
        if m.npos[c] == 0:
            continue
        sel = m.labels == c
        _, tpc, fpc, rec, prec = pr_curve(m.scores[sel], m.tp[sel], m.ignored[sel], int(m.npos[c]))
        prec = np.maximum.accumulate(prec[::-1])[::-1] if len(prec) else prec
        idx = np.searchsorted(rec, np.linspace(0, 1, 101), side="left")
        q = np.array([prec[i] if i < len(prec) else 0.0 for i in idx])
        aps.append(q.mean())
    return float(np.mean(aps))


@pytest.mark.parametrize("seed", range(4))
def test_voc_matching_agrees_with_pycocotools_ap50(seed):
    # well-separated GT: VOC's and COCO's matchings coincide, only the interpolation differs;
    # applying COCO's 101-point interpolation to our curve must give pycocotools' AP50
    dicts, preds = make_scene(seed, n_images=8, jitter=2.5)
    coco = evaluate_coco(preds, dicts, NAMES)
    assert coco["AP50"] == pytest.approx(coco_101_ap50(preds, dicts, 3), abs=1e-9)


def test_voc_and_coco_agree_where_interpolation_cannot_matter():
    # a false positive ranked above the only true positive: precision 1/2 at every recall level,
    # so the VOC area, the VOC07 11-point and COCO's 101-point AP50 all equal 0.5
    dicts = [image(1, [(box(0, 0), 0)]), image(2, [(box(0, 0), 1)])]
    preds = {1: {"boxes": [box(50, 50), box(0, 0)], "labels": [0, 0], "scores": [0.9, 0.8]},
             2: {"boxes": [box(50, 50), box(0, 0)], "labels": [1, 1], "scores": [0.7, 0.6]}}
    voc = evaluate_voc(preds, dicts, ["a", "b"])
    coco = evaluate_coco(preds, dicts, ["a", "b"])
    assert voc["map50"] == 0.5 and voc["map50_07"] == pytest.approx(0.5)
    assert coco["AP50"] == pytest.approx(0.5, abs=1e-12)


def test_coco_ap75_on_a_loose_box():
    dicts = [image(1, [(box(0, 0), 0)])]
    preds = {1: {"boxes": [[0.0, 0.0, 10.0, 8.0]], "labels": [0], "scores": [0.9]}}  # IoU 0.8
    assert evaluate_coco(preds, dicts, ["a"])["AP75"] == pytest.approx(1.0)
    preds[1]["boxes"] = [[2.0, 0.0, 12.0, 10.0]]  # IoU 80 / 120: matched at 0.5, missed at 0.75
    c = evaluate_coco(preds, dicts, ["a"])
    assert c["AP50"] == pytest.approx(1.0) and c["AP75"] == 0.0


def test_coco_gt_built_in_memory_skips_unknown():
    dicts = [image("x", [(box(0, 0), 0), (box(20, 0), -1, {"unknown_class": "zebra"})]),
             image("y", [(box(0, 0), 1, {"iscrowd": 1})])]
    coco, index = build_coco_gt(dicts, ["a", "b"])
    assert index == {"x": 1, "y": 2}
    assert len(coco.getAnnIds()) == 2 and [c["id"] for c in coco.loadCats(coco.getCatIds())] == [1, 2]
    assert coco.loadAnns(coco.getAnnIds(imgIds=[2]))[0]["iscrowd"] == 1
    assert evaluate_coco({}, dicts, ["a", "b"])["AP"] == 0.0  # no detections at all


def test_bad_inputs_raise_clear_errors():
    dicts = [image(1, [(box(0, 0), 0)])]
    ok = {"boxes": [box(0, 0)], "labels": [0], "scores": [0.9]}
    with pytest.raises(ValueError, match=r"image 1.*labels"):
        evaluate_voc({1: dict(ok, labels=[3])}, dicts, ["a"])
    with pytest.raises(ValueError, match="not in the dataset"):
        evaluate_voc({7: ok}, dicts, ["a"])
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        evaluate_voc({1: dict(ok, boxes=[[0, 0, 1]])}, dicts, ["a"])
    with pytest.raises(ValueError, match="lacks"):
        evaluate_voc({1: {"boxes": [box(0, 0)]}}, dicts, ["a"])
    bad = image(1, [(box(0, 0), 0)])
    bad["annotations"][0]["bbox_mode"] = 2
    with pytest.raises(ValueError, match="bbox_mode=2"):
        evaluate_voc({}, [bad], ["a"])
    with pytest.raises(ValueError, match="category_id=5"):
        evaluate_voc({}, [image(1, [(box(0, 0), 5)])], ["a"])
    with pytest.raises(ValueError, match="twice"):
        evaluate_voc({}, dicts + dicts, ["a"])
