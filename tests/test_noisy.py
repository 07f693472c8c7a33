"""Training for randomized smoothing: the two losses held to their formulas, their noise
stream resumable, the options of each kind, and a trained model that the noise helps."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from advx import noisy as noisy_mod
from advx.cli import build_parser
from advx.noisy import NoisyConfig, NoisyLoss
from advx.robust_training import robust_config, train_robust
from advx.smoothing import Smoothed
from advx.train import TrainConfig, train_baseline
from advx.validate import InputError
from conftest import DATA_DIR, killed_and_resumed, load_script


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 5))


def test_gaussian_is_the_cross_entropy_on_the_streams_noise():
    model, x, y = _model(), torch.rand(8, 1, 4, 4), torch.arange(8) % 5
    loss, logits = NoisyLoss("gaussian", sigma=0.5, seed=3)(model, x, y, epoch=0.0)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(logits, model(x + 0.5 * noise))
    assert torch.allclose(loss, F.cross_entropy(model(x + 0.5 * noise), y))


def test_consistency_is_cross_entropy_plus_kl_to_the_mean_plus_its_entropy():
    model, x, y = _model(), torch.rand(6, 1, 4, 4), torch.arange(6) % 5
    loss, logits = NoisyLoss("consistency", sigma=0.3, copies=3, kl_weight=7.0, seed=1)(model, x, y, epoch=0.0)
    noise = torch.randn((18, 1, 4, 4), generator=torch.Generator().manual_seed(1))
    p = [F.softmax(model(x + 0.3 * noise[6 * i:6 * i + 6]), 1) for i in range(3)]
    mean = sum(p) / 3
    ce = sum(F.cross_entropy(q.log(), y) for q in p) / 3
    kl = sum((mean * (mean.log() - q.log())).sum(1).mean() for q in p) / 3
    entropy = -(mean * mean.log()).sum(1).mean()
    assert torch.allclose(loss, ce + 7.0 * kl + 0.5 * entropy, atol=1e-5)
    assert torch.allclose(logits, model(x + 0.3 * noise[:6]), atol=1e-6)
    # copies that agree exactly leave only the cross-entropy and the entropy
    flat = NoisyLoss("consistency", sigma=1e-12, copies=2, kl_weight=100.0)(model, x, y, epoch=0.0)[0]
    clean = F.softmax(model(x), 1)
    assert torch.allclose(flat, F.cross_entropy(model(x), y) - 0.5 * (clean * clean.log()).sum(1).mean(), atol=1e-5)


def test_the_noise_stream_resumes_where_it_was():
    model, x, y = _model(), torch.rand(4, 1, 4, 4), torch.arange(4)
    a = NoisyLoss("gaussian", sigma=0.5, seed=2)
    a(model, x, y, epoch=0.0)
    b = NoisyLoss("gaussian", sigma=0.5, seed=9)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a(model, x, y, epoch=0.1)[1], b(model, x, y, epoch=0.1)[1])


def test_each_kind_takes_its_own_options_only():
    assert NoisyConfig(kind="consistency").copies == 2 and NoisyConfig(kind="consistency").kl_weight == 10.0
    assert NoisyConfig(kind="gaussian").copies is None
    assert robust_config("gaussian", sigma=0.5) == NoisyConfig(kind="gaussian", sigma=0.5)
    with pytest.raises(InputError, match="copies applies only with kind='consistency', got kind='gaussian'"):
        robust_config("gaussian", copies=3)
    with pytest.raises(InputError, match="sigma applies only with kind='gaussian' or 'consistency', got kind='pgd'"):
        robust_config("pgd", sigma=0.5)
    with pytest.raises(InputError, match="eps applies only with"):
        robust_config("gaussian", eps=0.3)
    with pytest.raises(InputError, match="sigma must be > 0, got 0"):
        NoisyConfig(sigma=0)
    with pytest.raises(InputError, match="copies must be >= 2, got 1"):
        NoisyConfig(kind="consistency", copies=1)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["gaussian", "consistency"])
def test_an_interrupted_noisy_run_resumes_to_the_uninterrupted_weights(kind, tmp_path, monkeypatch):
    config = TrainConfig(epochs=2, batch_size=100, train_size=300, seed=4)
    robust = NoisyConfig(kind=kind, sigma=0.5, holdout=40)
    a, b = killed_and_resumed(config, robust, tmp_path, monkeypatch, noisy_mod, "noisy_metrics")
    assert len(b["metrics"]["history"]) == 2
    for k, v in a["state_dict"].items():
        assert torch.equal(b["state_dict"][k], v), k


@pytest.mark.slow
def test_noise_training_makes_the_smoothed_model_better_than_clean_training(mnist_test, tmp_path):
    """Same model, data and steps: trained on noisy images, the model smoothed at sigma 0.5
    is right on more test images than the same model trained on clean ones."""
    config = TrainConfig(epochs=1, batch_size=64, train_size=2000, seed=0)
    common = dict(data_dir=DATA_DIR, progress=False)
    x, y = mnist_test.x[:100], mnist_test.y[:100]
    smoothed = {}
    for kind in ("gaussian", None):
        if kind is None:
            model, _ = train_baseline(config, checkpoint=tmp_path / "clean.pt", **common)
        else:
            model, _ = train_robust(config, NoisyConfig(kind=kind, sigma=0.5, holdout=20),
                                    checkpoint=tmp_path / f"{kind}.pt", **common)
        result = Smoothed(model, 0.5).predict(x, samples=100, alpha=0.01)
        smoothed[kind] = (result.prediction == y).float().mean().item()
    assert smoothed["gaussian"] > smoothed[None] + 0.1


@pytest.mark.parametrize("name", load_script("train_smoothed").RECIPES)
def test_every_smoothing_recipe_is_a_valid_training_command(name):
    args = build_parser().parse_args(["train", *load_script("train_smoothed").RECIPES[name]])
    config = robust_config(args.kind, sigma=args.sigma, holdout=args.holdout)
    assert config.kind == name.split("-")[0] and config.sigma == float(name.split("-")[1])
    assert args.checkpoint == f"checkpoints/smoothed-{name}.pt"


def test_an_unknown_smoothing_recipe_is_one_clear_error(capsys):
    assert load_script("train_smoothed").run(["--recipe", "gaussian-2"]) == 2
    assert "--recipe must be one of gaussian-0.25, gaussian-0.5" in capsys.readouterr().err
