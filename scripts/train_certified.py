#!/usr/bin/env python
"""Train a network whose robustness is *proved*: IBP certified training (Gowal et al., 2018)
of the `cert` CNN on MNIST, saved to checkpoints/certified.pt.

    python scripts/train_certified.py                   # 20 epochs, about 8 minutes on 2 CPU cores
    python scripts/train_certified.py --adv crown-ibp   # any `advx train` option overrides the recipe
    python scripts/train_certified.py --resume          # continue an interrupted run

The recipe: one clean epoch, then eps ramps from 0 to 0.15 over 8 epochs while the weight
of the clean loss goes from 1 to 0.5; training at eps 0.15 leaves room for certifying at
0.1. The search runs in bf16; every certificate is computed in fp32 afterwards:

    advx certify --checkpoint checkpoints/certified.pt --eps 0.1 --method crown
    advx eval --checkpoint checkpoints/certified.pt --suite strong --eps 0.1 --n 1000 --certify crown
"""

import sys

from advx.cli import main

RECIPE = ["--model", "cert", "--adv", "ibp", "--eps", "0.15", "--epochs", "20", "--ramp-start", "1",
          "--warmup-epochs", "8", "--kappa", "0.5", "--batch-size", "256", "--lr", "2e-3", "--precision", "bf16",
          "--checkpoint", "checkpoints/certified.pt"]

if __name__ == "__main__":
    sys.exit(main(["train", *RECIPE, *sys.argv[1:]]))
