"""CW (Carlini-Wagner L2): the binary search over c, and the clean image where it never succeeds."""

import torch

from advx import CW


def test_cw_binary_search_finds_smaller_perturbations(trained_cnn, batch):
    x, y = batch[0][:100], batch[1][:100]
    fixed = CW(trained_cnn, steps=30, binary_search_steps=1, initial_const=10.0).run(x, y)
    searched = CW(trained_cnn, steps=30, binary_search_steps=5, initial_const=10.0).run(x, y)
    both = fixed.success & searched.success
    assert both.float().mean() > 0.9
    # The first round is the fixed-c run, so no sample can get worse.
    assert (searched.distance[fixed.success] <= fixed.distance[fixed.success] + 1e-6).all()
    assert searched.distance[both].median() < 0.9 * fixed.distance[both].median()


def test_cw_returns_x_when_it_never_succeeds(trained_cnn, batch):
    x, y = batch[0][:16], batch[1][:16]
    result = CW(trained_cnn, steps=3, binary_search_steps=1, initial_const=1e-6).run(x, y)
    assert torch.equal(result.x_adv[~result.success], x[~result.success])
