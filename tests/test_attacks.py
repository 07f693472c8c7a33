"""The contract of every attack: the invariants each must hold (the model, its modes and the
inputs left as they were, bounds, seeds), its strength on real MNIST, clear errors on bad
hyperparameters and inputs, and hostile models (infinite gradients, NaN logits, no logits)."""

import copy
import inspect
import json
import math
import warnings

import pytest
import torch
from conftest import Binarized, Boom, Counting, FailsOnCall, Linear, success_rate
from torch import nn

from advx import APGD, ATTACKS, CW, FGSM, MIFGSM, PGD, DeepFool, HopSkipJump, Square
from advx.attacks.registry import abilities, attack_class, build_attack
from advx.norms import get_norm
from advx.norms.l0 import Searched

CASES = [
    (attack, norm, targeted)
    for attack in ("fgsm", "pgd")
    for norm in ("inf", "2")
    for targeted in (False, True)
]
EPS = {"inf": 0.3, "2": 2.0, "1": 10.0, "0": 10.0, "patch": 6.0, "frame": 2.0}  # L0, patch, frame: whole pixels


def make(name, model, norm, targeted, **kw):
    if name == "fgsm":
        return FGSM(model, eps=EPS[norm], norm=norm, targeted=targeted, **kw)
    return PGD(model, eps=EPS[norm], norm=norm, targeted=targeted, steps=10, **kw)


def goal(y, targeted):
    return (y + 1) % 10 if targeted else y


@pytest.mark.parametrize("name,norm,targeted", CASES)
def test_invariants(name, norm, targeted, bn_model, batch):
    x, y = batch[0][:32], goal(batch[1][:32], targeted)
    model = bn_model  # in train mode, with BatchNorm running stats and Dropout
    flags = [p.requires_grad for p in model.parameters()]
    state = copy.deepcopy(model.state_dict())
    x_copy, y_copy = x.clone(), y.clone()

    result = make(name, model, norm, targeted).run(x, y)

    size = get_norm(norm).size(result.x_adv - x)
    assert (size <= EPS[norm] + 1e-6).all()
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert size.max() > EPS[norm] / 2  # it moved: a no-op attack fails here
    assert result.x_adv.shape == x.shape and result.x_adv.dtype == x.dtype
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k  # BN running stats included
    assert all(p.grad is None for p in model.parameters())
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    assert not x.requires_grad and x.grad is None


@pytest.mark.parametrize("name,norm,targeted", CASES)
def test_modes_restored_when_the_model_raises_mid_attack(name, norm, targeted, bn_model, batch):
    model = FailsOnCall(bn_model, n=3)
    model.unused_frozen_layer = nn.Linear(2, 2).requires_grad_(False)  # user froze it: stays frozen
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(Boom):
        make(name, model, norm, targeted).run(batch[0][:8], goal(batch[1][:8], targeted))
    assert model.calls == 3
    assert model.training and model.model[1].training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert any(flags) and not all(flags)


@pytest.mark.parametrize("name,norm,targeted", CASES)
def test_same_seed_same_result(name, norm, targeted, trained_cnn, batch):
    x, y = batch[0][:32], goal(batch[1][:32], targeted)
    a = make(name, trained_cnn, norm, targeted, seed=7)(x, y)
    b = make(name, trained_cnn, norm, targeted, seed=7)(x, y)
    assert torch.equal(a, b)


def test_different_seed_different_random_start(trained_cnn, batch):
    x, y = batch[0][:16], batch[1][:16]
    a = PGD(trained_cnn, eps=0.3, steps=2, seed=1)(x, y)
    b = PGD(trained_cnn, eps=0.3, steps=2, seed=2)(x, y)
    assert not torch.equal(a, b)


def test_global_rng_is_untouched(trained_cnn, batch):
    state = torch.get_rng_state()
    PGD(trained_cnn, eps=0.3, steps=2, restarts=2)(batch[0][:16], batch[1][:16])
    assert torch.equal(torch.get_rng_state(), state)


def test_hyperparameters_are_not_mutated(trained_cnn, batch):
    atk = PGD(trained_cnn, eps=0.3, alpha=0.01, steps=5, restarts=2, early_stop=True)
    before = atk.config()
    atk(batch[0][:16], batch[1][:16])
    assert atk.config() == before


