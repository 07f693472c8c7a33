"""The weight-gradient loop: the data stay fixed and we step the weights along -dL/dW.

``train`` is the whole loop; ``loss_fn`` is the hook where adversarial training
swaps the clean batch for an attacked one (the attack itself takes dL/dX with the
weights frozen, then hands back a batch on which this loop takes dL/dW).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from advx.averaging import WeightAverage, check_decay
from advx.checkpoint import DEFAULT_CHECKPOINT, save_checkpoint
from advx.data import Split, iterate_batches, load_dataset
from advx.datasets import MNIST, Dataset, get_dataset
from advx.distributed import buffers_of_rank_0, every_rank, from_rank_0, total, world
from advx.models import build_model
from advx.modes import accuracy
from advx.precision import autocast, check_precision, fast_images, resolve
from advx.validate import AdvxError, InputError, check_number, check_seed


class TrainingDiverged(AdvxError, ValueError):
    """The loss became NaN or inf: training stops before the weights are saved."""


class LossFn(Protocol):
    def __call__(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epoch: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(mean loss, logits)`` for one batch; ``epoch`` is the fractional progress."""
        ...


def clean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epoch: float = 0.0):
    """Ordinary training: cross-entropy on the batch as it is."""
    logits = model(x)
    return F.cross_entropy(logits, y), logits


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (saved in the checkpoint)."""

    model: str = "small"
    dataset: str = "mnist"  # a name from advx.datasets.DATASETS
    epochs: int = 3
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    train_size: int | None = None  # first N training images only (None: all 60,000)
    precision: str = "fp32"  # forward and backward under autocast in bf16/fp16 (see advx.precision)
    ema: float | None = None  # decay of an average of the weights, the network measured and kept (None: off)

    def __post_init__(self) -> None:
        # Checked and stored as plain numbers (a frozen dataclass: set through object).
        checked = {name: check_number(name, getattr(self, name), minimum=1, integer=True)
                   for name in ("epochs", "batch_size") + (("train_size",) if self.train_size is not None else ())}
        checked["lr"] = check_number("lr", self.lr, minimum=0, strict=True)
        checked["weight_decay"] = check_number("weight_decay", self.weight_decay, minimum=0)
        checked["seed"] = check_seed("seed", self.seed)
        checked["precision"] = check_precision("precision", self.precision)
        checked["dataset"] = get_dataset(self.dataset).name
        checked["ema"] = check_decay("ema", self.ema)
        for name, value in checked.items():
            object.__setattr__(self, name, value)


def training_slice(split: Split, train_size: int | None) -> Split:
    """The first ``train_size`` images of ``split`` (all when None); more than it holds is an error."""
    if train_size is not None and train_size > len(split):
        raise InputError(f"train_size must be <= {len(split)} (the training images available), got {train_size}")
    return split.head(train_size)


def seeded_model(name: str, seed: int, dataset: Dataset = MNIST) -> nn.Module:
    """Build a model for ``dataset``'s images and classes whose initial weights depend only
    on ``seed`` (global RNG left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(name, num_classes=dataset.num_classes, input_shape=dataset.shape)


def train(
    model: nn.Module,
    train_set: Split,
    test_set: Split | None,
    config: TrainConfig,
    *,
    loss_fn: LossFn = clean_loss,
    device: str | torch.device = "cpu",
    progress: bool = True,
    on_epoch_end: Callable[[dict, dict], bool | None] | None = None,
    epoch_metrics: Callable[[nn.Module], dict] | None = None,
    resume: dict | None = None,
) -> list[dict]:
    """Train ``model`` in place with AdamW and a one-cycle learning rate.

    Each step: ``loss_fn`` gives the batch loss, ``loss.backward()`` fills dL/dW,
    ``optimizer.step()`` moves the weights. Batches are shuffled by a generator
    seeded with ``config.seed``; the global RNG is not used.

    Hooks: ``epoch_metrics(model)`` adds figures to each epoch's record (e.g. PGD
    accuracy on a held-out slice); ``on_epoch_end(record, state)`` gets the record and
    the full training state (optimizer, schedule, random streams, history), which
    ``resume=state`` continues from: the final weights then equal those of an
    uninterrupted run (load the weights into ``model`` first). A hook that
    returns True ends training after that epoch.

    ``config.ema`` keeps an exponential moving average of the weights
    (``advx.averaging``): the test accuracy and ``epoch_metrics`` measure the averaged
    network, ``state["average"]`` holds its weights, and ``model`` ends holding them.

    ``config.precision`` other than fp32 runs the forward passes (and so the backward)
    under autocast with the weights in ``channels_last`` layout; the weights, the
    optimizer state and the reported accuracies stay fp32.

    Under ``torchrun`` (a process group of several ranks) training is data-parallel: the
    model is wrapped in ``DistributedDataParallel``, every rank draws the same shuffled
    batches and takes its share of each (``config.batch_size`` is the global batch), the
    gradients are averaged across ranks. Rank 0 alone runs ``epoch_metrics`` and
    ``on_epoch_end`` (which saves) and shares their outcome with the others.

    Returns one dict per epoch: ``epoch, train_loss, train_acc, test_acc, seconds, precision``.
    """
    rank, size = world()
    precision = training_precision(config.precision, device)
    # Low precision trains in the fast layout for convolutions too; the weights are laid
    # out as usual again when training ends (see the end of this function).
    model.to(device, memory_format=torch.channels_last if precision != "fp32" else torch.preserve_format)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = -(-len(train_set) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
    )
    shuffle = torch.Generator().manual_seed(config.seed)
    history: list[dict] = []
    if resume is not None:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        shuffle.set_state(resume["shuffle_rng"])
        if hasattr(loss_fn, "load_state_dict"):  # data-parallel: this rank's own (its random starts)
            per_rank = resume.get("loss_fn_ranks") or [resume["loss_fn"]]
            if rank < len(per_rank):  # a rank the saved run did not have keeps its fresh stream
                loss_fn.load_state_dict(per_rank[rank])
        history = [dict(r) for r in resume["history"]]
    average = WeightAverage(model, config.ema) if config.ema is not None else None
    if average is not None and resume is not None:
        average.load_state_dict(resume["average"])
    measured = model if average is None else average.model
    # the same weights, synced gradients (buffers: ``buffers_of_rank_0`` at every step)
    net = DistributedDataParallel(model, broadcast_buffers=False) if size > 1 else model
    progress = progress and rank == 0
    for epoch in range(len(history), config.epochs):
        start = time.perf_counter()
        batches = iterate_batches(train_set.x, train_set.y, config.batch_size, generator=shuffle)
        if size > 1:  # every rank draws the same batches and takes its share of each
            batches = ((xb[rank::size], yb[rank::size]) for xb, yb in batches if len(yb) >= size)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not progress, leave=True, unit="batch")
        train_loss, train_acc = _one_epoch(net, bar, steps_per_epoch, loss_fn, optimizer, scheduler, epoch,
                                           device, precision, average)
        record = {
            "epoch": epoch + 1,
            "train_loss": train_loss,
            "train_acc": train_acc,
            "test_acc": accuracy(measured, test_set.x, test_set.y) if test_set is not None else None,
            "seconds": time.perf_counter() - start,
            "precision": precision,  # as resolved on this device
        }
        if epoch_metrics is not None:
            record.update(from_rank_0(lambda: epoch_metrics(measured)))
        history.append(record)
        if progress:
            shown = {k: v for k, v in record.items() if k.endswith("_acc") and v is not None}
            tqdm.write(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in shown.items()))
        if on_epoch_end is not None:
            state = _training_state(optimizer, scheduler, shuffle, loss_fn, history, size)
            if average is not None:
                state["average"] = average.state_dict()
            if from_rank_0(lambda: bool(on_epoch_end(record, state))):  # asks to end here
                break
    if average is not None:
        model.load_state_dict(average.model.state_dict())
    model.to(memory_format=torch.contiguous_format).eval()
    return history


