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
