"""Attacks: each takes dL/dX with the weights frozen (see ``base.Attack``).

``ATTACKS`` maps a CLI name to a class, or to a ``functools.partial`` of one that
fixes the objective (``inspect.signature`` works on both, which the CLI relies on).
"""

from functools import partial

from advx.attacks.apgd import APGD
from advx.attacks.base import Attack, AttackResult, frozen
from advx.attacks.cw import CW
from advx.attacks.deepfool import DeepFool
from advx.attacks.fgsm import FGSM
from advx.attacks.mifgsm import MIFGSM
from advx.attacks.pgd import PGD
from advx.attacks.square import Square

ATTACKS = {
    "fgsm": FGSM,
    "pgd": PGD,
    "mifgsm": MIFGSM,
    "apgd": APGD,                                        # APGD-CE
    "apgd-dlr": partial(APGD, loss="dlr"),               # APGD-DLR
    "apgd-t": partial(APGD, loss="dlr-targeted"),        # APGD-T: targeted DLR over the top classes
    "cw": CW,
    "deepfool": DeepFool,
    "square": Square,
}

__all__ = ["Attack", "AttackResult", "frozen", "FGSM", "PGD", "MIFGSM", "APGD", "CW", "DeepFool",
           "Square", "ATTACKS"]
