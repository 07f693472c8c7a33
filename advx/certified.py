"""Certified training: the weight step minimises a loss on *bounds*, not on an attack alone.

The trainer's ``loss_fn`` (see ``advx.train``) for ``advx train --adv KIND``:

    loss = kappa * CE(z(x), y) + (1 - kappa) * robust_loss

eps ramps up from 0 and kappa from 1 down to ``kappa_end`` over the ramp (Gowal et al.
2018). ``m`` below are lower bounds of the margins ``z_y - z_j`` over a box (``-m`` are
the worst-case logits, 0 for the true class), and ``x_adv`` is a PGD point of the ball:

- ``ibp``:       CE(-m_IBP(x, eps)) (Gowal et al. 2018);
- ``crown-ibp``: CE(-m) with ``m = beta * m_CROWN-IBP + (1 - beta) * m_IBP``, beta going from
  1 to 0 over the ramp (Zhang et al. 2020);
- ``sabr``:      CE(-m_IBP(x', lam * eps)): IBP over a small box of radius ``lam * eps``
  around a PGD point ``x'`` of the ball of radius ``(1 - lam) * eps``, so that the box lies
  in the ball (Müller et al. 2023, "Certified training: small boxes are all you need");
- ``mtl-ibp``:   (1 - alpha) * CE(z(x_adv)) + alpha * CE(-m_IBP(x, eps));
- ``cc-ibp``:    CE(-m) with ``m = (1 - alpha) * (z_y - z_j)(x_adv) + alpha * m_IBP(x, eps)``
  (De Palma et al. 2024, "Expressive losses for verified robustness").

With ``lam = 1`` (sabr) or ``alpha = 1`` (mtl-ibp, cc-ibp) these are IBP's loss; with
``alpha = 0``, adversarial training on ``x_adv``. The bounds of training may run in low
precision; certificates never do (``advx.certify``).

BatchNorm in train mode: the bounds use the statistics of the clean batch (as the clean
pass normalises it, and differentiable as it is), fixed for the whole ball (Shi et al.
2021); certificates afterwards use the running statistics, as the model does in eval mode.

After every epoch the held-out check is certified accuracy (IBP), with PGD accuracy beside
it; ``advx.robust_training.train_robust`` runs it. Adversarial training, the other way, is
``advx.adversarial``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from advx.attacks import PGD
from advx.certify import Certifier, certify
from advx.certify.ops import Scale
from advx.datasets import Dataset
from advx.modes import accuracy
from advx.precision import check_precision
from advx.train import TrainConfig
from advx.rng import StreamState
from advx.validate import InputError, check_kind_options, check_number, check_seed

KINDS = ("ibp", "crown-ibp", "sabr", "mtl-ibp", "cc-ibp")
ATTACKED_KINDS = ("sabr", "mtl-ibp", "cc-ibp")  # those that search the ball first (``steps``)
MIXED_KINDS = ("mtl-ibp", "cc-ibp")  # those that take ``mix`` (alpha)


class CertifiedLoss(StreamState):
    """``loss_fn(model, x, y, *, epoch)`` of certified training (see the module docstring).

    ``box_share`` is SABR's lam in (0, 1], ``mix`` the alpha of MTL-IBP and CC-IBP in
    [0, 1], ``steps`` the PGD steps of the kinds that search the ball. Their random starts
    are part of the training state, so a resumed run continues them exactly."""

    def __init__(self, kind: str, *, eps: float, ramp_start: float = 0.0, ramp_epochs: float = 1.0,
                 kappa_end: float = 0.5, input_shape=(1, 28, 28), box_share: float = 0.4, mix: float = 0.5,
                 steps: int = 8, seed: int = 0, precision: str = "fp32") -> None:
        if kind not in KINDS:
            raise InputError(f"kind must be one of {list(KINDS)} for certified training, got {kind!r}")
        self.kind = kind
        self.eps = check_number("eps", eps, minimum=0)
        self.ramp_start = check_number("ramp_start", ramp_start, minimum=0)
        self.ramp_epochs = check_number("ramp_epochs", ramp_epochs, minimum=0)
        self.kappa_end = check_number("kappa_end", kappa_end, minimum=0, maximum=1)
        self.box_share = check_box_share(box_share)
        self.mix = check_number("mix", mix, minimum=0, maximum=1)
        self.steps = check_number("steps", steps, minimum=1, integer=True)
        self.generator = torch.Generator().manual_seed(check_seed("seed", seed))
        self.precision = check_precision("precision", precision)  # of the search for x_adv
        self.input_shape = tuple(input_shape)
        self._certifiers: dict = {}

    def progress(self, epoch: float) -> float:
        """0 before the ramp, 1 after it, linear in between."""
        if self.ramp_epochs == 0:
            return float(epoch >= self.ramp_start)
        return min(1.0, max(0.0, (epoch - self.ramp_start) / self.ramp_epochs))

    def eps_at(self, epoch: float) -> float:
        return self.eps * self.progress(epoch)

    def kappa_at(self, epoch: float) -> float:
        return 1.0 - (1.0 - self.kappa_end) * self.progress(epoch)

    def _certifier(self, model: nn.Module, method: str) -> Certifier:
        key = (id(model), method)
        if key not in self._certifiers:
            self._certifiers[key] = Certifier(model, self.input_shape, method=method)
        return self._certifiers[key]

    def margins(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: float) -> torch.Tensor:
        """The bounds ``ibp`` and ``crown-ibp`` train on: over the whole ball around ``x``."""
        eps = self.eps_at(epoch)
        ibp = self._certifier(model, "ibp").margins(x, y, eps)
        if self.kind == "ibp":
            return ibp
        beta = 1.0 - self.progress(epoch)
        if beta == 0:
            return ibp
        crown_ibp = self._certifier(model, "crown-ibp").margins(x, y, eps)
        return beta * crown_ibp + (1 - beta) * ibp

    def search(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
        """A PGD point of the Linf ball of radius ``eps`` (weights frozen), or ``x`` when eps is 0."""
        if eps == 0:
            return x
        return PGD(model, eps=eps, steps=self.steps, generator=self.generator, precision=self.precision)(x, y)

    def robust_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: float) -> torch.Tensor:
        eps = self.eps_at(epoch)
        if self.kind in ("ibp", "crown-ibp"):
            return _worst_case_ce(self.margins(model, x, y, epoch), y)
        if self.kind == "sabr":
            small = self.box_share * eps
            centre = self.search(model, x, y, eps - small)
            return _worst_case_ce(self._certifier(model, "ibp").margins(centre, y, small), y)
        ibp = self._certifier(model, "ibp").margins(x, y, eps)
        logits = model(self.search(model, x, y, eps))
        if self.kind == "mtl-ibp":
            return (1 - self.mix) * F.cross_entropy(logits, y) + self.mix * _worst_case_ce(ibp, y)
        classes = logits.shape[1]
        attacked = logits.gather(1, y[:, None]) - logits  # z_y - z_j at x_adv, 0 at y
        mixed = (1 - self.mix) * attacked + self.mix * ibp.masked_fill(F.one_hot(y, classes).bool(), 0.0)
        return _worst_case_ce(mixed, y)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epoch: float):
        with _recorded(model) as statistics:
            logits = model(x)
        loss = F.cross_entropy(logits, y)
        if self.eps_at(epoch) == 0:
            return loss, logits
        kappa = self.kappa_at(epoch)
        with self._normalised_by(model, statistics):
            robust = self.robust_loss(model, x, y, epoch)
        return kappa * loss + (1 - kappa) * robust, logits

    @contextmanager
    def _normalised_by(self, model: nn.Module, statistics: dict):
        """The certifiers' BatchNorm ops use ``statistics`` (module -> (mean, var)) meanwhile."""
        methods = ("ibp", "crown-ibp") if self.kind == "crown-ibp" else ("ibp",)
        ops = [op for method in methods for op in self._certifier(model, method).chain  # IBP's, CROWN-IBP's chain
               if isinstance(op, Scale) and op.module in statistics]
        try:
            for op in ops:
                op.statistics = statistics[op.module]
            yield
        finally:
            for op in ops:
                op.statistics = None


