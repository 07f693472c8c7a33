"""MNIST in memory, pixels in [0, 1].

Each split is read once through ``torchvision.datasets.MNIST`` into one tensor
and batches are taken by slicing: no per-sample PIL transform, and no
``Normalize`` (so that an attack's epsilon is always in pixel units).

Where the data live: ``data_dir`` argument, else the ``ADVX_DATA`` environment
variable, else ``./data``. The four original ``.gz`` files go in
``<data_dir>/MNIST/raw/``. If that folder is read-only (a shared copy, CI),
the files are copied into a writable cache (``ADVX_CACHE`` or
``~/.cache/advx``) and extracted there; torchvision checks their md5s.
"""

from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import Iterator, NamedTuple

import torch

RAW_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)

_CACHE: dict[tuple[str, str], "MNISTSplit"] = {}


class DataNotFoundError(FileNotFoundError):
    """The MNIST files are missing and could not be downloaded."""


class MNISTSplit(NamedTuple):
    """One split held in memory: ``x`` float32 [N, 1, 28, 28] in [0, 1], ``y`` int64 [N]."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int | None) -> "MNISTSplit":
        """The first ``n`` samples (all of them when ``n`` is None)."""
        if n is None:
            return self
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        return MNISTSplit(self.x[:n], self.y[:n])


def default_data_dir() -> Path:
    return Path(os.environ.get("ADVX_DATA", "./data"))


def default_cache_dir() -> Path:
    return Path(os.environ.get("ADVX_CACHE", Path.home() / ".cache" / "advx"))


def _extracted(name: str) -> str:
    return name[: -len(".gz")]


def _has_files(raw: Path, names) -> bool:
    return all((raw / n).is_file() for n in names)


def _missing_message(data_dir: Path, cause: BaseException | None = None) -> str:
    raw = data_dir / "MNIST" / "raw"
    lines = [
        f"MNIST not found in {raw.resolve()} and it could not be downloaded.",
        "Put these four files there (torchvision's raw layout):",
        *[f"  {raw / n}" for n in RAW_FILES],
        "or point --data-dir / ADVX_DATA at a folder that holds MNIST/raw/ with them.",
    ]
    if cause is not None:
        first = str(cause).strip().splitlines()[:1]
        lines.append(f"(download failed: {type(cause).__name__}: {first[0] if first else ''})")
    return "\n".join(lines)


def _writable(folder: Path) -> bool:
    # Permission bits, not os.access: root passes os.access on a read-only share.
    return bool(folder.stat().st_mode & stat.S_IWUSR) and os.access(folder, os.W_OK)


def _check_md5(raw: Path, resources) -> None:
    """A present but corrupt .gz file is named, not silently re-downloaded."""
    from torchvision.datasets.utils import check_integrity

    if _has_files(raw, [_extracted(n) for n in RAW_FILES]):
        return
    for url, md5 in resources:
        path = raw / url.rsplit("/", 1)[-1]
        if path.is_file() and not check_integrity(str(path), md5):
            raise DataNotFoundError(
                f"MNIST file {path} is corrupt (md5 differs from {md5}); replace it with the original"
            )


def _resolve_root(data_dir: Path) -> Path:
    """Return a root whose MNIST/raw torchvision can read and, if needed, write."""
    raw = data_dir / "MNIST" / "raw"
    if _has_files(raw, [_extracted(n) for n in RAW_FILES]):
        return data_dir  # already extracted: torchvision only reads
    if not _has_files(raw, RAW_FILES):
        return data_dir  # nothing usable here: torchvision may download
    if _writable(raw):
        return data_dir  # torchvision verifies the md5s and extracts in place
    cache = default_cache_dir()
    cache_raw = cache / "MNIST" / "raw"
    cache_raw.mkdir(parents=True, exist_ok=True)
    for name in RAW_FILES:
        target = cache_raw / name
        if not target.exists() or target.stat().st_size != (raw / name).stat().st_size:
            tmp = target.with_suffix(".part")
            shutil.copyfile(raw / name, tmp)
            os.replace(tmp, target)
    return cache


def prepare_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    source: str | os.PathLike | None = None,
) -> Path:
    """Make ``<data_dir>/MNIST/raw`` hold the four ``.gz`` files, copied from
    ``<source>/MNIST/raw`` (or ``<source>`` itself) when given, else downloaded by
    torchvision. Returns the raw folder. Both splits are then loaded once, which
    checks the md5s."""
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    raw = data_dir / "MNIST" / "raw"
    if source is not None:
        source = Path(source)
        src = source / "MNIST" / "raw" if (source / "MNIST" / "raw").is_dir() else source
        missing = [n for n in RAW_FILES if not (src / n).is_file()]
        if missing:
            raise DataNotFoundError(
                f"source: {src} lacks {', '.join(missing)} (expected the four MNIST .gz files)"
            )
        raw.mkdir(parents=True, exist_ok=True)
        for name in RAW_FILES:
            target = raw / name
            if not target.exists() or target.stat().st_size != (src / name).stat().st_size:
                shutil.copyfile(src / name, target.with_suffix(".part"))
                os.replace(target.with_suffix(".part"), target)
                target.chmod(0o644)
    for split in ("train", "test"):
        load_mnist(split, data_dir)
    return raw


def load_mnist(
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
) -> MNISTSplit:
    """Load an MNIST split into memory.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        data_dir: folder holding ``MNIST/raw/``; default ``ADVX_DATA`` or ``./data``.
        download: let torchvision download the files when they are absent.

    Returns:
        ``MNISTSplit(x, y)`` with ``x`` float32 [N, 1, 28, 28] in [0, 1] and ``y`` int64 [N].
        The tensors are shared between calls: treat them as read-only.

    Example:
        >>> test = load_mnist("test")
        >>> test.x.shape, test.y.shape  # (torch.Size([10000, 1, 28, 28]), torch.Size([10000]))
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    key = (str(data_dir.resolve()), split)
    if key in _CACHE:
        return _CACHE[key]

    from torchvision.datasets import MNIST  # imported here: torchvision is slow to import

    root = _resolve_root(data_dir)
    raw = root / "MNIST" / "raw"
    have_any = _has_files(raw, RAW_FILES) or _has_files(raw, [_extracted(n) for n in RAW_FILES])
    if not have_any and not download:
        raise DataNotFoundError(_missing_message(data_dir))
    _check_md5(raw, MNIST.resources)
    try:
        ds = MNIST(str(root), train=(split == "train"), download=download)
    except (RuntimeError, OSError) as err:
        raise DataNotFoundError(_missing_message(data_dir, err)) from None
    x = ds.data.unsqueeze(1).to(torch.float32).div_(255.0)
    y = ds.targets.to(torch.int64)
    _CACHE[key] = MNISTSplit(x, y)
    return _CACHE[key]


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches by indexing; shuffled when a ``generator`` is given."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(y)
    if generator is None:
        for start in range(0, n, batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
        return
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]
