"""benchmarks/digits_ood.py: the statistics of the method ranking (paired differences, standard
errors, the 'real' mark), the per-run row and the table, against hand / numpy computations."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "digits_ood.py"
spec = importlib.util.spec_from_file_location("bench_digits_ood", PATH)
B = importlib.util.module_from_spec(spec)
spec.loader.exec_module(B)


def test_mean_std_matches_numpy():
    x = [0.3, 0.5, 0.4, None, float("nan"), 0.8]
    m, s, n = B.mean_std(x)
    v = np.array([0.3, 0.5, 0.4, 0.8])
    assert n == 4 and m == pytest.approx(v.mean()) and s == pytest.approx(v.std(ddof=1))
    assert B.mean_std([None]) == (None, None, 0) and B.mean_std([0.2])[1] is None


def test_paired_difference_standard_error_and_real_mark():
    a = [0.50, 0.52, 0.47, 0.55, 0.49]
    b = [0.60, 0.61, 0.58, 0.66, 0.60]
    d = np.array(a) - np.array(b)
    p = B.paired(a, b)
    assert p["n"] == 5 and p["diff"] == pytest.approx(d.mean())
    assert p["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(5))
    assert p["real"] and abs(p["diff"]) > 2 * p["se"]
    # a noisy difference whose mean is within 2 SE is not real, whatever the unpaired means say
    noisy = B.paired([0.5, 0.7, 0.4, 0.8, 0.45], [0.6, 0.5, 0.6, 0.55, 0.6])
    assert not noisy["real"] and abs(noisy["diff"]) <= 2 * noisy["se"]
    # missing seeds on either side are dropped pairwise
    assert B.paired([0.1, None, 0.3], [0.2, 0.2, None])["n"] == 1


def _metrics(near, far, shift, map50=0.9, score="msp"):
    res = {B.NEAR: {"detection": {"voc": {"map50": map50}}, "ood": {score: {"fpr95": near, "auroc": 1 - near}}},
           B.FAR: {"ood": {score: {"fpr95": far, "auroc": 1 - far}}}}
    return {"score": score, "results": res, "covariate_shift": {B.SHIFT: {score: shift, "num_boxes": 10}}}


def test_run_row_and_aggregate_table():
    row = B.run_row(_metrics(0.6, 0.3, 0.1), "msp")
    assert row == {"map50": 0.9, "near_fpr95": 0.6, "near_auroc": 0.4, "far_fpr95": 0.3, "far_auroc": 0.7,
                   "shift_flagged": 0.1}
    assert B.run_row({"results": {}}, "msp")["far_fpr95"] is None  # an absent split degrades to None
    per_seed = {"softmax": [B.run_row(_metrics(0.6 + i / 100, 0.3, 0.1), "msp") for i in range(3)],
                "isomaxplus": [B.run_row(_metrics(0.4 + i / 100, 0.35, 0.1), "msp") for i in range(3)]}
    agg = B.aggregate(per_seed)
    c = agg["isomaxplus"]["vs"]["softmax"]["near_fpr95"]
    assert c["diff"] == pytest.approx(-0.2) and c["se"] == pytest.approx(0.0, abs=1e-12) and c["real"]
    table = B.markdown(agg, {"softmax": "msp", "isomaxplus": "mds"}, 3)
    assert "| IsoMax+ (min. distance) | `mds` | 90.0 ± 0.0 | 41.0 ± 1.0 |" in table
    assert "-20.0 ± 0.0 **real**" in table


def test_run_row_reads_the_validation_splits_when_asked():
    m = _metrics(0.6, 0.3, 0.1)
    m["results"][B.VAL_NEAR] = {"detection": {"voc": {"map50": 0.8}}, "ood": {"msp": {"fpr95": 0.5, "auroc": 0.7}}}
    m["results"][B.VAL_FAR] = {"ood": {"msp": {"fpr95": 0.2, "auroc": 0.9}}}
    row = B.run_row(m, "msp", B.VAL_NEAR, B.VAL_FAR)
    assert (row["map50"], row["near_fpr95"], row["near_auroc"], row["far_fpr95"]) == (0.8, 0.5, 0.7, 0.2)
    assert B.run_row(m, "msp")["near_fpr95"] == 0.6  # the test splits by default


def test_ablation_variants_are_opt_in_and_their_configs_change_their_parent():
    from ood_det.apps.config import load_config

    assert not set(B.ABLATIONS) & set(B.DEFAULT_VARIANTS)
    for name, (cfg_file, *_rest) in B.ABLATIONS.items():
        child = load_config(str(B.CONFIGS / cfg_file))
        parent_file = B.CONFIGS / B.VARIANTS[name.split("_")[0]][0]
        parent = load_config(str(parent_file))
        assert child.MODEL.OOD.HEAD == parent.MODEL.OOD.HEAD, name
        assert child.MODEL.OOD.dump() != parent.MODEL.OOD.dump(), f"{name} changes nothing in MODEL.OOD"


def test_reused_runs_are_reported_and_timed(tmp_path):
    """run_one reuses a run that has metrics.json (trained = False); the table's time from
    scratch adds up the run times recorded when each run was trained."""
    run = tmp_path / "softmax" / "seed0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text('{"x": 1}')
    (run / "wall_seconds.txt").write_text("90.5\n")
    other = tmp_path / "cfl" / "seed1"
    other.mkdir(parents=True)
    (other / "wall_seconds.txt").write_text("30\n")
    metrics, trained = B.run_one("softmax", 0, tmp_path, [], 1, force=False)
    assert metrics == {"x": 1} and trained is False
    jobs = [("softmax", 0), ("cfl", 1), ("cfl", 2)]  # the last one has no record
    assert B.recorded_run_seconds(tmp_path, jobs) == pytest.approx(120.5)
