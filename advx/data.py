"""The datasets in memory (MNIST, Fashion-MNIST: ``advx.datasets``), pixels in [0, 1].

Each split is read once into one tensor and batches are taken by slicing: no
per-sample PIL transform, and no ``Normalize`` (so that an attack's epsilon is
always in pixel units; a model that expects normalized input is wrapped in
``advx.models.Normalized``).

Where the data live: ``data_dir`` argument, else the ``ADVX_DATA`` environment
variable (an empty value counts as unset), else ``./data``. A dataset's files go in
``<data_dir>/<folder>/raw/`` (torchvision's layout: ``MNIST/raw``, ``FashionMNIST/raw``):
for each of the four idx files the loader reads ``<name>.gz`` when present (decompressed
in memory), else the extracted ``<name>``. Every file is checked before use: the md5 of
its decompressed contents (so a recompressed ``.gz`` is fine: two of Debian's
Fashion-MNIST files are), its idx header and its size. A corrupt file is an error naming
it and saying how to repair it; it is never silently replaced. Reading writes nothing,
so a read-only folder (a shared copy, CI) is read in place.

``prepare`` fills the folder: from ``source`` (``advx data --from DIR``), verifying
every source file before copying any and replacing any target that differs, or else by
downloading the missing files (verified before they are moved into place). Every file
is written atomically.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Iterator, NamedTuple

import torch

from advx.datasets import Dataset, get_dataset
from advx.files import atomic_write
from advx.idx import (IDX_NAMES, RAW_FILES, SPLITS, DataCorruptError, DataNotFoundError, contents, missing_message,
                      present, raw_dir, source_repair)
from advx.validate import InputError

__all__ = ["RAW_FILES", "DataCorruptError", "DataNotFoundError", "Split", "default_data_dir", "iterate_batches",
           "load_dataset", "prepare"]

_CACHE: dict[tuple[str, str, str], "Split"] = {}


class Split(NamedTuple):
    """One split held in memory: ``x`` float32 [N, C, H, W] in [0, 1], ``y`` int64 [N]."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def head(self, n: int | None) -> "Split":
        """The first ``n`` samples (all of them when ``n`` is None)."""
        if n is None:
            return self
        if n < 1:
            raise InputError(f"n must be >= 1, got {n}")
        if n > len(self):
            raise InputError(f"n must be <= {len(self)}, got {n}")
        return Split(self.x[:n], self.y[:n])


def default_data_dir() -> Path:
    return Path(os.environ.get("ADVX_DATA") or "./data")


def _download(dataset: Dataset, raw: Path, names: list[str], data_dir: Path) -> None:
    """Download ``<name>.gz`` for each name from the mirrors torchvision lists for
    ``dataset`` into a temporary folder, verify it, then write it into ``raw`` atomically.
    Any failure is a ``DataNotFoundError`` listing the four files."""
    try:
        import torchvision.datasets as tv  # imported here: torchvision is slow to import
        from torchvision.datasets import utils as tv_utils

        mirrors = getattr(tv, dataset.source).mirrors
        with tempfile.TemporaryDirectory(prefix=f"advx-{dataset.name}-") as tmp:
            for name in names:
                filename = f"{name}.gz"
                got = Path(tmp) / filename
                errors: list[BaseException] = []
                for mirror in mirrors:
                    try:
                        tv_utils.download_url(f"{mirror}{filename}", tmp, filename=filename)
                        contents(got, name, dataset, f"downloaded from {mirror}")
                        break
                    except Exception as err:  # noqa: BLE001 - try the next mirror
                        errors.append(err)
                        got.unlink(missing_ok=True)
                else:
                    raise errors[0] if errors else RuntimeError(f"no {dataset.title} mirrors")
                with atomic_write(raw / filename) as f:
                    with open(got, "rb") as src:
                        shutil.copyfileobj(src, f)
    except Exception as err:  # noqa: BLE001 - every failure is the same clear error
        raise DataNotFoundError(missing_message(data_dir, dataset, err)) from None


def _to_split(images: bytes, labels: bytes) -> Split:
    n, rows, cols = struct.unpack_from(">3I", images, 4)
    # bytearray: torch.frombuffer wants a writable buffer; the float copy is made below anyway.
    pixels = torch.frombuffer(bytearray(images), dtype=torch.uint8, offset=16)
    x = pixels.view(n, 1, rows, cols).to(torch.float32).div_(255.0)
    y = torch.frombuffer(bytearray(labels), dtype=torch.uint8, offset=8).to(torch.int64)
    return Split(x, y)


