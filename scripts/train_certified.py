#!/usr/bin/env python
"""Train a network whose robustness is *proved* (certified training), by recipe.

    python scripts/train_certified.py                      # --recipe cpu-0.1: about 8 minutes on 2 CPU cores
    python scripts/train_certified.py --recipe cpu-0.3     # for eps 0.3
    python scripts/train_certified.py --adv sabr           # any `advx train` option overrides the recipe
    python scripts/train_certified.py --resume             # continue an interrupted run

Recipes (``--recipe NAME``):

    cpu-0.1  IBP on the `cert` CNN at eps 0.15 (room for certifying 0.1): one clean epoch, eps
             ramped over 8 while the clean loss's weight goes from 1 to 0.5, 20 epochs, bf16
             -> checkpoints/certified.pt
    cpu-0.3  the same at eps 0.4 -> checkpoints/certified-03.pt
    gpu-0.1  SABR (lambda 0.4) on CNN7 at eps 0.1, 70 epochs, eps ramped over 20, batch 256,
             lr 5e-4: the settings of Müller et al. (2023) as far as `advx train` takes them
             (its learning rate is one-cycle, not their step decay); untested here
    gpu-0.3  the same with lambda 0.6 at eps 0.3; untested here

Every certificate is computed in fp32 afterwards:

    advx certify --checkpoint checkpoints/certified.pt --eps 0.1 --method crown
    advx eval --checkpoint checkpoints/certified.pt --suite strong --eps 0.1 --n 1000 --certify crown
"""

import sys

from advx.cli import run_recipe

_CPU = ["--model", "cert", "--adv", "ibp", "--epochs", "20", "--ramp-start", "1", "--warmup-epochs", "8",
        "--kappa", "0.5", "--batch-size", "256", "--lr", "2e-3", "--precision", "bf16"]
_GPU = ["--model", "cnn7", "--adv", "sabr", "--epochs", "70", "--ramp-start", "1", "--warmup-epochs", "20",
        "--kappa", "0", "--batch-size", "256", "--lr", "5e-4", "--device", "cuda", "--precision", "bf16"]
RECIPES = {
    "cpu-0.1": _CPU + ["--eps", "0.15", "--checkpoint", "checkpoints/certified.pt"],
    "cpu-0.3": _CPU + ["--eps", "0.4", "--checkpoint", "checkpoints/certified-03.pt"],
    "gpu-0.1": _GPU + ["--eps", "0.1", "--box-share", "0.4", "--checkpoint", "checkpoints/certified-cnn7.pt"],
    "gpu-0.3": _GPU + ["--eps", "0.3", "--box-share", "0.6", "--checkpoint", "checkpoints/certified-cnn7-03.pt"],
}


def run(argv: list[str]) -> int:
    return run_recipe(argv, RECIPES, script="train_certified.py", doc=__doc__, default="cpu-0.1")


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
