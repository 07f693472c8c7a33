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
  term (Zhang et al., 2019) = ``PGD(loss="kl")``.

eps warm-up ramps eps linearly from 0 over the first ``warmup_epochs``.

Certified training (``"ibp"``, ``"crown-ibp"``) replaces the attack by bounds over the
whole ball (``advx.certify.training``); its held-out check is certified accuracy (IBP),
with PGD accuracy beside it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from advx.attacks import PGD
from advx.attacks.objectives import trades_loss
from advx.checkpoint import load_checkpoint, save_checkpoint
from advx.certify import certify
from advx.certify.training import CERTIFIED_KINDS, CertifiedLoss
from advx.data import load_dataset
from advx.distributed import world
from advx.precision import check_precision
from advx.rng import mix_seed
from advx.probe import catastrophic_overfitting, final_metrics, probe_metrics
from advx.modes import accuracy
from advx.train import TrainConfig, clean_loss, seeded_model, train, training_slice
from advx.validate import InputError, check_number, check_seed

ATTACK_KINDS = ("fgsm-rs", "pgd", "trades")
KINDS = ("none", *ATTACK_KINDS, *CERTIFIED_KINDS)


class AdversarialLoss:
    """The trainer's ``loss_fn`` for adversarial training (see module docstring).

    Its random stream (random starts) is part of the training state, so a resumed run
    continues it exactly.
    """

    def __init__(self, kind: str, *, eps: float, alpha: float | None = None, steps: int = 10,
                 warmup_epochs: float = 0.0, beta: float = 6.0, seed: int = 0,
                 precision: str = "fp32", early_stop: bool = True) -> None:
        if kind not in ATTACK_KINDS:
            raise InputError(f"adv must be one of {list(ATTACK_KINDS)} (an attack; for ibp/crown-ibp use "
                             f"advx.certify.training.CertifiedLoss), got {kind!r}")
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
                   precision=self.precision, early_stop=self.early_stop)

    def __call__(self, model, x, y, *, epoch: float):
        eps = self.eps_at(epoch)
        if eps == 0:
            logits = model(x)
            return F.cross_entropy(logits, y), logits
        # dL/dX, weights frozen, then restored. Under DistributedDataParallel the attack runs
        # on the module inside it: its forward and backward passes never touch DDP's
        # gradient synchronisation, which only the weight step's backward below triggers.
        x_adv = self.attack(model.module if isinstance(model, DistributedDataParallel) else model, eps)(x, y)
        if self.kind == "trades":
            logits = model(x)
            return trades_loss(logits, model(x_adv), y, self.beta), logits
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


@dataclass(frozen=True)
class RobustConfig:
    """Adversarial-training settings (saved in the checkpoint)."""

    adv: str = "pgd"
    eps: float = 0.3
    alpha: float | None = None
    steps: int = 10
    warmup_epochs: float = 1.0
    beta: float = 6.0
    early_stop: bool = True   # pgd: stop each sample at its first adversarial iterate
    holdout: int = 1000
    eval_steps: int = 20      # certified kinds: the held-out PGD check's steps
    final_n: int = 500        # attack kinds: --suite strong on the first N held-out images at the end (0: skip)
    ramp_start: float = 0.0   # certified kinds: clean epochs before the eps ramp
    kappa: float = 0.5        # certified kinds: final weight of the clean loss

    @property
    def certified(self) -> bool:
        return self.adv in CERTIFIED_KINDS

    @property
    def best_key(self) -> str:
        """The held-out figure the best checkpoint is chosen by."""
        return "cert_acc" if self.certified else "probe_acc"

    def __post_init__(self) -> None:
        if self.adv not in KINDS:
            raise InputError(f"adv must be one of {list(KINDS)}, got {self.adv!r}")
        checked = {
            "eps": check_number("eps", self.eps, minimum=0),
            "steps": check_number("steps", self.steps, minimum=1, integer=True),
            "warmup_epochs": check_number("warmup_epochs", self.warmup_epochs, minimum=0),
            "beta": check_number("beta", self.beta, minimum=0),
            "holdout": check_number("holdout", self.holdout, minimum=1, integer=True),
            "eval_steps": check_number("eval_steps", self.eval_steps, minimum=1, integer=True),
            "final_n": check_number("final_n", self.final_n, minimum=0, integer=True),
            "ramp_start": check_number("ramp_start", self.ramp_start, minimum=0),
            "kappa": check_number("kappa", self.kappa, minimum=0, maximum=1),
        }
        if not isinstance(self.early_stop, bool):
            raise InputError(f"early_stop must be True or False, got {self.early_stop!r}")
        if self.alpha is not None:
            checked["alpha"] = check_number("alpha", self.alpha, minimum=0, strict=True)
        for name, value in checked.items():  # plain numbers in the (frozen) config
            object.__setattr__(self, name, value)


def certified_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                      steps: int, seed: int = 0) -> dict:
    """Clean accuracy, certified accuracy (IBP: the bound certified training optimises) and
    PGD accuracy on a held-out slice."""
    pgd_x = PGD(model, eps=eps, steps=steps, alpha=2.5 * eps / steps, seed=seed)(x, y)
    return {"clean_acc_holdout": accuracy(model, x, y),
            "cert_acc": certify(model, x, y, eps=eps, method="ibp").certified.float().mean().item(),
            "pgd_acc": accuracy(model, pgd_x, y)}


def last_checkpoint(checkpoint: str | Path) -> Path:
    """Where ``train_robust`` keeps the latest epoch for ``--resume``: ``<name>.last.pt``."""
    return Path(checkpoint).with_suffix(".last.pt")


