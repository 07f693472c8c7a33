#!/usr/bin/env python
"""Train the default baseline CNN on MNIST and save it where `advx attack` looks for it.

    python scripts/train_baseline.py                  # -> checkpoints/baseline.pt
    python scripts/train_baseline.py --epochs 2 --data-dir ../shared/data

Same options as `advx train` (see --help).
"""

import sys

from advx.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
