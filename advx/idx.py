"""The four MNIST idx files: their names, the checksums and headers of their contents,
and the check that every read goes through (``contents``). A file is good when its
decompressed contents have the right md5, idx header and size; anything else is a
``DataCorruptError`` that names the file and says how to repair it."""

from __future__ import annotations

import gzip
import hashlib
import math
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

from advx.validate import AdvxError


RAW_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


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


SPECS = {
    "train-images-idx3-ubyte": Spec("6bbc9ace898e44ae57da46a324031adb", 2051, (60000, 28, 28)),
    "train-labels-idx1-ubyte": Spec("a25bea736e30d166cdddb491f175f624", 2049, (60000,)),
    "t10k-images-idx3-ubyte": Spec("2646ac647ad5339dbf082846283269ea", 2051, (10000, 28, 28)),
    "t10k-labels-idx1-ubyte": Spec("27ae3e4e09519cfbb04c329615203637", 2049, (10000,)),
}
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
REPAIR = (
    "repair it with: advx data --from DIR (a folder holding the original MNIST files), "
    "or delete it to download it again"
)
SOURCE_REPAIR = "nothing was copied; advx data --from needs a folder holding the original MNIST files"

class DataNotFoundError(AdvxError, FileNotFoundError):
    """The MNIST files are missing and could not be downloaded."""


class DataCorruptError(DataNotFoundError):
    """An MNIST file is present but its contents are wrong (truncated, altered, not MNIST)."""


def raw_dir(data_dir: Path) -> Path:
    return data_dir / "MNIST" / "raw"


def missing_message(data_dir: Path, cause: BaseException | None = None) -> str:
    raw = raw_dir(data_dir)
    lines = [
        f"MNIST not found in {raw.resolve()} and it could not be downloaded.",
        "Put these four files there (torchvision's raw layout):",
        *[f"  {raw / n}" for n in RAW_FILES],
        "or point --data-dir / ADVX_DATA at a folder that holds MNIST/raw/ with them,",
        "or run: advx data --from DIR (a folder holding them).",
    ]
    if cause is not None:
        first = str(cause).strip().splitlines()[:1]
        lines.append(f"(download failed: {type(cause).__name__}: {first[0] if first else ''})")
    return "\n".join(lines)


def corrupt(path: Path, found: str, repair: str) -> DataCorruptError:
    return DataCorruptError(f"MNIST file {path} is corrupt ({found}); {repair}")


def contents(path: Path, name: str, repair: str = REPAIR, blob: bytes | None = None) -> bytes:
    """The verified idx contents of ``path`` (``<name>`` or ``<name>.gz``); ``blob`` is
    the file's bytes when the caller already read them."""
    spec = SPECS[name]
    data = path.read_bytes() if blob is None else blob
    if path.name.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise corrupt(path, f"cannot be decompressed: {err}", repair) from None
    if len(data) >= 4:
        (magic,) = struct.unpack_from(">I", data)
        if magic != spec.magic:
            raise corrupt(path, f"idx magic number {magic}, expected {spec.magic}", repair)
    if len(data) >= spec.header:
        dims = struct.unpack_from(f">{len(spec.dims)}I", data, 4)
        if dims != spec.dims:
            raise corrupt(path, f"idx dimensions {dims}, expected {spec.dims}", repair)
    if len(data) != spec.size:
        raise corrupt(path, f"{len(data):,} bytes of contents, expected {spec.size:,}", repair)
    digest = hashlib.md5(data).hexdigest()
    if digest != spec.md5:
        raise corrupt(path, f"contents md5 {digest}, expected {spec.md5}", repair)
    return data


def present(raw: Path, name: str) -> Path | None:
    """The file that holds ``name``: its ``.gz`` when present, else the extracted file."""
    for path in (raw / f"{name}.gz", raw / name):
        if path.is_file():
            return path
    return None
