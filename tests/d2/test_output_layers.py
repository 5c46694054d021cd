"""OODFastRCNNOutputLayers: losses and inference against detectron2's own, ood_scores alignment."""
import pytest

pytest.importorskip("detectron2", reason="detectron2 is not installed (it is on no package registry; see docs/detectron2.md)")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling.box_regression import Box2BoxTransform  # noqa: E402
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

from ood_det.d2.output_layers import OODFastRCNNOutputLayers, ood_fast_rcnn_inference  # noqa: E402
from ood_det.heads import build_head  # noqa: E402
from ood_det.modeling.box_classifier import OODBoxClassifier  # noqa: E402
from ood_det.regularizers import build_regularizer  # noqa: E402

D, K = 16, 3


def _kwargs(**kw):
    base = dict(
        box2box_transform=Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)),
        num_classes=K,
        test_score_thresh=0.0,
        test_nms_thresh=0.5,
        test_topk_per_image=100,
    )
    base.update(kw)
    return base


def _proposals(n_per_image=(6, 5), size=200, with_gt=False, seed=0):
    """Well separated proposals (a 20-px box every 30 px) so that NMS keeps one per class."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in n_per_image:
        x0 = torch.arange(n, dtype=torch.float32) * 30.0
        boxes = torch.stack([x0, x0, x0 + 20, x0 + 20], dim=1)
        p = Instances((size, size))
        p.proposal_boxes = Boxes(boxes)
        if with_gt:
            p.gt_classes = torch.randint(0, K + 1, (n,), generator=g)
            p.gt_boxes = Boxes(boxes + torch.rand(n, 4, generator=g) * 4)
        out.append(p)
    return out


def test_ood_scores_follow_the_nan_filtering():
    """detectron2 drops non-finite rows before NMS and returns indices into the remaining rows;
    the OOD score of every output box must still be the one of its own input row."""
    torch.manual_seed(0)
    n = 6
    x0 = torch.arange(n, dtype=torch.float32) * 30.0
    boxes = torch.stack([x0, x0, x0 + 20, x0 + 20], dim=1).repeat(1, K)  # [n, 4K]
    boxes[1, 2] = float("nan")  # row 1 is dropped by detectron2
    probs = torch.softmax(torch.randn(n, K + 1), dim=1)
    ood = torch.arange(n, dtype=torch.float32) * 10.0 + 1.0  # distinct per row
    [inst], [rows] = ood_fast_rcnn_inference([boxes], [probs], [ood], [(200, 200)], 0.0, 0.5, 100)
    assert len(inst) == (n - 1) * K  # every finite row, every class (no overlap between rows)
    assert 1 not in rows.tolist()
    torch.testing.assert_close(inst.ood_scores, ood[rows])
    for i in range(len(inst)):  # box and class confidence come from the same row
        r, c = int(rows[i]), int(inst.pred_classes[i])
        torch.testing.assert_close(inst.pred_boxes.tensor[i], boxes[r, 4 * c: 4 * c + 4])
        torch.testing.assert_close(inst.scores[i], probs[r, c])
    # the naive indexing (detectron2's kept indices into the unfiltered rows) would be wrong here
    from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image

    _, filtered_rows = fast_rcnn_inference_single_image(boxes, probs, (200, 200), 0.0, 0.5, 100)
    assert not torch.equal(ood[filtered_rows], inst.ood_scores)


def test_predictor_inference_with_nan_box_and_every_score():
    torch.manual_seed(0)
    layer = OODFastRCNNOutputLayers(ShapeSpec(channels=D), box_classifier=build_head("softmax", D, K), **_kwargs())
    props = _proposals()
    feats = torch.randn(sum(len(p) for p in props), D)
    logits, deltas = layer(feats)
    deltas = deltas.clone()
    deltas[2] = float("nan")  # image 0, row 2
    insts, kept = layer.inference((logits, deltas), props, features=feats)
    msp = torch.softmax(logits[:, :K], dim=1).max(dim=1).values
    energy = torch.logsumexp(logits[:, :K], dim=1)
    roi_conf = torch.softmax(logits, dim=1)[:, :K].max(dim=1).values
    names = list(layer.box_classifier.head.supported_scores)
    offset = 0
    for inst, rows, p in zip(insts, kept, props):
        assert len(inst) > 0
        g = rows + offset  # global row of each output box
        assert 2 not in g.tolist()
        torch.testing.assert_close(inst.ood_scores, msp[g])
        torch.testing.assert_close(inst.ood_score_table[:, names.index("msp")], msp[g])
        torch.testing.assert_close(inst.ood_score_table[:, names.index("energy")], energy[g])
        torch.testing.assert_close(inst.roi_conf, roi_conf[g])
        offset += len(p)


def test_matches_stock_detectron2_for_softmax_head():
    """Same weights: the softmax OOD head gives detectron2's detections, losses and probs."""
    torch.manual_seed(0)
    stock = FastRCNNOutputLayers(ShapeSpec(channels=D), **_kwargs())
    ours = OODFastRCNNOutputLayers(ShapeSpec(channels=D), box_classifier=build_head("softmax", D, K), **_kwargs())
    missing, unexpected = ours.load_state_dict(stock.state_dict(), strict=False)  # stock key names
    assert not unexpected and all("iteration" in m or "thresholds" in m or "conf_thresh" in m for m in missing)
    feats = torch.randn(11, D)
    props = _proposals(with_gt=True)
    ps, po = stock(feats), ours(feats)
    torch.testing.assert_close(ps[0], po[0])
    a, _ = stock.inference(ps, props)
    b, _ = ours.inference(po, props, features=feats)
    for x, y in zip(a, b):
        torch.testing.assert_close(x.pred_boxes.tensor, y.pred_boxes.tensor)
        torch.testing.assert_close(x.scores, y.scores)
        assert torch.equal(x.pred_classes, y.pred_classes)
    from detectron2.utils.events import EventStorage

    with EventStorage():
        ls = stock.losses(ps, props)
    lo = ours.losses(po, props, features=feats)
    torch.testing.assert_close(lo["loss_cls"], ls["loss_cls"])
    torch.testing.assert_close(lo["loss_box_reg"], ls["loss_box_reg"])
    gt = torch.cat([p.gt_classes for p in props])
    torch.testing.assert_close(lo["loss_cls"], F.cross_entropy(po[0], gt))


