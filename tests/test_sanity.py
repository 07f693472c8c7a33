"""Each sanity check fires on a model built to trigger it and stays silent on a normal one."""

import pytest
import torch
from conftest import Binarized
from torch import nn

from advx import sanity
from advx.evaluate import evaluate


class Softmaxed(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x).softmax(1)


class Noisy(nn.Module):
    """Randomized at test time: dropout that ignores eval mode."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(nn.functional.dropout(x, 0.3, training=True))


@pytest.fixture(scope="module")
def probe(batch):
    return batch[0][:64], batch[1][:64]


def test_logits_check(trained_cnn, probe):
    assert sanity.check_logits(trained_cnn, probe[0]) is None
    assert "probabilities" in sanity.check_logits(Softmaxed(trained_cnn), probe[0])


def test_deterministic_check(trained_cnn, probe):
    assert sanity.check_deterministic(trained_cnn, probe[0]) is None
    assert "randomized" in sanity.check_deterministic(Noisy(trained_cnn), probe[0])


def test_gradient_check(trained_cnn, probe):
    assert sanity.check_gradients(trained_cnn, *probe) is None
    assert "zero or non-finite for 100%" in sanity.check_gradients(Binarized(trained_cnn), *probe)


def test_monotone_check():
    assert sanity.check_monotone({0.1: 0.8, 0.2: 0.4, 0.3: 0.0}) is None
    assert sanity.check_monotone({0.1: 0.0, 0.3: 0.0}) is None  # flat at zero is fine
    assert "rises from eps=0.1" in sanity.check_monotone({0.1: 0.5, 0.2: 0.6, 0.3: 0.1})
    assert "does not fall" in sanity.check_monotone({0.1: 0.7, 0.3: 0.7})


def test_large_eps_and_stronger_attack_checks():
    assert sanity.check_large_eps(0.0, 0.5) is None
    assert "gradient masking" in sanity.check_large_eps(0.6, 0.5)
    assert sanity.check_stronger_attack(0.30, 0.28) is None
    assert "raised robust accuracy" in sanity.check_stronger_attack(0.30, 0.40)


def test_evaluate_reports_the_checks_that_fire(trained_cnn, probe):
    x, y = probe
    normal = evaluate(trained_cnn, x, y, attacks=["pgd"], eps=[0.1, 0.3], steps=10, progress=False)
    assert normal.warnings == {}
    masked = evaluate(Binarized(trained_cnn), x, y, attacks=["pgd"], eps=[0.1, 0.3], steps=10,
                      progress=False, adapt=False)
    assert {"gradients", "large_eps", "monotone"} <= set(masked.warnings)
    adapted = evaluate(Binarized(trained_cnn), x, y, attacks=["pgd"], eps=[0.1, 0.3], steps=10, progress=False)
    assert "bpda" in adapted.settings["adaptations"] and "gradients" not in adapted.warnings
    soft = evaluate(Softmaxed(trained_cnn), x, y, attacks=["fgsm"], eps=[0.3], progress=False)
    assert "logits" in soft.warnings


def test_black_box_check():
    only_white = torch.tensor([[0, -1, 0, 1]])
    square_found_more = torch.tensor([[0, 2, -1, 1]])
    assert sanity.check_black_box(only_white, [0.3], [False, False, True]) is None
    message = sanity.check_black_box(square_found_more, [0.3], [False, False, True], ["fgsm", "pgd", "square"])
    assert "the black-box attack (square) broke 1 samples at eps=0.3" in message
    assert sanity.check_black_box(square_found_more, [0.3], [True, False]) is None  # square first


@pytest.mark.parametrize("norm, eps", [("0", [5, 20]), ("patch", [4, 8])])
def test_the_checks_run_in_the_searched_threat_models_with_sparse_rs(trained_cnn, probe, norm, eps):
    """PGD does not take L0 or patches: the large-budget and stronger-attack checks attack with
    Sparse-RS there, and on a normal model they stay silent (half the pixels, or a patch of half
    the side, breaks every image)."""
    x, y = probe
    ev = evaluate(trained_cnn, x[:24], y[:24], attacks=["sparse-rs"], eps=eps, norm=norm, progress=False)
    assert ev.warnings == {}, ev.warnings
    assert ev.robust_acc[eps[-1]] < ev.clean_acc  # the stage ran and broke images
