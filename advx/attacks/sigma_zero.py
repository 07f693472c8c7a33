"""σ-zero: a minimum-L0 attack by gradient descent on a smooth count of changed pixels.

Cinà, Villani, Pintor, Schönherr, Biggio & Pelillo (2025), "σ-zero: Gradient-based
Optimization of ℓ0-norm Adversarial Examples" (ICLR). Per sample a perturbation ``delta``
(starting at 0) descends

    max(m(x + delta) + 1e-4, 0) + (1 / P) * sum_i |delta_i|^2 / (|delta_i|^2 + sigma)

(``m`` the logit margin, below 0 once the goal is reached, aimed a hair past 0 so that an
image on a tie moves; ``|delta_i|`` the size of pixel i's change over its channels; P the
number of pixels): the second term counts changed pixels, smoothly. Each step normalises the
gradient by its largest entry, takes an Adam step whose rate decays along a cosine from ``lr``
to ``lr / 10`` (times the box's width), clips ``x + delta`` to the box and then zeroes every
pixel whose change (largest channel, as a share of the box's width) is below a threshold
``tau``. ``tau`` rises by ``0.01 * rate`` after a step on an adversarial point (sparser) and
falls by as much after one that is not, within [0, 1]. The smallest adversarial perturbation seen is returned, so one
run answers every budget k: robust at k means no perturbation of at most k pixels was found.
advx then prunes it (``prune``): a changed pixel the image stays adversarial without goes back,
so that no single pixel of the result can be reset.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from advx.attacks.base import Attack
from advx.attacks.boundary import PAST_BOUNDARY
from advx.norms import Norm, per_sample
from advx.norms.l0 import pixel_count
from advx.validate import InputError, check_number

_ADAM = (0.9, 0.999, 1e-8)  # beta1, beta2, eps: torch.optim.Adam's defaults
_TAU_RATE = 0.01            # tau moves by this share of the step's rate


class SigmaZero(Attack):
    """σ-zero, minimum L0, untargeted or targeted.

    Per sample, the adversarial image with the fewest changed pixels among all iterates is
    returned; a sample never made adversarial is returned unchanged.

    Args:
        eps: an optional budget; σ-zero does not use it (the base class projects the result
            onto it). The default (``None``) never binds. steps: iterations (one forward and one
            backward pass each, and a last forward that scores the final iterate). lr: Adam's
            first rate. sigma: the smoothing of the count (smaller: closer to the count, less
            smooth). threshold: ``tau``'s first value. prune: afterwards, put back every
            changed pixel the image stays adversarial without (smallest change first), until
            none is left (advx's addition; one batched forward per pixel tried).
            targeted: ``y`` holds target labels.

    ``steps`` in the result is ``steps`` for every sample.

    Example:
        >>> result = SigmaZero(model, steps=1000).run(x, y)
        >>> result.distance              # the fewest pixels changed per sample
    """

    norms = ("0",)
    minimum_norm = True
    low_precision = False  # fp32 only: not measured in bf16

    def __init__(self, model: nn.Module, *, eps: float | None = None, steps: int = 1000, lr: float = 1.0,
                 sigma: float = 1e-3, threshold: float = 0.3, prune: bool = True, norm: str | Norm = "0",
                 bounds: tuple[float, float] = (0.0, 1.0), targeted: bool = False,
                 seed: int | None = 0, generator: torch.Generator | None = None,
                 precision: str = "fp32", eot: int = 1) -> None:
        super().__init__(model, eps=eps, norm=norm, bounds=bounds, targeted=targeted,
                         seed=seed, generator=generator, precision=precision, eot=eot)
        self.steps = check_number("steps", steps, minimum=1, integer=True)
        self.lr = check_number("lr", lr, minimum=0, strict=True)
        self.sigma = check_number("sigma", sigma, minimum=0, strict=True)
        self.threshold = check_number("threshold", threshold, minimum=0, maximum=1)
        if not any(prune is v for v in (True, False)):
            raise InputError(f"prune must be True or False, got {prune!r}")
        self.prune = bool(prune)

    def _run(self, x, y, generator):
        n, pixels = len(x), pixel_count(x)
        beta1, beta2, tiny = _ADAM
        delta = torch.zeros_like(x)
        first, second = torch.zeros_like(x), torch.zeros_like(x)
        tau = torch.full((n,), self.threshold, dtype=x.dtype, device=x.device)
        x_best = x.clone()
        best = torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        low, high = self.bounds
        for step in range(self.steps + 1):
            x_adv = x + delta
            # the gradient of minus the clipped margin (``gradient`` ascends)
            grad, logits, _ = self.gradient(x_adv, y,
                                            objective=lambda z: -(self.margin(z, y) + PAST_BOUNDARY).clamp_min(0))
            adversarial = self.confirm(x_adv, logits, y) & torch.isfinite(logits).all(1)
            size = self.norm.size(delta)
            better = adversarial & (size < best)
            x_best[better], best[better] = x_adv[better], size[better]
            if step == self.steps:
                break
            rate = self.lr / 10 + (self.lr - self.lr / 10) * (1 + math.cos(math.pi * step / self.steps)) / 2
            g = self._count_gradient(delta) / pixels - grad  # descend the objective
            g = g / per_sample(g.flatten(1).abs().amax(1).clamp_min(1e-12), g)
            first = beta1 * first + (1 - beta1) * g
            second = beta2 * second + (1 - beta2) * g * g
            done = step + 1
            move = (first / (1 - beta1 ** done)) / ((second / (1 - beta2 ** done)).sqrt() + tiny)
            delta = (x + delta - rate * (high - low) * move).clamp(low, high) - x
            tau = (tau + torch.where(adversarial, _TAU_RATE, -_TAU_RATE) * rate).clamp(0, 1)
            delta = delta * (self._pixel_change(delta) >= per_sample(tau * (high - low), delta)).to(x.dtype)
        steps = torch.full((n,), self.steps, dtype=torch.long, device=x.device)
        return (self._prune(x, y, x_best) if self.prune else x_best), steps

    def _prune(self, x, y, x_adv):
        """Each changed pixel in turn, the smallest change first, goes back to its clean value
        where the image stays adversarial without it: afterwards no single changed pixel can go
        back (each was tried against the pixels kept after it; one tried early may have become
        removable later, which the loop over rounds repeats until none is)."""
        x_adv = x_adv.clone()
        while True:
            change = self._pixel_change(x_adv - x).flatten(1)  # [N, P] (channels: largest)
            count = (change > 0).sum(1)
            order = torch.where(change > 0, change, math.inf).argsort(dim=1, stable=True)
            removed_any = False
            left = count.clone()
            for j in range(int(count.max()) if len(count) else 0):
                # the last changed pixel stays (x is not adversarial, whatever a batched forward says)
                todo = ((count > j) & (left > 1)).nonzero().squeeze(1)
                pixel = order[todo, j]
                flat = x_adv[todo].flatten(2).clone() if x.dim() > 2 else x_adv[todo].clone()
                clean = x[todo].flatten(2) if x.dim() > 2 else x[todo]
                rows = torch.arange(len(todo), device=x.device)
                flat[rows, ..., pixel] = clean[rows, ..., pixel]  # every channel of the pixel
                candidate = flat.view(-1, *x.shape[1:])
                with torch.no_grad():
                    logits = self.search_logits(candidate)
                still = self.confirm(candidate, logits, y[todo]) & torch.isfinite(logits).all(1)
                x_adv[todo[still]] = candidate[still]
                left[todo[still]] -= 1
                removed_any |= bool(still.any())
            if not removed_any:
                return x_adv

    def _pixel_change(self, delta):
        """The largest change over each pixel's channels, shaped to broadcast over ``delta``."""
        return delta.abs().amax(1, keepdim=True) if delta.dim() > 2 else delta.abs()

    def _count_gradient(self, delta):
        """The gradient of the smooth count ``sum_i s_i / (s_i + sigma)``, ``s_i = |delta_i|^2``:
        ``2 * sigma * delta / (s_i + sigma)^2`` per channel of pixel i."""
        square = delta.square().sum(1, keepdim=True) if delta.dim() > 2 else delta.square()
        return 2 * self.sigma * delta / (square + self.sigma).square()
