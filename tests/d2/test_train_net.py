"""Trainer on DigitsOOD (CPU), checkpoints with regularizer state, metadata and resume."""

import pytest

pytest.importorskip("detectron2", reason="detectron2 is not installed (it is on no package registry; see docs/detectron2.md)")

import torch  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from ood_det.d2 import register_ood_datasets  # noqa: E402
from ood_det.d2.train_net import Trainer, add_ood_checkpointables  # noqa: E402

from .conftest import make_tiny_cfg, random_batch  # noqa: E402

#: buffers that carry training state of the OOD modules
STATE_KEYS = ("iteration", "thresholds", "queue", "ptr", "count", "temperature", "calibrated")


def _ood_buffers(model):
    clf = model.roi_heads.box_predictor.box_classifier
    return {k: v.clone() for k, v in clf.state_dict().items() if k.rsplit(".", 1)[-1] in STATE_KEYS}


def _vos_cfg(head="softmax", regs=("vos",)):
    cfg = make_tiny_cfg(head, OUTLIERS="vos", REGULARIZERS=list(regs))
    cfg.MODEL.OOD.VOS.QUEUE_SIZE = 4
    cfg.MODEL.OOD.VOS.START_ITER = 1
    cfg.MODEL.OOD.VOS.NUM_SAMPLES = 100
    # 4 queued features per class span far fewer than 64 dimensions: a ridge large enough for
    # random-init feature magnitudes keeps the covariance positive definite
    cfg.MODEL.OOD.VOS.COV_EPS = 1.0
    return cfg


def test_regularizer_state_survives_a_checkpoint(tmp_path):
    """VOS queues / counters, the step counter, thresholds and DisMax's temperature are buffers:
    detectron2's checkpointer saves them and a fresh model gets them back exactly."""
    torch.manual_seed(0)
    cfg = _vos_cfg("dismax")
    model = build_model(cfg)
    with EventStorage():
        for i in range(3):
            losses = model(random_batch(seed=i))
            sum(losses.values()).backward()
    clf = model.roi_heads.box_predictor.box_classifier
    clf.set_threshold("mmles", -3.25)
    clf.head.temperature.fill_(0.37)
    before = _ood_buffers(model)
    assert int(before["iteration"]) == 3 and int(before["outlier_source.count"].sum()) > 0
    ckpt = add_ood_checkpointables(DetectionCheckpointer(model, save_dir=str(tmp_path)), cfg, model)
    ckpt.save("model_x")
    path = tmp_path / "model_x.pth"
    # loadable with torch >= 2.6's default weights_only=True: tensors and plain values only
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["ood_det"] == {"backend": "detectron2", "head": "dismax", "num_classes": 3,
                              "class_names": ["class_0", "class_1", "class_2"], "score": "mmles",
                              "max_iter": cfg.SOLVER.MAX_ITER}
    assert "MODEL:" in raw["cfg"]

    torch.manual_seed(123)
    fresh = build_model(cfg)
    assert not torch.equal(_ood_buffers(fresh)["iteration"], before["iteration"])
    DetectionCheckpointer(fresh).load(str(path))
    after = _ood_buffers(fresh)
    assert set(after) == set(before)
    for k in before:
        torch.testing.assert_close(after[k], before[k], equal_nan=True, msg=k)
    assert fresh.roi_heads.box_predictor.box_classifier.threshold("mmles") == -3.25


class _NoEvalTrainer(Trainer):
    """The Trainer without the (slow) final evaluation."""

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        return {"skipped": 1.0}


def _digits_cfg(out, max_iter):
    cfg = _vos_cfg("isomaxplus", regs=("vos",))
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 5
    cfg.DATASETS.TRAIN = ("digits_ood_smoke_train",)
    cfg.DATASETS.TEST = ("digits_ood_smoke_test",)
    cfg.DATASETS.OOD_TEST = ("digits_ood_smoke_ood",)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.001
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True  # random init, no normalisation: keep it tame
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 1.0
    cfg.SOLVER.MAX_ITER = max_iter
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 1
    cfg.SOLVER.CHECKPOINT_PERIOD = 3
    cfg.OUTPUT_DIR = str(out)
    cfg.SEED = 0
    return cfg


