"""Mixed precision: the search may run in bf16/fp16, every decision is fp32.

The soundness rule, for every registered attack and every precision: a sample the
attack reports as broken is misclassified by the fp32 model, and the logits it reports
are the fp32 model's. The mutants at the end show that these tests can fail.
"""

from __future__ import annotations

import copy

import pytest
import torch

from advx import ATTACKS, PGD, evaluate
from advx.attacks.registry import abilities, build_attack
from advx.precision import PRECISIONS, fast_bf16, resolve
from advx.train import TrainConfig, train
from advx.validate import InputError

FAST = dict(steps=5, queries=30, binary_search_steps=2, n_target_classes=2)
LOW = ("bf16", "fp16")


def coarse(model):
    """``model`` with 300 added to every logit by a last linear layer: in bf16 (8 bits of
    mantissa) logits near 300 are rounded to steps of 2, so the low-precision and the
    fp32 argmax often disagree. Only the rounding changes; the fp32 function is the same."""
    head = torch.nn.Linear(10, 10)
    with torch.no_grad():
        head.weight.copy_(torch.eye(10))
        head.bias.fill_(300.0)
    return torch.nn.Sequential(model, head).eval()


def state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_reported_success_holds_for_the_fp32_model(name, precision, trained_cnn, batch):
    x, y = batch[0][:64], batch[1][:64]
    if precision in LOW and not abilities(name).low_precision:
        with pytest.raises(InputError, match="precision must be 'fp32' or 'auto' for this attack"):
            build_attack(name, trained_cnn, strict=False, precision=precision, **FAST)
        return
    model = copy.deepcopy(trained_cnn)
    before = state(model)
    attack = build_attack(name, model, strict=False, precision=precision, **FAST)
    result = attack.run(x, y)
    with torch.no_grad():
        exact = trained_cnn(result.x_adv)
    assert torch.equal(result.logits, exact)                      # the fp32 model's logits
    assert torch.equal(result.success, exact.argmax(1) != y)      # success judged on them
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert attack.precision_used == resolve(precision, "cpu", allowed=abilities(name).low_precision)
    assert attack.config()["precision"] == precision


@pytest.mark.parametrize("precision", LOW)
def test_early_stop_keeps_only_samples_broken_in_fp32(precision, trained_cnn, batch):
    """An early-stopped sample left the search because it was broken: in low precision
    the search's own logits say so first, an fp32 forward confirms it."""
    x, y = batch
    attack = PGD(coarse(trained_cnn), eps=0.15, alpha=0.01, steps=40, early_stop=True, precision=precision)
    result = attack.run(x, y)
    stopped = result.steps < attack.steps
    assert stopped.sum() > 20
    assert result.success[stopped].all()


def test_low_precision_pgd_keeps_what_it_found_on_the_way(trained_cnn, batch):
    """Without early stop PGD returns its last iterate; in low precision the iterates
    wander across the fp32 boundary, so the first one an fp32 forward confirms is kept:
    every sample the early-stopping run breaks (the same iterates up to its stop) stays
    broken when the run goes on."""
    x, y = batch
    model = coarse(trained_cnn)
    kwargs = dict(eps=0.1, alpha=0.01, steps=30, precision="bf16")
    stopped = PGD(model, early_stop=True, **kwargs).run(x, y).success
    full = PGD(model, **kwargs).run(x, y).success
    assert stopped.sum() >= 20
    assert not (stopped & ~full).any()


