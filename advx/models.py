"""Classifiers for small grey images. Every model is built for an input shape ``[C, H, W]``
(MNIST and Fashion-MNIST: [1, 28, 28]) and a class count, takes images in [0, 1] and returns
logits [N, num_classes]. ``Normalized`` puts a user's normalization in front of a model that
expects it, so that attacks and eps stay in pixel space."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from advx.datasets import MNIST
from advx.modes import frozen
from advx.validate import InputError, InputTypeError, check_number

MNIST_SHAPE = MNIST.shape  # the default input: one channel, 28 x 28


def _features_size(features: nn.Module, input_shape) -> int:
    """How many numbers ``features`` makes of one image of ``input_shape`` (in eval mode, so
    that BatchNorm's running statistics are left as they were)."""
    with frozen(features), torch.no_grad():
        return features(torch.zeros(1, *input_shape)).numel()


class SmallCNN(nn.Module):
    """The default baseline: two conv blocks and a small head; fast on a laptop CPU.

    conv 3x3 32 -> BN -> ReLU -> conv 3x3 32 -> BN -> ReLU -> maxpool
    conv 3x3 64 -> BN -> ReLU -> conv 3x3 64 -> BN -> ReLU -> maxpool
    fc 128 -> ReLU -> fc 10
    """

    def __init__(self, num_classes: int = 10, input_shape: Sequence[int] = MNIST_SHAPE) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], 32, 3, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),  # 24 -> 12
            nn.Conv2d(32, 64, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),  # 8 -> 4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(_features_size(self.features, input_shape), 128), nn.ReLU(),
            nn.Linear(128, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class MadryCNN(nn.Module):
    """The MNIST network of Madry et al. (2018), "Towards Deep Learning Models Resistant
    to Adversarial Attacks": conv 5x5 32 -> pool -> conv 5x5 64 -> pool -> fc 1024 -> fc 10."""

    def __init__(self, num_classes: int = 10, input_shape: Sequence[int] = MNIST_SHAPE) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(_features_size(self.features, input_shape), 1024), nn.ReLU(),
            nn.Linear(1024, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def _interval_init(model: nn.Module) -> None:
    """The initialisation of Shi et al. (2021), "Fast certified robust training with short
    warmup": it keeps the interval bounds from growing layer by layer at the start of training."""
    for layer in model.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            fan_in = layer.weight[0].numel()
            nn.init.normal_(layer.weight, std=(2 * math.pi) ** 0.5 / fan_in)
            nn.init.zeros_(layer.bias)


class CertCNN(nn.Module):
    """A small network that trains fast under bound propagation (certified training):
    strided convolutions instead of max-pooling, no BatchNorm, and the initialisation of
    Shi et al. (2021).

    conv 4x4/2 32 -> ReLU -> conv 4x4/2 64 -> ReLU -> fc 256 -> ReLU -> fc 10
    """

    def __init__(self, num_classes: int = 10, input_shape: Sequence[int] = MNIST_SHAPE) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(input_shape[0], 32, 4, stride=2, padding=1), nn.ReLU(),   # 28 -> 14
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),  # 14 -> 7
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(_features_size(self.features, input_shape), 256), nn.ReLU(),
            nn.Linear(256, num_classes)
        )
        _interval_init(self)

    def forward(self, x):
        return self.classifier(self.features(x))


