"""ood_det.apps.train: argument parsing, checks before any write, backend dispatch, eval-only,
DDP (gloo, 2 processes)."""
import os

import pytest
import torch

from ood_det.apps.train import default_argument_parser, main

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMOKE = os.path.join(REPO, "configs", "Digits-OOD", "smoke.yaml")


def test_parser_aliases_and_opts():
    p = default_argument_parser()
    a = p.parse_args(["--config", "x.yaml", "--resume", "SOLVER.MAX_ITER", "3"])
    b = p.parse_args(["--config-file", "x.yaml", "--eval-only", "--num-gpus", "2"])
    assert a.config_file == b.config_file == "x.yaml"
    assert a.resume and a.opts == ["SOLVER.MAX_ITER", "3"] and not a.eval_only
    assert b.eval_only and b.num_gpus == 2 and b.opts == [] and b.dist_url == "auto"


def test_eval_only_without_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS"):
        main(["--config", SMOKE, "--eval-only", "OUTPUT_DIR", str(tmp_path)])


def test_typo_in_opts_is_reported():
    with pytest.raises(KeyError, match="SOLVER.MAX_ITERS"):
        main(["--config", SMOKE, "SOLVER.MAX_ITERS", "3"])


def test_detectron2_backend_dispatch(monkeypatch):
    """BACKEND detectron2: the config is loaded once, in detectron2's schema, and handed over."""
    pytest.importorskip("detectron2")
    import ood_det.d2.train_net as d2_train_net

    called = {}
    monkeypatch.setattr(d2_train_net, "main", lambda cfg, args: called.update(cfg=cfg, args=args) or "d2-result")
    d2_cfg = os.path.join(REPO, "configs", "Digits-OOD", "d2", "faster_rcnn_R_18_FPN_softmax.yaml")
    assert main(["--config", d2_cfg, "MODEL.DEVICE", "cpu"]) == "d2-result"
    cfg = called["cfg"]
    assert cfg.BACKEND == "detectron2" and "REGNET" in cfg.MODEL and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 5
    assert called["args"].config_file == d2_cfg and not called["args"].eval_only


def test_unknown_backend_is_named():
    from ood_det.apps.backends import get_backend

    with pytest.raises(ValueError, match="BACKEND='caffe2'"):
        get_backend("caffe2")
    with pytest.raises(ValueError, match="caffe2"):
        main(["--config", SMOKE, "BACKEND", "caffe2"])