def load_dataset(
    dataset: str | Dataset = "mnist",
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
) -> Split:
    """Load a split of a dataset into memory.

    Args:
        dataset: ``"mnist"`` or ``"fashion-mnist"`` (``advx.datasets.DATASETS``).
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        data_dir: folder holding ``<folder>/raw/`` (``MNIST/raw``, ``FashionMNIST/raw``);
            default ``ADVX_DATA`` or ``./data``.
        download: download the split's files when they are absent (a present but
            corrupt file is an error, never re-downloaded).

    Returns:
        ``Split(x, y)`` with ``x`` float32 [N, C, H, W] in [0, 1] (MNIST, Fashion-MNIST:
        [N, 1, 28, 28]) and ``y`` int64 [N].
        The tensors are shared between calls: treat them as read-only.

    Raises:
        DataNotFoundError: files missing and not downloaded.
        DataCorruptError: a file's contents are wrong; the message names it.

    Example:
        >>> test = load_dataset("fashion-mnist", "test")
        >>> test.x.shape, test.y.shape  # (torch.Size([10000, 1, 28, 28]), torch.Size([10000]))
    """
    dataset = get_dataset(dataset)
    if split not in SPLITS:
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    key = (dataset.name, str(data_dir.resolve()), split)
    if key in _CACHE:
        return _CACHE[key]

    raw = raw_dir(data_dir, dataset)
    names = SPLITS[split]
    missing = [n for n in names if present(raw, n) is None]
    if missing:
        if not download:
            raise DataNotFoundError(missing_message(data_dir, dataset))
        _download(dataset, raw, missing, data_dir)
    images, labels = (contents(present(raw, n), n, dataset) for n in names)
    _CACHE[key] = _to_split(images, labels)
    return _CACHE[key]


def _drop_corrupt_extracted(dataset: Dataset, raw: Path) -> None:
    """Delete extracted files that are corrupt while a good ``.gz`` is beside them
    (call only after the ``.gz`` files were verified): they are derived data, and the
    loader would fall back on them should the ``.gz`` go."""
    for name in IDX_NAMES:
        extracted = raw / name
        if (raw / f"{name}.gz").is_file() and extracted.is_file():
            try:
                contents(extracted, name, dataset)
            except DataCorruptError:
                try:
                    extracted.unlink()
                except OSError:
                    pass  # a read-only share: harmless, the .gz is read first


def source_folder(source: str | os.PathLike, dataset: Dataset) -> Path:
    """Where ``advx data --from source`` finds ``dataset``: ``<source>/<folder>/raw``, else
    ``<source>`` itself (a folder of the four ``.gz`` files)."""
    source = Path(source)
    return raw_dir(source, dataset) if raw_dir(source, dataset).is_dir() else source


def prepare(
    dataset: str | Dataset = "mnist",
    data_dir: str | os.PathLike | None = None,
    *,
    source: str | os.PathLike | None = None,
) -> Path:
    """Make ``<data_dir>/<folder>/raw`` hold the good files of ``dataset``; return that folder.

    With ``source`` (``<source>/<folder>/raw``, e.g. ``<source>/MNIST/raw``, or ``<source>``
    itself holding the four ``.gz`` files): every source file is verified before any is
    copied (a bad one is an error naming it, and nothing in ``data_dir`` changes); then each
    target that differs from its source (missing, corrupt, other bytes) is replaced
    atomically. Without ``source``, missing files are downloaded. Both splits are then
    read afresh, which verifies every file; corrupt extracted files beside good ``.gz``
    files are deleted."""
    dataset = get_dataset(dataset)
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    raw = raw_dir(data_dir, dataset)
    if source is not None:
        src = source_folder(source, dataset)
        missing = [n for n in RAW_FILES if not (src / n).is_file()]
        if missing:
            raise DataNotFoundError(
                f"source: {src} lacks {', '.join(missing)} (expected the four {dataset.title} .gz files)"
            )
        blobs = {}
        for filename in RAW_FILES:
            path = src / filename
            blob = path.read_bytes()
            contents(path, filename[: -len(".gz")], dataset, source_repair(dataset), blob=blob)
            blobs[filename] = blob
        try:
            for filename, blob in blobs.items():
                target = raw / filename
                if target.is_file() and target.read_bytes() == blob:
                    continue
                with atomic_write(target) as f:
                    f.write(blob)
        except OSError as err:
            raise DataNotFoundError(f"cannot write the {dataset.title} files into {raw}: {err}") from None
    for split in SPLITS:  # afresh: the files may have changed since a cached load
        _CACHE.pop((dataset.name, str(data_dir.resolve()), split), None)
        load_dataset(dataset, split, data_dir)
    _drop_corrupt_extracted(dataset, raw)
    return raw


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches by indexing; shuffled when a ``generator`` is given."""
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    n = len(y)
    if generator is None:
        for start in range(0, n, batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
        return
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        yield x[idx], y[idx]
