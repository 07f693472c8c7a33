"""DeepFool: walk to the nearest decision boundary of the linearised classifier.

Moosavi-Dezfooli, Fawzi & Frossard (2016), "DeepFool: a simple and accurate method
to fool deep neural networks" (CVPR). At ``x_i``, for each candidate class ``k``,
with ``f_k = z_k - z_y`` and ``w_k = grad f_k``, the boundary of class ``k`` is at
distance ``|f_k| / ||w_k||_q`` in the linear model (``q`` the dual norm: 2 for L2,
1 for Linf). The step goes to the closest one; the perturbations add up, and the
total is scaled by ``1 + overshoot`` to cross the boundary.
"""

from __future__ import annotations

import torch
from torch import nn

from advx.attacks.base import Attack
from advx.attacks.boundary import PAST_BOUNDARY, closest, linearise
from advx.norms import Norm, per_sample
from advx.validate import check_number


class DeepFool(Attack):
    """DeepFool, untargeted, L2 (default) or Linf.

    Each sample stops as soon as it is misclassified (``steps`` in the result is the
    number of linearisation steps it took; 0 for a sample misclassified already).

    Args:
        eps: an optional budget, applied by the base class's final projection. The
            default (``None``) is the diameter of the pixel box for the images given
            (``Norm.diameter``), a budget that never binds.
        steps: most linearisation steps per sample. overshoot: the total perturbation
            is multiplied by ``1 + overshoot``.
        num_candidates: boundaries considered are those of the ``num_candidates``
            classes with the highest clean logits (the true label excluded).
        norm: ``"2"`` or ``"inf"``. targeted: must stay ``False``.

    Example:
        >>> atk = DeepFool(model, steps=50, overshoot=0.02)
        >>> x_adv = atk(x, y)            # x [N, 1, 28, 28] in [0, 1], y [N] true labels
    """

    targetable = False
    low_precision = False  # fp32 only: its loop decides on the logits at every step (no bf16 path)
    minimum_norm = True

    def __init__(self, model: nn.Module, *, eps: float | None = None, steps: int = 50,
                 overshoot: float = 0.02, num_candidates: int = 10, norm: str | Norm = "2",
                 bounds: tuple[float, float] = (0.0, 1.0), targeted: bool = False,
                 seed: int | None = 0, generator: torch.Generator | None = None,
                 precision: str = "fp32") -> None:
        super().__init__(model, eps=eps, norm=norm, bounds=bounds, targeted=targeted,
                         seed=seed, generator=generator, precision=precision)
        self.steps = check_number("steps", steps, minimum=1, integer=True)
        self.overshoot = check_number("overshoot", overshoot, minimum=0)
        self.num_candidates = check_number("num_candidates", num_candidates, minimum=2, integer=True)

    def _run(self, x, y, generator):
        n = len(x)
        others = self._other_candidates(x, y)
        r_total = torch.zeros_like(x)
        x_adv = x.clone()
        steps_used = torch.full((n,), self.steps, dtype=torch.long, device=x.device)
        active = torch.arange(n, device=x.device)
        for step in range(self.steps):
            lin = linearise(self.model, x_adv[active], y[active], others[active])
            done = lin.logits.argmax(1) != y[active]
            steps_used[active[done]] = step
            keep = ~done
            active, lin = active[keep], lin._replace(gaps=lin.gaps[keep], grads=lin.grads[keep])
            if len(active) == 0:
                break
            r_total[active] += self._step_to_boundary(lin)
            x_adv[active] = self.clip(x[active] + (1 + self.overshoot) * r_total[active])
        return x_adv, steps_used

    def _other_candidates(self, x, y):
        """[N, M] candidate classes per sample: the top ``num_candidates`` by clean logit,
        minus the true label (or minus the last one when ``y`` is not among them,
        which only happens for a sample misclassified already)."""
        with torch.no_grad():
            logits = self.model(x)
        k = min(self.num_candidates, logits.shape[1])
        top = logits.argsort(1, descending=True)[:, :k]
        keep = top != y[:, None]
        keep[keep.all(1), -1] = False
        return top[keep].view(len(x), k - 1)

    def _step_to_boundary(self, lin):
        """The minimal step [A, C, H, W] onto the closest linearised boundary: it is
        ``(|g| + PAST_BOUNDARY) / ||w||_q`` away, and the norm's steepest direction of unit size
        (``w / ||w||_2``, or ``sign(w)`` for Linf) covers it in one step."""
        gap, w, size = closest(lin, self.norm)
        return per_sample((gap.abs() + PAST_BOUNDARY) / size, w) * self.norm.direction(w)
