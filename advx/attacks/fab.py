"""FAB: the Fast Adaptive Boundary attack, a minimum-norm attack in Linf, L2 and L1.

Croce & Hein (2020), "Minimally distorted Adversarial Examples with a Fast Adaptive
Boundary Attack" (ICML). At the iterate ``x_i`` the classifier is linearised: the
boundary towards class ``k`` is the hyperplane ``g_k(x_i) + w_k . (z - x_i) = 0`` with
``g_k = z_k - z_y`` and ``w_k`` its gradient. The closest hyperplane in the threat model's
norm is chosen, and both ``x_i`` and the original image ``x`` are projected onto it within
the pixel box (``Norm.to_hyperplane``: the smallest step, exact). The next iterate mixes
the two projections, biased towards the one from ``x`` so that the result stays close to it:

    x_new = (1 - a) (x_i + eta d_i) + a (x + eta d_0),  a = min(|d_i| / (|d_i| + |d_0|), alpha_max)

Once ``x_new`` is adversarial (the smallest such one is kept) the search steps back towards
``x``: ``x_i+1 = (1 - beta) x + beta x_new``. Restarts begin from a random point at half
the best distance found so far.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from advx import rng
from advx.attacks.base import Attack
from advx.attacks.boundary import PAST_BOUNDARY, closest, linearise, other_classes
from advx.attacks.gradients import input_gradient
from advx.norms import TINY, Norm, per_sample
from advx.validate import InputError, check_number


class FAB(Attack):
    """FAB: per sample, the smallest adversarial perturbation it finds (minimum-norm).

    Modes:
        ``n_target_classes=None``, ``targeted=False`` (FAB): every class's boundary is
            linearised at each step (one gradient per class) and the closest one is taken.
        ``n_target_classes=k`` (FAB-T, as in AutoAttack): one run towards each of the ``k``
            classes with the highest clean logits other than ``y``, one gradient per step;
            the smallest perturbation over the runs is kept.
        ``targeted=True``: ``y`` holds the targets; the boundary is that of the target
            against the largest other logit (``n_target_classes`` plays no part).

    With a budget ``eps`` a sample is done once it has an adversarial example within
    ``eps`` (later restarts and target classes skip it); with ``eps=None`` (the default,
    what ``advx.evaluate`` uses: one run answers every eps) each sample gets every run.

    Args:
        steps: iterations per run. restarts: runs per target (the first from ``x``).
        alpha_max: the largest weight of the projection from ``x``. eta: overshoot of the
            projections (> 1 crosses the linearised boundary). beta: the backward step.
        norm: ``"inf"``, ``"2"`` or ``"1"``.

    ``steps`` in the result counts the iterations spent on the sample over all runs.

    Example:
        >>> atk = FAB(model, norm="2", steps=100)
        >>> result = atk.run(x, y)        # result.distance: per-sample L2 distance found
    """

    norms = ("inf", "2", "1")
    minimum_norm = True
    low_precision = False  # fp32 only: it decides on the logits at every step (no bf16 path)

    def __init__(self, model: nn.Module, *, eps: float | None = None, steps: int = 100, restarts: int = 1,
                 n_target_classes: int | None = None, alpha_max: float = 0.1, eta: float = 1.05,
                 beta: float = 0.9, norm: str | Norm = "inf", bounds: tuple[float, float] = (0.0, 1.0),
                 targeted: bool = False, seed: int | None = 0, generator: torch.Generator | None = None,
                 precision: str = "fp32") -> None:
        super().__init__(model, eps=eps, norm=norm, bounds=bounds, targeted=targeted,
                         seed=seed, generator=generator, precision=precision)
        self.steps = check_number("steps", steps, minimum=1, integer=True)
        self.restarts = check_number("restarts", restarts, minimum=1, integer=True)
        if n_target_classes is not None:
            n_target_classes = check_number("n_target_classes", n_target_classes, minimum=1, integer=True)
        self.n_target_classes = n_target_classes
        self.alpha_max = check_number("alpha_max", alpha_max, minimum=0)
        if self.alpha_max > 1:
            raise InputError(f"alpha_max must be in [0, 1], got {alpha_max!r}")
        self.eta = check_number("eta", eta, minimum=1)
        self.beta = check_number("beta", beta, minimum=0)
        if self.beta >= 1:
            raise InputError(f"beta must be in [0, 1), got {beta!r}")

    # ------------------------------------------------------------------ loop
    def _run(self, x, y, generator):
        n = len(x)
        with torch.no_grad():
            logits = self.model(x)
        best = torch.where(self.confirm(x, logits, y), 0.0, math.inf).to(x.dtype)  # misclassified: 0
        x_best, guess = x.clone(), torch.zeros_like(best)
        steps = torch.zeros(n, dtype=torch.long, device=x.device)
        # the boundaries each run steps to: every other class's (the closest at each step),
        # or one target class's (FAB-T); targeted, None: the target's against the largest other
        if self.targeted:
            boundaries = [None]
        elif self.n_target_classes is None:
            boundaries = [other_classes(y, logits.shape[1])]
        else:
            boundaries = [t[:, None] for t in self.goal.targets_to_try(logits, y, self.n_target_classes)]
        for classes in boundaries:
            for r in range(self.restarts):
                todo = (best > (0 if self.eps is None else self.eps)).nonzero().squeeze(1)
                if len(todo) == 0:
                    return x_best, steps
                start = x[todo]
                if r > 0:  # a random point at half the best distance (or of the first estimate)
                    radius = 0.5 * torch.where(torch.isfinite(best[todo]), best[todo], guess[todo])
                    point = self.norm.random_start(x[todo], 1.0, rng.subset(generator, todo)) - x[todo]
                    start = self.clip(x[todo] + point * per_sample(radius, point))
                x_run, dist, estimate = self._run_once(x[todo], y[todo], None if classes is None else classes[todo],
                                                       start)
                if r == 0:
                    guess[todo] = estimate
                better = dist < best[todo]
                x_best[todo[better]] = x_run[better]
                best[todo[better]] = dist[better]
                steps[todo] += self.steps
        return x_best, steps

    def _run_once(self, x, y, classes, start):
        """One run from ``start``: the smallest adversarial iterate per sample, its distance,
        and the linear estimate of the distance at ``start``."""
        lower, upper = self.bounds
        x_i, x_best = start, x.clone()
        best = torch.full((len(x),), math.inf, dtype=x.dtype, device=x.device)
        for step in range(self.steps):
            g, w = self._linearise(x_i, y, classes)
            if step == 0:  # the linear estimate of the distance: the radius of later restarts
                guess = g.abs() / self.norm.dual_size(w).clamp_min(TINY)
            flat_i, flat_x = x_i.flatten(1), x.flatten(1)
            c = PAST_BOUNDARY - g  # the step that takes g (below 0 until the goal) just past 0
            d_i = self.norm.to_hyperplane(w, c, lower - flat_i, upper - flat_i)
            d_0 = self.norm.to_hyperplane(w, c + (w * (flat_i - flat_x)).sum(1), lower - flat_x, upper - flat_x)
            n_i, n_0 = self.norm.size(d_i), self.norm.size(d_0)
            a = (n_i / (n_i + n_0).clamp_min(TINY)).clamp(0, self.alpha_max).unsqueeze(1)
            x_new = self.clip(((1 - a) * (flat_i + self.eta * d_i) + a * (flat_x + self.eta * d_0)).view_as(x))
            with torch.no_grad():
                logits = self.model(x_new)
            hit = self.confirm(x_new, logits, y) & torch.isfinite(x_new).flatten(1).all(1)
            dist = self.norm.size(x_new - x)
            better = hit & (dist < best)
            x_best[better], best[better] = x_new[better], dist[better]
            x_i = torch.where(per_sample(hit, x), (1 - self.beta) * x + self.beta * x_new, x_new)
        return x_best, best, guess

    def _linearise(self, x_i, y, classes):
        """``(g, w)``: the value [A] and gradient [A, D] of the boundary function to step to:
        the gap of the closest of the ``classes`` [A, M] against ``y`` (``boundary.closest``),
        or, targeted (``classes`` None), the target's gap against the largest other logit."""
        if classes is not None:
            gap, w, _ = closest(linearise(self.model, x_i, y, classes), self.norm)
            return gap, w.flatten(1)
        x_i = x_i.detach().requires_grad_(True)
        with torch.enable_grad():
            g = -self.margin(self.model(x_i), y)
            w = input_gradient(g.sum(), x_i)
        return g.detach(), w.flatten(1)
