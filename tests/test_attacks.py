"""FGSM and PGD: the invariants every attack must hold, closed-form cases, strength on real MNIST."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advx import FGSM, PGD
from advx.norms import get_norm

from conftest import Boom, FailsOnCall

CASES = [
    (attack, norm, targeted)
    for attack in ("fgsm", "pgd")
    for norm in ("inf", "2")
    for targeted in (False, True)
]
EPS = {"inf": 0.3, "2": 2.0}


def make(name, model, norm, targeted, **kw):
    if name == "fgsm":
        return FGSM(model, eps=EPS[norm], norm=norm, targeted=targeted, **kw)
    return PGD(model, eps=EPS[norm], norm=norm, targeted=targeted, steps=10, **kw)


def goal(y, targeted):
    return (y + 1) % 10 if targeted else y


@pytest.mark.parametrize("name,norm,targeted", CASES)
def test_invariants(name, norm, targeted, bn_model, batch):
    x, y = batch[0][:32], goal(batch[1][:32], targeted)
    model = bn_model  # in train mode, with BatchNorm running stats and Dropout
    flags = [p.requires_grad for p in model.parameters()]
    state = copy.deepcopy(model.state_dict())
    x_copy, y_copy = x.clone(), y.clone()

    result = make(name, model, norm, targeted).run(x, y)

    size = get_norm(norm).size(result.x_adv - x)
    assert (size <= EPS[norm] + 1e-6).all()
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert size.max() > EPS[norm] / 2  # it moved: a no-op attack fails here
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # BN running stats included
    assert all(p.grad is None for p in model.parameters())
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    assert not x.requires_grad and x.grad is None


@pytest.mark.parametrize("name,norm,targeted", CASES)
def test_modes_restored_when_the_model_raises_mid_attack(name, norm, targeted, bn_model, batch):
    model = FailsOnCall(bn_model, n=3)
    model.unused_frozen_layer = nn.Linear(2, 2).requires_grad_(False)  # user froze it: stays frozen
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(Boom):
        make(name, model, norm, targeted).run(batch[0][:8], goal(batch[1][:8], targeted))
    assert model.calls == 3
    assert model.training and model.model[1].training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert any(flags) and not all(flags)


@pytest.mark.parametrize("name,norm,targeted", CASES)
def test_same_seed_same_result(name, norm, targeted, trained_cnn, batch):
    x, y = batch[0][:32], goal(batch[1][:32], targeted)
    a = make(name, trained_cnn, norm, targeted, seed=7)(x, y)
    b = make(name, trained_cnn, norm, targeted, seed=7)(x, y)
    assert torch.equal(a, b)


def test_different_seed_different_random_start(trained_cnn, batch):
    x, y = batch[0][:16], batch[1][:16]
    a = PGD(trained_cnn, eps=0.3, steps=2, seed=1)(x, y)
    b = PGD(trained_cnn, eps=0.3, steps=2, seed=2)(x, y)
    assert not torch.equal(a, b)


def test_global_rng_is_untouched(trained_cnn, batch):
    state = torch.get_rng_state()
    PGD(trained_cnn, eps=0.3, steps=2, restarts=2)(batch[0][:16], batch[1][:16])
    assert torch.equal(torch.get_rng_state(), state)


def test_hyperparameters_are_not_mutated(trained_cnn, batch):
    atk = PGD(trained_cnn, eps=0.3, alpha=0.01, steps=5, restarts=2, early_stop=True)
    before = atk.config()
    atk(batch[0][:16], batch[1][:16])
    assert atk.config() == before


# ------------------------------------------------------------------ closed form
class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc = nn.Linear(784, 10)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(10, 784, generator=g) * 0.05)
            self.fc.bias.copy_(torch.randn(10, generator=g) * 0.05)

    def forward(self, x):
        return self.fc(x.flatten(1))


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


# --------------------------------------------------------------- real MNIST
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
    assert early.norm.mean() < full.norm.mean()  # stopped earlier, closer to x


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs,message", [
    (dict(eps=-0.1), "eps must be >= 0, got -0.1"),
    (dict(eps=math.nan), "eps must be a finite number, got nan"),
    (dict(eps=math.inf), "eps must be a finite number, got inf"),
    (dict(alpha=0.0), "alpha must be > 0, got 0.0"),
    (dict(steps=0), "steps must be >= 1, got 0"),
    (dict(steps=2.5), "steps must be an integer, got 2.5"),
    (dict(restarts=0), "restarts must be >= 1, got 0"),
    (dict(norm="1"), "norm must be one of 'inf', '2' (or a Norm object), got '1'"),
    (dict(bounds=(1, 0)), "bounds must have low < high, got (1, 0)"),
])
def test_bad_hyperparameters(kwargs, message, trained_cnn):
    with pytest.raises(ValueError) as info:
        PGD(trained_cnn, **{"eps": 0.3, **kwargs})
    assert str(info.value) == message


@pytest.mark.parametrize("make_input,message", [
    (lambda x, y: (x[0], y), "x must be 4-D [N, C, H, W], got shape (1, 28, 28)"),
    (lambda x, y: ((x * 255).to(torch.uint8), y), "x must be a floating-point tensor, got dtype torch.uint8"),
    (lambda x, y: (x.index_fill(0, torch.tensor([1]), math.nan), y), "x must be finite, got 784 NaN/inf values"),
    (lambda x, y: (x * 255, y), "x must lie within bounds (0.0, 1.0), got values in [0, 255]"),
    (lambda x, y: (x, y[:3]), "y must be 1-D with one label per image (4), got shape (3,)"),
    (lambda x, y: (x, y.float()), "y must hold integer class labels, got dtype torch.float32"),
    (lambda x, y: (x, y + 10), "y must hold labels in [0, 9] for this model, got values in [10, 17]"),
    (lambda x, y: (x, y - 10), "y must hold labels in [0, 9] for this model, got values in [-10, -3]"),
])
@pytest.mark.parametrize("attack", [FGSM, PGD])
def test_bad_inputs(make_input, message, attack, trained_cnn, batch):
    x, y = make_input(batch[0][:4].clone(), batch[1][:4].clone())
    with pytest.raises(ValueError) as info:
        attack(trained_cnn, eps=0.3)(x, y)
    assert str(info.value) == message


def test_bad_types(trained_cnn, batch):
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        FGSM(trained_cnn)([[0.0]], batch[1][:1])
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got function"):
        FGSM(lambda x: x)
