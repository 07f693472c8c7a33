"""Certified training: the weight step minimises a loss on *bounds* over the whole eps-ball
(``advx.certify.training.CertifiedLoss``: IBP, Gowal et al. 2018; CROWN-IBP, Zhang et al.
2020), not on an attack. After every epoch the held-out check is certified accuracy (IBP:
the bound training optimises), with PGD accuracy beside it; ``advx.robust_training.train_robust``
runs it. Adversarial training, the other way, is ``advx.adversarial``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from advx.attacks import PGD
from advx.certify import certify
from advx.certify.training import CERTIFIED_KINDS, CertifiedLoss
from advx.datasets import Dataset
from advx.modes import accuracy
from advx.train import TrainConfig
from advx.validate import InputError, check_number

KINDS = CERTIFIED_KINDS


@dataclass(frozen=True)
class CertifiedConfig:
    """Certified-training settings (saved in the checkpoint).

    kind: ``"ibp"`` or ``"crown-ibp"``. eps: the Linf budget trained for. ramp_start: clean
    epochs before eps ramps up from 0 over ``warmup_epochs``, while the clean loss's weight
    goes from 1 to ``kappa``. holdout: training images held out for the per-epoch check
    (certified accuracy by IBP, and PGD accuracy with ``eval_steps`` steps)."""

    kind: str = "ibp"
    eps: float = 0.3
    ramp_start: float = 0.0
    warmup_epochs: float = 1.0
    kappa: float = 0.5
    holdout: int = 1000
    eval_steps: int = 20

    KINDS = KINDS
    best_key = "cert_acc"  # the held-out figure the best checkpoint is chosen by
    data_parallel = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"kind must be one of {list(KINDS)}, got {self.kind!r}")
        checked = {"eps": check_number("eps", self.eps, minimum=0),
                   "ramp_start": check_number("ramp_start", self.ramp_start, minimum=0),
                   "warmup_epochs": check_number("warmup_epochs", self.warmup_epochs, minimum=0),
                   "kappa": check_number("kappa", self.kappa, minimum=0, maximum=1),
                   "holdout": check_number("holdout", self.holdout, minimum=1, integer=True),
                   "eval_steps": check_number("eval_steps", self.eval_steps, minimum=1, integer=True)}
        for name, value in checked.items():  # plain numbers in the (frozen) config
            object.__setattr__(self, name, value)

    def loss_fn(self, config: TrainConfig, dataset: Dataset, rank: int = 0) -> CertifiedLoss:
        """The trainer's ``loss_fn``: bounds over the ball around images of the dataset's shape."""
        return CertifiedLoss(self.kind, eps=self.eps, ramp_start=self.ramp_start, ramp_epochs=self.warmup_epochs,
                             kappa_end=self.kappa, input_shape=dataset.shape)

    def epoch_metrics(self, config: TrainConfig, x: torch.Tensor, y: torch.Tensor):
        return lambda model: certified_metrics(model, x, y, eps=self.eps, steps=self.eval_steps, seed=config.seed)

    def collapsed(self, history: list[dict]) -> bool:
        return False  # bounds hold for every point of the ball: there is no weak attack to overfit to

    def final_metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, *,
                      progress: bool = False) -> dict | None:
        return None  # the certificates are the figure: advx certify


def certified_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                      steps: int, seed: int = 0) -> dict:
    """Clean accuracy, certified accuracy (IBP: the bound certified training optimises) and
    PGD accuracy on a held-out slice."""
    pgd_x = PGD(model, eps=eps, steps=steps, alpha=2.5 * eps / steps, seed=seed)(x, y)
    return {"clean_acc_holdout": accuracy(model, x, y),
            "cert_acc": certify(model, x, y, eps=eps, method="ibp").certified.float().mean().item(),
            "pgd_acc": accuracy(model, pgd_x, y)}
