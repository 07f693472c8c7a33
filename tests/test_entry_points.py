"""Every public entry point that takes images and labels (each registered attack, ``run_attack``,
``evaluate``, ``certify``, a ``Certifier``, their sharded forms, ``accuracy``) treats them
alike, and leaves alike:

1. the same bad input gets the same one-line error, word for word: the one
   ``advx.validate.check_batch`` gives (labels out of the model's range included);
   (``accuracy`` takes any pixel range: the model's own inputs);
2. labels of any integer dtype give the result of int64 labels;
3. every submodule's own ``training`` flag, every parameter's ``requires_grad``, the
   weights and buffers, the global RNG state, the environment, ``sys.path`` and torch's
   global switches (grad mode, default dtype, autocast, determinism, threads) come back as
   they were,
   on a model in training mode that holds a BatchNorm in eval mode and a frozen parameter.
"""

from __future__ import annotations

import math
import os
import sys

import pytest
import torch
from torch import nn

import advx
from advx import ATTACKS
from advx.attacks.registry import attack_class, build_attack
from advx.certify import Certifier
from advx.dataset_attack import run_attack
from advx.eval_config import EvalConfig
from advx.evaluate import evaluate
from advx.modes import accuracy
from advx.sharded import certify_sharded, evaluate_sharded, run_attack_sharded
from advx.validate import AdvxError, check_batch

BUDGET = dict(steps=2, queries=10, binary_search_steps=2, n_target_classes=2, restarts=1)
SHAPE = (1, 8, 8)


