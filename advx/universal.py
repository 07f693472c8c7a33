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

A **universal frame** (``norm="frame"``, eps the width w) is pasted over the border w pixels
wide of every image, its contents found as a patch's are (below). A **universal patch**
(``norm="patch"``, eps the side s) is one square of s x s pixels pasted
at one place on every image (Brown et al. 2017 paste theirs anywhere; on MNIST's centred
digits the place matters, so advx picks it): the place is the s x s window where the input
gradient of that loss, summed over a batch of training images, is largest; its contents then
take sign steps of the same loss (from 1/4 of the box's width, falling as above), clipped to
the box.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from advx.modes import frozen
from advx.norms import L2, Frame, Linf, Norm, Patch, get_norm
from advx.norms.frame import inside
from advx.progress import bar
from advx.validate import InputError, check_batch, check_number, check_seed

CAP = 5.0  # margin beyond which a fooled image stops contributing to the batch loss
NORMS = (Linf, L2, Patch, Frame)  # dense (Linf, L2), or pasted: one patch at one place, or a frame


@dataclass
class Universal:
    """``delta`` [C, H, W] (inside the ``eps``-ball of ``norm``), and the fooling rate on the
    training images after each epoch (``history``; a search: after each tenth of its queries).
    A patch or a frame: ``mask`` [1, H, W]
    marks its pixels, and ``delta`` holds the values pasted there (0 elsewhere)."""

    delta: torch.Tensor
    eps: float
    norm: Norm
    history: list[float] = field(default_factory=list)
    mask: torch.Tensor | None = None
    found_by: str = ""  # how it was found, for reports ("3 passes of gradient ascent")

    def size(self) -> float:
        """The perturbation's size in its norm (a patch: its side; a frame: its width)."""
        return self.eps if self.mask is not None else self.norm.size(self.delta[None]).item()


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
        raise InputError(f"norm must be 'inf', '2', 'patch' or 'frame' for a universal perturbation, got {norm.label}")
    eps = check_pasted(norm, norm.budget(check_number("eps", eps, minimum=0)), x.shape)
    epochs = check_number("epochs", epochs, minimum=1, integer=True)
    batch_size = check_number("batch_size", batch_size, minimum=1, integer=True)
    patch = isinstance(norm, (Patch, Frame))  # pasted where a mask says
    width = bounds[1] - bounds[0]
    first = (width / 4 if patch else eps / 5) if step is None else check_number("step", step, minimum=0, strict=True)
    order = torch.Generator().manual_seed(check_seed("seed", seed))
    device = device or next(iter(model.parameters()), torch.empty(0)).device
    delta = torch.zeros((1, *x.shape[1:]), device=device)
    result = Universal(delta, eps, norm, found_by=f"{epochs} passes of gradient ascent")
    total = epochs * -(-len(x) // batch_size)
    done = 0
    with frozen(model), bar(total, desc="universal perturbation", unit="batch", enabled=progress) as shown:
        mask = _pasted_mask(model, x[:500].to(device), y[:500].to(device), int(eps), norm, bounds) if patch else None
        if patch:
            delta = torch.full_like(delta, (bounds[0] + bounds[1]) / 2) * mask  # mid-grey to start
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=order).split(batch_size):
                size = first * (1 - 0.95 * done / max(total - 1, 1))
                grad = _loss_gradient(model, x[idx].to(device), y[idx].to(device), delta, bounds, mask)
                if patch:
                    delta = (delta + size * grad.sign() * mask).clamp(*bounds) * mask
                else:
                    delta = norm.project(delta + size * norm.direction(grad), torch.zeros_like(delta), eps)
                done += 1
                shown.update(1)
            result.history.append(fooling(model, x, y, delta[0], bounds=bounds, batch_size=batch_size,
                                          mask=None if mask is None else mask[0])["fooling_rate"])
    result.delta = delta[0].detach()
    result.mask = None if mask is None else mask[0]
    return result


def applied(x: torch.Tensor, delta: torch.Tensor, bounds, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Images ``x`` with the universal perturbation: ``delta`` added (clipped to the box), or,
    with a patch's ``mask``, ``delta``'s values pasted where the mask is 1."""
    if mask is None:
        return (x + delta).clamp(*bounds)
    return torch.where(mask.bool(), delta, x)


def check_pasted(norm: Norm, eps: float, shape) -> float:
    """``eps`` checked for a pasted perturbation on images of ``shape``: a patch's side from 1
    to the shorter side, a frame's width from 1 to half of it (rounded up)."""
    if isinstance(norm, Patch) and not 1 <= eps <= min(shape[-2:]):
        raise InputError(f"eps must be a patch side from 1 to {min(shape[-2:])} (the image's shorter side), "
                         f"got {eps:g}")
    widest = norm.diameter(shape[1:], (0.0, 1.0)) if isinstance(norm, Frame) else None
    if widest is not None and not 1 <= eps <= widest:
        raise InputError(f"eps must be a frame width from 1 to {widest:g} (half the image's shorter side), got {eps:g}")
    return eps


def _pasted_mask(model, x, y, eps, norm, bounds) -> torch.Tensor:
    """[1, 1, H, W]: where a pasted perturbation goes: a frame's border, or a patch's best window."""
    if isinstance(norm, Frame):
        return inside(x[:1], eps)[:, None].to(x.dtype)
    return _best_window(model, x, y, eps, bounds)


def _best_window(model, x, y, side, bounds) -> torch.Tensor:
    """[1, 1, H, W]: the side x side window where the input gradient of the batch's capped
    margin loss, summed over channels and images (in absolute value), is largest."""
    grad = _loss_gradient(model, x, y, torch.zeros_like(x[:1]), bounds, None, each=True)
    heat = grad.abs().sum((0, 1))[None, None]  # [1, 1, H, W]
    sums = torch.nn.functional.avg_pool2d(heat, side, stride=1)
    top, left = divmod(int(sums.flatten().argmax()), sums.shape[-1])
    mask = torch.zeros_like(heat)
    mask[..., top:top + side, left:left + side] = 1
    return mask


def _loss_gradient(model, x, y, delta, bounds, mask=None, each=False) -> torch.Tensor:
    """The gradient, with respect to ``delta`` alone, of the batch's capped margin loss (with
    ``each``: with respect to each image's own copy of it, [N, C, H, W])."""
    delta = (delta.expand_as(x) if each else delta).detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(applied(x, delta, bounds, mask)).float()
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        (grad,) = torch.autograd.grad((other - true).clamp(max=CAP).mean(), delta)
    return grad


@torch.no_grad()
def fooling(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, *,
            bounds: tuple[float, float] = (0.0, 1.0), batch_size: int = 1000,
            mask: torch.Tensor | None = None) -> dict:
    """What ``delta`` [C, H, W] (a patch: pasted where ``mask`` [1, H, W] is 1) does to the
    images ``x`` (labels ``y``): ``fooling_rate`` (the share whose predicted class it changes),
    ``clean_acc``, ``acc`` under it, and the predictions before and after (``pred_clean``,
    ``pred``)."""
    if tuple(delta.shape) != tuple(x.shape[1:]):
        raise InputError(f"the universal perturbation has shape {tuple(delta.shape)}, but the images have "
                         f"{tuple(x.shape[1:])}: it applies only to images of its own shape")
    device = delta.device
    before, after = [], []
    with frozen(model):
        for xb in x.split(batch_size):
            xb = xb.to(device)
            before.append(model(xb).argmax(1).cpu())
            after.append(model(applied(xb, delta, bounds, mask)).argmax(1).cpu())
    before, after, y = torch.cat(before), torch.cat(after), y.cpu()
    return {"fooling_rate": (before != after).float().mean().item(), "clean_acc": (before == y).float().mean().item(),
            "acc": (after == y).float().mean().item(), "pred_clean": before, "pred": after}
