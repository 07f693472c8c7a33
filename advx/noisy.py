"""Training for randomized smoothing: the base classifier learns to classify noisy images.

A smoothed classifier (``advx.smoothing``) is only as good as its base classifier is under
the noise it is smoothed with, so the base classifier trains on it:

- ``gaussian`` (Cohen, Rosenfeld & Kolter 2019): the cross-entropy on ``x + d``, with
  ``d ~ N(0, sigma^2 I)`` drawn anew for every image of every batch;
- ``consistency`` (Jeong & Shin 2020, "Consistency Regularization for Certified Robustness of
  Smoothed Classifiers"): ``copies`` noisy copies of each image, their mean cross-entropy,
  plus ``kl_weight`` times the mean KL divergence from the copies' mean prediction to each copy's,
  plus half the entropy of the mean prediction (their eta = 0.5): the copies must agree, which
  is what a large p_A, and so a large certified radius, needs.

The noise comes from the loss's own random stream, which is part of the training state (a
resumed run draws the same noise). After each epoch the held-out images are certified with a
small CERTIFY (``HOLDOUT_CERTIFY``): the best epoch is the one with the largest average
certified radius, ``acr`` (0 for an image that is abstained on or wrong).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from advx.datasets import Dataset
from advx.modes import accuracy
from advx.rng import StreamState, mix_seed
from advx.smoothing import Smoothed
from advx.train import TrainConfig
from advx.validate import InputError, check_kind_options, check_number, check_seed

KINDS = ("gaussian", "consistency")
ENTROPY = 0.5  # Jeong & Shin's eta, the weight of the mean prediction's entropy
HOLDOUT_CERTIFY = {"n0": 16, "samples": 128, "alpha": 0.001}  # the per-epoch check: quick, coarse


class NoisyLoss(StreamState):
    """The trainer's ``loss_fn`` for training under Gaussian noise (see the module docstring)."""

    def __init__(self, kind: str, *, sigma: float, copies: int = 2, kl_weight: float = 10.0, seed: int = 0) -> None:
        if kind not in KINDS:
            raise InputError(f"kind must be one of {list(KINDS)}, got {kind!r}")
        self.kind = kind
        self.sigma = check_number("sigma", sigma, minimum=0, strict=True)
        self.copies = check_number("copies", copies, minimum=1, integer=True)
        self.kl_weight = check_number("kl_weight", kl_weight, minimum=0)
        self.generator = torch.Generator().manual_seed(check_seed("seed", seed))

    def noisy(self, x: torch.Tensor, copies: int = 1) -> torch.Tensor:
        """``copies`` noisy copies of the batch ``x``, copy after copy."""
        x = x.repeat(copies, *([1] * (x.dim() - 1))) if copies > 1 else x
        noise = torch.randn(x.shape, generator=self.generator).to(x.device, x.dtype)
        return x + self.sigma * noise

    def __call__(self, model, x, y, *, epoch: float):
        if self.kind == "gaussian":
            logits = model(self.noisy(x))
            return F.cross_entropy(logits, y), logits
        logits = model(self.noisy(x, self.copies))
        loss = F.cross_entropy(logits.float(), y.repeat(self.copies))
        log_p = F.log_softmax(logits.float(), 1).view(self.copies, len(y), -1)
        mean = log_p.exp().mean(0)
        log_mean = mean.clamp_min(1e-12).log()
        kl = (mean * (log_mean - log_p)).sum(2).mean()  # KL(mean || copy), over copies and images
        entropy = -(mean * log_mean).sum(1).mean()
        return loss + self.kl_weight * kl + ENTROPY * entropy, logits[:len(y)]


@dataclass(frozen=True)
class NoisyConfig:
    """Settings of training for smoothing (saved in the checkpoint). An option the kind does
    not use is an error, not ignored; ``None`` is the kind's default.

    kind: ``"gaussian"`` or ``"consistency"``. sigma: the noise's standard deviation (pixel
    units; train at the sigma you will certify with). copies (consistency): noisy copies of
    each image (``None``: 2). kl_weight (consistency): the KL term's lambda (``None``: 10).
    holdout: training images held out for the per-epoch check."""

    kind: str = "gaussian"
    sigma: float = 0.25
    copies: int | None = None
    kl_weight: float | None = None
    holdout: int = 500

    KINDS = KINDS
    USES = {"copies": ("consistency",), "kl_weight": ("consistency",)}  # options of some kinds
    best_key = "acr"  # the held-out figure the best checkpoint is chosen by
    data_parallel = True

    def __post_init__(self) -> None:
        check_kind_options(self)
        checked = {"sigma": check_number("sigma", self.sigma, minimum=0, strict=True),
                   "holdout": check_number("holdout", self.holdout, minimum=1, integer=True)}
        if self.kind == "consistency":
            checked["copies"] = 2 if self.copies is None else check_number("copies", self.copies, minimum=2,
                                                                           integer=True)
            checked["kl_weight"] = (10.0 if self.kl_weight is None else
                                    check_number("kl_weight", self.kl_weight, minimum=0))
        for name, value in checked.items():  # plain numbers in the (frozen) config
            object.__setattr__(self, name, value)

    def loss_fn(self, config: TrainConfig, dataset: Dataset, rank: int = 0) -> NoisyLoss:
        """The trainer's ``loss_fn``; data-parallel, each rank draws its own noise."""
        return NoisyLoss(self.kind, sigma=self.sigma, copies=self.copies or 1,
                         kl_weight=10.0 if self.kl_weight is None else self.kl_weight,
                         seed=config.seed if rank == 0 else mix_seed(config.seed, rank))

    def epoch_metrics(self, config: TrainConfig, x: torch.Tensor, y: torch.Tensor):
        return lambda model: noisy_metrics(model, x, y, sigma=self.sigma, seed=config.seed,
                                           precision=config.precision)

    def collapsed(self, history: list[dict]) -> bool:
        return False  # the noise is not an attack the model could learn to beat

    def final_metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, *,
                      progress: bool = False) -> dict | None:
        return None  # the smoothed model's certificates are the figure: advx certify --method smoothing


def noisy_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, sigma: float, seed: int = 0,
                  precision: str = "fp32") -> dict:
    """Held-out figures: clean accuracy, and the smoothed model's from a small CERTIFY
    (``HOLDOUT_CERTIFY``, its noisy forward passes in the training's ``precision``): certified
    accuracy at radius 0 and at ``sigma``, and the average certified radius ``acr``."""
    model = model.module if isinstance(model, DistributedDataParallel) else model
    result = Smoothed(model, sigma).certify(x, seed=seed, precision=precision, **HOLDOUT_CERTIFY)
    right = result.certified(y, 0.0)
    return {"clean_acc_holdout": accuracy(model, x, y),
            "smoothed_acc": right.float().mean().item(),
            "cert_acc_sigma": result.certified(y, sigma).float().mean().item(),
            "acr": torch.where(right, result.radius, 0.0).mean().item()}
