#!/usr/bin/env python
"""Adversarially train the default CNN on MNIST (Linf eps 0.3) and save checkpoints/robust.pt.

    python scripts/train_robust.py                  # PGD-5 training, 6 epochs, eps warm-up 1 epoch
    python scripts/train_robust.py --adv trades     # any `advx train` option overrides the recipe
    python scripts/train_robust.py --resume         # continue an interrupted run

Then measure it: advx eval --checkpoint checkpoints/robust.pt --attacks pgd --eps 0.3 \\
                      --steps 50 --alpha 0.01 --restarts 10 --n 1000
"""

import sys

from advx.cli import main

RECIPE = ["--adv", "pgd", "--steps", "5", "--epochs", "6", "--warmup-epochs", "1"]

if __name__ == "__main__":
    sys.exit(main(["train", *RECIPE, *sys.argv[1:]]))
