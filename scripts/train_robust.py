#!/usr/bin/env python
"""Adversarially train the default CNN on MNIST (Linf eps 0.3), by recipe.

    python scripts/train_robust.py                      # --recipe cpu-short: about 15 minutes on 2 CPU cores
    python scripts/train_robust.py --recipe cpu-long    # about 32 minutes, a little stronger
    python scripts/train_robust.py --adv trades         # any `advx train` option overrides the recipe
    python scripts/train_robust.py --resume             # continue an interrupted run

Recipes (``--recipe NAME``):

    cpu-short  PGD-5 (step 2.5 eps / 5, each sample stopped at its first adversarial iterate),
               6 epochs, eps ramped over the first -> checkpoints/robust.pt
    cpu-long   the same for 20 epochs, eps ramped over 2, with an exponential moving average of
               the weights (decay 0.999), the averaged network measured and kept
               -> checkpoints/robust-long.pt. From about the 12th epoch the model learns to beat
               the early-stopped PGD-5: the collapse guard stops the run (epoch 16 with seed 0)
               and the best held-out epoch is kept (epoch 7)

Both search in bf16 where the CPU runs it fast (decisions in fp32) and hold out 500 training
images: the per-epoch probe picks the best epoch, and the strong suite measures it at the end.

Then measure it: advx eval --checkpoint checkpoints/robust.pt --suite strong --eps 0.3 --n 1000
"""

import sys

from advx.cli import run_recipe

_PGD5 = ["--adv", "pgd", "--steps", "5", "--holdout", "500", "--precision", "auto"]
RECIPES = {
    "cpu-short": _PGD5 + ["--epochs", "6", "--warmup-epochs", "1"],
    "cpu-long": _PGD5 + ["--epochs", "20", "--warmup-epochs", "2", "--ema", "0.999",
                         "--checkpoint", "checkpoints/robust-long.pt"],
}


def run(argv: list[str]) -> int:
    return run_recipe(argv, RECIPES, script="train_robust.py", doc=__doc__, default="cpu-short")


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
