"""BPDA: a defence behind a non-differentiable preprocessing looks robust to plain gradient
attacks (the trap) and falls once the attack's backward pass goes straight through it;
the forward pass, and so every verdict, stays exactly the model's own."""

from __future__ import annotations

import pytest
import torch
from defences import DEFENCES
from torch import nn

from advx import PGD, evaluate
from advx.attacks.bpda import StraightThrough, bpda, straight_through
from advx.validate import InputError, InputTypeError


@pytest.fixture(scope="module")
def correct(trained_cnn, batch):
    """64 test images the undefended model classifies correctly."""
    x, y = batch
    with torch.no_grad():
        right = trained_cnn(x).argmax(1) == y
    return x[right][:64], y[right][:64]


def _robust(model, x, y, eps=0.3, steps=20):
    run = PGD(model, eps=eps, steps=steps, seed=0).run(x, y)
    return (~run.success).float().mean().item()


@pytest.mark.parametrize("defence", DEFENCES, ids=lambda d: d.name)
def test_a_defence_fools_plain_pgd_and_falls_to_bpda(defence, trained_cnn, correct):
    x, y = correct
    model = defence(trained_cnn).eval()
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
    assert clean > 0.5  # still a classifier
    plain = _robust(model, x, y)
    adapted = _robust(straight_through(model), x, y)
    assert plain > 0.5 * clean  # the trap: zero gradients look like robustness
    if defence.name == "thresholded":  # binarized MNIST is robust for real: only grey pixels can flip
        assert adapted < plain - 0.15, (plain, adapted)
    else:
        assert adapted < 0.1 < plain - 0.3, (plain, adapted)


@pytest.mark.parametrize("defence", DEFENCES, ids=lambda d: d.name)
def test_the_forward_pass_is_exactly_the_models(defence, trained_cnn, correct):
    x, _ = correct
    model = defence(trained_cnn).eval()
    wrapped = straight_through(model)
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(wrapped(x), expected)
    xg = x.clone().requires_grad_(True)
    out = wrapped(xg)
    assert torch.equal(out.detach(), expected)
    (grad,) = torch.autograd.grad(out[:, 0].sum(), xg)
    assert grad.abs().sum() > 0  # the gradient now reaches the image


def test_evaluate_with_a_straight_through_model(trained_cnn, correct):
    x, y = correct
    model = DEFENCES[0](trained_cnn).eval()
    settings = dict(attacks=["pgd"], eps=[0.3], steps=20, progress=False, checks=False, adapt=False)
    plain = evaluate(model, x, y, **settings)
    adapted = evaluate(straight_through(model), x, y, **settings)
    assert adapted.clean_acc == plain.clean_acc  # verdicts from the model's own forward pass
    assert adapted.robust_acc[0.3] < 0.1 < plain.robust_acc[0.3] - 0.3


def test_bpda_by_hand_identity_and_surrogate():
    x = torch.linspace(0, 1, 24).reshape(2, 1, 3, 4).requires_grad_(True)
    quantize = bpda(lambda t: torch.round(t * 3) / 3)
    out = quantize(x)
    assert torch.equal(out.detach(), torch.round(x.detach() * 3) / 3)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.ones_like(x))  # the identity's backward
    smooth = bpda(lambda t: torch.round(t * 3) / 3, surrogate=lambda t: 2 * t)
    (grad,) = torch.autograd.grad(smooth(x).sum(), x)
    assert torch.equal(grad, torch.full_like(x, 2.0))
    module = bpda(nn.Identity())
    assert isinstance(module, nn.Module) and isinstance(dict(module.named_children())["f"], nn.Identity)


def test_bpda_bad_input():
    with pytest.raises(InputTypeError, match="f must be a module or a function of one tensor, got int"):
        bpda(3)
    with pytest.raises(InputTypeError, match="surrogate must be a module or a function of one tensor, got str"):
        bpda(torch.round, surrogate="identity")
    x = torch.rand(2, 1, 4, 4, requires_grad=True)
    with pytest.raises(InputError, match=r"surrogate: .* the forward's shape \[2, 1, 2, 2\], got \[2, 1, 4, 4\]"):
        bpda(lambda t: nn.functional.avg_pool2d(t, 2))(x)  # the identity cannot stand in for a resize
    with pytest.raises(InputError, match=r"got \[2, 16\] from surrogate"):
        bpda(torch.round, surrogate=lambda t: t.flatten(1))(x)
    with pytest.raises(InputTypeError, match="model must be a torch.nn.Module"):
        straight_through(lambda t: t)


@pytest.mark.parametrize("op", [
    lambda t: torch.round(t * 3), lambda t: t.floor(), lambda t: torch.ceil(t), lambda t: t.sign(),
    lambda t: t // 0.25, lambda t: (t > 0.5).float(), lambda t: (0.5 < t).to(t.dtype),
    lambda t: torch.where(t > 0.5, 1.0, 0.0), lambda t: (t * 255).to(torch.uint8).float(),
    lambda t: t.detach() * 2,
    lambda t: torch.tensor([0.0, 0.3, 0.7, 1.0])[(t[..., None] - torch.tensor([0.0, 0.3, 0.7, 1.0])).abs().argmin(-1)],
    lambda t: torch.bucketize(t, torch.tensor([0.25, 0.5, 0.75])).float() / 3,
], ids=["round", "floor", "ceil", "sign", "floordiv", "gt-float", "lt-to", "where", "uint8", "detach", "nearest-level",
        "bucketize"])
def test_straight_through_keeps_values_and_passes_gradients(op):
    x = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    expected = op(x)
    xg = x.clone().requires_grad_(True)
    with StraightThrough():
        out = op(xg)
    assert torch.equal(out.detach(), expected)
    (grad,) = torch.autograd.grad(out.sum(), xg)
    assert grad.abs().sum() > 0


def test_straight_through_leaves_differentiable_selections_alone():
    x = torch.randn(5, requires_grad=True)
    with StraightThrough():
        relu = torch.where(x > 0, x, torch.zeros_like(x))  # a selection between values that carry gradients
    (grad,) = torch.autograd.grad(relu.sum(), x)
    assert torch.equal(grad, (x > 0).float())
