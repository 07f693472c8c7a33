"""What an attack aims for, in one place: the goal and the losses it ascends.

The goal (after Foolbox's ``Misclassification`` / ``TargetedMisclassification``) decides
the direction once: from it derive the loss to ascend, the margin to minimise and
success. Untargeted, ``y`` holds the true labels and the goal is any other prediction;
targeted, ``y`` holds the targets and the goal is that prediction.

The losses: cross-entropy (through the goal), the margin, DLR and targeted DLR (APGD,
Croce & Hein 2020), and the KL divergence from the clean prediction with the TRADES loss
built on it (Zhang et al. 2019).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from advx.norms import TINY


def logit_of(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``z_label`` per sample: logits [N, K], labels [N] -> [N]."""
    return logits.gather(1, labels[:, None]).squeeze(1)


def largest_other(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``max_{i != label} z_i`` per sample: logits [N, K], labels [N] -> [N]."""
    return logits.scatter(1, labels[:, None], -math.inf).amax(1)


class Misclassification:
    """Untargeted goal: ``y`` are the true labels; reached when the prediction differs."""

    targeted = False
    sign = 1.0  # ascend the loss of y
    y_holds = "labels"  # what y holds, for messages

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample objective to *ascend*: CE of the true label (minus CE of the target)."""
        return self.sign * F.cross_entropy(logits, y, reduction="none")

    def margin(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample distance from the goal in logit space, to *minimise*; below 0 the goal is
        reached: ``z_y - max_{i!=y} z_i`` (or ``max_{i!=t} z_i - z_t`` when targeted)."""
        return self.sign * (logit_of(logits, y) - largest_other(logits, y))

    def reached(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return logits.argmax(1) != y

    def targets_to_try(self, logits: torch.Tensor, y: torch.Tensor, n: int) -> list[torch.Tensor | None]:
        """For an attack that runs towards one class at a time (APGD-T): the ``n`` classes
        with the highest ``logits`` other than ``y`` (at most K - 1), one [N] tensor each."""
        k = logits.shape[1]
        ranked = logits.argsort(1, descending=True)
        ranked = ranked[ranked != y[:, None]].view(len(y), k - 1)
        return [ranked[:, j] for j in range(min(n, k - 1))]

    def targeted_dlr(self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Targeted DLR towards ``target`` with ``y`` the true labels."""
        return targeted_dlr_loss(logits, logit_of(logits, y), target)


class TargetedMisclassification(Misclassification):
    """Targeted goal: ``y`` are the targets; reached when the prediction is the target."""

    targeted = True
    sign = -1.0  # descend the loss of the target
    y_holds = "target labels"

    def reached(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return logits.argmax(1) == y

    def targets_to_try(self, logits: torch.Tensor, y: torch.Tensor, n: int) -> list[torch.Tensor | None]:
        """``y`` already holds the targets: one run, towards them (``None``)."""
        return [None]

    def targeted_dlr(self, logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
        """Targeted DLR towards ``y``; the true label is not known here, so the largest
        non-target logit stands in for ``z_y``."""
        return targeted_dlr_loss(logits, largest_other(logits, y), y)


def goal_for(targeted: bool) -> Misclassification:
    return TargetedMisclassification() if targeted else Misclassification()


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Untargeted DLR [N] (to ascend): ``-(z_y - max_{i!=y} z_i) / (z_pi1 - z_pi3)``."""
    top = logits.sort(1, descending=True).values
    spread = top[:, 0] - top[:, 2] + TINY
    # -(z_y - max_other) / spread, written as 1 - (...) / spread: where the true class ranks
    # third the loss is flat (z_y = z_pi3, max_other = z_pi1), and the sum in the numerator
    # is then exactly 0 with an exactly zero gradient, instead of two large gradient terms
    # that cancel down to rounding noise, which an L2 step would scale up to a full step.
    return 1 - (logit_of(logits, y) - largest_other(logits, y) + spread) / spread


def targeted_dlr_loss(logits: torch.Tensor, z_ref: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Targeted DLR [N] (to ascend): ``-(z_ref - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)``;
    ``z_ref`` is the true-class logit (or the largest non-target logit, see ``APGD``)."""
    top = logits.sort(1, descending=True).values
    return -(z_ref - logit_of(logits, target)) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + TINY)


def kl_from_clean(log_p_clean: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(p_clean || softmax(logits))`` [N], from clean log-probabilities:
    what the TRADES adversary ascends and the TRADES loss penalises."""
    return (log_p_clean.exp() * (log_p_clean - logits.log_softmax(1))).sum(1)


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
                beta: float) -> torch.Tensor:
    """TRADES: ``CE(clean, y) + beta * mean_i KL(p_clean_i || p_adv_i)``."""
    kl = kl_from_clean(logits_clean.log_softmax(1), logits_adv).mean()
    return F.cross_entropy(logits_clean, y) + beta * kl


def mart_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
              beta: float) -> torch.Tensor:
    """MART (Wang et al. 2020): the boosted CE of the adversarial point, ``CE(adv, y) -
    log(1 - p_adv(largest other class))``, plus ``beta * mean_i KL(p_clean_i || p_adv_i) *
    (1 - p_clean_i(y))``: the KL term weighs most where the clean image is misclassified."""
    p_other = logits_adv.softmax(1).scatter(1, y[:, None], 0.0).amax(1)
    boosted = F.cross_entropy(logits_adv, y, reduction="none") - torch.log((1 - p_other).clamp_min(1e-12))
    log_p_clean = logits_clean.log_softmax(1)
    kl = kl_from_clean(log_p_clean, logits_adv)
    return boosted.mean() + beta * (kl * (1 - log_p_clean.exp().gather(1, y[:, None]).squeeze(1))).mean()

