"""BPDA, the backward pass differentiable approximation (Athalye, Carlini & Wagner 2018): the
forward pass of a non-differentiable step runs as it is, its backward pass uses a
differentiable stand-in (the identity, or a surrogate), so that gradient attacks see
through defences that quantize, threshold or compress their input.

- ``bpda(f, surrogate=None)``: wrap one module or function by hand. Its output is ``f``'s,
  bit for bit; its gradient is the identity's (``f`` must keep the shape) or
  ``surrogate``'s.
- ``StraightThrough()``: a ``TorchFunctionMode`` under which torch's common
  non-differentiable operations pass gradients straight through, as the identity: rounding
  (``round``, ``floor``, ``ceil``, ``trunc``, ``sign``, ``//``), ``detach``, casts to an
  integer dtype and back, comparisons turned into numbers (``(x > t).float()``,
  ``torch.where(x > t, a, b)``), and quantizers that pick a level by index (``argmin``,
  ``argmax``, ``bucketize``, ``searchsorted``, then ``levels[index]``: the gradient goes to
  the tensor of the output's shape they were computed from). The values computed are
  exactly those without it.
- ``straight_through(model)``: the model, with ``StraightThrough`` on in every forward pass
  that records gradients (an attack's search) and off otherwise: a user's model needs no
  change, and every verdict (success, robust or not) comes from its own forward pass.
"""

from __future__ import annotations

import weakref
from typing import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from advx.validate import InputError, InputTypeError