def training_precision(precision: str, device) -> str:
    """The precision training runs in on ``device``: ``"auto"`` resolved; fp16 only on a
    GPU, where a gradient scaler keeps small gradients from flushing to zero."""
    used = resolve(precision, device)
    if used == "fp16" and torch.device(device).type != "cuda":
        raise InputError(f"precision 'fp16' trains only on a CUDA device (with a gradient scaler); "
                         f"use 'bf16' on {device}, got precision='fp16'")
    return used


def _one_epoch(model, bar, steps_per_epoch: int, loss_fn: LossFn, optimizer, scheduler, epoch: int,
               device, precision: str, average: WeightAverage | None = None) -> tuple[float, float]:
    """One pass over the batches of ``bar``, a weight step each: the loop of this module.
    The forward passes (and so their backward) run in ``precision``; the weights, the
    optimizer and the loss value stay fp32. Returns the epoch's mean training loss and accuracy."""
    model.train()
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    loss_sum, correct, seen = 0.0, 0, 0
    for step, (x, y) in enumerate(bar):
        x, y = x.to(device), y.to(device)
        if isinstance(model, DistributedDataParallel):
            buffers_of_rank_0(model.module)
        if precision != "fp32":
            x = fast_images(x)
        with autocast(precision, device):
            loss, logits = loss_fn(model, x, y, epoch=epoch + step / steps_per_epoch)
        loss = loss.float()
        if not torch.isfinite(loss):  # stop before the weights take the step
            raise _diverged(loss, epoch, step, scheduler.get_last_lr()[0])
        optimizer.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()  # dL/dW: the data are constants here
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        scheduler.step()
        if average is not None:
            average.update(model.module if isinstance(model, DistributedDataParallel) else model)
        loss_sum += loss.item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        seen += len(y)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}", acc=f"{correct / seen:.4f}")
    bar.close()
    loss_sum, correct, seen = total([loss_sum, correct, seen])  # over every rank's share
    return loss_sum / seen, correct / seen


