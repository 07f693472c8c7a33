"""PGD: projected gradient ascent on the loss, from a random point of the eps-ball.

Madry, Makelov, Schmidt, Tsipras & Vladu (2018), "Towards Deep Learning Models
Resistant to Adversarial Attacks". Linf steps follow sign(grad); L2 steps follow
grad / ||grad||_2, L1 steps the sign of the largest gradients (Tramer & Boneh 2019's
sparse L1 descent); the norm object decides.
"""

from __future__ import annotations

import torch
from torch import nn

from advx.attacks.base import Attack
from advx.attacks.objectives import kl_from_clean
from advx.attacks.results import Run
from advx.norms import Norm, per_sample
from advx.validate import InputError, check_number


class PGD(Attack):
    """Projected Gradient Descent (ascent on the loss).

    Each step: ``x_adv <- clip(project(x_adv + alpha * direction(dL/dx_adv)))``.

    Args:
        eps: budget in pixel units. alpha: step size (default ``2.5 * eps / steps``).
        steps: gradient steps per restart. norm: ``"inf"``, ``"2"`` or ``"1"``.
        random_start: start from a uniform point of the eps-ball (default on).
        restarts: independent runs; the best per *sample* is kept (a success over
            a failure, else the higher loss). Restarts after the first only run
            on samples not broken yet.
        early_stop: stop each sample as soon as it is adversarial (saves work in
            evaluation; the result is then the first adversarial iterate).
        loss: ``"ce"`` (cross-entropy of ``y``) or ``"kl"``: KL(p(x) || p(x_adv)), the
            divergence from the clean prediction that the TRADES adversary ascends
            (Zhang et al., 2019); success is still judged against ``y``.

    Example:
        >>> atk = PGD(model, eps=0.3, alpha=0.01, steps=40)
        >>> x_adv = atk(x, y)
        >>> atk.run(x, y).success.float().mean()  # attack success rate
    """

    norms = ("inf", "2", "1")

    def __init__(self, model: nn.Module, *, eps: float = 0.3, alpha: float | None = None,
                 steps: int = 40, norm: str | Norm = "inf", random_start: bool = True,
                 restarts: int = 1, early_stop: bool = False, loss: str = "ce",
                 bounds: tuple[float, float] = (0.0, 1.0), targeted: bool = False,
                 seed: int | None = 0, generator: torch.Generator | None = None,
                 precision: str = "fp32", eot: int = 1) -> None:
        super().__init__(model, eps=eps, norm=norm, bounds=bounds, targeted=targeted,
                         seed=seed, generator=generator, precision=precision, eot=eot)
        steps = check_number("steps", steps, minimum=1, integer=True)
        self.restarts = check_number("restarts", restarts, minimum=1, integer=True)
        # The default is 0 when eps is 0 (nothing to do); a step size given must be > 0.
        self.alpha = 2.5 * self.eps / steps if alpha is None else check_number("alpha", alpha, minimum=0, strict=True)
        self.steps = steps
        self.random_start = bool(random_start)
        self.early_stop = bool(early_stop)
        if loss not in ("ce", "kl"):
            raise InputError(f"loss must be 'ce' or 'kl', got {loss!r}")
        self._check_targetable(loss=loss)  # loss='kl' (TRADES) is untargeted
        self.loss_name = loss

    @classmethod
    def abilities(cls, **options):
        return super().abilities()._replace(targetable=options.get("loss", "ce") != "kl")

    def _run(self, x, y, generator):
        log_p_clean = None
        if self.loss_name == "kl":  # the clean prediction the adversary moves away from
            with torch.no_grad():
                log_p_clean = self.model(x).log_softmax(1)
        if self.restarts == 1:  # nothing to compare: no scoring pass
            return self._run_once(x, y, log_p_clean, generator)

        def restart(idx, gen):
            log_p_idx = None if log_p_clean is None else log_p_clean[idx]
            x_new, steps = self._run_once(x[idx], y[idx], log_p_idx, gen)
            with torch.no_grad():
                logits = self.model(x_new)
            return Run(x_new, self.is_success(logits, y[idx]), self._objective(logits, y[idx], log_p_idx), steps)

        return self.best_of_runs(x, generator, [restart] * self.restarts)

    def _objective(self, logits, y, log_p_clean):
        """Per-sample value to ascend: ``self.loss`` (CE), or KL(p_clean || p(logits))."""
        if log_p_clean is None:
            return self.loss(logits, y)
        return kl_from_clean(log_p_clean, logits)

    def _run_once(self, x, y, log_p_clean, generator):
        """One PGD run; returns ``(x_adv, steps spent per sample)``."""
        if self.random_start:
            x_adv = self.clip(self.norm.random_start(x, self.eps, generator))
        else:
            x_adv = x.clone()
        steps_used = torch.full((len(x),), self.steps, dtype=torch.long, device=x.device)
        active = torch.arange(len(x), device=x.device)  # samples still being attacked
        # In low precision the search's iterates wander across the fp32 boundary: keep the
        # first iterate an fp32 forward confirms as adversarial (only new candidates are
        # checked), so that no sample broken along the way is lost at the end.
        keep_found = self._search != "fp32" and not self.early_stop
        found, x_found = torch.zeros(len(x), dtype=torch.bool, device=x.device), x_adv.clone()
        for step in range(self.steps):
            everyone = len(active) == len(x)
            xa = x_adv if everyone else x_adv[active]
            ya = y if everyone else y[active]
            objective = None
            if log_p_clean is not None:
                log_p = log_p_clean if everyone else log_p_clean[active]
                objective = lambda logits, log_p=log_p, ya=ya: self._objective(logits, ya, log_p)  # noqa: E731
            grad, logits, _ = self.gradient(xa, ya, objective)
            if keep_found:  # every sample is active here (no early stop)
                new = self.is_success(logits, ya) & ~found
                new[new.clone()] = self.confirm(xa[new], logits[new], ya[new])
                found |= new
                x_found[new] = xa[new]
            if self.early_stop:
                done = self.confirm(xa, logits, ya)
                if done.any():
                    steps_used[active[done]] = step
                    keep = ~done
                    active, xa, grad = active[keep], xa[keep], grad[keep]
                    if len(active) == 0:
                        break
            x0 = x if len(active) == len(x) else x[active]
            step = self.norm.direction_in_box(grad, xa, self.bounds)
            stepped = self.norm.project(xa + self.alpha * step, x0, self.eps, self.bounds)
            if len(active) == len(x):
                x_adv = stepped
            else:
                x_adv[active] = stepped
        if keep_found:
            x_adv = torch.where(per_sample(found, x_adv), x_found, x_adv)
        return x_adv, steps_used
