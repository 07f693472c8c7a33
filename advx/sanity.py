"""Checks that catch a broken robustness evaluation.

After Carlini et al. (2019), "On Evaluating Adversarial Robustness", and AutoAttack's
``checks.py``. Each check is a small function that returns ``None`` when all is well,
or a one-line warning. ``advx.evaluate`` runs them, prints the warnings and stores
them in the report. One check is never a warning: the sandwich of ``advx eval --certify``,

    certified accuracy  <=  true robust accuracy  <=  attack robust accuracy:

a sample both certified (proved robust) and broken (an attack found an adversarial
example) at the same eps means one of the two is wrong, and ``check_sandwich`` raises.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from advx import rng
from advx.attacks.eot import is_randomized
from advx.attacks.gradients import input_gradient
from advx.attacks.pgd import PGD
from advx.attacks.sparse_rs import SparseRS
from advx.modes import frozen
from advx.norms import Linf, Norm
from advx.validate import AdvxError


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
    if is_randomized(model, x):
        return ("two forward passes on the same input differ (randomized model); "
                "gradient attacks then underestimate it: average gradients over draws (EOT: advx eval does "
                "it unless --no-adapt; advx attack --eot N)")
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


def check_clean_accuracy(clean_acc: float, num_classes: int, *, normalized: bool = False) -> str | None:
    """Clean accuracy near chance (under twice it) says the model does not see the input it
    was trained on: most often a missing or wrong input normalization."""
    chance = 1.0 / num_classes
    if clean_acc >= 2 * chance:
        return None
    given = ("check the --mean/--std given (the model's training normalization, per channel)" if normalized
             else "if the model was trained on normalized images, pass its --mean/--std "
                  "(advx.models.Normalized)")
    return (f"clean accuracy {clean_acc:.2%} is near chance ({chance:.2%} for {num_classes} classes): is the input "
            f"normalization right? advx feeds pixels in [0, 1]; {given}; or the model was trained on another dataset")


def check_normalization(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, given: tuple | None,
                        candidates: Sequence[tuple | None]) -> str | None:
    """The clean accuracy under each candidate input normalization (``(mean, std)``, or None
    for the pixels as they are) against the one ``given``: when another one classifies
    clearly more images (10 points or more), the model most likely expects that one."""
    def acc(normalization) -> float:
        with torch.no_grad(), frozen(model):
            z = x if normalization is None else (x - normalization[0]) / normalization[1]
            return (model(z).argmax(1) == y).float().mean().item()

    others = [c for c in candidates if c != given]
    if not others:
        return None
    ours = acc(given)
    best_acc, best = max(((acc(c), c) for c in others), key=lambda pair: pair[0])
    if best_acc < ours + 0.10:
        return None
    now = "as pixels in [0, 1]" if given is None else f"with --mean {given[0]:g} --std {given[1]:g}"
    fix = ("leave out --mean/--std" if best is None else f"pass --mean {best[0]:g} --std {best[1]:g}")
    return (f"the model classifies {best_acc:.2%} of the first {len(y)} images "
            f"{'as pixels in [0, 1]' if best is None else f'normalized with mean {best[0]:g}, std {best[1]:g}'}, "
            f"against {ours:.2%} {now}: it most likely expects that input; {fix}")


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
    """At a very large budget (Linf 0.5 turns every image grey; L0 half the pixels) robust
    accuracy must be near 0."""
    if robust_acc > limit:
        return (f"robust accuracy at the very large eps={eps:g} is {robust_acc:.2%} (> {limit:.0%}): "
                f"a sign of gradient masking")
    return None


def check_stronger_attack(weak_acc: float, strong_acc: float, *, tolerance: float = 0.01) -> str | None:
    """More PGD steps (Sparse-RS queries in L0) and restarts must not *raise* robust accuracy."""
    if strong_acc > weak_acc + tolerance:
        return (f"more PGD steps/restarts raised robust accuracy ({weak_acc:.2%} -> {strong_acc:.2%}): "
                f"the optimisation is unstable, results are not trustworthy")
    return None


def check_black_box(broken_by: torch.Tensor, eps: Sequence[float], black_box: Sequence[bool],
                    names: Sequence[str] | None = None) -> str | None:
    """Flag samples that a black-box attack broke after every white-box attack before it
    in the cascade had failed on them: the gradients were misleading (masking).

    ``broken_by`` [len(eps), N]: index of the first attack (in cascade order) that broke
    each sample at each eps, -1 for none; ``black_box[a]``: attack ``a`` uses no gradients;
    ``names[a]``: its name, for the message."""
    black = [a for a, flag in enumerate(black_box) if flag]
    white = [a for a, flag in enumerate(black_box) if not flag]
    if not black or not white or min(black) < min(white):
        return None
    for k, e in enumerate(eps):
        count = sum(int((broken_by[k] == a).sum()) for a in black)
        if count:
            who = " and ".join(names[a] for a in black) if names is not None else "a"
            return (f"the black-box attack ({who}) broke {count} samples at eps={e:g} that the gradient "
                    f"attacks before it did not: gradients are unreliable here (masking?)")
    return None


def run_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: Sequence[float],
               robust_acc: Mapping[float, float], pred_clean: torch.Tensor, broken_by: torch.Tensor,
               black_box: Sequence[bool], names: Sequence[str] | None = None, norm: Norm = Linf(),
               bounds: tuple[float, float] = (0.0, 1.0), device="cpu", seed: int = 0, first: int = 100) -> dict[str, str]:
    """Run every check above on the results of an evaluation (plain values: the eps, the
    robust accuracy per eps, the clean predictions and ``broken_by`` as ``check_black_box``
    takes it, in the threat model ``norm`` and the pixel box ``bounds``), attacking the
    ``first`` samples where a check needs to, and return ``{check name: warning}`` for
    those that fired."""
    xs, ys = x[:first].to(device), y[:first].to(device)
    with torch.no_grad(), frozen(model):
        classes = model(xs[:1]).shape[1]
    found = {
        "clean": check_clean_accuracy((pred_clean.cpu() == y.cpu()).float().mean().item(), classes),
        "logits": check_logits(model, xs),
        "deterministic": check_deterministic(model, xs),
        "gradients": check_gradients(model, xs, ys),
        "monotone": check_monotone(robust_acc),
        "black_box": check_black_box(broken_by, eps, black_box, names),
    }
    ok = (pred_clean[:first].to(device) == ys)
    if ok.any():
        xc, yc = xs[ok], ys[ok]
        big = norm.diameter(x.shape[1:], bounds) / 2  # half the box: any image can turn grey

        def acc(attack):
            run = attack.run(xc, yc, generator=rng.SampleRNG.from_ids(seed, range(len(yc)), 7))
            return (~run.success).float().mean().item() * len(yc) / len(ys)

        def probe(eps, effort, restarts=1):  # PGD, or Sparse-RS where PGD does not go (L0)
            if norm.name in PGD.norms:
                return PGD(model, eps=eps, norm=norm, bounds=bounds, early_stop=True, steps=effort, restarts=restarts)
            return SparseRS(model, eps=float(int(eps)), norm=norm, bounds=bounds, queries=10 * effort,
                            restarts=restarts)

        found["large_eps"] = check_large_eps(acc(probe(big, 20)), big)
        e = max(eps)
        if robust_acc[e] > 0:
            weak, strong = acc(probe(e, 10)), acc(probe(e, 20, restarts=2))
            found["stronger_attack"] = check_stronger_attack(weak, strong)
    return {k: v for k, v in found.items() if v is not None}


class SoundnessError(AdvxError, RuntimeError):
    """A sample is both certified and broken (or certified though misclassified): a bug
    in the bounds or in the attack, named with the sample, the eps and the attack."""


def check_sandwich(certified: torch.Tensor, broken_by: torch.Tensor, correct: torch.Tensor,
                   eps: list[float], attacks: list[str]) -> None:
    """Raise ``SoundnessError`` if a sample is certified but broken or misclassified.
    ``certified``, ``broken_by`` (-1: not broken): [len(eps), N]; ``correct``: [N]."""
    for k, e in enumerate(eps):
        wrong = certified[k] & ~correct
        if wrong.any():
            i = int(wrong.nonzero()[0])
            raise SoundnessError(f"sample {i} is certified at eps={e:g} but the model misclassifies it "
                                 f"(the bounds are wrong); {int(wrong.sum())} such samples")
        clash = certified[k] & (broken_by[k] >= 0)
        if clash.any():
            i = int(clash.nonzero()[0])
            raise SoundnessError(f"sample {i} is certified at eps={e:g} and broken by "
                                 f"{attacks[int(broken_by[k, i])]} at the same eps: the certificate or the "
                                 f"attack is wrong; {int(clash.sum())} such samples")