def _diverged(loss: torch.Tensor, epoch: int, step: int, lr: float) -> TrainingDiverged:
    """Nothing non-finite is ever saved: training stops before such a step."""
    return TrainingDiverged(
        f"training diverged: the loss became {loss.item()} at epoch {epoch + 1}, step {step + 1} "
        f"(learning rate {lr:.3g}); no checkpoint was written by this run after that point. Try a smaller lr")


def _training_state(optimizer, scheduler, shuffle: torch.Generator, loss_fn, history: list[dict],
                    size: int = 1) -> dict:
    """Everything ``train(resume=...)`` needs to continue exactly where this epoch ended
    (every rank calls it: data-parallel, the state of each rank's ``loss_fn`` is gathered)."""
    own = loss_fn.state_dict() if hasattr(loss_fn, "state_dict") else {}
    every = every_rank(own)
    return {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "shuffle_rng": shuffle.get_state(),
        "loss_fn": own,
        "loss_fn_ranks": every if size > 1 else [],
        "history": [dict(r) for r in history],
    }


def train_baseline(
    config: TrainConfig = TrainConfig(),
    *,
    data_dir: str | Path | None = None,
    checkpoint: str | Path = DEFAULT_CHECKPOINT,
    device: str = "cpu",
    progress: bool = True,
) -> tuple[nn.Module, list[dict]]:
    """Load ``config.dataset``, train ``config.model`` on the clean data, save the checkpoint.
    The recipe behind ``scripts/train_baseline.py`` and ``advx train``."""
    dataset = get_dataset(config.dataset)
    train_set = training_slice(load_dataset(dataset, "train", data_dir), config.train_size)
    test_set = load_dataset(dataset, "test", data_dir)
    model = seeded_model(config.model, config.seed, dataset)
    start = time.perf_counter()
    history = train(model, train_set, test_set, config, device=device, progress=progress)
    wall = time.perf_counter() - start
    metrics = {"test_acc": history[-1]["test_acc"], "train_seconds": wall, "history": history}
    if world()[0] == 0:  # one writer
        save_checkpoint(checkpoint, model, model_name=config.model, dataset=dataset, config=asdict(config),
                        metrics=metrics)
    return model, history