def test_cli_prints_one_line_errors(tmp_path, capsys):
    """The command line reports a bad key / a missing file in one line, exit code 1, no traceback."""
    from ood_det.apps.train import cli

    assert cli(["--config", SMOKE, "SOLVER.MAX_ITERS", "3"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "SOLVER.MAX_ITERS" in err and "Traceback" not in err
    assert cli(["--config", str(tmp_path / "nope.yaml")]) == 1
    assert "nope.yaml" in capsys.readouterr().err


def test_cuda_without_gpu_fails_before_writing(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "finished"
    out.mkdir()
    (out / "config.yaml").write_text("the finished run's config")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        main(["--config", SMOKE, "MODEL.DEVICE", "cuda", "OUTPUT_DIR", str(out)])
    assert (out / "config.yaml").read_text() == "the finished run's config"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]


@pytest.mark.slow
def test_two_process_gloo_ddp(tmp_path, monkeypatch):
    """Two CPU processes (gloo) train the smoke config for a few iterations and evaluate."""
    monkeypatch.setenv("OOD_DET_DATASETS", str(tmp_path / "datasets"))
    out = tmp_path / "ddp"
    main(["--config", SMOKE, "--num-gpus", "2", "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2",
          "OUTPUT_DIR", str(out)])
    assert (out / "model_final.pth").is_file() and (out / "metrics.json").is_file()
    assert (out / "log.txt").is_file() and (out / "log_rank1.txt").is_file()
    ck = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert ck["iteration"] == 3 and not any(k.startswith("module.") for k in ck["model"])


@pytest.mark.slow
def test_eval_only_reproduces_metrics(smoke_run, tmp_path):
    out = tmp_path / "eval"
    m = main(["--config", smoke_run.config, "--eval-only", "MODEL.WEIGHTS", smoke_run.weights,
              "OUTPUT_DIR", str(out)])
    a = m["summary"]["digits_ood_smoke_ood"]
    b = smoke_run.metrics["summary"]["digits_ood_smoke_ood"]
    assert a["map50"] == pytest.approx(b["map50"], abs=1e-6) and a["fpr95"] == pytest.approx(b["fpr95"], abs=1e-6)


def test_eval_only_refuses_a_checkpoint_of_another_head(smoke_run, tmp_path):
    """Issue: --eval-only with a checkpoint of another head evaluated random prototypes and
    rewrote model_final.pth / metrics.json. Now: refused before anything is written."""
    import shutil

    from ood_det.engine.checkpoint import CheckpointMismatchError

    out = tmp_path / "run"
    shutil.copytree(smoke_run.output_dir, out)
    weights = out / "model_final.pth"
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(CheckpointMismatchError) as e:
        main(["--config", SMOKE, "--eval-only", "MODEL.OOD.HEAD", "isomax", "MODEL.WEIGHTS", str(weights),
              "OUTPUT_DIR", str(out)])
    msg = str(e.value)
    assert "'isomax'" in msg and "'softmax'" in msg and "MODEL.OOD.HEAD" in msg
    assert str(weights) in msg and SMOKE in msg
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before  # model_final.pth, metrics.json, config.yaml, log.txt untouched


def test_resume_continues_the_stored_schedule(tmp_path, monkeypatch):
    """Issue: --resume with a lower SOLVER.MAX_ITER "finished" at the current iteration. The
    checkpoint knows its run's schedule: resume continues it unless the command line says otherwise."""
    from ood_det.engine.checkpoint import load_checkpoint

    monkeypatch.setenv("OOD_DET_DATASETS", str(tmp_path / "datasets"))
    from ood_det.data.builtin import register_digits_ood_smoke

    register_digits_ood_smoke(tmp_path / "datasets" / "smoke")
    out = tmp_path / "run"
    main(["--config", SMOKE, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3", "OUTPUT_DIR", str(out)])
    # simulate a run interrupted after iteration 3
    (out / "model_final.pth").unlink()
    (out / "last_checkpoint").write_text("model_0000002.pth")
    short = tmp_path / "short.yaml"
    short.write_text(f"_BASE_: {SMOKE}\nSOLVER:\n  MAX_ITER: 4\n")
    main(["--config", str(short), "--resume", "OUTPUT_DIR", str(out)])
    assert load_checkpoint(str(out / "model_final.pth"))["iteration"] == 6  # the stored schedule
    log = (out / "log.txt").read_text()
    assert "continuing the stored schedule SOLVER.MAX_ITER 6" in log
    # an explicit command-line value wins, and is said
    (out / "model_final.pth").unlink()
    (out / "last_checkpoint").write_text("model_0000002.pth")
    main(["--config", str(short), "--resume", "SOLVER.MAX_ITER", "5", "OUTPUT_DIR", str(out)])
    assert load_checkpoint(str(out / "model_final.pth"))["iteration"] == 5
    assert "SOLVER.MAX_ITER 5 from the command line (the checkpoint's run used 6)" in (out / "log.txt").read_text()


def test_fatal_errors_reach_log_txt(tmp_path, capsys):
    """An error after the run's logging started is written to OUTPUT_DIR/log.txt (with its
    traceback) and printed as one line."""
    from ood_det.apps.train import cli

    out = tmp_path / "out"
    assert cli(["--config", SMOKE, "DATASETS.TRAIN", "('no_such_dataset',)", "OUTPUT_DIR", str(out)]) == 1
    err = capsys.readouterr().err
    assert "error: dataset 'no_such_dataset' is not registered" in err and "Traceback" not in err
    log = (out / "log.txt").read_text()
    assert "fatal: KeyError" in log and "no_such_dataset" in log and "Traceback" in log
