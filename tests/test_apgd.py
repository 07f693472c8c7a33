"""APGD: its step-size checkpoints, the DLR loss, the best-loss iterate, APGD-T's targets and
restarts, early stopping, and L1 APGD against L1 PGD on real MNIST."""

import pytest
import torch

from advx import APGD, PGD
from advx.attacks.apgd import step_checkpoints
from advx.attacks.objectives import dlr_loss


def test_apgd_checkpoints_follow_the_recursion():
    assert step_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_dlr_is_invariant_to_shift_and_scale():
    logits, y = torch.randn(8, 10, generator=torch.Generator().manual_seed(0)), torch.arange(8)
    assert torch.allclose(dlr_loss(3.0 * logits + 7.0, y), dlr_loss(logits, y), atol=1e-5)


@pytest.mark.parametrize("loss", ["ce", "dlr", "dlr-targeted"])
def test_apgd_best_loss_never_below_start(loss, trained_cnn, batch):
    """Where APGD fails, it returns its best-loss iterate, which is never worse than the
    random start it began from (the start is the documented one: the seed's first draw)."""
    x, y = batch[0][:50], batch[1][:50]
    attack = APGD(trained_cnn, eps=0.1, steps=20, loss=loss, n_target_classes=1)  # small eps: many survive
    with torch.no_grad():
        target = attack.goal.targets_to_try(trained_cnn(x), y, 1)[0]
        start = attack.clip(attack.norm.random_start(x, attack.eps, torch.Generator().manual_seed(0)))
    objective = {"ce": lambda z: attack.loss(z, y), "dlr": lambda z: dlr_loss(z, y),
                 "dlr-targeted": lambda z: attack.goal.targeted_dlr(z, y, target)}[loss]
    result = attack.run(x, y)
    with torch.no_grad():
        at_start, at_end = objective(trained_cnn(start)), objective(trained_cnn(result.x_adv))
    failed = ~result.success
    assert failed.sum() >= 10
    assert (at_end[failed] >= at_start[failed] - 1e-5).all()
    assert (at_end[failed] > at_start[failed]).float().mean() > 0.9  # it does climb


def test_apgd_t_steps_and_restarts_only_on_unbroken(trained_cnn, batch):
    x, y = batch[0][:50], batch[1][:50]
    attack = APGD(trained_cnn, eps=0.1, steps=5, loss="dlr-targeted", n_target_classes=3)
    result = attack.run(x, y)
    assert (result.steps % 5 == 0).all() and (result.steps >= 5).all() and (result.steps <= 15).all()
    assert (result.steps[~result.success] == 15).all()  # a failure tried every target
    assert result.success.any() and (result.steps[result.success] < 15).any()


def test_apgd_early_stop_drops_samples_once_fooled(trained_cnn, batch):
    from advx import APGD

    x, y = batch[0][:64], batch[1][:64]
    full = APGD(trained_cnn, eps=0.3, steps=50).run(x, y)
    early = APGD(trained_cnn, eps=0.3, steps=50, early_stop=True).run(x, y)
    assert early.success.float().mean() >= full.success.float().mean() - 0.02
    assert early.success.float().mean() >= 0.95
    assert (early.steps[early.success] < 50).all() and early.steps.float().mean() < 25
    assert (full.steps == 50).all()


def test_l1_apgd_beats_l1_pgd_at_the_same_steps(trained_cnn, few):
    x, y = few

    def acc(attack):
        with torch.no_grad():
            return (trained_cnn(attack(x, y)).argmax(1) == y).float().mean().item()
    assert acc(APGD(trained_cnn, norm="1", eps=4.0, steps=50)) < acc(PGD(trained_cnn, norm="1", eps=4.0, steps=50))
