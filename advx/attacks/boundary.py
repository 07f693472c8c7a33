"""The classifier linearised at an image: what the boundary attacks step to.

At ``x`` the boundary between the reference class ``y`` and a class ``k`` is, to first
order, the hyperplane ``g_k(x) + w_k . (z - x) = 0`` with the gap ``g_k = z_k - z_y`` and its
input gradient ``w_k``. In the threat model's norm it lies ``|g_k| / ||w_k||_q`` away (q the
dual exponent, ``Norm.dual_size``). DeepFool steps to the closest such hyperplane, FAB
projects onto it, FMN estimates its distance. A step aims ``PAST_BOUNDARY`` beyond the
hyperplane, as DeepFool's authors do, so that float rounding cannot leave it on the wrong side.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from advx.attacks.gradients import input_gradient
from advx.norms import TINY, Norm

PAST_BOUNDARY = 1e-4  # added to a gap: a step lands just past the linearised boundary


class Linearisation(NamedTuple):
    """The model at a batch of A images, for M classes each."""

    logits: torch.Tensor  # [A, K]
    gaps: torch.Tensor    # [A, M]: g_k = z_k - z_y
    grads: torch.Tensor   # [A, M, *image]: w_k, the input gradient of g_k


def linearise(model: nn.Module, x: torch.Tensor, y: torch.Tensor, classes: torch.Tensor) -> Linearisation:
    """The gaps ``z_k - z_y`` [A, M] of the classes ``classes`` [A, M] against ``y`` [A] at
    ``x``, and their input gradients (one backward pass per class, weights untouched)."""
    x = x.detach().requires_grad_(True)
    count = classes.shape[1]
    with torch.enable_grad():
        logits = model(x)
        gaps = logits.gather(1, classes) - logits.gather(1, y[:, None])
        grads = [input_gradient(gaps[:, j].sum(), x, retain_graph=j < count - 1) for j in range(count)]
    return Linearisation(logits.detach(), gaps.detach(), torch.stack(grads, 1))


def closest(lin: Linearisation, norm: Norm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample, the closest linearised boundary in ``norm``: its gap [A], its gradient
    [A, *image] and the gradient's dual norm [A] (so the boundary is ``|gap| / size`` away)."""
    size = norm.dual_size(lin.grads.flatten(2)).clamp_min(TINY)  # [A, M]
    k = (lin.gaps.abs() / size).argmin(1)
    rows = torch.arange(len(k), device=k.device)
    return lin.gaps[rows, k], lin.grads[rows, k], size[rows, k]


def other_classes(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[A, K - 1]: every class but ``y`` [A], in order."""
    every = torch.arange(num_classes, device=y.device).expand(len(y), num_classes)
    return every[every != y[:, None]].view(len(y), num_classes - 1)
