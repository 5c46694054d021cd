"""ood_det.engine.train_loop: every head trains, LR schedule, NaN stop, resume."""
import math
import os

import pytest
import torch

from ood_det.tv.build import build_model
from ood_det.engine.checkpoint import last_checkpoint, load_checkpoint

from ood_det.tv.train import build_optimizer, get_train_dicts, lr_factor, train
from ood_det.tv.data import build_train_loader

torch.set_num_threads(1)

VOS_FAST = ["MODEL.OOD.OUTLIERS", "vos", "MODEL.OOD.VOS.START_ITER", "0", "MODEL.OOD.VOS.QUEUE_SIZE", "2",
            "MODEL.OOD.VOS.NUM_SAMPLES", "200"]
HEADS = {
    "softmax_msp": ["MODEL.OOD.HEAD", "softmax"],
    "softmax_energy": ["MODEL.OOD.HEAD", "softmax", "MODEL.OOD.SCORE", "energy"],
    "vos": ["MODEL.OOD.HEAD", "softmax", "MODEL.OOD.SCORE", "energy", "MODEL.OOD.REGULARIZERS", "['vos', 'energy']",
            *VOS_FAST],
    "isomax": ["MODEL.OOD.HEAD", "isomax"],
    "isomaxplus": ["MODEL.OOD.HEAD", "isomaxplus"],
    "dismax": ["MODEL.OOD.HEAD", "dismax", "MODEL.OOD.REGULARIZERS", "['fpr']"],
    "cfl": ["MODEL.OOD.HEAD", "cfl", *VOS_FAST],
    "cfl_linear": ["MODEL.OOD.HEAD", "cfl", "MODEL.OOD.CFL.CLASSIFIER", "linear", "MODEL.OOD.CFL.MARGIN", "2.0",
                   *VOS_FAST],
    "greg": ["MODEL.OOD.HEAD", "softmax", "MODEL.OOD.SCORE", "energy", "MODEL.OOD.REGULARIZERS", "['greg']",
             "MODEL.OOD.GREG.NUM_CLUSTERS", "2", "MODEL.OOD.VOS.NUM_SELECT", "4", *VOS_FAST],
}


@pytest.mark.parametrize("name", sorted(HEADS))
def test_few_iterations_finite_losses(name, tiny_cfg):
    cfg = tiny_cfg
    cfg.merge_from_list(HEADS[name])
    torch.manual_seed(0)
    model = build_model(cfg, ["square", "bar"])
    opt = build_optimizer(cfg, model)
    loader = iter(build_train_loader(get_train_dicts(cfg), 2, seed=0))
    model.train()
    seen = {}
    for _ in range(3):
        b = next(loader)
        losses = model(b["images"], b["targets"])
        total = sum(losses.values())
        assert math.isfinite(float(total.detach())), losses
        opt.zero_grad()
        total.backward()
        opt.step()
        for k, v in losses.items():
            seen[k] = max(seen.get(k, 0.0), abs(float(v.detach())))
    assert {"loss_cls", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"} <= set(seen)
    assert int(model.classifier.iteration) == 3
    if "vos" in HEADS[name]:  # outliers arrived and the regularizer acted
        reg_keys = set(seen) - {"loss_cls", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
        assert reg_keys and max(seen[k] for k in reg_keys) > 0, seen


def test_lr_schedule_matches_detectron2(tiny_cfg):
    cfg = tiny_cfg
    cfg.merge_from_list(["SOLVER.WARMUP_ITERS", "10", "SOLVER.WARMUP_FACTOR", "0.001", "SOLVER.STEPS", "(20, 30)",
                         "SOLVER.GAMMA", "0.1"])
    assert lr_factor(0, cfg) == pytest.approx(0.001)
    assert lr_factor(5, cfg) == pytest.approx(0.001 * 0.5 + 0.5)
    assert lr_factor(10, cfg) == 1.0 and lr_factor(19, cfg) == 1.0
    assert lr_factor(20, cfg) == pytest.approx(0.1) and lr_factor(35, cfg) == pytest.approx(0.01)


class _Inject:
    """Wraps model.forward: at training call ``at`` (0-based) returns NaN losses or raises."""

    def __init__(self, model, at, kind):
        self.model, self.at, self.kind, self.calls = model, at, kind, 0
        self.orig = model.forward
        model.forward = self

    def __call__(self, images, targets=None):
        out = self.orig(images, targets)
        if self.model.training:
            self.calls += 1
            if self.calls - 1 == self.at:
                if self.kind == "nan":
                    out["loss_cls"] = out["loss_cls"] * float("nan")
                else:
                    raise KeyboardInterrupt("simulated interruption")
        return out


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tiny_cfg):
    cfg = tiny_cfg
    model = build_model(cfg, ["square", "bar"])
    _Inject(model, at=2, kind="nan")  # third iteration (index 2) goes NaN
    with pytest.raises(FloatingPointError) as e:
        train(cfg, model=model)
    msg = str(e.value)
    assert "iteration 2" in msg and "loss_cls=nan" in msg and "model_0000001.pth" in msg
    out = cfg.OUTPUT_DIR
    assert not os.path.exists(os.path.join(out, "model_final.pth"))
    last = last_checkpoint(out)
    assert last.endswith("model_0000001.pth")
    ck = load_checkpoint(last)
    assert ck["iteration"] == 2
    # the weights are the good ones (thresholds are NaN = unset by design)
    assert all(torch.isfinite(v).all() for k, v in ck["model"].items() if v.is_floating_point() and "thresholds" not in k and "conf_thresh" not in k)


def test_resume_after_interruption(tiny_cfg):
    cfg = tiny_cfg
    model = build_model(cfg, ["square", "bar"])
    _Inject(model, at=3, kind="interrupt")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, model=model)
    assert last_checkpoint(cfg.OUTPUT_DIR).endswith("model_0000001.pth")
    saved = load_checkpoint(last_checkpoint(cfg.OUTPUT_DIR))
    # a fresh process: resume from the checkpoint, only the missing iterations run
    model2 = build_model(cfg, ["square", "bar"])
    spy = _Inject(model2, at=-1, kind="none")
    final = train(cfg, resume=True, model=model2)
    assert spy.calls == 2  # iterations 3 and 4 of 4
    ck = load_checkpoint(final)
    assert ck["iteration"] == 4 and ck["scheduler"]["last_epoch"] == 4
    assert int(ck["model"]["roi_heads.box_predictor.classifier.iteration"]) == 4
    assert int(saved["model"]["roi_heads.box_predictor.classifier.iteration"]) == 2
    # resuming a finished run trains nothing
    spy3 = _Inject(build_model(cfg, ["square", "bar"]), at=-1, kind="none")
    train(cfg, resume=True, model=spy3.model)
    assert spy3.calls == 0
