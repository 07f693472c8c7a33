"""Frames: the changed pixels lie in a border of width w around the image, each changed as
much as the pixel box allows (Sparse-RS's adversarial frames, Croce et al. 2022).

The budget ``eps`` is the width w, a whole number of pixels. A pixel's depth is its
distance to the nearest edge plus 1 (1 on the outermost row and column); ``size`` is the
largest depth of a changed pixel (0 if none), so the frame of width w holds exactly the
pixels of depth at most w. The ball is a box in pixel space (the frame's pixels free, the
rest fixed), so its projection is exact; like L0 and patches it has no dual norm here and
no certificate covers it: attacks search it (Sparse-RS).
"""

from __future__ import annotations

import math

import torch

from advx import rng
from advx.norms.base import _radius
from advx.norms.l0 import Searched, _changed
from advx.validate import InputError


class Frame(Searched):
    name, label = "frame", "frame"
    unit = "pixels of width"

    def diameter(self, shape, bounds):
        """Half the shorter side of an image of ``shape``, rounded up: a frame that covers it."""
        return float(math.ceil(min(shape[-2:]) / 2))

    def size(self, delta):
        """The largest depth of a pixel where ``delta`` is not 0 (0 if none)."""
        changed = _changed(_images(delta))  # [N, H * W]
        deep = depth(*delta.shape[-2:], device=delta.device).flatten()
        return torch.where(changed, deep, 0).amax(1).to(delta.dtype)

    def random_start(self, x, eps, generator):
        """Every pixel of the frame of width ``eps`` moved, each channel by a uniform draw in
        [-1, 1] (the attack clips the result to its box)."""
        moves = 2 * rng.rand(_images(x).shape, generator, device=x.device, dtype=x.dtype) - 1
        return x + moves * inside(x, eps).unsqueeze(1).to(x.dtype)

    def project(self, x_adv, x, eps, bounds=None):
        """The nearest point of the box whose changes lie in the frame of width ``eps``: the
        box per coordinate, and every pixel deeper than ``eps`` reset to ``x`` (the ball and
        the box are both boxes, so this is exact)."""
        moved = x_adv if bounds is None else x_adv.clamp(*bounds)
        return torch.where(inside(x, eps).unsqueeze(1), moved, x)


def depth(height: int, width: int, device=None) -> torch.Tensor:
    """[H, W]: each pixel's distance to the nearest edge of the image, plus 1."""
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    down = torch.minimum(rows, height - 1 - rows)[:, None]
    across = torch.minimum(cols, width - 1 - cols)[None, :]
    return torch.minimum(down, across) + 1


def inside(x: torch.Tensor, eps) -> torch.Tensor:
    """[N, H, W] bool: per sample the pixels of the frame of width ``eps`` (a number or [N])."""
    width = _radius(eps, _images(x)).floor()
    return depth(*x.shape[-2:], device=x.device)[None] <= width.view(-1, 1, 1)


def _images(t: torch.Tensor) -> torch.Tensor:
    if t.dim() != 4:
        raise InputError(f"a frame needs images [N, C, H, W], got a tensor of shape {tuple(t.shape)}")
    return t
