"""MI-FGSM, APGD, CW, DeepFool, Square: base invariants, closed-form cases, strength on real MNIST."""

import copy
import inspect
import json

import pytest
import torch
from conftest import Binarized, Boom, FailsOnCall
from torch import nn

from advx import APGD, ATTACKS, CW, MIFGSM, DeepFool, Square
from advx.attacks.apgd import step_checkpoints
from advx.attacks.objectives import dlr_loss
from advx.modes import frozen

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


def success_rate(attack, model, x, y, goal):
    """Success on the samples the model gets right (and, targeted, whose label is not the goal)."""
    with torch.no_grad():
        eligible = (model(x).argmax(1) == y) & (goal != y if attack.targeted else True)
    return attack.run(x, goal).success[eligible].float().mean().item()


# ------------------------------------------------------------------- invariants
@pytest.mark.parametrize("name", sorted(SMALL))
def test_invariants(name, bn_model, batch):
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
def test_same_seed_same_result(name, trained_cnn, batch):
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
    (lambda m: Square(m, norm="2"), "norm must be 'inf' for Square"),
    (lambda m: Square(m, p_init=2.0), "p_init must be in (0, 1], got 2.0"),
])
def test_bad_hyperparameters(make, message, bn_model):
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
        attack = ATTACKS[name](bn_model, eps=0.3, norm=norm, targeted=False, seed=0)
        assert attack.norm.name == norm
    for norm in [n for n in ("inf", "2") if n not in declared.norms]:  # the others are refused
        with pytest.raises(ValueError, match=f"norm must be .* for {declared.__name__}"):
            ATTACKS[name](bn_model, eps=0.3, norm=norm)


# ------------------------------------------------------ strength on real MNIST
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


# ----------------------------------------------------------------------- MI-FGSM
def test_mifgsm_one_step_is_fgsm(trained_cnn, batch):
    x, y = batch[0][:32], batch[1][:32]
    attack = MIFGSM(trained_cnn, eps=0.1, steps=1)
    with frozen(trained_cnn):
        grad, _, _ = attack.gradient(x, y)
    assert torch.allclose(attack(x, y), (x + 0.1 * grad.sign()).clamp(0, 1))


# -------------------------------------------------------------------------- APGD
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


# ---------------------------------------------------------------------------- CW
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


# ---------------------------------------------------------------------- DeepFool
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


# ------------------------------------------------------------------------ Square
class RaiseInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        raise Boom("Square must not take gradients")


class ScoresOnly(nn.Module):
    """Forwards to ``model``; records whether autograd was on; any backward raises."""

    def __init__(self, model):
        super().__init__()
        self.model, self.grad_enabled = model, []

    def forward(self, x):
        self.grad_enabled.append(torch.is_grad_enabled())
        return self.model(RaiseInBackward.apply(x))


class RowCounter(nn.Module):
    """Counts, per clean image, the rows the model evaluates (a row is attributed
    to the clean image within eps of it in Linf; the test checks that is unique)."""

    def __init__(self, model, x_clean, eps):
        super().__init__()
        self.model, self.x_clean, self.eps = model, x_clean, eps
        self.rows = torch.zeros(len(x_clean), dtype=torch.long)

    def forward(self, x):
        dist = (x[:, None] - self.x_clean[None]).flatten(2).abs().amax(2)  # [rows, N]
        near = dist <= self.eps + 1e-6
        assert (near.sum(1) == 1).all()
        self.rows += near.sum(0)
        return self.model(x)


def test_square_never_takes_gradients(trained_cnn, batch):
    x, y = batch[0][:100], batch[1][:100]
    model = ScoresOnly(copy.deepcopy(trained_cnn))
    assert success_rate(Square(model, eps=0.3, queries=300), trained_cnn, x, y, y) >= 0.95
    assert model.grad_enabled and not any(model.grad_enabled)


def test_square_counts_queries_exactly(trained_cnn, batch):
    x, y = batch[0][:30], batch[1][:30]
    eps = 0.1  # small: within 30 queries some samples fall, others do not
    assert ((x[:, None] - x[None]).flatten(2).abs().amax(2) + 2 * torch.eye(len(x)) > 2 * eps).all()
    idle = RowCounter(trained_cnn, x, eps)
    Square(idle, eps=0.0, queries=30).run(x, y)  # eps 0: only the forwards of the checks and the result
    model = RowCounter(trained_cnn, x, eps)
    result = Square(model, eps=eps, queries=30, restarts=2).run(x, y)
    queries, success = result.steps, result.success
    assert idle.rows.sum() > 0 and torch.equal(queries, model.rows - idle.rows)
    assert (queries[~success] == 60).all()                  # two full restarts
    assert success.any() and (~success).any() and (queries[success] < 60).all()


def test_apgd_early_stop_drops_samples_once_fooled(trained_cnn, batch):
    from advx import APGD

    x, y = batch[0][:64], batch[1][:64]
    full = APGD(trained_cnn, eps=0.3, steps=50).run(x, y)
    early = APGD(trained_cnn, eps=0.3, steps=50, early_stop=True).run(x, y)
    assert early.success.float().mean() >= full.success.float().mean() - 0.02
    assert early.success.float().mean() >= 0.95
    assert (early.steps[early.success] < 50).all() and early.steps.float().mean() < 25
    assert (full.steps == 50).all()
