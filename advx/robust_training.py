"""Training for robustness, adversarial (``advx.adversarial``), certified
(``advx.certified``) or under noise for randomized smoothing (``advx.noisy``): the
``advx.train`` loop with the kind's loss, a held-out slice of the
training set measured after every epoch, the best epoch and the last one kept.

``train_robust`` writes ``checkpoint`` (the epoch with the best held-out figure, the
config's ``best_key``) and ``<checkpoint>.last.pt`` (the latest epoch with everything
needed to ``resume``), stops when the config says the run collapsed, and at the end stores
the config's final figure (adversarial kinds: ``--suite strong`` on held-out images) in the
checkpoint. ``robust_config`` builds the config of a kind from options, refusing an option
the kind does not take.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Union

from torch import nn

from advx.adversarial import AdversarialConfig
from advx.certified import CertifiedConfig
from advx.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from advx.data import load_dataset
from advx.datasets import get_dataset
from advx.distributed import world
from advx.noisy import NoisyConfig
from advx.train import TrainConfig, seeded_model, train, training_slice
from advx.validate import InputError, only_with

RobustConfig = Union[AdversarialConfig, CertifiedConfig, NoisyConfig]
CONFIGS = (AdversarialConfig, CertifiedConfig, NoisyConfig)
KINDS = tuple(kind for config in CONFIGS for kind in config.KINDS)


def robust_config(kind: str, **options) -> RobustConfig:
    """The config of training ``kind`` (a kind of ``KINDS``) with ``options`` (its fields); an
    option the kind does not take is an error naming the kinds that take it."""
    if kind not in KINDS:
        raise InputError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    check_options(kind, options)
    return next(config for config in CONFIGS if kind in config.KINDS)(kind=kind, **options)


def check_options(kind: str, options: dict) -> None:
    """Every option (a field name) must be one that ``kind``'s config takes; ``kind`` may be
    ``"none"`` (clean training: none does)."""
    for option in options:
        takers = [k for config in CONFIGS if option in {f.name for f in fields(config)}
                  for k in config.USES.get(option, config.KINDS)]
        if not takers:
            raise InputError(f"{option} is not a training option (those of {', '.join(c.__name__ for c in CONFIGS)})")
        if kind not in takers:
            raise InputError(only_with(option, takers, kind))


def last_checkpoint(checkpoint: str | Path) -> Path:
    """Where ``train_robust`` keeps the latest epoch for ``resume``: ``<name>.last.pt``."""
    return Path(checkpoint).with_suffix(".last.pt")


class _Keeper:
    """The ``on_epoch_end`` hook: saves the best epoch (by ``key``) and the latest one, and
    stops the run when ``collapsed(history)`` says it collapsed. With weight averaging the
    best checkpoint holds the averaged weights (the network that was measured); the latest
    holds the trained ones, which ``resume`` continues."""

    def __init__(self, save, checkpoint: Path, model: nn.Module, key: str, collapsed, best: dict) -> None:
        self.save, self.checkpoint, self.model, self.key, self.collapsed = save, checkpoint, model, key, collapsed
        self.best = best

    def __call__(self, record: dict, train_state: dict) -> bool:
        key, history = self.key, train_state["history"]
        # Seen with FGSM-RS (Wong et al.) and with few-step, large-step PGD alike: the
        # model learns to defeat the weak training attack only. Later epochs do not recover.
        collapsed = self.collapsed(history)
        if collapsed:
            best = max(history, key=lambda r: r[key])
            warnings.warn(f"catastrophic overfitting at epoch {record['epoch']}: held-out {key} "
                          f"collapsed to {record[key]:.2%}; training stops, the best checkpoint "
                          f"(epoch {best['epoch']}, {best[key]:.2%}) is kept", stacklevel=3)
        if record[key] > self.best[key]:
            self.best = dict(record)
            measured = train_state["average"]["weights"] if "average" in train_state else self.model
            self.save(self.checkpoint, measured, {"best": self.best, "history": history})
        self.save(last_checkpoint(self.checkpoint), self.model, {"best": self.best, "history": history},
                  extra={"train_state": train_state})
        return collapsed


def train_robust(config: TrainConfig, robust: RobustConfig, *, checkpoint: str | Path,
                 data_dir=None, device: str = "cpu", progress: bool = True,
                 resume: bool = False) -> tuple[nn.Module, list[dict]]:
    """Train ``config.model`` on ``config.dataset``'s training set, less ``robust.holdout``
    held-out images, with the loss of ``robust`` (an ``AdversarialConfig``, a
    ``CertifiedConfig`` or a ``NoisyConfig``); see the module docstring. Returns the best model (eval mode) and
    the history of every epoch."""
    if not robust.data_parallel and world()[1] > 1:
        raise InputError(f"kind {robust.kind!r}: certified training does not run data-parallel yet; run it in one "
                         f"process (without torchrun)")
    dataset = get_dataset(config.dataset)
    checkpoint, last_path = Path(checkpoint), last_checkpoint(checkpoint)
    full = load_dataset(dataset, "train", data_dir)
    if robust.holdout >= len(full):
        raise InputError(f"holdout must be < {len(full)} (the training images), got {robust.holdout}")
    train_set = training_slice(full.head(len(full) - robust.holdout), config.train_size)
    hx, hy = full.x[-robust.holdout:].to(device), full.y[-robust.holdout:].to(device)
    test_set = load_dataset(dataset, "test", data_dir)

    model = seeded_model(config.model, config.seed, dataset).to(device)
    state, best = None, {robust.best_key: -math.inf}
    saved_config = {**asdict(config), **{f"robust_{k}": v for k, v in asdict(robust).items()}}
    if resume and last_path.exists():
        try:
            ckpt = load_checkpoint(last_path)
        except CheckpointError as err:
            raise CheckpointError(f"resume: {err}; run without --resume to start afresh") from None
        if not isinstance(ckpt.get("train_state"), dict):
            raise CheckpointError(f"resume: {last_path} holds no training state to resume from; run without "
                                  f"--resume to start afresh")
        if ckpt["config"] != saved_config:
            raise InputError(f"resume: {last_path} was written with other settings; "
                             f"delete it or use the same options")
        model.load_state_dict(ckpt["state_dict"])
        state, best = ckpt["train_state"], ckpt["metrics"].get("best", best)

    def save(path, weights, metrics, **extra):
        save_checkpoint(path, weights, model_name=config.model, dataset=dataset, config=saved_config,
                        metrics=metrics, **extra)

    history = train(model, train_set, test_set, config, loss_fn=robust.loss_fn(config, dataset, world()[0]),
                    device=device, progress=progress, resume=state,
                    on_epoch_end=_Keeper(save, checkpoint, model, robust.best_key, robust.collapsed, best),
                    epoch_metrics=robust.epoch_metrics(config, hx, hy))
    best_model = seeded_model(config.model, config.seed, dataset).to(device)
    saved = load_checkpoint(checkpoint)  # rank 0 wrote it before the others left the epoch
    if world()[0] != 0:  # the final figure is rank 0's to measure and save
        return best_model.eval(), history
    best_model.load_state_dict(saved["state_dict"])
    final = robust.final_metrics(best_model.eval(), hx, hy, config, progress=progress)
    if final is not None:
        save(checkpoint, best_model, {**saved["metrics"], "final": final})
    return best_model.eval(), history
