import itertools
import math

import pytest
import torch

from advx.norms import L0, L1, L2, Linf, Patch, get_norm
from advx.validate import InputError


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


# ----------------------------------------------------------------------------- L0
def test_l0_size_counts_pixels_over_their_channels():
    delta = torch.zeros(3, 3, 4, 4)
    delta[0, 0, 1, 1] = 0.5                 # one channel of a pixel: one pixel
    delta[0, :, 2, 3] = -0.1                # all three channels of another: one pixel
    delta[1, 1, 0, 0], delta[1, 2, 0, 1] = 1e-30, 0.2  # a tiny change counts too
    assert torch.equal(L0().size(delta), torch.tensor([2.0, 2.0, 0.0]))
    assert torch.equal(L0().size(torch.tensor([[0.0, 1.0, -2.0], [0.0, 0.0, 0.0]])), torch.tensor([2.0, 0.0]))


def _changes(x_adv, x):
    return (x_adv != x).any(1).flatten(1).sum(1)


@pytest.mark.parametrize("k", [0, 1, 5, 16, 30])
def test_l0_projection_keeps_the_largest_changes_in_the_box(k):
    gen = torch.Generator().manual_seed(k)
    x = torch.rand(40, 2, 4, 4, generator=gen)
    sparse = torch.rand(40, 1, 4, 4, generator=gen) < torch.rand(40, 1, 1, 1, generator=gen)  # 0 to 16 pixels
    inside = torch.where(sparse, torch.rand(x.shape, generator=gen), x)  # changes inside the box
    out = L0().project(inside, x, k, (0.0, 1.0))
    changed = _changes(inside, x)
    assert torch.equal(_changes(out, x), changed.clamp(max=k))  # exactly min(k, changed)
    assert torch.equal(torch.where(out != x, out, inside), inside)  # a kept pixel is kept whole, bit for bit
    energy = (inside - x).pow(2).sum(1).flatten(1)
    kept = (out != x).any(1).flatten(1)
    for e, m in zip(energy, kept):  # every kept change is at least as large as every dropped one
        if m.any() and (~m & (e > 0)).any():
            assert e[m].min() >= e[~m].max()
    wild = x + 3 * torch.randn(x.shape, generator=gen)  # far outside the box
    out = L0().project(wild, x, k, (0.0, 1.0))
    assert out.min() >= 0 and out.max() <= 1 and (_changes(out, x) <= k).all()
    for point in (out, L0().project(inside, x, k, (0.0, 1.0))):  # idempotent, bit for bit
        assert torch.equal(L0().project(point, x, k, (0.0, 1.0)), point)
    # 0.75 + (1e-10 - 0.75) rounds to 0; the square of a change of 1e-30 underflows to 0
    x, v = torch.tensor([[0.75, 0.5, 1e-30]]), torch.tensor([[1e-10, 0.5, 0.0]])
    assert torch.equal(L0().project(v, x, 2), v)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("k", [1, 2])
def test_l0_projection_is_the_nearest_point_by_brute_force(channels, k):
    """2x2 images: every set of at most k pixels, the box applied on it, the nearest (in L2)
    of those points; targets inside and outside the box."""
    gen = torch.Generator().manual_seed(10 * k + channels)
    x = torch.rand(50, channels, 2, 2, generator=gen, dtype=torch.float64)
    v = x + 1.5 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    out = L0().project(v, x, k, (0.0, 1.0))
    assert (_changes(out, x) <= k).all() and out.min() >= 0 and out.max() <= 1
    best = torch.full((50,), math.inf, dtype=torch.float64)
    for subset in itertools.chain.from_iterable(itertools.combinations(range(4), r) for r in range(k + 1)):
        mask = torch.zeros(1, 1, 4, dtype=torch.bool)
        mask[..., list(subset)] = True
        point = torch.where(mask.view(1, 1, 2, 2), v.clamp(0, 1), x)
        best = torch.minimum(best, (point - v).flatten(1).norm(dim=1))
    torch.testing.assert_close((out - v).flatten(1).norm(dim=1), best, rtol=0, atol=1e-12)


