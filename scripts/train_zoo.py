#!/usr/bin/env python
"""Retrain a model of the zoo from its card (advx/zoo/cards.json), by the command it records.

    python scripts/train_zoo.py --name mnist-robust            # -> checkpoints/zoo/mnist-robust.pt
    python scripts/train_zoo.py --name mnist-robust --quick    # 1 epoch on 2,000 images: the recipe runs
    python scripts/train_zoo.py --list                         # every entry and its command
    python scripts/train_zoo.py --name mnist-robust --install  # retrain, then ship it (a maintainer's step)

The card's command is run as it stands (``python scripts/<script> <args> --checkpoint OUT``), so
the result is the model a user gets from that command. ``--install`` copies the checkpoint into
advx/zoo/weights/ (its weights in float16: ``store``) and writes its SHA-256, size, training
time, commit and date into the card; it refuses to replace a shipped model unless ``--replace``
is given (a shipped model is never overwritten by accident), and never installs a ``--quick``
one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["--epochs", "1", "--train-size", "2000"]  # the short version the tests run


def quick(entry: dict) -> list[str]:
    """The options that shorten ``entry``'s run (a smaller held-out set where it has one)."""
    script = entry["train"]["script"]
    return (QUICK + ([] if script == "train_baseline.py" else ["--holdout", "100"])
            + (["--final-n", "20"] if script == "train_robust.py" else []))


def command(entry: dict, out: str) -> list[str]:
    """The argv that trains ``entry`` into ``out``."""
    train = entry["train"]
    return ["python", f"scripts/{train['script']}", *train["args"], "--checkpoint", out]


def store(source: Path, target: Path) -> None:
    """The checkpoint ``source`` as the zoo ships it, at ``target``: its floating-point weights
    in float16 (half the size: the eight models fit the repository's 10 MB; each weight moves
    by at most 2^-11 of itself, and every figure of the zoo is measured on the stored model),
    the rest as it was; refused if a weight falls outside float16's range."""
    import torch

    from advx.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(source)
    weights = ckpt["state_dict"]
    big = [k for k, v in weights.items() if v.is_floating_point() and v.abs().max() > torch.finfo(torch.float16).max]
    if big:
        raise SystemExit(f"train_zoo.py: {source} has weights beyond float16's range ({', '.join(big[:3])})")
    half = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    config = {**ckpt["config"], "stored_as": "float16"}
    save_checkpoint(target, half, model_name=ckpt["model_name"], dataset=ckpt["dataset"],
                    input_shape=ckpt["input_shape"], config=config, metrics=ckpt["metrics"])


def shown(argv: list[str]) -> str:
    return " ".join(argv)


def main(argv: list[str] | None = None) -> int:
    from advx import zoo
    from advx.datasets import get_dataset
    from advx.files import atomic_write

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog="Each card records the command, seed, training data checksums and time.")
    p.add_argument("--name", default=None, help="the zoo entry to retrain (advx zoo lists them)")
    p.add_argument("--list", action="store_true", help="print every entry's training command and exit")
    p.add_argument("--out", default=None, help="where the checkpoint goes (default: checkpoints/zoo/NAME.pt)")
    p.add_argument("--quick", action="store_true", help="a short run (1 epoch, 2,000 training images): the "
                                                        "recipe works, the model is not the zoo's")
    p.add_argument("--install", action="store_true", help="ship the result: copy it into advx/zoo/weights "
                                                          "and update the card")
    p.add_argument("--replace", action="store_true", help="with --install: replace the shipped model")
    args = p.parse_args(argv)
    cards = zoo.cards()
    if args.list:
        for name, entry in cards.items():
            print(f"{name}: {shown(command(entry, f'checkpoints/zoo/{name}.pt'))}")
        return 0
    if args.name is None:
        p.error("--name is required (or --list)")
    try:
        entry = zoo.card(args.name)
    except zoo.ZooError as err:
        p.error(f"--name: {err}")
    if args.install and args.quick:
        p.error("--install cannot go with --quick (a short run is not the zoo's model)")
    shipped = zoo.HERE / entry["file"]
    if args.install and shipped.is_file() and not args.replace:
        p.error(f"--install: {shipped} is shipped already; give --replace to replace it")
    out = Path(args.out or f"checkpoints/zoo/{entry['name']}.pt")
    if out.exists() and not out.is_file():
        p.error(f"--out: {out} is a folder, expected a checkpoint file")
    recipe = command(entry, str(out)) + (quick(entry) if args.quick else [])
    print(f"training {entry['name']}: {shown(recipe)}", flush=True)
    argv_run = [sys.executable, *recipe[1:]]
    began = time.perf_counter()
    code = subprocess.call(argv_run, cwd=ROOT)
    seconds = time.perf_counter() - began
    if code != 0:
        print(f"train_zoo.py: the training command failed (exit {code}); nothing installed", file=sys.stderr)
        return code
    print(f"trained {entry['name']} in {seconds:.1f} s -> {out}")
    if not args.install:
        return 0
    target = zoo.HERE / entry["file"]
    store(ROOT / out if not out.is_absolute() else out, target)
    data = get_dataset(entry["dataset"])
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    entry["train"].update({
        "command": shown(command(entry, f"checkpoints/zoo/{entry['name']}.pt")),
        "seconds": round(seconds, 1), "machine": "2 CPU cores",
        "commit": commit.stdout.strip() or "unknown", "date": datetime.date.today().isoformat(),
        "data_md5": {k: v for k, v in data.md5.items() if k.startswith("train")},
    })
    entry.update({"sha256": zoo.file_sha256(target), "bytes": target.stat().st_size})
    cards = zoo.cards()  # read again: another entry may have been installed meanwhile
    cards[entry.pop("name")] = entry
    with atomic_write(zoo.CARDS, "w") as f:
        f.write(json.dumps(cards, indent=2) + "\n")
    print(f"installed {target} ({entry['bytes']:,} bytes, SHA-256 {entry['sha256'][:16]}...); card updated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
