"""Minimum-norm attacks as a kind: FAB on real MNIST (strength, minimality against DeepFool,
FAB-T, targeted, L1), and ``advx.evaluate`` running such an attack once for every eps."""

import math

import pytest
import torch

from advx import APGD, FAB, PGD, DeepFool, evaluate
from advx.attacks.registry import ATTACKS, abilities


@pytest.fixture(scope="module")
def few(clean):
    """The first 48 correctly classified images (FAB linearises every class: keep it small)."""
    return clean[0][:48], clean[1][:48]


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


def test_l1_apgd_beats_l1_pgd_at_the_same_steps(trained_cnn, few):
    x, y = few

    def acc(attack):
        with torch.no_grad():
            return (trained_cnn(attack(x, y)).argmax(1) == y).float().mean().item()
    assert acc(APGD(trained_cnn, norm="1", eps=4.0, steps=50)) < acc(PGD(trained_cnn, norm="1", eps=4.0, steps=50))


def test_every_minimum_norm_attack_declares_itself():
    declared = {name for name in ATTACKS if abilities(name).minimum_norm}
    assert declared == {"cw", "deepfool", "fab", "fab-t", "fmn"}


class Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x):
        self.images += len(x)
        return self.model(x)


def test_evaluate_runs_a_minimum_norm_attack_once_for_every_eps(trained_cnn, few):
    x, y = few
    counted = Counting(trained_cnn)
    one = evaluate(counted, x, y, attacks=["fmn"], eps=[1.0], norm="2", steps=20, checks=False, progress=False)
    cost_one, counted.images = counted.images, 0
    eps = [0.25, 0.5, 1.0, 1.5, 2.0, 3.0]
    many = evaluate(counted, x, y, attacks=["fmn"], eps=eps, norm="2", steps=20, checks=False, progress=False)
    assert counted.images == cost_one  # the same forwards: one run, whatever the number of eps
    assert many.robust_acc[1.0] == one.robust_acc[1.0]
    # at each eps, a sample is broken iff the one run found an adversarial example within eps
    size = many.records["distance"]
    broken = many.records["broken_by"] >= 0
    for k, e in enumerate(eps):
        assert (size[k][broken[k]] <= e).all()
        assert many.robust_acc[e] == pytest.approx((~broken[k]).float().mean().item())
    assert [many.robust_acc[e] for e in eps] == sorted((many.robust_acc[e] for e in eps), reverse=True)
    assert many.robust_acc[eps[0]] > many.robust_acc[eps[-1]]  # the curve is not flat: the check can fail


def test_evaluate_minimum_norm_results_do_not_depend_on_the_batch(trained_cnn, few):
    x, y = few
    a = evaluate(trained_cnn, x, y, attacks=["fab"], eps=[0.1, 0.2], steps=10, batch_size=7, checks=False,
                 progress=False)
    b = evaluate(trained_cnn, x, y, attacks=["fab"], eps=[0.1, 0.2], steps=10, batch_size=100, checks=False,
                 progress=False)
    assert torch.equal(a.records["broken_by"], b.records["broken_by"])
    torch.testing.assert_close(a.records["distance"], b.records["distance"])