def mixed_model() -> nn.Module:
    """Training mode, except one BatchNorm in eval mode; one parameter frozen."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                              nn.Linear(3 * 6 * 6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
        for bn in (model[1], model[5]):  # running statistics of a trained model
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    model.train()
    model[5].eval()
    model[4].bias.requires_grad_(False)
    return model


def images(n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, *SHAPE, generator=g), torch.randint(0, 10, (n,), generator=g)


def _attack(name):
    def call(model, x, y):
        eps = 2.0 if attack_class(name).norms[0] == "0" else 0.1  # L0: a whole number of pixels
        return build_attack(name, model, eps=eps, seed=0, strict=False, **BUDGET).run(x, y).x_adv
    return call


def _run_attack(model, x, y):
    return run_attack(build_attack("pgd", model, eps=0.1, steps=2, seed=0), x, y, progress=False).success


def _evaluate(model, x, y):
    ev = evaluate(model, x, y, attacks=["fgsm", "pgd"], eps=[0.05], steps=2, progress=False, certify="ibp")
    return ev.records["robust"]


def _certify(model, x, y):
    return advx.certify(model, x, y, eps=0.05, method="crown").margins


def _certifier(model, x, y):
    return Certifier(model, SHAPE, method="crown-ibp")(x, y, eps=0.05).margins


def _evaluate_sharded(model, x, y):
    config = EvalConfig(attacks=["fgsm"], eps=[0.05], progress=False, checks=False)
    return evaluate_sharded(model, x, y, config).records["robust"]


def _run_attack_sharded(model, x, y):
    return run_attack_sharded(build_attack("fgsm", model, eps=0.1, seed=0), x, y, progress=False).success


def _certify_sharded(model, x, y):
    return certify_sharded(model, x, y, [0.05], method="ibp", norm="inf", progress=False).lower[0.05]


def _accuracy(model, x, y):
    return torch.tensor(accuracy(model, x, y))


ENTRY_POINTS = {**{f"attack:{name}": _attack(name) for name in sorted(ATTACKS)},
                "run_attack": _run_attack, "evaluate": _evaluate, "certify": _certify, "Certifier": _certifier,
                "evaluate_sharded": _evaluate_sharded, "run_attack_sharded": _run_attack_sharded,
                "certify_sharded": _certify_sharded, "accuracy": _accuracy}


def _nan(x, y):
    x = x.clone()
    x[1, 0, 2, 2] = math.nan
    return x, y


BAD_INPUTS = {
    "labels out of range": lambda x, y: (x, y + 10),
    "negative labels": lambda x, y: (x, y - 10),
    "float labels": lambda x, y: (x, y.float()),
    "bool labels": lambda x, y: (x, y > 4),
    "labels of another length": lambda x, y: (x, y[:3]),
    "2-D labels": lambda x, y: (x, y[:, None]),
    "labels not a tensor": lambda x, y: (x, y.tolist()),
    "an empty batch": lambda x, y: (x[:0], y[:0]),
    "a NaN pixel": _nan,
    "an inf pixel": lambda x, y: (x.index_fill(0, torch.tensor([0]), math.inf), y),
    "pixels out of bounds": lambda x, y: (x * 255, y),
    "integer images": lambda x, y: ((x * 255).to(torch.uint8), y),
    "images not a tensor": lambda x, y: (x.tolist(), y),
}


def _expected_message(x, y) -> str:
    with pytest.raises((ValueError, TypeError)) as info:
        check_batch(x, y, num_classes=10)
    return str(info.value)


@pytest.mark.parametrize("bad", sorted(BAD_INPUTS))
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_bad_input_gets_the_same_error_everywhere(entry, bad):
    model = mixed_model().eval()
    x, y = BAD_INPUTS[bad](*images())
    if entry == "accuracy" and bad == "pixels out of bounds":
        assert 0 <= ENTRY_POINTS[entry](model, x, y) <= 1  # accuracy takes the model's inputs in any range
        return
    expected = _expected_message(x, y)
    with pytest.raises((ValueError, TypeError)) as info:
        ENTRY_POINTS[entry](model, x, y)
    assert str(info.value) == expected
    assert isinstance(info.value, AdvxError)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_labels_of_any_integer_dtype_give_the_result_of_int64(entry):
    model = mixed_model().eval()
    x, y = images()
    reference = ENTRY_POINTS[entry](model, x, y)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        assert torch.equal(ENTRY_POINTS[entry](model, x, y.to(dtype)), reference), dtype


def _state(model: nn.Module) -> dict:
    return {"modes": [(name, m.training) for name, m in model.named_modules()],
            "flags": [(name, p.requires_grad) for name, p in model.named_parameters()],
            "tensors": {k: v.clone() for k, v in model.state_dict().items()},
            "rng": torch.get_rng_state(), "environment": dict(os.environ), "path": list(sys.path),
            "torch": (torch.is_grad_enabled(), torch.get_default_dtype(), torch.is_autocast_enabled("cpu"),
                      torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
def test_every_mode_flag_weight_and_the_global_rng_come_back(entry):
    model = mixed_model()
    x, y = images()
    x0, y0 = x.clone(), y.clone()
    torch.manual_seed(123)
    before = _state(model)
    ENTRY_POINTS[entry](model, x, y)
    after = _state(model)
    assert after["modes"] == before["modes"] and after["flags"] == before["flags"]
    assert all(torch.equal(after["tensors"][k], v) for k, v in before["tensors"].items())
    assert torch.equal(after["rng"], before["rng"]) and after["environment"] == before["environment"]
    assert after["path"] == before["path"] and after["torch"] == before["torch"]
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(x, x0) and torch.equal(y, y0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_a_model_in_float64_or_bfloat16_is_certified_in_fp32(dtype):
    """The bounds are those of the network its weights define (bf16 weights are exact in fp32)."""
    x, y = images()
    other = mixed_model().eval().to(dtype)
    same = mixed_model().eval()
    same.load_state_dict({k: v.to(dtype).float() for k, v in other.state_dict().items()})
    found = advx.certify(other, x, y, eps=0.05, method="crown").margins
    expected = advx.certify(same, x, y, eps=0.05, method="crown").margins
    assert found.dtype == torch.float32
    tolerance = 0 if dtype == torch.bfloat16 else 1e-4
    assert torch.allclose(found, expected, atol=tolerance, rtol=tolerance)


def test_run_attack_names_a_bad_target_as_the_target():
    model, (x, y) = mixed_model().eval(), images()
    attack = build_attack("pgd", model, eps=0.1, steps=2, targeted=True)
    for target, message in ((y.float(), "target must hold integer class labels, got dtype torch.float32"),
                            (y[:2], r"target must be 1-D with one label per image \(6\), got shape \(2,\)"),
                            (y.tolist(), "target must be a torch.Tensor of labels")):
        with pytest.raises((ValueError, TypeError), match=message):
            run_attack(attack, x, y, target=target, progress=False)


def test_odd_settings_are_one_clear_error_or_taken_as_meant():
    model, (x, y) = mixed_model().eval(), images()
    with pytest.raises(ValueError, match=r"bounds must be a pair \(low, high\), got \(0, 1, 2\)"):
        advx.certify(model, x, y, eps=0.1, bounds=(0, 1, 2))
    with pytest.raises(ValueError, match=r"input_shape must be one input's shape, e.g. \(1, 28, 28\), got 'abc'"):
        Certifier(model, "abc")
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        accuracy(model, x, y, batch_size=0)
    one = evaluate(model, x, y, attacks="fgsm", eps=[0.05], progress=False, checks=False)  # one name: one attack
    assert one.attacks == ["fgsm"]
