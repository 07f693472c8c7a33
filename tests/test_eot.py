"""Randomized models (``advx.attacks.eot``): their randomness seeded by advx per image, EOT's
averaged gradients, majority verdicts, and ``evaluate``'s adaptation to them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import DATA_DIR
from defences import RANDOMIZED, Noisy, NoisyBits, user_model_folder
from torch import nn

from advx import PGD, EvalConfig, evaluate
from advx.adapt import EOT, VOTES, adapt
from advx.attacks.eot import RandomnessWarning, Seeded, check_seedable, draw, is_randomized, majority, vote_draw
from advx.attacks.registry import ATTACKS, attack_options


class Draws(nn.Module):
    """Every kind of random draw ``Seeded`` answers per image, summed into 3 'logits'."""

    def forward(self, x):
        n = len(x)
        parts = [torch.randn_like(x).flatten(1).mean(1), torch.rand(n, 4).mean(1), torch.randn((n, 2))[:, 0],
                 torch.randint(0, 5, (n,)).float(), torch.randint_like(x, 3).flatten(1).mean(1),
                 torch.normal(torch.zeros(n), 1.0), torch.empty(n).normal_(2.0, 0.5), torch.empty(n).uniform_(-1, 1),
                 torch.bernoulli(torch.full((n,), 0.3)), torch.nn.functional.dropout(torch.ones(n, 8), 0.5).mean(1)]
        z = torch.stack(parts, 1)
        return torch.stack([z.sum(1), z[:, :5].sum(1), x.flatten(1).mean(1)], 1)


@pytest.fixture(scope="module")
def images(batch):
    return batch[0][:100], batch[1][:100]


def test_seeded_draws_are_reproducible_per_image_and_leave_the_global_rng_alone():
    torch.manual_seed(1)
    x = torch.rand(30, 1, 6, 6)
    model = Seeded(Draws(), seed=4)
    state = torch.get_rng_state()
    whole = model(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(model(x), whole)  # the same streams: the same draws
    split = torch.cat([model(x[:7]), model(x[7:19]), model(x[19:])])
    assert torch.equal(split, whole)  # independent of the batch
    assert torch.equal(model(x.flip(0)), whole.flip(0))
    with draw(1):
        other = model(x)
    assert not torch.equal(other[:, :2], whole[:, :2]) and torch.equal(other[:, 2], whole[:, 2])
    assert not torch.equal(Seeded(Draws(), seed=5)(x)[:, :2], whole[:, :2])
    assert is_randomized(Draws(), x) and not is_randomized(model, x)


def test_seeded_draws_have_the_distributions_asked_for():
    class Raw(nn.Module):
        def forward(self, x):
            return torch.cat([torch.randn_like(x), torch.rand_like(x), torch.randint_like(x, 4)], 1)

    out = Seeded(Raw())(torch.rand(2000, 50))
    normal, uniform, ints = out[:, :50], out[:, 50:100], out[:, 100:]
    assert abs(normal.mean()) < 0.01 and abs(normal.std() - 1) < 0.01
    assert 0 <= uniform.min() and uniform.max() < 1 and abs(uniform.mean() - 0.5) < 0.01
    assert set(ints.unique().tolist()) == {0.0, 1.0, 2.0, 3.0}
    rows = normal[:, 0] * normal[:, 1]  # different elements of a row are not correlated
    assert abs(rows.mean()) < 0.05


def test_a_draw_shared_by_the_batch_warns_once_and_stays_reproducible():
    class Shared(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3] * torch.rand(())

    model, x = Seeded(Shared()), torch.rand(8, 1, 4, 4)
    with pytest.warns(RandomnessWarning, match=r"shape \[\], shared by the images of a batch") as caught:
        first = model(x)
        assert torch.equal(model(x), first)
    assert len(caught) == 1


def test_randomness_advx_cannot_seed_is_named_once():
    class FromNumpy(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :3] + torch.from_numpy(np.random.rand(len(x), 3)).float()

    x = torch.rand(10, 1, 4, 4)
    assert "cannot be seeded" in check_seedable(Seeded(FromNumpy()), x)
    assert check_seedable(Seeded(Draws()), x) is None
    with pytest.warns(RandomnessWarning, match="cannot be seeded by advx") as caught:
        result = adapt(FromNumpy(), x, torch.zeros(10, dtype=torch.long), ["pgd"])
    assert len(caught) == 1 and result.eot == EOT and "eot" in result.reasons


def test_eot_averages_the_gradient_over_draws(trained_cnn, images):
    x, y = images[0][:20], images[1][:20]
    model = Seeded(Noisy(trained_cnn).eval())
    attack = PGD(model, eps=0.3, steps=1, eot=4)
    grad, logits, loss = attack.gradient(x, y)
    grads, all_logits = [], []
    for j in range(4):
        one = PGD(model, eps=0.3, steps=1)
        with draw(j):
            g, z, _ = one.gradient(x, y)
        grads.append(g)
        all_logits.append(z)
    assert torch.allclose(grad, torch.stack(grads).mean(0), atol=1e-7)
    assert torch.allclose(logits, torch.stack(all_logits).mean(0), atol=1e-6)
    assert not torch.allclose(grads[0], grads[1])  # the draws differ


def test_eot_of_one_is_the_plain_attack(trained_cnn, images):
    x, y = images[0][:30], images[1][:30]
    a = PGD(trained_cnn, eps=0.1, steps=5).run(x, y)
    b = PGD(trained_cnn, eps=0.1, steps=5, eot=1).run(x, y)
    assert torch.equal(a.x_adv, b.x_adv)


@pytest.mark.parametrize("value, message", [(0, "eot must be >= 1, got 0"), (-2, "eot must be >= 1"),
                                            (1.5, "eot must be an integer")])
def test_bad_eot_is_refused(trained_cnn, value, message):
    with pytest.raises(ValueError, match=message):
        PGD(trained_cnn, eps=0.1, eot=value)
    with pytest.raises(ValueError, match=message):
        EvalConfig(eot=value)


@pytest.mark.parametrize("value, message", [(0, "votes must be >= 1"), (4, "votes must be an odd number"),
                                            (2.5, "votes must be an integer")])
def test_bad_votes_are_refused(value, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig(votes=value)


def test_eot_is_taken_by_the_gradient_attacks_that_go_through_attack_gradient():
    takes = {name for name in ATTACKS if "eot" in attack_options(name)}
    assert {"fgsm", "pgd", "mifgsm", "apgd", "apgd-t", "fmn"} <= takes
    assert "square" not in takes  # no gradient
    with pytest.raises(ValueError, match="eot does not apply to any attack of the cascade"):
        EvalConfig(attacks=["square"], eot=5)


def test_the_majority_rule():
    class RightOn(nn.Module):
        """Right (class 0) on the draws whose index is in ``right``, class 1 or 2 otherwise."""

        def __init__(self, right):
            super().__init__()
            self.right = right

        def forward(self, x):
            from advx.attacks.eot import _DRAW

            d = _DRAW.get()
            k = 0 if d in self.right else 1 + (d % 2)
            return torch.nn.functional.one_hot(torch.full((len(x),), k), 3).float()

    x = torch.rand(4, 1, 2, 2)
    votes = [vote_draw(m) for m in range(5)]
    assert majority(RightOn(set(votes[:3])), x, votes=5).tolist() == [0] * 4  # 3 of 5
    assert (majority(RightOn(set(votes[:2])), x, votes=5) != 0).all()  # 2 of 5: not correct


def test_evaluate_adapts_to_a_randomized_model(trained_cnn, images):
    x, y = images
    model = NoisyBits(trained_cnn).eval()
    settings = dict(attacks=["fgsm", "pgd"], eps=[0.3], steps=10, progress=False, checks=False)
    plain = evaluate(model, x, y, adapt=False, **settings)
    adapted = evaluate(model, x, y, **settings)
    assert list(adapted.settings["adaptations"]) == ["eot", "apgd", "bpda", "square"]
    assert adapted.attacks == ["fgsm", "pgd", "apgd", "apgd-dlr", "square"]
    assert "apgd and apgd-dlr join the cascade, with EOT" in adapted.settings["adaptations"]["apgd"]
    assert "mean over 20 draws" in adapted.settings["adaptations"]["eot"]
    assert adapted.settings["eot"] == EOT and adapted.settings["votes"] == VOTES
    assert adapted.settings["verdict"] == f"the majority of {VOTES} draws of the model's randomness"
    assert plain.settings["verdict"] == "one forward pass" and plain.settings["adaptations"] == {}
    assert plain.robust_acc[0.3] > 0.3  # the trap: one draw per step, no gradient through the rounding
    assert adapted.robust_acc[0.3] < plain.robust_acc[0.3] - 0.25, (plain.robust_acc, adapted.robust_acc)
    again = evaluate(model, x, y, batch_size=30, **settings)  # reproducible, whatever the batch size
    for key, value in adapted.records.items():
        assert torch.equal(torch.as_tensor(again.records[key]), torch.as_tensor(value)), key


@pytest.mark.parametrize("defence", [d if k == 0 else pytest.param(d, marks=pytest.mark.slow) for k, d in
                                     enumerate(RANDOMIZED)], ids=lambda d: d.name)
def test_each_randomized_defence_is_found_and_majority_decides_clean_accuracy(defence, trained_cnn, images):
    x, y = images
    model = defence(trained_cnn).eval()
    assert is_randomized(model, x[:10])
    ev = evaluate(model, x[:40], y[:40], attacks=["fgsm", "pgd"], eps=[0.1], steps=3, progress=False, checks=False)
    assert "eot" in ev.settings["adaptations"] and ev.attacks[:4] == ["fgsm", "pgd", "apgd", "apgd-dlr"]
    seeded = Seeded(model, 0)
    expected = majority(seeded, x[:40], votes=VOTES) == y[:40]
    assert ev.clean_acc == expected.float().mean().item()


def test_the_cli_takes_eot_and_votes_and_names_them_when_bad(trained_cnn, tmp_path, capsys, monkeypatch):
    from advx.cli import main

    folder = user_model_folder(tmp_path / "m", Noisy, trained_cnn)
    monkeypatch.chdir(folder)
    common = ["eval", "--model", "defended.py:build", "--weights", "weights.pt", "--attacks", "pgd", "--eps", "0.1",
              "--steps", "3", "--n", "20", "--data-dir", str(DATA_DIR), "--no-checks", "--quiet"]
    assert main([*common, "--eot", "0", "--out", "x"]) != 0
    assert "--eot must be >= 1, got 0" in capsys.readouterr().err
    assert main([*common, "--votes", "4", "--out", "x"]) != 0
    assert "--votes must be an odd number" in capsys.readouterr().err
    assert main([*common, "--eot", "3", "--votes", "5", "--out", "a"]) == 0
    report = json.loads((folder / "a" / "report.json").read_text())
    assert report["settings"]["eot"] == 3 and report["settings"]["votes"] == 5
    assert "majority of 5 draws" in capsys.readouterr().out
    attack = ["attack", "--model", "defended.py:build", "--weights", "weights.pt", "--attack", "pgd", "--eps", "0.1",
              "--steps", "3", "--n", "20", "--data-dir", str(DATA_DIR), "--quiet"]
    assert main([*attack, "--out", "c"]) == 0
    assert "the model is randomized" in capsys.readouterr().err
    assert main([*attack, "--eot", "4", "--out", "d"]) == 0
    assert json.loads((folder / "d" / "report.json").read_text())["eot"] == 4
    assert main([*attack, "--eot", "0", "--out", "e"]) != 0
    assert "--eot must be >= 1, got 0" in capsys.readouterr().err


def test_a_black_box_cascade_on_a_randomized_model_gets_majority_verdicts_and_no_eot(trained_cnn, images):
    x, y = images
    ev = evaluate(Noisy(trained_cnn).eval(), x[:20], y[:20], attacks=["square"], eps=[0.1], progress=False,
                  checks=False)
    assert ev.settings["eot"] is None and ev.settings["votes"] == VOTES
    assert "EOT" not in ev.settings["adaptations"]["eot"] and "majority of 11" in ev.settings["adaptations"]["eot"]
