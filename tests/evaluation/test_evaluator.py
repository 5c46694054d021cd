import json
import pickle

import numpy as np
import pytest
import torch

from ood_det.evaluation import summarize
from ood_det.evaluation import (
    Predictions,
    evaluate_ood_detection,
    evaluate_voc,
    f1_optimal_threshold,
    flatten_results,
    format_table,
    ood_boxes,
    open_set_metrics,
    unknown_metrics,
    unknown_threshold,
)
from ood_det.evaluation.protocol import kept_ood_scores

from .conftest import make_scene

NAMES = ["a", "b", "c"]


def store(preds):
    s = Predictions()
    for img, p in preds.items():
        s.add(img, p["boxes"], p["labels"], p["scores"], p["ood_scores"])
    return s


def test_predictions_store_basics():
    s = Predictions()
    s.add(3, torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([1]), torch.tensor([0.7], dtype=torch.float16),
          {"msp": torch.tensor([0.5])})
    s.add("img_b", np.zeros((0, 4)), [], [], {})  # an image without boxes
    assert len(s) == 2 and list(s) == [3, "img_b"] and s.num_boxes == 1 and s.score_names == ("msp",)
    assert s[3]["labels"].dtype == np.int64 and s[3]["scores"][0] == pytest.approx(0.7, abs=1e-3)
    assert s["img_b"]["ood_scores"]["msp"].shape == (0,)
    with pytest.raises(ValueError, match="already added"):
        s.add(3, [[0, 0, 1, 1]], [0], [0.5], {"msp": [0.1]})
    with pytest.raises(ValueError, match="expected"):
        s.add(4, [[0, 0, 1, 1]], [0], [0.5], {"energy": [0.1]})
    with pytest.raises(ValueError, match="1 values for 2 boxes|has 1 values"):
        s.add(5, [[0, 0, 1, 1], [0, 0, 2, 2]], [0, 0], [0.5, 0.4], {"msp": [0.1]})
    back = pickle.loads(pickle.dumps(s))  # gathered across processes by detectron2's comm
    assert list(back) == list(s) and np.array_equal(back[3]["boxes"], s[3]["boxes"]) and back != s
    other = Predictions()
    other.add(9, [[0, 0, 1, 1]], [0], [0.5], {"msp": [0.1]})
    assert len(Predictions.concat([s, other])) == 3


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_save_load_round_trip(tmp_path, suffix):
    _, preds = make_scene(0, n_images=4)
    s = store(preds)
    s.add("empty", np.zeros((0, 4)), [], [], {})
    path = s.save(tmp_path / f"sub/preds{suffix}")
    t = Predictions.load(path)
    assert list(t) == list(s) and t.score_names == s.score_names
    for img in s:
        for k in ("boxes", "labels", "scores"):
            np.testing.assert_array_equal(t[img][k], s[img][k])
        for n in s.score_names:
            np.testing.assert_array_equal(t[img]["ood_scores"][n], s[img]["ood_scores"][n])
    assert not list(tmp_path.glob("sub/*.tmp"))


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        Predictions.load(tmp_path / "missing.npz")
    (tmp_path / "x.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not an ood_det.predictions dump"):
        Predictions.load(tmp_path / "x.json")
    np.savez(tmp_path / "y.npz", a=np.zeros(2))
    with pytest.raises(ValueError, match="no 'meta'"):
        Predictions.load(tmp_path / "y.npz")


def splits(seed=0):
    val_d, val_p = make_scene(seed, n_images=6)
    test_d, test_p = make_scene(seed + 1, n_images=6)
    ood_d, ood_p = make_scene(seed + 2, n_images=5, unknown=True)
    for d in ood_d:  # an OOD split holds unknown objects only
        d["annotations"] = [dict(a, category_id=-1) for a in d["annotations"]]
    for p in ood_p.values():
        p["ood_scores"] = {k: v * 0.6 for k, v in p["ood_scores"].items()}
    mix_d, mix_p = make_scene(seed + 3, n_images=6, unknown=True)
    dd = {"val": val_d, "test": test_d, "ood": ood_d, "mixed": mix_d}
    pp = {"val": store(val_p), "test": store(test_p), "ood": store(ood_p), "mixed": mix_p}
    return dd, pp


def test_evaluate_ood_detection_matches_the_parts():
    dd, pp = splits()
    r = evaluate_ood_detection(dd, pp, NAMES)
    assert r["notes"] == []
    assert r["detection"]["voc"] == evaluate_voc(pp["test"], dd["test"], NAMES)
    assert 0 <= r["detection"]["coco"]["AP"] <= 1
    thr = f1_optimal_threshold(pp["val"], dd["val"], NAMES)
    assert r["conf_thresh"] == thr and r["conf_thresh_source"] == "f1 on val"
    assert r["ood"] == ood_boxes(pp["test"], pp["ood"], thr)
    assert set(r["ood"]) == {"msp", "energy"}
    for n in ("msp", "energy"):
        t = unknown_threshold(kept_ood_scores(pp["val"], thr)[n])
        assert r["unknown_threshold"][n] == t
        assert r["unknown"][n] == unknown_metrics(pp["ood"], dd["ood"], n, t)
        assert r["open_set"][n] == open_set_metrics(pp["mixed"], dd["mixed"], NAMES, n, t)
    assert "closed_set" in r["open_set"] and r["unknown_conf_thresh"] == 0.0
    same = evaluate_ood_detection(dd, pp, NAMES, coco=False, unknown_conf_thresh="same")
    assert same["unknown"]["msp"] == unknown_metrics(pp["ood"], dd["ood"], "msp", same["unknown_threshold"]["msp"],
                                                     conf_thresh=thr)
    assert same["unknown"]["msp"]["num_flagged"] < r["unknown"]["msp"]["num_flagged"]
    flat = flatten_results(r)
    assert flat["ood/msp/auroc"] == r["ood"]["msp"]["auroc"] and all(isinstance(v, float) for v in flat.values())
    table = format_table(r)
    assert "msp" in table and "energy" in table and "FPR95" in table and "WI" in table
    json.loads(json.dumps(r))  # metrics.json-ready: python scalars only