class _Replace(torch.autograd.Function):
    """Forward: ``value`` (exactly). Backward: the gradient goes to ``through`` (same shape)."""

    @staticmethod
    def forward(ctx, through: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        return value.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def _through(source: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``value``, with the gradient of ``source`` (the identity) when both have one shape."""
    if (not isinstance(source, torch.Tensor) or not source.requires_grad or not value.is_floating_point()
            or source.shape != value.shape):
        return value
    return _Replace.apply(source.to(value.dtype) if source.dtype != value.dtype else source, value.detach())


class _BPDA(nn.Module):
    """``f``'s forward, the identity's (or ``surrogate``'s) backward."""

    def __init__(self, f: Callable, surrogate: Callable | None) -> None:
        super().__init__()
        self.f, self.surrogate = f, surrogate  # modules among them register as submodules

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value = self.f(x)
        if not isinstance(value, torch.Tensor):
            raise InputTypeError(f"f must return a tensor, got {type(value).__name__}")
        if not (torch.is_grad_enabled() and isinstance(x, torch.Tensor) and x.requires_grad):
            return value
        approx = x if self.surrogate is None else self.surrogate(x)
        if not isinstance(approx, torch.Tensor) or approx.shape != value.shape:
            what = "the identity (f must keep its input's shape)" if self.surrogate is None else "surrogate"
            got = list(approx.shape) if isinstance(approx, torch.Tensor) else type(approx).__name__
            raise InputError(f"surrogate: the backward approximation must give the forward's shape "
                             f"{list(value.shape)}, got {got} from {what}")
        return _Replace.apply(approx.to(value.dtype), value.detach()) if value.is_floating_point() else value


def bpda(f: Callable, surrogate: Callable | None = None) -> nn.Module:
    """``f`` (a module or a function of one tensor) with a differentiable backward pass: the
    identity, or ``surrogate`` (a differentiable function or module with ``f``'s output shape).

    Example: ``nn.Sequential(bpda(jpeg_like), classifier)`` is attacked as if the
    compression were the identity, and classifies exactly as ``jpeg_like`` then ``classifier``."""
    for name, value in (("f", f), ("surrogate", surrogate)):
        if value is not None and not callable(value):
            raise InputTypeError(f"{name} must be a module or a function of one tensor, got {type(value).__name__}")
    if f is None:
        raise InputTypeError("f must be a module or a function of one tensor, got None")
    return _BPDA(f, surrogate)


_ROUNDING = {torch.round, torch.floor, torch.ceil, torch.trunc, torch.fix, torch.sign, torch.floor_divide,
             torch.Tensor.round, torch.Tensor.floor, torch.Tensor.ceil, torch.Tensor.trunc, torch.Tensor.fix,
             torch.Tensor.sign, torch.Tensor.floor_divide, torch.Tensor.__floordiv__, torch.Tensor.detach}
_COMPARISONS = {torch.gt, torch.ge, torch.lt, torch.le, torch.greater, torch.greater_equal, torch.less,
                torch.less_equal, torch.Tensor.gt, torch.Tensor.ge, torch.Tensor.lt, torch.Tensor.le,
                torch.Tensor.__gt__, torch.Tensor.__ge__, torch.Tensor.__lt__, torch.Tensor.__le__}
_INDICES = {torch.argmin, torch.argmax, torch.Tensor.argmin, torch.Tensor.argmax, torch.bucketize,
            torch.searchsorted}  # the index of a level: a quantizer's choice
_CASTS = {torch.Tensor.float, torch.Tensor.double, torch.Tensor.half, torch.Tensor.bfloat16, torch.Tensor.to,
          torch.Tensor.type, torch.Tensor.type_as, torch.Tensor.long, torch.Tensor.int, torch.Tensor.short,
          torch.Tensor.byte, torch.Tensor.char, torch.Tensor.bool}


class StraightThrough(TorchFunctionMode):
    """Under this mode the non-differentiable operations listed in the module's docstring
    pass their input's gradient straight through; every value is computed as without it."""

    def __init__(self) -> None:
        super().__init__()
        self._sources: dict[int, tuple[weakref.ref, torch.Tensor]] = {}  # an integer/bool tensor -> its float source
        self._by_shape: dict[tuple, torch.Tensor] = {}  # the latest float tensor of each shape that records gradients

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for a in args[:2]:
            if isinstance(a, torch.Tensor) and a.is_floating_point() and a.requires_grad:
                self._by_shape[tuple(a.shape)] = a
        out = func(*args, **kwargs)
        if not isinstance(out, torch.Tensor):
            return out
        if not out.is_floating_point():  # integers or booleans: remember the float tensor they came from
            if func in _COMPARISONS:
                source = next((a for a in args[:2] if isinstance(a, torch.Tensor) and a.is_floating_point()
                               and a.requires_grad), None)
            elif func in _INDICES:  # levels chosen for each value of the tensor of the same shape
                source = self._by_shape.get(tuple(out.shape))
            else:  # a cast to integers, or integer arithmetic on them
                source = next((s for s in map(self._source, args[:2]) if s is not None), None)
            if source is not None and source.shape == out.shape:
                self._sources[id(out)] = (weakref.ref(out), source)
            return out
        if func in _ROUNDING or func in _CASTS:  # rounded, or an integer/bool tensor made a number again
            return _through(self._source(args[0]), out)
        if func is torch.Tensor.__getitem__ and len(args) == 2 and isinstance(args[0], torch.Tensor) \
                and not args[0].requires_grad:  # a table of levels read at chosen indices
            return _through(self._source(args[1]), out)
        if func is torch.where and len(args) == 3 and not any(
                isinstance(a, torch.Tensor) and a.requires_grad for a in args[1:]):  # a step, not a selection
            return _through(self._source(args[0]), out)
        return out

    def _source(self, tensor) -> torch.Tensor | None:
        """The float tensor an integer or bool ``tensor`` was computed from, if it was (or
        ``tensor`` itself when it is a float tensor that records gradients)."""
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
            return tensor if tensor.requires_grad else None
        entry = self._sources.get(id(tensor))
        return entry[1] if entry is not None and entry[0]() is tensor else None


class _StraightThroughModel(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled():
            return self.model(x)
        with StraightThrough():
            return self.model(x)


def straight_through(model: nn.Module) -> nn.Module:
    """``model`` with ``StraightThrough`` on in its forward passes that record gradients: the
    same outputs, the gradients of a BPDA attack (identity for rounding, thresholds,
    integer casts and ``detach``). Pass it to any gradient attack or to ``evaluate``."""
    if not isinstance(model, nn.Module):
        raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return _StraightThroughModel(model)