# ----------------------- MI-FGSM, APGD, CW, DeepFool, Square: the same contract
# Small configurations, so that the invariants run in a blink on any model.
SMALL = {
    "mifgsm": lambda m, **kw: MIFGSM(m, eps=0.3, steps=5, **kw),
    "mifgsm-l2": lambda m, **kw: MIFGSM(m, eps=2.0, norm="2", steps=5, **kw),
    "apgd-ce": lambda m, **kw: APGD(m, eps=0.3, steps=10, **kw),
    "apgd-dlr": lambda m, **kw: APGD(m, eps=0.3, steps=10, loss="dlr", **kw),
    "apgd-t": lambda m, **kw: APGD(m, eps=0.3, steps=5, loss="dlr-targeted", n_target_classes=2, **kw),
    "apgd-l2": lambda m, **kw: APGD(m, eps=2.0, norm="2", steps=10, restarts=2, **kw),
    "cw": lambda m, **kw: CW(m, steps=10, binary_search_steps=2, **kw),
    "deepfool": lambda m, **kw: DeepFool(m, steps=5, **kw),
    "deepfool-inf": lambda m, **kw: DeepFool(m, norm="inf", steps=5, **kw),
    "square": lambda m, **kw: Square(m, eps=0.3, queries=40, **kw),
}
RANDOMISED = ["apgd-ce", "apgd-l2", "square"]


@pytest.mark.parametrize("name", sorted(SMALL))
def test_invariants_of_the_strong_attacks(name, bn_model, batch):
    x, y = batch[0][:16], batch[1][:16]
    model = bn_model  # train mode, BatchNorm running stats, Dropout
    flags = [p.requires_grad for p in model.parameters()]
    state = copy.deepcopy(model.state_dict())
    x_copy, y_copy, rng = x.clone(), y.clone(), torch.get_rng_state()

    attack = SMALL[name](model)
    result = attack.run(x, y)

    delta = result.x_adv - x
    assert attack.norm.size(delta).max().item() <= attack.budget(x) + 1e-6
    assert result.x_adv.min().item() >= -1e-6 and result.x_adv.max().item() <= 1 + 1e-6
    after = model.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert all(p.grad is None for p in model.parameters())
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(x, x_copy) and torch.equal(y, y_copy)
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG is never used
    assert result.steps.dtype == torch.long and result.steps.shape == (16,)
    json.dumps(attack.config())  # plain values only (reports write it)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_model_restored_when_it_raises(name, bn_model, batch):
    model = FailsOnCall(bn_model, n=3)
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(Boom):
        SMALL[name](model).run(batch[0][:8], batch[1][:8])
    assert model.training and all(m.training for m in model.modules())
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("name", sorted(SMALL))
def test_no_input_gradient_is_survived_not_a_crash(name, trained_cnn, batch):
    x, y = batch
    model = Binarized(trained_cnn)
    result = SMALL[name](model).run(x[:8], y[:8])  # raised in autograd.grad before the fix
    assert torch.isfinite(result.x_adv).all() and result.x_adv.min() >= 0 and result.x_adv.max() <= 1


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_seed_same_result_of_the_strong_attacks(name, trained_cnn, batch):
    x, y = batch[0][:16], batch[1][:16]
    first = SMALL[name](trained_cnn, seed=3)(x, y)
    assert torch.equal(first, SMALL[name](trained_cnn, seed=3)(x, y))
    if name in RANDOMISED:  # the seed does reach the random start / the random search
        assert not torch.equal(first, SMALL[name](trained_cnn, seed=4)(x, y))