@contextmanager
def _recorded(model: nn.Module):
    """Meanwhile, each BatchNorm of ``model`` in train mode records the (mean, biased var) per
    channel that it normalises the batch with."""
    statistics, hooks = {}, []

    def record(module, inputs, output):
        h = inputs[0].float()
        dims = [0, *range(2, h.dim())]
        statistics[module] = (h.mean(dims), h.var(dims, unbiased=False))

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            hooks.append(module.register_forward_hook(record))
    try:
        yield statistics
    finally:
        for hook in hooks:
            hook.remove()


def check_box_share(value) -> float:
    """SABR's lam: the small box's radius as a share of eps, in (0, 1]."""
    value = check_number("box_share", value)
    if not 0 < value <= 1:
        raise InputError(f"box_share (SABR's lambda) must be in (0, 1]: the small box's radius as a share of eps, "
                         f"got {value:g}")
    return value


def _worst_case_ce(margins: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """CE of the worst-case logits ``-margins`` (0 at the true class)."""
    worst = (-margins).masked_fill(F.one_hot(y, margins.shape[1]).bool(), 0.0)
    return F.cross_entropy(worst, y)


@dataclass(frozen=True)
class CertifiedConfig:
    """Certified-training settings (saved in the checkpoint).

    kind: one of ``KINDS``. eps: the Linf budget trained for. ramp_start: clean epochs
    before eps ramps up from 0 over ``warmup_epochs``, while the clean loss's weight goes
    from 1 to ``kappa``. box_share (sabr): the small box's radius as a share of eps, lambda
    (``None``: 0.4). mix (mtl-ibp, cc-ibp): the weight alpha of the IBP term (``None``: 0.5).
    steps (sabr, mtl-ibp, cc-ibp): PGD steps of the search (``None``: 8). holdout: training
    images held out for the per-epoch check (certified accuracy by IBP, and PGD accuracy
    with ``eval_steps`` steps)."""

    kind: str = "ibp"
    eps: float = 0.3
    ramp_start: float = 0.0
    warmup_epochs: float = 1.0
    kappa: float = 0.5
    box_share: float | None = None
    mix: float | None = None
    steps: int | None = None
    holdout: int = 1000
    eval_steps: int = 20

    KINDS = KINDS
    USES = {"box_share": ("sabr",), "mix": MIXED_KINDS, "steps": ATTACKED_KINDS}  # options of some kinds
    best_key = "cert_acc"  # the held-out figure the best checkpoint is chosen by
    data_parallel = False

    def __post_init__(self) -> None:
        check_kind_options(self)
        checked = {"eps": check_number("eps", self.eps, minimum=0),
                   "ramp_start": check_number("ramp_start", self.ramp_start, minimum=0),
                   "warmup_epochs": check_number("warmup_epochs", self.warmup_epochs, minimum=0),
                   "kappa": check_number("kappa", self.kappa, minimum=0, maximum=1),
                   "holdout": check_number("holdout", self.holdout, minimum=1, integer=True),
                   "eval_steps": check_number("eval_steps", self.eval_steps, minimum=1, integer=True)}
        if self.kind == "sabr":
            checked["box_share"] = 0.4 if self.box_share is None else check_box_share(self.box_share)
        if self.kind in MIXED_KINDS:
            checked["mix"] = 0.5 if self.mix is None else check_number("mix", self.mix, minimum=0, maximum=1)
        if self.kind in ATTACKED_KINDS:
            checked["steps"] = 8 if self.steps is None else check_number("steps", self.steps, minimum=1, integer=True)
        for name, value in checked.items():  # plain numbers in the (frozen) config
            object.__setattr__(self, name, value)

    def loss_fn(self, config: TrainConfig, dataset: Dataset, rank: int = 0) -> CertifiedLoss:
        """The trainer's ``loss_fn``: bounds over boxes in the ball around images of the dataset's shape."""
        options = {k: v for k, v in (("box_share", self.box_share), ("mix", self.mix), ("steps", self.steps))
                   if v is not None}
        return CertifiedLoss(self.kind, eps=self.eps, ramp_start=self.ramp_start, ramp_epochs=self.warmup_epochs,
                             kappa_end=self.kappa, input_shape=dataset.shape, seed=config.seed,
                             precision=config.precision, **options)

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
