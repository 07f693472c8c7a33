"""Randomized models: their randomness drawn from streams advx seeds, EOT's draws, and
verdicts by majority over draws (Athalye, Engstrom, Ilyas & Kwok 2018, "Synthesizing Robust
Adversarial Examples"; Athalye, Carlini & Wagner 2018).

A defence that adds noise, resizes or pads at random gives a different output on every
forward pass. One draw says little: a gradient from one draw misleads an attack (average it
over draws: EOT, ``Attack(eot=N)``), and one draw of the verdict is a coin toss. Here:

- ``Seeded(model, seed)``: the model with its own randomness drawn from streams that advx
  seeds. Each image's stream is keyed by the seed, the image's content and the *draw*
  (``with draw(j):``), so the noise an image gets does not depend on the other images of
  its batch or on the batch size, and a run is reproducible. torch's random functions
  (``rand``/``randn``/``randint`` and their ``_like`` forms, ``normal``, ``bernoulli``,
  ``normal_``/``uniform_``/``bernoulli_``, ``dropout``) are redirected while the model runs
  (a ``TorchFunctionMode``); a draw whose first dimension is not the batch (one random size
  for the whole batch) comes from a stream keyed by the whole batch, with one warning. The
  global RNG is forked around every forward pass and left as it was.
- ``draw(j)``: the draw the forward passes inside it take (EOT's j-th sample, a vote).
- ``vote(model, x, y, votes=M)``: the majority verdict. A sample counts as classified as
  ``c`` when ``c`` wins more than half of ``M`` draws (none: -1, never correct).
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import warnings
from typing import Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from advx import rng
from advx.modes import checked_logits, frozen
from advx.validate import InputError, InputTypeError, check_number, check_seed

_DRAW: contextvars.ContextVar[int] = contextvars.ContextVar("advx_draw", default=0)
_MASK = (1 << 64) - 1


@contextlib.contextmanager
def draw(index: int) -> Iterator[None]:
    """Forward passes of a ``Seeded`` model inside take draw ``index`` of their randomness."""
    token = _DRAW.set(int(index))
    try:
        yield
    finally:
        _DRAW.reset(token)


class RandomnessWarning(UserWarning):
    """A randomized model's draws could not all be made per image (or seeded at all)."""


def _signed(value: int) -> int:
    value &= _MASK
    return value - (1 << 64) if value >= 1 << 63 else value


_M1, _M2, _GOLDEN = _signed(0xBF58476D1CE4E5B9), _signed(0x94D049BB133111EB), _signed(0x9E3779B97F4A7C15)


def _shr(h: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 ``h``."""
    return (h >> s) & ((1 << (64 - s)) - 1)


def _mix(h: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer on an int64 tensor (multiplication wraps around)."""
    h = (h ^ _shr(h, 30)) * _M1
    h = (h ^ _shr(h, 27)) * _M2
    return h ^ _shr(h, 31)


def row_keys(x: torch.Tensor) -> torch.Tensor:
    """One int64 per image of ``x``, from its content (its float32 bits): equal images give
    equal keys, and any change of a pixel gives an unrelated key."""
    flat = x.detach().reshape(len(x), -1).to(torch.float32).contiguous()
    bits = flat.view(torch.int32).to(torch.int64).cpu()
    position = _mix(torch.arange(1, bits.shape[1] + 1, dtype=torch.int64) * _GOLDEN)
    return _mix((_mix(bits + position) * (position | 1)).sum(1))


class _Streams:
    """The draws of one forward pass: per-image keys, a counter of draws made so far. Each draw
    of shape ``[N, ...]`` (N images) takes row i from a generator seeded by (keys[i], counter)."""

    def __init__(self, keys: torch.Tensor, batch_key: int, warn) -> None:
        self.keys, self.batch_key, self.count, self.warn = keys, batch_key, 0, warn

    def draw(self, fn, shape, dtype, device) -> torch.Tensor:
        """``fn(shape, generator=, dtype=)`` (``torch.rand``/``torch.randn``), row by row."""
        shape = tuple(int(s) for s in shape)
        self.count += 1
        if math.prod(shape) == 0:
            return torch.empty(shape, dtype=dtype, device=device)
        if shape and shape[0] == len(self.keys):
            seeds, rows = _mix(self.keys + _signed(self.count * _GOLDEN)).tolist(), shape[1:]
        else:
            self.warn(shape)
            seeds, rows = _mix(torch.tensor([_signed(self.batch_key + self.count * _GOLDEN)])).tolist(), shape
        out = [fn(rows, generator=torch.Generator().manual_seed(seed & ((1 << 63) - 1)), dtype=dtype)
               for seed in seeds]
        value = torch.stack(out) if shape and shape[0] == len(self.keys) else out[0]
        return value.to(device)

    def uniform(self, shape, dtype, device) -> torch.Tensor:
        return self.draw(torch.rand, shape, dtype, device)

    def normal(self, shape, dtype, device) -> torch.Tensor:
        return self.draw(torch.randn, shape, dtype, device)


def _size(args, kwargs) -> tuple[int, ...]:
    size = kwargs.get("size", args)
    if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)):
        size = size[0]
    return tuple(int(s) for s in size)


