"""HopSkipJump: a label-only attack that breaks an undefended model, reads nothing but the
predicted class, counts its queries exactly and gets closer with more of them."""

import copy

import pytest
import torch
from conftest import Counting, success_rate
from torch import nn

from advx import HopSkipJump
from advx.rng import SampleRNG
from advx.validate import InputError


class LabelsOnly(nn.Module):
    """The model's prediction as one-hot logits: all a label-only attack may see. Records
    whether autograd was on at each call."""

    def __init__(self, model):
        super().__init__()
        self.model, self.grad_enabled = model, []

    def forward(self, x):
        self.grad_enabled.append(torch.is_grad_enabled())
        logits = self.model(x)
        return nn.functional.one_hot(logits.argmax(1), logits.shape[1]).to(logits.dtype)


class Constant(nn.Module):
    """Predicts class 0 for every image."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([1.0, 0.0, 0.0]))

    def forward(self, x):
        return self.bias.expand(len(x), 3) + 0 * x.flatten(1)[:, :1]


@pytest.mark.parametrize("norm,eps", [("inf", 0.3), ("2", 3.0)])
def test_breaks_an_undefended_model(norm, eps, trained_cnn, clean):
    x, y = clean
    attack = HopSkipJump(trained_cnn, eps=eps, norm=norm)
    assert success_rate(attack, trained_cnn, x, y, y) >= 0.95


def test_targeted_success_goes_to_the_target(trained_cnn, clean):
    x, y = clean
    with torch.no_grad():  # the class the model gives most uniform noise: starting images exist
        noise = torch.rand((200, *x.shape[1:]), generator=torch.Generator().manual_seed(0))
        target_class = int(trained_cnn(noise).argmax(1).mode().values)
    keep = y != target_class
    x, target = x[keep], torch.full_like(y[keep], target_class)
    result = HopSkipJump(trained_cnn, eps=0.3, targeted=True).run(x, target)
    assert result.success.float().mean() >= 0.9
    assert torch.equal(result.success, result.logits.argmax(1) == target)

    # Other targets: a start exists only where some noise has the target's label.
    x, y = clean[0][:30], clean[1][:30]
    target = (y + 1) % 10
    result = HopSkipJump(trained_cnn, eps=0.3, targeted=True, queries=2000).run(x, target)
    assert result.success.float().mean() >= 0.5
    assert torch.equal(result.success, result.logits.argmax(1) == target)


def test_counts_its_queries_exactly(trained_cnn, clean):
    x, y = clean[0][:24], clean[1][:24]
    idle = Counting(trained_cnn)
    HopSkipJump(idle, eps=0.0).run(x, y)  # eps 0: only the forwards of the checks and the result
    model = Counting(trained_cnn)
    result = HopSkipJump(model, eps=0.1, queries=400).run(x, y)  # small eps: some spend it all
    assert result.steps.sum() == model.images - idle.images
    assert (result.steps > 0).all() and (result.steps <= 400).all()
    assert (~result.success).any() and result.success.any()
    # An unbroken sample stops when what is left cannot pay one probe, a step and a bisection (20).
    assert (result.steps[~result.success] >= 400 - 22).all()


def test_reads_only_the_predicted_label(trained_cnn, clean):
    x, y = clean[0][:16], clean[1][:16]
    labels_only = LabelsOnly(copy.deepcopy(trained_cnn))
    for norm in ("inf", "2"):
        a = HopSkipJump(trained_cnn, norm=norm, queries=500, seed=3).run(x, y)
        b = HopSkipJump(labels_only, norm=norm, queries=500, seed=3).run(x, y)
        assert torch.equal(a.x_adv, b.x_adv) and torch.equal(a.steps, b.steps)
        assert torch.equal(a.success, b.success) and a.success.all()
    assert labels_only.grad_enabled and not any(labels_only.grad_enabled)


def test_a_budget_too_small_to_start_is_an_error(trained_cnn, clean):
    x, y = clean[0][:2], clean[1][:2]
    # 784 values: a Linf bisection of log2(784**2) -> 20 steps, plus the clean image and one try.
    with pytest.raises(InputError, match=r"^queries must be >= 22 for HopSkipJump on images of 784 values "
                                         r"\(.*\), got 21$"):
        HopSkipJump(trained_cnn, queries=21).run(x, y)
    HopSkipJump(trained_cnn, queries=22).run(x, y)
    with pytest.raises(InputError, match=r"^queries must be >= 5 for HopSkipJump on binary_search_steps=3 .*got 4$"):
        HopSkipJump(trained_cnn, queries=4, binary_search_steps=3)
    with pytest.raises(InputError, match="queries must be >= 1, got 0"):
        HopSkipJump(trained_cnn, queries=0)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_more_queries_get_closer(norm, trained_cnn, clean):
    x, y = clean[0][:12], clean[1][:12]
    few = HopSkipJump(trained_cnn, norm=norm, queries=300).run(x, y)
    many = HopSkipJump(trained_cnn, norm=norm, queries=2000).run(x, y)
    assert few.success.all() and many.success.all()
    assert many.distance.median() < 0.9 * few.distance.median()


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_a_sample_does_not_depend_on_its_batch(norm, trained_cnn, clean):
    model = copy.deepcopy(trained_cnn).double()  # float64: no label flips on rounding
    x, y = clean[0][:8].double(), clean[1][:8]
    ids = torch.arange(100, 108)
    attack = HopSkipJump(model, norm=norm, queries=300)
    whole = attack.run(x, y, generator=SampleRNG.from_ids(5, ids))
    for part in (torch.tensor([6, 1, 3]), torch.tensor([0, 2, 4, 5, 7])):
        alone = attack.run(x[part], y[part], generator=SampleRNG.from_ids(5, ids[part]))
        assert torch.equal(alone.steps, whole.steps[part]) and torch.equal(alone.success, whole.success[part])
        torch.testing.assert_close(alone.x_adv, whole.x_adv[part], rtol=0, atol=1e-9)


def test_an_adversarial_image_costs_one_query_and_no_start_leaves_x(clean):
    x = clean[0][:4]
    model = Constant()
    result = HopSkipJump(model, queries=100, init_tries=30).run(x, torch.tensor([1, 2, 1, 2]))
    assert torch.equal(result.x_adv, x) and torch.equal(result.steps, torch.ones(4, dtype=torch.long))
    assert result.success.all()
    result = HopSkipJump(model, queries=100, init_tries=30).run(x, torch.zeros(4, dtype=torch.long))
    assert torch.equal(result.x_adv, x) and not result.success.any()
    assert torch.equal(result.steps, torch.full((4,), 31))  # the clean image and every try
