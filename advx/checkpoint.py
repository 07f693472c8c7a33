"""Checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict::

    {"format": "advx-checkpoint", "version": 1, "model_name": "small",
     "dataset": "mnist", "input_shape": [1, 28, 28], "num_classes": 10,
     "state_dict": {...}, "config": {...}, "metrics": {...}}

``dataset``, ``input_shape`` and ``num_classes`` say what the model was trained on (a
checkpoint written before they existed is an MNIST one).

``config`` and ``metrics`` hold only plain values (str, int, float, bool, None,
lists and dicts of them), so the safe unpickler can read them back.

``sha256`` is the hash of everything else in the file, every tensor's bytes included,
walked in a fixed order (``content_hash``). Loading recomputes it and refuses a file
whose content changed since it was written (one flipped byte in a weight would otherwise
load silently, with other weights). A checkpoint written before the hash existed still
loads, with one warning that it could not be checked.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from advx import zoo
from advx.datasets import DATASET_NAMES, Dataset, get_dataset
from advx.files import atomic_write, content_hash, remove_stale_temps
from advx.models import MNIST_SHAPE, MODELS, build_model
from advx.validate import AdvxError

FORMAT = "advx-checkpoint"
VERSION = 1
DEFAULT_CHECKPOINT = Path("checkpoints") / "baseline.pt"
ROBUST_CHECKPOINT = Path("checkpoints") / "robust.pt"


class CheckpointError(AdvxError, ValueError):
    """A checkpoint is missing, truncated, or not an advx checkpoint."""


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module | dict[str, torch.Tensor],
    *,
    model_name: str,
    dataset: str | Dataset = "mnist",
    input_shape=None,
    config: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Save ``model`` (a module, or its state dict) to ``path`` atomically: a temp file in
    the same folder, fsync, rename.

    A crash mid-save leaves the previous file at ``path`` as it was, and weights that are
    not finite (a diverged run) are refused, so they never replace a good checkpoint.
    ``extra`` holds further tensors or plain values (e.g. optimizer state for resuming).
    ``input_shape``: one image's (default: the dataset's).
    """
    path, dataset = Path(path), get_dataset(dataset)
    weights = model.state_dict() if isinstance(model, nn.Module) else model
    bad = non_finite_weights(weights)
    if bad:
        raise CheckpointError(f"checkpoint: refusing to save {path}: the model's weights are not finite "
                              f"(NaN/inf in {', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
                              f"the file there was left as it was")
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "model_name": model_name,
        "dataset": dataset.name,
        "input_shape": [int(v) for v in (dataset.shape if input_shape is None else input_shape)],
        "num_classes": dataset.num_classes,
        "state_dict": {k: v.detach().cpu() for k, v in weights.items()},
        "config": dict(config or {}),
        "metrics": dict(metrics or {}),
    }
    if extra:
        payload.update(extra)
    payload["sha256"] = content_hash(payload)
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)
    return path


class UncheckedCheckpointWarning(UserWarning):
    """A checkpoint without a content hash (written by an older advx): it loads unchecked."""


_warned_unchecked: set[str] = set()


def _check_content(path: Path, ckpt: dict) -> None:
    """The stored ``sha256`` must match the content; without one, say so once per file."""
    stored = ckpt.get("sha256")
    if stored is None:
        if str(path.resolve()) not in _warned_unchecked:
            _warned_unchecked.add(str(path.resolve()))
            warnings.warn(f"checkpoint: {path} holds no content hash (written by an older advx), so damage to "
                          f"its weights cannot be detected; saving it again adds one",
                          UncheckedCheckpointWarning, stacklevel=3)
        return
    if not isinstance(stored, str) or stored != content_hash(ckpt):
        raise CheckpointError(f"checkpoint: {path} is damaged: its content does not match the SHA-256 stored "
                              f"in it (a changed byte, a bad copy?); restore it from a backup or train again")


def non_finite_weights(state_dict: dict) -> list[str]:
    """Names of the floating-point entries of ``state_dict`` that hold NaN or inf."""
    return [k for k, v in state_dict.items()
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200]}" if lines else type(err).__name__


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a checkpoint dict (CPU tensors), from a file or a zoo entry
    (``"zoo:NAME"``, ``advx.zoo``). Raises ``CheckpointError`` (``ZooError``) with the reason."""
    if not str(path).strip():
        raise CheckpointError(f"checkpoint must name a file, got {str(path)!r}")
    if zoo.is_zoo(path):  # zoo:NAME, a model shipped with advx (its SHA-256 checked first)
        path = zoo.resolve(path)
    path = Path(path)
    remove_stale_temps(path)  # left behind by a save that was killed
    if path.is_dir():
        raise CheckpointError(f"checkpoint: {path} is a folder, expected a checkpoint file")
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint: no file at {path}. Train one first: "
            f"`python scripts/train_baseline.py` (or `advx train`) writes {DEFAULT_CHECKPOINT}."
        )
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint: {path} is empty (0 bytes); train again or restore it")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, random bytes...
        raise CheckpointError(
            f"checkpoint: {path} could not be read as an advx checkpoint "
            f"(truncated or not a torch file): {_first_line(err)}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint: {path} is not an advx checkpoint (expected a dict with "
            f"format={FORMAT!r}, got {type(ckpt).__name__}"
            + (f" with format={ckpt.get('format')!r})" if isinstance(ckpt, dict) else ")")
        )
    _check_content(path, ckpt)
    version = ckpt.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"checkpoint: {path} has no valid format version (got {version!r})")
    if version > VERSION:
        raise CheckpointError(f"checkpoint: {path} was written by a newer advx (format version {version}); "
                              f"this advx reads version {VERSION}: upgrade advx")
    if ckpt.get("model_name") not in MODELS:
        raise CheckpointError(
            f"checkpoint: {path} names model {ckpt.get('model_name')!r}, expected one of {sorted(MODELS)}"
        )
    ckpt.setdefault("dataset", "mnist")  # written before Fashion-MNIST
    ckpt.setdefault("input_shape", list(MNIST_SHAPE))
    ckpt.setdefault("num_classes", 10)
    if ckpt["dataset"] not in DATASET_NAMES:
        raise CheckpointError(f"checkpoint: {path} names dataset {ckpt['dataset']!r}, expected one of {DATASET_NAMES}")
    expected = {"state_dict": dict, "config": dict, "metrics": dict, "input_shape": list, "num_classes": int}
    for key, kind in expected.items():
        if not isinstance(ckpt.get(key), kind):
            raise CheckpointError(f"checkpoint: {path} is malformed: {key!r} must be a {kind.__name__}, "
                                  f"got {type(ckpt.get(key)).__name__}")
    not_tensors = [k for k, v in ckpt["state_dict"].items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"checkpoint: {path} is malformed: state_dict entries that are not tensors: "
                              f"{', '.join(map(str, not_tensors[:3]))}")
    bad = non_finite_weights(ckpt["state_dict"])
    if bad:
        raise CheckpointError(f"checkpoint: {path} holds weights that are not finite (NaN/inf in "
                              f"{', '.join(bad[:3])}): it comes from a diverged run")
    return ckpt


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Build the model a checkpoint names, load its weights, put it in eval mode on ``device``."""
    ckpt = load_checkpoint(path)
    model = build_model(ckpt["model_name"], num_classes=ckpt["num_classes"], input_shape=ckpt["input_shape"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise CheckpointError(
            f"checkpoint: {path} weights do not fit model {ckpt['model_name']!r}: {str(err)[:200]}"
        ) from None
    return model.to(device).eval(), ckpt
