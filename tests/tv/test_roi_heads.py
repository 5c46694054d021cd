"""ood_det.tv.roi_heads: column / label permutation and OOD scores carried through box selection."""
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign

from ood_det.heads import build_head
from ood_det.modeling.box_classifier import OODBoxClassifier
from ood_det.tv.roi_heads import (
    OODFastRCNNPredictor,
    OODRoIHeads,
    core_to_tv_logits,
    tv_to_core_labels,
    tv_to_core_logits,
)

torch.set_num_threads(1)
K, D = 3, 8


def make_heads(head="softmax", score_thresh=0.05, nms=0.5, dets=100):
    clf = OODBoxClassifier(build_head(head, D, K))
    pooler = MultiScaleRoIAlign(["0"], output_size=2, sampling_ratio=1)
    box_head = TwoMLPHead(4 * 2 * 2, D)
    pred = OODFastRCNNPredictor(clf, D)
    return OODRoIHeads(pooler, box_head, pred, 0.5, 0.5, 16, 0.25, None, score_thresh, nms, dets)


def test_permutation_round_trip_and_labels():
    core = torch.tensor([[1.0, 2.0, 3.0, 9.0], [4.0, 5.0, 6.0, 7.0]])  # background last
    tv = core_to_tv_logits(core)
    assert tv.tolist() == [[9.0, 1.0, 2.0, 3.0], [7.0, 4.0, 5.0, 6.0]]
    assert torch.equal(tv_to_core_logits(tv), core)
    assert tv_to_core_labels(torch.tensor([0, 1, 2, 3, 0]), K).tolist() == [3, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="0..3"):
        tv_to_core_labels(torch.tensor([4]), K)


def test_core_loss_equals_torchvision_cross_entropy():
    """The softmax head's loss on core-ordered tensors equals torchvision's CE on its own order."""
    torch.manual_seed(0)
    core_logits = torch.randn(6, K + 1)
    tv_labels = torch.tensor([0, 1, 2, 3, 0, 2])
    head = build_head("softmax", D, K)
    core_loss = head.loss(core_logits, tv_to_core_labels(tv_labels, K))["loss_cls"]
    tv_loss = F.cross_entropy(core_to_tv_logits(core_logits), tv_labels)
    assert torch.allclose(core_loss, tv_loss, atol=1e-6)


def test_predictor_outputs_torchvision_order():
    torch.manual_seed(0)
    heads = make_heads()
    x = torch.randn(5, D)
    tv_logits, deltas = heads.box_predictor(x)
    core_logits = heads.classifier(x)
    assert torch.equal(tv_logits[:, 0], core_logits[:, K])  # background moved to column 0
    assert torch.equal(tv_logits[:, 1:], core_logits[:, :K])
    assert deltas.shape == (5, (K + 1) * 4)
    probs = heads.box_predictor.predict_probs_tv(tv_logits)
    assert torch.allclose(probs, torch.softmax(tv_logits, -1), atol=1e-6)


def test_postprocess_keeps_ood_scores_aligned_after_nms():
    heads = make_heads(score_thresh=0.2, nms=0.5)
    # ROI 0 and ROI 1 overlap (IoU 0.81); ROI 2 is elsewhere. Background column first (tv order).
    proposals = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 9.0, 9.0], [20.0, 20.0, 30.0, 30.0]])]
    p = torch.tensor([
        [0.05, 0.60, 0.05, 0.30],  # ROI 0: class 1 (0.60), class 3 (0.30)
        [0.05, 0.90, 0.03, 0.02],  # ROI 1: class 1 (0.90) -> suppresses ROI 0's class-1 box
        [0.10, 0.05, 0.80, 0.05],  # ROI 2: class 2
    ])
    logits = p.log()
    ood = torch.tensor([10.0, 20.0, 30.0])
    boxes, scores, labels, extras = heads.postprocess_detections(
        logits, torch.zeros(3, (K + 1) * 4), proposals, [(40, 40)], per_roi={"ood_scores": ood, "roi": torch.arange(3)}
    )
    got = sorted(zip(scores[0].tolist(), labels[0].tolist(), extras[0]["ood_scores"].tolist(), extras[0]["roi"].tolist()))
    # kept: ROI1/class1 (0.9), ROI2/class2 (0.8), ROI0/class3 (0.3); ROI0/class1 suppressed by NMS
    assert [(round(s, 4), l, o, r) for s, l, o, r in got] == [(0.3, 3, 10.0, 0), (0.8, 2, 30.0, 2), (0.9, 1, 20.0, 1)]
    for b, r in zip(boxes[0], extras[0]["roi"]):
        assert torch.allclose(b, proposals[0][r])  # zero deltas: box = its ROI's proposal


def test_eval_forward_returns_every_score_of_its_roi():
    """Each kept box carries the scores and the roi_conf of the ROI it came from, for every score
    the head supports, recomputed here from that ROI's own logits."""
    torch.manual_seed(0)
    heads = make_heads(score_thresh=0.0).eval()
    torch.nn.init.zeros_(heads.box_predictor.bbox_pred.weight)  # box = its ROI's proposal
    feats = {"0": torch.randn(1, 4, 16, 16)}
    props = [torch.tensor([[0.0, 0.0, 8.0, 8.0], [4.0, 4.0, 15.0, 15.0]])]
    result, losses = heads(feats, props, [(16, 16)])
    assert losses == {}
    r = result[0]
    assert set(r) == {"boxes", "labels", "scores", "roi_conf", "ood_scores"}
    assert set(r["ood_scores"]) == set(heads.classifier.head.supported_scores)
    assert r["labels"].min() >= 0 and r["labels"].max() < K and len(r["boxes"]) == 2 * K
    with torch.no_grad():
        logits, _ = heads.box_predictor.forward_core(heads.box_features(feats, props, [(16, 16)]))
    probs = torch.softmax(logits, -1)
    for i, box in enumerate(r["boxes"]):
        roi = int((props[0] - box).abs().sum(1).argmin())
        lg = logits[roi, :K]
        assert float(r["ood_scores"]["msp"][i]) == pytest.approx(float(torch.softmax(lg, -1).max()), abs=1e-6)
        assert float(r["ood_scores"]["energy"][i]) == pytest.approx(float(torch.logsumexp(lg, -1)), abs=1e-5)
        assert float(r["ood_scores"]["max_logit"][i]) == pytest.approx(float(lg.max()), abs=1e-5)
        assert float(r["roi_conf"][i]) == pytest.approx(float(probs[roi, :K].max()), abs=1e-6)
        assert float(r["scores"][i]) == pytest.approx(float(probs[roi, int(r["labels"][i])]), abs=1e-6)
    assert not hasattr(heads, "extra_scores") and not hasattr(heads, "score_name")


@pytest.mark.parametrize("head", ["softmax", "isomaxplus"])
def test_training_forward_uses_core_loss(head):
    torch.manual_seed(0)
    heads = make_heads(head).train()
    feats = {"0": torch.randn(1, 4, 16, 16)}
    props = [torch.tensor([[0.0, 0.0, 8.0, 8.0], [4.0, 4.0, 15.0, 15.0], [1.0, 1.0, 6.0, 6.0]])]
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 8.0, 8.0]]), "labels": torch.tensor([2])}]
    _, losses = heads(feats, props, [(16, 16)], targets)
    assert set(losses) >= {"loss_cls", "loss_box_reg"}
    assert all(math.isfinite(float(v.detach())) for v in losses.values())
    sum(losses.values()).backward()
    assert heads.classifier.head.parameters().__next__().grad is not None
