"""FMN: the Fast Minimum-Norm attack, a gradient descent inside a norm ball that adapts.

Pintor, Melis, Demontis, Biggio, Roli & Chiarelli (2021), "Fast Minimum-norm Adversarial
Attacks through Adaptive Norm Constraints" (NeurIPS). Each sample keeps a perturbation
``delta`` and a radius ``eps_k``; at every step, with ``m`` the logit margin (below 0: the
goal is reached) and ``g = dm/dx`` at ``x + delta``:

    adversarial:             eps_k = min(eps_k * (1 - gamma_k), ||delta*||)
    never adversarial yet:   eps_k = ||delta|| + m / ||g||_q      (the linearised boundary)
    adversarial before:      eps_k = eps_k * (1 + gamma_k)

with ``delta*`` the smallest adversarial perturbation found so far and ``q`` the dual
exponent of the norm. Then ``delta`` takes a step down the margin, ``alpha_k * g / ||g||_2``,
and ``x + delta`` is projected onto the ``eps_k``-ball around ``x`` and the pixel box. The
radius shrinks while the iterate is adversarial and grows while it is not, so the iterate
follows the decision boundary towards ``x``. ``alpha_k`` and ``gamma_k`` decay along a
cosine from their initial values (``alpha`` to a hundredth of it, ``gamma`` to ``gamma_final``).

One departure, for L2 only: the stepped image is clipped to the pixel box before the ball
projection (see ``FMN.__init__``), since ``L2.project`` imposes the ball before the box.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from advx.attacks.base import Attack
from advx.attacks.boundary import PAST_BOUNDARY
from advx.norms import L1, L2, TINY, Linf, Norm, per_sample
from advx.validate import InputError, check_number

# The first step size per norm, for images in [0, 1]. The step is an L2-normalised gradient
# and the projection onto the eps_k-ball is what turns it into the norm's geometry: for Linf
# a large step saturates most pixels at +-eps_k; for L1 the exact projection soft-thresholds
# a dense step to a sparse one. Measured on MNIST (100 steps, a small CNN): for Linf and L2
# the median distance moved by under 2% over alpha 1..30 and 0.3..10; for L1, 1 gave 3%
# larger perturbations than 5, and 10 or 20 left a few images unbroken, 5 none.
_ALPHA_INIT = {Linf: 10.0, L2: 1.0, L1: 5.0}
_ALPHA_DECAY = 100.0  # alpha ends at alpha_init / 100


def _cosine(start: float, end: float, step: int, steps: int) -> float:
    """Cosine annealing from ``start`` (step 0) to ``end`` (step ``steps``)."""
    return end + (start - end) * (1 + math.cos(math.pi * step / steps)) / 2


class FMN(Attack):
    """Fast Minimum-Norm attack (FMN), Linf, L2 (default) or L1, untargeted or targeted.

    Per sample, the smallest adversarial perturbation among all iterates (the last one
    included) is returned; a sample never made adversarial is returned unchanged, and a
    sample adversarial already (misclassified, or classified as the target) is returned
    as it is, at distance 0.

    Args:
        eps: an optional budget. FMN does not use it; the base class projects the result
            onto the eps-ball at the end. The default (``None``) is the diameter of the
            pixel box for the images given (``Norm.diameter``): it never binds.
        steps: iterations (each one forward and one backward pass, plus a last forward
            that scores the final iterate).
        alpha_init: the first step size, along the L2-normalised gradient of the margin;
            it decays along a cosine to ``alpha_init / 100``. The default (``None``) depends
            on the norm: 10 for Linf, 1 for L2, 5 for L1.
        gamma_init, gamma_final: the relative change of the radius ``eps_k`` per step, in
            (0, 1) and [0, 1); it decays along a cosine from ``gamma_init`` to ``gamma_final``.
        norm: ``"inf"``, ``"2"`` or ``"1"``. targeted: ``y`` holds target labels.

    ``steps`` in the result is ``steps`` for every sample.

    Example:
        >>> atk = FMN(model, norm="inf", steps=100)
        >>> result = atk.run(x, y)       # x [N, 1, 28, 28] in [0, 1], y [N]
        >>> result.distance              # the smallest Linf perturbation found per sample
    """

    norms = ("inf", "2", "1")
    low_precision = False  # fp32 only: its loop decides on the logits at every step (no bf16 path)
    minimum_norm = True
    targetable = True

    def __init__(self, model: nn.Module, *, eps: float | None = None, steps: int = 100,
                 alpha_init: float | None = None, gamma_init: float = 0.05, gamma_final: float = 0.001,
                 norm: str | Norm = "2", bounds: tuple[float, float] = (0.0, 1.0),
                 targeted: bool = False, seed: int | None = 0,
                 generator: torch.Generator | None = None,
                 precision: str = "fp32", eot: int = 1) -> None:
        super().__init__(model, eps=eps, norm=norm, bounds=bounds, targeted=targeted,
                         seed=seed, generator=generator, precision=precision, eot=eot)
        self.steps = check_number("steps", steps, minimum=1, integer=True)
        self.alpha_init = (_ALPHA_INIT[type(self.norm)] if alpha_init is None
                           else check_number("alpha_init", alpha_init, minimum=0, strict=True))
        self.gamma_init = _check_fraction("gamma_init", gamma_init, strict=True)
        self.gamma_final = _check_fraction("gamma_final", gamma_final, strict=False)
        # The L2 projection onto ball and box is the ball's, then the box's (``Norm.project``):
        # the part of a step that leaves the box (most MNIST pixels sit at 0 or 1) would shrink
        # the whole step to the radius and then be clipped away, so the iterate stalled inside
        # the boundary (41% of the images fooled on MNIST). Clipping first removes that part
        # before the ball is imposed; scaling towards x then stays in the box. The Linf and
        # L1 projections are exact already (clipping first changes nothing for Linf and,
        # for L1, gave slightly larger perturbations).
        self._clip_first = not self.norm.exact_projection

    def _run(self, x, y, generator):
        n = len(x)
        x_adv = x.clone()
        radius = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)  # eps_k
        best_norm = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        found = torch.zeros(n, dtype=torch.bool, device=x.device)
        x_best = x.clone()
        alpha_final = self.alpha_init / _ALPHA_DECAY
        for step in range(self.steps + 1):
            grad, logits, margin = self.gradient(x_adv, y, objective=lambda z: self.margin(z, y))
            adversarial = self.confirm(x_adv, logits, y) & torch.isfinite(logits).all(1)
            size = self.norm.size(x_adv - x)
            better = adversarial & (size < best_norm)
            x_best[better] = x_adv[better]
            best_norm = torch.where(better, size, best_norm)
            found |= adversarial
            if step == self.steps:
                break  # the last pass only scores the final iterate
            gamma = _cosine(self.gamma_init, self.gamma_final, step, self.steps)
            alpha = _cosine(self.alpha_init, alpha_final, step, self.steps)

            flat = grad.flatten(1)
            # The linearised distance just past the boundary, m / ||g||_q (huge for a gradient of 0);
            # where it is not finite (logits that are not) there is no ball to impose yet.
            dual = self.norm.dual_size(flat)
            to_boundary = (margin.clamp_min(0) + PAST_BOUNDARY) / dual.clamp_min(TINY)
            estimate = torch.where(torch.isfinite(to_boundary), size + to_boundary,
                                   torch.full_like(size, math.inf))
            radius = torch.where(adversarial, torch.minimum(radius * (1 - gamma), best_norm),
                                 torch.where(found, radius * (1 + gamma), estimate))

            # Descend the margin along g / ||g||_2 (a gradient of 0 gives a step of 0), then
            # project onto the eps_k-ball around x intersected with the pixel box.
            length = flat.norm(p=2, dim=1).clamp_min(TINY)
            stepped = x_adv - per_sample(alpha / length, x) * grad
            if self._clip_first:
                stepped = self.clip(stepped)
            x_adv = self.norm.project(stepped, x, radius, self.bounds)
        steps = torch.full((n,), self.steps, dtype=torch.long, device=x.device)
        return x_best, steps


def _check_fraction(name: str, value, *, strict: bool) -> float:
    """``value`` in (0, 1) (``strict``) or [0, 1): a relative change of the radius."""
    value = check_number(name, value, minimum=0, strict=strict, maximum=1)
    if value >= 1:
        raise InputError(f"{name} must be < 1, got {value!r}")
    return value
