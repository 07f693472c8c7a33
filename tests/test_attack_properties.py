"""Property-based tests (hypothesis): the invariants of ``advx.attacks.base`` hold for every
attack registered in ``advx.ATTACKS``, on drawn models, shapes, budgets, bounds and dtypes.

For each name in ``ATTACKS`` (so that a newly registered attack is covered without
touching this file), hypothesis draws a small random network (BatchNorm and/or Dropout,
train / eval / mixed modes, sometimes a frozen parameter), a batch inside drawn bounds
(some pixels on them), eps, a norm among the attack's ``norms``, targeted where the attack
can be, float32 or float64, and a seed; the attack is built by ``build_attack`` with tiny
budgets.
Then, for every example:

1. the result is finite, inside the eps-ball and the bounds, shaped like ``x``; eps = 0
   gives ``x`` back exactly; ``success``/``norm``/``logits`` agree with ``x_adv``;
2. weights and buffers are bit-identical, no parameter has a ``.grad``, every module's
   ``training`` and every parameter's ``requires_grad`` are as they were;
3. the caller's ``x`` and ``y`` are untouched and the global RNG state is unchanged;
4. the same seed gives the same result;
5. with one random stream per sample (``SampleRNG``), a sample's result does not depend
   on the batch it is attacked in (nor on its position there);
6. labels of any integer dtype give the result of int64 labels;
7. next to a decision boundary, every attack moves the image (a no-op attack fails here).

``test_a_broken_attack_is_caught`` runs the same checks on deliberately broken attacks
to show that each of them can fail.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from advx import ATTACKS, PGD
from advx.attacks.registry import abilities, attack_class, build_attack
from advx.norms import get_norm
from advx.norms.l0 import Searched
from advx.rng import SampleRNG, salt_of

NAMES = sorted(ATTACKS)
# Tiny budgets, so that an example runs in milliseconds; build_attack(strict=False) gives
# each attack the options it takes.
BUDGET = dict(steps=3, queries=15, binary_search_steps=2, n_target_classes=2, near_restarts=1, screen=8)
# HopSkipJump spends queries on the clean image, on random starting images (targeted, one in
# about K is of the target class) and on bisections of the paper's precision (None: its own).
# sigma-zero's first Adam step moves every pixel across the whole box (its rate starts at 1),
# and the threshold then drops small changes: it needs a few steps to settle on the boundary.
BUDGETS = {"hsj": dict(queries=200, binary_search_steps=None), "sigma-zero": dict(steps=20)}
BOUNDS = [(0.0, 1.0), (-1.0, 1.0), (0.2, 0.7), (-3.0, 5.0)]
LABEL_DTYPES = [torch.int32, torch.int16, torch.int8, torch.uint8]
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU}

PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI is reproducible
    database=None,     # and nothing is written into the repository
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ------------------------------------------------------------------ capabilities
def min_classes(name: str) -> int:
    """What the registry declares (APGD's DLR losses read the 3rd or 4th largest logit)."""
    return abilities(name).min_classes


def searched(norm: str) -> bool:
    """A threat model of which pixels change (L0, patch): its budget is a whole number."""
    return isinstance(get_norm(norm), Searched)


def can_target(name: str) -> bool:
    """What the registry declares (APGD-DLR's loss is untargeted only)."""
    return abilities(name).targetable


# ------------------------------------------------------------------------ models
@dataclasses.dataclass(frozen=True)
class ModelSpec:
    hidden: int
    batchnorm: str          # "none", "2d" (after the conv) or "2d+1d" (also on the logits)
    dropout: bool
    activation: str
    modes: str | int        # "train", "eval", or a bit mask: module i trains iff bit i is set
    frozen: int | None      # index of a parameter given requires_grad=False
    seed: int


def build_model(spec: ModelSpec, channels: int, height: int, width: int, classes: int,
                dtype: torch.dtype) -> nn.Module:
    with torch.random.fork_rng(devices=[]):  # the global RNG is left as it was
        torch.manual_seed(spec.seed)
        layers: list[nn.Module] = [nn.Conv2d(channels, spec.hidden, 3, padding=1)]
        if spec.batchnorm != "none":
            layers.append(nn.BatchNorm2d(spec.hidden))
        layers.append(ACTIVATIONS[spec.activation]())
        if spec.dropout:
            layers.append(nn.Dropout(0.3))
        layers += [nn.Flatten(), nn.Linear(spec.hidden * height * width, classes)]
        if spec.batchnorm == "2d+1d":
            layers.append(nn.BatchNorm1d(classes))
        model = nn.Sequential(*layers)
        for m in model.modules():  # running stats and affine weights that are not the defaults
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                with torch.no_grad():
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
                m.num_batches_tracked.fill_(7)
    model = model.to(dtype)
    if spec.modes in ("train", "eval"):
        model.train(spec.modes == "train")
    else:
        for i, m in enumerate(model.modules()):
            m.training = bool(spec.modes >> i & 1)
    if spec.frozen is not None:
        params = list(model.parameters())
        params[spec.frozen % len(params)].requires_grad_(False)
    return model


@st.composite
def model_specs(draw) -> ModelSpec:
    return ModelSpec(
        hidden=draw(st.integers(1, 4)),
        batchnorm=draw(st.sampled_from(["none", "2d", "2d+1d"])),
        dropout=draw(st.booleans()),
        activation=draw(st.sampled_from(sorted(ACTIVATIONS))),
        modes=draw(st.one_of(st.sampled_from(["train", "eval"]), st.integers(1, 2**7 - 2))),
        frozen=draw(st.one_of(st.none(), st.integers(0, 7))),
        seed=draw(st.integers(0, 2**16)),
    )


# ------------------------------------------------------------------------- cases
@dataclasses.dataclass
class Case:
    name: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    eps: float
    norm: str
    bounds: tuple[float, float]
    targeted: bool
    seed: int
    restarts: int

    def attack(self, cls=None, **options):
        """The attack under test (``build_attack`` with the drawn options), or ``cls`` built
        from the same options (for the broken attacks of the last test)."""
        options = dict(eps=self.eps, norm=self.norm, bounds=self.bounds, targeted=self.targeted,
                       seed=self.seed, restarts=self.restarts, **{**BUDGET, **BUDGETS.get(self.name, {})}, **options)
        if cls is None:
            return build_attack(self.name, self.model, strict=False, **options)
        return cls(self.model, **{k: v for k, v in options.items() if k not in ("queries", "binary_search_steps",
                                                                                 "n_target_classes", "near_restarts", "screen")})

    @property
    def tol(self) -> float:
        """Float rounding in ``project``/``clip`` and in ``x_adv - x``."""
        d = self.x[0].numel()
        return 8 * torch.finfo(self.x.dtype).eps * (max(map(abs, self.bounds)) + self.eps) * math.sqrt(d)


@st.composite
def cases(draw, name: str, dtypes=(torch.float32, torch.float64), min_batch: int = 1) -> Case:
    cls = attack_class(name)
    n = draw(st.integers(min_batch, 6))
    channels, height, width = draw(st.integers(1, 3)), draw(st.integers(4, 10)), draw(st.integers(4, 10))
    classes = draw(st.integers(max(2, min_classes(name)), 10))
    dtype = draw(st.sampled_from(dtypes))
    model = build_model(draw(model_specs()), channels, height, width, classes, dtype)

    low, high = draw(st.one_of(
        st.sampled_from(BOUNDS),
        st.tuples(st.floats(-2, 1), st.floats(0.05, 3)).map(lambda t: (t[0], t[0] + t[1])),
    ))
    norm = draw(st.sampled_from(cls.norms))
    # eps in units of the box's diameter in the norm: from a tiny to a non-binding budget.
    scale = get_norm(norm).diameter((channels, height, width), (low, high))
    zero = draw(st.integers(0, 5)) == 3  # eps = 0 in about one example in six
    eps = 0.0 if zero else draw(st.floats(0.002, 1.5)) * scale
    if searched(norm) and not zero:  # L0, patch: a whole number of pixels (of side), at least one
        eps = float(max(1, round(eps)))

    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**32)))
    u = torch.rand((n, channels, height, width), generator=gen, dtype=torch.float64)
    if draw(st.booleans()):  # some pixels exactly on the bounds
        on_edge = torch.rand(u.shape, generator=gen, dtype=torch.float64) < 0.3
        u = torch.where(on_edge, u.round(), u)
    x = (low + (high - low) * u).to(dtype).clamp(low, high)
    if draw(st.booleans()):
        x.requires_grad_(True)  # the caller's leaf: it must come back without a .grad
    y = torch.randint(classes, (n,), generator=gen)
    return Case(name=name, model=model, x=x, y=y, eps=eps, norm=norm, bounds=(low, high),
                targeted=draw(st.booleans()) if can_target(name) else False,
                seed=draw(st.integers(0, 2**63 - 1)), restarts=draw(st.sampled_from([1, 2])))


