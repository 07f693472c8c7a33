"""FGSM: one step of size eps along the sign of the input gradient.

Goodfellow, Shlens & Szegedy (2015), "Explaining and Harnessing Adversarial Examples".
With ``norm="2"`` it is FGM: one step of L2 length eps along grad / ||grad||.
"""

from __future__ import annotations

import torch
from torch import nn

from advx.attacks.base import Attack
from advx.norms import Norm


class FGSM(Attack):
    """Fast Gradient Sign Method: ``x_adv = clip(x + eps * sign(dL/dx))``.

    Args:
        model: classifier returning logits.
        eps: perturbation budget in pixel units (in the norm of ``norm``).
        norm: ``"inf"`` (FGSM), ``"2"`` (FGM) or ``"1"`` (one sparse step: the sign of the
            largest 5% of the gradient, as the L1 norm's ``direction_in_box`` gives it).
        bounds: valid pixel range. targeted: descend the loss of target labels ``y``.

    Example:
        >>> atk = FGSM(model, eps=0.1)
        >>> x_adv = atk(x, y)            # x [N, 1, 28, 28] in [0, 1], y [N]
    """

    norms = ("inf", "2", "1")

    def __init__(self, model: nn.Module, *, eps: float = 0.3, norm: str | Norm = "inf",
                 bounds: tuple[float, float] = (0.0, 1.0), targeted: bool = False,
                 seed: int | None = 0, generator: torch.Generator | None = None,
                 precision: str = "fp32", eot: int = 1) -> None:
        super().__init__(model, eps=eps, norm=norm, bounds=bounds, targeted=targeted,
                         seed=seed, generator=generator, precision=precision, eot=eot)

    def _run(self, x, y, generator):
        grad, _, _ = self.gradient(x, y)
        x_adv = self.clip(x + self.eps * self.norm.direction_in_box(grad, x, self.bounds))
        return x_adv, torch.ones(len(x), dtype=torch.long, device=x.device)
