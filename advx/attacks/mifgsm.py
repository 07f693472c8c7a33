"""MI-FGSM: iterative FGSM whose steps follow an accumulated (momentum) gradient.

Dong, Liao, Pang, Su, Zhu, Hu & Li (2018), "Boosting Adversarial Attacks with
Momentum" (CVPR). The momentum ``g`` sums L1-normalised gradients, which keeps the
direction stable across steps and escapes poor local maxima of the loss.
"""

from __future__ import annotations

import torch
from torch import nn

from advx.attacks.base import Attack
from advx.norms import TINY, Norm, per_sample
from advx.validate import check_number


class MIFGSM(Attack):
    """Momentum Iterative FGSM, from the clean image (no random start).

    Each step::

        g     <- decay * g + grad / ||grad||_1          (per sample)
        x_adv <- clip(project(x_adv + alpha * direction(g)))

    where ``direction`` is ``sign`` for Linf and ``g / ||g||_2`` for L2.

    Args:
        eps: budget in pixel units. alpha: step size (default ``eps / steps``,
            as in the paper, so that ``steps`` steps can just reach the boundary).
        steps: iterations. decay: momentum factor mu (``0`` gives I-FGSM / BIM).
        norm: ``"inf"`` or ``"2"``. targeted: descend the CE of target labels ``y``.

    Returns ``steps`` per sample as the step count (no early stop).

    Example:
        >>> atk = MIFGSM(model, eps=0.3, steps=10, decay=1.0)
        >>> x_adv = atk(x, y)            # x [N, 1, 28, 28] in [0, 1], y [N]
    """

    def __init__(self, model: nn.Module, *, eps: float = 0.3, alpha: float | None = None,
                 steps: int = 10, decay: float = 1.0, norm: str | Norm = "inf",
                 bounds: tuple[float, float] = (0.0, 1.0), targeted: bool = False,
                 seed: int | None = 0, generator: torch.Generator | None = None,
                 precision: str = "fp32", eot: int = 1) -> None:
        super().__init__(model, eps=eps, norm=norm, bounds=bounds, targeted=targeted,
                         seed=seed, generator=generator, precision=precision, eot=eot)
        self.steps = check_number("steps", steps, minimum=1, integer=True)
        self.decay = check_number("decay", decay, minimum=0)
        # The default is 0 when eps is 0 (nothing to do); a step size given must be > 0.
        self.alpha = self.eps / self.steps if alpha is None else check_number("alpha", alpha, minimum=0, strict=True)

    def _run(self, x, y, generator):
        x_adv = x.clone()
        momentum = torch.zeros_like(x)
        for _ in range(self.steps):
            grad, _, _ = self.gradient(x_adv, y)
            l1 = grad.flatten(1).abs().sum(1).clamp_min(TINY)
            momentum = self.decay * momentum + grad / per_sample(l1, grad)
            x_adv = x_adv + self.alpha * self.norm.direction(momentum)
            x_adv = self.norm.project(x_adv, x, self.eps, self.bounds)
        return x_adv, torch.full((len(x),), self.steps, dtype=torch.long, device=x.device)
