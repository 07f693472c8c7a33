"""Randomized smoothing: the statistics against SciPy, CERTIFY's radius against the exact one of
a linear classifier (where p_A has a closed form), PREDICT's abstention at a tie, and the
contract of a measurement (reproducible, batch-size independent, the model left as it was)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import beta, binom, binomtest
from torch import nn

from advx.attacks.eot import Seeded, draw
from advx.smoothing import ABSTAIN, Smoothed, binomial_p_value, check_samples, lower_confidence_bound
from advx.validate import InputError

D = 6  # inputs of the linear classifier


def _linear(seed=0) -> nn.Module:
    """Two classes, logits (0, w.x + b): f says class 1 where w.x + b > 0."""
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(D, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(1, D, generator=g))
        layer.bias.copy_(torch.randn(1, generator=g) * 0.1)

    class TwoClass(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            s = self.layer(x.flatten(1))
            return torch.cat([torch.zeros_like(s), s], 1)

    return TwoClass()


def _true_radius(model, x):
    """For a linear two-class f, smoothing keeps f's decision (P(w.(x+d)+b > 0) =
    Phi((w.x+b) / (sigma |w|))) and g's robust radius is the distance to the hyperplane."""
    w, b = model.layer.weight[0].detach(), model.layer.bias.detach()
    score = x.flatten(1) @ w + b
    return (score > 0).long(), score.abs() / w.norm()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 20000), share=st.floats(0, 1), alpha=st.floats(1e-6, 0.5))
def test_the_lower_bound_is_clopper_pearsons(n, share, alpha):
    k = round(share * n)
    expected = 0.0 if k == 0 else beta.ppf(alpha, k, n - k + 1)
    assert lower_confidence_bound(k, n, alpha) == pytest.approx(expected, abs=1e-10)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 5000), share=st.floats(0, 1))
def test_the_p_value_is_the_two_sided_binomial_tests(n, share):
    k = round(share * n)
    expected = 1.0 if n == 0 else binomtest(k, n, 0.5).pvalue
    # below about 1e-250 SciPy underflows to 0 where the exact tail is still a float
    assert binomial_p_value(k, n) == pytest.approx(expected, rel=1e-9, abs=1e-250)


def test_certify_never_claims_more_than_the_true_radius_beyond_the_alpha_rate():
    """300 images at many distances from the hyperplane, each certified on its own stream: a
    radius above the exact one may happen only with probability alpha per image."""
    alpha, sigma, n = 0.1, 0.5, 300
    model = _linear()
    x = torch.randn(n, 1, 1, D, generator=torch.Generator().manual_seed(1)) * 0.6
    label, radius = _true_radius(model, x)
    result = Smoothed(model, sigma).certify(x, n0=20, samples=200, alpha=alpha, seed=3)
    answered = result.prediction != ABSTAIN
    wrong = answered & ((result.prediction != label) | (result.radius > radius.double() + 1e-9))
    # P(Binomial(300, 0.1) > 50) < 1e-4: more failures than that means the bound is not one
    assert int(wrong.sum()) <= binom.ppf(1 - 1e-4, n, alpha)
    # and it certifies: a confident image gets most of the radius that 200 draws can show
    # (200 of 200 votes give the bound alpha ** (1 / 200)), not a no-op that abstains
    confident, cap = radius > 2 * sigma, sigma * torch.special.ndtri(torch.tensor(alpha ** (1 / 200)))
    assert answered[confident].all()
    assert (result.radius[confident] > 0.6 * radius[confident].double().clamp(max=cap)).all()


def test_the_point_estimate_instead_of_the_bound_would_fail_the_same_check():
    """The check above can fail: radii from the vote share itself (no confidence bound) exceed
    the exact radius for about half the images that are near the boundary."""
    sigma, n = 0.5, 300
    model = _linear()
    x = torch.randn(n, 1, 1, D, generator=torch.Generator().manual_seed(1)) * 0.6
    label, radius = _true_radius(model, x)
    result = Smoothed(model, sigma).certify(x, n0=20, samples=200, alpha=0.1, seed=3)
    share = result.counts.gather(1, label[:, None])[:, 0].double().clamp(max=199.5) / 200
    naive = sigma * torch.special.ndtri(share)
    assert int((naive > radius.double()).sum()) > binom.ppf(1 - 1e-4, n, 0.1)


def test_predict_abstains_at_a_tie_but_for_the_alpha_rate_and_answers_far_from_it():
    model, sigma = _linear(), 0.5
    w, b = model.layer.weight[0].detach(), model.layer.bias.detach()
    on_plane = (-b * w / w.dot(w)).reshape(1, 1, 1, D).repeat(200, 1, 1, 1)  # w.x + b = 0
    result = Smoothed(model, sigma).predict(on_plane, samples=100, alpha=0.1, seed=0)
    assert int((result.prediction != ABSTAIN).sum()) <= binom.ppf(1 - 1e-4, 200, 0.1)
    far = on_plane + 3 * sigma * (w / w.norm()).reshape(1, 1, 1, D)
    assert (Smoothed(model, sigma).predict(far, samples=100, alpha=0.1).prediction == 1).all()