def test_l0_projection_of_an_unbounded_budget_keeps_everything():
    x = torch.rand(4, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    v = x.flip(0)
    for eps in (9, 100, math.inf):
        assert torch.equal(L0().project(v, x, eps), v)
    assert torch.equal(L0().project(v, x, 0), x)


@pytest.mark.parametrize("k", [1, 4, 9, 20])
def test_l0_random_start_changes_exactly_k_pixels(k):
    x = 0.25 + 0.5 * torch.rand(30, 3, 3, 3, generator=torch.Generator().manual_seed(0))
    start = L0().random_start(x, k, torch.Generator().manual_seed(k))
    assert (_changes(start, x) == min(k, 9)).all() and torch.equal(L0().size(start - x), _changes(start, x).float())
    assert (start - x).abs().max() <= 1
    again = L0().random_start(x, k, torch.Generator().manual_seed(k))
    assert torch.equal(start, again)
    if k < 9:  # the pixels differ from sample to sample
        assert len({tuple(m.tolist()) for m in (start != x).any(1).flatten(1)}) > 1


def test_l0_budget_is_a_whole_number_and_the_rest_is_refused():
    assert L0().budget(3.0) == 3.0 and L0().budget(0) == 0
    with pytest.raises(InputError, match="eps must be a whole number of pixels in L0, got 2.5"):
        L0().budget(2.5)
    assert L0().diameter((3, 28, 28), (0.0, 1.0)) == 784 and not L0().certifiable
    w = torch.randn(2, 5)
    for call in (lambda: L0().dual_size(w), lambda: L0().direction(w),
                 lambda: L0().linear_minimum(w, w, 1.0),
                 lambda: L0().to_hyperplane(w, torch.ones(2), -torch.ones(2, 5), torch.ones(2, 5))):
        with pytest.raises(InputError):
            call()


def test_l0_names():
    for name in ("0", "l0", "L0", 0, 0.0):
        assert isinstance(get_norm(name), L0), name
    assert get_norm("0") == L0() and get_norm(L0()).name == "0" and L0().label == "L0"


def test_no_bound_propagation_claims_to_certify_l0():
    from torch import nn

    from advx.certify import Certifier

    with pytest.raises(InputError, match="L0 cannot be certified by bound propagation"):
        Certifier(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), (1, 28, 28), norm="0")
    assert all(get_norm(n).certifiable for n in ("inf", "2", "1")) and not get_norm("0").certifiable


# -------------------------------------------------------------------------- patch
def _bounding_side(delta):
    """The side of the smallest square holding every changed pixel, by looping (0 if none)."""
    sides = []
    for d in delta:
        hit = (d != 0).any(0).nonzero()
        sides.append(0 if len(hit) == 0 else int((hit.max(0).values - hit.min(0).values + 1).max()))
    return torch.tensor(sides, dtype=delta.dtype)


def test_patch_size_is_the_side_of_the_bounding_square():
    delta = torch.zeros(5, 3, 6, 9)
    delta[0, 1, 2, 3] = 0.5                          # one pixel, one channel: a square of side 1
    delta[1, 0, 1, 1], delta[1, 2, 2, 5] = -0.1, 0.1  # 2 rows, 5 columns apart: side 5
    delta[2, :, 0, 0], delta[2, 0, 5, 0] = 1e-30, 0.3  # a tiny change counts; a column of 6
    delta[3, 2] = 1.0                                # every pixel: the longer side
    assert torch.equal(Patch().size(delta), torch.tensor([1.0, 5.0, 6.0, 9.0, 0.0]))
    noise = torch.randn(40, 2, 5, 7, generator=torch.Generator().manual_seed(0))
    sparse = noise * (torch.rand(40, 1, 5, 7, generator=torch.Generator().manual_seed(1)) < 0.1)
    assert torch.equal(Patch().size(sparse), _bounding_side(sparse))


