"""Universal perturbations: one perturbation that fools a model on most images at once.

Moosavi-Dezfooli et al. (2017) showed that a single small perturbation, added to every
image, changes a classifier's answer on most of them: the cheapest attack to deploy, since
it needs no access to the image it is used on. advx finds it as Shafahi et al. (2020) do,
by stochastic gradient ascent on a batch loss with respect to the perturbation itself (the
weights frozen): for each batch of training images, the mean margin loss
``min(max_{j != y} z_j - z_y, CAP)`` (an image already fooled by ``CAP`` stops pulling), a
step along the norm's steepest direction, and the projection back onto the eps-ball. The
perturbation is then measured on images it never saw: the **fooling rate** is the share of
them whose predicted class it changes (the usual definition), beside the accuracy under it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from advx.modes import frozen
from advx.norms import L2, Linf, Norm, get_norm
from advx.progress import bar
from advx.validate import InputError, check_batch, check_number, check_seed

CAP = 5.0  # margin beyond which a fooled image stops contributing to the batch loss
NORMS = (Linf, L2)  # a universal perturbation is a dense one: Linf or L2


@dataclass
class Universal:
    """``delta`` [C, H, W] (inside the ``eps``-ball of ``norm``), and the fooling rate on the
    training images after each epoch (``history``)."""

    delta: torch.Tensor
    eps: float
    norm: Norm
    history: list[float] = field(default_factory=list)


def find_universal(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str | Norm = "inf",
                   epochs: int = 3, batch_size: int = 50, step: float | None = None,
                   bounds: tuple[float, float] = (0.0, 1.0), seed: int = 0, device=None,
                   progress: bool = False) -> Universal:
    """The universal perturbation of ``model`` over the images ``x`` (labels ``y``): ``epochs``
    passes in a shuffled order (``seed``), batches of ``batch_size``; ``step`` is the first
    step's size (default eps / 5), falling linearly to a twentieth of it."""
    y = check_batch(x, y, bounds=bounds)
    norm = get_norm(norm)
    if not isinstance(norm, NORMS):
        raise InputError(f"norm must be 'inf' or '2' for a universal perturbation, got {norm.label}")
    eps = check_number("eps", eps, minimum=0)
    epochs = check_number("epochs", epochs, minimum=1, integer=True)
    batch_size = check_number("batch_size", batch_size, minimum=1, integer=True)
    first = eps / 5 if step is None else check_number("step", step, minimum=0, strict=True)
    order = torch.Generator().manual_seed(check_seed("seed", seed))
    device = device or next(iter(model.parameters()), torch.empty(0)).device
    delta = torch.zeros((1, *x.shape[1:]), device=device)
    result = Universal(delta, eps, norm)
    total = epochs * -(-len(x) // batch_size)
    done = 0
    with frozen(model), bar(total, desc="universal perturbation", unit="batch", enabled=progress) as shown:
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=order).split(batch_size):
                size = first * (1 - 0.95 * done / max(total - 1, 1))
                grad = _loss_gradient(model, x[idx].to(device), y[idx].to(device), delta, bounds)
                delta = norm.project(delta + size * norm.direction(grad), torch.zeros_like(delta), eps)
                done += 1
                shown.update(1)
            result.history.append(fooling(model, x, y, delta[0], bounds=bounds, batch_size=batch_size)["fooling_rate"])
    result.delta = delta[0].detach()
    return result


def _loss_gradient(model, x, y, delta, bounds) -> torch.Tensor:
    """The gradient, with respect to ``delta`` alone, of the batch's capped margin loss."""
    delta = delta.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model((x + delta).clamp(*bounds)).float()
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        (grad,) = torch.autograd.grad((other - true).clamp(max=CAP).mean(), delta)
    return grad


@torch.no_grad()
def fooling(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, *,
            bounds: tuple[float, float] = (0.0, 1.0), batch_size: int = 1000) -> dict:
    """What ``delta`` [C, H, W] does to the images ``x`` (labels ``y``): ``fooling_rate`` (the
    share whose predicted class it changes), ``clean_acc``, ``acc`` under it, and the
    predictions before and after (``pred_clean``, ``pred``)."""
    if tuple(delta.shape) != tuple(x.shape[1:]):
        raise InputError(f"the universal perturbation has shape {tuple(delta.shape)}, but the images have "
                         f"{tuple(x.shape[1:])}: it applies only to images of its own shape")
    device = delta.device
    before, after = [], []
    with frozen(model):
        for xb in x.split(batch_size):
            xb = xb.to(device)
            before.append(model(xb).argmax(1).cpu())
            after.append(model((xb + delta).clamp(*bounds)).argmax(1).cpu())
    before, after, y = torch.cat(before), torch.cat(after), y.cpu()
    return {"fooling_rate": (before != after).float().mean().item(), "clean_acc": (before == y).float().mean().item(),
            "acc": (after == y).float().mean().item(), "pred_clean": before, "pred": after}