def _factory_dtype(kwargs) -> torch.dtype:
    return kwargs.get("dtype") or torch.get_default_dtype()


class _SeededDraws(TorchFunctionMode):
    """torch's random functions, answered from ``streams`` (see the module's docstring)."""

    def __init__(self, streams: _Streams) -> None:
        super().__init__()
        self.s = streams

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        s = self.s
        if func in (torch.rand_like, torch.randn_like):
            like = args[0]
            make = s.uniform if func is torch.rand_like else s.normal
            return make(like.shape, kwargs.get("dtype") or like.dtype, kwargs.get("device") or like.device)
        if func in (torch.rand, torch.randn):
            make = s.uniform if func is torch.rand else s.normal
            return make(_size(args, kwargs), _factory_dtype(kwargs), kwargs.get("device") or "cpu")
        if func is torch.randint:
            low, high, size = (0, *args[:2]) if len(args) == 2 else args[:3]
            if "size" in kwargs:
                size = kwargs["size"]
                low, high = (0, args[0]) if len(args) == 1 else args[:2]
            u = s.uniform(size, torch.float64, kwargs.get("device") or "cpu")
            return (low + torch.floor(u * (high - low))).to(kwargs.get("dtype") or torch.int64)
        if func is torch.randint_like:
            like, rest = args[0], args[1:]
            low, high = (0, rest[0]) if len(rest) == 1 else rest[:2]
            u = s.uniform(like.shape, torch.float64, like.device)
            return (low + torch.floor(u * (high - low))).to(kwargs.get("dtype") or like.dtype)
        if func is torch.normal and args and isinstance(args[0], torch.Tensor) and "size" not in kwargs:
            mean = args[0]
            std = args[1] if len(args) > 1 else kwargs.get("std", 1.0)
            shape = torch.broadcast_shapes(mean.shape, std.shape if isinstance(std, torch.Tensor) else ())
            return mean + std * s.normal(shape, mean.dtype, mean.device)
        if func in (torch.Tensor.normal_, torch.Tensor.uniform_):
            t = args[0]
            if func is torch.Tensor.normal_:
                mean, std = (list(args[1:]) + [kwargs.get("mean", 0.0), kwargs.get("std", 1.0)][len(args) - 1:])[:2]
                value = mean + std * s.normal(t.shape, t.dtype, t.device)
            else:
                low, high = (list(args[1:]) + [kwargs.get("from", 0.0), kwargs.get("to", 1.0)][len(args) - 1:])[:2]
                value = low + (high - low) * s.uniform(t.shape, t.dtype, t.device)
            with torch.no_grad():
                return t.copy_(value)
        if func in (torch.bernoulli, torch.Tensor.bernoulli):
            t = args[0]
            p = args[1] if len(args) > 1 else kwargs.get("p", t)
            return (s.uniform(t.shape, torch.float64, t.device) < p).to(t.dtype)
        if func is torch.Tensor.bernoulli_:
            t = args[0]
            p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
            with torch.no_grad():
                return t.copy_((s.uniform(t.shape, torch.float64, t.device) < p).to(t.dtype))
        if func is torch.nn.functional.dropout:
            x = args[0]
            p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
            training = args[2] if len(args) > 2 else kwargs.get("training", True)
            if not training or p == 0:
                return x
            keep = (s.uniform(x.shape, torch.float64, x.device) >= p).to(x.dtype)
            return x * keep / (1 - p)
        return func(*args, **kwargs)


