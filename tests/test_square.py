"""Square: a score-based attack that never takes a gradient, and counts its queries exactly."""

import copy

import torch
from conftest import Boom, success_rate
from torch import nn

from advx import Square


class RaiseInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise Boom("Square must not take gradients")


class ScoresOnly(nn.Module):
    """Forwards to ``model``; records whether autograd was on; any backward raises."""

    def __init__(self, model):
        super().__init__()
        self.model, self.grad_enabled = model, []

    def forward(self, x):
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.model(RaiseInBackward.apply(x))


class RowCounter(nn.Module):
    """Counts, per clean image, the rows the model evaluates (a row is attributed
    to the clean image within eps of it in Linf; the test checks that is unique)."""

    def __init__(self, model, x_clean, eps):
        super().__init__()
        self.model, self.x_clean, self.eps = model, x_clean, eps
        self.rows = torch.zeros(len(x_clean), dtype=torch.long)

    def forward(self, x):
        dist = (x[:, None] - self.x_clean[None]).flatten(2).abs().amax(2)  # [rows, N]
        near = dist <= self.eps + 1e-6
        assert (near.sum(1) == 1).all()
        self.rows += near.sum(0)
        return self.model(x)


def test_square_never_takes_gradients(trained_cnn, batch):
    x, y = batch[0][:100], batch[1][:100]
    model = ScoresOnly(copy.deepcopy(trained_cnn))
    assert success_rate(Square(model, eps=0.3, queries=300), trained_cnn, x, y, y) >= 0.95
    assert model.grad_enabled and not any(model.grad_enabled)


def test_square_counts_queries_exactly(trained_cnn, batch):
    x, y = batch[0][:30], batch[1][:30]
    eps = 0.1  # small: within 30 queries some samples fall, others do not
    assert ((x[:, None] - x[None]).flatten(2).abs().amax(2) + 2 * torch.eye(len(x)) > 2 * eps).all()
    idle = RowCounter(trained_cnn, x, eps)
    Square(idle, eps=0.0, queries=30).run(x, y)  # eps 0: only the forwards of the checks and the result
    model = RowCounter(trained_cnn, x, eps)
    result = Square(model, eps=eps, queries=30, restarts=2).run(x, y)
    queries, success = result.steps, result.success
    assert idle.rows.sum() > 0 and torch.equal(queries, model.rows - idle.rows)
    assert (queries[~success] == 60).all()                  # two full restarts
    assert success.any() and (~success).any() and (queries[success] < 60).all()


def test_square_l2_breaks_images_inside_the_ball_without_gradients(trained_cnn, batch):
    """L2: every point within eps and the pixel box, no gradient taken, and far stronger than
    the noise it starts from (one query: the start alone, which spends most of the budget)."""
    x, y = batch[0][:60], batch[1][:60]
    model = ScoresOnly(copy.deepcopy(trained_cnn))
    result = Square(model, eps=2.0, norm="2", queries=300).run(x, y)
    assert (result.distance <= 2.0 + 1e-5).all() and result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert not any(model.grad_enabled)
    start = Square(trained_cnn, eps=2.0, norm="2", queries=1).run(x, y)
    assert result.success.float().mean() >= start.success.float().mean() + 0.3, (
        result.success.float().mean(), start.success.float().mean())
    assert start.distance.median() > 1.2  # the start spends most of the budget (the box clips the rest)


def test_square_l1_breaks_images_inside_the_ball_without_gradients(trained_cnn, batch):
    """L1 (the reference AutoAttack's L1 Square): every point within eps in L1 and in the
    pixel box, no gradient taken, and far stronger than the start it projects into the ball."""
    x, y = batch[0][:60], batch[1][:60]
    model = ScoresOnly(copy.deepcopy(trained_cnn))
    result = Square(model, eps=10.0, norm="1", queries=300).run(x, y)
    l1 = (result.x_adv - x).flatten(1).abs().sum(1)
    assert (l1 <= 10.0 + 1e-4).all() and result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert torch.allclose(result.distance, l1, atol=1e-4)
    assert not any(model.grad_enabled)
    start = Square(trained_cnn, eps=10.0, norm="1", queries=1).run(x, y)
    assert result.success.float().mean() >= start.success.float().mean() + 0.2, (
        result.success.float().mean(), start.success.float().mean())
    assert start.distance.median() > 5.0  # the start spends most of the budget
