"""benchmarks/diagnose.py: the boxes its histograms show (confidence filter, the chosen score) and
the loss curves it reads, on dumps written by the evaluation's own Predictions.save."""
import importlib.util
import json
from pathlib import Path

import numpy as np

from ood_det.evaluation.evaluator import Predictions

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "diagnose.py"
spec = importlib.util.spec_from_file_location("bench_diagnose", PATH)
D = importlib.util.module_from_spec(spec)
spec.loader.exec_module(D)


def _run(tmp_path):
    run = tmp_path / "run"
    p = Predictions()
    p.add(0, np.zeros((3, 4)), [0, 1, 2], [0.9, 0.2, 0.6], {"energy": [5.0, 1.0, 3.0], "msp": [0.9, 0.2, 0.6]})
    p.add(1, np.zeros((1, 4)), [1], [0.7], {"energy": [4.0], "msp": [0.7]})
    p.add(2, np.zeros((0, 4)), [], [], {})
    p.save(run / "predictions" / "digits_ood_val.npz")
    p.save(run / "predictions" / "digits_ood_val_ood.npz")
    lines = [{"iteration": 1, "loss_cls": 1.0, "loss_vos": 0.0, "lr": 0.1, "time": 1.0},
             {"iteration": 20, "loss_cls": 0.5, "loss_vos": 0.2, "lr": 0.1, "time": 2.0}]
    (run / "train_metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    metrics = {"score": "energy", "datasets": {"test": "digits_ood_val", "ood": ["digits_ood_val_ood"]},
               "summary": {"digits_ood_val_ood": {"conf_thresh": 0.6, "unknown_threshold": 3.5}},
               "results": {"digits_ood_val_ood": {"ood": {"energy": {"fpr95": 0.5}}}}}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_kept_scores_are_the_boxes_above_the_confidence_threshold(tmp_path):
    run = _run(tmp_path)
    got = D.kept_scores(run, "digits_ood_val", "energy", 0.6)
    assert sorted(got.tolist()) == [3.0, 4.0, 5.0]  # box confidences 0.9, 0.6, 0.7 pass; 0.2 does not
    assert sorted(D.kept_scores(run, "digits_ood_val", "msp", 0.65).tolist()) == [0.7, 0.9]


def test_loss_curves_and_figure(tmp_path):
    run = _run(tmp_path)
    curves = D.loss_curves(run)
    assert curves == {"loss_cls": [(1, 1.0), (20, 0.5)], "loss_vos": [(1, 0.0), (20, 0.2)]}
    out = D.diagnose([run], tmp_path / "fig.png")
    assert out.is_file() and out.stat().st_size > 1000
