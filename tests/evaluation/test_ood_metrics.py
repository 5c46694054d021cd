
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ood_det.evaluation import ood_metrics, threshold_at_tpr


def hendrycks_fpr(id_s, ood_s, recall_level=0.95):
    """FPR at a recall level as Hendrycks' ``fpr_and_fdr_at_recall`` (used by VOS's ``get_measures``,
    ID = positive) defines it, written here from that definition, loop by loop: operating points at
    the distinct scores from the highest down until recall first reaches 1, visited in reverse
    (then a (recall 1, fps 0) point), the first point of smallest |recall - level|."""
    scores = np.r_[np.asarray(id_s, float), np.asarray(ood_s, float)]
    is_id = np.r_[np.ones(len(id_s), bool), np.zeros(len(ood_s), bool)]
    order = np.argsort(scores, kind="mergesort")[::-1]
    scores, is_id = scores[order], is_id[order]
    points = []  # (recall, fps) after each distinct score
    tp = fp = 0
    for i in range(len(scores)):
        tp += int(is_id[i])
        fp += int(not is_id[i])
        if i == len(scores) - 1 or scores[i + 1] != scores[i]:
            points.append((tp / float(is_id.sum()), fp))
    last = next(j for j, (r, _) in enumerate(points) if r == points[-1][0])
    visited = points[last::-1] + [(1.0, 0)]
    best = min(range(len(visited)), key=lambda j: (abs(visited[j][0] - recall_level), j))
    return visited[best][1] / float(len(ood_s))


def reference(id_s, ood_s, tpr=0.95):
    """The reference definitions (ID positive, higher = more ID): VOS / Hendrycks' FPR, the
    scikit-learn ROC point for the threshold, scikit-learn's AUROC / AUPR."""
    id_s, ood_s = np.asarray(id_s, float), np.asarray(ood_s, float)
    y = np.r_[np.ones(id_s.size), np.zeros(ood_s.size)]
    s = np.r_[id_s, ood_s]
    fpr, tpr_, thr = roc_curve(y, s, drop_intermediate=False)
    k = np.searchsorted(tpr_, tpr)
    return {
        "fpr95": hendrycks_fpr(id_s, ood_s, tpr),
        "threshold": thr[k],
        "fpr_at_threshold": fpr[k],
        "auroc": roc_auc_score(y, s),
        "aupr_in": average_precision_score(y, s),
        "aupr_out": average_precision_score(1 - y, -s),
    }


def assert_matches_reference(id_s, ood_s, tpr=0.95):
    got = ood_metrics(id_s, ood_s, tpr=tpr)
    ref = reference(id_s, ood_s, tpr)
    for k, v in ref.items():
        assert got[k] == pytest.approx(float(v), abs=1e-9, rel=0), (k, got[k], v)
    assert got["n_id"] == len(id_s) and got["n_ood"] == len(ood_s)
    assert threshold_at_tpr(id_s, tpr) == got["threshold"]
    return got


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tpr", [0.95, 0.5, 0.9, 1.0])
def test_random_scores_match_sklearn(seed, tpr):
    rng = np.random.default_rng(seed)
    n_id, n_ood = rng.integers(1, 400, size=2)
    assert_matches_reference(rng.normal(1, 1, n_id), rng.normal(0, 1.5, n_ood), tpr)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("decimals", [0, 1])
def test_heavily_tied_scores_match_sklearn(seed, decimals):
    rng = np.random.default_rng(100 + seed)
    id_s = np.round(rng.normal(0.5, 1, 300), decimals)
    ood_s = np.round(rng.normal(0, 1, 200), decimals)
    for tpr in (0.95, 0.8, 0.5):
        assert_matches_reference(id_s, ood_s, tpr)


def test_ties_across_id_and_ood_only():
    # every ID value also occurs among the OOD values
    id_s = [1, 1, 2, 2, 3, 3, 3, 0]
    ood_s = [3, 2, 2, 1, 0, 0, 0]
    assert_matches_reference(id_s, ood_s)


def test_all_equal_scores():
    got = assert_matches_reference(np.zeros(7), np.zeros(5))
    assert got["auroc"] == 0.5 and got["fpr95"] == 1.0 and got["threshold"] == 0.0
    assert got["aupr_in"] == pytest.approx(7 / 12) and got["aupr_out"] == pytest.approx(5 / 12)


@pytest.mark.parametrize("id_s,ood_s", [([1.0], [0.0]), ([0.0], [1.0]), ([0.5], [0.5]),
                                         ([2.0, 1.0], [1.5]), ([1.0], [2.0, 0.0, 1.0])])
