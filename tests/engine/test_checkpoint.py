"""ood_det.engine.checkpoint: round trip of model / optimizer / thresholds / regularizer state, the
metadata both backends write, and the check of a checkpoint against a config."""
import pytest
import torch

from ood_det.apps.config import load_config
from ood_det.tv.build import build_model
from ood_det.engine.checkpoint import (
    CheckpointMismatchError,
    check_metadata,
    checkpoint_metadata,
    evaluated_checkpoint_path,
    last_checkpoint,
    load_checkpoint,
    make_checkpoint,
    restore,
    save_checkpoint,
    save_model_state,
)
from ood_det.tv.train import build_optimizer, build_scheduler, get_train_dicts
from ood_det.scores import SCORE_NAMES
from ood_det.tv.data import build_train_loader

torch.set_num_threads(1)

VOS = ["MODEL.OOD.HEAD", "softmax", "MODEL.OOD.SCORE", "energy", "MODEL.OOD.REGULARIZERS", "['vos', 'energy']",
       "MODEL.OOD.OUTLIERS", "vos", "MODEL.OOD.VOS.START_ITER", "0", "MODEL.OOD.VOS.QUEUE_SIZE", "2",
       "MODEL.OOD.VOS.NUM_SAMPLES", "100"]


def _trained(cfg, steps=3):
    torch.manual_seed(0)
    model = build_model(cfg, ["square", "bar"])
    opt = build_optimizer(cfg, model)
    sched = build_scheduler(cfg, opt)
    loader = iter(build_train_loader(get_train_dicts(cfg), 2, seed=0))
    model.train()
    for _ in range(steps):
        b = next(loader)
        loss = sum(model(b["images"], b["targets"]).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model, opt, sched


def test_round_trip_with_thresholds_and_regularizer_state(tiny_cfg, tmp_path):
    cfg = tiny_cfg
    cfg.merge_from_list(VOS)
    model, opt, sched = _trained(cfg)
    model.classifier.set_threshold("energy", 1.25)
    model.classifier.set_threshold("msp", 0.5)
    path = save_checkpoint(make_checkpoint(model, cfg, 3, opt, sched), str(tmp_path / "ck" / "model_0000002.pth"))
    assert last_checkpoint(str(tmp_path / "ck")) == path

    # weights_only-loadable, plain python metadata
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["ood_det"] == {"backend": "torchvision", "head": "softmax", "num_classes": 2,
                              "class_names": ["square", "bar"], "score": "energy", "max_iter": 4}
    assert raw["iteration"] == 3 and isinstance(raw["cfg"], str)

    fresh = build_model(cfg, ["square", "bar"])
    opt2 = build_optimizer(cfg, fresh)
    sched2 = build_scheduler(cfg, opt2)
    it = restore(load_checkpoint(path), fresh, opt2, sched2)
    assert it == 3
    a, b = model.state_dict(), fresh.state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]) or (a[k].is_floating_point() and torch.allclose(a[k], b[k], equal_nan=True)), k
    clf = fresh.classifier
    assert clf.threshold("energy") == pytest.approx(1.25) and clf.threshold("msp") == pytest.approx(0.5)
    assert clf.threshold("max_logit") is None
    # the VOS queue and the energy margins survived
    src = model.classifier.outlier_source
    assert int(src.count.sum()) > 0 and torch.equal(clf.outlier_source.queue, src.queue)
    assert torch.equal(clf.outlier_source.count, src.count)
    assert int(clf.iteration) == 3
    assert sched2.last_epoch == 3 and opt2.state_dict()["state"].keys() == opt.state_dict()["state"].keys()


def test_cfg_in_checkpoint_reloads(tiny_cfg, tmp_path):
    cfg = tiny_cfg
    model = build_model(cfg, ["square", "bar"])
    path = save_checkpoint(make_checkpoint(model, cfg, 0), str(tmp_path / "m.pth"))
    yaml_file = tmp_path / "cfg.yaml"
    yaml_file.write_text(load_checkpoint(path)["cfg"])
    again = load_config(str(yaml_file))
    assert again.dump() == cfg.dump()


def test_save_model_state_keeps_training_state(tiny_cfg, tmp_path):
    cfg = tiny_cfg
    model, opt, sched = _trained(cfg, steps=1)
    path = save_checkpoint(make_checkpoint(model, cfg, 1, opt, sched), str(tmp_path / "model_final.pth"))
    model.classifier.set_threshold("msp", 0.25)
    model.classifier.set_conf_threshold(0.625)
    meta = checkpoint_metadata(cfg, model.classifier, model.class_names, conf_thresh=0.625)
    save_model_state(model, cfg, path, meta)
    ck = load_checkpoint(path)
    assert "optimizer" in ck and ck["iteration"] == 1 and ck["ood_det"]["conf_thresh"] == 0.625
    idx = SCORE_NAMES.index("msp")
    assert float(ck["model"]["roi_heads.box_predictor.classifier.thresholds"][idx]) == 0.25
    assert float(ck["model"]["roi_heads.box_predictor.classifier.conf_thresh"]) == 0.625


def test_checkpoint_without_conf_thresh_buffer_still_loads(tiny_cfg):
    """Checkpoints written before the confidence threshold was a buffer load with it unset."""
    model = build_model(tiny_cfg, ["square", "bar"])
    state = model.state_dict()
    del state["roi_heads.box_predictor.classifier.conf_thresh"]
    fresh = build_model(tiny_cfg, ["square", "bar"])
    fresh.classifier.set_conf_threshold(0.5)
    fresh.load_state_dict(state, strict=True)
    assert fresh.classifier.conf_threshold() is None


