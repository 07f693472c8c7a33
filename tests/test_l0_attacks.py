"""The white-box L0 attacks: sPGD (k pixels) and sigma-zero (the fewest pixels), on real MNIST
against Sparse-RS, each other's answers, targeted modes and the checks of their options."""

import pytest
import torch

from advx import SigmaZero, SparsePGD, SparseRS
from advx.validate import InputError


@pytest.fixture(scope="module")
def smallest(trained_cnn, right):
    """sigma-zero's smallest perturbation per image (300 steps)."""
    return SigmaZero(trained_cnn, steps=300).run(*right)


def changed_pixels(x_adv, x):
    """Pixels where ``x_adv`` differs from ``x``, counted here without ``advx.norms``."""
    return (x_adv != x).any(1).flatten(1).sum(1)


def test_spgd_breaks_more_images_than_sparse_rs_with_more_model_evaluations(trained_cnn, right):
    """Measured (seeds 0 and 1): with k = 20, sPGD's 100 steps (a forward and a backward pass
    each, about 300 forwards' work) break 98-99 % of the images, Sparse-RS with 1,000 queries
    88-89 % (tests/test_sparse_rs.py) and with 300 queries 53 %; at k = 5, 31 % against 6-8 %."""
    x, y = right
    for k, at_least in ((20, 0.95), (5, 0.2)):
        result = SparsePGD(trained_cnn, eps=k, steps=100).run(x, y)
        assert result.success.double().mean().item() >= at_least
        search = SparseRS(trained_cnn, eps=k, queries=1000).run(x, y)
        assert result.success.double().mean() > search.success.double().mean()
        assert (changed_pixels(result.x_adv, x) <= k).all()
        assert torch.equal(result.distance, changed_pixels(result.x_adv, x).to(result.distance.dtype))
        with torch.no_grad():
            assert torch.equal(result.success, trained_cnn(result.x_adv).argmax(1) != y)
        assert (result.steps <= 100).all() and (result.steps[~result.success] == 100).all()


def test_spgd_targeted_reaches_its_targets(trained_cnn, right):
    """Measured (seeds 0 and 1, k = 20, target y + 1): sPGD with 100 steps 76-78 %, Sparse-RS
    with 1,000 queries 41-42 %."""
    x, y = right
    target = (y + 1) % 10
    result = SparsePGD(trained_cnn, eps=20, steps=100, targeted=True).run(x, target)
    assert result.success.double().mean().item() >= 0.6
    search = SparseRS(trained_cnn, eps=20, queries=1000, targeted=True).run(x, target)
    assert result.success.double().mean() > search.success.double().mean() + 0.15
    with torch.no_grad():
        assert torch.equal(result.success, trained_cnn(result.x_adv).argmax(1) == target)


def test_sigma_zero_answers_every_budget_as_the_budgeted_attacks_do(trained_cnn, right, smallest):
    """One sigma-zero run gives each image its fewest pixels; at each k the images it breaks
    with at most k are about those sPGD breaks with k (measured, 300 steps against 100: 30 %
    against 31 % at k = 5, 75 % against 79 % at 10, 97 % against 98 % at 20), and far more
    than Sparse-RS's 300 queries (6 %, 23 %, 53 %). Its median is 7 pixels."""
    x, y = right
    assert smallest.success.all()
    assert torch.equal(smallest.distance, changed_pixels(smallest.x_adv, x).to(smallest.distance.dtype))
    with torch.no_grad():
        assert (trained_cnn(smallest.x_adv).argmax(1) != y).all()
    for k in (5, 10, 20):
        within = (smallest.distance <= k).double().mean().item()
        spgd = SparsePGD(trained_cnn, eps=k, steps=100).run(x, y).success.double().mean().item()
        search = SparseRS(trained_cnn, eps=k, queries=300).run(x, y).success.double().mean().item()
        assert within >= spgd - 0.1 and within > search + 0.1
    assert smallest.distance.median().item() <= 10


