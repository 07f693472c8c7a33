"""Shared fixtures and helpers: real MNIST slices, tiny seeded models that train in seconds on a CPU,
the models and checks that several test files use."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from advx.cli import main
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


class Counting(nn.Module):
    """The model, counting the images it is run on (``images``)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.images = model, 0

    def forward(self, x):
        self.images += len(x)
        return self.model(x)


def train_checkpoint(path, *options) -> Path:
    """``advx train`` into ``path`` with ``options``, quietly, on the test data."""
    assert main(["train", *options, "--data-dir", str(DATA_DIR), "--checkpoint", str(path), "--quiet"]) == 0
    return path


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


class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc = nn.Linear(784, 10)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(10, 784, generator=g) * 0.05)
            self.fc.bias.copy_(torch.randn(10, generator=g) * 0.05)

    def forward(self, x):
        return self.fc(x.flatten(1))


def load_script(name: str):
    """``scripts/<name>.py`` as a module (the scripts are not a package)."""
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def failing_on_call(real, call: int):
    """``real``, except that its ``call``-th call raises KeyboardInterrupt (a power cut mid-run)."""
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt("power cut")
        return real(*args, **kwargs)
    return wrapped


def killed_and_resumed(config, robust, tmp_path, monkeypatch, module, metrics: str):
    """``robust`` training run whole (``a.pt``), and again killed in the second epoch's held-out
    check (``module.metrics`` raising) then resumed (``b.pt``): the two latest checkpoints."""
    from advx.checkpoint import load_checkpoint
    from advx.robust_training import train_robust

    common = dict(data_dir=DATA_DIR, progress=False)
    train_robust(config, robust, checkpoint=tmp_path / "a.pt", **common)
    real = getattr(module, metrics)
    monkeypatch.setattr(module, metrics, failing_on_call(real, 2))  # in epoch two
    with pytest.raises(KeyboardInterrupt):
        train_robust(config, robust, checkpoint=tmp_path / "b.pt", **common)
    assert len(load_checkpoint(tmp_path / "b.last.pt")["metrics"]["history"]) == 1
    monkeypatch.setattr(module, metrics, real)
    train_robust(config, robust, checkpoint=tmp_path / "b.pt", resume=True, **common)
    return load_checkpoint(tmp_path / "a.last.pt"), load_checkpoint(tmp_path / "b.last.pt")


def success_rate(attack, model, x, y, goal):
    """Success on the samples the model gets right (and, targeted, whose label is not the goal)."""
    with torch.no_grad():
        eligible = (model(x).argmax(1) == y) & (goal != y if attack.targeted else True)
    return attack.run(x, goal).success[eligible].double().mean().item()  # float64: 95 of 100 is exactly 0.95


def _kill_every_process_of(marker: str) -> None:
    """SIGKILL every process whose command line holds ``marker``, and wait until none is left."""
    def matching():
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    yield int(entry.name)
            except OSError:
                continue
    for _ in range(200):
        pids = list(matching())
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.05)
    raise AssertionError(f"processes of {marker} survived SIGKILL")


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
def right(trained_cnn, mnist_test):
    """The first 100 test images, those that ``trained_cnn`` classifies correctly."""
    x, y = mnist_test.x[:100], mnist_test.y[:100]
    with torch.no_grad():
        ok = trained_cnn(x).argmax(1) == y
    return x[ok], y[ok]


@pytest.fixture(scope="session")
def clean(trained_cnn, batch):
    """The images among the first 100 of ``batch`` that ``trained_cnn`` classifies correctly."""
    x, y = batch[0][:100], batch[1][:100]
    with torch.no_grad():
        right = trained_cnn(x).argmax(1) == y
    assert right.sum() >= 90
    return x[right], y[right]


@pytest.fixture(scope="module")
def few(clean):
    """The first 48 correctly classified images (FAB linearises every class: keep it small)."""
    return clean[0][:48], clean[1][:48]


@pytest.fixture
def bn_model():
    """An untrained CNN with BatchNorm and Dropout (buffers and train/eval behaviour matter)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return nn.Sequential(
            nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2),
            nn.Flatten(), nn.Linear(4 * 26 * 26, 10),
        ).train()


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory):
    return train_checkpoint(tmp_path_factory.mktemp("dist") / "tiny.pt", "--epochs", "2", "--train-size", "6000",
                            "--batch-size", "64")