def test_missing_splits_are_noted_not_fatal(tmp_path):
    dd, pp = splits(1)
    r = evaluate_ood_detection({"test": dd["test"]}, {"test": pp["test"]}, NAMES, conf_thresh=0.3)
    assert r["conf_thresh"] == 0.3 and r["ood"] == {} and "detection" in r
    assert any("'ood'" in n for n in r["notes"]) and any("'test'" in n for n in r["notes"])
    assert "note:" in format_table(r)
    r = evaluate_ood_detection({"ood": dd["ood"]}, {"ood": pp["ood"]}, NAMES)
    assert "detection" not in r and r["conf_thresh"] == 0.0 and r["unknown_threshold"] == {}
    r = evaluate_ood_detection({"test": dd["test"], "ood": dd["ood"]}, {"test": pp["test"], "ood": pp["ood"]},
                               NAMES, conf_thresh="f1_vos", coco=False, score_names=["msp"], plot_dir=tmp_path)
    assert r["conf_thresh_source"] == "f1_vos on test" and set(r["ood"]) == {"msp"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["msp_hist.png", "msp_roc.png"]
    assert "coco" not in r["detection"]
    with pytest.raises(ValueError, match="conf_thresh"):
        evaluate_ood_detection(dd, pp, NAMES, conf_thresh="best")


def test_only_predicted_images():
    dd, pp = splits(2)
    part = Predictions()
    first = list(pp["test"])[:3]
    for img in first:
        p = pp["test"][img]
        part.add(img, p["boxes"], p["labels"], p["scores"], p["ood_scores"])
    r = evaluate_ood_detection({"test": dd["test"]}, {"test": part}, NAMES, conf_thresh=0.0,
                               only_predicted_images=True, coco=False)
    sub = [d for d in dd["test"] if d["image_id"] in first]
    assert r["detection"]["voc"] == evaluate_voc(part, sub, NAMES)


@pytest.mark.parametrize("suffix", [".npz", ".json"])
def test_roi_conf_round_trip(tmp_path, suffix):
    s = Predictions(["msp"])
    s.add(1, [[0, 0, 5, 5], [1, 1, 4, 4]], [0, 1], [0.9, 0.2], {"msp": [0.5, 0.1]}, roi_conf=[0.9, 0.9])
    s.add(2, np.zeros((0, 4)), [], [], {"msp": []}, roi_conf=[])
    t = Predictions.load(s.save(tmp_path / f"p{suffix}"))
    np.testing.assert_allclose(t[1]["roi_conf"], [0.9, 0.9])
    assert t[2]["roi_conf"].shape == (0,)
    # dumps without roi_conf (written before it existed) still load
    u = Predictions(["msp"])
    u.add(1, [[0, 0, 5, 5]], [0], [0.9], {"msp": [0.5]})
    assert "roi_conf" not in Predictions.load(u.save(tmp_path / f"old{suffix}"))[1]
    with pytest.raises(ValueError, match="roi_conf has 1 values for 2 boxes"):
        s.add(3, [[0, 0, 5, 5], [1, 1, 4, 4]], [0, 1], [0.9, 0.2], {"msp": [0.5, 0.1]}, roi_conf=[0.9])


def test_summarize_headline_and_both_id_metrics():
    dd, pp = splits(1)
    r = evaluate_ood_detection(dd, pp, NAMES, conf_thresh=0.3)
    voc, coco = r["detection"]["voc"]["map50"], r["detection"]["coco"]["AP"]
    a = summarize(r, "msp")
    b = summarize(r, "msp", id_metric="coco_ap")
    assert a["id_map"] == voc and b["id_map"] == coco and a["map50"] == b["map50"] == voc
    assert a["coco_ap"] == coco and a["id_metric"] == "voc_ap50" and b["id_metric"] == "coco_ap"
    assert a["fpr95"] == r["ood"]["msp"]["fpr95"] and a["conf_source"] == "box"
    table = format_table(r, "coco_ap")
    line = next(x for x in table.splitlines() if x.startswith("ID detection"))
    assert line.index("COCO AP@[.5:.95]") < line.index("VOC AP50") and "difficult as ordinary GT" in line
    with pytest.raises(ValueError, match="ID_METRIC"):
        summarize(r, "msp", id_metric="map")
