"""ood_det.engine.launch: argument parsing, backend dispatch, eval-only, DDP (gloo, 2 processes)."""
import os
import sys
import types

import pytest
import torch

from ood_det.engine.launch import default_argument_parser, main

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
    pytest.importorskip("detectron2")
    called = {}
    fake = types.ModuleType("ood_det.d2.train_net")
    fake.main = lambda args: called.setdefault("args", args) and "d2-result"
    monkeypatch.setitem(sys.modules, "ood_det.d2.train_net", fake)
    import ood_det.d2 as d2pkg

    monkeypatch.setattr(d2pkg, "train_net", fake, raising=False)
    main(["--config", SMOKE, "--eval-only", "BACKEND", "detectron2"])
    assert called["args"].eval_only and called["args"].config_file == SMOKE


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