def test_counts_depend_on_the_seed_and_the_image_not_on_the_batch():
    model = _linear()
    x = torch.randn(5, 1, 1, D, generator=torch.Generator().manual_seed(2)) * 0.3
    smoothed = Smoothed(model, 1.0)
    whole = smoothed.certify(x, n0=30, samples=1234, seed=7, batch_size=1000)
    small = smoothed.certify(x, n0=30, samples=1234, seed=7, batch_size=7)
    alone = smoothed.certify(x[3:4], n0=30, samples=1234, seed=7, sample_ids=[3])
    assert torch.equal(whole.counts, small.counts) and torch.equal(whole.radius, small.radius)
    assert torch.equal(whole.counts[3:4], alone.counts)
    other = smoothed.certify(x, n0=30, samples=1234, seed=8)
    assert not torch.equal(whole.counts, other.counts)
    assert whole.counts.sum(1).tolist() == [1234] * 5  # the estimation draws only


def test_the_model_and_the_images_are_left_as_they_were():
    model = nn.Sequential(nn.Flatten(), nn.Linear(D, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()
    model[1].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(4, 1, 1, D, requires_grad=True)
    x0 = x.detach().clone()
    Smoothed(model, 0.25).certify(x, n0=10, samples=100, alpha=0.01)
    Smoothed(model, 0.25).predict(x, samples=100, alpha=0.01)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and model[2].training
    assert not model[1].weight.requires_grad and model[4].weight.requires_grad
    assert all(p.grad is None for p in model.parameters()) and x.grad is None
    assert torch.equal(x.detach(), x0)


def test_called_it_is_one_noisy_draw_which_seeded_streams_reproduce():
    model = _linear()
    x = torch.rand(3, 1, 1, D)
    smoothed = Seeded(Smoothed(model, 0.5), seed=1)
    with draw(0):
        a, b = smoothed(x), smoothed(x)
    with draw(1):
        c = smoothed(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a, model(x))


@pytest.mark.parametrize("call, message", [
    (lambda m, x: Smoothed(m, 0), "sigma must be > 0, got 0"),
    (lambda m, x: Smoothed(m, 0.5).certify(x, n0=0), "n0 must be >= 1, got 0"),
    (lambda m, x: Smoothed(m, 0.5).certify(x, samples=0), "samples must be >= 1, got 0"),
    (lambda m, x: Smoothed(m, 0.5).certify(x, alpha=1), "alpha must be < 1"),
    (lambda m, x: Smoothed(m, 0.5).certify(x, alpha=0), "alpha must be > 0, got 0"),
    (lambda m, x: Smoothed(m, 0.5).certify(x, samples=9, alpha=0.001),
     "samples must be >= 10 at alpha=0.001: with 9 every image would abstain"),
    (lambda m, x: Smoothed(m, 0.5).predict(x, samples=10, alpha=0.001),
     "samples must be >= 11 at alpha=0.001: with 10 every image would abstain"),
    (lambda m, x: Smoothed(m, 0.5).certify(x[:0]), "x must hold at least one image"),
])
def test_bad_settings_are_one_clear_error(call, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        call(_linear(), torch.rand(2, 1, 1, D))


@pytest.mark.parametrize("alpha", [0.5, 0.1, 0.001, 1e-6])
def test_the_least_sample_count_is_the_first_that_can_decide(alpha):
    least = math.floor(math.log2(1 / alpha)) + 1
    assert check_samples(least, alpha) == least
    assert lower_confidence_bound(least, least, alpha) > 0.5
    assert lower_confidence_bound(least - 1, least - 1, alpha) <= 0.5


@pytest.mark.slow
def test_an_eot_attack_does_not_break_a_certified_image_inside_its_radius(trained_cnn, mnist_test):
    """L2 PGD with EOT gradients on the smoothed model, inside 0.9 of each certified radius,
    then PREDICT's statistical verdict on what it found: a changed answer may come only from
    the two alpha-rate failures (the certificate's and PREDICT's). Beyond the radius (three
    times it) the same attack does change answers: it is not a no-op."""
    from advx.attacks.pgd import PGD

    sigma, alpha = 0.25, 0.01
    x, y = mnist_test.x[:40], mnist_test.y[:40]
    smoothed = Smoothed(trained_cnn, sigma)
    cert = smoothed.certify(x, n0=50, samples=500, alpha=alpha, seed=1)
    kept = cert.certified(y, 0.1)
    assert int(kept.sum()) >= 20
    xs, ys, radius = x[kept], y[kept], cert.radius[kept].float()
    broken = {}
    for scale in (0.9, 3.0):
        x_adv = torch.stack([PGD(Seeded(smoothed, seed=2), eps=scale * float(r), norm="2", steps=20, eot=8,
                                 seed=3)(xi[None], yi[None])[0] for xi, yi, r in zip(xs, ys, radius)])
        verdict = smoothed.predict(x_adv, samples=500, alpha=alpha, seed=4).prediction
        broken[scale] = int(((verdict != ABSTAIN) & (verdict != ys)).sum())
    assert broken[0.9] <= binom.ppf(1 - 1e-4, len(ys), 2 * alpha)
    assert broken[3.0] >= len(ys) // 4
