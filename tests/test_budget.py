"""Per-sample budgets (``advx.attacks.budget``): an image left standing near the boundary
gets more runs, one far from it gets none, and what an image gets depends on it alone."""

import pytest
import torch

from advx import APGD, Square
from advx.attacks.budget import near_boundary
from advx.rng import SampleRNG


def test_near_boundary_reads_the_margin_against_the_spread():
    attack = APGD(torch.nn.Identity(), eps=0.1)
    logits = torch.tensor([[5.0, 4.9, 0.0],    # margin 0.1, spread 5: near
                           [5.0, 2.0, 0.0],    # margin 3, spread 5: far
                           [4.0, 5.0, 0.0],    # broken already: not near
                           [5.0, 4.0, 3.99]])  # margin 1, spread ~1: far
    y = torch.zeros(4, dtype=torch.long)
    assert near_boundary(attack, logits, y, 0.25).tolist() == [True, False, False, False]
    assert near_boundary(attack, 3 * logits + 7, y, 0.25).tolist() == [True, False, False, False]  # scale-free
    assert near_boundary(attack, logits, y, 1.0).tolist() == [True, True, False, True]
    assert not near_boundary(attack, logits, y, 0.0).any()


@pytest.mark.parametrize("cls, options, unit", [
    (APGD, dict(steps=10), 10),
    (Square, dict(queries=40), None),
])
def test_only_images_near_the_boundary_get_more_runs(cls, options, unit, trained_cnn, batch):
    """Where the extra runs fail, the result is the first runs' best point; the images near
    the boundary there are exactly those that spent more (APGD: whole runs of 10 steps)."""
    x, y = batch[0][:64], batch[1][:64]
    plain = cls(trained_cnn, eps=0.08, restarts=2, **options).run(x, y)
    more = cls(trained_cnn, eps=0.08, restarts=2, near_restarts=3, near=0.5, **options).run(x, y)
    near = near_boundary(cls(trained_cnn, eps=0.08, **options), more.logits, y, 0.5)
    extra = more.steps > plain.steps
    failed = ~more.success
    assert (failed & near).sum() >= 2 and (failed & ~near).sum() >= 2, "the batch must hold both kinds"
    assert torch.equal(extra[failed], near[failed])
    assert torch.equal(more.x_adv[failed & ~near], plain.x_adv[failed & ~near])
    assert (more.success >= plain.success).all()  # the first runs are the same; extra runs only add
    if unit is not None:
        assert ((more.steps[failed & near] - plain.steps[failed & near]) == 3 * unit).all()


def test_more_runs_break_images_the_first_runs_missed(trained_cnn, batch):
    x, y = batch[0][:200], batch[1][:200]
    plain = APGD(trained_cnn, eps=0.08, steps=2).run(x, y)
    more = APGD(trained_cnn, eps=0.08, steps=2, near_restarts=20, near=1.0).run(x, y)
    assert (more.success & ~plain.success).sum() >= 1
    assert not (plain.success & ~more.success).any()


def test_an_images_extra_runs_do_not_depend_on_its_batch(trained_cnn, batch):
    x, y = batch[0][:48], batch[1][:48]
    ids = torch.arange(48)
    attack = APGD(trained_cnn, eps=0.08, steps=10, near_restarts=3, near=0.5)
    whole = attack.run(x, y, generator=SampleRNG.from_ids(0, ids, 1))
    part = attack.run(x[20:30], y[20:30], generator=SampleRNG.from_ids(0, ids[20:30], 1))
    assert torch.equal(whole.steps[20:30], part.steps)
    assert torch.equal(whole.success[20:30], part.success)
    assert torch.allclose(whole.x_adv[20:30], part.x_adv, atol=1e-6)
    assert (whole.steps > 10).any()  # some image of the batch did get more runs


def test_square_screen_stops_only_the_images_far_from_the_boundary(trained_cnn, batch):
    """After ``screen`` queries the images far from the boundary stop where they are; the
    others go on exactly as without the screen."""
    x, y = batch[0][:64], batch[1][:64]
    full = Square(trained_cnn, eps=0.08, queries=60).run(x, y)
    screened = Square(trained_cnn, eps=0.08, queries=60, screen=20, near=0.5).run(x, y)
    stopped = screened.steps < full.steps
    went_on = ~stopped & (full.steps > 20)
    assert stopped.sum() >= 2 and went_on.sum() >= 2, "the batch must hold both kinds"
    assert (screened.steps[stopped] == 20).all() and not screened.success[stopped].any()
    assert not near_boundary(Square(trained_cnn, eps=0.08), screened.logits[stopped], y[stopped], 0.5).any()
    assert torch.equal(screened.steps[~stopped], full.steps[~stopped])
    assert torch.allclose(screened.x_adv[~stopped], full.x_adv[~stopped], atol=1e-6)
    everyone = Square(trained_cnn, eps=0.08, queries=60, screen=20, near=1e9).run(x, y)
    assert torch.equal(everyone.steps, full.steps)


def test_apgd_t_extra_runs_go_first_to_the_classes_it_did_not_try(trained_cnn, batch, monkeypatch):
    x, y = batch[0][:32], batch[1][:32]
    with torch.no_grad():
        logits = trained_cnn(x)
    keep = logits.argmax(1) == y
    x, y, logits = x[keep][:16], y[keep][:16], logits[keep][:16]
    ranked = logits.argsort(1, descending=True)
    others = ranked[ranked != y[:, None]].view(len(y), 9)  # the other classes, likeliest first
    seen = []
    run_once = APGD._run_once

    def spy(self, x, y, target, generator):
        seen.append(target.clone())
        return run_once(self, x, y, target, generator)

    monkeypatch.setattr(APGD, "_run_once", spy)
    result = APGD(trained_cnn, eps=1e-4, steps=2, loss="dlr-targeted", n_target_classes=2,
                  near_restarts=8, near=1e9).run(x, y)
    assert not result.success.any()  # every run saw every image, in order
    assert [next(k for k in range(9) if torch.equal(t, others[:, k])) for t in seen] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 0]
