"""A small zoo of defences for the tests (and ``scripts/bench_defences.py``): each wraps a
classifier behind a preprocessing whose gradient is zero or useless, the trap in which plain
gradient attacks report false robustness. Their forward passes are deterministic."""

from __future__ import annotations

import torch
from torch import nn


class Defended(nn.Module):
    """``model(preprocess(x))``."""

    name = "defence"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))


class Quantized(Defended):
    """Input quantization to 4 grey levels (``round``): zero gradient almost everywhere."""

    name = "quantized"

    def preprocess(self, x):
        return torch.round(x * 3) / 3


class Thresholded(Defended):
    """Binarization at 0.5 (a comparison made a number again)."""

    name = "thresholded"

    def preprocess(self, x):
        return (x > 0.5).float()


class Bytes(Defended):
    """The image as 8-bit integers, 8 levels by integer division, and back (as a codec would store it)."""

    name = "bytes"

    def preprocess(self, x):
        stored = (x * 255).to(torch.uint8)
        return (stored // 32).float() * 32 / 255


class Detached(Defended):
    """A 'denoiser' whose output is cut from the graph (``detach``), then a coarse rounding."""

    name = "detached"

    def preprocess(self, x):
        smooth = torch.nn.functional.avg_pool2d(x, 3, stride=1, padding=1)
        return torch.floor(smooth.detach() * 2 + 0.5) / 2


class Palette(Defended):
    """Each pixel replaced by the nearest of 5 grey levels, chosen by ``argmin`` (a codebook quantizer)."""

    name = "palette"

    def preprocess(self, x):
        levels = torch.linspace(0, 1, 5, dtype=x.dtype, device=x.device)
        return levels[(x[..., None] - levels).abs().argmin(-1)]


DEFENCES = (Quantized, Thresholded, Bytes, Detached, Palette)
