"""Carlini-Wagner L2: the smallest L2 perturbation found by optimisation in tanh space.

Carlini & Wagner (2017), "Towards Evaluating the Robustness of Neural Networks"
(IEEE S&P). Minimise ``||x_adv - x||_2^2 + c * f6(x_adv)`` over ``w``, with
``x_adv = lo + (tanh(w) + 1) / 2 * (hi - lo)`` always inside the bounds, and

    f6 = max(z_y - max_{i != y} z_i, -kappa)      (untargeted, y the true label)
    f6 = max(max_{i != t} z_i - z_t, -kappa)      (targeted, t the target)

``c`` is tuned per sample by binary search: smaller after a success, larger after
a failure (times 10 until the first success).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from advx.attacks.base import Attack
from advx.norms import Norm
from advx.validate import check_number

# Adam's usual constants (Kingma & Ba, 2015), as in the paper's implementation.
_BETA1, _BETA2, _ADAM_EPS = 0.9, 0.999, 1e-8
_TANH_MARGIN = 1e-6  # keeps atanh finite for pixels on the bounds


class CW(Attack):
    """Carlini & Wagner L2 attack (minimum-norm; ``norm`` must be ``"2"``).

    Per sample, the smallest successful L2 perturbation over all iterates of all
    binary-search steps is returned; a sample never made adversarial is returned
    unchanged. "Successful" means the goal is reached with margin ``kappa``.

    Args:
        eps: an optional L2 budget. CW does not use it; the base class projects the
            result onto the eps-ball at the end. The default (``None``) is the diameter
            of the pixel box for the images given (``Norm.diameter``): it never binds.
        steps: Adam steps per binary-search step. lr: Adam's learning rate on ``w``.
        binary_search_steps: rounds of the search over ``c``. initial_const: first ``c``.
        kappa: confidence margin (>= 0). targeted: ``y`` holds target labels.

    ``steps`` in the result is ``binary_search_steps * steps`` for every sample.

    Example:
        >>> atk = CW(model, steps=100, binary_search_steps=9)
        >>> x_adv = atk(x, y)            # x [N, 1, 28, 28] in [0, 1], y [N]
    """

    norms = ("2",)
    low_precision = False  # fp32 only: its loop decides on the logits at every step (no bf16 path)
    minimum_norm = True

    def __init__(self, model: nn.Module, *, eps: float | None = None, steps: int = 100, lr: float = 0.1,
                 binary_search_steps: int = 9, initial_const: float = 1e-2, kappa: float = 0.0,
                 norm: str | Norm = "2", bounds: tuple[float, float] = (0.0, 1.0),
                 targeted: bool = False, seed: int | None = 0,
                 generator: torch.Generator | None = None,
                 precision: str = "fp32") -> None:
        super().__init__(model, eps=eps, norm=norm, bounds=bounds, targeted=targeted,
                         seed=seed, generator=generator, precision=precision)
        self.steps = check_number("steps", steps, minimum=1, integer=True)
        self.lr = check_number("lr", lr, minimum=0, strict=True)
        self.binary_search_steps = check_number("binary_search_steps", binary_search_steps, minimum=1, integer=True)
        self.initial_const = check_number("initial_const", initial_const, minimum=0, strict=True)
        self.kappa = check_number("kappa", kappa, minimum=0)

    def _run(self, x, y, generator):
        n = len(x)
        w_start = self._to_tanh_space(x)
        const = torch.full((n,), self.initial_const, dtype=x.dtype, device=x.device)
        lower = torch.zeros_like(const)
        upper = torch.full_like(const, math.inf)
        best_l2 = torch.full_like(const, math.inf)
        x_best = x.clone()
        for _ in range(self.binary_search_steps):
            # Every round starts afresh from x, with a fresh Adam state.
            w = w_start.clone()
            first_moment = torch.zeros_like(w)
            second_moment = torch.zeros_like(w)
            found = torch.zeros(n, dtype=torch.bool, device=x.device)
            for step in range(self.steps + 1):
                grad, x_adv, l2, reached = self._objective_gradient(w, x, y, const)
                better = reached & (l2 < best_l2)
                x_best[better] = x_adv[better]
                best_l2 = torch.where(better, l2, best_l2)
                found |= reached
                if step == self.steps:
                    break  # the last pass only scores the final iterate
                first_moment = _BETA1 * first_moment + (1 - _BETA1) * grad
                second_moment = _BETA2 * second_moment + (1 - _BETA2) * grad.square()
                m_hat = first_moment / (1 - _BETA1 ** (step + 1))
                v_hat = second_moment / (1 - _BETA2 ** (step + 1))
                w = w - self.lr * m_hat / (v_hat.sqrt() + _ADAM_EPS)
            upper = torch.where(found, torch.minimum(upper, const), upper)
            lower = torch.where(found, lower, torch.maximum(lower, const))
            const = torch.where(torch.isfinite(upper), (lower + upper) / 2, const * 10)
        steps = torch.full((n,), self.binary_search_steps * self.steps, dtype=torch.long, device=x.device)
        return x_best, steps

    def _objective_gradient(self, w, x, y, const):
        """Gradient of the CW objective w.r.t. ``w`` (input only), the image, its L2
        distance and whether it reaches the goal with margin kappa."""
        w = w.detach().requires_grad_(True)
        with torch.enable_grad():
            x_adv = self._from_tanh_space(w)
            l2_sq = (x_adv - x).flatten(1).square().sum(1)
            logits = self.model(x_adv)
            gap = self.margin(logits, y)  # the f6 term before clamping
            reached = (gap.detach() < 0) & (gap.detach() <= -self.kappa)
            # f6 = max(gap, -kappa), written so that its gradient is that of gap wherever the
            # goal is not reached: clamp_min passes no gradient at a tie (gap == -kappa == 0),
            # which left an image whose logits tie exactly where it was.
            f6 = torch.where(reached, torch.full_like(gap, -self.kappa), gap)
            objective = l2_sq + const * f6
            (grad,) = torch.autograd.grad(objective.sum(), w)
        return grad, x_adv.detach(), l2_sq.detach().sqrt(), reached

    def _to_tanh_space(self, x):
        lo, hi = self.bounds
        unit = (x - lo) / (hi - lo) * 2 - 1
        return torch.atanh(unit.clamp(-1 + _TANH_MARGIN, 1 - _TANH_MARGIN))

    def _from_tanh_space(self, w):
        lo, hi = self.bounds
        return lo + (torch.tanh(w) + 1) / 2 * (hi - lo)