def test_tiny_inputs(id_s, ood_s):
    assert_matches_reference(id_s, ood_s)


def test_hand_computed_values():
    # ID [1,2,3,4], OOD [0, 2.5]: 6 of the 8 (ID, OOD) pairs are ordered -> AUROC 0.75;
    # 95% TPR needs all four ID scores, threshold 1, where OOD 2.5 passes -> FPR 0.5.
    got = ood_metrics([1, 2, 3, 4], [0, 2.5])
    assert got["auroc"] == 0.75 and got["fpr95"] == 0.5 and got["threshold"] == 1.0
    # AUPR-In: ranking 4,3 (ID) 2.5 (OOD) 2,1 (ID) 0 -> precisions at the ID hits 1,1,3/4,4/5
    assert got["aupr_in"] == pytest.approx((1 + 1 + 0.75 + 0.8) / 4)
    # AUPR-Out on -s: ranking 0 (OOD) 1,2 (ID) 2.5 (OOD) -> precisions 1, 2/4
    assert got["aupr_out"] == pytest.approx((1 + 0.5) / 2)


def test_perfect_and_inverted_separation():
    good = ood_metrics([2, 3, 4], [0, 1])
    assert good["auroc"] == 1 and good["fpr95"] == 0 and good["aupr_in"] == 1 and good["aupr_out"] == 1
    bad = ood_metrics([0, 1], [2, 3, 4])
    assert bad["auroc"] == 0 and bad["fpr95"] == 1


def test_torch_and_list_inputs_equal_numpy():
    rng = np.random.default_rng(3)
    a = rng.normal(1, 1, 50).astype(np.float32)
    b = rng.normal(0, 1, 40).astype(np.float32)
    ref = ood_metrics(a, b)
    assert ood_metrics(torch.from_numpy(a).requires_grad_(), torch.from_numpy(b)) == ref
    assert ood_metrics(a.tolist(), b.tolist()) == ref
    assert ood_metrics(torch.from_numpy(a)[:, None], b) == ref  # [N, 1] is accepted
    half = ood_metrics(torch.from_numpy(a).half(), torch.from_numpy(b).bfloat16())
    assert set(half) == set(ref)


@pytest.mark.parametrize("bad,name,count", [
    (([1.0, np.nan, 2.0], [0.0]), "id_scores", "1 non-finite"),
    (([1.0], [0.0, np.inf, -np.inf]), "ood_scores", "2 non-finite"),
    (([], [0.0]), "id_scores", "empty"),
    (([1.0], []), "ood_scores", "empty"),
])
def test_bad_values_raise_naming_the_array(bad, name, count):
    with pytest.raises(ValueError, match=name) as e:
        ood_metrics(*bad)
    assert count in str(e.value)


def test_bad_shape_and_tpr_raise():
    with pytest.raises(ValueError, match="1-D"):
        ood_metrics(np.zeros((3, 2)), [0.0])
    for t in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="tpr"):
            ood_metrics([1.0], [0.0], tpr=t)


def test_fpr95_is_the_closest_recall_not_the_first_reaching_it():
    """The issue's counter-example: ID 1..20, OOD [1.5, 30]. The recall closest to 95% (19/20
    reached at 1.5) accepts both OOD samples; the first point reaching 95% (at 2) accepts one."""
    got = assert_matches_reference(np.arange(1, 21), [1.5, 30])
    assert got["fpr95"] == 1.0 and got["fpr_at_threshold"] == 0.5 and got["threshold"] == 2.0


@pytest.mark.parametrize("seed", range(8))
def test_two_decimal_msp_like_scores_match_vos(seed):
    """VOC-sized sets of 2-decimal MSP scores, where the two FPR definitions differ the most."""
    rng = np.random.default_rng(1000 + seed)
    id_s = np.round(rng.beta(5, 1.5, int(rng.integers(20, 2000))), 2)
    ood_s = np.round(rng.beta(3, 2, int(rng.integers(20, 2000))), 2)
    assert_matches_reference(id_s, ood_s)


def test_closest_recall_tie_takes_the_most_ood():
    """Two points equally close to the level: the one accepting more OOD wins (as VOS)."""
    # recalls 0.5 (at 3) and 1.0 (at 1) are equally far from 0.75; OOD at 2 lies between them
    got = ood_metrics([3, 1], [2, 0], tpr=0.75)
    assert got["fpr95"] == 0.5 == hendrycks_fpr([3, 1], [2, 0], 0.75)