def _loss_of(config: TrainConfig, robust: RobustConfig):
    """The trainer's loss_fn for ``robust.adv`` (None: clean training)."""
    if robust.certified:
        return CertifiedLoss(robust.adv, eps=robust.eps, ramp_start=robust.ramp_start,
                             ramp_epochs=robust.warmup_epochs, kappa_end=robust.kappa)
    if robust.adv == "none":
        return None
    rank = world()[0]  # data-parallel: each rank draws its own random starts
    return AdversarialLoss(robust.adv, eps=robust.eps, alpha=robust.alpha, steps=robust.steps,
                           warmup_epochs=robust.warmup_epochs, beta=robust.beta,
                           seed=config.seed if rank == 0 else mix_seed(config.seed, rank),
                           precision=config.precision, early_stop=robust.early_stop)


def _epoch_metrics(config: TrainConfig, robust: RobustConfig, x: torch.Tensor, y: torch.Tensor):
    """The held-out check after each epoch: the probe of ``advx.probe`` (attack kinds) or
    certified and PGD accuracy (certified kinds)."""
    if robust.certified:
        return lambda m: certified_metrics(m, x, y, eps=robust.eps, steps=robust.eval_steps, seed=config.seed)
    return lambda m: probe_metrics(m, x, y, eps=robust.eps, precision=config.precision, seed=config.seed)


def train_robust(config: TrainConfig, robust: RobustConfig, *, checkpoint: str | Path,
                 data_dir=None, device: str = "cpu", progress: bool = True,
                 resume: bool = False) -> tuple[nn.Module, list[dict]]:
    """Adversarially train ``config.model`` on ``config.dataset``'s training set minus a held-out slice of the training
    set; after every epoch measure clean, FGSM and probe accuracy (APGD-CE, then Square:
    ``advx.probe``) on that slice (certified kinds: clean, certified and PGD accuracy).
    Writes ``checkpoint`` (the model with the best held-out probe accuracy, or certified
    accuracy for the certified kinds) and ``<checkpoint>.last.pt`` (the latest epoch, with
    everything needed to resume). Training stops early when the probe collapses
    (catastrophic overfitting). At the end, attack kinds run ``--suite strong`` on the first
    ``robust.final_n`` held-out images and store it in the checkpoint as ``metrics["final"]``."""
    if robust.certified and world()[1] > 1:
        raise InputError(f"adv {robust.adv!r}: certified training does not run data-parallel yet; run it in one "
                         f"process (without torchrun)")
    checkpoint = Path(checkpoint)
    last_path = last_checkpoint(checkpoint)
    full = load_dataset(config.dataset, "train", data_dir)
    if robust.holdout >= len(full):
        raise InputError(f"holdout must be < {len(full)} (the training images), got {robust.holdout}")
    train_set = training_slice(full.head(len(full) - robust.holdout), config.train_size)
    hx, hy = full.x[-robust.holdout:].to(device), full.y[-robust.holdout:].to(device)
    test_set = load_dataset(config.dataset, "test", data_dir)
    shape = tuple(full.x.shape[1:])

    model = seeded_model(config.model, config.seed, config.dataset, shape).to(device)
    loss_fn, key = _loss_of(config, robust), robust.best_key
    state, best = None, {key: -math.inf}
    saved_config = {**asdict(config), **{f"robust_{k}": v for k, v in asdict(robust).items()}}
    if resume and last_path.exists():
        ckpt = load_checkpoint(last_path)
        if ckpt["config"] != saved_config:
            raise InputError(f"resume: {last_path} was written with other settings; "
                             f"delete it or use the same options")
        model.load_state_dict(ckpt["state_dict"])
        state = ckpt["train_state"]
        best = ckpt["metrics"].get("best", best)

    def save(path, weights, metrics, **extra):
        save_checkpoint(path, weights, model_name=config.model, dataset=config.dataset, input_shape=shape,
                        config=saved_config, metrics=metrics, **extra)

    def on_epoch_end(record: dict, train_state: dict) -> bool:
        """Save the best and the latest epoch; True (stop) on catastrophic overfitting."""
        nonlocal best
        # Seen with FGSM-RS (Wong et al.) and with few-step, large-step PGD alike: the
        # model learns to defeat the weak training attack only. Later epochs do not recover.
        collapsed = not robust.certified and catastrophic_overfitting(train_state["history"], key=key)
        if collapsed:
            warnings.warn(f"catastrophic overfitting at epoch {record['epoch']}: held-out {key} "
                          f"collapsed to {record[key]:.2%}; training stops, the best checkpoint "
                          f"(epoch {best['epoch']}, {best[key]:.2%}) is kept", stacklevel=2)
        if record[key] > best[key]:
            best = dict(record)
            save(checkpoint, model, {"best": best, "history": train_state["history"]})
        save(last_path, model, {"best": best, "history": train_state["history"]}, extra={"train_state": train_state})
        return collapsed

    history = train(model, train_set, test_set, config, loss_fn=loss_fn or clean_loss, device=device,
                    progress=progress, on_epoch_end=on_epoch_end, resume=state,
                    epoch_metrics=_epoch_metrics(config, robust, hx, hy))
    best_model = seeded_model(config.model, config.seed, config.dataset, shape).to(device)
    saved = load_checkpoint(checkpoint)  # rank 0 wrote it before the others left the epoch
    if world()[0] != 0:  # the final figure is rank 0's to measure and save
        return best_model.eval(), history
    best_model.load_state_dict(saved["state_dict"])
    if not robust.certified and robust.final_n > 0:
        n = min(robust.final_n, robust.holdout)
        final = final_metrics(best_model.eval(), hx[:n], hy[:n], eps=robust.eps, precision=config.precision,
                              seed=config.seed, progress=progress)
        save(checkpoint, best_model, {**saved["metrics"], "final": final})
    return best_model.eval(), history
