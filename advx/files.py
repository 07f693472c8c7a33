"""Files advx writes: atomically, with the usual permissions, and into paths checked up front.

- ``atomic_write``: a crash mid-write never leaves a half-written file in place, and the
  temp file of a killed writer is removed by the next write or read of the same path.
- ``check_output_dir`` / ``check_output_file``: a bad output path is found before the
  work that would fill it, not after;
- ``content_hash``: the SHA-256 a file of tensors carries, so that a changed byte is found
  when it is read rather than loaded as other numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

import torch

from advx.validate import InputError


def _temp_prefix(path: Path) -> str:
    """Temp files of ``path`` are ``.<name>.<pid>.<random>.tmp`` beside it."""
    return f".{path.name}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete the temp files that writers of ``path`` left behind when they were killed
    (their process is gone); a live writer's temp file is left alone. Returns the removed."""
    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    prefix = _temp_prefix(path)
    for tmp in path.parent.glob(f"{_glob_escape(prefix)}*.tmp"):
        pid = tmp.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and _pid_alive(int(pid)):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except FileNotFoundError:
            pass
    return removed


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _default_mode() -> int:
    """What ``open(path, "w")`` would give a new file: 0o666 less the umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """Open a temp file beside ``path``; on success fsync it and rename it over ``path``,
    on any error (KeyboardInterrupt included) delete it and leave ``path`` as it was.
    The new file gets the permissions of the file it replaces, else the umask's default
    (not the owner-only 0o600 of a bare temp file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    permissions = path.stat().st_mode & 0o7777 if path.is_file() else _default_mode()
    fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{os.getpid()}.", suffix=".tmp",
                               dir=path.parent)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, permissions)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _check_writable(folder: Path, option: str) -> None:
    try:
        fd, trial = tempfile.mkstemp(prefix=".advx-write-check.", dir=folder)
    except OSError as err:
        raise OutputPathError(f"{option}: cannot write into {folder} ({err.strerror or err})") from None
    os.close(fd)
    os.unlink(trial)


class OutputPathError(InputError):
    """An output path that cannot be written; found before any work is done."""


def check_output_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """Make sure ``path`` is (or can become) a writable folder; create it. Raises
    ``OutputPathError`` naming ``option`` otherwise."""
    if not str(path).strip():
        raise OutputPathError(f"{option} must name a folder, got {str(path)!r}")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{option} must be a folder, got {path}, which is an existing file")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputPathError(f"{option}: cannot create folder {path} ({err.strerror or err})") from None
    _check_writable(path, option)
    return path


def check_output_file(path: str | os.PathLike, option: str = "--checkpoint") -> Path:
    """Make sure a file can be written at ``path`` (its folder is created). Raises
    ``OutputPathError`` naming ``option`` otherwise."""
    if not str(path).strip():
        raise OutputPathError(f"{option} must name a file, got {str(path)!r}")
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{option} must be a file path, got {path}, which is an existing folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{option}: {path} exists and is not writable")
    check_output_dir(path.parent, option)
    return path


def content_hash(payload: dict) -> str:
    """SHA-256 of what a file holds (a checkpoint, a resume chunk), its own ``sha256`` entry
    left out: keys in sorted order, each tensor as its dtype, shape and bytes, plain values
    as JSON. Stored in the file when it is written, compared when it is read."""
    h = hashlib.sha256()

    def walk(value, where: str) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"{where}:{t.dtype}:{list(t.shape)}:".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                if not (where == "" and key == "sha256"):
                    walk(value[key], f"{where}/{key}")
        elif isinstance(value, (list, tuple)):
            h.update(f"{where}:{type(value).__name__}:{len(value)}:".encode())
            for i, item in enumerate(value):
                walk(item, f"{where}/{i}")
        else:
            h.update(f"{where}={json.dumps(value, default=repr)};".encode())

    walk(payload, "")
    return h.hexdigest()
