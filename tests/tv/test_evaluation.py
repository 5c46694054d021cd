"""ood_det.tv.evaluation + tv.train_net.evaluate: the smoke run end to end, post-fit, val ROIs,
thresholds, skipped images."""
import json
import math
import os

import numpy as np
import pytest
import torch

from ood_det.apps.config import load_config
from ood_det.tv.build import build_inference_model, build_model
from ood_det.engine.checkpoint import load_checkpoint
from ood_det.evaluation.driver import post_fit
from ood_det.tv.evaluation import TVProtocolBackend
from ood_det.tv.train_net import evaluate
from ood_det.scores import SCORE_NAMES

torch.set_num_threads(1)


def test_smoke_config_end_to_end(smoke_run):
    """configs/Digits-OOD/smoke.yaml: data generated, trained, evaluated, everything written."""
    out = smoke_run.output_dir
    m = smoke_run.metrics
    assert m["head"] == "softmax" and m["score"] == "msp"
    assert m["datasets"]["ood"] == ["digits_ood_smoke_ood", "digits_ood_smoke_far"]
    assert m["datasets"]["mixed"] == ["digits_ood_smoke_mixed"] and m["datasets"]["shift"] == ["digits_ood_smoke_shift"]
    assert set(m["summary"]) == {"digits_ood_smoke_ood", "digits_ood_smoke_far"}
    shift = m["covariate_shift"]["digits_ood_smoke_shift"]
    assert 0.0 <= shift["msp"] <= 1.0 and shift["num_boxes"] > 0
    s = m["summary"]["digits_ood_smoke_ood"]
    assert 0.0 <= s["map50"] <= 1.0
    res = m["results"]["digits_ood_smoke_ood"]
    assert set(res["unknown_threshold"]) == {"msp", "max_logit", "energy", "entropic"}
    assert "open_set" in res and res["num_images"]["mixed"] == 16
    for f in ("log.txt", "train_metrics.jsonl", "config.yaml", "last_checkpoint", "model_0000002.pth",
              "predictions/digits_ood_smoke_test.npz", "predictions/digits_ood_smoke_ood.npz"):
        assert os.path.isfile(os.path.join(out, f)), f
    assert any(p.endswith(".png") for p in os.listdir(os.path.join(out, "plots", "digits_ood_smoke_ood")))
    # thresholds of every score were stored in the checkpoint's buffers
    ck = load_checkpoint(smoke_run.weights)
    thr = ck["model"]["roi_heads.box_predictor.classifier.thresholds"]
    for name, v in res["unknown_threshold"].items():
        if v is not None:
            assert float(thr[SCORE_NAMES.index(name)]) == pytest.approx(v, rel=1e-6, abs=1e-6), name
    assert ck["ood_det"]["class_names"] == ["0", "1", "2", "3", "4"] and ck["iteration"] == 6
    lines = [json.loads(x) for x in open(os.path.join(out, "train_metrics.jsonl"))]
    assert lines[-1]["iteration"] == 6 and all(math.isfinite(x["total_loss"]) for x in lines)


def test_inference_model_from_smoke_checkpoint(smoke_run):
    from ood_det.data.io import read_image
    from ood_det.data.catalog import get_dicts

    cfg = load_config(smoke_run.config, smoke_run.opts + ["MODEL.WEIGHTS", smoke_run.weights])
    model = build_inference_model(cfg)
    assert not model.training and model.class_names == ["0", "1", "2", "3", "4"]
    assert model.classifier.threshold() == pytest.approx(
        smoke_run.metrics["summary"]["digits_ood_smoke_ood"]["unknown_threshold"], rel=1e-6)
    rec = get_dicts("digits_ood_smoke_test")[0]
    out = model.predict_images([read_image(rec["file_name"])], scores=["msp", "energy"])[0]
    assert set(out) == {"boxes", "labels", "scores", "roi_conf", "ood_scores"}
    assert set(out["ood_scores"]) == {"msp", "energy"}
    assert np.all(out["scores"] > cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST)
    # the box's class score never exceeds its ROI's maximum foreground probability
    assert np.all(out["roi_conf"] >= out["scores"] - 1e-6)
    assert model.classifier.conf_threshold() == pytest.approx(
        smoke_run.metrics["summary"]["digits_ood_smoke_ood"]["conf_thresh"], rel=1e-6)


def test_collect_val_rois_are_labelled_like_training(tiny_cfg, tiny_detection_dataset):
    torch.manual_seed(0)
    model = build_model(tiny_cfg, ["square", "bar"])
    logits, labels, feats = TVProtocolBackend(model).validation_rois("tiny_val")
    k = 2
    assert logits.shape == (len(labels), k + 1) and feats.shape == (len(labels), 32)
    assert labels.min() >= 0 and labels.max() == k and (labels < k).any()  # background and objects
    # per image at most BATCH_SIZE_PER_IMAGE ROIs, at most 25 % foreground (+ GT boxes added first)
    assert len(labels) <= 16 * len(tiny_detection_dataset["val"])
    with torch.no_grad():
        assert torch.allclose(model.classifier(feats), logits, atol=1e-5)
    # deterministic for a seed
    l2, lab2, _ = TVProtocolBackend(model).validation_rois("tiny_val")
    assert torch.equal(lab2, labels) and torch.allclose(l2, logits)


def test_post_fit_calibrates_dismax(tiny_cfg, tiny_detection_dataset):
    cfg = tiny_cfg
    cfg.merge_from_list(["MODEL.OOD.HEAD", "dismax"])
    torch.manual_seed(0)
    model = build_model(cfg, ["square", "bar"])
    head = model.classifier.head
    assert not bool(head.calibrated)
    info = post_fit(TVProtocolBackend(model), "tiny_val")
    assert bool(head.calibrated) and info["temperature"] == pytest.approx(float(head.temperature))


def test_evaluate_counts_unreadable_images(tiny_cfg, tiny_detection_dataset, tmp_path):
    from ood_det.data import catalog

    dicts = [dict(d) for d in tiny_detection_dataset["val"]]
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    dicts.append(dict(dicts[0], file_name=str(bad), image_id=99))
    catalog.register("tiny_val_broken", lambda: [dict(d) for d in dicts], overwrite=True,
                     thing_classes=["square", "bar"], distribution="id")
    try:
        cfg = tiny_cfg
        cfg.merge_from_list(["DATASETS.TEST", "('tiny_val_broken',)", "DATASETS.OOD_TEST", "('tiny_ood',)"])
        torch.manual_seed(0)
        model = build_model(cfg, ["square", "bar"])
        m = evaluate(cfg, model=model, plots=False)
    finally:
        catalog.remove("tiny_val_broken")
    assert m["skipped_images"] == {"tiny_val_broken": [str(bad)]}
    assert m["results"]["tiny_ood"]["num_images"]["test"] == len(dicts) - 1
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "metrics.json"))
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))  # thresholds saved
