"""advx.modes: a model's mode comes back as it was."""

import copy

from advx.modes import accuracy


def test_accuracy_restores_the_mode(trained_cnn, mnist_test):
    model = copy.deepcopy(trained_cnn).train()
    acc = accuracy(model, mnist_test.x[:500], mnist_test.y[:500])
    assert model.training
    assert 0.9 < acc <= 1.0
