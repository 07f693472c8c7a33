"""``advx data``: put the datasets in the data folder and check them."""

from __future__ import annotations

import argparse
from pathlib import Path

from advx.data import load_dataset, prepare, source_folder
from advx.datasets import DATASET_NAMES, DATASETS, RAW_FILES, get_dataset
from advx.idx import DataCorruptError, DataNotFoundError, contents, raw_dir


def add(sub) -> None:
    dp = sub.add_parser("data", help="put MNIST and Fashion-MNIST in the data folder and check them",
                        description="Copy each dataset's four .gz files from --from (or download them with "
                                    "torchvision), verify their contents and print the split sizes. Every "
                                    "source file is checked before any is copied; a missing or corrupt "
                                    "file in the data folder is replaced (this is the repair).")
    dp.add_argument("--from", dest="source", default=None, metavar="DIR",
                    help="folder holding MNIST/raw/*.gz and/or FashionMNIST/raw/*.gz (or one dataset's .gz "
                         "files themselves) to copy from (default: download)")
    dp.add_argument("--dataset", default="all", choices=["all", *DATASET_NAMES],
                    help="which to prepare (default: all; with --from, all that DIR holds)")
    dp.add_argument("--data-dir", default=None,
                    help="where to put them (default: $ADVX_DATA or ./data)")
    dp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = [args.dataset] if args.dataset != "all" else _datasets_in(args.source)
    for name in names:
        raw = prepare(name, args.data_dir, source=args.source)
        train, test = load_dataset(name, "train", args.data_dir), load_dataset(name, "test", args.data_dir)
        print(f"{get_dataset(name).title} ready in {raw}: {len(train):,} training and {len(test):,} test images")
    return 0


def _datasets_in(source: str | None) -> list[str]:
    """Every dataset (no source: download them all), or those ``source`` holds: in its
    ``<folder>/raw`` folders, else as the four ``.gz`` files themselves (told apart by
    their label files)."""
    if source is None:
        return list(DATASETS)
    found = [d.name for d in DATASETS.values() if raw_dir(Path(source), d).is_dir()]
    if found:
        return found
    for d in DATASETS.values():
        labels = source_folder(source, d) / RAW_FILES[1]
        try:
            contents(labels, labels.name[: -len(".gz")], d)
            return [d.name]
        except (DataCorruptError, OSError):
            continue
    raise DataNotFoundError(f"--from: {source} holds none of the datasets: expected "
                            + " or ".join(f"{d.folder}/raw/" for d in DATASETS.values())
                            + f" with the four .gz files ({', '.join(RAW_FILES)}), or those files themselves")
