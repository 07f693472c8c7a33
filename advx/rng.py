"""Randomness for attacks: a ``torch.Generator``, or one stream per sample.

An attack draws its random numbers through ``rand``/``randn``/``randint`` below. They
accept either a plain ``torch.Generator`` (one stream for the batch) or a
``SampleRNG`` (one stream per sample). With a ``SampleRNG`` a sample's draws do not
depend on which other samples share its batch, so a dataset evaluation gives the
same per-sample result whatever the batch size, and whether an attack runs on every
sample or only on the survivors of a cascade. The global RNG is never used.
"""

from __future__ import annotations

import zlib
from typing import Sequence, Union

import torch

from advx.validate import InputError

_MASK = (1 << 63) - 1


def mix_seed(seed: int, sample_id: int, salt: int = 0) -> int:
    """A 63-bit seed from (seed, sample id, salt); nearby inputs give unrelated seeds."""
    h = (seed * 0x9E3779B97F4A7C15 + sample_id * 0xBF58476D1CE4E5B9 + salt * 0x94D049BB133111EB) & _MASK
    h ^= h >> 31
    h = (h * 0xD6E8FEB86659FD93) & _MASK
    return h ^ (h >> 29)


def salt_of(*parts) -> int:
    """A stable integer from strings/numbers, e.g. ``salt_of("pgd", 0.3)``."""
    return zlib.crc32("|".join(repr(p) for p in parts).encode())


class StreamState:
    """For a training loss with one random stream, ``self.generator``: its state is part of
    the training state, so a resumed run draws what the uninterrupted one would have."""

    generator: torch.Generator

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class SampleRNG:
    """One ``torch.Generator`` per sample. ``rng[index]`` is the streams of a subset
    (the same generator objects, so drawing from the subset advances them)."""

    def __init__(self, generators: Sequence[torch.Generator]) -> None:
        self.generators = list(generators)

    @classmethod
    def from_ids(cls, seed: int, sample_ids: Sequence[int] | torch.Tensor, salt: int = 0) -> "SampleRNG":
        ids = sample_ids.tolist() if isinstance(sample_ids, torch.Tensor) else list(sample_ids)
        return cls([torch.Generator().manual_seed(mix_seed(seed, i, salt)) for i in ids])

    def __len__(self) -> int:
        return len(self.generators)

    def __getitem__(self, index: torch.Tensor) -> "SampleRNG":
        idx = index.nonzero().squeeze(1) if index.dtype == torch.bool else index
        return SampleRNG([self.generators[i] for i in idx.tolist()])


Generator = Union[torch.Generator, SampleRNG]


def subset(generator: Generator, index: torch.Tensor) -> Generator:
    """The streams for ``x[index]``: a ``SampleRNG`` is narrowed, a plain generator is shared."""
    return generator[index] if isinstance(generator, SampleRNG) else generator


def _draw(fn, shape, generator, device, dtype) -> torch.Tensor:
    """Draw on the generator's device, then move to ``device``."""
    if isinstance(generator, SampleRNG):
        if len(generator) != shape[0]:
            raise InputError(f"generator: SampleRNG has {len(generator)} streams, batch has {shape[0]} samples")
        if not generator.generators:
            return torch.empty(tuple(shape), dtype=dtype, device=device)
        rows = [fn(tuple(shape[1:]), generator=g, dtype=dtype, device="cpu") for g in generator.generators]
        return torch.stack(rows).to(device)
    out = fn(tuple(shape), generator=generator, dtype=dtype, device=generator.device)
    return out.to(device)


def rand(shape, generator: Generator, *, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Uniform [0, 1) of ``shape`` (first dimension = samples)."""
    return _draw(torch.rand, shape, generator, device, dtype)


def randn(shape, generator: Generator, *, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Standard normal of ``shape`` (first dimension = samples)."""
    return _draw(torch.randn, shape, generator, device, dtype)


def randint(high: int, shape, generator: Generator, *, device="cpu") -> torch.Tensor:
    """Integers in [0, high) of ``shape`` (first dimension = samples)."""
    def fn(size, generator, dtype, device):
        return torch.randint(high, size, generator=generator, dtype=dtype, device=device)

    return _draw(fn, shape, generator, device, torch.long)
