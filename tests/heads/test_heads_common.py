"""Properties every head must have: registry / config construction, R = 0, fp16 / bf16, gradients,
state_dict round trip, all supported scores, and learning a separable toy problem."""
import pytest
import torch
from fvcore.common.config import CfgNode as CN

from ood_det.heads import HEADS, OODHead, build_head, build_head_from_cfg, get_head_class


from .conftest import fresh, variant

ALL = ["softmax", "isomax", "isomaxplus", "dismax", "cfl", "cfl_linear"]


def _cfg(head="softmax", num_classes=3):
    cfg = CN()
    cfg.MODEL = CN()
    cfg.MODEL.ROI_HEADS = CN()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.OOD = CN()
    cfg.MODEL.OOD.HEAD = head
    for cls in HEADS.values():
        cls.add_config(cfg.MODEL.OOD)
    return cfg


def test_registry_has_all_five():
    assert {variant(n)[0] for n in ALL} == set(HEADS)
    for name in HEADS:
        head = build_head(name, in_features=8, num_classes=4)
        assert isinstance(head, OODHead) and head.name == name
        assert head.default_score in head.supported_scores
        assert head(torch.randn(2, 8)).shape == (2, 5)
    with pytest.raises(KeyError, match="unknown OOD head 'nope'"):
        get_head_class("nope")


@pytest.mark.parametrize("name", ALL)
def test_build_from_cfg(name):
    name, kw = variant(name)
    cfg = _cfg(name, num_classes=6)
    for key, value in kw.items():
        setattr(getattr(cfg.MODEL.OOD, name.upper()), key.upper(), value)
    head = build_head_from_cfg(cfg, in_features=12)
    assert type(head) is HEADS[name] and head.num_classes == 6 and head.in_features == 12
    for key, value in kw.items():
        assert getattr(head, key) == value


def test_from_config_reads_keys():
    cfg = _cfg()
    cfg.MODEL.OOD.ISOMAX.ENTROPIC_SCALE = 5.0
    cfg.MODEL.OOD.ISOMAXPLUS.ENTROPIC_SCALE = 7.0
    cfg.MODEL.OOD.DISMAX.ENTROPIC_SCALE = 3.0
    cfg.MODEL.OOD.DISMAX.CALIBRATE = False
    cfg.MODEL.OOD.CFL.GAMMA = 1.5
    cfg.MODEL.OOD.CFL.MARGIN = 0.7
    cfg.MODEL.OOD.CFL.M_IN = 2.0
    cfg.MODEL.OOD.CFL.SCALE_INIT = 4.0
    build = lambda n: HEADS[n](**HEADS[n].from_config(cfg, 8))  # noqa: E731
    assert build("isomax").entropic_scale == 5.0
    assert build("isomaxplus").entropic_scale == 7.0
    dm = build("dismax")
    assert dm.entropic_scale == 3.0 and dm.calibrate is False
    cfl = build("cfl")
    assert (cfl.gamma, cfl.margin, cfl.m_in) == (1.5, 0.7, 2.0)
    assert float(cfl.distance_scale.detach()) == 4.0


def test_add_ood_config_on_fvcore_cfgnode():
    pytest.importorskip("ood_det.regularizers.vos", reason="the regularizers have not landed yet")
    from ood_det.config import add_ood_config

    cfg = CN()
    cfg.MODEL = CN()
    cfg.MODEL.ROI_HEADS = CN()
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 20
    cfg.DATASETS = CN()
    cfg.DATASETS.TEST = ("voc_2007_test",)
    cfg.TEST = CN()
    add_ood_config(cfg)
    for key in ("ISOMAX", "ISOMAXPLUS", "DISMAX", "CFL"):
        assert key in cfg.MODEL.OOD
    assert cfg.MODEL.OOD.CFL.GAMMA == 2.0
    cfg.merge_from_list(["MODEL.OOD.HEAD", "dismax", "MODEL.OOD.DISMAX.ENTROPIC_SCALE", "4.0"])
    head = build_head_from_cfg(cfg, 32)
    assert head.name == "dismax" and head.entropic_scale == 4.0 and head.num_classes == 20
    # round trip through YAML (what checkpoints store)
    again = CN.load_cfg(cfg.dump())
    assert list(again.MODEL.OOD.DISMAX.TEMPERATURE_BOUNDS) == [1e-3, 100.0]
    assert HEADS["dismax"](**HEADS["dismax"].from_config(again, 8)).temperature_bounds == (1e-3, 100.0)


