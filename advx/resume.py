"""Resumable evaluation: each batch of attack results is written as it completes, so a
killed ``advx eval`` started again with ``--resume`` carries on where it stopped.

``evaluate(store=ChunkStore(...))`` asks the store before every ``attack.run`` on a chunk
of samples. The cascade is deterministic given the results (the survivors, hence the
chunks, follow from them), so replaying stored chunks and running the missing ones ends
with exactly the results of an uninterrupted run. A chunk file holds only what the
records need (success, steps, distance) and the SHA-256 of that content, is written
atomically and read with ``weights_only=True``; one that cannot be read, or whose content
does not match its hash, is computed again, never trusted. The
store's ``settings.json`` fingerprints the run (settings, model, data): resuming with
anything changed is an error. Chunk names hold the samples' ids, so shards of a
``torchrun`` run share one store and a rank that died redoes only its missing chunks.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch

from advx.files import atomic_write, content_hash
from advx.validate import InputError

FIELDS = ("success", "steps", "distance")


def digest(*tensors: torch.Tensor) -> str:
    """A short sha256 of the tensors' bytes (a model's weights, the images)."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def _read_settings(meta: Path) -> dict | None:
    """The fingerprint stored in ``meta``, or None (with a warning) when the file is damaged:
    the chunks beside it cannot be matched to their settings, so they are computed again."""
    try:
        saved = json.loads(meta.read_text())
        if isinstance(saved, dict):
            return saved
        problem = f"it holds a {type(saved).__name__}, not the run's settings"
    except (ValueError, UnicodeDecodeError) as err:  # cut short, overwritten, not text
        problem = f"it is not readable JSON ({str(err).splitlines()[0][:80]})"
    warnings.warn(f"resume: {meta} is damaged ({problem}): the results stored beside it cannot be matched to "
                  f"their settings, so this run starts afresh", RuntimeWarning, stacklevel=3)
    return None


class ChunkStore:
    """Chunk results under ``folder``. ``resume``: keep what is there if ``fingerprint``
    (plain values) matches the stored one, else error; not ``resume``: start afresh."""

    def __init__(self, folder: str | os.PathLike, fingerprint: dict, *, resume: bool, clear: bool = True) -> None:
        self.folder = Path(folder)
        meta = self.folder / "settings.json"
        fingerprint = json.loads(json.dumps(fingerprint, default=str))
        saved = _read_settings(meta) if resume and meta.is_file() else None
        if saved is not None:
            changed = sorted(k for k in set(saved) | set(fingerprint) if saved.get(k) != fingerprint.get(k))
            if changed:
                raise InputError(f"resume: {self.folder} holds a run with other settings ({', '.join(changed)} "
                                 f"changed); run without --resume to start afresh")
        elif clear and self.folder.exists():
            shutil.rmtree(self.folder)
        resume = saved is not None
        self.folder.mkdir(parents=True, exist_ok=True)
        if not meta.is_file() or not resume:
            with atomic_write(meta, "w") as f:
                json.dump(fingerprint, f, indent=1, sort_keys=True)
        self.reused = self.computed = 0

    def run(self, tag: str, ids: torch.Tensor, attack_run: Callable[[], object], fields: tuple = FIELDS):
        """The stored result of ``(tag, ids)``, or ``attack_run()`` stored (its tensors
        ``fields``: an attack's by default, a verdict's for branch and bound)."""
        name = f"{''.join(c if c.isalnum() else '_' for c in tag)}-{int(ids[0])}-{len(ids)}-" \
               f"{zlib.crc32(ids.cpu().numpy().tobytes()):08x}.pt"
        path = self.folder / name
        if path.is_file():
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
                if saved["sha256"] == content_hash(saved) and torch.equal(saved["ids"], ids.cpu()):
                    self.reused += 1
                    return SimpleNamespace(**{k: saved[k] for k in fields})
            except Exception:  # noqa: BLE001 - unreadable or foreign: computed again, never trusted
                pass
        result = attack_run()
        chunk = {"ids": ids.cpu(), **{k: getattr(result, k).detach().cpu() for k in fields}}
        with atomic_write(path, "wb") as f:
            torch.save({**chunk, "sha256": content_hash(chunk)}, f)
        self.computed += 1
        return result

    def finish(self) -> None:
        """The run is complete and reported: the chunks are no longer needed."""
        shutil.rmtree(self.folder, ignore_errors=True)
