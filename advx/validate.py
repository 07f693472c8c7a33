"""Checks of what users give, shared by attacks, certification, training and evaluation.

A hyperparameter may arrive as a Python number, a NumPy scalar or a 0-d tensor; it is
checked once here and comes back as a plain ``int`` or ``float``. Images and labels are
checked by ``check_batch``, the one check every public entry point runs (attacks,
``run_attack``, ``evaluate``, ``certify``), so that each refuses the same things with the
same words. A bad value raises ``ValueError`` (``TypeError`` for a wrong type) naming the
argument, what was expected and what was received.
"""

from __future__ import annotations

import math
import numbers

import torch


class AdvxError(Exception):
    """Base of the errors advx raises for bad input, bad files or a failed run: each says what
    was expected and what came. The CLI prints these as one line naming the option, file or
    argument; anything else (raised inside torch or a user's model, or an advx bug) is one
    line too, with its type, and ``ADVX_TRACEBACK=1`` shows its traceback."""


class InputError(AdvxError, ValueError):
    """A value out of range or of the wrong form."""


class InputTypeError(AdvxError, TypeError):
    """An argument of the wrong type."""


MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes at most 64 bits; keep clear of the sign


def _plain(value):
    """A 0-d tensor or NumPy scalar as a Python number; anything else as it is."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_complex():
        return value.item()
    if isinstance(value, numbers.Number) and not isinstance(value, (bool, int, float)) and hasattr(value, "item"):
        return value.item()  # numpy.float32, numpy.int64, ...
    return value


def check_number(name: str, value, *, minimum: float | None = None, strict: bool = False,
                 maximum: float | None = None, integer: bool = False) -> int | float:
    """``value`` as a plain ``int`` (``integer=True``) or finite ``float``, or ``ValueError``
    if it is not one, or lies below ``minimum`` (at or below with ``strict``) or above
    ``maximum``."""
    kind = "an integer" if integer else "a finite number"
    plain = _plain(value)
    if integer:
        ok = isinstance(plain, int) and not isinstance(plain, bool)
    else:
        ok = (isinstance(plain, (int, float)) and not isinstance(plain, bool)
              and math.isfinite(plain))
    if not ok:
        raise InputError(f"{name} must be {kind}, got {value!r}")
    if minimum is not None and (plain <= minimum if strict else plain < minimum):
        raise InputError(f"{name} must be {'>' if strict else '>='} {minimum}, got {value!r}")
    if maximum is not None and plain > maximum:
        raise InputError(f"{name} must be <= {maximum}, got {value!r}")
    return int(plain) if integer else float(plain)


def check_seed(name: str, value) -> int:
    """A seed: an integer in [0, 2**63 - 1]."""
    return check_number(name, value, minimum=0, maximum=MAX_SEED, integer=True)


def only_with(option: str, kinds, kind: str, *, key: str = "kind") -> str:
    """The message for an ``option`` that only the ``kinds`` of ``key`` take, given with ``kind``:
    ``"steps applies only with kind='pgd' or 'trades', got kind='fgsm-rs'"``."""
    return f"{option} applies only with {key}=" + " or ".join(map(repr, kinds)) + f", got {key}={kind!r}"


def check_kind_options(config) -> None:
    """A training config's ``kind`` is one of its ``KINDS``, and none of the options that only
    some kinds take (``USES``: option -> kinds) is set (not None) for another kind."""
    if config.kind not in config.KINDS:
        raise InputError(f"kind must be one of {list(config.KINDS)}, got {config.kind!r}")
    for name, kinds in config.USES.items():
        if getattr(config, name) is not None and config.kind not in kinds:
            raise InputError(only_with(name, kinds, config.kind))


def is_integer_labels(y) -> bool:
    """A tensor of integer class labels (any integer dtype; not bool, float or complex)."""
    return isinstance(y, torch.Tensor) and not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool)


def check_images(x, bounds: tuple[float, float] | None = (0.0, 1.0), *, shape=None) -> None:
    """``x`` a finite, non-empty float batch [N, C, H, W] (or [N, *shape] when ``shape`` is
    given) within ``bounds`` (any values with None)."""
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"x must be a torch.Tensor of images [N, C, H, W], got {type(x).__name__}")
    if x.is_meta:
        raise InputError("x must hold data, got a tensor on the meta device")
    if shape is None and x.dim() != 4:
        raise InputError(f"x must be 4-D [N, C, H, W], got shape {tuple(x.shape)}")
    if shape is not None and (x.dim() < 1 or tuple(x.shape[1:]) != tuple(shape)):
        raise InputError(f"x must be a tensor [N, {', '.join(map(str, shape))}] (one input of shape "
                         f"{list(shape)} each), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if len(x) == 0:
        raise InputError("x must hold at least one image, got an empty batch")
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).sum().item()
        raise InputError(f"x must be finite, got {bad} NaN/inf values")
    if bounds is not None:
        lo, hi = bounds
        x_min, x_max = x.min().item(), x.max().item()
        if x_min < lo - 1e-6 or x_max > hi + 1e-6:
            raise InputError(f"x must lie within bounds {tuple(bounds)}, got values in [{x_min:.4g}, {x_max:.4g}]")


def check_batch(x, y, bounds: tuple[float, float] | None = (0.0, 1.0), *, num_classes: int | None = None,
                shape=None, what: str = "labels", name: str = "y") -> torch.Tensor:
    """The images ``x`` as ``check_images`` wants them, and ``y`` [N] integer labels (any
    integer dtype), in [0, num_classes) when ``num_classes`` is given (``name``: what the
    caller calls ``y``). Returns ``y`` as int64 (a new tensor when converted)."""
    if isinstance(x, torch.Tensor) and not isinstance(y, torch.Tensor):
        raise InputTypeError(f"{name} must be a torch.Tensor of labels [N], got {type(y).__name__}")
    check_images(x, bounds, shape=shape)
    if y.dim() != 1 or len(y) != len(x):
        raise InputError(f"{name} must be 1-D with one label per image ({len(x)}), got shape {tuple(y.shape)}")
    if not is_integer_labels(y):
        raise InputError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if num_classes is not None:
        check_label_range(y, num_classes, what, name)
    return y.long()


def check_label_range(y: torch.Tensor, num_classes: int, what: str = "labels", name: str = "y") -> None:
    """Every label of ``y`` names one of ``num_classes`` classes."""
    y_min, y_max = y.min().item(), y.max().item()
    if y_min < 0 or y_max >= num_classes:
        raise InputError(f"{name} must hold {what} in [0, {num_classes - 1}] for this model, "
                         f"got values in [{y_min}, {y_max}]")
