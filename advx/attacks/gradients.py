"""The input gradient dL/dX with the weights frozen (``advx.modes.frozen``): the one
operation every attack and sanity check builds on.

``input_gradient`` takes ``torch.autograd.grad`` with respect to the input only, so no
parameter ``.grad`` is ever created, and always returns a finite tensor (``finite_gradient``).
"""

from __future__ import annotations

import torch

from advx.norms import per_sample


def input_gradient(loss: torch.Tensor, x: torch.Tensor, *, retain_graph: bool = False) -> torch.Tensor:
    """dloss/dx; zeros where the model's output does not depend on ``x`` through autograd
    (e.g. a hard input quantizer), so that masked gradients do not crash an attack.
    The result is always finite (see ``finite_gradient``)."""
    if not loss.requires_grad:
        return torch.zeros_like(x)
    (grad,) = torch.autograd.grad(loss, x, allow_unused=True, retain_graph=retain_graph)
    return torch.zeros_like(x) if grad is None else finite_gradient(grad)


def finite_gradient(grad: torch.Tensor) -> torch.Tensor:
    """A finite stand-in for a gradient with NaN or inf entries (e.g. ``sqrt`` at 0).

    NaN entries carry no direction and become 0. Where a sample's gradient has infinite
    entries, they dominate every finite one, so its direction is their sign: +-1 there,
    0 elsewhere. A finite gradient comes back as it is (the same tensor)."""
    finite = torch.isfinite(grad)
    if bool(finite.all()):
        return grad
    infinite = torch.isinf(grad)
    has_inf = per_sample(infinite.flatten(1).any(1), grad)
    limit = torch.where(infinite, grad.sign(), torch.zeros_like(grad))
    return torch.where(has_inf, limit, torch.where(finite, grad, torch.zeros_like(grad)))
