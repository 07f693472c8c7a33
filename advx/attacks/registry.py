"""The attacks by name: what the CLI and ``advx.evaluate`` build attacks from.

``ATTACKS`` maps a name to a class, or to a ``functools.partial`` of one that fixes the
objective (``inspect.signature`` works on both: ``build_attack`` reads which options an
attack takes from it). ``SUITES`` names cascades. Adding an attack is one file under
``advx/attacks/`` and one line here.
"""

from __future__ import annotations

import inspect
from functools import partial
from typing import Callable, Sequence

from torch import nn

from advx.attacks.apgd import APGD
from advx.attacks.base import Attack
from advx.attacks.cw import CW
from advx.attacks.deepfool import DeepFool
from advx.attacks.fab import FAB
from advx.attacks.fgsm import FGSM
from advx.attacks.fmn import FMN
from advx.attacks.hsj import HopSkipJump
from advx.attacks.mifgsm import MIFGSM
from advx.attacks.pgd import PGD
from advx.attacks.results import Abilities
from advx.attacks.sigma_zero import SigmaZero
from advx.attacks.sparse_rs import SparseRS
from advx.attacks.spgd import SparsePGD
from advx.attacks.square import Square
from advx.norms import get_norm
from advx.validate import InputError

ATTACKS = {
    "fgsm": FGSM,
    "pgd": PGD,
    "mifgsm": MIFGSM,
    "apgd": APGD,                                        # APGD-CE
    "apgd-dlr": partial(APGD, loss="dlr"),               # APGD-DLR
    "apgd-t": partial(APGD, loss="dlr-targeted"),        # APGD-T: targeted DLR over the top classes
    "cw": CW,
    "deepfool": DeepFool,
    "fab": FAB,                                          # FAB: the closest of every class's boundaries
    "fab-t": partial(FAB, n_target_classes=9),           # FAB-T: one target class at a time
    "fmn": FMN,
    "square": Square,
    "hsj": HopSkipJump,                                  # HopSkipJump: labels only
    "sparse-rs": SparseRS,                               # Sparse-RS: L0 and patches, scores only
    "spgd": SparsePGD,                                   # sparse PGD: L0, white-box
    "sigma-zero": SigmaZero,                             # sigma-zero: minimum L0, white-box
}


def attack_class(name: str) -> type[Attack]:
    """The class behind ``ATTACKS[name]`` (through a ``partial``)."""
    attack_options(name)  # an unknown name is an error
    entry = ATTACKS[name]
    return getattr(entry, "func", entry)


def abilities(name: str) -> Abilities:
    """What ``ATTACKS[name]`` can do, with the options its entry fixes (``apgd-dlr`` is untargeted)."""
    return attack_class(name).abilities(**getattr(ATTACKS[name], "keywords", {}))


AttackFactory = Callable[[nn.Module, float], Attack]

# Named cascades for ``evaluate(attacks=suite(name, norm))`` / ``advx eval --suite NAME``, one
# per threat model. A stage is an attack name, or ``(name, options)``: settings of the suite
# that options given to ``evaluate`` (``--steps``, ``--restarts``) override.
SUITES = {
    # After AutoAttack: APGD first, then attacks of other kinds on its survivors, chosen by
    # measurement against the reference AutoAttack on the PGD-trained (Linf) MNIST model
    # (scripts/bench_suite.py, scripts/bench_cascades.py; docs/results.md). Linf: restarts of
    # APGD-CE broke more than more target classes did, and only on images near the boundary
    # (near_restarts); Square is the check for gradient masking. L2 and L1: that model masks
    # the gradient of the CE loss (APGD-CE leaves 80 % in L2); the minimum-norm attacks are
    # not fooled, and FAB-T with 300 steps per target breaks images that the reference's
    # FAB-T (100 steps) breaks and ours at 100 does not; Square is the black-box check. An
    # image left standing near the boundary gets more runs (near_restarts) or more queries
    # (screen): it falls to a lucky start or a long search, and one lucky run of the
    # reference's must not leave it broken there and standing here; an image far from it gets
    # neither. Linf: the reference's Square (5,000 queries) breaks images of a TRADES-trained
    # model that 1,000 miss, and its APGD-T over 9 classes one of a Fashion-MNIST model that 3
    # miss (APGD-T's extra runs go to the 6 others). L1: the reference's Square (5,000
    # queries) breaks images of the Fashion-MNIST model that every gradient and minimum-norm
    # stage leaves, and its APGD-CE images near the boundary that 5 restarts miss. L2: Square
    # is not screened (images far from the boundary after 1,000 queries fall later).
    "strong": {
        "inf": [("apgd", {"restarts": 1, "near_restarts": 30, "near": 0.5}),
                ("apgd-t", {"n_target_classes": 3, "near_restarts": 6, "near": 0.5}),
                ("square", {"queries": 5000, "screen": 1000, "near": 0.5})],
        "2": [("apgd", {}), ("fab", {"steps": 50}), ("fmn", {"steps": 200}), ("fab-t", {"steps": 300}),
              ("square", {"queries": 5000, "near_restarts": 10})],
        "1": [("apgd", {"restarts": 5, "near_restarts": 30, "near": 0.5}), ("fab", {"steps": 300}),
              ("apgd-t", {"n_target_classes": 9}), ("fmn", {"steps": 1000}), ("fab-t", {"steps": 300}),
              ("square", {"queries": 5000})],
        # L0: sPGD (white-box, a few hundred gradient steps) breaks most images that fall, then
        # Sparse-RS with the query budget of its paper's MNIST comparison (10,000) searches
        # the survivors without gradients (scripts/bench_l0.py).
        "0": [("spgd", {}), ("sparse-rs", {"queries": 10000})],
        # Patches: Sparse-RS's patch search. Untargeted, 1,000 random patches break as many
        # images of the test model as 1,000 queries of the search do (tests/test_sparse_rs.py).
        "patch": [("sparse-rs", {"queries": 5000})],
        # Frames: Sparse-RS's frame search (black-box only; the frame's ball is a box, so a
        # masked gradient attack would also apply, and is not built yet; docs/results.md).
        "frame": [("sparse-rs", {"queries": 5000})],
    },
}


