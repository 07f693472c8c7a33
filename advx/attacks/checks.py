"""Checks that a model can be attacked as it is (its weights exist and match the images,
its output is a finite logits tensor [N, K]: ``advx.modes.checked_logits``) and that the
images and labels are sound. Each failure is a ``ValueError`` (or a ``TypeError`` for an
argument or output that is not a tensor) that says what to change."""

from __future__ import annotations

from itertools import chain

import torch
from torch import nn

from advx.modes import checked_logits
from advx.validate import InputError, InputTypeError


def _is_lazy(tensor: torch.Tensor) -> bool:
    return isinstance(tensor, torch.nn.parameter.UninitializedTensorMixin)


def check_model_ready(model: nn.Module, x: torch.Tensor) -> None:
    """Raise ``ValueError`` when ``model`` cannot take ``x`` as it is: lazy modules whose
    weights do not exist yet, or weights of another dtype or device than ``x``."""
    tensors = list(chain(model.parameters(), model.buffers()))
    lazy = [name for name, t in chain(model.named_parameters(), model.named_buffers()) if _is_lazy(t)]
    if lazy:
        raise InputError(f"model has lazy modules whose weights are not initialised yet ({', '.join(lazy[:3])}): "
                         f"run one forward pass on a batch of images before attacking it")
    weights = next((t for t in tensors if t.is_floating_point()), None)
    if weights is None:
        return
    if weights.dtype != x.dtype:
        raise InputError(f"x has dtype {x.dtype} but the model's weights are {weights.dtype}: "
                         f"convert one to the other (e.g. x.to({weights.dtype}))")
    if weights.device != x.device:
        raise InputError(f"x is on device {x.device} but the model's weights are on {weights.device}: "
                         f"move one to the other (e.g. x.to('{weights.device}'))")


def is_integer_labels(y) -> bool:
    """A tensor of integer class labels (any integer dtype; not bool, float or complex)."""
    return isinstance(y, torch.Tensor) and not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)


def check_batch(x, y, bounds: tuple[float, float]) -> None:
    """``x`` a finite float batch [N, C, H, W] within ``bounds``, ``y`` [N] integer labels."""
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"x must be a torch.Tensor of images [N, C, H, W], got {type(x).__name__}")
    if not isinstance(y, torch.Tensor):
        raise InputTypeError(f"y must be a torch.Tensor of labels [N], got {type(y).__name__}")
    if x.is_meta:
        raise InputError("x must hold data, got a tensor on the meta device")
    if x.dim() != 4:
        raise InputError(f"x must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if len(x) == 0:
        raise InputError("x must hold at least one image, got an empty batch")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise InputError(f"x must be finite, got {bad} NaN/inf values")
    lo, hi = bounds
    x_min, x_max = x.min().item(), x.max().item()
    if x_min < lo - 1e-6 or x_max > hi + 1e-6:
        raise InputError(
            f"x must lie within bounds {tuple(bounds)}, got values in [{x_min:.4g}, {x_max:.4g}]"
        )
    if y.dim() != 1 or len(y) != len(x):
        raise InputError(f"y must be 1-D with one label per image ({len(x)}), got shape {tuple(y.shape)}")
    if not is_integer_labels(y):
        raise InputError(f"y must hold integer class labels, got dtype {y.dtype}")


def check_labels(model: nn.Module, x: torch.Tensor, y: torch.Tensor, what: str = "labels") -> None:
    """The model's output on one image is a logits tensor, and ``y`` fits its classes."""
    with torch.no_grad():
        logits = checked_logits(model(x[:1]), 1)
    num_classes = logits.shape[1]
    y_min, y_max = y.min().item(), y.max().item()
    if y_min < 0 or y_max >= num_classes:
        raise InputError(
            f"y must hold {what} in [0, {num_classes - 1}] for this model, "
            f"got values in [{y_min}, {y_max}]"
        )
