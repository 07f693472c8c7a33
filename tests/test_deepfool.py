"""DeepFool: on a linear classifier, one step to the hyperplane (L2 and Linf)."""

import pytest
import torch
from torch import nn

from advx import DeepFool


@pytest.mark.parametrize("norm,dual", [("2", 2), ("inf", 1)])
def test_deepfool_on_a_linear_classifier_is_the_distance_to_the_hyperplane(norm, dual):
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 2))
    with torch.no_grad():
        model[1].weight.copy_(0.01 * torch.randn(2, 784, generator=gen))
        model[1].bias.zero_()
    x = (0.5 + 0.05 * torch.randn(6, 1, 28, 28, generator=gen)).clamp(0.3, 0.7)
    with torch.no_grad():
        y = model(x).argmax(1)
    w = model[1].weight[1 - y] - model[1].weight[y]                   # [N, 784]
    f = model(x).gather(1, (1 - y)[:, None]).squeeze(1) - model(x).gather(1, y[:, None]).squeeze(1)
    expected = 1.02 * f.abs() / w.norm(p=dual, dim=1)

    result = DeepFool(model, norm=norm, overshoot=0.02).run(x, y)
    assert result.success.all() and (result.steps == 1).all()
    assert torch.allclose(result.distance, expected.detach(), rtol=1e-3, atol=2e-4)
    direction = w if norm == "2" else w.sign()
    cosine = nn.functional.cosine_similarity((result.x_adv - x).flatten(1), direction.detach(), dim=1)
    assert (cosine > 0.999).all()