def test_predict_probs_is_the_heads_confidence():
    torch.manual_seed(0)
    head = build_head("isomaxplus", D, K)
    layer = OODFastRCNNOutputLayers(ShapeSpec(channels=D), box_classifier=head, **_kwargs())
    props = _proposals()
    feats = torch.randn(11, D)
    logits, deltas = layer(feats)
    probs = torch.cat(layer.predict_probs((logits, deltas), props))
    torch.testing.assert_close(probs, torch.softmax(head.confidence_logits(logits), dim=1))
    assert not torch.allclose(probs, torch.softmax(logits, dim=1))  # scale 10 vs 1


def test_loss_weights_and_regularizer_losses():
    torch.manual_seed(0)
    clf = OODBoxClassifier(build_head("softmax", D, K), [build_regularizer("fpr", alpha=1.0)])
    layer = OODFastRCNNOutputLayers(
        ShapeSpec(channels=D), box_classifier=clf, **_kwargs(loss_weight={"loss_box_reg": 2.0})
    )
    props = _proposals(n_per_image=(12, 12), with_gt=True, seed=3)
    for p in props:  # enough foreground ROIs for FPR's 4-way mix
        p.gt_classes[:8] = torch.arange(8) % K
    feats = torch.randn(24, D, requires_grad=True)
    pred = layer(feats)
    losses = layer.losses(pred, props, features=feats)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_fpr"}
    assert all(torch.isfinite(v) for v in losses.values())
    gt = torch.cat([p.gt_classes for p in props])
    boxes = torch.cat([p.proposal_boxes.tensor for p in props])
    gt_boxes = torch.cat([p.gt_boxes.tensor for p in props])
    torch.testing.assert_close(losses["loss_box_reg"], 2.0 * layer.box_reg_loss(boxes, gt_boxes, pred[1], gt))
    with pytest.raises(ValueError, match="need the box features"):
        layer.losses(pred, props)
    sum(losses.values()).backward()
    assert feats.grad is not None and torch.isfinite(feats.grad).all()


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="USE_SIGMOID_CE"):
        OODFastRCNNOutputLayers(ShapeSpec(channels=D), box_classifier=build_head("softmax", D, K),
                                **_kwargs(use_sigmoid_ce=True))
    with pytest.raises(ValueError, match="classes"):
        OODFastRCNNOutputLayers(ShapeSpec(channels=D), box_classifier=build_head("softmax", D, K + 1), **_kwargs())
    with pytest.raises(ValueError, match="8-d features"):
        OODFastRCNNOutputLayers(ShapeSpec(channels=D), box_classifier=build_head("softmax", 8, K), **_kwargs())
    with pytest.raises(TypeError):
        OODFastRCNNOutputLayers(ShapeSpec(channels=D), box_classifier=torch.nn.Linear(D, K + 1), **_kwargs())
