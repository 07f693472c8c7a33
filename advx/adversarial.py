"""Adversarial training: dL/dX and dL/dW side by side in one loop (Madry et al., 2018).

For each batch the attack (weights frozen) finds a bad input inside the eps-ball, then
the trainer (data fixed) takes a weight step on it. The inner maximisation is one of
advx's attack classes; nothing here re-implements an attack loop:

- ``"fgsm-rs"``: FGSM from a uniform random start with step 1.25 eps (Wong, Rice &
  Kolter, 2020, "Fast is better than free") = ``PGD(steps=1, alpha=1.25*eps)``;
- ``"pgd"``:     PGD-k with a random start (Madry et al., 2018), each sample stopped at
  its first adversarial iterate (``early_stop``; Zhang et al., 2020, "Attacks which do
  not kill training"): run to the last step, the PGD-5 recipe overfits catastrophically
  in its 4th epoch; stopped, it does not (docs/robust-training.md);
- ``"trades"``:  clean CE + beta * KL(p(x) || p(x_adv)), the adversary ascending the KL
  term (Zhang et al., 2019) = ``PGD(loss="kl")``;
- ``"mart"``:    PGD-k on the CE loss, then the boosted CE of x_adv + beta * KL(p(x) ||
  p(x_adv)) weighted by 1 - p(y | x) (Wang et al., 2020, "MART").

eps warm-up ramps eps linearly from 0 over the first ``warmup_epochs``. After every epoch
the held-out probe of ``advx.probe`` measures the model, picks the best epoch and stops a
collapse; ``advx.robust_training.train_robust`` runs it. Certified training, the other
way to train for robustness, is ``advx.certified``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from advx.attacks import PGD
from advx.attacks.objectives import mart_loss, trades_loss
from advx.datasets import Dataset
from advx.precision import check_precision
from advx.probe import catastrophic_overfitting, final_metrics, probe_metrics
from advx.rng import StreamState, mix_seed
from advx.train import TrainConfig
from advx.validate import InputError, check_kind_options, check_number, check_seed

KINDS = ("fgsm-rs", "pgd", "trades", "mart")


class AdversarialLoss(StreamState):
    """The trainer's ``loss_fn`` for adversarial training (see module docstring).

    Its random stream (random starts) is part of the training state, so a resumed run
    continues it exactly.
    """

    def __init__(self, kind: str, *, eps: float, alpha: float | None = None, steps: int = 10,
                 warmup_epochs: float = 0.0, beta: float = 6.0, seed: int = 0,
                 precision: str = "fp32", early_stop: bool = True) -> None:
        if kind not in KINDS:
            raise InputError(f"kind must be one of {list(KINDS)} (an attack; for ibp/crown-ibp use "
                             f"advx.certified.CertifiedLoss), got {kind!r}")
        self.kind = kind
        self.eps = check_number("eps", eps, minimum=0)
        self.steps = check_number("steps", steps, minimum=1, integer=True)
        self.warmup_epochs = check_number("warmup_epochs", warmup_epochs, minimum=0)
        self.beta = check_number("beta", beta, minimum=0)
        self.alpha = None if alpha is None else check_number("alpha", alpha, minimum=0, strict=True)
        self.generator = torch.Generator().manual_seed(check_seed("seed", seed))
        self.precision = check_precision("precision", precision)  # of the attack's search
        self.early_stop = bool(early_stop)  # "pgd": each sample's first adversarial iterate

    def eps_at(self, epoch: float) -> float:
        """The eps used at (fractional) ``epoch``: a linear ramp over the warm-up."""
        if self.warmup_epochs == 0:
            return self.eps
        return self.eps * min(1.0, epoch / self.warmup_epochs)

    def attack(self, model: nn.Module, eps: float) -> PGD:
        if self.kind == "fgsm-rs":  # alpha None: Wong et al.'s 1.25 * eps
            return PGD(model, eps=eps, alpha=self.alpha or 1.25 * eps, steps=1, generator=self.generator,
                       precision=self.precision)
        # alpha None: PGD's default, 2.5 * eps / steps
        if self.kind == "trades":  # the KL term has no "adversarial yet" to stop at
            return PGD(model, eps=eps, alpha=self.alpha, steps=self.steps, generator=self.generator,
                       loss="kl", precision=self.precision)
        return PGD(model, eps=eps, alpha=self.alpha, steps=self.steps, generator=self.generator,
                   precision=self.precision, early_stop=self.early_stop and self.kind == "pgd")

    def __call__(self, model, x, y, *, epoch: float):
        eps = self.eps_at(epoch)
        if eps == 0:
            logits = model(x)
            return F.cross_entropy(logits, y), logits
        # dL/dX, weights frozen, then restored. Under DistributedDataParallel the attack runs
        # on the module inside it: its forward and backward passes never touch DDP's
        # gradient synchronisation, which only the weight step's backward below triggers.
        x_adv = self.attack(model.module if isinstance(model, DistributedDataParallel) else model, eps)(x, y)
        if self.kind in ("trades", "mart"):
            logits = model(x)
            loss = trades_loss if self.kind == "trades" else mart_loss
            return loss(logits, model(x_adv), y, self.beta), logits
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits


@dataclass(frozen=True)
class AdversarialConfig:
    """Adversarial-training settings (saved in the checkpoint). An option the kind does not
    use is an error, not ignored; ``None`` is the kind's default (or: not used).

    kind: ``"fgsm-rs"``, ``"pgd"``, ``"trades"`` or ``"mart"``. eps: the Linf budget. alpha: the
    step size (``None``: 1.25 eps for fgsm-rs, PGD's 2.5 eps / steps otherwise). steps (pgd,
    trades, mart): attack steps (``None``: 10). warmup_epochs: eps ramps from 0 over these.
    beta (trades, mart): weight of the KL term (``None``: 6). early_stop (pgd): each sample
    stops at its first adversarial iterate (``None``: True). holdout: training images held out
    for the probe. final_n: ``--suite strong`` on the first N held-out images at the end (0:
    skip; default: 500, or every held-out image when there are fewer)."""

    kind: str = "pgd"
    eps: float = 0.3
    alpha: float | None = None
    steps: int | None = None
    warmup_epochs: float = 1.0
    beta: float | None = None
    early_stop: bool | None = None
    holdout: int = 1000
    final_n: int | None = None

    KINDS = KINDS
    # options of some kinds only
    USES = {"steps": ("pgd", "trades", "mart"), "beta": ("trades", "mart"), "early_stop": ("pgd",)}
    best_key = "probe_acc"  # the held-out figure the best checkpoint is chosen by
    data_parallel = True

    def __post_init__(self) -> None:
        check_kind_options(self)
        if self.early_stop not in (None, True, False):
            raise InputError(f"early_stop must be True or False, got {self.early_stop!r}")
        checked = {"eps": check_number("eps", self.eps, minimum=0),
                   "warmup_epochs": check_number("warmup_epochs", self.warmup_epochs, minimum=0),
                   "holdout": check_number("holdout", self.holdout, minimum=1, integer=True)}
        checked["final_n"] = (min(500, checked["holdout"]) if self.final_n is None else
                              check_number("final_n", self.final_n, minimum=0, integer=True))
        if checked["final_n"] > checked["holdout"]:
            raise InputError(f"final_n must be <= holdout ({checked['holdout']}): the final suite runs on the held-out "
                             f"images, got {self.final_n}")
        if self.kind != "fgsm-rs":
            checked["steps"] = 10 if self.steps is None else check_number("steps", self.steps, minimum=1,
                                                                         integer=True)
        if self.kind in ("trades", "mart"):
            checked["beta"] = 6.0 if self.beta is None else check_number("beta", self.beta, minimum=0)
        if self.kind == "pgd":
            checked["early_stop"] = self.early_stop is not False
        if self.alpha is not None:
            checked["alpha"] = check_number("alpha", self.alpha, minimum=0, strict=True)
        for name, value in checked.items():  # plain numbers in the (frozen) config
            object.__setattr__(self, name, value)

    def loss_fn(self, config: TrainConfig, dataset: Dataset, rank: int = 0) -> AdversarialLoss:
        """The trainer's ``loss_fn``; data-parallel, each rank draws its own random starts."""
        return AdversarialLoss(self.kind, eps=self.eps, alpha=self.alpha, steps=self.steps or 1,
                               warmup_epochs=self.warmup_epochs, beta=6.0 if self.beta is None else self.beta,
                               seed=config.seed if rank == 0 else mix_seed(config.seed, rank),
                               precision=config.precision, early_stop=self.early_stop is not False)

    def epoch_metrics(self, config: TrainConfig, x: torch.Tensor, y: torch.Tensor):
        """The held-out check after each epoch: clean, FGSM and probe accuracy (``advx.probe``)."""
        return lambda model: probe_metrics(model, x, y, eps=self.eps, precision=config.precision, seed=config.seed)

    def collapsed(self, history: list[dict]) -> bool:
        """Catastrophic overfitting at the last epoch: the model learnt to beat the weak attack
        only. Not judged while eps still ramps up: the held-out check is at the full eps, which
        a model trained on a smaller one is expected to fail."""
        if not history or history[-1]["epoch"] < self.warmup_epochs:
            return False
        return catastrophic_overfitting(history, key=self.best_key)

    def final_metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, *,
                      progress: bool = False) -> dict | None:
        """``--suite strong`` on the first ``final_n`` held-out images (None when 0)."""
        n = min(self.final_n, len(y))
        if n == 0:
            return None
        return final_metrics(model, x[:n], y[:n], eps=self.eps, precision=config.precision, seed=config.seed,
                             progress=progress)
