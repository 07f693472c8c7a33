"""Per-sample budgets: more runs for the samples an attack left standing near the boundary.

A sample that every run of an attack (its restarts, its target classes) left standing but
whose best point nearly reached the goal sits where a luckier start breaks it; a sample far
from the boundary gains nothing from more of the same. ``rerun_near`` gives the first kind
more runs and the second none, each sample on its own random stream, so what a sample gets
depends on that sample alone (not on its batch).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch

from advx import rng


def near_boundary(attack, logits: torch.Tensor, y: torch.Tensor, near: float) -> torch.Tensor:
    """[N] bool: the goal is not reached, and the margin from it is at most ``near`` times
    the spread of the logits (``z_pi1 - z_pi3``, DLR's scale: the test reads the same
    whatever the logits' scale)."""
    top = logits.topk(min(3, logits.shape[1]), 1).values
    spread = top[:, 0] - top[:, -1]
    return ~attack.is_success(logits, y) & (attack.margin(logits, y) <= near * spread)


def rerun_near(attack, x: torch.Tensor, y: torch.Tensor, generator: rng.Generator, x_best: torch.Tensor,
               steps: torch.Tensor, runs_for: Callable, near: float, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """After ``best_of_runs`` gave ``(x_best, steps)``: the samples near the boundary at
    ``x_best`` get the ``n`` runs ``runs_for(idx)`` (on ``x[idx]``) with their streams; an
    adversarial point they find replaces ``x_best``, otherwise it stays. Returns the
    updated ``(x_best, steps)``."""
    if n == 0:
        return x_best, steps
    with torch.no_grad():  # Attack._run runs outside autocast: decided in full precision
        idx = near_boundary(attack, attack.model(x_best), y, near).nonzero().squeeze(1)
    if len(idx) == 0:
        return x_best, steps
    more, spent = attack.best_of_runs(x[idx], rng.subset(generator, idx), runs_for(idx))
    with torch.no_grad():
        broke = attack.is_success(attack.model(more), y[idx])
    x_best, steps = x_best.clone(), steps.clone()
    x_best[idx[broke]] = more[broke]
    steps[idx] += spent
    return x_best, steps


def without_extra_runs(attack):
    """``attack`` with no extra runs near the boundary (``near_restarts`` 0), e.g. for the
    spot check of certified samples, which tests the bound, not the search."""
    if not getattr(attack, "near_restarts", 0):
        return attack
    plain = copy.copy(attack)
    plain.near_restarts = 0
    return plain
