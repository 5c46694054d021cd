"""OODROIHeads: built from a config for every head / regularizer and without a config."""
import pytest

pytest.importorskip("detectron2", reason="detectron2 is not installed (it is on no package registry; see docs/detectron2.md)")

import torch  # noqa: E402
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling import ROI_HEADS_REGISTRY, build_roi_heads  # noqa: E402
from detectron2.modeling.box_regression import Box2BoxTransform  # noqa: E402
from detectron2.modeling.matcher import Matcher  # noqa: E402
from detectron2.modeling.poolers import ROIPooler  # noqa: E402
from detectron2.modeling.roi_heads import FastRCNNConvFCHead  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from ood_det.d2 import OODFastRCNNOutputLayers, OODROIHeads  # noqa: E402
from ood_det.heads import HEADS, build_head  # noqa: E402

from .conftest import IMAGE_SIZE, NUM_CLASSES, make_tiny_cfg, random_batch  # noqa: E402

FPN_CHANNELS = 32
LEVELS = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}


def _features(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(n, FPN_CHANNELS, IMAGE_SIZE // s, IMAGE_SIZE // s, generator=g) for k, s in LEVELS.items()}


def _proposals(n=2, per_image=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        xy = torch.rand(per_image, 2, generator=g) * IMAGE_SIZE * 0.6
        wh = 8 + torch.rand(per_image, 2, generator=g) * IMAGE_SIZE * 0.4
        p = Instances((IMAGE_SIZE, IMAGE_SIZE))
        p.proposal_boxes = Boxes(torch.cat([xy, (xy + wh).clamp(max=IMAGE_SIZE)], dim=1))
        p.objectness_logits = torch.randn(per_image, generator=g)
        out.append(p)
    return out


def _targets(seed=0):
    return [b["instances"] for b in random_batch(seed=seed)]


def _shapes():
    return {k: ShapeSpec(channels=FPN_CHANNELS, stride=s) for k, s in LEVELS.items()}


def _train_and_infer(roi_heads):
    torch.manual_seed(0)
    roi_heads.train()
    with EventStorage():
        _, losses = roi_heads(None, _features(), _proposals(), _targets())
    roi_heads.eval()
    with torch.no_grad():
        insts, _ = roi_heads(None, _features(seed=1), _proposals(seed=1))
    return losses, insts


def test_registered():
    assert ROI_HEADS_REGISTRY.get("OODROIHeads") is OODROIHeads


VARIANTS = [(h, {}) for h in sorted(HEADS)] + [
    ("softmax", {"OUTLIERS": "vos", "REGULARIZERS": ["vos"]}),
    ("softmax", {"OUTLIERS": "vos", "REGULARIZERS": ["greg"]}),
    ("isomaxplus", {"REGULARIZERS": ["energy", "fpr"], "OUTLIERS": "vos"}),
]


@pytest.mark.parametrize("head,ood", VARIANTS, ids=[f"{h}-{'+'.join(o.get('REGULARIZERS', [])) or 'plain'}" for h, o in VARIANTS])
def test_built_from_config(head, ood):
    cfg = make_tiny_cfg(head, **ood)
    cfg.MODEL.OOD.VOS.QUEUE_SIZE = 4
    cfg.MODEL.OOD.VOS.START_ITER = 0
    cfg.MODEL.OOD.VOS.NUM_SAMPLES = 200
    cfg.MODEL.OOD.VOS.COV_EPS = 1.0  # 4 features per class: a rank-deficient covariance
    cfg.MODEL.OOD.GREG.NUM_CLUSTERS = 2
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    roi = build_roi_heads(cfg, _shapes())
    assert isinstance(roi, OODROIHeads)
    pred = roi.box_predictor
    assert isinstance(pred, OODFastRCNNOutputLayers)
    clf = pred.box_classifier
    assert clf.head.name == head and clf.head.in_features == cfg.MODEL.ROI_BOX_HEAD.FC_DIM
    assert [r.name for r in clf.regularizers] == list(ood.get("REGULARIZERS", []))
    losses, insts = _train_and_infer(roi)
    assert {"loss_cls", "loss_box_reg"} <= set(losses)
    for r in ood.get("REGULARIZERS", []):
        assert any(k.startswith(f"loss_{r}") for k in losses), (r, list(losses))
    for k, v in losses.items():
        assert torch.isfinite(v), (k, v)
    assert int(clf.iteration) == 1
    if clf.outlier_source is not None:
        # the queues were filled from the box features passed by _forward_box
        assert int(clf.outlier_source.count.sum()) > 0
    for inst in insts:
        assert len(inst) > 0 and inst.ood_scores.shape == inst.scores.shape
        assert torch.isfinite(inst.ood_scores).all()


def test_built_without_config():
    """@configurable: the same ROI heads from plain keyword arguments."""
    torch.manual_seed(0)
    fc = 64
    pooler = ROIPooler((7, 7), scales=[1.0 / LEVELS[k] for k in ("p2", "p3", "p4", "p5")],
                       sampling_ratio=0, pooler_type="ROIAlignV2")
    box_head = FastRCNNConvFCHead(ShapeSpec(channels=FPN_CHANNELS, height=7, width=7), conv_dims=[], fc_dims=[fc, fc])
    predictor = OODFastRCNNOutputLayers(
        box_head.output_shape,
        box_classifier=build_head("dismax", fc, NUM_CLASSES),
        box2box_transform=Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)),
        num_classes=NUM_CLASSES,
        test_score_thresh=0.0,
    )
    roi = OODROIHeads(
        box_in_features=["p2", "p3", "p4", "p5"],
        box_pooler=pooler,
        box_head=box_head,
        box_predictor=predictor,
        num_classes=NUM_CLASSES,
        batch_size_per_image=16,
        positive_fraction=0.25,
        proposal_matcher=Matcher([0.5], [0, 1], allow_low_quality_matches=False),
    )
    losses, insts = _train_and_infer(roi)
    assert set(losses) == {"loss_cls", "loss_box_reg"} and all(torch.isfinite(v) for v in losses.values())
    # the ood score is DisMax's default (MMLES) of the kept rows: recompute it from the logits
    roi.eval()
    feats, props = _features(seed=1), _proposals(seed=1)
    with torch.no_grad():
        x = roi.box_head(roi.box_pooler([feats[f] for f in roi.box_in_features], [p.proposal_boxes for p in props]))
        logits, deltas = predictor(x)
        expected_all = predictor.box_classifier.head.ood_score(logits, score="mmles")
        insts2, kept = predictor.inference((logits, deltas), props, features=x)
    n0 = len(props[0])
    torch.testing.assert_close(insts2[0].ood_scores, expected_all[:n0][kept[0]])
    torch.testing.assert_close(insts2[1].ood_scores, expected_all[n0:][kept[1]])
    torch.testing.assert_close(insts[0].ood_scores, insts2[0].ood_scores)


def test_full_model_forward(d2_tiny_cfg):
    """GeneralizedRCNN with OODROIHeads end to end: training losses and ood_scores in the output
    (which detector_postprocess rescales boxes for but leaves untouched)."""
    from detectron2.modeling import build_model

    torch.manual_seed(0)
    model = build_model(d2_tiny_cfg("isomaxplus"))
    with EventStorage():
        losses = model(random_batch())
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        batch = random_batch()
        batch[1]["height"], batch[1]["width"] = 2 * IMAGE_SIZE, 3 * IMAGE_SIZE
        out = model([{k: v for k, v in b.items() if k != "instances"} for b in batch])
    inst = out[1]["instances"]
    assert inst.image_size == (2 * IMAGE_SIZE, 3 * IMAGE_SIZE)
    assert len(inst.ood_scores) == len(inst) > 0
    assert (inst.ood_scores <= 0).all()  # mds = -|s| * min distance