@pytest.mark.parametrize("make,message", [
    (lambda m: MIFGSM(m, steps=0), "steps must be >= 1, got 0"),
    (lambda m: MIFGSM(m, decay=-1.0), "decay must be >= 0, got -1.0"),
    (lambda m: APGD(m, loss="hinge"), "loss must be one of 'ce', 'dlr', 'dlr-targeted', got 'hinge'"),
    (lambda m: APGD(m, loss="dlr", targeted=True), "targeted must be False: APGD with loss='dlr' is an untargeted"),
    (lambda m: APGD(m, rho=1.5), "rho must be in [0, 1], got 1.5"),
    (lambda m: APGD(m, n_target_classes=0), "n_target_classes must be >= 1, got 0"),
    (lambda m: CW(m, norm="inf"), "norm must be '2' for CW, got 'inf'"),
    (lambda m: CW(m, lr=0), "lr must be > 0, got 0"),
    (lambda m: DeepFool(m, targeted=True), "targeted must be False: DeepFool is an untargeted attack"),
    (lambda m: HopSkipJump(m, norm="1"), "norm must be 'inf' or '2' for HopSkipJump, got '1'"),
    (lambda m: Square(m, p_init=2.0), "p_init must be in (0, 1], got 2.0"),
])
def test_bad_hyperparameters_of_the_strong_attacks(make, message, bn_model):
    with pytest.raises(ValueError) as err:
        make(bn_model)
    assert message in str(err.value)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_registered_for_the_cli(name, bn_model):
    from advx.attacks.registry import abilities, attack_class

    accepted = inspect.signature(ATTACKS[name]).parameters
    assert {"eps", "norm", "targeted", "seed"} <= set(accepted)
    declared = attack_class(name)
    assert accepted["norm"].default in abilities(name).norms  # its default norm is one it declares
    for norm in declared.norms:
        eps = 3.0 if isinstance(get_norm(norm), Searched) else 0.3  # L0, patch: a whole number of pixels
        attack = ATTACKS[name](bn_model, eps=eps, norm=norm, targeted=False, seed=0)
        assert attack.norm.name == norm
    for norm in [n for n in ("inf", "2", "0") if n not in declared.norms]:  # the others are refused
        with pytest.raises(ValueError, match=f"norm must be .* for {declared.__name__}"):
            ATTACKS[name](bn_model, eps=0.3, norm=norm)


def test_every_minimum_norm_attack_declares_itself():
    declared = {name for name in ATTACKS if abilities(name).minimum_norm}
    assert declared == {"cw", "deepfool", "fab", "fab-t", "fmn", "hsj", "sigma-zero"}


# ------------------------------------------------------- strength on real MNIST
UNTARGETED = {
    "mifgsm": lambda m: MIFGSM(m, eps=0.3, steps=10),
    "apgd-ce": lambda m: APGD(m, eps=0.3, steps=20),
    "apgd-dlr": lambda m: APGD(m, eps=0.3, steps=20, loss="dlr"),
    "apgd-t": lambda m: APGD(m, eps=0.3, steps=10, loss="dlr-targeted", n_target_classes=3),
    "apgd-l2": lambda m: APGD(m, eps=3.0, norm="2", steps=20),
    "cw": lambda m: CW(m, steps=50, binary_search_steps=5),
    "deepfool": lambda m: DeepFool(m),
    "deepfool-inf": lambda m: DeepFool(m, norm="inf"),
    "square": lambda m: Square(m, eps=0.3, queries=300),
}
TARGETED = {
    "mifgsm": lambda m: MIFGSM(m, eps=0.3, steps=20, alpha=0.03, targeted=True),
    "apgd-ce": lambda m: APGD(m, eps=0.3, steps=20, targeted=True),
    "apgd-dlr-targeted": lambda m: APGD(m, eps=0.3, steps=20, loss="dlr-targeted", targeted=True),
    "cw": lambda m: CW(m, steps=50, binary_search_steps=5, targeted=True),
    "square": lambda m: Square(m, eps=0.3, queries=1000, targeted=True),
}


@pytest.mark.parametrize("name", sorted(UNTARGETED))
def test_untargeted_success(name, trained_cnn, batch):
    x, y = batch[0][:100], batch[1][:100]
    assert success_rate(UNTARGETED[name](trained_cnn), trained_cnn, x, y, y) >= 0.95


