"""APGD: step-size-free PGD with momentum, checkpoints and restarts from the best point.

Croce & Hein (2020), "Reliable evaluation of adversarial robustness with an ensemble
of diverse parameter-free attacks" (ICML). Three objectives (``objectives.py``): ``"ce"``
(APGD-CE), ``"dlr"``, the Difference of Logits Ratio, invariant to shifting and scaling the
logits (APGD-DLR, untargeted only), and ``"dlr-targeted"`` (two uses, see ``APGD``).

L1 (Croce & Hein 2021, "Mind the box: l1-APGD for sparse adversarial attacks on image
classifiers", ICML): steps along the sign of the largest gradients (a share of the pixels
that adapts), never along pixels the box would clip; the exact projection on ball and box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import NamedTuple

import torch
from torch import nn

from advx.attacks.base import Attack
from advx.attacks.budget import rerun_near
from advx.attacks.objectives import dlr_loss
from advx.attacks.results import Run
from advx.norms import Norm, per_sample
from advx.validate import InputError, check_number

LOSSES = ("ce", "dlr", "dlr-targeted")
# Sparse norms: phases at a radius of (scale * eps) for a share of the steps, each starting
# from the last one's point ("Mind the box"; AutoAttack's L1 ``use_largereps``).
LARGE_REPS = ((3.0, 0.3), (2.0, 0.3), (1.5, 0.2), (1.0, 0.2))


def step_checkpoints(steps: int) -> list[int]:
    """Iterations ``w_j = ceil(p_j * steps)`` where the step size may be halved, with
    ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    # The small shift keeps e.g. 0.22 * 100 = 22.000000000000004 at 22.
    return sorted({math.ceil(pj * steps - 1e-9) for pj in p[1:] if pj < 1} - {0})


class _Outcome(NamedTuple):
    """What one APGD run (or phase) on a batch found; every tensor has one entry per sample."""

    x_out: torch.Tensor      # the last adversarial iterate if there was one, else x_best
    success: torch.Tensor    # some iterate reached the goal
    x_best: torch.Tensor     # the iterate with the highest loss
    loss_best: torch.Tensor  # its loss
    steps: torch.Tensor      # iterations spent (with early stop: until the goal was reached)


@dataclass
class _State:
    """Per-sample state of the samples still running in one APGD run."""

    x: torch.Tensor               # the clean images
    radius: torch.Tensor          # eps of this phase
    y: torch.Tensor
    target: torch.Tensor | None   # APGD-T's target class
    eta: torch.Tensor             # step size
    x_cur: torch.Tensor
    x_prev: torch.Tensor
    grad: torch.Tensor
    loss_cur: torch.Tensor
    x_best: torch.Tensor          # the iterate with the highest loss so far
    loss_best: torch.Tensor
    grad_best: torch.Tensor
    increases: torch.Tensor       # steps that raised the loss since the last checkpoint
    halved_last: torch.Tensor     # eta was halved at the last checkpoint
    loss_best_last: torch.Tensor  # loss_best at the last checkpoint
    share: torch.Tensor           # L1: the share of the pixels a step moves
    support_last: torch.Tensor    # L1: pixels changed by x_best at the last checkpoint

    def back_to_best(self, mask: torch.Tensor) -> None:
        """Restart the samples of ``mask`` from their best point, without momentum."""
        back = per_sample(mask, self.x)
        self.x_cur = torch.where(back, self.x_best, self.x_cur)
        self.x_prev = torch.where(back, self.x_best, self.x_prev)
        self.grad = torch.where(back, self.grad_best, self.grad)
        self.loss_cur = torch.where(mask, self.loss_best, self.loss_cur)

    def keep(self, mask: torch.Tensor) -> "_State":
        """The state of the samples where ``mask`` is True."""
        return _State(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[mask]
                         for f in fields(self)})


