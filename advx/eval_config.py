"""How ``advx.evaluate`` attacks: one frozen, validated ``EvalConfig`` (as ``TrainConfig``
is for training), and the stages it builds from ``advx.attacks.registry``."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Sequence

import torch

from advx.attacks.eot import check_eot, check_votes
from advx.attacks.registry import AttackFactory, abilities, check_options_apply, describe, stage_factory, stage_name
from advx.certify.propagate import METHODS
from advx.norms import Norm, get_norm
from advx.precision import check_precision
from advx.validate import InputError, check_number, check_seed


@dataclass(frozen=True)
class EvalConfig:
    """How ``evaluate`` attacks; checked once, held as plain values (as ``TrainConfig``).

    attacks:  names from ``advx.ATTACKS`` (one name alone is one attack), ``(name, options)``
              pairs such as ``SUITES["strong"]`` holds, or factories ``f(model, eps) -> Attack``;
              each once.
    eps:      the budgets (one number or several; sorted, each once).
    norm:     the threat model: a ``Norm``, or its name (``"inf"``/``"2"``/``"1"``), held as a ``Norm``.
    steps, alpha, restarts: passed to the attacks that take them (``None``: their own).
    cascade:  each attack only on the survivors of those before it (the worst case is the
              same; the per-attack columns become cumulative).
    reuse_eps: a sample broken at a smaller eps counts as broken at every larger one.
    early_stop: iterative attacks stop each sample once it is fooled.
    batch_size, seed, device, checks (the sanity checks), progress (a tqdm bar).
    precision: the attacks' search (``advx.precision``); an attack that needs fp32 keeps it.
              Success, the survivors and every figure are decided in fp32.
    certify:  also certify every correct sample at every eps with this method of
              ``advx.certify`` ("ibp", "crown-ibp", "crown", "alpha-crown"; None: attacks only),
              always in fp32; "bab": α-CROWN, then branch and bound on every sample left
              unresolved (neither certified nor broken), ``certify_timeout`` seconds each.
    adapt:    when a probe batch shows masked input gradients, attack through BPDA and add a
              black-box stage; when it shows a randomized model, seed its draws, average
              gradients over draws (EOT) and decide verdicts by majority (``advx.adapt``); an
              ordinary model is evaluated as without it.
    eot:      draws of a randomized model averaged per gradient, for the attacks that take it
              (None: 1, or ``advx.adapt.EOT`` when ``adapt`` finds a randomized model).
    votes:    an odd number M: a sample counts as correct (robust) only when the model is right
              on more than M/2 of M draws (None: one forward pass decides, or ``advx.adapt.VOTES``
              when ``adapt`` finds a randomized model).
    """

    attacks: Sequence = ("fgsm", "pgd")
    eps: Sequence[float] | float = (0.1, 0.3)
    norm: str | Norm = "inf"
    steps: int | None = None
    alpha: float | None = None
    restarts: int | None = None
    cascade: bool = True
    reuse_eps: bool = True
    early_stop: bool = True
    batch_size: int = 500
    seed: int = 0
    device: str | torch.device = "cpu"
    checks: bool = True
    progress: bool = True
    precision: str = "fp32"
    certify: str | None = None
    certify_timeout: float = 60.0
    adapt: bool = True
    eot: int | None = None
    votes: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.attacks, str):  # one attack
            object.__setattr__(self, "attacks", (self.attacks,))
        if isinstance(self.attacks, bytes) or not self.attacks:
            raise InputError(f"attacks must name at least one attack, got {self.attacks!r}")
        eps = self.eps
        if isinstance(eps, numbers.Real) or (isinstance(eps, torch.Tensor) and eps.dim() == 0):
            eps = [eps]  # one budget
        if isinstance(eps, (str, bytes)) or not len(eps):
            raise InputError(f"eps must hold at least one value, got {eps!r}")
        eps = sorted(check_number("eps", e, minimum=0) for e in eps)
        _no_repeats("eps", [f"{e:g}" for e in eps], "a value")
        if not isinstance(self.adapt, bool):
            raise InputError(f"adapt must be True or False, got {self.adapt!r}")
        if self.eot is not None:
            object.__setattr__(self, "eot", check_eot("eot", self.eot))
        if self.votes is not None:
            object.__setattr__(self, "votes", check_votes("votes", self.votes))
        if self.certify is not None and self.certify not in METHODS:
            raise InputError(f"certify must be one of {list(METHODS)} or None, got {self.certify!r}")
        timeout = check_number("certify_timeout", self.certify_timeout)
        if not timeout > 0:
            raise InputError(f"certify_timeout must be > 0 seconds per sample, got {timeout:g}")
        norm = get_norm(self.norm)
        checked = {"attacks": tuple(self.attacks), "eps": tuple(norm.budget(e) for e in eps), "norm": norm,
                   "batch_size": check_number("batch_size", self.batch_size, minimum=1, integer=True),
                   "seed": check_seed("seed", self.seed),
                   "precision": check_precision("precision", self.precision)}
        for name, value in checked.items():
            object.__setattr__(self, name, value)
        _no_repeats("attacks", [name for name, _ in self.stages()], "an attack",
                    note=": each column of the report is one attack")
        check_options_apply(self.attacks, dict(steps=self.steps, alpha=self.alpha, restarts=self.restarts,
                                               eot=self.eot))

    def options(self) -> dict:
        """The options every stage is built with (those an attack does not take are skipped)."""
        return dict(norm=self.norm, steps=self.steps, alpha=self.alpha, restarts=self.restarts,
                    early_stop=self.early_stop or None, seed=self.seed, eot=self.eot)

    def stages(self) -> list[tuple[str, AttackFactory]]:
        return [stage_factory(a, {**self.options(), "precision": self._precision_of(a)}) for a in self.attacks]

    def _precision_of(self, stage) -> str | None:
        """``precision`` for a stage; fp32 for an attack whose search needs it."""
        if callable(stage) or self.precision in ("fp32", "auto"):
            return None if callable(stage) else self.precision
        return self.precision if abilities(stage_name(stage)).low_precision else "fp32"

    def settings(self, names: list[str], n: int) -> dict:
        """Plain values for the report: what ran (the stages' ``names``), on how many samples."""
        return {"attacks": names, "stages": describe(self.attacks, self.options()), "eps": list(self.eps),
                "norm": self.norm.name, "steps": self.steps, "alpha": self.alpha, "restarts": self.restarts,
                "cascade": self.cascade, "reuse_eps": self.reuse_eps, "early_stop": self.early_stop,
                "batch_size": self.batch_size, "seed": self.seed, "device": str(self.device), "n": n,
                "precision": self.precision, "certify": self.certify, "adapt": self.adapt,
                **({"certify_timeout": self.certify_timeout} if self.certify == "bab" else {}),
                "eot": self.eot, "votes": self.votes,
                "verdict": ("one forward pass" if self.votes is None
                            else f"the majority of {self.votes} draws of the model's randomness")}


def _no_repeats(what: str, names: list[str], kind: str, note: str = "") -> None:
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        shown = ", ".join(repr(r) if kind == "an attack" else r for r in repeated)
        raise InputError(f"{what} must not repeat {kind}, got {shown} more than once{note}")
