"""A small zoo of defences for the tests (and ``scripts/bench_defences.py``): each wraps a
classifier behind a preprocessing whose gradient is zero or useless, the trap in which plain
gradient attacks report false robustness. ``DEFENCES`` are deterministic; ``RANDOMIZED``
draw fresh randomness on every forward pass (from torch's global RNG, as a user's model
would), the trap in which attacks that take one draw per step report false robustness."""

from __future__ import annotations

from pathlib import Path

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


class Noisy(Defended):
    """Additive Gaussian input noise (sigma 0.3), clipped to the pixel box."""

    name = "noisy"

    def preprocess(self, x):
        return (x + 0.3 * torch.randn_like(x)).clamp(0, 1)


class ResizePad(Defended):
    """Random resize and pad (Xie et al. 2018), per image: shrunk by a random factor and
    placed at a random offset, by a sampling grid (differentiable)."""

    name = "resize-pad"

    def preprocess(self, x):
        n = len(x)
        scale = 1 + 0.3 * torch.rand(n, device=x.device)  # the image covers 1/scale of each side
        shift = (torch.rand(n, 2, device=x.device) * 2 - 1) * (scale[:, None] - 1)
        theta = torch.zeros(n, 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0] = theta[:, 1, 1] = scale
        theta[:, :, 2] = shift
        grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
        return torch.nn.functional.grid_sample(x, grid, padding_mode="zeros", align_corners=False)


class NoisyBits(Defended):
    """Input noise (sigma 0.2), then quantization to 2 bits: randomness behind a step with no gradient."""

    name = "noisy-bits"

    def preprocess(self, x):
        return torch.round((x + 0.2 * torch.randn_like(x)).clamp(0, 1) * 3) / 3


RANDOMIZED = (Noisy, ResizePad, NoisyBits)


def user_model_folder(folder: Path, defence: type, model: nn.Module) -> Path:
    """``folder`` holding ``defended.py:build`` (``defence`` around a ``conftest.TinyCNN``) and
    ``weights.pt`` (``defence(model)``'s), as a user would pass them to ``--model``/``--weights``."""
    folder.mkdir()
    torch.save(defence(model).state_dict(), folder / "weights.pt")
    (folder / "defended.py").write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\nfrom conftest import TinyCNN\n"
        f"from defences import {defence.__name__}\n\ndef build():\n    return {defence.__name__}(TinyCNN())\n")
    return folder