def _squares(side, height, width):
    """Every square of ``side`` that meets an H x W image, as [H, W] masks (cut at the edges)."""
    rows, cols = torch.arange(height)[:, None], torch.arange(width)[None, :]
    for top in range(1 - side, height):
        for left in range(1 - side, width):
            yield (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("shape", [(3, 3), (3, 5), (4, 4)])
@pytest.mark.parametrize("side", [1, 2, 3, 4, 6])
def test_patch_projection_is_the_nearest_point_by_brute_force(channels, shape, side):
    """Every square of the side anywhere on the image (also reaching past it), the box applied
    inside it, the nearest (in L2) of those points; targets inside and outside the box."""
    gen = torch.Generator().manual_seed(100 * side + 10 * channels + shape[1])
    x = torch.rand(40, channels, *shape, generator=gen, dtype=torch.float64)
    sparse = torch.rand(40, 1, *shape, generator=gen, dtype=torch.float64) < 0.3
    inside = torch.where(sparse, torch.rand(x.shape, generator=gen, dtype=torch.float64), x)
    outside = x + 1.5 * torch.randn(x.shape, generator=gen, dtype=torch.float64)
    for v in (inside, outside):
        out = Patch().project(v, x, side, (0.0, 1.0))
        assert (Patch().size(out - x) <= side).all() and out.min() >= 0 and out.max() <= 1
        best = torch.full((40,), math.inf, dtype=torch.float64)
        for square in _squares(side, *shape):
            point = torch.where(square, v.clamp(0, 1), x)
            best = torch.minimum(best, (point - v).flatten(1).norm(dim=1))
        torch.testing.assert_close((out - v).flatten(1).norm(dim=1), best, rtol=0, atol=1e-12)
        assert torch.equal(Patch().project(out, x, side, (0.0, 1.0)), out)  # idempotent, bit for bit


def test_patch_projection_leaves_a_point_of_the_ball_alone():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(60, 3, 8, 8, generator=gen)
    side = torch.randint(1, 9, (60,), generator=gen)
    top, left = (torch.rand(60, generator=gen) * (9 - side)).long(), (torch.rand(60, generator=gen) * (9 - side)).long()
    from advx.norms.patch import window
    square = window(top, left, side, 8, 8)[:, None] & (torch.rand(60, 1, 8, 8, generator=gen) < 0.5)
    v = torch.where(square, torch.rand(x.shape, generator=gen), x)
    assert torch.equal(Patch().project(v, x, side.float(), (0.0, 1.0)), v)
    assert torch.equal(Patch().project(v, x, 8, (0.0, 1.0)), v)
    # A change whose saving underflows to 0 (1e-30 squared, in float32) is part of the point:
    # before the fix the first square saving the most (columns 0-1) dropped it.
    x, v = torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    v[0, 0, 1, 1], v[0, 0, 1, 2] = 0.5, 1e-30
    assert torch.equal(Patch().project(v, x, 2, (0.0, 1.0)), v)


def test_patch_on_a_non_square_image_widens_along_the_longer_side():
    """A 4 x 8 image: changes across 6 columns of a row fit a square of side 6 (reaching past
    the image's rows); before the fix the projection cut them to a 4 x 4 square, so neither
    eps = 6 nor the diameter (8, 'never binds') kept them."""
    x = torch.zeros(2, 1, 4, 8)
    v = x.clone()
    v[0, 0, 0, :6] = 0.5
    v[1] = 0.25  # every pixel
    assert torch.equal(Patch().size(v - x), torch.tensor([6.0, 8.0]))
    assert Patch().diameter((1, 4, 8), (0.0, 1.0)) == 8
    assert torch.equal(Patch().project(v[:1], x[:1], 6, (0.0, 1.0)), v[:1])
    for eps in (8, 100, math.inf):
        assert torch.equal(Patch().project(v, x, eps), v)
    start = Patch().random_start(x, 6, torch.Generator().manual_seed(0))
    assert torch.equal(Patch().size(start - x), torch.tensor([6.0, 6.0]))


def test_patch_projection_of_an_infinite_target_on_a_clipped_pixel():
    """x_adv = +inf on a pixel at the top of the box (the box takes it back to x: keeping it
    saves nothing): the square keeps the change that saves. Before the fix 0 * inf = NaN
    there made that pixel's square win."""
    x = torch.full((1, 1, 4, 4), 0.5)
    x[0, 0, 3, 3] = 1.0
    v = x.clone()
    v[0, 0, 3, 3], v[0, 0, 0, 0] = math.inf, 0.9
    expected = x.clone()
    expected[0, 0, 0, 0] = 0.9
    assert torch.equal(Patch().project(v, x, 1, (0.0, 1.0)), expected)


def test_patch_projection_keeps_everything_or_nothing():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(4, 2, 5, 7, generator=gen)
    v = torch.rand(x.shape, generator=gen)
    for eps in (7, 9, math.inf):  # the longer side or more
        assert torch.equal(Patch().project(v, x, eps), v) and torch.equal(Patch().project(v, x, eps, (0.0, 1.0)), v)
    assert torch.equal(Patch().project(v, x, 0), x) and torch.equal(Patch().project(v, x, 0, (0.0, 1.0)), x)
    per_sample = Patch().project(v, x, torch.tensor([0.0, 2.0, 7.0, 3.0]), (0.0, 1.0))
    assert torch.equal(Patch().size(per_sample - x), torch.tensor([0.0, 2.0, 7.0, 3.0]))


@pytest.mark.parametrize("side", [1, 3, 5, 6, 20])
def test_patch_random_start_fits_a_square_of_the_side(side):
    x = 0.25 + 0.5 * torch.rand(30, 3, 5, 6, generator=torch.Generator().manual_seed(0))
    start = Patch().random_start(x, side, torch.Generator().manual_seed(side))
    assert torch.equal(Patch().size(start - x), torch.full((30,), float(min(side, 6))))
    assert (start - x).abs().max() <= 1
    assert torch.equal(start, Patch().random_start(x, side, torch.Generator().manual_seed(side)))
    if side < 5:  # the place differs from sample to sample
        assert len({tuple(m.tolist()) for m in (start != x).any(1).flatten(1)}) > 1


def test_patch_budget_and_what_it_refuses():
    assert Patch().budget(3.0) == 3.0 and Patch().budget(0) == 0 and Patch().budget(math.inf) == math.inf
    with pytest.raises(InputError, match="eps must be a whole number of pixels of side in patch, got 2.5"):
        Patch().budget(2.5)
    flat = torch.zeros(2, 16)
    for call in (lambda: Patch().size(flat), lambda: Patch().project(flat, flat, 2),
                 lambda: Patch().random_start(flat, 2, torch.Generator())):
        with pytest.raises(InputError, match=r"a patch needs images \[N, C, H, W\], got a tensor of shape \(2, 16\)"):
            call()
    assert not Patch().certifiable and Patch().diameter((3, 28, 28), (0.0, 1.0)) == 28
    w = torch.randn(2, 5)
    for call in (lambda: Patch().dual_size(w), lambda: Patch().direction(w),
                 lambda: Patch().linear_minimum(w, w, 1.0),
                 lambda: Patch().to_hyperplane(w, torch.ones(2), -torch.ones(2, 5), torch.ones(2, 5))):
        with pytest.raises(InputError, match="patch has no"):
            call()
    assert isinstance(get_norm("patch"), Patch) and get_norm("patch") == Patch() and Patch().label == "patch"
