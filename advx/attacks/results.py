"""What attacks hand back and declare: ``AttackResult`` (one batch), ``Run`` (one restart
or target class, for ``Attack.best_of_runs``) and ``Abilities`` (what a class can do)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch


@dataclass
class AttackResult:
    """What ``Attack.run`` returns; every tensor has one entry per sample.

    x_adv:   [N, C, H, W] adversarial batch, same dtype/device as the input.
    success: [N] bool, the model's prediction on ``x_adv`` is wrong (untargeted)
             or equals the target (targeted).
    distance: [N] size of ``x_adv - x`` in the attack's norm.
    steps:   [N] int, gradient steps spent on the sample (with early stop: the
             step at which it first became adversarial).
    logits:  [N, K] the model's logits on ``x_adv``.
    """

    x_adv: torch.Tensor
    success: torch.Tensor
    distance: torch.Tensor
    steps: torch.Tensor
    logits: torch.Tensor


class Abilities(NamedTuple):
    """What an attack class can do (see ``Attack.abilities``)."""

    norms: tuple[str, ...]  # the threat models it supports
    targetable: bool        # it has a targeted mode
    black_box: bool         # it reads only the model's outputs (no gradients)
    minimum_norm: bool      # it looks for the smallest perturbation (default budget unbounded)
    min_classes: int = 2    # the fewest classes the model must have
    low_precision: bool = True  # its search may run in bf16/fp16 (decisions stay fp32)


class Run(NamedTuple):
    """One run of an attack (a restart, a target class) on some samples, one entry each."""

    x_adv: torch.Tensor    # the run's result
    success: torch.Tensor  # it reached the goal
    score: torch.Tensor    # how close it came otherwise: higher is better
    steps: torch.Tensor    # iterations or queries spent
