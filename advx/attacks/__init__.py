"""Attacks: each takes dL/dX with the weights frozen (see ``base.Attack``); one file per
attack, and ``registry.ATTACKS`` names them."""

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
from advx.attacks.registry import ATTACKS, SUITES
from advx.attacks.results import AttackResult
from advx.attacks.sigma_zero import SigmaZero
from advx.attacks.sparse_rs import SparseRS
from advx.attacks.spgd import SparsePGD
from advx.attacks.square import Square
from advx.modes import frozen

__all__ = ["Attack", "AttackResult", "frozen", "FGSM", "PGD", "MIFGSM", "APGD", "CW", "DeepFool", "FAB", "FMN",
           "Square", "SparseRS", "SparsePGD", "SigmaZero", "HopSkipJump", "ATTACKS", "SUITES"]
