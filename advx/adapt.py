"""The evaluation adapted to the model before the attacks run, from what a probe batch shows.

A defence behind a non-differentiable step (input quantization, thresholding, a cast to
8-bit integers, a ``detach``) gives gradient attacks zero input gradients: they find
nothing, and the model looks robust when it is not (Athalye, Carlini & Wagner 2018). Before
any attack, ``adapt`` measures the input gradient of the logit margin ``z_y - max_{j != y}
z_j`` on the first images (the margin does not saturate as cross-entropy does on a
confident model). When it is zero or not finite on more than ``MASKED_SHARE`` of them:

- the attacks get ``straight_through(model)`` (``advx.attacks.bpda``): the same outputs,
  and the gradients of BPDA through torch's non-differentiable operations;
- a black-box stage (``CROSS_CHECKS``: Square in Linf, L2 and L1)
  joins the cascade when it has none, as the cross-check that needs no gradients.

When two forward passes on the same images differ (a randomized model: input noise, random
resizing or padding), the model's randomness is drawn from streams advx seeds
(``advx.attacks.eot.Seeded``: reproducible, independent of the batch), every gradient is the
mean over ``EOT`` draws, and a sample counts as correct (or robust) only when the model is
right on the majority of ``VOTES`` draws; APGD-CE and APGD-DLR join a gradient cascade that
lacks them (``RANDOMIZED_STAGES``).

An ordinary classifier is deterministic and has margin gradients everywhere, so nothing
changes for it: the same attacks on the same model, the same figures.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from advx.attacks.bpda import straight_through
from advx.attacks.eot import RandomnessWarning, Seeded, check_seedable, is_randomized
from advx.attacks.registry import ATTACKS, abilities, attack_class, attack_options, stage_name
from advx.modes import frozen
from advx.norms import Norm, get_norm

MASKED_SHARE = 0.05  # more than this share of the probe with masked gradients: adapt
PROBE = 100  # images in the probe batch
EOT = 20  # draws averaged per gradient on a randomized model (as AutoAttack's version="rand")
# The black-box stage added when gradients are masked: the first of these that covers the norm
# (Square reads scores and is the cheaper; HopSkipJump reads only labels).
CROSS_CHECKS = ("square", "hsj")
VOTES = 11  # draws whose majority decides a verdict on a randomized model
# Added to a gradient cascade on a randomized model: APGD-CE and APGD-DLR, as AutoAttack's
# version="rand" runs them (on the randomized zoo, FGSM and PGD alone were weaker than it).
RANDOMIZED_STAGES = ("apgd", "apgd-dlr")


@dataclass
class Adaptation:
    """What ``adapt`` decided: the model to attack, the cascade, the draws averaged per gradient
    (``eot``) and the draws whose majority decides a verdict (``votes``; None: one forward
    pass decides), and why (``reasons``; empty: nothing changed)."""

    model: nn.Module
    attacks: tuple
    reasons: dict[str, str] = field(default_factory=dict)
    eot: int | None = None
    votes: int | None = None


def masked_share(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """The share of the images ``x`` (labels ``y``) whose margin gradient is zero or not finite."""
    x = x.detach().clone().requires_grad_(True)
    with frozen(model), torch.enable_grad():
        logits = model(x)
        if logits.dtype != torch.float32:
            logits = logits.float()
        if not logits.requires_grad:  # the output does not depend on x through autograd at all
            return 1.0
        true = logits.gather(1, y[:, None]).squeeze(1)
        other = logits.scatter(1, y[:, None], float("-inf")).amax(1)
        (grad,) = torch.autograd.grad((true - other).sum(), x, allow_unused=True)
    if grad is None:
        return 1.0
    flat = grad.flatten(1)
    return ((~torch.isfinite(flat).all(1)) | (flat.abs().amax(1) == 0)).float().mean().item()


def adapt(model: nn.Module, x: torch.Tensor, y: torch.Tensor, attacks, *, norm: Norm | str = "inf",
          device="cpu", seed: int = 0, eot: int | None = None, votes: int | None = None) -> Adaptation:
    """The model and cascade to evaluate ``model`` with in the threat model ``norm``, decided on
    the first ``PROBE`` of the images ``x`` with labels ``y`` (the same on every rank of a
    sharded run: it sees the whole set). ``seed`` seeds a randomized model's draws; ``eot`` and
    ``votes`` replace ``EOT`` and ``VOTES`` for one."""
    xs, ys = x[:PROBE].to(device), y[:PROBE].to(device).long()
    attacks, norm, reasons = tuple(attacks), get_norm(norm), {}
    seeded = None
    if is_randomized(model, xs):
        seeded = Seeded(model, seed)
        unseeded = check_seedable(seeded, xs)
        if unseeded:
            warnings.warn(unseeded, RandomnessWarning, stacklevel=3)
        gradients = any(callable(a) or "eot" in attack_options(stage_name(a)) for a in attacks)
        eot = (eot or EOT) if gradients else eot  # (black-box attacks alone have no gradient to average)
        votes = votes or VOTES
        averaged = f"each gradient is the mean over {eot} draws of its randomness (EOT), and " if eot else ""
        reasons["eot"] = (f"two forward passes on the same images differ (a randomized model): {averaged}a sample "
                          f"counts as correct or robust only when the model is right on the majority of {votes} "
                          f"draws")
        with torch.no_grad(), frozen(seeded):
            classes = seeded(xs[:1]).shape[1]
        names = {stage_name(a) for a in attacks if not callable(a)}
        added = tuple(name for name in RANDOMIZED_STAGES if gradients and name not in names
                      and norm.name in abilities(name).norms and classes >= abilities(name).min_classes)
        if added:
            attacks += added
            reasons["apgd"] = (f"{' and '.join(added)} join the cascade, with EOT (the stages of AutoAttack's "
                               f"version for randomized models)")
    share = masked_share(seeded or model, xs, ys)
    if share > MASKED_SHARE:
        seen = f"input gradients were zero or not finite for {share:.0%} of a probe batch of {len(xs)} images"
        reasons["bpda"] = (f"{seen}: the gradient attacks go straight through the model's non-differentiable "
                           f"operations (BPDA)")
        black_box = [name for name in CROSS_CHECKS if name in ATTACKS and norm.name in abilities(name).norms]
        if black_box and not any(not callable(a) and abilities(stage_name(a)).black_box for a in attacks):
            attacks += (black_box[0],)
            reasons[black_box[0]] = (f"the black-box {attack_class(black_box[0]).__name__} attack joins the "
                                     f"cascade, as a cross-check that needs no gradients")
        model = straight_through(model)
    if seeded is not None:
        model = Seeded(model, seed)
    return Adaptation(model, attacks, reasons, eot=eot, votes=votes)


def adaptation_for(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config) -> Adaptation:
    """``adapt`` with an ``EvalConfig``'s attacks, norm, device, seed, eot and votes; without
    ``config.adapt`` the model as it is, with the eot and votes given."""
    if not config.adapt:
        return Adaptation(model, tuple(config.attacks), eot=config.eot, votes=config.votes)
    return adapt(model, x, y, config.attacks, norm=config.norm, device=config.device, seed=config.seed,
                 eot=config.eot, votes=config.votes)
