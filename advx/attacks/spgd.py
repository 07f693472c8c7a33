"""sPGD: sparse PGD, a white-box L0 attack that learns which pixels to change and how.

After Zhong, Liu & Lin (2024), "Efficient and Robust Sparse Adversarial Attacks via Sparse
PGD" (ICLR). The perturbation is ``p * m``: ``p`` a dense perturbation that keeps ``x + p``
in the pixel box, ``m`` a binary mask of k pixels (one position with all its channels), the
top k of real scores ``s``, one per pixel (drawn from N(0, 1) at the start), so that
gradient steps can move pixels in and out of the mask. Each step is one forward and one
backward pass at ``x + p * m``, with ``G`` the input gradient there of the loss to ascend
(cross-entropy while the margin is at least 0.5, the negative margin below), and the paper's
unprojected gradients, through the soft mask ``sigmoid(s)``:

    p <- clip_box(p + alpha * sign(G * sigmoid(s)))        every pixel, in the mask or not
    s <- s + beta * sqrt(P) * g / ||g||_2,   g_i = sigmoid'(s_i) * sum_c G_ci * p_ci

``g_i`` is how much pixel i, moved by its ``p``, would add in the mask (outside it, ``p``
follows the gradient there); sigmoid's slope slows scores that have settled. A sample whose
mask has not changed for ``patience`` steps draws its scores afresh (the paper's random
reinitialisation), keeping ``p``. A sample stops at its first success.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from advx import rng
from advx.attacks.base import Attack
from advx.attacks.results import Run
from advx.attacks.search import improves
from advx.norms import Norm
from advx.norms.l0 import pixel_count, spread_pixels, top_pixels
from advx.validate import check_number

CONFIDENT = 0.5  # below this margin the objective is the margin itself


class SparsePGD(Attack):
    """sPGD (sparse PGD), L0, untargeted or targeted: at most k = ``eps`` pixels changed.

    Args:
        eps: k, the number of pixels changed (a whole number; above the image's pixel count
            it is clamped to it). steps: gradient steps per restart (each one forward and one
            backward pass; a last forward scores the final iterate). alpha: the step of ``p``
            per coordinate, as a share of the box's width. beta: the mean step of the mask
            scores. patience: steps with the same mask before the scores are drawn afresh. restarts: independent runs, each on the samples not broken yet.
        targeted: ``y`` holds target labels.

    ``steps`` in the result is the number of gradient steps spent on each sample (with its
    early stop), summed over restarts.

    Example:
        >>> atk = SparsePGD(model, eps=10, steps=300)
        >>> result = atk.run(x, y)      # result.distance: pixels changed, at most 10
    """

    norms = ("0",)
    low_precision = False  # fp32 only: not measured in bf16

    def __init__(self, model: nn.Module, *, eps: float = 10, steps: int = 300, alpha: float = 0.25,
                 beta: float = 0.25, patience: int = 3, restarts: int = 1, norm: str | Norm = "0",
                 bounds: tuple[float, float] = (0.0, 1.0), targeted: bool = False,
                 seed: int | None = 0, generator: torch.Generator | None = None,
                 precision: str = "fp32", eot: int = 1) -> None:
        super().__init__(model, eps=eps, norm=norm, bounds=bounds, targeted=targeted,
                         seed=seed, generator=generator, precision=precision, eot=eot)
        self.steps = check_number("steps", steps, minimum=1, integer=True)
        self.alpha = check_number("alpha", alpha, minimum=0, strict=True)
        self.beta = check_number("beta", beta, minimum=0, strict=True)
        self.patience = check_number("patience", patience, minimum=1, integer=True)
        self.restarts = check_number("restarts", restarts, minimum=1, integer=True)

    def _run(self, x, y, generator):
        k = int(min(self.budget(x), pixel_count(x)))

        def restart(idx, gen):
            x_new, margin, reached, steps = self._run_once(x[idx], y[idx], k, gen)
            return Run(x_new, reached, -margin, steps)  # the lower the margin, the better

        return self.best_of_runs(x, generator, [restart] * self.restarts)

    def _run_once(self, x, y, k, generator):
        """One run with k pixels; returns ``(x_best, margin, reached, steps)``."""
        n, positions = len(x), pixel_count(x)
        low, high = self.bounds
        width = high - low
        p = low + width * rng.rand(x.shape, generator, device=x.device, dtype=x.dtype) - x
        scores = rng.randn((n, positions), generator, device=x.device, dtype=x.dtype)
        x_best, best = x.clone(), torch.full((n,), math.inf, dtype=x.dtype, device=x.device)
        reached = torch.zeros(n, dtype=torch.bool, device=x.device)
        steps = torch.zeros(n, dtype=torch.long, device=x.device)
        still = torch.zeros(n, dtype=torch.long, device=x.device)  # steps the mask has not changed
        active = torch.arange(n, device=x.device)
        budget = torch.full((n,), float(k), device=x.device)
        mask = top_pixels(scores, budget)
        step_size = self.beta * math.sqrt(positions * (x.shape[1] if x.dim() > 2 else 1))
        for step in range(self.steps + 1):
            xs, ys, ps = x[active], y[active], p[active]
            x_adv = xs + ps * spread_pixels(mask[active], xs)
            grad, logits, _ = self.gradient(x_adv, ys, objective=lambda z: self._objective(z, ys))
            margin = self.margin(logits, ys).nan_to_num(nan=math.inf)
            hit = self.confirm(x_adv, logits, ys) & torch.isfinite(logits).all(1)
            better = hit | improves(margin, best[active])
            x_best[active[better]] = x_adv[better]
            best[active[better]] = margin[better]
            reached[active[hit]] = True
            if step == self.steps:
                break
            steps[active[~hit]] += 1
            go = ~hit
            active, xs, ps, grad = active[go], xs[go], ps[go], grad[go]
            if len(active) == 0:
                break
            # The paper's unprojected gradients: through the soft mask sigmoid(s) for p, and
            # through sigmoid's slope for the scores, so saturated scores move slowly.
            soft = torch.sigmoid(scores[active])
            g = (grad * ps).flatten(2).sum(1) if grad.dim() > 2 else grad * ps  # [A, P]
            g = g * soft * (1 - soft)
            norm = g.norm(dim=1, keepdim=True)
            scores[active] += torch.where(norm > 0, step_size * g / norm.clamp_min(1e-12), 0.0)
            moved = ps + self.alpha * width * (grad * spread_pixels(soft, xs)).sign()
            p[active] = torch.minimum(torch.maximum(moved, low - xs), high - xs)
            new_mask = top_pixels(scores[active], budget[:len(active)])
            still[active] = torch.where((new_mask == mask[active]).all(1), still[active] + 1, 0)
            mask[active] = new_mask
            redraw = active[still[active] >= self.patience]
            if len(redraw):
                scores[redraw] = rng.randn((len(redraw), positions), rng.subset(generator, redraw),
                                           device=x.device, dtype=x.dtype)
                mask[redraw] = top_pixels(scores[redraw], budget[:len(redraw)])
                still[redraw] = 0
        return x_best, best, reached, steps

    def _objective(self, logits, y):
        """The loss to ascend, as the paper's: cross-entropy while the margin is at least
        ``CONFIDENT``, the negative margin below it (CE's gradient fades near the boundary)."""
        margin = self.margin(logits, y)
        return torch.where(margin.detach() < CONFIDENT, -margin, self.loss(logits, y))