class APGD(Attack):
    """Auto-PGD: the step size adapts itself, so there is none to tune.

    From a random start ``x0`` (step size ``eta = 2 * eps``), the first step is plain
    PGD; then ``z = P(x_k + eta * direction(grad))`` and
    ``x_{k+1} = P(x_k + momentum * (z - x_k) + (1 - momentum) * (x_k - x_{k-1}))``.
    At each checkpoint ``w_j`` (see ``step_checkpoints``) a sample's ``eta`` is halved
    when the loss rose in fewer than ``rho * (w_j - w_{j-1})`` of the steps since the
    last checkpoint, or when neither ``eta`` nor the best loss changed since then;
    a sample whose ``eta`` is halved restarts from its best-loss point. L1 ("Mind the box"):
    no momentum, ``eta = eps`` first, a step moves the largest 20% of the gradient, then every
    4% of the steps the share adapts (``_adapt_sparsity``), in the phases of ``LARGE_REPS``.

    Per sample, the last iterate that reached the goal is returned; if none did, the
    iterate with the highest loss. Restarts (and target classes) run only on samples
    not yet broken; ``steps`` in the result counts the iterations spent per sample.

    Modes: ``loss="ce"``/``"dlr"`` untargeted: APGD-CE/APGD-DLR; ``loss="ce"``, ``targeted``:
    ``y`` are targets, ascend minus their CE; ``loss="dlr-targeted"`` untargeted (APGD-T):
    targeted DLR towards each of the ``n_target_classes`` classes with the highest clean
    logits other than ``y``, one after the other, each on the samples not broken yet;
    ``loss="dlr-targeted"``, ``targeted``: ``y`` are targets, the largest non-target logit
    stands in for ``z_y`` (the true label is not known).

    Args:
        eps: budget in pixel units. steps: iterations per run. restarts: runs per
            target class. loss: ``"ce"``, ``"dlr"`` or ``"dlr-targeted"``.
        rho: fraction of loss-increasing steps below which ``eta`` is halved.
        momentum: weight ``alpha`` of the new step (``1 - alpha`` on the last one).
        n_target_classes: target classes tried by APGD-T. norm: ``"inf"``, ``"2"`` or ``"1"``.
        early_stop: drop each sample from the run as soon as it reaches the goal (what
            ``advx.evaluate`` asks for; the result is then its first adversarial iterate).
        near_restarts, near: more runs for a sample left near the boundary (``advx.attacks.budget``);
            APGD-T's go first to the classes after its ``n_target_classes``, then to all in turn.

    Example:
        >>> atk = APGD(model, eps=0.3, steps=100, loss="dlr")
        >>> x_adv = atk(x, y)            # x [N, 1, 28, 28] in [0, 1], y [N]
    """

    norms = ("inf", "2", "1")

    def __init__(self, model: nn.Module, *, eps: float = 0.3, steps: int = 100,
                 restarts: int = 1, loss: str = "ce", rho: float = 0.75, momentum: float = 0.75,
                 n_target_classes: int = 9, early_stop: bool = False, near_restarts: int = 0, near: float = 0.25,
                 norm: str | Norm = "inf", bounds: tuple[float, float] = (0.0, 1.0), targeted: bool = False,
                 seed: int | None = 0, generator: torch.Generator | None = None, precision: str = "fp32",
                 eot: int = 1) -> None:
        super().__init__(model, eps=eps, norm=norm, bounds=bounds, targeted=targeted,
                         seed=seed, generator=generator, precision=precision, eot=eot)
        self.steps = check_number("steps", steps, minimum=1, integer=True)
        self.restarts = check_number("restarts", restarts, minimum=1, integer=True)
        self.n_target_classes = check_number("n_target_classes", n_target_classes, minimum=1, integer=True)
        self.near_restarts = check_number("near_restarts", near_restarts, minimum=0, integer=True)
        self.near = check_number("near", near, minimum=0)
        for name, value in (("rho", rho), ("momentum", momentum)):
            if not 0 <= check_number(name, value) <= 1:
                raise InputError(f"{name} must be in [0, 1], got {value!r}")
        if loss not in LOSSES:
            raise InputError(f"loss must be one of {', '.join(map(repr, LOSSES))}, got {loss!r}")
        self._check_targetable(loss=loss)  # loss='dlr' is untargeted; 'dlr-targeted' or 'ce' are not
        self.loss_name, self.rho, self.momentum = loss, float(rho), float(momentum)
        self.early_stop = bool(early_stop)
        self._checkpoints = frozenset(step_checkpoints(self.steps))

    @classmethod
    def abilities(cls, **options):
        loss = options.get("loss", "ce")  # DLR reads the 3rd largest logit, targeted DLR the 4th
        return super().abilities()._replace(targetable=loss != "dlr",
                                            min_classes={"ce": 2, "dlr": 3, "dlr-targeted": 4}.get(loss, 2))

    # ------------------------------------------------------------------ loop
    def _run(self, x, y, generator):
        with torch.no_grad():
            logits = self.model(x)
        needed = self.abilities(loss=self.loss_name).min_classes
        if logits.shape[1] < needed:
            raise InputError(f"loss={self.loss_name!r} needs a model with at least {needed} classes, "
                             f"got {logits.shape[1]}")
        ranked = self.goal.targets_to_try(logits, y, logits.shape[1]) if self.loss_name == "dlr-targeted" else [None]
        targets = ranked[:self.n_target_classes]

        def towards(target, x, y):
            def run(idx, gen):
                out = self._run_once(x[idx], y[idx], None if target is None else target[idx], gen)
                if target is None:
                    score = out.loss_best
                else:  # targeted losses towards different classes do not compare; DLR does
                    with torch.no_grad():
                        score = dlr_loss(self.model(out.x_best), y[idx])
                return Run(out.x_out, out.success, score, out.steps)
            return run

        x_best, steps = self.best_of_runs(x, generator, [towards(t, x, y) for t in targets for _ in range(self.restarts)])

        def again(idx):  # near the boundary: more runs
            ts = [t if t is None else t[idx] for t in ranked[len(targets):] + targets]
            return [towards(ts[j % len(ts)], x[idx], y[idx]) for j in range(self.near_restarts)]
        return rerun_near(self, x, y, generator, x_best, steps, again, self.near, self.near_restarts)

    def _run_once(self, x, y, target, generator) -> _Outcome:
        """One APGD run of ``self.steps`` iterations (``target`` only for APGD-T). For a sparse
        norm, in phases of a shrinking radius (``LARGE_REPS``), each from the last one's point."""
        if not self.norm.sparse:
            start = self.clip(self.norm.random_start(x, self.eps, generator))
            return self._phase(x, y, target, start, self.eps, self.steps, final=True)
        plan = [(scale, max(1, round(share * self.steps))) for scale, share in LARGE_REPS]
        start, spent = self.clip(self.norm.random_start(x, plan[0][0] * self.eps, generator)), 0
        for k, (scale, steps) in enumerate(plan):
            eps = scale * self.eps
            out = self._phase(x, y, target, self.norm.project(start, x, eps, self.bounds), eps, steps,
                              final=k == len(plan) - 1)
            start, spent = out.x_out, spent + out.steps
        return out._replace(steps=spent)

    def _phase(self, x, y, target, x_cur, eps, steps, *, final) -> _Outcome:
        """``steps`` iterations from ``x_cur`` in the ball of radius ``eps``; early stop (when
        asked) only in the ``final`` phase, the one whose radius is the attack's."""
        n, stop = len(x), self.early_stop and final
        grad, logits, loss = self._gradient(x_cur, y, target)
        success = self.confirm(x_cur, logits, y)
        out = _Outcome(x_out=torch.where(per_sample(success, x), x_cur, x), success=success,
                   x_best=x_cur.clone(), loss_best=loss.clone(),
                   steps=torch.full((n,), steps, dtype=torch.long, device=x.device))
        # The state of the samples still running (active); out holds the results.
        active = torch.arange(n, device=x.device)
        sparse, zeros = self.norm.sparse, torch.zeros(n, dtype=x.dtype, device=x.device)
        state = _State(x=x, y=y, target=target, radius=zeros + eps, eta=zeros + (1 if sparse else 2) * eps,
                    x_cur=x_cur, x_prev=x_cur, grad=grad, loss_cur=loss,
                    x_best=x_cur.clone(), loss_best=loss.clone(), grad_best=grad.clone(),
                    increases=torch.zeros(n, dtype=torch.long, device=x.device),
                    halved_last=torch.zeros(n, dtype=torch.bool, device=x.device), loss_best_last=loss.clone(),
                    share=zeros + 0.2, support_last=zeros + x[0].numel())
        if stop and success.any():
            out.steps[success] = 0
            active, state = active[~success], state.keep(~success)
        last_checkpoint, checkpoints, every = 0, self._checkpoints, max(int(0.04 * steps), 1)
        for t in range(1, steps + 1):
            if len(active) == 0:
                break
            x_new, reached = self._advance(state, first=t == 1 or sparse)  # L1 steps without momentum
            out.x_out[active[reached]] = x_new[reached]
            out.success[active[reached]] = True
            if sparse and t % every == 0:
                self._adapt_sparsity(state)
            elif not sparse and t in checkpoints:
                self._adapt_step_size(state, t - last_checkpoint)
                last_checkpoint = t
            if stop and reached.any():
                _store(out, active[reached], state, reached, steps=t)
                active, state = active[~reached], state.keep(~reached)
        _store(out, active, state, torch.ones(len(active), dtype=torch.bool, device=x.device))
        x_out = torch.where(per_sample(out.success, x), out.x_out, out.x_best)
        return out._replace(x_out=x_out)

    def _advance(self, state: "_State", *, first: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One iteration: a step of size eta with momentum (plain on the first), then the
        loss bookkeeping. Returns the new iterate and which samples it makes reach the goal."""
        direction = self.norm.direction_in_box(state.grad, state.x_cur, self.bounds, state.share)
        z = self._project(state.x_cur + per_sample(state.eta, state.x) * direction, state)
        if first:
            x_new = z
        else:
            x_new = self._project(state.x_cur + self.momentum * (z - state.x_cur)
                                  + (1 - self.momentum) * (state.x_cur - state.x_prev), state)
        state.x_prev, state.x_cur = state.x_cur, x_new
        state.grad, logits, loss = self._gradient(x_new, state.y, state.target)
        state.increases += (loss > state.loss_cur).long()
        state.loss_cur = loss
        improved = loss > state.loss_best
        state.x_best[improved] = x_new[improved]
        state.grad_best[improved] = state.grad[improved]
        state.loss_best = torch.where(improved, loss, state.loss_best)
        return x_new, self.confirm(x_new, logits, state.y)

    def _adapt_step_size(self, state: "_State", since: int) -> None:
        """At a checkpoint, ``since`` iterations after the last: halve eta where the loss rose
        too rarely or stalled, and restart those samples from their best point."""
        oscillating = state.increases < self.rho * since
        stalled = ~state.halved_last & (state.loss_best <= state.loss_best_last)
        halve = oscillating | stalled
        state.eta = torch.where(halve, state.eta / 2, state.eta)
        state.back_to_best(halve)
        state.halved_last, state.loss_best_last = halve, state.loss_best.clone()
        state.increases = torch.zeros_like(state.increases)

    def _adapt_sparsity(self, state: "_State") -> None:
        """L1: a step moves the support of the best point / 1.5; eta shrinks by 1.5 (down to a
        tenth of the radius) while that support does not, and is reset to the radius (from
        the best point) when it shrank by 5%."""
        support = ((state.x_best - state.x).flatten(1) != 0).sum(1).to(state.eta.dtype)
        shrunk = support < 0.95 * state.support_last
        state.share = (support / state.x[0].numel() / 1.5).clamp_min(1e-6)
        state.eta = torch.where(shrunk, state.radius, torch.maximum(state.eta / 1.5, state.radius / 10))
        state.support_last = support
        state.back_to_best(shrunk)

    # --------------------------------------------------------------- helpers
    def _project(self, x_adv, state: "_State"):
        return self.norm.project(x_adv, state.x, state.radius, self.bounds)

    def _objective(self, logits, y, target):
        """Per-sample loss to ascend for this mode."""
        if self.loss_name == "ce":
            return self.loss(logits, y)
        if self.loss_name == "dlr":
            return dlr_loss(logits, y)
        return self.goal.targeted_dlr(logits, y, target)

    def _gradient(self, x_adv, y, target):
        """(dLoss/dX, logits, loss) at ``x_adv``; the gradient is taken on the input only."""
        return self.gradient(x_adv, y, lambda logits: self._objective(logits, y, target))


def _store(out: _Outcome, idx: torch.Tensor, state: "_State", mask: torch.Tensor, steps: int | None = None) -> None:
    """Write the best-loss bookkeeping of ``state`` (rows ``mask``) into the result rows ``idx``."""
    out.x_best[idx] = state.x_best[mask]
    out.loss_best[idx] = state.loss_best[mask]
    if steps is not None:
        out.steps[idx] = steps
