"""Running a model: its mode, its forward passes over a dataset, and what it must return.

- ``frozen(model)``: eval mode and ``requires_grad=False`` on every parameter for the
  duration; on exit every submodule's own mode and every parameter's flag come back
  exactly as they were (attacks, checks, certification and accuracy all run in it);
- ``predictions(model, x)``: the class of every image, batch by batch, frozen, without
  gradients; ``accuracy(model, x, y)``: the share it gets right (after RobustBench's
  ``clean_accuracy``, the one helper everything reuses);
- ``checked_logits(out, n)``: a model's output must be finite logits ``[n, K]``, ``K >= 2``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

from advx.validate import InputError, InputTypeError, check_batch, check_label_range, check_number


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode and ``requires_grad=False`` on every parameter; both restored on exit."""
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        yield model
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
        for m, mode in zip(model.modules(), modes):
            m.training = mode


def device_of(model: nn.Module, default: str | torch.device = "cpu") -> torch.device:
    """The device of the model's first parameter or buffer (``default`` when it has none)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device(default)


def check_not_lazy(model: nn.Module, what: str = "model") -> None:
    """A model with lazy modules that never ran cannot be attacked, loaded into or certified."""
    lazy = [name for name, t in [*model.named_parameters(), *model.named_buffers()]
            if isinstance(t, nn.parameter.UninitializedTensorMixin)]
    if lazy:
        raise InputError(f"{what} has lazy modules whose weights are not initialised yet ({', '.join(lazy[:3])}): "
                         f"run one forward pass on a batch of images first")


def weight_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter or buffer (fp32 when it has none):
    the dtype its inputs must have."""
    for t in list(model.parameters()) + list(model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def checked_logits(out, n: int, *, num_classes: int | None = None, what: str = "model") -> torch.Tensor:
    """``out``, the output of ``what`` for ``n`` images, must be finite floating-point logits
    ``[n, K]`` with ``K >= 2`` (``K == num_classes`` when given); else a ``TypeError`` or
    ``ValueError`` that says what came."""
    classes = "num_classes" if num_classes is None else num_classes
    if not isinstance(out, torch.Tensor):
        raise InputTypeError(f"{what} must return a logits tensor [N, {classes}], got {type(out).__name__}")
    if out.dim() != 2 or out.shape[0] != n:
        raise InputError(f"{what} must return logits [N, {classes}] with one row per image, "
                         f"got shape {list(out.shape)} for {n} image(s)")
    if num_classes is not None and out.shape[1] != num_classes:
        raise InputError(f"{what} must return logits [N, {num_classes}] (one score per class), "
                         f"got shape {list(out.shape)}")
    if out.shape[1] < 2:
        raise InputError(f"{what} must return logits for at least 2 classes, got shape {list(out.shape)}")
    if not out.is_floating_point():
        raise InputError(f"{what} must return floating-point logits, got dtype {out.dtype}")
    if not torch.isfinite(out).all():
        raise InputError(f"{what} returned logits that are not finite (NaN/inf) on the clean images")
    return out


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, *, batch_size: int = 1000,
                device: str | torch.device | None = None) -> torch.Tensor:
    """The predicted class of every image of ``x`` [N, C, H, W], [N] on the CPU: the images
    go to ``device`` (default: the model's) one batch at a time, the model runs frozen,
    and every batch's output is checked (``checked_logits``)."""
    batch_size = check_number("batch_size", batch_size, minimum=1, integer=True)
    device = device_of(model, x.device) if device is None else torch.device(device)
    pred = torch.empty(len(x), dtype=torch.long)
    with frozen(model):
        for first in range(0, len(x), batch_size):
            xb = x[first:first + batch_size].to(device)
            pred[first:first + len(xb)] = checked_logits(model(xb), len(xb)).argmax(1).cpu()
    return pred


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1000,
             device: str | torch.device | None = None) -> float:
    """The share of ``x`` [N, C, H, W] that ``model`` classifies as ``y`` [N] (``predictions``:
    eval mode for the duration, every mode restored)."""
    y = check_batch(x, y, bounds=None)  # any pixel range: the model's own inputs
    device = device_of(model, x.device) if device is None else torch.device(device)
    with frozen(model), torch.no_grad():
        check_label_range(y, checked_logits(model(x[:1].to(device)), 1).shape[1])
    right = predictions(model, x, batch_size=batch_size, device=device) == y.cpu()
    return int(right.sum()) / len(y)