@pytest.mark.parametrize("name", sorted(TARGETED))
def test_targeted_reaches_target(name, trained_cnn, batch):
    x, y = batch[0][:100], batch[1][:100]
    target = (y + 1) % 10
    assert success_rate(TARGETED[name](trained_cnn), trained_cnn, x, y, target) >= 0.95


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs,message", [
    (dict(eps=-0.1), "eps must be >= 0, got -0.1"),
    (dict(eps=math.nan), "eps must be a finite number, got nan"),
    (dict(eps=math.inf), "eps must be a finite number, got inf"),
    (dict(alpha=0.0), "alpha must be > 0, got 0.0"),
    (dict(steps=0), "steps must be >= 1, got 0"),
    (dict(steps=2.5), "steps must be an integer, got 2.5"),
    (dict(restarts=0), "restarts must be >= 1, got 0"),
    (dict(norm="3"), "norm must be one of 'inf', '2', '1', '0', 'patch', 'frame' (or a Norm object), got '3'"),
    (dict(bounds=(1, 0)), "bounds must have low < high, got (1, 0)"),
])
def test_bad_hyperparameters(kwargs, message, trained_cnn):
    with pytest.raises(ValueError) as info:
        PGD(trained_cnn, **{"eps": 0.3, **kwargs})
    assert str(info.value) == message


@pytest.mark.parametrize("make_input,message", [
    (lambda x, y: (x[0], y), "x must be 4-D [N, C, H, W], got shape (1, 28, 28)"),
    (lambda x, y: ((x * 255).to(torch.uint8), y), "x must be a floating-point tensor, got dtype torch.uint8"),
    (lambda x, y: (x.index_fill(0, torch.tensor([1]), math.nan), y), "x must be finite, got 784 NaN/inf values"),
    (lambda x, y: (x * 255, y), "x must lie within bounds (0.0, 1.0), got values in [0, 255]"),
    (lambda x, y: (x, y[:3]), "y must be 1-D with one label per image (4), got shape (3,)"),
    (lambda x, y: (x, y.float()), "y must hold integer class labels, got dtype torch.float32"),
    (lambda x, y: (x, y + 10), "y must hold labels in [0, 9] for this model, got values in [10, 17]"),
    (lambda x, y: (x, y - 10), "y must hold labels in [0, 9] for this model, got values in [-10, -3]"),
])
@pytest.mark.parametrize("attack", [FGSM, PGD])
def test_bad_inputs(make_input, message, attack, trained_cnn, batch):
    x, y = make_input(batch[0][:4].clone(), batch[1][:4].clone())
    with pytest.raises(ValueError) as info:
        attack(trained_cnn, eps=0.3)(x, y)
    assert str(info.value) == message


def test_bad_types(trained_cnn, batch):
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        FGSM(trained_cnn)([[0.0]], batch[1][:1])
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got function"):
        FGSM(lambda x: x)


# ------------------------------------------- every registered attack, hostile cases
# Small budgets so that every attack runs in a blink.
FAST = dict(steps=5, queries=30, binary_search_steps=2, n_target_classes=2)


def every_attack_and_norm():
    return [(name, norm) for name in sorted(ATTACKS) for norm in attack_class(name).norms]


class SqrtModel(nn.Module):
    """forward(x) = net(sqrt(x)): the input gradient is infinite wherever a pixel is 0."""

    def __init__(self):
        super().__init__()
        self.net = Linear()

    def forward(self, x):
        return self.net(x.sqrt())


@pytest.mark.parametrize("name,norm", every_attack_and_norm())
def test_infinite_input_gradients_never_give_nan_images(name, norm, batch):
    # Before the fix, L2 FGSM/PGD/MI-FGSM/APGD and DeepFool returned NaN images that counted
    # as successes (success 0.88, norm NaN).
    x, y = batch[0][:16], batch[1][:16]
    model = SqrtModel()
    attack = build_attack(name, model, strict=False, eps=EPS[norm], norm=norm, **FAST)
    result = attack.run(x, y)
    assert torch.isfinite(result.x_adv).all()
    assert torch.isfinite(result.distance).all()
    assert (result.distance <= attack.eps + 1e-5).all()
    with torch.no_grad():
        logits = model(result.x_adv)
    assert torch.equal(result.success, torch.isfinite(logits).all(1) & (logits.argmax(1) != y))


def test_non_finite_gradient_is_sanitised_to_its_limit_direction():
    from advx.attacks.gradients import finite_gradient

    grad = torch.tensor([[[[1.0, math.inf, 2.0, -math.inf]]], [[[1.0, math.nan, -3.0, 0.5]]]])
    clean = finite_gradient(grad)
    assert torch.equal(clean[0], torch.tensor([[[0.0, 1.0, 0.0, -1.0]]]))  # the infinite entries dominate
    assert torch.equal(clean[1], torch.tensor([[[1.0, 0.0, -3.0, 0.5]]]))  # NaN carries no direction
    finite = torch.randn(2, 1, 2, 2)
    assert finite_gradient(finite) is finite