@pytest.fixture
def two_test_images():
    from ood_det.data import catalog

    name = "d2_train_net_two_test_images"
    src = "digits_ood_smoke_test"
    catalog.register(name, lambda: catalog.get(src)[:2], overwrite=True,
                     **{k: v for k, v in catalog.metadata(src).items() if k != "name"})
    register_ood_datasets([name])
    yield name
    catalog.remove(name)


def test_trainer_on_digits_and_resume(tmp_path, two_test_images):
    """A few DigitsOOD iterations on the CPU with finite losses and a periodic (ID-only)
    evaluation; resuming restores the iteration, the OOD buffers and continues the step counter."""
    register_ood_datasets()
    cfg = _digits_cfg(tmp_path, 3)
    cfg.DATASETS.TEST = (two_test_images,)
    cfg.TEST.EVAL_PERIOD = 2
    trainer = _NoEvalTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    hist = trainer.storage.history("total_loss").values()
    assert len(hist) == 3 and all(torch.isfinite(torch.tensor(v)) for v, _ in hist)
    assert any(k.startswith("loss_vos") for k in trainer.storage.histories())
    # the periodic evaluation at iteration 2 measured ID mAP only (no OOD thresholds yet)
    assert 0.0 <= trainer.storage.history("id/map50").latest() <= 1.0
    assert trainer.model.roi_heads.box_predictor.box_classifier.threshold("mds") is None
    final = tmp_path / "model_final.pth"
    raw = torch.load(final, map_location="cpu", weights_only=True)
    assert raw["iteration"] == 2 and raw["ood_det"]["class_names"] == ["0", "1", "2", "3", "4"]
    assert raw["ood_det"]["head"] == "isomaxplus" and "trainer" in raw
    assert (tmp_path / "train_metrics.jsonl").is_file()
    saved = _ood_buffers(trainer.model)
    assert int(saved["iteration"]) == 3

    cfg2 = _digits_cfg(tmp_path, 5)
    t2 = _NoEvalTrainer(cfg2)
    t2.resume_or_load(resume=True)
    assert t2.start_iter == 3
    for k, v in _ood_buffers(t2.model).items():
        torch.testing.assert_close(v, saved[k], equal_nan=True, msg=k)
    t2.train()
    assert int(_ood_buffers(t2.model)["iteration"]) == 5


def test_setup_refuses_torchvision_configs(tmp_path):
    import argparse

    from ood_det.config import get_cfg
    from ood_det.d2.train_net import setup

    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    with pytest.raises(ValueError, match="BACKEND"):
        setup(cfg, argparse.Namespace(config_file="", eval_only=False, resume=False, opts=[]))


