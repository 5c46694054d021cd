"""ood_det.evaluation.driver: the protocol end to end, driven by a fake backend made of arrays (no
detector), checked against scikit-learn and the protocol's definitions."""
import json

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ood_det.config import get_cfg
from ood_det.data import catalog
from ood_det.engine.checkpoint import load_checkpoint
from ood_det.evaluation import Predictions
from ood_det.evaluation.driver import ProtocolBackend, run_protocol, split_roles
from ood_det.heads import build_head
from ood_det.modeling.box_classifier import OODBoxClassifier

K, D = 2, 4
SCORES = ("msp", "max_logit", "energy", "entropic")


def _dicts(n, category):
    """n images, one GT box each at [10, 10, 30, 30]."""
    return [{"file_name": f"{i}.png", "image_id": i, "height": 64, "width": 64,
             "annotations": [{"bbox": [10.0, 10.0, 30.0, 30.0], "bbox_mode": 0, "category_id": category}]}
            for i in range(n)]


class FakeBackend(ProtocolBackend):
    """Predictions drawn once per dataset: every box on the GT box, ``energy`` score ~ N(mu, 1)."""

    name = "fake"

    def __init__(self, mus, conf=0.9):
        torch.manual_seed(0)
        self.clf = OODBoxClassifier(build_head("softmax", D, K), score="energy")
        self.mus = mus
        self.conf = conf
        self.post_fit_args = None
        self.predicted = []
        rng = np.random.default_rng(0)
        self.preds = {}
        for name, mu in mus.items():
            p = Predictions(SCORES)
            for d in catalog.get(name):
                n = 3
                s = {k: rng.normal(mu, 1.0, n) for k in SCORES}
                lab = np.full(n, max(d["annotations"][0]["category_id"], 0))
                # one confident box per image, two below the confidence threshold
                p.add(d["image_id"], np.tile([10.0, 10.0, 30.0, 30.0], (n, 1)), lab, np.array([conf, 0.2, 0.1]),
                      s, roi_conf=np.array([conf, 0.3, 0.2]))
            self.preds[name] = p

    @property
    def class_names(self):
        return ["a", "b"]

    @property
    def box_classifier(self):
        return self.clf

    @property
    def module(self):
        return self.clf

    def validation_rois(self, name, seed=0):
        self.rois_asked = True
        g = torch.Generator().manual_seed(seed)
        feats = torch.randn(20, D, generator=g)
        return self.clf(feats).detach(), torch.randint(0, K + 1, (20,), generator=g), feats

    def predict_dataset(self, name, scores):
        self.predicted.append(name)
        assert tuple(scores) == SCORES
        return self.preds[name], []


@pytest.fixture
def fake_sets():
    sets = {"fake_val": (_dicts(40, 0), "id"), "fake_test": (_dicts(60, 1), "id"),
            "fake_ood": (_dicts(50, -1), "ood"), "fake_shift": (_dicts(30, 0), "id")}
    for name, (dicts, dist) in sets.items():
        catalog.register(name, lambda d=dicts: [dict(x) for x in d], overwrite=True, thing_classes=["a", "b"],
                         distribution=dist)
    yield list(sets)
    for name in sets:
        catalog.remove(name)


def _cfg(tmp_path):
    cfg = get_cfg()
    cfg.DATASETS.TEST = ("fake_test",)
    cfg.DATASETS.OOD_TEST = ("fake_ood",)
    cfg.DATASETS.SHIFT_TEST = ("fake_shift",)
    cfg.TEST.OOD.VAL_DATASET = "fake_val"
    cfg.TEST.OOD.CONF_THRESH = "0.5"
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
    cfg.SEED = 3
    return cfg


def test_split_roles():
    cfg = get_cfg()
    cfg.DATASETS.TEST = ("t", "t2")
    cfg.DATASETS.OOD_TEST = ("o", "m", "o2")
    cfg.DATASETS.SHIFT_TEST = ("s",)
    roles = split_roles(cfg, {"o": "ood", "m": "mixed", "o2": "ood"}.get)
    assert roles == {"val": "t", "test": "t", "ood": ["o", "o2"], "mixed": ["m"], "shift": ["s"]}
    cfg.TEST.OOD.VAL_DATASET = "v"
    assert split_roles(cfg, lambda n: "ood")["val"] == "v"
    cfg.DATASETS.TEST = ()
    with pytest.raises(ValueError, match="DATASETS.TEST is empty"):
        split_roles(cfg, lambda n: "ood")


