"""The four idx files of a dataset: the checksums and headers of their contents, and the
check that every read goes through (``contents``). A file is good when its decompressed
contents have the right md5, idx header and size; anything else is a ``DataCorruptError``
that names the file and says how to repair it."""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

from advx.datasets import DATASETS, IDX_NAMES, LABEL_FILES, RAW_FILES, SPLITS, Dataset
from advx.validate import AdvxError

__all__ = ["IDX_NAMES", "RAW_FILES", "SPLITS", "DataCorruptError", "DataNotFoundError", "contents", "present",
           "raw_dir", "spec"]


class Spec(NamedTuple):
    md5: str  # of the decompressed contents
    magic: int  # idx magic number: 2049 labels (uint8, 1 dim), 2051 images (uint8, 3 dims)
    dims: tuple[int, ...]

    @property
    def header(self) -> int:
        return 4 + 4 * len(self.dims)

    @property
    def size(self) -> int:
        return self.header + math.prod(self.dims)


def spec(dataset: Dataset, name: str) -> Spec:
    """What the idx file ``name`` of ``dataset`` must hold: grey images of its shape, or
    labels, as many as its split has."""
    split = next(s for s, files in SPLITS.items() if name in files)
    n = dataset.sizes[split]
    if name in LABEL_FILES.values():
        return Spec(dataset.md5[name], 2049, (n,))
    return Spec(dataset.md5[name], 2051, (n, *dataset.shape[1:]))


def repair(dataset: Dataset) -> str:
    return (f"repair it with: advx data --from DIR --dataset {dataset.name} (a folder holding the original "
            f"{dataset.title} files), or delete it to download it again")


def source_repair(dataset: Dataset) -> str:
    return (f"nothing was copied; advx data --from needs a folder holding the original "
            f"{dataset.title} files")


class DataNotFoundError(AdvxError, FileNotFoundError):
    """A dataset's files are missing and could not be downloaded."""


class DataCorruptError(DataNotFoundError):
    """A dataset's file is present but its contents are wrong (truncated, altered, another dataset)."""


def raw_dir(data_dir: Path, dataset: Dataset) -> Path:
    return data_dir / dataset.folder / "raw"


def missing_message(data_dir: Path, dataset: Dataset, cause: BaseException | None = None) -> str:
    raw = raw_dir(data_dir, dataset)
    lines = [
        f"{dataset.title} not found in {raw.resolve()} and it could not be downloaded.",
        "Put these four files there (torchvision's raw layout):",
        *[f"  {raw / n}" for n in RAW_FILES],
        f"or point --data-dir / ADVX_DATA at a folder that holds {dataset.folder}/raw/ with them,",
        f"or run: advx data --from DIR --dataset {dataset.name} (a folder holding them).",
    ]
    if cause is not None:
        first = str(cause).strip().splitlines()[:1]
        lines.append(f"(download failed: {type(cause).__name__}: {first[0] if first else ''})")
    return "\n".join(lines)


def contents(path: Path, name: str, dataset: Dataset, repair_hint: str | None = None,
             blob: bytes | None = None) -> bytes:
    """The verified idx contents of ``path`` (``<name>`` or ``<name>.gz``) of ``dataset``;
    ``blob`` is the file's bytes when the caller already read them."""
    expected, hint = spec(dataset, name), repair_hint or repair(dataset)

    def corrupt(found: str) -> DataCorruptError:
        return DataCorruptError(f"{dataset.title} file {path} is corrupt ({found}); {hint}")

    data = path.read_bytes() if blob is None else blob
    if path.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise corrupt(f"cannot be decompressed: {err}") from None
    if len(data) >= 4:
        (magic,) = struct.unpack_from(">I", data)
        if magic != expected.magic:
            raise corrupt(f"idx magic number {magic}, expected {expected.magic}")
    if len(data) >= expected.header:
        dims = struct.unpack_from(f">{len(expected.dims)}I", data, 4)
        if dims != expected.dims:
            raise corrupt(f"idx dimensions {dims}, expected {expected.dims}")
    if len(data) != expected.size:
        raise corrupt(f"{len(data):,} bytes of contents, expected {expected.size:,}")
    digest = hashlib.md5(data).hexdigest()
    if digest != expected.md5:
        other = [d.title for d in DATASETS.values() if d is not dataset and d.md5[name] == digest]
        raise corrupt(f"contents md5 {digest}, expected {expected.md5}"
                      + (f": these are the {other[0]} files" if other else ""))
    return data


def present(raw: Path, name: str) -> Path | None:
    """The file that holds ``name``: its ``.gz`` when present, else the extracted file."""
    for path in (raw / f"{name}.gz", raw / name):
        if path.is_file():
            return path
    return None
