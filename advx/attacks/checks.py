"""Checks that a model can be attacked as it is (its weights exist and match the images,
its output is a finite logits tensor [N, K]: ``advx.modes.checked_logits``) and that the
labels fit its classes (the images and labels themselves: ``advx.validate.check_batch``).
Each failure is a ``ValueError`` (or a ``TypeError`` for an argument or output that is not
a tensor) that says what to change."""

from __future__ import annotations

from itertools import chain

import torch
from torch import nn

from advx.modes import check_not_lazy, checked_logits
from advx.validate import InputError, check_label_range


def check_model_ready(model: nn.Module, x: torch.Tensor) -> None:
    """Raise ``ValueError`` when ``model`` cannot take ``x`` as it is: lazy modules whose
    weights do not exist yet, or weights of another dtype or device than ``x``."""
    tensors = list(chain(model.parameters(), model.buffers()))
    check_not_lazy(model)
    weights = next((t for t in tensors if t.is_floating_point()), None)
    if weights is None:
        return
    if weights.dtype != x.dtype:
        raise InputError(f"x has dtype {x.dtype} but the model's weights are {weights.dtype}: "
                         f"convert one to the other (e.g. x.to({weights.dtype}))")
    if weights.device != x.device:
        raise InputError(f"x is on device {x.device} but the model's weights are on {weights.device}: "
                         f"move one to the other (e.g. x.to('{weights.device}'))")


def check_labels(model: nn.Module, x: torch.Tensor, y: torch.Tensor, what: str = "labels") -> None:
    """The model's output on one image is a logits tensor, and ``y`` fits its classes."""
    with torch.no_grad():
        logits = checked_logits(model(x[:1]), 1)
    check_label_range(y, logits.shape[1], what)
