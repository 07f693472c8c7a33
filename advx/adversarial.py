"""Adversarial training: dL/dX and dL/dW side by side in one loop (Madry et al., 2018).

For each batch the attack (weights frozen) finds a bad input inside the eps-ball, then
the trainer (data fixed) takes a weight step on it. The inner maximisation is one of
advx's attack classes; nothing here re-implements an attack loop:

- ``"fgsm-rs"``: FGSM from a uniform random start with step 1.25 eps (Wong, Rice &
  Kolter, 2020, "Fast is better than free") = ``PGD(steps=1, alpha=1.25*eps)``;
- ``"pgd"``:     PGD-k with a random start (Madry et al., 2018);
- ``"trades"``:  clean CE + beta * KL(p(x) || p(x_adv)), the adversary ascending the KL
  term (Zhang et al., 2019) = ``PGD(loss="kl")``.

eps warm-up ramps eps linearly from 0 over the first ``warmup_epochs``.

Certified training (``"ibp"``, ``"crown-ibp"``) replaces the attack by bounds over the
whole ball (``advx.bounds.training``); its held-out check is certified accuracy (IBP),
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

from advx.attacks import FGSM, PGD
from advx.attacks.objectives import trades_loss
from advx.checkpoint import load_checkpoint, save_checkpoint
from advx.bounds import certify
from advx.bounds.training import CERTIFIED_KINDS, CertifiedLoss
from advx.data import load_mnist
from advx.precision import check_precision
from advx.train import TrainConfig, accuracy, clean_loss, seeded_model, train, training_slice
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
                 precision: str = "fp32") -> None:
        if kind not in ATTACK_KINDS:
            raise InputError(f"adv must be one of {list(ATTACK_KINDS)} (an attack; for ibp/crown-ibp use "
                             f"advx.bounds.training.CertifiedLoss), got {kind!r}")
        self.kind = kind
        self.eps = check_number("eps", eps, minimum=0)
        self.steps = check_number("steps", steps, minimum=1, integer=True)
        self.warmup_epochs = check_number("warmup_epochs", warmup_epochs, minimum=0)
        self.beta = check_number("beta", beta, minimum=0)
        self.alpha = None if alpha is None else check_number("alpha", alpha, minimum=0, strict=True)
        self.generator = torch.Generator().manual_seed(check_seed("seed", seed))
        self.precision = check_precision("precision", precision)  # of the attack's search

    def eps_at(self, epoch: float) -> float:
        """The eps used at (fractional) ``epoch``: a linear ramp over the warm-up."""
        if self.warmup_epochs == 0:
            return self.eps
        return self.eps * min(1.0, epoch / self.warmup_epochs)

    def attack(self, model: nn.Module, eps: float) -> PGD:
        if self.kind == "fgsm-rs":
            return PGD(model, eps=eps, alpha=1.25 * eps, steps=1, generator=self.generator,
                       precision=self.precision)
        # alpha None: PGD's default, 2.5 * eps / steps
        return PGD(model, eps=eps, alpha=self.alpha, steps=self.steps, generator=self.generator,
                   loss="kl" if self.kind == "trades" else "ce", precision=self.precision)

    def __call__(self, model, x, y, *, epoch: float):
        eps = self.eps_at(epoch)
        if eps == 0:
            logits = model(x)
            return F.cross_entropy(logits, y), logits
        x_adv = self.attack(model, eps)(x, y)  # dL/dX, weights frozen, then restored
        if self.kind == "trades":
            logits = model(x)
            return trades_loss(logits, model(x_adv), y, self.beta), logits
        logits = model(x_adv)
        return F.cross_entropy(logits, y), logits

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def catastrophic_overfitting(history: list[dict], *, drop: float = 0.2) -> bool:
    """The failure mode Wong et al. describe for FGSM training: held-out PGD accuracy
    collapses while FGSM accuracy rises. Few-step PGD training can fail the same way, with
    FGSM accuracy staying high while PGD accuracy collapses. True when the last epoch's PGD
    accuracy fell more than ``drop`` below its best so far and FGSM accuracy either rose or
    stands more than ``drop`` above PGD accuracy (the model beats only the weak attack)."""
    if len(history) < 2:
        return False
    best_pgd = max(r["pgd_acc"] for r in history[:-1])
    last, before = history[-1], history[-2]
    collapsed = last["pgd_acc"] < best_pgd - drop
    return collapsed and (last["fgsm_acc"] > before["fgsm_acc"] or last["fgsm_acc"] - last["pgd_acc"] > drop)


@dataclass(frozen=True)
class RobustConfig:
    """Adversarial-training settings (saved in the checkpoint)."""

    adv: str = "pgd"
    eps: float = 0.3
    alpha: float | None = None
    steps: int = 10
    warmup_epochs: float = 1.0
    beta: float = 6.0
    holdout: int = 1000
    eval_steps: int = 20
    ramp_start: float = 0.0   # certified kinds: clean epochs before the eps ramp
    kappa: float = 0.5        # certified kinds: final weight of the clean loss

    @property
    def certified(self) -> bool:
        return self.adv in CERTIFIED_KINDS

    @property
    def best_key(self) -> str:
        """The held-out figure the best checkpoint is chosen by."""
        return "cert_acc" if self.certified else "pgd_acc"

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
            "ramp_start": check_number("ramp_start", self.ramp_start, minimum=0),
            "kappa": check_number("kappa", self.kappa, minimum=0, maximum=1),
        }
        if self.alpha is not None:
            checked["alpha"] = check_number("alpha", self.alpha, minimum=0, strict=True)
        for name, value in checked.items():  # plain numbers in the (frozen) config
            object.__setattr__(self, name, value)


def heldout_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
                    steps: int, seed: int = 0) -> dict:
    """Clean, FGSM and PGD accuracy on a held-out slice (the catastrophic-overfitting probe)."""
    fgsm_x = FGSM(model, eps=eps)(x, y)
    pgd_x = PGD(model, eps=eps, steps=steps, alpha=2.5 * eps / steps, seed=seed)(x, y)
    return {
        "clean_acc_holdout": accuracy(model, x, y),
        "fgsm_acc": accuracy(model, fgsm_x, y),
        "pgd_acc": accuracy(model, pgd_x, y),
    }


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
    return AdversarialLoss(robust.adv, eps=robust.eps, alpha=robust.alpha, steps=robust.steps,
                           warmup_epochs=robust.warmup_epochs, beta=robust.beta, seed=config.seed,
                           precision=config.precision)


def train_robust(config: TrainConfig, robust: RobustConfig, *, checkpoint: str | Path,
                 data_dir=None, device: str = "cpu", progress: bool = True,
                 resume: bool = False) -> tuple[nn.Module, list[dict]]:
    """Adversarially train ``config.model`` on MNIST minus a held-out slice of the training
    set; after every epoch measure clean/FGSM/PGD accuracy on that slice (certified kinds:
    clean, certified and PGD accuracy). Writes ``checkpoint`` (the model with the best
    held-out PGD accuracy, or certified accuracy for the certified kinds) and
    ``<checkpoint>.last.pt`` (the latest epoch, with everything needed to resume).
    Training stops early when held-out PGD accuracy collapses (catastrophic overfitting)."""
    checkpoint = Path(checkpoint)
    last_path = last_checkpoint(checkpoint)
    full = load_mnist("train", data_dir)
    if robust.holdout >= len(full):
        raise InputError(f"holdout must be < {len(full)} (the training images), got {robust.holdout}")
    train_set = training_slice(full.head(len(full) - robust.holdout), config.train_size)
    hx, hy = full.x[-robust.holdout:].to(device), full.y[-robust.holdout:].to(device)
    test_set = load_mnist("test", data_dir)

    model = seeded_model(config.model, config.seed).to(device)
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

    def on_epoch_end(record: dict, train_state: dict) -> bool:
        """Save the best and the latest epoch; True (stop) on catastrophic overfitting."""
        nonlocal best
        # Seen with FGSM-RS (Wong et al.) and with few-step, large-step PGD alike: the
        # model learns to defeat the weak training attack only. Later epochs do not recover.
        collapsed = not robust.certified and catastrophic_overfitting(train_state["history"])
        if collapsed:
            warnings.warn(f"catastrophic overfitting at epoch {record['epoch']}: held-out PGD accuracy "
                          f"collapsed to {record['pgd_acc']:.2%}; training stops, the best checkpoint "
                          f"(epoch {best['epoch']}, {best['pgd_acc']:.2%}) is kept", stacklevel=2)
        if record[key] > best[key]:
            best = dict(record)
            save_checkpoint(checkpoint, model, model_name=config.model, config=saved_config,
                            metrics={"best": best, "history": train_state["history"]})
        save_checkpoint(last_path, model, model_name=config.model, config=saved_config,
                        metrics={"best": best, "history": train_state["history"]},
                        extra={"train_state": train_state})
        return collapsed

    history = train(
        model, train_set, test_set, config, loss_fn=loss_fn or clean_loss, device=device,
        progress=progress, on_epoch_end=on_epoch_end, resume=state,
        epoch_metrics=lambda m: (certified_metrics if robust.certified else heldout_metrics)(
            m, hx, hy, eps=robust.eps, steps=robust.eval_steps, seed=config.seed),
    )
    best_model = seeded_model(config.model, config.seed)
    best_model.load_state_dict(load_checkpoint(checkpoint)["state_dict"])
    return best_model.to(device).eval(), history