class NaNAboveModel(nn.Module):
    """Finite logits while every pixel is <= 0.6; NaN logits for an image with a brighter pixel."""

    def __init__(self):
        super().__init__()
        self.net = Linear()

    def forward(self, x):
        z = self.net(x)
        bright = x.flatten(1).amax(1, keepdim=True) > 0.6
        return torch.where(bright, torch.full_like(z, math.nan), z)


@pytest.mark.parametrize("name,norm", every_attack_and_norm())
def test_non_finite_logits_are_never_counted_as_fooled(name, norm, batch):
    x, y = batch[0][:16] * 0.5, batch[1][:16]  # clean images: every pixel <= 0.5
    model = NaNAboveModel()
    attack = build_attack(name, model, strict=False, eps=EPS[norm], norm=norm, **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        result = attack.run(x, y)
    nan_rows = ~torch.isfinite(result.logits).all(1)
    assert not result.success[nan_rows].any()  # argmax of a NaN row used to count as "fooled"
    assert torch.isfinite(result.x_adv).all()


def test_non_finite_logits_on_adversarial_images_are_reported(batch):
    x, y = batch[0][:8] * 0.5, batch[1][:8]
    with pytest.warns(RuntimeWarning, match="not finite .* do not count as fooled"):
        result = FGSM(NaNAboveModel(), eps=0.3).run(x, y)
    assert not result.success.any()


def test_non_finite_logits_on_clean_images_are_an_error(batch):
    x, y = batch[0][:4], batch[1][:4]  # MNIST digits reach 1.0: NaN logits already on the clean images
    with pytest.raises(ValueError, match=r"model returned logits that are not finite \(NaN/inf\) on the clean"):
        PGD(NaNAboveModel(), eps=0.1).run(x, y)


@pytest.mark.parametrize("name,norm", every_attack_and_norm())
def test_eps_zero_returns_the_clean_images(name, norm, trained_cnn, batch):
    x, y = batch[0][:8], batch[1][:8]
    attack = build_attack(name, trained_cnn, strict=False, eps=0.0, norm=norm, **FAST)  # PGD raised here
    result = attack.run(x, y)
    assert torch.equal(result.x_adv, x)
    assert (result.distance == 0).all() and (result.steps == 0).all()
    with torch.no_grad():
        assert torch.equal(result.success, trained_cnn(x).argmax(1) != y)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.uint8])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_labels_of_any_integer_dtype(name, dtype, trained_cnn, batch):
    # int32/int16/uint8 labels passed validation, then crashed inside torch (cross_entropy, gather).
    x, y = batch[0][:8], batch[1][:8]
    norm = attack_class(name).norms[0]
    make = lambda: build_attack(name, trained_cnn, strict=False, eps=EPS[norm], norm=norm, **FAST)  # noqa: E731
    expected = make().run(x, y)
    got = make().run(x, y.to(dtype))
    assert torch.equal(got.x_adv, expected.x_adv) and torch.equal(got.success, expected.success)


class TupleOut(nn.Module):
    def forward(self, x):
        return Linear()(x), None


class DictOut(nn.Module):
    def forward(self, x):
        return {"logits": x.flatten(1)[:, :10]}


class Rank3Out(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :10].unsqueeze(1)


class OneClass(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :1]


class IntOut(nn.Module):
    def forward(self, x):
        return (x.flatten(1)[:, :10] * 10).long()


@pytest.mark.parametrize("model,error,message", [
    (TupleOut(), TypeError, "model must return a logits tensor [N, num_classes], got tuple"),
    (DictOut(), TypeError, "model must return a logits tensor [N, num_classes], got dict"),
    (Rank3Out(), ValueError, "model must return logits [N, num_classes] with one row per image, got shape [1, 1, 10] for 1 image(s)"),
    (OneClass(), ValueError, "model must return logits for at least 2 classes, got shape [1, 1]"),
    (IntOut(), ValueError, "model must return floating-point logits, got dtype torch.int64"),
])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_models_that_do_not_return_logits(name, model, error, message, batch):
    norm = attack_class(name).norms[0]
    attack = build_attack(name, model, strict=False, eps=EPS[norm], norm=norm, **FAST)
    with pytest.raises(error) as info:
        attack.run(batch[0][:4], torch.zeros(4, dtype=torch.long))
    assert str(info.value) == message