def suite(name: str, norm: str = "inf") -> list:
    """The stages of ``SUITES[name]`` for the threat model ``norm``."""
    if name not in SUITES:
        raise InputError(f"suite must be one of {sorted(SUITES)}, got {name!r}")
    return list(SUITES[name][get_norm(norm).name])


def describe(stages: Sequence, overrides: dict | None = None) -> str:
    """``"apgd(restarts=1),apgd-t(...),..."``: a cascade in one line, for help and
    reports; a stage setting that ``overrides`` replaces (not ``None``) shows its new value."""
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}

    def one(stage):
        if callable(stage):
            return getattr(stage, "__name__", "attack")
        name, preset = _split(stage)
        settings = ", ".join(f"{k}={overrides.get(k, v)}" for k, v in preset.items())
        return f"{name}({settings})" if settings else name
    return ",".join(one(s) for s in stages)


def stage_name(stage) -> str:
    """The attack name of a stage (``"pgd"`` or ``("pgd", options)``)."""
    return _split(stage)[0]


def _split(stage) -> tuple[str, dict]:
    """``"pgd"`` -> ``("pgd", {})``; ``(name, options)`` stays as it is."""
    return stage if isinstance(stage, tuple) else (stage, {})


def attack_options(name: str):
    """The keyword arguments ``ATTACKS[name]`` takes; an unknown name is an error."""
    if name not in ATTACKS:
        raise InputError(f"attack must be one of {sorted(ATTACKS)}, got {name!r}")
    return inspect.signature(ATTACKS[name]).parameters


def build_attack(name: str, model: nn.Module, *, strict: bool = True, **options) -> Attack:
    """Build ``ATTACKS[name]`` with the options its constructor takes.

    Options that are ``None`` are left to the attack's defaults. An option the attack
    does not take is an error when ``strict`` (``advx attack``), and skipped otherwise
    (``advx eval``: ``steps`` applies to PGD, not to FGSM, in one cascade).
    """
    accepted = attack_options(name)
    kwargs = {}
    for key, value in options.items():
        if value is None:
            continue
        if key in accepted:
            kwargs[key] = value
        elif strict:
            raise InputError(f"{key} does not apply to attack {name!r}")
    return ATTACKS[name](model, **kwargs)


def check_options_apply(stages, options: dict) -> None:
    """An option given (not None) that no attack of the cascade takes is an error, not
    silently ignored. Factories are opaque: with one among the stages nothing is checked."""
    if any(callable(stage) for stage in stages):
        return
    names = [_split(stage)[0] for stage in stages]
    for key, value in options.items():
        if value is not None and not any(key in attack_options(name) for name in names):
            raise InputError(f"{key} does not apply to any attack of the cascade ({', '.join(names)})")


def stage_factory(stage, options) -> tuple[str, AttackFactory]:
    """``(name, factory)`` for a stage: an ``ATTACKS`` name, ``(name, preset options)``
    or a factory ``f(model, eps) -> Attack``. Options that are not ``None`` win over
    the preset."""
    if callable(stage):
        return getattr(stage, "__name__", "attack"), stage
    name, preset = _split(stage)
    accepted = attack_options(name)
    for key in preset:
        if key not in accepted:
            raise InputError(f"option {key!r} of stage {name!r} does not apply to that attack")
    merged = {**preset, **{k: v for k, v in options.items() if v is not None}}

    def make(model, eps):
        return build_attack(name, model, strict=False, eps=eps, **merged)

    return name, make