def test_sigma_zero_returns_its_smallest_not_its_first_adversarial_point(trained_cnn, right):
    """Its iterates grow sparser while they stay adversarial: with 1 step it returns the
    first adversarial point it meets (median 347 pixels changed), with 300 far fewer (both
    without the pruning)."""
    x, y = right
    first = SigmaZero(trained_cnn, steps=1, prune=False).run(x, y)
    last = SigmaZero(trained_cnn, steps=300, prune=False).run(x, y)
    both = first.success & last.success
    assert both.sum() >= len(x) // 2
    assert last.distance[both].median() < first.distance[both].median() / 4


def test_no_single_pixel_of_sigma_zeros_result_can_go_back(trained_cnn, right, smallest):
    """After pruning, resetting any one changed pixel to its clean value leaves an image the
    model classifies correctly; without pruning some can (measured: on 3 of the 100 images)."""
    x, y = right
    unpruned = SigmaZero(trained_cnn, steps=300, prune=False).run(x, y)
    assert (smallest.distance <= unpruned.distance).all()
    for result, minimal in ((smallest, True), (unpruned, False)):
        resets, owners = [], []
        for i in result.success.nonzero().squeeze(1).tolist():
            for pixel in (result.x_adv[i] != x[i]).any(0).flatten().nonzero().squeeze(1).tolist():
                image = result.x_adv[i].clone()
                image.view(image.shape[0], -1)[:, pixel] = x[i].view(x.shape[1], -1)[:, pixel]
                resets.append(image)
                owners.append(i)
        with torch.no_grad():
            fooled = trained_cnn(torch.stack(resets)).argmax(1) != y[owners]
        if minimal:
            assert not fooled.any()
        else:
            assert fooled.any()


def test_sigma_zero_targeted(trained_cnn, right):
    """Measured: every image reaches its target (y + 1), with a median of 16 pixels."""
    x, y = right
    target = (y + 1) % 10
    result = SigmaZero(trained_cnn, steps=100, targeted=True).run(x, target)
    assert result.success.double().mean().item() >= 0.9
    with torch.no_grad():
        assert torch.equal(result.success, trained_cnn(result.x_adv).argmax(1) == target)


def test_sigma_zero_within_a_budget(trained_cnn, right, smallest):
    """With ``eps`` the result is cut to at most eps pixels (the base class's projection), and
    only images it breaks within the budget count as broken (measured: 9 % at eps 3)."""
    x, y = right
    result = SigmaZero(trained_cnn, eps=3, steps=300).run(x, y)
    assert (changed_pixels(result.x_adv, x) <= 3).all() and result.success.any()
    assert torch.equal(result.success & (smallest.distance > 3), torch.zeros_like(result.success))


@pytest.mark.parametrize("make,message", [
    (lambda m: SparsePGD(m, eps=2.5), "eps must be a whole number of pixels in L0, got 2.5"),
    (lambda m: SparsePGD(m, steps=0), "steps must be >= 1, got 0"),
    (lambda m: SparsePGD(m, alpha=0), "alpha must be > 0, got 0"),
    (lambda m: SparsePGD(m, beta=-1), "beta must be > 0, got -1"),
    (lambda m: SparsePGD(m, patience=0), "patience must be >= 1, got 0"),
    (lambda m: SparsePGD(m, restarts=0), "restarts must be >= 1, got 0"),
    (lambda m: SparsePGD(m, norm="inf"), "norm must be '0' for SparsePGD, got 'inf'"),
    (lambda m: SigmaZero(m, steps=1.5), "steps must be an integer, got 1.5"),
    (lambda m: SigmaZero(m, lr=0), "lr must be > 0, got 0"),
    (lambda m: SigmaZero(m, sigma=0), "sigma must be > 0, got 0"),
    (lambda m: SigmaZero(m, threshold=2), "threshold must be <= 1, got 2"),
    (lambda m: SigmaZero(m, norm="2"), "norm must be '0' for SigmaZero, got '2'"),
    (lambda m: SigmaZero(m, prune=1), "prune must be True or False, got 1"),
])
def test_bad_options_are_refused_by_name(make, message, trained_cnn):
    with pytest.raises(InputError) as info:
        make(trained_cnn)
    assert str(info.value) == message
