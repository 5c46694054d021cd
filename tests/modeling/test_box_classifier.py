"""OODBoxClassifier with every regularizer at once, built from a config."""
import pytest
import torch
from fvcore.common.config import CfgNode as CN
from torch import nn

from ood_det.config import add_ood_config
from ood_det.heads import HEADS
from ood_det.modeling.box_classifier import OODBoxClassifier

K, D = 3, 8


def _cfg(head):
    cfg = CN()
    cfg.MODEL = CN()
    cfg.MODEL.ROI_HEADS = CN()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = K
    cfg.DATASETS = CN()
    cfg.TEST = CN()
    add_ood_config(cfg)
    cfg.MODEL.OOD.HEAD = head
    cfg.MODEL.OOD.OUTLIERS = "vos"
    cfg.MODEL.OOD.REGULARIZERS = ["vos", "energy", "greg", "fpr"]
    cfg.MODEL.OOD.VOS.QUEUE_SIZE = 6
    cfg.MODEL.OOD.VOS.NUM_SAMPLES = 100
    cfg.MODEL.OOD.VOS.NUM_SELECT = 4  # 12 candidates for GReg+ sampling
    cfg.MODEL.OOD.VOS.START_ITER = 3
    cfg.MODEL.OOD.GREG.NUM_CLUSTERS = 5
    return cfg


def _batch(step, r=24):
    g = torch.Generator().manual_seed(step)
    x = torch.randn(r, 12, generator=g)
    labels = torch.arange(r) % (K + 1)  # every class, and background, in each batch
    x[:, : K + 1] += 3.0 * nn.functional.one_hot(labels, K + 1).float()
    return x, labels


@pytest.mark.parametrize("head", sorted(HEADS))
def test_all_regularizers_together(head):
    torch.manual_seed(0)
    cfg = _cfg(head)
    box_head = nn.Sequential(nn.Linear(12, D), nn.ReLU())
    clf = OODBoxClassifier.from_config(cfg, D)
    assert [r.name for r in clf.regularizers] == ["vos", "energy", "greg", "fpr"]
    params = list(box_head.parameters()) + list(clf.parameters())
    opt = torch.optim.SGD(params, lr=0.01)
    clf.train()
    names = {"loss_vos", "loss_energy", "loss_greg_grad", "loss_greg_energy", "loss_fpr"}
    for step in range(6):
        x, labels = _batch(step)
        feats = box_head(x)
        logits = clf(feats)
        losses = clf.losses(feats, logits, labels)
        assert names <= set(losses)
        for k, v in losses.items():
            assert v.dim() == 0 and torch.isfinite(v), (k, v)
        if step < 3:  # VOS warm-up: outlier terms are zero
            assert all(losses[k].item() == 0.0 for k in ("loss_vos", "loss_energy", "loss_greg_grad"))
        else:
            assert losses["loss_vos"].item() > 0
        opt.zero_grad()
        sum(losses.values()).backward()
        head_grads = [p.grad for p in clf.head.parameters() if p.requires_grad]
        assert head_grads and all(gr is not None and torch.isfinite(gr).all() for gr in head_grads)
        assert any(gr.abs().sum() > 0 for gr in head_grads)
        assert box_head[0].weight.grad.abs().sum() > 0
        opt.step()
    assert int(clf.iteration) == 6
    assert clf.outlier_source.is_full
    # GReg+ sampling narrowed 12 candidates to at most 5 clusters
    out = clf.outlier_source.sample(10)
    assert out.shape == (K * 4, D)
    assert clf.regularizers[2].select_outliers(clf.head, out).shape[0] <= 5
    # the regularizer weights got gradients (their parameters are in the classifier)
    vos = clf.regularizers[0]
    assert vos.energy_weight.grad is not None and vos.energy_weight.grad.abs().sum() > 0


def test_empty_batch_after_warmup():
    torch.manual_seed(0)
    clf = OODBoxClassifier.from_config(_cfg("softmax"), D)
    clf.train()
    for step in range(4):
        x, labels = _batch(step)
        feats = torch.relu(x[:, :D])
        clf.losses(feats, clf(feats), labels)
    feats = torch.zeros(0, D, requires_grad=True)
    losses = clf.losses(feats, clf(feats), torch.zeros(0, dtype=torch.long))
    for k, v in losses.items():
        assert torch.isfinite(v) and v.item() == 0.0, k
    sum(losses.values()).backward()


def test_state_dict_round_trip_keeps_queues_and_margins():
    torch.manual_seed(0)
    a = OODBoxClassifier.from_config(_cfg("softmax"), D)
    a.train()
    for step in range(5):
        x, labels = _batch(step)
        feats = torch.relu(x[:, :D])
        a.losses(feats, a(feats), labels)
    b = OODBoxClassifier.from_config(_cfg("softmax"), D)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.outlier_source.queue, b.outlier_source.queue)
    assert int(b.iteration) == 5
    assert b.regularizers[1].margins.is_frozen
    assert b.regularizers[1].margins.m_in.item() == a.regularizers[1].margins.m_in.item()