class Seeded(nn.Module):
    """``model`` with its randomness drawn from streams advx seeds (see the module's docstring):
    its outputs for an image depend only on ``seed``, the image and the current ``draw``."""

    def __init__(self, model: nn.Module, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise InputTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.seed = check_seed("seed", seed)
        self._warned = False

    def _warn(self, shape) -> None:
        if not self._warned:
            self._warned = True
            warnings.warn(f"the model draws randomness of shape {list(shape)}, shared by the images of a batch: "
                          f"those draws depend on which images share a batch, so its results are reproducible "
                          f"for the same batch size only", RandomnessWarning, stacklevel=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        salt = rng.mix_seed(self.seed, _DRAW.get() & ((1 << 62) - 1), 0x5EED)
        keys = _mix(row_keys(x) ^ _signed(salt))
        batch_key = int(_mix(keys.sum().reshape(1))[0])
        devices = [x.device] if x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(batch_key & ((1 << 63) - 1))
            with _SeededDraws(_Streams(keys, batch_key, self._warn)):
                return self.model(x)


def is_randomized(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether two forward passes of ``model`` on ``x`` differ beyond float noise (a GPU's
    non-deterministic kernels do not count; the global RNG is left as it was)."""
    with torch.no_grad(), frozen(model), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        a, b = model(x), model(x)
    return not torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def check_seedable(model: Seeded, x: torch.Tensor) -> str | None:
    """A warning when ``model``'s randomness escapes advx's streams (NumPy, Python's ``random``,
    a random kernel of its own): two passes with the same draw still differ."""
    if not is_randomized(model, x):
        return None
    return ("the model's randomness cannot be seeded by advx (two forward passes with the same streams differ: "
            "it draws outside torch's random functions, e.g. NumPy or Python's random): its draws come from the "
            "global RNG, and the figures are not reproducible")


def check_votes(name: str, votes) -> int:
    """``votes`` as an odd integer >= 1 (a majority always exists between two outcomes)."""
    votes = check_number(name, votes, minimum=1, integer=True)
    if votes % 2 == 0:
        raise InputError(f"{name} must be an odd number of draws (so that a majority always exists), got {votes}")
    return votes


def check_eot(name: str, eot) -> int:
    """``eot``, the draws averaged per gradient, as an integer >= 1."""
    return check_number(name, eot, minimum=1, integer=True)


def majority(model: nn.Module, x: torch.Tensor, *, votes: int, batch_size: int = 500,
             device: str | torch.device = "cpu") -> torch.Tensor:
    """Per image of ``x``, the class that wins more than half of ``votes`` draws of ``model``
    (draws ``vote_draw(0..votes-1)``), or -1 when no class does; [N] on the CPU."""
    out = torch.empty(len(x), dtype=torch.long)
    with frozen(model), torch.no_grad():
        for first in range(0, len(x), batch_size):
            xb = x[first:first + batch_size].to(device)
            counts = None
            for m in range(votes):
                with draw(vote_draw(m)):
                    logits = checked_logits(model(xb), len(xb))
                if counts is None:
                    counts = torch.zeros(logits.shape, dtype=torch.long, device=logits.device)
                counts.scatter_add_(1, logits.argmax(1)[:, None], torch.ones_like(counts[:, :1]))
            best = counts.max(1)
            out[first:first + len(xb)] = torch.where(best.values * 2 > votes, best.indices, -1).cpu()
    return out


def vote_draw(m: int) -> int:
    """The draw index of the m-th vote (apart from the draws an attack's EOT takes)."""
    return rng.salt_of("vote", m)
