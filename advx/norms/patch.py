"""Patches: the changed pixels fit in one square of side s, anywhere on the image, each
changed as much as the pixel box allows (the physical-world attack: a sticker).

The budget ``eps`` is the side s, a whole number of pixels. ``size`` is the side of the
smallest square that holds every changed pixel. Like L0 (``advx.norms.l0.Searched``) it has
no dual norm: attacks search it (Sparse-RS), and no certificate covers it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from advx import rng
from advx.norms.base import _radius
from advx.norms.l0 import Searched, _changed
from advx.validate import InputError


class Patch(Searched):
    name, label = "patch", "patch"
    unit = "pixels of side"

    def diameter(self, shape, bounds):
        """The longer side of an image of ``shape`` (channels first): a patch that never binds."""
        return float(max(shape[-2:]))

    def size(self, delta):
        """The side of the smallest square holding every pixel where ``delta`` is not 0 (0 if none)."""
        changed = _changed(_images(delta)).view(len(delta), *delta.shape[-2:])
        sides = [_span(changed.any(2)), _span(changed.any(1))]
        return torch.maximum(*sides).to(delta.dtype)

    def random_start(self, x, eps, generator):
        """A square of side ``eps`` at a uniformly drawn place, each of its pixels' channels moved
        by a uniform draw in [-1, 1] (the attack clips the result to its box)."""
        height, width = _images(x).shape[-2:]
        side = _sides(eps, x, height, width)
        u = rng.rand((len(x), 2), generator, device=x.device, dtype=torch.float64)
        top = (u[:, 0] * ((height - side).clamp(min=0) + 1)).long()
        left = (u[:, 1] * ((width - side).clamp(min=0) + 1)).long()
        moves = 2 * rng.rand(x.shape, generator, device=x.device, dtype=x.dtype) - 1
        return x + moves * window(top, left, side, height, width).unsqueeze(1).to(x.dtype)

    def project(self, x_adv, x, eps, bounds=None):
        """The nearest point (in L2) of the box whose changes fit in one square of side ``eps``:
        the box per coordinate first, then the square where keeping ``x_adv`` saves the most
        (ties: the one that keeps the most changed pixels, then the first in raster order), the
        pixels outside it reset to ``x``. On an image side shorter than ``eps`` the square covers
        that side whole (it may reach past the image)."""
        moved = x_adv if bounds is None else x_adv.clamp(*bounds)
        delta = _images(moved - x)
        changed = _changed(delta).view(len(delta), *delta.shape[-2:])  # [N, H, W]
        # A pixel's saving as in L0's projection; 0 where nothing changes (not 0 * inf = NaN
        # where x_adv is infinite on a pixel the box clips back to x).
        saved = torch.where(delta != 0, delta * (2 * x_adv - x - moved), 0).sum(1)  # [N, H, W]
        height, width = delta.shape[-2:]
        side = _sides(eps, x, height, width)
        keep = torch.zeros_like(changed)
        for s in side.unique().tolist():
            rows = (side == s).nonzero().squeeze(1)
            if s == 0:
                continue
            shape = (min(s, height), min(s, width))  # the square, inside the image
            gain = F.avg_pool2d(saved[rows, None].double(), shape, stride=1).flatten(1)  # mean per window
            # A change whose saving underflows to 0 still counts: among the windows that save
            # the most, the one that keeps the most changes (then the first: argmax's ties).
            count = F.avg_pool2d(changed[rows, None].double(), shape, stride=1).flatten(1)
            best = torch.where(gain == gain.amax(1, keepdim=True), count, -1.0).argmax(1)
            columns = width - shape[1] + 1
            keep[rows] = window(best // columns, best % columns, torch.full_like(best, s), height, width)
        return torch.where(keep.unsqueeze(1), moved, x)


def window(top: torch.Tensor, left: torch.Tensor, side: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[N, H, W] bool: per sample the square of side ``side[n]`` with its corner at
    (``top[n]``, ``left[n]``)."""
    rows = torch.arange(height, device=top.device)
    cols = torch.arange(width, device=top.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + side)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + side)[:, None])
    return in_rows[:, :, None] & in_cols[:, None, :]


def _images(t: torch.Tensor) -> torch.Tensor:
    if t.dim() != 4:
        raise InputError(f"a patch needs images [N, C, H, W], got a tensor of shape {tuple(t.shape)}")
    return t


def _span(hit: torch.Tensor) -> torch.Tensor:
    """Per row of ``hit`` [N, L] (bool): last - first + 1 of its True entries, 0 if none."""
    index = torch.arange(hit.shape[1], device=hit.device)
    last = torch.where(hit, index, -1).amax(1)
    first = torch.where(hit, index, hit.shape[1]).amin(1)
    return (last - first + 1).clamp(min=0)


def _sides(eps, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The budget per sample as a whole side, at most the image's longer side (a square that
    covers the image whatever its place: on a non-square image, a side above the shorter one
    still widens the patch along the longer one)."""
    return _radius(eps, x).clamp(max=max(height, width)).floor().long()
