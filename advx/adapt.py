"""The evaluation adapted to the model before the attacks run, from what a probe batch shows.

A defence behind a non-differentiable step (input quantization, thresholding, a cast to
8-bit integers, a ``detach``) gives gradient attacks zero input gradients: they find
nothing, and the model looks robust when it is not (Athalye, Carlini & Wagner 2018). Before
any attack, ``adapt`` measures the input gradient of the logit margin ``z_y - max_{j != y}
z_j`` on the first images (the margin does not saturate as cross-entropy does on a
confident model). When it is zero or not finite on more than ``MASKED_SHARE`` of them:

- the attacks get ``straight_through(model)`` (``advx.attacks.bpda``): the same outputs,
  and the gradients of BPDA through torch's non-differentiable operations;
- a black-box stage (Square, in Linf: the only norm a black-box attack of advx covers)
  joins the cascade when it has none, as the cross-check that needs no gradients.

An ordinary classifier has margin gradients everywhere, so nothing changes for it: the same
attacks on the same model, the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from advx.attacks.bpda import straight_through
from advx.attacks.registry import ATTACKS, abilities, attack_class, stage_name
from advx.modes import frozen
from advx.norms import Norm, get_norm

MASKED_SHARE = 0.05  # more than this share of the probe with masked gradients: adapt
PROBE = 100  # images in the probe batch


@dataclass
class Adaptation:
    """What ``adapt`` decided: the model to attack, the cascade, and why (empty: nothing changed)."""

    model: nn.Module
    attacks: tuple
    reasons: dict[str, str] = field(default_factory=dict)


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
          device="cpu") -> Adaptation:
    """The model and cascade to evaluate ``model`` with in the threat model ``norm``, decided on
    the first ``PROBE`` of the images ``x`` with labels ``y`` (the same on every rank of a
    sharded run: it sees the whole set)."""
    xs, ys = x[:PROBE].to(device), y[:PROBE].to(device).long()
    share = masked_share(model, xs, ys)
    if share <= MASKED_SHARE:
        return Adaptation(model, tuple(attacks))
    seen = f"input gradients were zero or not finite for {share:.0%} of a probe batch of {len(xs)} images"
    reasons = {"bpda": f"{seen}: the gradient attacks go straight through the model's non-differentiable "
                       f"operations (BPDA)"}
    attacks, norm = tuple(attacks), get_norm(norm)
    black_box = [name for name in sorted(ATTACKS) if abilities(name).black_box and norm.name in abilities(name).norms]
    if black_box and not any(not callable(a) and abilities(stage_name(a)).black_box for a in attacks):
        attacks += (black_box[0],)
        reasons[black_box[0]] = (f"the black-box {attack_class(black_box[0]).__name__} attack joins the cascade, "
                                 f"as a cross-check that needs no gradients")
    return Adaptation(straight_through(model), attacks, reasons)


def adaptation_for(model: nn.Module, x: torch.Tensor, y: torch.Tensor, config) -> Adaptation:
    """``adapt`` with an ``EvalConfig``'s attacks, norm and device; the model as it is without ``config.adapt``."""
    if not config.adapt:
        return Adaptation(model, tuple(config.attacks))
    return adapt(model, x, y, config.attacks, norm=config.norm, device=config.device)
