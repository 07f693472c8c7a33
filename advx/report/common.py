"""What every report shares: the environment that decided the numbers, JSON and CSV written
atomically, a two-column console table, the model's title and the first columns of a
``per_sample.csv`` row, and the layout of an output folder (no stale files)."""

from __future__ import annotations

import csv
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import torch

from advx.files import atomic_write


def environment() -> dict[str, str]:
    """Versions that decide the numbers (stored in every report)."""
    def version(package: str) -> str:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:  # a source tree that was never installed
            return "0+unknown"

    return {"advx": version("advx"), "torch": torch.__version__, "torchvision": version("torchvision"),
            "python": sys.version.split()[0], "platform": platform.platform(),
            "threads": str(torch.get_num_threads())}


def write_json(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write ``data`` as indented JSON, atomically (temp file + rename)."""
    with atomic_write(path, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")
    return Path(path)


def write_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Write rows (dicts with the same keys) as CSV, atomically."""
    with atomic_write(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def format_table(rows: Sequence[tuple[str, str]], title: str | None = None) -> str:
    """Two aligned columns, for the console."""
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * len(title)] if title else []
    lines += [f"{k:<{width}}  {v}" for k, v in rows]
    return "\n".join(lines)


def source_title(source: dict) -> str:
    """``"small (checkpoints/baseline.pt), mnist"``: a picture's title for the model ``source`` describes."""
    where = source.get("checkpoint")
    title = f"{source['model']} ({where}), {source['dataset']}" if where else f"{source['model']}, {source['dataset']}"
    smoothing = source.get("smoothing")
    return f"{title}, smoothed at sigma {smoothing['sigma']:g}" if smoothing else title


def label_columns(label: int, pred: int, classes: Sequence[str] | None) -> dict:
    """The first columns of a ``per_sample.csv`` row: label, its class name, clean prediction."""
    return {"label": label, **({"class": classes[label]} if classes else {}), "pred_clean": pred}


# What advx writes into an output folder. A run removes those of them that it did not
# write, so that a folder reused from an earlier run never shows stale files beside new ones.
OUTPUTS = ("report.json", "per_sample.csv", "curve.png", "examples.png", "perturbation.pt", "perturbations.pt")


def remove_stale(out: Path, written: list[str]) -> None:
    """Remove the advx outputs in ``out`` that this run did not write."""
    for name in OUTPUTS:
        if name not in written and (out / name).is_file():
            (out / name).unlink()
