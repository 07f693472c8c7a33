"""Attacks: each takes dL/dX with the weights frozen (see ``base.Attack``)."""

from advx.attacks.base import Attack, AttackResult, frozen
from advx.attacks.fgsm import FGSM
from advx.attacks.pgd import PGD

ATTACKS = {"fgsm": FGSM, "pgd": PGD}

__all__ = ["Attack", "AttackResult", "frozen", "FGSM", "PGD", "ATTACKS"]
