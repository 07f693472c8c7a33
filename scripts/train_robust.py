#!/usr/bin/env python
"""Adversarially train the default CNN on MNIST (Linf eps 0.3) and save checkpoints/robust.pt.

    python scripts/train_robust.py                  # PGD-5 training, 6 epochs, eps warm-up 1 epoch
    python scripts/train_robust.py --adv trades     # any `advx train` option overrides the recipe
    python scripts/train_robust.py --resume         # continue an interrupted run

Then measure it: advx eval --checkpoint checkpoints/robust.pt --suite strong --eps 0.3 --n 1000
"""

import sys

from advx.cli import main

# PGD-5 (step 2.5 eps / 5, each sample stopped at its first adversarial iterate), 6 epochs,
# eps ramped over the first; the search in bf16 where the CPU runs it fast (decisions in
# fp32). 500 held-out images: the per-epoch probe and the final strong suite.
RECIPE = ["--adv", "pgd", "--steps", "5", "--epochs", "6", "--warmup-epochs", "1", "--holdout", "500",
          "--precision", "auto"]

if __name__ == "__main__":
    sys.exit(main(["train", *RECIPE, *sys.argv[1:]]))
