"""OODEvaluator and the shared protocol driven through D2ProtocolBackend on a tiny run (DigitsOOD
smoke images)."""
import json

import numpy as np
import pytest

pytest.importorskip("detectron2", reason="detectron2 is not installed (it is on no package registry; see docs/detectron2.md)")

import torch  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

from ood_det.d2 import register_ood_datasets  # noqa: E402
from ood_det.d2.evaluation import D2ProtocolBackend, OODEvaluator  # noqa: E402
from ood_det.evaluation.driver import run_protocol  # noqa: E402
from ood_det.data import catalog  # noqa: E402

from .conftest import make_tiny_cfg  # noqa: E402

N_IMAGES = 3
SPLITS = ("val", "test", "ood", "mixed")


def _instances(n, fields):
    inst = Instances((10, 10))
    inst.pred_boxes = Boxes(torch.arange(4 * n, dtype=torch.float32).view(n, 4))
    inst.pred_classes = torch.arange(n) % 2
    inst.scores = torch.linspace(0.9, 0.5, n)
    for k, v in fields.items():
        inst.set(k, v)
    return inst


def test_process_collects_every_score():
    """Columns of ``ood_score_table`` are the head's supported scores, in order; ``roi_conf`` too."""
    ev = OODEvaluator(("msp", "energy"), "x", distributed=False)
    ev.reset()
    table = torch.tensor([[.1, 1.], [.2, 2.], [.3, 3.]])
    ev.process([{"image_id": 1}, {"image_id": "b"}],
               [{"instances": _instances(3, {"ood_scores": torch.ones(3), "ood_score_table": table,
                                             "roi_conf": torch.tensor([.95, .8, .6])})},
                {"instances": _instances(0, {"ood_scores": torch.ones(0), "ood_score_table": torch.ones(0, 2),
                                             "roi_conf": torch.ones(0)})}])
    assert ev.evaluate() == {"ood_det": {"num_images": 2.0, "num_boxes": 3.0}}
    p = ev.predictions
    assert list(p) == [1, "b"] and set(p.score_names) == {"msp", "energy"}
    np.testing.assert_allclose(p[1]["ood_scores"]["energy"], [1, 2, 3])
    np.testing.assert_allclose(p[1]["ood_scores"]["msp"], [.1, .2, .3], rtol=1e-6)
    np.testing.assert_allclose(p[1]["roi_conf"], [.95, .8, .6], rtol=1e-6)
    np.testing.assert_allclose(p[1]["scores"], [0.9, 0.7, 0.5])
    assert p[1]["labels"].tolist() == [0, 1, 0] and p["b"]["boxes"].shape == (0, 4)
    # a subset of the scores
    ev = OODEvaluator(("msp", "energy"), "x", scores=["energy"], distributed=False)
    ev.process([{"image_id": 5}], [{"instances": _instances(3, {"ood_score_table": table,
                                                                "roi_conf": torch.ones(3)})}])
    ev.evaluate()
    assert list(ev.predictions[5]["ood_scores"]) == ["energy"]


@pytest.fixture
def tiny_sets():
    names = {}
    for s in SPLITS:
        src = f"digits_ood_smoke_{s}"
        name = f"d2_eval_tiny_{s}"
        catalog.register(name, (lambda src=src: catalog.get(src)[:N_IMAGES]), overwrite=True,
                         **{k: v for k, v in catalog.metadata(src).items() if k != "name"})
        names[s] = name
    register_ood_datasets(list(names.values()))
    yield names
    for n in names.values():
        catalog.remove(n)


def test_evaluate_ood_tiny_run(tmp_path, tiny_sets):
    from sklearn.metrics import roc_auc_score

    from ood_det.evaluation import Predictions

    torch.manual_seed(0)
    cfg = make_tiny_cfg("dismax", num_classes=5)
    cfg.DATASETS.TEST = (tiny_sets["test"],)
    cfg.DATASETS.OOD_TEST = (tiny_sets["ood"], tiny_sets["mixed"])
    cfg.TEST.OOD.VAL_DATASET = tiny_sets["val"]
    cfg.TEST.OOD.CONF_THRESH = "0.0"
    cfg.DATALOADER.NUM_WORKERS = 0
    model = build_model(cfg)
    model.eval()
    head = model.roi_heads.box_predictor.box_classifier.head
    assert not bool(head.calibrated)

    m = run_protocol(cfg, D2ProtocolBackend(cfg, model), output_dir=str(tmp_path))

    assert bool(head.calibrated) and m["post_fit"]["temperature"] == pytest.approx(float(head.temperature))
    assert m["datasets"] == {"val": tiny_sets["val"], "test": tiny_sets["test"], "ood": [tiny_sets["ood"]],
                             "mixed": [tiny_sets["mixed"]], "shift": []}
    res = m["results"][tiny_sets["ood"]]
    assert set(res["ood"]) == set(head.supported_scores)
    assert 0.0 <= res["detection"]["voc"]["map50"] <= 1.0
    assert "closed_set" in res["open_set"]
    # thresholds went into the model
    clf = model.roi_heads.box_predictor.box_classifier
    for s, v in res["unknown_threshold"].items():
        assert clf.threshold(s) == pytest.approx(v)
    # files, and the AUROC recomputed from the dumped per-box scores with scikit-learn
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["head"] == "dismax" and saved["backend"] == "detectron2"
    assert (tmp_path / "plots" / tiny_sets["ood"] / "mmles_roc.png").is_file()
    pid = Predictions.load(tmp_path / "predictions" / f"{tiny_sets['test']}.npz")
    pod = Predictions.load(tmp_path / "predictions" / f"{tiny_sets['ood']}.npz")
    s_id = np.concatenate([p["ood_scores"]["mmles"] for p in pid.values()])
    s_ood = np.concatenate([p["ood_scores"]["mmles"] for p in pod.values()])
    auroc = roc_auc_score(np.r_[np.ones(len(s_id)), np.zeros(len(s_ood))], np.r_[s_id, s_ood])
    assert res["ood"]["mmles"]["auroc"] == pytest.approx(auroc)
    assert res["ood"]["mmles"]["n_id"] == len(s_id)
    # the stored predictions are the model's own output for that image (with the fitted T)
    from detectron2.data import DatasetMapper

    d = catalog.get(tiny_sets["test"])[0]
    with torch.no_grad():
        out = model([DatasetMapper(cfg, is_train=False)(d)])[0]["instances"]
    np.testing.assert_allclose(pid[d["image_id"]]["scores"], out.scores.numpy(), rtol=1e-5)
    np.testing.assert_allclose(pid[d["image_id"]]["ood_scores"]["mmles"], out.ood_scores.numpy(), rtol=1e-4, atol=1e-4)
    # the box-confidence threshold went into the model too
    assert clf.conf_threshold() == pytest.approx(res["conf_thresh"])
