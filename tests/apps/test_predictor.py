"""Tests of ood_det/engine/predictor.py on the smoke checkpoint of the shared ``smoke_run``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ood_det.apps.predictor import (
    CheckpointMismatchError,
    Predictor,
    ThresholdNotSetError,
    check_metadata,
)
from ood_det.scores import SCORE_NAMES

THRESH_KEY = "roi_heads.box_predictor.classifier.thresholds"


@pytest.fixture(scope="module")
def predictor(smoke_run):
    return Predictor.from_checkpoint(smoke_run.config, smoke_run.weights, device="cpu")


@pytest.fixture(scope="module")
def ckpt(smoke_run):
    return torch.load(smoke_run.weights, map_location="cpu", weights_only=True)


def _rewrite(ckpt, path, meta=None, state=None, drop_meta=False):
    new = dict(ckpt)
    if meta is not None:
        new["ood_det"] = {**ckpt["ood_det"], **meta}
    if drop_meta:
        new.pop("ood_det")
    if state is not None:
        new["model"] = {**ckpt["model"], **state}
    torch.save(new, path)
    return str(path)


def digit_images(n=3, seed=0):
    from ood_det.data.digits_ood import (DigitsOODConfig, load_source_digits, render_image,
                                         split_sources)

    cfg = DigitsOODConfig(seed=seed)
    sources, targets = load_source_digits()
    test = split_sources(targets, cfg.seed, cfg.source_fractions)["test"]
    pools = {d: test[targets[test] == d] for d in range(10)}
    out = []
    for i in range(n):
        grey, _ = render_image(cfg, "mixed", i, sources, pools)
        out.append(np.repeat(grey[:, :, None], 3, axis=2))
    return out


def test_metadata_classes_scores_and_stored_thresholds(predictor, ckpt):
    meta = ckpt["ood_det"]
    assert predictor.class_names == list(meta["class_names"])
    assert predictor.num_classes == meta["num_classes"] == 5
    assert predictor.score == meta["score"]
    head = predictor.classifier.head
    assert predictor.score_names == tuple(head.supported_scores)
    stored = ckpt["model"][THRESH_KEY]
    for s in predictor.score_names:
        v = float(stored[SCORE_NAMES.index(s)])
        if math.isnan(v):
            assert predictor.threshold(s, required=False) is None
        else:
            assert predictor.threshold(s) == pytest.approx(v, abs=0)
    assert predictor.threshold() == predictor.threshold(predictor.score)
    with pytest.raises(ValueError, match="not supported"):
        predictor.threshold("no_such_score")


def test_call_matches_model_and_validates(predictor):
    images = digit_images(3)
    dets = predictor(images)
    assert len(dets) == 3
    direct = predictor.model.predict_images(images, scores=[predictor.score])
    for d, r in zip(dets, direct):
        assert d["boxes"].dtype == np.float32 and d["boxes"].shape == (len(d["labels"]), 4)
        assert d["labels"].dtype == np.int64
        np.testing.assert_allclose(d["boxes"], r["boxes"], rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(d["ood_scores"], r["ood_scores"][predictor.score], rtol=1e-5, atol=1e-5)
        assert ((d["labels"] >= 0) & (d["labels"] < 5)).all()
    # another score changes the OOD scores, not the boxes
    other = [s for s in predictor.score_names if s != predictor.score][0]
    d2 = predictor(images, score=other)
    for a, b in zip(dets, d2):
        np.testing.assert_allclose(a["boxes"], b["boxes"], rtol=1e-5, atol=1e-3)
    one = predictor(images[0])  # a single array is one image
    assert len(one) == 1
    assert predictor([]) == []
    with pytest.raises(ValueError, match=r"images\[1\]: expected an H x W x 3 uint8"):
        predictor([images[0], images[0].astype(np.float32)])
    with pytest.raises(ValueError, match="not supported"):
        predictor(images, score="nope")


def test_missing_files(smoke_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint file .*nope.pth"):
        Predictor.from_checkpoint(smoke_run.config, str(tmp_path / "nope.pth"))
    with pytest.raises(FileNotFoundError, match="config file .*nope.yaml"):
        Predictor.from_checkpoint(str(tmp_path / "nope.yaml"), smoke_run.weights)


def test_checkpoint_of_another_head(smoke_run, ckpt, tmp_path):
    path = _rewrite(ckpt, tmp_path / "isomax.pth", meta={"head": "isomax"})
    with pytest.raises(CheckpointMismatchError) as e:
        Predictor.from_checkpoint(smoke_run.config, path)
    msg = str(e.value)
    assert "'isomax'" in msg and "'softmax'" in msg and "MODEL.OOD.HEAD" in msg
    assert path in msg and smoke_run.config in msg


def test_checkpoint_of_another_class_count(smoke_run, ckpt, tmp_path):
    # the config asks for 3 classes, the checkpoint has 5
    with pytest.raises(CheckpointMismatchError) as e:
        Predictor.from_checkpoint(smoke_run.config, smoke_run.weights,
                                  opts=["MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    msg = str(e.value)
    assert "num_classes" in msg and "5" in msg and "3" in msg and smoke_run.weights in msg


def test_checkpoint_without_metadata_still_checked_by_shapes(smoke_run, ckpt, tmp_path):
    path = _rewrite(ckpt, tmp_path / "bare.pth", drop_meta=True)
    with pytest.raises(CheckpointMismatchError, match="does not fit the model") as e:
        Predictor.from_checkpoint(smoke_run.config, path, opts=["MODEL.ROI_HEADS.NUM_CLASSES", "3"])
    assert "size mismatch" in str(e.value)


def test_no_stored_threshold(smoke_run, ckpt, tmp_path):
    nan = torch.full_like(ckpt["model"][THRESH_KEY], float("nan"))
    path = _rewrite(ckpt, tmp_path / "nothr.pth", state={THRESH_KEY: nan})
    p = Predictor.from_checkpoint(smoke_run.config, path)
    assert p.threshold(required=False) is None
    with pytest.raises(ThresholdNotSetError, match="--threshold") as e:
        p.threshold()
    assert path in str(e.value) and "evaluation" in str(e.value)


def test_stored_confidence_threshold(smoke_run, ckpt, tmp_path):
    """The evaluation stored its F1 box-confidence threshold; the predictor exposes it (None for
    an older checkpoint without the buffer)."""
    p = Predictor.from_checkpoint(smoke_run.config, smoke_run.weights)
    assert p.conf_thresh == pytest.approx(smoke_run.metrics["summary"]["digits_ood_smoke_ood"]["conf_thresh"], rel=1e-6)
    assert ckpt["ood_det"]["conf_thresh"] == pytest.approx(p.conf_thresh, rel=1e-6)
    old = dict(ckpt, model={k: v for k, v in ckpt["model"].items() if not k.endswith("classifier.conf_thresh")})
    path = str(tmp_path / "old.pth")
    torch.save(old, path)
    assert Predictor.from_checkpoint(smoke_run.config, path).conf_thresh is None


def test_check_metadata_unit():
    from ood_det.config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 4
    good = {"backend": "torchvision", "head": "softmax", "num_classes": 4,
            "class_names": list("abcd"), "score": "msp"}
    check_metadata(good, cfg, "c.yaml", "w.pth")
    check_metadata(None, cfg, "c.yaml", "w.pth")  # not an ood_det file: nothing to compare
    with pytest.raises(CheckpointMismatchError, match="backend: the checkpoint has 'detectron2'"):
        check_metadata({**good, "backend": "detectron2"}, cfg, "c.yaml", "w.pth")
    with pytest.raises(CheckpointMismatchError, match="class_names: 3 names"):
        check_metadata({**good, "class_names": list("abc")}, cfg, "c.yaml", "w.pth")
