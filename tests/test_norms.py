import math

import pytest
import torch

from advx.norms import L1, L2, Linf, get_norm


@pytest.fixture
def x():
    return torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("norm,eps", [(Linf(), 0.1), (L2(), 1.5), (L1(), 8.0)])
def test_random_start_and_projection_stay_in_the_ball(norm, eps, x):
    gen = torch.Generator().manual_seed(0)
    start = norm.random_start(x, eps, gen)
    assert (norm.size(start - x) <= eps + 1e-6).all()
    assert (norm.size(start - x) > 0).all()
    far = x + 10 * torch.randn(x.shape, generator=gen)
    projected = norm.project(far, x, eps)
    assert torch.allclose(norm.size(projected - x), torch.full((5,), eps), atol=1e-5)
    inside = norm.project(start, x, eps)
    assert torch.allclose(inside, start)  # points inside are left alone


def test_directions_have_unit_norm(x):
    g = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(L2().size(L2().direction(g)), torch.ones(5), atol=1e-6)
    assert torch.equal(Linf().direction(g), g.sign())
    assert torch.equal(L2().direction(torch.zeros_like(g)), torch.zeros_like(g))  # no NaN


def test_get_norm_names():
    assert isinstance(get_norm("inf"), Linf) and isinstance(get_norm("linf"), Linf)
    assert isinstance(get_norm("2"), L2) and isinstance(get_norm(2), L2)
    assert isinstance(get_norm(float("inf")), Linf)
    assert isinstance(get_norm("1"), L1) and isinstance(get_norm(1), L1) and isinstance(get_norm("l1"), L1)
    with pytest.raises(ValueError, match="norm must be one of 'inf', '2', '1'"):
        get_norm("l3")


# ----------------------------------------------------------------------------- L1
def brute_l1_projection(v, x, eps, bounds):
    """Projection onto the L1 ball and the box by bisection on the soft threshold (the KKT
    form), sample by sample: an independent check of the sort-based one."""
    d = (v - x).flatten(1)
    low, high = (bounds[0] - x).flatten(1), (bounds[1] - x).flatten(1)
    out = []
    for i in range(len(d)):
        def point(lam):
            return (d[i].sign() * (d[i].abs() - lam).clamp_min(0)).clamp(low[i], high[i])
        if point(0.0).abs().sum() <= eps:
            out.append(point(0.0))
            continue
        lo, hi = 0.0, float(d[i].abs().max())
        for _ in range(200):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if point(mid).abs().sum() > eps else (lo, mid)
        out.append(point(hi))
    return x + torch.stack(out).view_as(x)


@pytest.mark.parametrize("eps", [0.3, 2.0, 8.0, 1e3])
@pytest.mark.parametrize("bounds", [(0.0, 1.0), (-0.5, 2.0), None])
def test_l1_projection_is_exact(eps, bounds):
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(6, 1, 5, 5, generator=gen, dtype=torch.float64)
    v = x + 0.8 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    got = L1().project(v, x, eps, bounds)
    box = bounds if bounds is not None else (-math.inf, math.inf)
    torch.testing.assert_close(got, brute_l1_projection(v, x, eps, box), rtol=0, atol=1e-9)
    assert (L1().size(got - x) <= eps * (1 + 1e-12)).all()
    if bounds is not None:
        assert got.min() >= bounds[0] and got.max() <= bounds[1]
    # nearer to v than any other point of the set we try: the clipped, rescaled point
    other = L1().project(v, x, eps).clamp(*box)
    other = x + (other - x) * torch.clamp(eps / L1().size(other - x), max=1).view(-1, 1, 1, 1)
    assert ((got - v).flatten(1).norm(dim=1) <= (other - v).flatten(1).norm(dim=1) + 1e-12).all()


def test_l1_direction_is_sparse_unit_and_avoids_the_box():
    g = torch.randn(3, 1, 10, 10, generator=torch.Generator().manual_seed(2))
    step = L1(sparsity=0.05).direction(g)
    assert torch.allclose(L1().size(step), torch.ones(3))
    assert ((step != 0).flatten(1).sum(1) == 5).all()  # the 5 largest |g|
    top = g.flatten(1).abs().topk(5, dim=1).indices
    assert torch.equal(step.flatten(1).gather(1, top).sign(), g.flatten(1).gather(1, top).sign())
    x_adv = torch.where(g > 0, 1.0, 0.5)  # every pixel the gradient pushes up sits on the upper bound
    boxed = L1(sparsity=0.05).direction_in_box(g, x_adv, (0.0, 1.0))
    assert (boxed.flatten(1)[(g > 0).flatten(1)] == 0).all() and torch.allclose(L1().size(boxed), torch.ones(3))


@pytest.mark.parametrize("norm", [Linf(), L2(), L1()])
def test_to_hyperplane_reaches_it_within_the_box_and_nothing_smaller_does(norm):
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(8, 30, generator=gen, dtype=torch.float64)
    c = torch.randn(8, generator=gen, dtype=torch.float64)
    lower, upper = -torch.rand(8, 30, generator=gen, dtype=torch.float64), torch.rand(8, 30, generator=gen,
                                                                                        dtype=torch.float64)
    d = norm.to_hyperplane(w, c, lower, upper)
    torch.testing.assert_close((w * d).sum(1), c)
    assert (d >= lower - 1e-12).all() and (d <= upper + 1e-12).all()
    size = norm.size(d.view(8, 1, 1, 30))
    for _ in range(200):  # random feasible points on the hyperplane are never smaller
        z = (lower + (upper - lower) * torch.rand(8, 30, generator=gen, dtype=torch.float64))
        z = z * torch.rand(8, 1, generator=gen, dtype=torch.float64) ** 3
        s = c / (w * z).sum(1)
        ok = (s > 0) & (s <= 1)  # scaling towards 0 keeps the box
        other = norm.size((z * s.unsqueeze(1)).view(8, 1, 1, 30))
        assert (size[ok] <= other[ok] + 1e-9).all()
    far = norm.to_hyperplane(w, c * 1e6, lower, upper)  # out of reach: every coordinate at its cap
    torch.testing.assert_close(far.abs(), torch.where(w * c.sign().unsqueeze(1) > 0, upper, -lower) * (w != 0))


def test_l1_random_start_is_in_the_ball_and_spread():
    x = torch.rand(200, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    start = L1().random_start(x, 3.0, torch.Generator().manual_seed(1))
    size = L1().size(start - x)
    assert (size <= 3.0 + 1e-5).all() and size.min() > 0
    assert 0.8 < (size / 3.0).mean() < 1.0  # uniform in the ball: E[r] = d / (d + 1) of the radius


@pytest.mark.parametrize("sparsity", [0, -0.1, 1.5])
def test_l1_sparsity_out_of_range_is_an_error_naming_it(sparsity):
    with pytest.raises(ValueError, match=f"sparsity must be in \\(0, 1\\], got {sparsity}"):
        L1(sparsity=sparsity)
