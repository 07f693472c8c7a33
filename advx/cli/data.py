"""``advx data``: put MNIST in the data folder and check it."""

from __future__ import annotations

import argparse

from advx.data import load_mnist, prepare_mnist


def add(sub) -> None:
    dp = sub.add_parser("data", help="put MNIST in the data folder and check it",
                        description="Copy the four MNIST .gz files from --from (or download them with "
                                    "torchvision), verify their contents and print the split sizes. Every "
                                    "source file is checked before any is copied; a missing or corrupt "
                                    "file in the data folder is replaced (this is the repair).")
    dp.add_argument("--from", dest="source", default=None, metavar="DIR",
                    help="folder holding MNIST/raw/*.gz (or the .gz files themselves) to copy from "
                         "(default: download)")
    dp.add_argument("--data-dir", default=None,
                    help="where to put them (default: $ADVX_DATA or ./data)")
    dp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raw = prepare_mnist(args.data_dir, source=args.source)
    train, test = load_mnist("train", args.data_dir), load_mnist("test", args.data_dir)
    print(f"MNIST ready in {raw}: {len(train):,} training and {len(test):,} test images")
    return 0