def test_a_callers_autocast_region_does_not_change_the_decisions(trained_cnn, batch):
    """Inside the caller's own ``torch.autocast``, the checks and the reported logits
    still come from the model as given."""
    x, y = batch
    attack = PGD(trained_cnn, eps=0.15, alpha=0.01, steps=20, early_stop=True)
    plain = attack.run(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = attack.run(x, y)
    assert torch.equal(inside.x_adv, plain.x_adv) and torch.equal(inside.logits, plain.logits)
    assert inside.logits.dtype == torch.float32


def test_low_precision_search_is_as_strong(trained_cnn, batch):
    x, y = batch
    fp32 = PGD(trained_cnn, eps=0.15, alpha=0.01, steps=20).run(x, y).success.float().mean()
    bf16 = PGD(trained_cnn, eps=0.15, alpha=0.01, steps=20, precision="bf16").run(x, y).success.float().mean()
    assert 0.2 < fp32 < 0.95          # a budget where the attack's strength shows
    assert bf16 >= fp32 - 0.02        # 4 images in 200


def test_same_seed_same_result_in_bf16(trained_cnn, batch):
    x, y = batch[0][:50], batch[1][:50]
    a, b = (PGD(trained_cnn, eps=0.2, steps=10, seed=3, precision="bf16").run(x, y) for _ in range(2))
    assert torch.equal(a.x_adv, b.x_adv)


def test_precision_is_checked_by_name():
    with pytest.raises(InputError, match=r"precision must be one of 'auto', 'fp32', 'bf16', 'fp16', got 'half'"):
        PGD(torch.nn.Linear(4, 2), precision="half")


def test_auto_follows_the_hardware(monkeypatch):
    import advx.precision as precision

    monkeypatch.setattr(precision, "fast_bf16", lambda device: True)
    assert precision.resolve("auto", "cpu") == "bf16"
    assert precision.resolve("auto", "cpu", allowed=False) == "fp32"
    monkeypatch.setattr(precision, "fast_bf16", lambda device: False)
    assert precision.resolve("auto", "cpu") == "fp32"
    assert precision.resolve("bf16", "cpu") == "bf16"  # asked for explicitly: used


def test_fast_bf16_reads_the_cpu():
    import advx.precision as precision

    expected = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
    assert precision.fast_bf16("cpu") == expected


def test_evaluate_records_the_precision_each_attack_searched_in(trained_cnn, batch):
    x, y = batch
    kwargs = dict(attacks=["pgd", ("square", {"queries": 20})], eps=[0.15], steps=10, progress=False)
    low = evaluate(trained_cnn, x, y, precision="bf16", **kwargs)
    full = evaluate(trained_cnn, x, y, **kwargs)
    assert low.settings["precision"] == "bf16"
    assert low.settings["precision_used"] == {"pgd": "bf16", "square": "fp32"}  # Square keeps fp32
    assert full.settings["precision_used"] == {"pgd": "fp32", "square": "fp32"}
    assert abs(low.robust_acc[0.15] - full.robust_acc[0.15]) <= 0.02


def test_training_in_bf16_learns_and_keeps_fp32_weights(trained_cnn, mnist_train, mnist_test):
    from conftest import TinyCNN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = TinyCNN()
    config = TrainConfig(epochs=1, batch_size=64, seed=0, precision="bf16")
    history = train(model, mnist_train.head(6000), mnist_test.head(1000), config, progress=False)
    assert history[-1]["test_acc"] > 0.85
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_fp16_training_needs_a_gpu(mnist_train):
    from conftest import TinyCNN

    with pytest.raises(InputError, match="precision 'fp16' trains only on a CUDA device"):
        train(TinyCNN(), mnist_train.head(64), None, TrainConfig(epochs=1, precision="fp16"), progress=False)


# ----------------------------------------------------------------- mutants
class TrustsTheSearch(PGD):
    """Decides early stop on the low-precision logits, unconfirmed."""

    def confirm(self, x_adv, logits, y):
        return self.is_success(logits, y)


class NoCastBack(PGD):
    """Reports logits taken inside the search's autocast."""

    def run(self, x, y, **kwargs):
        result = super().run(x, y, **kwargs)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            result.logits = self.model(result.x_adv).float()
        return result


def test_the_checks_catch_an_unconfirmed_early_stop(trained_cnn, batch):
    x, y = batch
    attack = TrustsTheSearch(coarse(trained_cnn), eps=0.15, alpha=0.01, steps=40, early_stop=True,
                             precision="bf16")
    result = attack.run(x, y)
    stopped = result.steps < attack.steps
    assert not result.success[stopped].all()  # what test_early_stop_... would catch


def test_the_checks_catch_low_precision_logits(trained_cnn, batch):
    x, y = batch
    result = NoCastBack(trained_cnn, eps=0.15, steps=10).run(x, y)
    with torch.no_grad():
        exact = trained_cnn(result.x_adv)
    assert not torch.equal(result.logits, exact)


def test_auto_on_this_machine_is_what_the_hardware_says():
    assert resolve("auto", "cpu") == ("bf16" if fast_bf16("cpu") else "fp32")