def test_protocol_with_a_fake_backend(tmp_path, fake_sets):
    from ood_det.heads.softmax import SoftmaxHead

    calls = {}

    class SpyHead(SoftmaxHead):  # a head with a post-fit that records what it was given
        def post_fit(self, logits, labels, features=None):
            calls["args"] = (logits.shape, labels.shape, None if features is None else features.shape)
            return {"fitted": 1.0}

    backend = FakeBackend({"fake_val": 2.0, "fake_test": 2.0, "fake_ood": 0.0, "fake_shift": 1.0})
    torch.manual_seed(0)
    backend.clf = OODBoxClassifier(SpyHead(in_features=D, num_classes=K), score="energy")
    cfg = _cfg(tmp_path)
    save = str(tmp_path / "model_final.pth")
    m = run_protocol(cfg, backend, output_dir=str(tmp_path), save_path=save)

    # post-fit got the validation ROIs with their features (the same on every backend)
    assert calls["args"] == ((20, K + 1), (20,), (20, D)) and m["post_fit"] == {"fitted": 1.0}
    # every dataset predicted once
    assert sorted(backend.predicted) == sorted(fake_sets)
    # box-level metrics: only the boxes with confidence >= 0.5 (one per image), scikit-learn's AUROC
    kept = lambda name, s: np.concatenate([p["ood_scores"][s][:1] for p in backend.preds[name].values()])  # noqa: E731
    s_id, s_ood = kept("fake_test", "energy"), kept("fake_ood", "energy")
    r = m["results"]["fake_ood"]["ood"]["energy"]
    assert r["n_id"] == 60 and r["n_ood"] == 50
    assert r["auroc"] == pytest.approx(roc_auc_score(np.r_[np.ones(60), np.zeros(50)], np.r_[s_id, s_ood]))
    # the unknown threshold keeps 95% of the kept ID validation boxes, and is stored in the model
    thr = m["summary"]["fake_ood"]["unknown_threshold"]
    s_val = kept("fake_val", "energy")
    assert np.mean(s_val >= thr) >= 0.95 and np.mean(s_val > thr) < 0.95
    assert backend.clf.threshold("energy") == pytest.approx(thr)
    assert backend.clf.conf_threshold() == pytest.approx(0.5)
    # covariate shift: share of the kept shift boxes below each stored threshold
    s_shift = kept("fake_shift", "energy")
    assert m["covariate_shift"]["fake_shift"]["energy"] == pytest.approx(np.mean(s_shift < thr))
    assert m["covariate_shift"]["fake_shift"]["num_boxes"] == 30
    # reports: strict JSON (no NaN), dumps, plots; the saved checkpoint carries the thresholds
    text = (tmp_path / "metrics.json").read_text()
    assert "NaN" not in text and json.loads(text)["backend"] == "fake"
    assert (tmp_path / "predictions" / "fake_shift.npz").is_file()
    assert (tmp_path / "plots" / "fake_ood" / "energy_roc.png").is_file()
    ck = load_checkpoint(save)
    assert ck["ood_det"]["conf_thresh"] == pytest.approx(0.5) and ck["ood_det"]["backend"] == "torchvision"
    assert ck["ood_det"]["class_names"] == ["a", "b"] and ck["ood_det"]["head"] == "softmax"


def test_heads_without_post_fit_collect_no_rois(tmp_path, fake_sets):
    backend = FakeBackend({n: 0.0 for n in fake_sets})
    assert not backend.clf.head.has_post_fit
    m = run_protocol(_cfg(tmp_path), backend)
    assert not getattr(backend, "rois_asked", False) and m["post_fit"] == {}


def test_protocol_refuses_class_count_mismatch(tmp_path, fake_sets):
    backend = FakeBackend({n: 0.0 for n in fake_sets})
    backend.clf = OODBoxClassifier(build_head("softmax", D, 3))
    with pytest.raises(ValueError, match="2 class names for a model of 3 classes"):
        run_protocol(_cfg(tmp_path), backend)
