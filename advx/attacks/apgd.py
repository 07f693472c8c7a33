"""APGD: step-size-free PGD with momentum, checkpoints and restarts from the best point.

Croce & Hein (2020), "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks" (ICML). Three objectives:

- ``"ce"``: cross-entropy (APGD-CE; with ``targeted=True`` minus the CE of the target);
- ``"dlr"``: the Difference of Logits Ratio, invariant to shifting and scaling the logits
  ``-(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3)`` (APGD-DLR, untargeted only);
- ``"dlr-targeted"``: the targeted DLR ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``,
  where ``pi`` sorts the logits in decreasing order. Used two ways (see ``APGD``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from advx import rng
from advx.attacks.base import Attack, check_number
from advx.norms import Norm

_TINY = 1e-12
LOSSES = ("ce", "dlr", "dlr-targeted")


def step_checkpoints(steps: int) -> list[int]:
    """Iterations ``w_j = ceil(p_j * steps)`` where the step size may be halved, with
    ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # The small shift keeps e.g. 0.22 * 100 = 22.000000000000004 at 22.
    return sorted({math.ceil(pj * steps - 1e-9) for pj in p[1:] if pj < 1} - {0})


def _logit_of(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return logits.gather(1, labels[:, None]).squeeze(1)


def _largest_other(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """max_{i != label} z_i per sample."""
    others = logits.clone()
    others.scatter_(1, labels[:, None], -math.inf)
    return others.amax(1)


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Untargeted DLR [N] (to ascend): ``-(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3)``."""
    top = logits.sort(1, descending=True).values
    return -(_logit_of(logits, y) - _largest_other(logits, y)) / (top[:, 0] - top[:, 2] + _TINY)


def targeted_dlr_loss(logits: torch.Tensor, z_ref: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR [N] (to ascend): ``-(z_ref - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``;
    ``z_ref`` is the true-class logit (or the largest non-target logit, see ``APGD``)."""
    top = logits.sort(1, descending=True).values
    return -(z_ref - _logit_of(logits, target)) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + _TINY)


class _Run(NamedTuple):
    """One APGD run on a batch; every tensor has one entry per sample."""

    x_out: torch.Tensor      # the last adversarial iterate if there was one, else x_best
    success: torch.Tensor    # some iterate reached the goal
    x_best: torch.Tensor     # the iterate with the highest loss
    loss_best: torch.Tensor  # its loss
    loss_start: torch.Tensor  # the loss at the starting point


class APGD(Attack):
    """Auto-PGD: the step size adapts itself, so there is none to tune.

    From a random start ``x0`` (step size ``eta = 2 * eps``), the first step is plain
    PGD; then ``z = P(x_k + eta * direction(grad))`` and
    ``x_{k+1} = P(x_k + momentum * (z - x_k) + (1 - momentum) * (x_k - x_{k-1}))``.
    At each checkpoint ``w_j`` (see ``step_checkpoints``) a sample's ``eta`` is halved
    when the loss rose in fewer than ``rho * (w_j - w_{j-1})`` of the steps since the
    last checkpoint, or when neither ``eta`` nor the best loss changed since then;
    a sample whose ``eta`` is halved restarts from its best-loss point.

    Per sample, the last iterate that reached the goal is returned; if none did, the
    iterate with the highest loss. Restarts (and target classes) run only on samples
    not yet broken; ``steps`` in the result counts the iterations spent per sample.

    Modes (``loss`` x ``targeted``):
        ``loss="ce"`` / ``"dlr"``, ``targeted=False``: APGD-CE / APGD-DLR, ``y`` true labels.
        ``loss="ce"``, ``targeted=True``: ``y`` are targets, ascend minus their CE.
        ``loss="dlr-targeted"``, ``targeted=False`` (APGD-T): ``y`` are true labels; the
            goal is untargeted, reached by running targeted DLR towards each of the
            ``n_target_classes`` classes with the highest clean logits other than ``y``
            (at most K - 1), one after the other, each only on samples not broken yet.
        ``loss="dlr-targeted"``, ``targeted=True``: ``y`` are targets; the true label is
            not known here, so ``z_y`` in the targeted DLR is the largest non-target logit.

    Args:
        eps: budget in pixel units. steps: iterations per run. restarts: runs per
            target class. loss: ``"ce"``, ``"dlr"`` or ``"dlr-targeted"``.
        rho: fraction of loss-increasing steps below which ``eta`` is halved.
        momentum: weight ``alpha`` of the new step (``1 - alpha`` on the last one).
        n_target_classes: target classes tried by APGD-T. norm: ``"inf"`` or ``"2"``.

    Example:
        >>> atk = APGD(model, eps=0.3, steps=100, loss="dlr")
        >>> x_adv = atk(x, y)            # x [N, 1, 28, 28] in [0, 1], y [N]
    """

    def __init__(self, model: nn.Module, *, eps: float = 0.3, steps: int = 100,
                 restarts: int = 1, loss: str = "ce", rho: float = 0.75, momentum: float = 0.75,
                 n_target_classes: int = 9, norm: str | Norm = "inf",
                 bounds: tuple[float, float] = (0.0, 1.0), targeted: bool = False,
                 seed: int | None = 0, generator: torch.Generator | None = None) -> None:
        super().__init__(model, eps=eps, norm=norm, bounds=bounds, targeted=targeted,
                         seed=seed, generator=generator)
        check_number("steps", steps, minimum=1, integer=True)
        check_number("restarts", restarts, minimum=1, integer=True)
        check_number("n_target_classes", n_target_classes, minimum=1, integer=True)
        for name, value in (("rho", rho), ("momentum", momentum)):
            check_number(name, value, minimum=0)
            if value > 1:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(map(repr, LOSSES))}, got {loss!r}")
        if loss == "dlr" and self.targeted:
            raise ValueError("loss='dlr' is untargeted; with targeted=True use loss='dlr-targeted' "
                             "or 'ce', got loss='dlr'")
        self.steps = steps
        self.restarts = restarts
        self.loss_name = loss
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.n_target_classes = n_target_classes
        self._checkpoints = frozenset(step_checkpoints(steps))
        self._over_targets = loss == "dlr-targeted" and not self.targeted

    # ------------------------------------------------------------------ loop
    def _run(self, x, y, generator):
        with torch.no_grad():
            logits = self.model(x)
        self._check_num_classes(logits.shape[1])
        if self._over_targets:
            num_classes = logits.shape[1]
            ranked = logits.argsort(1, descending=True)
            ranked = ranked[ranked != y[:, None]].view(len(x), num_classes - 1)
            targets = [ranked[:, k] for k in range(min(self.n_target_classes, num_classes - 1))]
        else:
            targets = [None]

        x_adv = x.clone()
        best_success = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        best_score = torch.full((len(x),), -math.inf, dtype=x.dtype, device=x.device)
        steps_used = torch.zeros(len(x), dtype=torch.long, device=x.device)
        for target in targets:
            for _ in range(self.restarts):
                todo = (~best_success).nonzero().squeeze(1)
                if len(todo) == 0:
                    return x_adv, steps_used
                run = self._attack_once(x[todo], y[todo], None if target is None else target[todo],
                                        rng.subset(generator, todo))
                if target is None:
                    score = run.loss_best
                else:  # targeted losses towards different classes do not compare; DLR does
                    with torch.no_grad():
                        score = dlr_loss(self.model(run.x_best), y[todo])
                better = run.success | (score > best_score[todo])  # todo: no success so far
                idx = todo[better]
                x_adv[idx] = run.x_out[better]
                best_success[idx] = run.success[better]
                best_score[idx] = score[better]
                steps_used[todo] += self.steps
        return x_adv, steps_used

    def _attack_once(self, x, y, target, generator) -> _Run:
        """One APGD run of ``self.steps`` iterations (``target`` only for APGD-T)."""
        eta = torch.full((len(x),), 2 * self.eps, dtype=x.dtype, device=x.device)
        x_cur = self.clip(self.norm.random_start(x, self.eps, generator))
        grad, logits, loss = self._gradient(x_cur, y, target)
        loss_start = loss.clone()
        success = self.is_success(logits, y)
        x_adv = torch.where(_per_sample(success), x_cur, x)
        x_best, loss_best, grad_best = x_cur.clone(), loss.clone(), grad.clone()
        x_prev, loss_cur = x_cur, loss
        # Checkpoint bookkeeping, per sample.
        increases = torch.zeros(len(x), dtype=torch.long, device=x.device)
        halved_last = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        loss_best_last = loss_best.clone()
        last_checkpoint = 0
        for t in range(1, self.steps + 1):
            step = _per_sample(eta) * self.norm.direction(grad)
            z = self._project(x_cur + step, x)
            if t == 1:
                x_new = z
            else:
                x_new = self._project(x_cur + self.momentum * (z - x_cur)
                                      + (1 - self.momentum) * (x_cur - x_prev), x)
            x_prev, x_cur = x_cur, x_new
            grad, logits, loss = self._gradient(x_cur, y, target)

            reached = self.is_success(logits, y)
            x_adv[reached] = x_cur[reached]
            success |= reached
            increases += (loss > loss_cur).long()
            loss_cur = loss
            improved = loss > loss_best
            x_best[improved] = x_cur[improved]
            grad_best[improved] = grad[improved]
            loss_best = torch.where(improved, loss, loss_best)

            if t in self._checkpoints:
                oscillating = increases < self.rho * (t - last_checkpoint)
                stalled = ~halved_last & (loss_best <= loss_best_last)
                halve = oscillating | stalled
                eta = torch.where(halve, eta / 2, eta)
                # Restart from the best point, without momentum from the abandoned path.
                x_cur = torch.where(_per_sample(halve), x_best, x_cur)
                x_prev = torch.where(_per_sample(halve), x_best, x_prev)
                grad = torch.where(_per_sample(halve), grad_best, grad)
                loss_cur = torch.where(halve, loss_best, loss_cur)
                halved_last, loss_best_last = halve, loss_best.clone()
                increases.zero_()
                last_checkpoint = t
        x_out = torch.where(_per_sample(success), x_adv, x_best)
        return _Run(x_out, success, x_best, loss_best, loss_start)

    # --------------------------------------------------------------- helpers
    def _project(self, x_adv, x):
        return self.clip(self.norm.project(x_adv, x, self.eps))

    def _objective(self, logits, y, target):
        """Per-sample loss to ascend for this mode."""
        if self.loss_name == "ce":
            return self.loss(logits, y)
        if self.loss_name == "dlr":
            return dlr_loss(logits, y)
        if self.targeted:  # y holds the targets; the true label is unknown here
            return targeted_dlr_loss(logits, _largest_other(logits, y), y)
        return targeted_dlr_loss(logits, _logit_of(logits, y), target)

    def _gradient(self, x_adv, y, target):
        """(dLoss/dX, logits, loss) at ``x_adv``; the gradient is taken on the input only."""
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(x_adv)
            loss = self._objective(logits, y, target)
            (grad,) = torch.autograd.grad(loss.sum(), x_adv)
        return grad, logits.detach(), loss.detach()

    def _check_num_classes(self, num_classes: int) -> None:
        needed = {"ce": 2, "dlr": 3, "dlr-targeted": 4}[self.loss_name]
        if num_classes < needed:
            raise ValueError(f"loss={self.loss_name!r} needs a model with at least {needed} classes, "
                             f"got {num_classes}")


def _per_sample(t: torch.Tensor) -> torch.Tensor:
    """A [N] tensor viewed as [N, 1, 1, 1] to broadcast over an image batch."""
    return t.view(-1, 1, 1, 1)
