"""What every attack must get right, in one place.

An attack takes the loss gradient with respect to the *input*, dL/dX, while the
weights stay frozen. The base class owns the parts that are easy to get wrong:

- the model is put in ``eval()`` and its parameters get ``requires_grad=False``
  for the attack; both are restored in ``finally``, also when the attack raises;
- the gradient is ``torch.autograd.grad(loss, x_adv)``, so no parameter ``.grad``
  is ever created and the weights and buffers stay bit-identical;
- the caller's ``x`` and ``y`` are never written to;
- the result is projected onto the eps-ball and clipped to ``bounds`` once more
  at the end, so those two invariants hold whatever a concrete attack does;
- the direction of the objective is decided once, by the goal object
  (``objectives.py``): untargeted attacks ascend the loss of the true label,
  targeted ones ascend minus the loss of the target;
- randomness comes from ``seed`` or an explicit ``torch.Generator``; the global
  RNG is never touched;
- bad input raises ``ValueError``/``TypeError`` naming the argument, what was
  expected and what was received;
- the result is finite: a non-finite input gradient is sanitised (``input_gradient``),
  a sample whose iterate still ends up non-finite is returned unchanged, and a sample
  whose logits are not finite never counts as a success;
- ``eps = 0`` returns the clean images without running the attack;
- with ``precision="bf16"``/``"fp16"`` (``advx.precision``) only the search runs under
  autocast; a success the search sees is checked by an fp32 forward (``confirm``) before
  it decides anything, and the result (success, logits) comes from the model as given,
  outside any autocast, the caller's own included.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Callable, Iterable

import torch
from torch import nn

from advx import rng
from advx.attacks.checks import check_labels, check_model_ready
from advx.attacks.eot import check_eot, draw
from advx.attacks.gradients import input_gradient
from advx.attacks.objectives import goal_for
from advx.attacks.results import Abilities, AttackResult, Run
from advx.modes import frozen
from advx.norms import Norm, get_norm
from advx.precision import autocast, check_precision, fast_images, full_precision, resolve, search_layout
from advx.validate import InputError, InputTypeError, check_batch, check_number, check_seed


class Attack:
    """Base class. A concrete attack implements ``_run(x, y, generator)`` and returns
    ``(x_adv, steps)``; everything else (checks, freezing, bookkeeping) lives here.

    Call it as ``x_adv = attack(x, y)`` or ``result = attack.run(x, y)``.

    Declared abilities, read by the checks here, the registry, the sanity checks and the
    tests: ``norms``, the threat models the attack supports; ``targetable``, whether it
    has a targeted mode; ``black_box``, whether it reads only the model's outputs (no
    gradients); ``minimum_norm``, whether it looks for the smallest perturbation (so its
    default budget is unbounded).
    """

    norms: tuple[str, ...] = ("inf", "2")
    targetable: bool = True
    black_box: bool = False
    minimum_norm: bool = False
    low_precision: bool = True

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float | None,
        norm: str | Norm = "inf",
        bounds: tuple[float, float] = (0.0, 1.0),
        targeted: bool = False,
        seed: int | None = 0,
        generator: torch.Generator | None = None,
        precision: str = "fp32",
        eot: int = 1,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        # None: no budget (minimum-norm attacks); ``budget`` then gives the box's diameter.
        eps = None if eps is None else check_number("eps", eps, minimum=0)
        if not (isinstance(bounds, (tuple, list)) and len(bounds) == 2):
            raise InputError(f"bounds must be a pair (low, high), got {bounds!r}")
        low, high = (check_number("bounds", b) for b in bounds)
        if not low < high:
            raise InputError(f"bounds must have low < high, got {tuple(bounds)!r}")
        if seed is not None:
            seed = check_seed("seed", seed)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise InputTypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        if not any(targeted is v or (not isinstance(targeted, str) and targeted == v) for v in (True, False)):
            raise InputError(f"targeted must be True or False, got {targeted!r}")
        self.model = model
        self.norm = get_norm(norm)
        if self.norm.name not in self.norms:
            raise InputError(f"norm must be {' or '.join(map(repr, self.norms))} for {type(self).__name__}, "
                             f"got {norm!r}")
        self.eps = eps if eps is None else self.norm.budget(eps)
        self.bounds = (low, high)
        self.targeted = bool(targeted)
        self.goal = goal_for(self.targeted)  # loss, margin and success derive from it
        self._check_targetable()
        self.seed = seed
        self.generator = generator
        self.precision = check_precision("precision", precision)
        self.eot = check_eot("eot", eot)
        resolve(precision, "cpu", allowed=self.abilities().low_precision)  # refused here, not mid-run
        self._precision_used: str | None = None  # what the last call resolved it to (not a setting)
        self._search = "fp32"  # the precision of the search during a call

    # ----------------------------------------------------------------- public
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The adversarial batch for images ``x`` [N, C, H, W] and labels ``y`` [N]. It skips
        the forward pass that ``run`` spends on success and logits (what training needs)."""
        return self._attack_batch(x, y, None)[0]

    def run(self, x: torch.Tensor, y: torch.Tensor, *,
            generator: rng.Generator | None = None) -> AttackResult:
        """Attack a batch and return an ``AttackResult``. ``y`` holds the true labels,
        or the target labels when ``targeted=True``. ``generator`` overrides the
        attack's own randomness for this call: a ``torch.Generator``, or an
        ``advx.rng.SampleRNG`` with one stream per sample (what ``advx.evaluate``
        passes, so that a sample's result does not depend on its batch). Success and
        logits come from the model as given, outside any autocast."""
        x_adv, x0, y0, steps = self._attack_batch(x, y, generator)
        with frozen(self.model), full_precision(x0.device), torch.no_grad():
            logits = self.model(x_adv)
        finite = torch.isfinite(logits).all(1)
        if not finite.all():
            warnings.warn(f"{type(self).__name__}: the model returned logits that are not finite (NaN/inf) "
                          f"on {int((~finite).sum())} adversarial image(s); they do not count as fooled",
                          RuntimeWarning, stacklevel=2)
        return AttackResult(
            x_adv=x_adv,
            success=self.is_success(logits, y0) & finite,
            distance=self.norm.size(x_adv - x0),
            steps=steps,
            logits=logits,
        )

    def _attack_batch(self, x, y, generator):
        """Checks, the search with the weights frozen, the final projection; returns
        ``(x_adv, x0, y0, steps)`` with ``x0``, ``y0`` private copies of the inputs."""
        check_batch(x, y, self.bounds)
        check_model_ready(self.model, x)
        if isinstance(generator, rng.SampleRNG) and len(generator) != len(x):
            raise InputError(f"generator: SampleRNG must have one stream per sample ({len(x)}), "
                             f"got {len(generator)}")
        x0 = x.detach().clone()
        y0 = y.detach().to(device=x.device, dtype=torch.long, copy=True)  # any integer dtype
        generator = generator if generator is not None else self.make_generator(x.device)
        eps = self.budget(x0)
        # Decisions are taken in full precision even inside a caller's autocast region;
        # only the search (``gradient``) turns it on, when ``precision`` asks for it.
        with frozen(self.model), full_precision(x0.device):
            check_labels(self.model, x0, y0, self.goal.y_holds)
            self._precision_used = self.resolved_precision(x0.device)
            if eps == 0:  # the eps-ball is the point x itself
                x_adv = x0.clone()
                steps = torch.zeros(len(x0), dtype=torch.long, device=x0.device)
            else:
                self._search = self._precision_used
                low = self._search != "fp32"  # low precision: the fast layout too
                try:
                    with search_layout(self.model, enabled=low):
                        x_adv, steps = self._run(fast_images(x0) if low else x0, y0, generator)
                finally:
                    self._search = "fp32"
            x_adv = self.norm.project(x_adv.detach(), x0, eps, self.bounds).contiguous()
            broken = ~torch.isfinite(x_adv).flatten(1).all(1)
            if broken.any():  # never hand back a non-finite image
                x_adv[broken] = x0[broken]
                warnings.warn(f"{type(self).__name__}: {int(broken.sum())} adversarial image(s) were not "
                              f"finite and were replaced by the clean image", RuntimeWarning, stacklevel=3)
        return x_adv, x0, y0, steps

    @property
    def precision_used(self) -> str | None:
        """The precision the last call searched in (``None`` before the first call)."""
        return self._precision_used

    def resolved_precision(self, device: str | torch.device) -> str:
        """The precision of this attack's search on ``device`` (``"auto"`` resolved)."""
        return resolve(self.precision, device, allowed=self.abilities().low_precision)

    @classmethod
    def abilities(cls, **options) -> Abilities:
        """The declared abilities with constructor ``options`` fixed (``loss="dlr"`` makes
        APGD untargeted): what the registry, the CLI help and the tests read."""
        return Abilities(tuple(cls.norms), cls.targetable, cls.black_box, cls.minimum_norm,
                         low_precision=cls.low_precision)

    def _check_targetable(self, **options) -> None:
        if self.targeted and not self.abilities(**options).targetable:
            what = "".join(f" with {k}={v!r}" for k, v in options.items())
            raise InputError(f"targeted must be False: {type(self).__name__}{what} is an untargeted attack, "
                             f"got targeted=True")

    def budget(self, x: torch.Tensor) -> float:
        """The eps of a call on images ``x``: ``eps``, or with ``eps=None`` the diameter of
        the pixel box in the attack's norm (a budget that never binds)."""
        return self.eps if self.eps is not None else self.norm.diameter(x.shape[1:], self.bounds)

    def config(self) -> dict:
        """The attack's hyperparameters as plain values (for reports)."""
        return {"attack": type(self).__name__,
                **{k: (v.name if isinstance(v, Norm) else v) for k, v in vars(self).items()
                   if k not in ("model", "generator", "goal") and not k.startswith("_")}}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "attack")
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------- for subclasses
    def _run(self, x: torch.Tensor, y: torch.Tensor, generator: rng.Generator):
        raise NotImplementedError

    def best_of_runs(self, x: torch.Tensor, generator: rng.Generator,
                     runs: Iterable[Callable[[torch.Tensor, rng.Generator], Run]]):
        """Several runs (restarts, target classes), the best kept per sample: a success over
        a failure, else the higher score. Each run goes only to the samples that no run
        before it has broken: ``run(idx, generator)`` attacks ``x[idx]`` with the streams of
        those samples. Returns ``(x_best, steps)``: a sample no run reached keeps its
        best-scoring result; ``steps`` adds up what every run spent on the sample."""
        x_best = x.clone()
        success = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        score = torch.full((len(x),), -math.inf, dtype=x.dtype, device=x.device)
        steps = torch.zeros(len(x), dtype=torch.long, device=x.device)
        for run in runs:
            todo = (~success).nonzero().squeeze(1)
            if len(todo) == 0:
                break
            result = run(todo, rng.subset(generator, todo))
            better = result.success | (result.score > score[todo])  # todo: no success so far
            idx = todo[better]
            x_best[idx] = result.x_adv[better]
            success[idx] = result.success[better]
            score[idx] = result.score[better]
            steps[todo] += result.steps
        return x_best, steps

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample objective to *ascend*: CE of the true label, or minus CE of the target."""
        return self.goal.loss(logits, y)

    def gradient(self, x_adv: torch.Tensor, y: torch.Tensor, objective=None):
        """dLoss/dX at ``x_adv`` with the weights frozen: returns ``(grad, logits, loss)``.
        ``objective(logits) -> [N]`` replaces ``self.loss(logits, y)`` when given. The
        forward runs in the search precision (the logits come back as float32); decide
        success on them only through ``confirm``. With ``eot=N`` all three are the means over
        N draws of a randomized model (``advx.attacks.eot.draw``): the expected loss's gradient."""
        x_adv = x_adv.detach()
        if self._search != "fp32":  # the layout the low-precision convolutions run fastest on
            x_adv = fast_images(x_adv)
        x_adv.requires_grad_(True)
        total = None
        for j in range(self.eot):
            with torch.enable_grad(), (draw(j) if self.eot > 1 else contextlib.nullcontext()):
                logits = self.search_logits(x_adv)
                loss = self.loss(logits, y) if objective is None else objective(logits)
                grad = input_gradient(loss.sum(), x_adv)
            one = (grad, logits.detach(), loss.detach())
            total = one if total is None else tuple(t + o for t, o in zip(total, one))
        return total if self.eot == 1 else tuple(t / self.eot for t in total)

    def search_logits(self, x_adv: torch.Tensor) -> torch.Tensor:
        """A forward of the search in the search precision, as float32 (the images come in
        the fast layout): a black-box query; decide success on it only through ``confirm``."""
        with autocast(self._search, x_adv.device):
            return self.model(x_adv).to(x_adv.dtype)

    def confirm(self, x_adv: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample success of ``x_adv`` for the model as given: ``logits`` from the search
        decide it in fp32; in low precision the samples they call successful (the only
        candidates) are checked by a full-precision forward, so no decision rests on them."""
        hit = self.is_success(logits, y)
        if self._search == "fp32" or not bool(hit.any()):
            return hit
        with torch.no_grad():
            exact = self.model(x_adv[hit])
        hit[hit.clone()] = self.is_success(exact, y[hit]) & torch.isfinite(exact).all(1)
        return hit

    def margin(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-sample distance from the goal in logit space, to *minimise* (below 0: reached)."""
        return self.goal.margin(logits, y)

    def is_success(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.goal.reached(logits, y)

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(self.bounds[0], self.bounds[1])

    def make_generator(self, device: torch.device | str = "cpu") -> torch.Generator:
        """The generator a call uses: the one given at construction, else a fresh one from ``seed``."""
        if self.generator is not None:
            return self.generator
        gen = torch.Generator(device=device)
        if self.seed is None:
            gen.seed()
        else:
            gen.manual_seed(self.seed)
        return gen
