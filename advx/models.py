"""MNIST classifiers. Every model takes [N, 1, 28, 28] images in [0, 1] and returns logits [N, 10]."""

from __future__ import annotations

import math

from torch import nn
from advx.validate import InputError


class SmallCNN(nn.Module):
    """The default baseline: two conv blocks and a small head; fast on a laptop CPU.

    conv 3x3 32 -> BN -> ReLU -> conv 3x3 32 -> BN -> ReLU -> maxpool
    conv 3x3 64 -> BN -> ReLU -> conv 3x3 64 -> BN -> ReLU -> maxpool
    fc 128 -> ReLU -> fc 10
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 32, 3, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
            nn.MaxPool2d(2),  # 24 -> 12
            nn.Conv2d(32, 64, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 64, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(2),  # 8 -> 4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class MadryCNN(nn.Module):
    """The MNIST network of Madry et al. (2018), "Towards Deep Learning Models Resistant
    to Adversarial Attacks": conv 5x5 32 -> pool -> conv 5x5 64 -> pool -> fc 1024 -> fc 10."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 7 * 7, 1024), nn.ReLU(), nn.Linear(1024, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class CertCNN(nn.Module):
    """A network that trains well under bound propagation (certified training, IBP and
    CROWN-IBP): strided convolutions instead of max-pooling, no BatchNorm (its batch
    statistics differ from the running ones the bounds use), and the initialisation of
    Shi et al. (2021), "Fast certified robust training with short warmup", which keeps the
    interval bounds from growing layer by layer at the start of training.

    conv 4x4/2 32 -> ReLU -> conv 4x4/2 64 -> ReLU -> fc 256 -> ReLU -> fc 10
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1), nn.ReLU(),   # 28 -> 14
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),  # 14 -> 7
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU(), nn.Linear(256, num_classes)
        )
        for layer in self.modules():
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                fan_in = layer.weight[0].numel()
                nn.init.normal_(layer.weight, std=(2 * math.pi) ** 0.5 / fan_in)
                nn.init.zeros_(layer.bias)

    def forward(self, x):
        return self.classifier(self.features(x))


MODELS = {"small": SmallCNN, "madry": MadryCNN, "cert": CertCNN}


def build_model(name: str = "small") -> nn.Module:
    """A fresh, untrained model by name: one of ``MODELS`` ("small", "madry", "cert")."""
    if name not in MODELS:
        raise InputError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name]()
