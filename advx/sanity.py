"""Checks that catch a broken robustness evaluation.

After Carlini et al. (2019), "On Evaluating Adversarial Robustness", and AutoAttack's
``checks.py``. Each check is a small function that returns ``None`` when all is well,
or a one-line warning. ``advx.evaluate`` runs them, prints the warnings and stores
them in the report.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from advx.attacks.base import frozen, input_gradient


def check_logits(model: nn.Module, x: torch.Tensor) -> str | None:
    """Outputs that are all in [0, 1] and sum to 1 look like probabilities, not logits:
    cross-entropy on them has tiny gradients and attacks look weaker than they are."""
    with torch.no_grad(), frozen(model):
        out = model(x)
    if out.min() >= 0 and out.max() <= 1 and torch.allclose(out.sum(1), torch.ones(len(out)), atol=1e-3):
        return ("outputs look like probabilities (each row in [0, 1], summing to 1); "
                "attacks expect logits: remove the softmax from the model")
    return None


def check_deterministic(model: nn.Module, x: torch.Tensor) -> str | None:
    """Two forward passes on the same input must agree; a randomized model needs EOT attacks."""
    with torch.no_grad(), frozen(model):
        a, b = model(x), model(x)
    if not torch.allclose(a, b, atol=1e-5, rtol=1e-4):
        return ("two forward passes on the same input differ (randomized model); "
                "gradient attacks then underestimate it: average gradients over draws (EOT)")
    return None


def check_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                    max_share: float = 0.05) -> str | None:
    """Input gradients that are exactly zero or not finite for many samples point to
    masked gradients (quantization, argmax, saturated softmax...)."""
    x = x.detach().clone().requires_grad_(True)
    with frozen(model), torch.enable_grad():
        loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
        grad = input_gradient(loss, x)
    flat = grad.flatten(1)
    bad = (~torch.isfinite(flat).all(1)) | (flat.abs().amax(1) == 0)
    share = bad.float().mean().item()
    if share > max_share:
        return (f"input gradients are zero or non-finite for {share:.0%} of samples "
                f"(gradient masking?): try the black-box Square attack")
    return None


def check_monotone(robust_by_eps: Mapping[float, float]) -> str | None:
    """Robust accuracy must fall as eps grows; if it rises, or stays flat over the whole
    sweep while it is above zero, the attack is not working."""
    eps = sorted(robust_by_eps)
    if len(eps) < 2:
        return None
    accs = [robust_by_eps[e] for e in eps]
    rises = [(a, b) for a, b in zip(eps, eps[1:]) if robust_by_eps[b] > robust_by_eps[a] + 1e-12]
    if rises:
        a, b = rises[0]
        return f"robust accuracy rises from eps={a:g} ({robust_by_eps[a]:.2%}) to eps={b:g} ({robust_by_eps[b]:.2%})"
    if accs[0] > 0 and accs[-1] >= accs[0]:
        return f"robust accuracy does not fall from eps={eps[0]:g} to eps={eps[-1]:g} (stays at {accs[0]:.2%})"
    return None


def check_large_eps(robust_acc: float, eps: float, *, limit: float = 0.1) -> str | None:
    """At a very large budget (Linf 0.5 turns every image grey) robust accuracy must be near 0."""
    if robust_acc > limit:
        return (f"robust accuracy at the very large eps={eps:g} is {robust_acc:.2%} (> {limit:.0%}): "
                f"a sign of gradient masking")
    return None


def check_stronger_attack(weak_acc: float, strong_acc: float, *, tolerance: float = 0.01) -> str | None:
    """More PGD steps and restarts must not *raise* robust accuracy."""
    if strong_acc > weak_acc + tolerance:
        return (f"more PGD steps/restarts raised robust accuracy ({weak_acc:.2%} -> {strong_acc:.2%}): "
                f"the optimisation is unstable, results are not trustworthy")
    return None


def black_box_warning(count: int, eps: float) -> str:
    """The message for samples that only a black-box (score-based) attack broke."""
    return (f"the black-box Square attack broke {count} samples at eps={eps:g} that the gradient "
            f"attacks before it did not: gradients are unreliable here (masking?)")
