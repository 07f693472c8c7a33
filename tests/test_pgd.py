"""FGSM, PGD and MI-FGSM (the gradient-sign family): closed-form cases on a linear model,
and strength, targets, restarts and early stopping on real MNIST."""

import pytest
import torch
import torch.nn.functional as F
from conftest import Linear

from advx import FGSM, MIFGSM, PGD
from advx.modes import frozen


# ------------------------------------------------------------------ closed form
def _hand_grad(model, x, y):
    """dCE/dx for logits = W x + b: W^T (softmax(z) - onehot(y))."""
    z = x.flatten(1) @ model.fc.weight.T + model.fc.bias
    return ((z.softmax(1) - F.one_hot(y, 10).float()) @ model.fc.weight).view_as(x)


def test_fgsm_equals_the_hand_computed_step():
    model = Linear()
    x = torch.full((4, 1, 28, 28), 0.5)
    x[:, :, :14] = 0.4
    y = torch.tensor([0, 3, 5, 9])
    g = _hand_grad(model, x, y)
    expected = (x + 0.1 * g.sign()).clamp(0, 1)
    assert torch.allclose(FGSM(model, eps=0.1)(x, y), expected, atol=1e-7)
    targeted = (x - 0.1 * g.sign()).clamp(0, 1)  # descend the loss of the target
    assert torch.allclose(FGSM(model, eps=0.1, targeted=True)(x, y), targeted, atol=1e-7)
    fgm = x + 1.5 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    assert torch.allclose(FGSM(model, eps=1.5, norm="2")(x, y), fgm, atol=1e-6)


def test_pgd_without_random_start_one_full_step_equals_fgsm():
    model = Linear()
    x = torch.full((4, 1, 28, 28), 0.5)
    y = torch.tensor([1, 2, 3, 4])
    pgd = PGD(model, eps=0.1, alpha=0.1, steps=1, random_start=False)(x, y)
    assert torch.equal(pgd, FGSM(model, eps=0.1)(x, y))


def test_clipping_to_bounds_is_explicit():
    model = Linear()
    x = torch.full((2, 1, 28, 28), 0.55)
    y = torch.tensor([0, 1])
    x_adv = FGSM(model, eps=0.2, bounds=(0.5, 0.6))(x, y)
    assert x_adv.min() >= 0.5 and x_adv.max() <= 0.6
    assert torch.equal(x_adv.unique(), torch.tensor([0.5, 0.6]))


# ---------------------------------------------------------------------- MI-FGSM
def test_mifgsm_one_step_is_fgsm(trained_cnn, batch):
    x, y = batch[0][:32], batch[1][:32]
    attack = MIFGSM(trained_cnn, eps=0.1, steps=1)
    with frozen(trained_cnn):
        grad, _, _ = attack.gradient(x, y)
    assert torch.allclose(attack(x, y), (x + 0.1 * grad.sign()).clamp(0, 1))


# ------------------------------------------------------------------- real MNIST
@pytest.fixture(scope="module")
def correct(trained_cnn, mnist_test):
    x, y = mnist_test.x[:300], mnist_test.y[:300]
    with torch.no_grad():
        ok = trained_cnn(x).argmax(1) == y
    return x[ok][:200], y[ok][:200]


def test_pgd_flips_at_least_95_percent_and_beats_fgsm(trained_cnn, correct):
    x, y = correct
    pgd = PGD(trained_cnn, eps=0.3, alpha=0.01, steps=40).run(x, y).success.float().mean().item()
    fgsm = FGSM(trained_cnn, eps=0.3).run(x, y).success.float().mean().item()
    assert pgd >= 0.95
    assert pgd >= fgsm


def test_l2_pgd_flips_at_least_95_percent(trained_cnn, correct):
    x, y = correct
    assert PGD(trained_cnn, eps=3.0, steps=40, norm="2").run(x, y).success.float().mean() >= 0.95


def test_targeted_pgd_reaches_the_target(trained_cnn, correct):
    x, y = correct
    target = (y + 1) % 10
    result = PGD(trained_cnn, eps=0.3, alpha=0.01, steps=40, targeted=True).run(x, target)
    assert result.success.float().mean() >= 0.9
    assert torch.equal(result.success, result.logits.argmax(1) == target)


def test_restarts_keep_the_best_per_sample(trained_cnn, correct):
    x, y = correct
    weak = dict(eps=0.1, alpha=0.01, steps=5, seed=3)  # weak enough that some samples survive
    one = PGD(trained_cnn, **weak).run(x, y)
    many = PGD(trained_cnn, restarts=4, **weak).run(x, y)
    assert 0 < one.success.float().mean() < 1
    assert (many.success | ~one.success).all()  # every sample broken once stays broken
    assert many.success.sum() > one.success.sum()
    assert (many.steps[one.success] == 5).all()  # broken in the first run: no restart spent
    assert (many.steps[~many.success] == 20).all()  # never broken: all four runs spent


def test_early_stop_freezes_samples_once_fooled(trained_cnn, correct):
    x, y = correct
    full = PGD(trained_cnn, eps=0.3, alpha=0.01, steps=40).run(x, y)
    early = PGD(trained_cnn, eps=0.3, alpha=0.01, steps=40, early_stop=True).run(x, y)
    assert early.success.float().mean() >= 0.95
    assert early.steps.float().mean() < 40 and (early.steps[early.success] < 40).all()
    assert early.distance.mean() < full.distance.mean()  # stopped earlier, closer to x