# ------------------------------------------------------------------------ checks
class Snapshot:
    """Everything an attack must leave as it found it (properties 2 and 3)."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        self.state = {k: v.clone() for k, v in model.state_dict().items()}
        self.modes = [m.training for m in model.modules()]
        self.flags = [p.requires_grad for p in model.parameters()]
        self.x, self.x_requires_grad = x.detach().clone(), x.requires_grad
        self.y = y.clone()
        self.rng = torch.get_rng_state()

    def check(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        after = model.state_dict()
        assert list(after) == list(self.state)
        for key, before in self.state.items():  # BatchNorm running stats included
            assert after[key].dtype == before.dtype and torch.equal(after[key], before), f"{key} changed"
        assert all(p.grad is None for p in model.parameters()), "a parameter got a .grad"
        assert [m.training for m in model.modules()] == self.modes, "training modes not restored"
        assert [p.requires_grad for p in model.parameters()] == self.flags, "requires_grad not restored"
        assert x.dtype == self.x.dtype and torch.equal(x.detach(), self.x), "x was written to"
        assert x.requires_grad == self.x_requires_grad and x.grad is None
        assert y.dtype == self.y.dtype and torch.equal(y, self.y), "y was written to"
        assert torch.equal(torch.get_rng_state(), self.rng), "the global RNG was used"


def check_result(case: Case, attack, result) -> None:
    """Property 1, and the fields of the result agree with ``x_adv``."""
    x, x_adv, n = case.x.detach(), result.x_adv, len(case.x)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype and x_adv.device == x.device
    assert not x_adv.requires_grad
    assert torch.isfinite(x_adv).all()
    low, high = case.bounds
    assert (x_adv >= low).all() and (x_adv <= high).all(), "outside the bounds"
    size = attack.norm.size(x_adv - x)
    assert (size <= case.eps + case.tol).all(), f"outside the eps-ball: {size.max().item()} > {case.eps}"
    if case.eps == 0:
        assert torch.equal(x_adv, x), "eps = 0 must give x back"
        assert torch.equal(result.steps, torch.zeros(n, dtype=torch.long)), "eps = 0 must spend no step"

    assert result.steps.shape == (n,) and result.steps.dtype == torch.long and (result.steps >= 0).all()
    assert torch.equal(result.distance, size)
    reference = copy.deepcopy(case.model).eval()
    with torch.no_grad():
        logits = reference(x_adv)
    assert torch.equal(result.logits, logits)
    pred = logits.argmax(1)
    goal = pred == case.y if case.targeted else pred != case.y
    assert result.success.dtype == torch.bool
    assert torch.equal(result.success, goal & torch.isfinite(logits).all(1))


def assert_same(a, b) -> None:
    for field in ("x_adv", "success", "steps", "distance", "logits"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field


def check_invariants(case: Case, attack) -> None:
    """Properties 1-3 on one run."""
    snapshot = Snapshot(case.model, case.x, case.y)
    result = attack.run(case.x, case.y)
    snapshot.check(case.model, case.x, case.y)
    check_result(case, attack, result)


def check_same_seed(case: Case, make) -> None:
    """Property 4: two attacks built with one seed, one attack run twice, fresh per-sample
    streams from the same ids: the same result every time."""
    first = make().run(case.x, case.y)
    assert_same(first, make().run(case.x, case.y))
    attack = make()
    assert_same(first, attack.run(case.x, case.y))
    assert_same(first, attack.run(case.x, case.y))  # no state carried over from a call
    ids = range(len(case.x))
    a = attack.run(case.x, case.y, generator=SampleRNG.from_ids(case.seed, ids, 1))
    assert_same(a, attack.run(case.x, case.y, generator=SampleRNG.from_ids(case.seed, ids, 1)))


def check_batch_independent(case: Case, attack, ids: torch.Tensor, order: list[int], cut: int) -> None:
    """Property 5: each sample attacked with its own stream gives the same result in the
    whole batch as in a part of it (in another order). float64, so that the last bits of
    batched ops cannot decide a step: x_adv and logits agree to 1e-9, the rest exactly."""
    salt = salt_of(case.name, case.eps)
    whole = attack.run(case.x, case.y, generator=SampleRNG.from_ids(case.seed, ids, salt))
    for part in (torch.tensor(order[:cut]), torch.tensor(order[cut:])):
        res = attack.run(case.x[part], case.y[part], generator=SampleRNG.from_ids(case.seed, ids[part], salt))
        assert torch.equal(res.success, whole.success[part]), "success depends on the batch"
        assert torch.equal(res.steps, whole.steps[part]), "steps depend on the batch"
        torch.testing.assert_close(res.x_adv, whole.x_adv[part], rtol=0, atol=1e-9)
        torch.testing.assert_close(res.logits, whole.logits[part], rtol=1e-9, atol=1e-9)


def check_label_dtypes(case: Case, make) -> None:
    """Property 6: any integer dtype of the labels gives the result of int64."""
    reference = make().run(case.x, case.y)
    for dtype in LABEL_DTYPES:
        assert_same(reference, make().run(case.x, case.y.to(dtype)))


# --------------------------------------------------------------- the properties
@pytest.mark.parametrize("name", NAMES)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_invariants(name, data):
    case = data.draw(cases(name))
    check_invariants(case, case.attack())
    still = dataclasses.replace(case, eps=0.0)  # eps = 0 in every example, not only when drawn
    check_invariants(still, still.attack())


@pytest.mark.parametrize("name", NAMES)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_same_seed_same_result(name, data):
    case = data.draw(cases(name))
    check_same_seed(case, case.attack)


@pytest.mark.parametrize("name", NAMES)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_result_per_sample_does_not_depend_on_the_batch(name, data):
    case = data.draw(cases(name, dtypes=(torch.float64,), min_batch=2))
    n = len(case.x)
    ids = torch.tensor(data.draw(st.lists(st.integers(0, 10**6), min_size=n, max_size=n, unique=True)))
    order = data.draw(st.permutations(range(n)))
    cut = data.draw(st.integers(1, n - 1))
    check_batch_independent(case, case.attack(), ids, order, cut)


@pytest.mark.parametrize("name", NAMES)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_any_integer_label_dtype(name, data):
    case = data.draw(cases(name))
    check_label_dtypes(case, case.attack)


# ------------------------------------------------------------------ it moved
def near_boundary(classes: int, channels: int, height: int, width: int, bounds, dtype, seed: int, n: int,
                  one_pixel: bool = False):
    """A linear model and a batch of images that it classifies as ``y``, each within a hair
    of an image (inside the bounds) that it classifies as ``other``.

    The model is linear with ``z(c) = b`` (small) at the centre ``c`` of the box, so the
    reflection ``2c - p`` of a point ``p`` has logits ``2b - z(p)``, as a rule another label;
    bisection on the segment from ``p`` to ``2c - p`` ends next to a decision boundary
    between two classes (``b`` keeps it off the point where all the logits tie).

    ``one_pixel`` (for L0 and patches): the first pixel's weights (all its channels) are scaled up so that
    they dominate the logits, and only that pixel is reflected: the image and the one across
    the boundary differ in that pixel alone."""
    low, high = bounds
    d = channels * height * width
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, classes)).to(dtype).eval()
    centre = torch.full((1, channels, height, width), (low + high) / 2, dtype=dtype)
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(classes, d, generator=gen, dtype=torch.float64))
        if one_pixel:
            first = torch.zeros((channels, height, width), dtype=torch.bool)
            first[:, 0, 0] = True
            model[1].weight[:, first.flatten()] *= 10 * math.sqrt(d)
        b = 0.05 * torch.randn(classes, generator=gen, dtype=torch.float64)
        model[1].bias.copy_(b - model[1].weight @ centre.flatten())
    # p in the middle half of the box, so that neither p nor its reflection touches the bounds.
    u = torch.rand((n, channels, height, width), generator=gen, dtype=torch.float64)
    p = (low + (high - low) * (0.25 + 0.5 * u)).to(dtype)
    q = 2 * centre - p
    if one_pixel:
        q = torch.where(first, q, p)
    with torch.no_grad():
        y = model(p).argmax(1)
        lo, hi = torch.zeros(n, dtype=dtype), torch.ones(n, dtype=dtype)
        for _ in range(60):
            mid = (lo + hi) / 2
            z = model(p + mid.view(-1, 1, 1, 1) * (q - p))
            same = z.gather(1, y[:, None]).squeeze(1) > z.scatter(1, y[:, None], -math.inf).amax(1)
            lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)
        x = p + lo.view(-1, 1, 1, 1) * (q - p)  # classified as y, strictly: no tie (see test_moves_an_image_on_a_tie)
        across = p + hi.view(-1, 1, 1, 1) * (q - p)
        z = model(x)
        assert (z.gather(1, y[:, None]).squeeze(1) > z.scatter(1, y[:, None], -math.inf).amax(1)).all()
        other = model(across).argmax(1)
    return model, x, y, other, across


def check_moves(case: Case, attack, across: torch.Tensor) -> None:
    """Every image lies within a hair (far less than eps) of one that reaches the goal: an
    attack that hands it back unchanged is not attacking. In L0 a size is a count of pixels
    (for a patch, the side of a square of pixels), so no point is nearer than one pixel: there
    the point that reaches the goal differs in a single pixel, by a hair
    (``near_boundary(..., one_pixel=True)``), and eps is at least 1."""
    gap = attack.norm.size(across - case.x)
    if isinstance(attack.norm, Searched):
        assert (gap <= 1).all() and case.eps >= 1  # the setting is as claimed
    else:
        assert (gap < case.eps / 100).all()  # the setting is as claimed
    result = attack.run(case.x, case.y)
    moved = (result.x_adv != case.x).flatten(1).any(1)
    assert moved.all(), f"{int((~moved).sum())} of {len(moved)} image(s) handed back unchanged"


@st.composite
def boundary_cases(draw, name: str):
    cls = attack_class(name)
    n = draw(st.integers(1, 6))
    channels, height, width = draw(st.integers(1, 3)), draw(st.integers(4, 10)), draw(st.integers(4, 10))
    classes = draw(st.integers(max(2, min_classes(name)), 10))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    bounds = draw(st.sampled_from(BOUNDS))
    norm = draw(st.sampled_from(cls.norms))
    pixels = searched(norm)  # L0, patch: a whole number of pixels (of side), at least one
    scale = (bounds[1] - bounds[0]) * (1.0 if norm == "inf" else math.sqrt(channels * height * width))
    if pixels:
        scale = get_norm(norm).diameter((channels, height, width), bounds)  # every pixel, the longer side
    eps = draw(st.floats(0.05, 0.5)) * scale
    eps = float(max(1, round(eps))) if pixels else eps
    model, x, y, other, across = near_boundary(classes, channels, height, width, bounds, dtype,
                                               draw(st.integers(0, 2**32)), n, one_pixel=pixels)
    assume((other != y).all())  # the reflection has another label (as a rule)
    targeted = draw(st.booleans()) if can_target(name) else False
    case = Case(name=name, model=model, x=x, y=other if targeted else y, eps=eps, norm=norm, bounds=bounds,
                targeted=targeted, seed=draw(st.integers(0, 2**32)), restarts=1)
    return case, across


@pytest.mark.parametrize("name", NAMES)
@PROPERTY_SETTINGS
@given(data=st.data())
def test_moves_an_image_next_to_a_decision_boundary(name, data):
    case, across = data.draw(boundary_cases(name))
    check_moves(case, case.attack(), across)


def tie_case(name: str, targeted: bool, dtype: torch.dtype) -> Case:
    """An image exactly on a decision boundary: classes 0 and 1 tie (the bias, at x = 0),
    ``argmax`` says 0. Untargeted with label 0, or targeted at class 1: not reached at x."""
    gen = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 5)).to(dtype).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(5, 16, generator=gen, dtype=torch.float64))
        model[1].bias.copy_(torch.tensor([0.5, 0.5, -1.0, -1.0, -1.0]))
    x = torch.zeros((1, 1, 4, 4), dtype=dtype)
    norm = attack_class(name).norms[0]
    return Case(name=name, model=model, x=x, y=torch.tensor([1 if targeted else 0]),
                eps=0.5 if norm == "inf" else 2.0, norm=norm, bounds=(-1.0, 1.0), targeted=targeted,
                seed=0, restarts=1)


@pytest.mark.parametrize("name", NAMES)
def test_moves_an_image_on_a_tie(name):
    for dtype in (torch.float32, torch.float64):
        for targeted in (False, True) if can_target(name) else (False,):
            case = tie_case(name, targeted, dtype)
            check_moves(case, case.attack(), case.x)


# ------------------------------------------------------- the checks can fail
class NoOp(PGD):
    """Hands the clean images back."""

    def _run(self, x, y, generator):
        return x.clone(), torch.zeros(len(x), dtype=torch.long)


class UsesGlobalRNG(PGD):
    def _run(self, x, y, generator):
        torch.rand(1)
        return super()._run(x, y, generator)


class UpdatesRunningStats(PGD):
    """One forward pass in train mode: BatchNorm's running stats move."""

    def _run(self, x, y, generator):
        self.model.train()
        with torch.no_grad():
            self.model(x)
        self.model.eval()
        return super()._run(x, y, generator)


