"""Per-sample random streams: a sample's result does not depend on the rest of its batch."""

import pytest
import torch

from advx import PGD, rng
from advx.attacks import ATTACKS


def test_streams_follow_the_sample_not_the_batch():
    whole = rng.rand((4, 3), rng.SampleRNG.from_ids(0, [10, 11, 12, 13]))
    part = rng.rand((2, 3), rng.SampleRNG.from_ids(0, [12, 13]))
    assert torch.equal(whole[2:], part)
    assert not torch.equal(whole[0], whole[1])
    other_salt = rng.rand((2, 3), rng.SampleRNG.from_ids(0, [12, 13], salt=1))
    assert not torch.equal(part, other_salt)


def test_subset_shares_the_streams():
    streams = rng.SampleRNG.from_ids(0, [1, 2, 3])
    sub = streams[torch.tensor([0, 2])]
    first = rng.rand((2,), sub)
    assert torch.equal(first, rng.rand((2,), rng.SampleRNG.from_ids(0, [1, 3])))
    again = rng.rand((3,), streams)  # samples 1 and 3 moved on, sample 2 did not
    fresh = rng.rand((3,), rng.SampleRNG.from_ids(0, [1, 2, 3]))
    assert torch.equal(again[1], fresh[1]) and not torch.equal(again[0], fresh[0])


def test_wrong_number_of_streams_is_an_error(trained_cnn, batch):
    with pytest.raises(ValueError, match=r"SampleRNG must have one stream per sample \(8\), got 3"):
        PGD(trained_cnn, eps=0.3).run(batch[0][:8], batch[1][:8], generator=rng.SampleRNG.from_ids(0, [0, 1, 2]))


@pytest.mark.parametrize("name", ["pgd", "apgd", "square"])
def test_random_attacks_give_the_same_per_sample_result_in_any_batch(name, trained_cnn, batch):
    x, y = batch[0][:12], batch[1][:12]
    kwargs = {"pgd": dict(steps=5, restarts=2), "apgd": dict(steps=10), "square": dict(queries=250, restarts=2)}[name]
    attack = ATTACKS[name](trained_cnn, eps=0.15, **kwargs)
    ids = torch.arange(12)
    whole = attack.run(x, y, generator=rng.SampleRNG.from_ids(5, ids)).x_adv
    halves = torch.cat([attack.run(x[s], y[s], generator=rng.SampleRNG.from_ids(5, ids[s])).x_adv
                        for s in (slice(0, 5), slice(5, 12))])
    assert torch.allclose(whole, halves, atol=1e-6)
    assert not torch.equal(whole, x)
