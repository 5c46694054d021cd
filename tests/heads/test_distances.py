"""The hand-written distance kernels of ood_det/heads/_utils.py against torch references."""
import pytest
import torch
import torch.nn.functional as F

from ood_det.heads._utils import (
    _NormalizedSquaredDistances,
    _SquaredDistances,
    euclidean_distances,
    normalized_distances,
)


def _pair(r=13, p=5, d=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(r, d, generator=g, dtype=dtype), torch.randn(p, d, generator=g, dtype=dtype)


@pytest.mark.parametrize("fn", [_SquaredDistances, _NormalizedSquaredDistances])
def test_gradcheck(fn):
    x, y = _pair()
    assert torch.autograd.gradcheck(fn.apply, (x.requires_grad_(), y.requires_grad_()))


@pytest.mark.parametrize(
    "ours, ref",
    [
        (euclidean_distances, lambda x, y: torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")),
        (normalized_distances, lambda x, y: torch.cdist(F.normalize(x), F.normalize(y),
                                                        compute_mode="donot_use_mm_for_euclid_dist")),
    ],
)
def test_values_and_gradients_match_reference(ours, ref):
    x, y = _pair(r=64, p=9, d=32, seed=1, dtype=torch.float32)
    x = (x * 3).requires_grad_()
    y = y.requires_grad_()
    g = torch.randn(64, 9)
    a = ours(x, y)
    a.backward(g)
    ga = (x.grad.clone(), y.grad.clone())
    x.grad = y.grad = None
    b = ref(x, y)
    b.backward(g)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ga[0], x.grad, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(ga[1], y.grad, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("fn", [euclidean_distances, normalized_distances])
def test_zero_rows_and_zero_distance(fn):
    x = torch.zeros(3, 4, requires_grad=True)
    y = torch.zeros(2, 4, requires_grad=True)
    x2 = torch.cat([x, torch.ones(1, 4)])
    y2 = torch.cat([y, torch.ones(1, 4)])  # row 3 of x2 is at zero distance from row 2 of y2
    d = fn(x2, y2)
    d.sum().backward()
    assert torch.isfinite(d).all() and torch.isfinite(x.grad).all() and torch.isfinite(y.grad).all()
    assert d[3, 2].item() < 1e-3
    if fn is normalized_distances:
        # F.normalize maps a zero row to 0: its distance to a unit vector is 1
        assert d[0, 2].item() == pytest.approx(1.0, abs=1e-6)


def test_output_is_float32_for_half_inputs():
    x, y = _pair(dtype=torch.float16)
    for fn in (euclidean_distances, normalized_distances):
        assert fn(x * 300, y).dtype == torch.float32
        assert torch.isfinite(fn(x * 300, y)).all()


@pytest.mark.parametrize("name,attr,kw", [
    ("isomaxplus", "prototypes", "prototype_init_std"),
    ("dismax", "prototypes", "prototype_init_std"),
    ("cfl", "centres", "centre_init_std"),
])
def test_prototype_init_std_sets_the_norm_and_the_turning_speed(name, attr, kw):
    """std = 1/sqrt(D) starts prototypes at unit norm; one SGD step then turns them about
    ||p||² = D times more than at the papers' std = 1 (the gradient of a normalised distance
    scales as 1 / ||p||)."""
    import torch.nn.functional as F

    from ood_det.heads import build_head

    d = 256
    angles = {}
    for std in (1.0, d ** -0.5):
        torch.manual_seed(0)
        head = build_head(name, in_features=d, num_classes=3, **{kw: std})
        p = getattr(head, attr)
        norms = p.detach().norm(dim=1)
        assert torch.allclose(norms, torch.full_like(norms, std * d ** 0.5), rtol=0.2)
        before = F.normalize(p.detach().clone(), dim=1)
        z = torch.rand(32, d)
        losses = head.loss(head(z), torch.arange(32) % 4, features=z)
        losses["loss_cls"].backward()
        with torch.no_grad():
            p -= 0.1 * p.grad
        angles[std] = (F.normalize(p.detach(), dim=1) - before).norm(dim=1).mean().item()  # ~ angle
    assert angles[d ** -0.5] > 50 * angles[1.0] > 0
    with pytest.raises(ValueError, match="init std must be > 0"):
        build_head(name, in_features=d, num_classes=3, **{kw: 0.0})
