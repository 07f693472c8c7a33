"""FAB on real MNIST: strength, minimality against DeepFool, FAB-T and restarts, a budget,
the targeted version, argument checks."""

import math

import pytest
import torch

from advx import FAB, DeepFool


def median(result):
    d = result.distance.clone()
    d[~result.success] = math.inf
    return d.median().item()


@pytest.mark.parametrize("norm", ["inf", "2", "1"])
def test_fab_fools_nearly_every_image_with_a_small_perturbation(norm, trained_cnn, few):
    x, y = few
    result = FAB(trained_cnn, norm=norm, steps=30).run(x, y)
    assert result.success.float().mean() >= 0.95
    with torch.no_grad():  # what it reports holds for a fresh forward
        assert torch.equal(trained_cnn(result.x_adv).argmax(1) != y, result.success)
    if norm != "1":  # DeepFool has no L1; FAB must not be worse than its linearised steps
        assert median(result) <= median(DeepFool(trained_cnn, norm=norm).run(x, y))
    # minimal: shrunk towards x by 10%, (almost) every image is classified correctly again
    shrunk = x + 0.9 * (result.x_adv - x)
    with torch.no_grad():
        assert (trained_cnn(shrunk).argmax(1) != y)[result.success].float().mean() <= 0.1


def test_fab_t_and_restarts_only_improve_per_sample(trained_cnn, few):
    x, y = few
    one = FAB(trained_cnn, norm="2", steps=20).run(x, y)
    more = FAB(trained_cnn, norm="2", steps=20, restarts=3).run(x, y)
    assert (more.distance[one.success] <= one.distance[one.success] + 1e-6).all()
    fab_t = FAB(trained_cnn, norm="2", steps=20, n_target_classes=3).run(x, y)
    assert fab_t.success.float().mean() >= 0.95
    assert (fab_t.steps == 3 * 20).all()  # one run per target class, each sample through all


def test_fab_with_a_budget_stops_a_sample_once_within_it(trained_cnn, few):
    x, y = few
    eps = 2.0
    bounded = FAB(trained_cnn, norm="2", steps=20, restarts=3, eps=eps).run(x, y)
    assert (bounded.distance <= eps + 1e-5).all()
    free = FAB(trained_cnn, norm="2", steps=20).run(x, y)
    within = free.success & (free.distance <= eps)
    assert (bounded.steps[within] == 20).all()  # no restart spent on a sample already done
    assert bounded.success[within].all()


def test_targeted_fab_reaches_the_target(trained_cnn, few):
    x, y = few
    target = (y + 1) % 10
    result = FAB(trained_cnn, norm="inf", steps=30, targeted=True).run(x, target)
    with torch.no_grad():
        assert (trained_cnn(result.x_adv).argmax(1) == target).float().mean() >= 0.9


@pytest.mark.parametrize("kwargs,message", [
    (dict(steps=0), "steps must be >= 1"),
    (dict(alpha_max=1.5), "alpha_max must be in \\[0, 1\\]"),
    (dict(eta=0.5), "eta must be >= 1"),
    (dict(beta=1.0), "beta must be in \\[0, 1\\)"),
    (dict(n_target_classes=0), "n_target_classes must be >= 1"),
    (dict(norm="3"), "norm must be one of"),
])
def test_fab_bad_arguments(kwargs, message, trained_cnn):
    with pytest.raises(ValueError, match=message):
        FAB(trained_cnn, **kwargs)