@pytest.mark.slow
def test_cli_train_then_eval_only(tmp_path):
    """tools/train_net.py's path for BACKEND detectron2: train 2 iterations on DigitsOOD smoke,
    evaluate (metrics.json, thresholds saved into model_final.pth), then --eval-only."""
    from pathlib import Path

    from ood_det.apps.train import main

    root = Path(__file__).resolve().parents[2]
    cfg = str(root / "configs/Digits-OOD/d2/faster_rcnn_R_18_FPN_isomaxplus.yaml")
    opts = ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", '("digits_ood_smoke_train",)',
            "DATASETS.TEST", '("digits_ood_smoke_test",)', "DATASETS.OOD_TEST", '("digits_ood_smoke_ood",)',
            "TEST.OOD.VAL_DATASET", "digits_ood_smoke_val", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.BASE_LR", "0.001", "OUTPUT_DIR", str(tmp_path)]
    flat = main(["--config", cfg] + opts)
    assert any(k.endswith("auroc") for k in flat)
    metrics = __import__("json").loads((tmp_path / "metrics.json").read_text())
    thr = metrics["summary"]["digits_ood_smoke_ood"]["unknown_threshold"]
    raw = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    stored = raw["model"]["roi_heads.box_predictor.cls_score.thresholds"]
    from ood_det.scores import SCORE_NAMES

    assert float(stored[SCORE_NAMES.index("mds")]) == pytest.approx(thr)
    assert raw["iteration"] == 1 and "optimizer" in raw["trainer"]["_trainer"]
    # the F1 box-confidence threshold is stored (buffer and metadata), as on the torchvision side
    conf = metrics["summary"]["digits_ood_smoke_ood"]["conf_thresh"]
    assert raw["ood_det"]["conf_thresh"] == pytest.approx(conf)
    assert float(raw["model"]["roi_heads.box_predictor.cls_score.conf_thresh"]) == pytest.approx(conf)

    flat2 = main(["--config-file", cfg, "--eval-only", "MODEL.WEIGHTS", str(tmp_path / "model_final.pth")] + opts)
    assert flat2["summary/digits_ood_smoke_ood/auroc"] == pytest.approx(flat["summary/digits_ood_smoke_ood/auroc"])
    raw2 = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)
    assert "trainer" in raw2  # the training state in the rewritten file was kept


def test_cpu_multiprocess_training_is_refused(tmp_path):
    from pathlib import Path

    from ood_det.apps.train import main

    cfg = str(Path(__file__).resolve().parents[2] / "configs/Digits-OOD/d2/faster_rcnn_R_18_FPN_softmax.yaml")
    with pytest.raises(ValueError, match="one CUDA device per process"):
        main(["--config", cfg, "--num-gpus", "2", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path)])


@pytest.mark.slow
def test_two_process_cpu_evaluation(tmp_path):
    """--eval-only --num-gpus 2 without CUDA: detectron2's launch starts two gloo processes;
    sharded inference gathered on rank 0 gives the single-process numbers, post-fit runs on ROIs
    gathered from both ranks and is saved to the checkpoint."""
    import json
    from pathlib import Path

    from ood_det.apps.train import main
    from ood_det.data import catalog

    root = Path(__file__).resolve().parents[2]
    # CFL: its post-fit standardises the cfl score only, so the other scores and the detections
    # do not depend on which ROIs were sampled for it
    cfg = str(root / "configs/Digits-OOD/d2/faster_rcnn_R_18_FPN_cfl.yaml")
    opts = ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", '("digits_ood_smoke_train",)',
            "DATASETS.TEST", '("digits_ood_smoke_test",)', "DATASETS.OOD_TEST", '("digits_ood_smoke_ood",)',
            "TEST.OOD.VAL_DATASET", "digits_ood_smoke_val", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.BASE_LR", "0.001", "OUTPUT_DIR", str(tmp_path)]
    single = main(["--config", cfg] + opts)  # one process: train + evaluate
    weights = str(tmp_path / "model_final.pth")
    main(["--config", cfg, "--eval-only", "--num-gpus", "2", "--dist-url", "auto", "MODEL.WEIGHTS", weights]
         + opts)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    res = metrics["results"]["digits_ood_smoke_ood"]
    assert res["num_images"]["test"] == len(catalog.get("digits_ood_smoke_test"))  # both shards
    key = "results/digits_ood_smoke_ood/"
    # (float32 kernels may round differently in the spawned processes: tiny tolerances)
    assert res["detection"]["voc"]["map50"] == pytest.approx(single[key + "detection/voc/map50"], abs=1e-4)
    assert res["ood"]["msp"]["auroc"] == pytest.approx(single[key + "ood/msp/auroc"], abs=1e-4)
    assert metrics["post_fit"]["num_rois"] > 0
    raw = torch.load(weights, map_location="cpu", weights_only=True)
    mean = raw["model"]["roi_heads.box_predictor.cls_score.head.score_mean"]
    assert float(mean[0]) == pytest.approx(metrics["post_fit"]["mean_energy"], rel=1e-5)