def test_metadata_checked_against_the_config(tiny_cfg):
    cfg = tiny_cfg
    model = build_model(cfg, ["square", "bar"])
    meta = checkpoint_metadata(cfg, model.classifier, ["square", "bar"])
    check_metadata(meta, cfg, "c.yaml", "w.pth")  # matches: no error
    check_metadata(None, cfg, "c.yaml", "w.pth")  # another tool's checkpoint: not checked here
    other = dict(meta, head="isomax", num_classes=3)
    with pytest.raises(CheckpointMismatchError) as e:
        check_metadata(other, cfg, "c.yaml", "w.pth")
    msg = str(e.value)
    assert "'isomax'" in msg and "'softmax'" in msg and "w.pth" in msg and "c.yaml" in msg and "num_classes" in msg
    with pytest.raises(ValueError, match="3 class names"):
        checkpoint_metadata(cfg, model.classifier, ["a", "b", "c"])


def test_evaluated_checkpoint_path(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    own = out / "model_0000009.pth"
    own.write_bytes(b"x")
    elsewhere = tmp_path / "theirs.pth"
    elsewhere.write_bytes(b"x")
    assert evaluated_checkpoint_path(str(out), str(own)) == str(own)
    assert evaluated_checkpoint_path(str(out), str(elsewhere)) == str(out / "model_final.pth")
    assert evaluated_checkpoint_path(str(out), None) == str(out / "model_final.pth")


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_checkpoint(str(tmp_path / "nope.pth"))
    p = tmp_path / "x.pth"
    torch.save({"weights": torch.zeros(1)}, p)
    with pytest.raises(ValueError, match="not an ood_det checkpoint"):
        load_checkpoint(str(p))
    p.write_bytes(b"not a zip")
    with pytest.raises(RuntimeError, match="cannot read checkpoint"):
        load_checkpoint(str(p))
    assert last_checkpoint(str(tmp_path)) is None
    (tmp_path / "last_checkpoint").write_text("gone.pth")
    assert last_checkpoint(str(tmp_path)) is None


class _PickledCode:
    """Any class: torch.save pickles a reference to it, which weights_only loading refuses."""


def test_unreadable_checkpoints_say_why_and_never_advise_weights_only_false(tmp_path):
    torch.save({"model": {"a": torch.zeros(3)}}, tmp_path / "ok.pth")
    good = (tmp_path / "ok.pth").read_bytes()
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "random.pth").write_bytes(bytes(range(200)))
    (tmp_path / "trunc.pth").write_bytes(good[: len(good) // 2])
    torch.save({"model": {}, "obj": _PickledCode()}, tmp_path / "code.pth")
    expect = {"empty": "empty (0 bytes)", "random": "not a PyTorch checkpoint", "trunc": "truncated or damaged",
              "code": "pickled Python objects"}
    for name, words in expect.items():
        with pytest.raises(RuntimeError) as e:
            load_checkpoint(str(tmp_path / f"{name}.pth"))
        msg = str(e.value)
        assert f"{name}.pth" in msg and words in msg, msg
        assert "weights_only=False" not in msg and "allowlist" not in msg


def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    """Issue: a full disk ended with 'basic_ios::clear: iostream error', no file named, and a partial
    .tmp left behind. Now: 'no space left on <folder>', the partial file removed, the old one kept."""
    import errno

    import ood_det.engine.checkpoint as ck

    path = tmp_path / "model_final.pth"
    save_checkpoint({"model": {"w": torch.ones(2)}, "iteration": 1}, str(path))
    before = path.read_bytes()

    def half_then_full(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04" + b"\0" * 100)  # a partial write
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", half_then_full)
    with pytest.raises(OSError) as e:
        save_checkpoint({"model": {"w": torch.zeros(2)}, "iteration": 2}, str(path))
    assert e.value.errno == errno.ENOSPC and f"no space left on {tmp_path}" in str(e.value)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_final.pth"]

    def torch_style_failure(obj, f):  # torch's C++ writer hides errno
        open(f, "wb").write(b"PK")
        raise RuntimeError("[enforce fail at inline_container.cc] . unexpected pos; basic_ios::clear: iostream error")

    monkeypatch.setattr(ck.torch, "save", torch_style_failure)
    monkeypatch.setattr(ck.shutil, "disk_usage", lambda p: type("U", (), {"free": 0})())
    with pytest.raises(OSError, match="no space left on"):
        save_checkpoint({"model": {}}, str(tmp_path / "model_0000009.pth"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_final.pth"]


def test_truncated_last_checkpoint_falls_back_to_the_previous_periodic_one(tmp_path, caplog):
    import logging

    for it in (3, 6):
        save_checkpoint({"model": {}, "iteration": it}, str(tmp_path / f"model_{it - 1:07d}.pth"))
    newest = tmp_path / "model_0000005.pth"
    newest.write_bytes(newest.read_bytes()[:50])  # cut by a crash / a full disk
    with caplog.at_level(logging.WARNING):
        assert last_checkpoint(str(tmp_path)) == str(tmp_path / "model_0000002.pth")
    assert "truncated" in caplog.text and "model_0000005.pth" in caplog.text and "model_0000002.pth" in caplog.text
    (tmp_path / "model_0000002.pth").unlink()
    assert last_checkpoint(str(tmp_path)) is None