def test_lazy_model_that_is_not_ready(batch):
    model = nn.Sequential(nn.Flatten(), nn.LazyLinear(10))
    with pytest.raises(ValueError, match="lazy modules whose weights are not initialised yet.*run one forward pass"):
        PGD(model, eps=0.1).run(batch[0][:4], batch[1][:4])
    model(batch[0][:1])  # now it is ready
    assert PGD(model, eps=0.1, steps=2).run(batch[0][:4], batch[1][:4]).x_adv.shape == (4, 1, 28, 28)


@pytest.mark.parametrize("x_dtype,model_dtype", [
    (torch.float64, torch.float32), (torch.float16, torch.float32), (torch.float32, torch.float64),
])
def test_dtype_mismatch_between_images_and_model(x_dtype, model_dtype, batch):
    model = Linear().to(model_dtype)
    with pytest.raises(ValueError) as info:
        PGD(model, eps=0.1).run(batch[0][:4].to(x_dtype), batch[1][:4])
    assert str(info.value).startswith(f"x has dtype {x_dtype} but the model's weights are {model_dtype}")


def test_a_float64_model_on_float64_images_works(batch):
    model = Linear().double()
    x = batch[0][:8].double()
    result = PGD(model, eps=0.1, steps=3).run(x, batch[1][:8])
    assert result.x_adv.dtype == torch.float64 and (result.distance <= 0.1 + 1e-12).all()


def test_numbers_of_other_numeric_types(trained_cnn, batch):
    import numpy as np

    x, y = batch[0][:8], batch[1][:8]
    reference = PGD(trained_cnn, eps=0.1, steps=3, alpha=0.05, seed=1)(x, y)
    for kind in (np.float32, np.float64, lambda v: torch.tensor(v)):
        attack = PGD(trained_cnn, eps=kind(0.1), steps=np.int64(3), alpha=kind(0.05), seed=np.int32(1))
        assert type(attack.eps) is float and type(attack.steps) is int and type(attack.seed) is int
        assert torch.allclose(attack(x, y), reference)
    assert PGD(trained_cnn, eps=0.1, norm=2.0).norm.name == "2"
    assert PGD(trained_cnn, eps=0.1, norm=np.inf).norm.name == "inf"


@pytest.mark.parametrize("kwargs,message", [
    (dict(seed=2**64), "seed must be <= 9223372036854775807, got 18446744073709551616"),
    (dict(seed=-1), "seed must be >= 0, got -1"),
    (dict(norm=2.5), "norm must be one of 'inf', '2', '1', '0', 'patch', 'frame' (or a Norm object), got 2.5"),
    (dict(norm=float("nan")), "norm must be one of 'inf', '2', '1', '0', 'patch', 'frame' (or a Norm object), got nan"),
    (dict(steps=torch.tensor([1, 2])), "steps must be an integer, got tensor([1, 2])"),
    (dict(targeted="yes"), "targeted must be True or False, got 'yes'"),
])
def test_numbers_out_of_range_for_their_use(kwargs, message, trained_cnn):
    with pytest.raises(ValueError) as info:
        PGD(trained_cnn, **{"eps": 0.3, **kwargs})
    assert str(info.value) == message


def test_calling_an_attack_skips_the_forward_that_run_spends_on_the_result(trained_cnn, batch):
    """``attack(x, y)`` (what adversarial training calls) returns the same images as
    ``run`` without the final forward pass over them."""
    x, y = batch[0][:32], batch[1][:32]
    counted = {}
    for how in ("call", "run"):
        model = Counting(trained_cnn)
        attack = PGD(model, eps=0.2, steps=3)
        x_adv = attack(x, y) if how == "call" else attack.run(x, y).x_adv
        counted[how] = (model.images, x_adv)
    assert torch.equal(counted["call"][1], counted["run"][1])
    assert counted["run"][0] - counted["call"][0] == len(x)