class LeavesGrad(PGD):
    def _run(self, x, y, generator):
        for p in self.model.parameters():
            p.grad = torch.zeros_like(p)
        return super()._run(x, y, generator)


class LeavesEvalMode(PGD):
    def run(self, x, y, **kwargs):
        result = super().run(x, y, **kwargs)
        self.model.eval()
        return result


class UnfreezesWeights(PGD):
    def run(self, x, y, **kwargs):
        result = super().run(x, y, **kwargs)
        self.model.requires_grad_(True)
        return result


class WritesIntoX(PGD):
    def run(self, x, y, **kwargs):
        result = super().run(x, y, **kwargs)
        x.detach().copy_(result.x_adv)
        return result


class SkipsTheFinalProjection(PGD):
    def run(self, x, y, **kwargs):
        result = super().run(x, y, **kwargs)
        result.x_adv = result.x_adv + 2 * self.eps
        return result


class Unseeded(PGD):
    def _run(self, x, y, generator):
        fresh = torch.Generator()
        fresh.seed()
        return super()._run(x, y, fresh)


class OneStreamForTheBatch(PGD):
    """Ignores the per-sample streams: a sample's random start depends on its position."""

    def _run(self, x, y, generator):
        return super()._run(x, y, torch.Generator().manual_seed(0))


