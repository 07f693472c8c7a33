"""The search for a counterexample inside an input set: projected sign-gradient descent.

Branch and bound (``advx.certify.bab``) runs it first, from the set's centre and random
starts, and again from the minimisers of its subdomains' bounds. Every point it returns
still goes through the caller's check (the model's own forward pass) before it counts.
``advx.certify`` imports nothing from ``advx.attacks``: this small search is its own.
"""

from __future__ import annotations

import torch

from advx.certify.ops import Op
from advx.certify.propagate import Ball


def forward(chain: list[Op], x: torch.Tensor) -> torch.Tensor:
    for op in chain:
        x = op.forward(x)
    return x


def falsify(chain: list[Op], ball: Ball, prop, starts: torch.Tensor, steps: int) -> torch.Tensor:
    """Projected sign-gradient descent of ``prop.value`` from ``starts`` [P, *input] inside
    the ball of sample 0; returns the points met that violate the property (maybe none)."""
    l, u = ball.box()
    x = starts.clone()
    for step in range(steps + 1):
        with torch.enable_grad():
            x.requires_grad_(True)
            value = prop.value(forward(chain, x))
            grad, = torch.autograd.grad(value.sum(), x)
        x = x.detach()
        hit = value.detach() <= 0
        if hit.any():
            return x[hit]
        if step == steps:
            break
        size = 0.25 * (u - l).amax().clamp_min(1e-12) * (1 - step / steps) + 1e-3 * (u - l).amax()
        x = into(ball, x - size * ball.norm.direction(grad))
    return starts[:0]


def into(ball: Ball, x: torch.Tensor) -> torch.Tensor:
    """``x`` [P, *input] projected into the box and the ball of sample 0."""
    l, u = ball.box()
    x = torch.max(torch.min(x, u[:1]), l[:1])
    if not ball.norm.ball_is_box:
        x = ball.norm.project(x, ball.x[:1].expand_as(x), ball.eps, (ball.lower, ball.upper))
    return x