@pytest.mark.parametrize("name", ALL)
def test_empty_batch(name, make_head):
    head = make_head(name)
    feats = torch.zeros(0, 16, requires_grad=True)
    logits = head(feats)
    assert logits.shape == (0, 4)
    losses = head.loss(logits, torch.zeros(0, dtype=torch.long), features=feats,
                       outlier_features=torch.zeros(0, 16))
    total = sum(losses.values())
    assert total.dim() == 0 and float(total.detach()) == 0.0
    total.backward()  # still part of the graph
    for p in head.parameters():
        assert p.grad is not None and torch.all(p.grad == 0)
    for s in head.supported_scores:
        assert head.ood_score(logits.detach(), features=feats.detach(), score=s).shape == (0,)
    assert head.predict_probs(logits.detach()).shape == (0, 4)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(name, dtype, make_head, toy):
    head = make_head(name)
    x, y, ood = toy
    # large magnitudes: squared norms overflow fp16 (65504) if computed in half precision
    feats = (x * 200).to(dtype).requires_grad_()
    logits = head(feats)
    assert torch.isfinite(logits).all()
    losses = head.loss(logits, y, features=feats, outlier_features=(ood * 200).to(dtype))
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert torch.isfinite(feats.grad).all()
    for p in head.parameters():
        assert torch.isfinite(p.grad).all()
    for s in head.supported_scores:
        sc = head.ood_score(logits.detach(), features=feats.detach(), score=s)
        assert torch.isfinite(sc).all() and sc.dtype == torch.float32
    assert torch.isfinite(head.predict_probs(logits.detach())).all()


@pytest.mark.parametrize("name", ALL)
def test_zero_features_no_nan(name, make_head):
    # all-zero ReLU features (and IsoMax's prototypes at 0): no NaN anywhere
    head = make_head(name)
    feats = torch.zeros(4, 16, requires_grad=True)
    logits = head(feats)
    total = sum(head.loss(logits, torch.tensor([0, 1, 2, 3]), features=feats).values())
    total.backward()
    assert torch.isfinite(logits).all() and torch.isfinite(total)
    assert torch.isfinite(feats.grad).all()
    for p in head.parameters():
        assert torch.isfinite(p.grad).all()


@pytest.mark.parametrize("name", ALL)
def test_gradients_reach_every_parameter(name, make_head, toy):
    head = make_head(name)
    x, y, ood = toy
    feats = x.clone().requires_grad_()
    losses = head.loss(head(feats), y, features=feats, outlier_features=ood)
    sum(losses.values()).backward()
    for pname, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname
    assert feats.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip(name, make_head, toy, train):
    head = make_head(name)
    x, y, _ = toy
    train(head, x, y, steps=3)
    head.post_fit(head(x).detach(), y, x)
    other = fresh(name)
    other.load_state_dict(head.state_dict())
    with torch.no_grad():
        for s in head.supported_scores:
            torch.testing.assert_close(other.ood_score(other(x), x, s), head.ood_score(head(x), x, s))
        torch.testing.assert_close(other.predict_probs(other(x)), head.predict_probs(head(x)))
    for v in head.state_dict().values():
        assert isinstance(v, torch.Tensor)


@pytest.mark.parametrize("name", ALL)
def test_bad_input_messages(name, make_head):
    head = make_head(name)
    with pytest.raises(ValueError, match=r"\[R, 16\]"):
        head(torch.zeros(3, 15))
    logits = head(torch.zeros(3, 16))
    with pytest.raises(ValueError, match="labels must be"):
        head.loss(logits, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="does not support score 'nope'"):
        head.ood_score(logits, score="nope")
    with pytest.raises(ValueError, match="must be positive"):
        build_head(variant(name)[0], 0, 3, **variant(name)[1])


@pytest.mark.parametrize("name", ["softmax", "isomax"])
def test_default_post_fit_is_a_noop(name, make_head):
    head = make_head(name)
    before = {k: v.clone() for k, v in head.state_dict().items()}
    assert head.post_fit(torch.zeros(2, 4), torch.tensor([0, 3])) == {}
    for k, v in head.state_dict().items():
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("name", ALL)
def test_learns_separable_toy(name, make_head, toy, train, auroc):
    """A few dozen SGD steps: ID points classified, and far-away points score lower than ID."""
    head = make_head(name)
    x, y, ood = toy
    loss0 = sum(head.loss(head(x), y, features=x).values()).item()
    loss = train(head, x, y, steps=60)
    assert loss < 0.1 * loss0
    with torch.no_grad():
        assert (head(x).argmax(1) == y).float().mean() > 0.95
    head.post_fit(head(x).detach(), y, x)  # DisMax temperature / CFL weights on "ID val" = train
    value, s_id, s_ood = auroc(head, x, y, ood)
    assert s_id.mean() > s_ood.mean()
    assert value > 0.9, f"{name}/{head.default_score}: AUROC {value:.3f}"


@pytest.mark.parametrize("name", ALL)
def test_under_autocast(name, make_head, toy):
    head = make_head(name)
    x, y, ood = toy
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = head(x * 100)
        total = sum(head.loss(logits, y, features=x, outlier_features=ood).values())
    total.backward()
    assert torch.isfinite(total)
    if name not in ("softmax", "cfl_linear"):  # distance logits are computed with autocast off
        assert logits.dtype == torch.float32
        torch.testing.assert_close(logits, head(x * 100), rtol=1e-5, atol=1e-5)