class MisreadsNarrowLabels(PGD):
    def run(self, x, y, **kwargs):
        return super().run(x, y if y.dtype == torch.int64 else torch.zeros_like(y), **kwargs)


def fixed_case() -> Case:
    """PGD on a model in train mode with BatchNorm, Dropout and a frozen parameter."""
    spec = ModelSpec(hidden=3, batchnorm="2d", dropout=True, activation="relu", modes="train", frozen=1, seed=0)
    model = build_model(spec, 2, 6, 6, 5, torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((4, 2, 6, 6), generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    return Case(name="pgd", model=model, x=x, y=y, eps=0.2, norm="inf", bounds=(0.0, 1.0), targeted=False,
                seed=3, restarts=1)


def _invariants(case, cls):
    check_invariants(case, case.attack(cls))


def _moves(case, cls):
    model, x, y, other, across = near_boundary(5, 1, 6, 6, (0.0, 1.0), torch.float32, 1, 4)
    assert (other != y).all()
    case = dataclasses.replace(case, model=model, x=x, y=y)
    check_moves(case, case.attack(cls), across)


# broken attack -> (the check that must catch it, what it says)
BROKEN = {
    NoOp: (_moves, "handed back unchanged"),
    UsesGlobalRNG: (_invariants, "the global RNG was used"),
    UpdatesRunningStats: (_invariants, "running_mean changed"),
    LeavesGrad: (_invariants, "a parameter got a .grad"),
    LeavesEvalMode: (_invariants, "training modes not restored"),
    UnfreezesWeights: (_invariants, "requires_grad not restored"),
    WritesIntoX: (_invariants, "x was written to"),
    SkipsTheFinalProjection: (_invariants, "outside the bounds"),
    Unseeded: (lambda case, cls: check_same_seed(case, lambda: case.attack(cls)), "x_adv"),
    OneStreamForTheBatch: (lambda case, cls: check_batch_independent(case, case.attack(cls), torch.arange(4),
                                                                     [2, 0, 3, 1], 1), "not close"),
    MisreadsNarrowLabels: (lambda case, cls: check_label_dtypes(case, lambda: case.attack(cls)), "x_adv"),
}


@pytest.mark.parametrize("broken", list(BROKEN), ids=lambda cls: cls.__name__)
def test_a_broken_attack_is_caught(broken):
    check, message = BROKEN[broken]
    check(fixed_case(), PGD)  # the real PGD passes the check ...
    with pytest.raises(AssertionError, match=message):
        check(fixed_case(), broken)  # ... the broken one fails it
