"""Shared fixtures: real MNIST slices and tiny seeded models that train in seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from advx.data import load_dataset
from advx.train import TrainConfig, train

# Tests read the repository's ./data unless ADVX_DATA says otherwise (.ci/run fills ./data).
REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("ADVX_DATA") or REPO / "data")


class TinyCNN(nn.Module):
    """A small CNN used only by the tests: ~97% on MNIST after two seconds of training."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 5, stride=2), nn.ReLU(),   # 28 -> 12
            nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),  # 12 -> 5
            nn.Flatten(), nn.Linear(32 * 5 * 5, 64), nn.ReLU(), nn.Linear(64, 10),
        )

    def forward(self, x):
        return self.net(x)


class Binarized(nn.Module):
    """A non-differentiable input quantizer: the logits do not depend on x through autograd."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model((x > 0.5).float())


class Boom(RuntimeError):
    pass


class FailsOnCall(nn.Module):
    """Wraps a model and raises ``Boom`` on its ``n``-th forward call."""

    def __init__(self, model, n):
        super().__init__()
        self.model, self.n, self.calls = model, n, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == self.n:
            raise Boom("mid-attack failure")
        return self.model(x)


@pytest.fixture(scope="session")
def mnist_train():
    return load_dataset("mnist", "train", DATA_DIR)


@pytest.fixture(scope="session")
def mnist_test():
    return load_dataset("mnist", "test", DATA_DIR)


@pytest.fixture(scope="session")
def trained_cnn(mnist_train, mnist_test):
    """TinyCNN trained for two epochs on 30,000 real MNIST images (seeded; ~97% test
    accuracy, about 2 s). Do not modify it in a test: ``copy.deepcopy`` it if you need to."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyCNN()
    subset = mnist_train.head(30000)
    train(model, subset, None, TrainConfig(epochs=2, batch_size=64, lr=3e-3, seed=0), progress=False)
    return model.eval()


@pytest.fixture(scope="session")
def batch(mnist_test):
    """200 real test images and labels."""
    return mnist_test.x[:200].clone(), mnist_test.y[:200].clone()


@pytest.fixture(scope="session")
def clean(trained_cnn, batch):
    """The images among the first 100 of ``batch`` that ``trained_cnn`` classifies correctly."""
    x, y = batch[0][:100], batch[1][:100]
    with torch.no_grad():
        right = trained_cnn(x).argmax(1) == y
    assert right.sum() >= 90
    return x[right], y[right]


@pytest.fixture
def bn_model():
    """An untrained CNN with BatchNorm and Dropout (buffers and train/eval behaviour matter)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2),
            nn.Flatten(), nn.Linear(4 * 26 * 26, 10),
        ).train()