class CNN7(nn.Module):
    """The network of the certified-training literature (Shi et al. 2021; SABR, Müller et al.
    2023; MTL-IBP, De Palma et al. 2024): five 3x3 convolutions (the third strided), each with
    BatchNorm and ReLU, a dense layer with BatchNorm and ReLU, and the output; the
    initialisation of Shi et al. ``width`` scales every layer: 1 is CNN7 (64, 64, 128, 128,
    128 channels, 512 units), 1/4 the CPU-sized ``cnn7-cpu``.
    """

    def __init__(self, num_classes: int = 10, input_shape: Sequence[int] = MNIST_SHAPE, width: float = 1.0) -> None:
        super().__init__()
        width = check_number("width", width, strict=True, minimum=0)
        layers, channels = [], input_shape[0]
        for out, stride in zip((64, 64, 128, 128, 128), (1, 1, 2, 1, 1)):
            out = max(1, round(out * width))
            layers += [nn.Conv2d(channels, out, 3, stride=stride, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
            channels = out
        self.features = nn.Sequential(*layers)
        units = max(1, round(512 * width))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(_features_size(self.features, input_shape), units), nn.BatchNorm1d(units),
            nn.ReLU(), nn.Linear(units, num_classes)
        )
        _interval_init(self)

    def forward(self, x):
        return self.classifier(self.features(x))


def _cnn7_cpu(num_classes: int = 10, input_shape: Sequence[int] = MNIST_SHAPE) -> CNN7:
    return CNN7(num_classes, input_shape, width=0.25)


MODELS = {"small": SmallCNN, "madry": MadryCNN, "cert": CertCNN, "cnn7": CNN7, "cnn7-cpu": _cnn7_cpu}


def build_model(name: str = "small", *, num_classes: int = 10, input_shape: Sequence[int] = MNIST_SHAPE) -> nn.Module:
    """A fresh, untrained model by name, one of ``MODELS`` ("small", "madry", "cert", "cnn7",
    "cnn7-cpu"), for
    images of ``input_shape`` [C, H, W] and ``num_classes`` classes (default: MNIST's)."""
    if name not in MODELS:
        raise InputError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](num_classes=num_classes, input_shape=tuple(input_shape))


class Normalized(nn.Module):
    """``model`` behind its input normalization: ``model((x - mean) / std)``.

    Attacks, eps and the pixel bounds [0, 1] then live in pixel space while ``model`` sees
    the normalized input it was trained on (the question users ask most often of every
    attack library). ``mean`` and ``std`` hold one value per channel (or one for all).

        >>> model = Normalized(net, mean=(0.1307,), std=(0.3081,))
        >>> PGD(model, eps=0.3)(x, y)          # x in [0, 1]
    """

    def __init__(self, model: nn.Module, mean: Sequence[float] | float, std: Sequence[float] | float) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"model must be an nn.Module, got {type(model).__name__}")
        self.normalize = InputNormalization(mean, std)
        self.model = model

    def forward(self, x):
        return self.model(self.normalize(x))


class InputNormalization(nn.Module):
    """``(x - mean) / std`` per channel, the layer in front of ``Normalized``'s model. Its
    ``mean`` and ``std`` are buffers (they move with ``.to(device)``); bound propagation
    reads it as a per-channel affine layer (``affine()``)."""

    def __init__(self, mean: Sequence[float] | float, std: Sequence[float] | float) -> None:
        super().__init__()
        mean, std = _per_channel("mean", mean), _per_channel("std", std)
        if any(v <= 0 for v in std):
            raise InputError(f"std must hold numbers > 0, got {list(std)}")
        if len(mean) != len(std) and 1 not in (len(mean), len(std)):
            raise InputError(f"mean and std must hold as many values (one per channel), got {len(mean)} and {len(std)}")
        channels = max(len(mean), len(std))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).expand(channels).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).expand(channels).reshape(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(scale, shift)`` per channel: the normalization is ``x * scale + shift``."""
        scale = 1.0 / self.std.flatten()
        return scale, -self.mean.flatten() * scale

    def extra_repr(self) -> str:
        return (f"mean={[round(v, 6) for v in self.mean.flatten().tolist()]}, "
                f"std={[round(v, 6) for v in self.std.flatten().tolist()]}")


def _per_channel(name: str, value) -> tuple[float, ...]:
    values = [value] if isinstance(value, (int, float)) or getattr(value, "ndim", 1) == 0 else list(value)
    if not values:
        raise InputError(f"{name} must hold one number per channel, got none")
    return tuple(check_number(name, v) for v in values)
