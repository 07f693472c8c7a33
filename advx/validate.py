"""Checks of user-given numbers, shared by attacks, training and evaluation.

A hyperparameter may arrive as a Python number, a NumPy scalar or a 0-d tensor; it is
checked once here and comes back as a plain ``int`` or ``float``. A bad one raises
``ValueError`` naming the argument, what was expected and what was received.
"""

from __future__ import annotations

import math
import numbers

import torch


class AdvxError(Exception):
    """Base of the errors advx raises for bad input, bad files or a failed run: each says what
    was expected and what came. The CLI prints these as one line; anything else is a bug
    and keeps its traceback."""


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
