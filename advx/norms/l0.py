"""L0: at most k pixels changed, each as much as the pixel box allows.

The budget ``eps`` is the count k, a whole number. A pixel is one position of the image with
all its channels (on a colour image, changing a pixel's three channels counts once), as in
Croce & Hein (2019) and Sparse-RS (Croce et al. 2022). There is no dual norm and no
steepest-ascent direction: L0 attacks search over which pixels to change (``advx.attacks``
declares which take it), and no bound propagation certifies it (``certifiable`` is False).
"""

from __future__ import annotations

import math

import torch

from advx import rng
from advx.norms.base import Norm, _radius
from advx.validate import InputError


class Searched(Norm):
    """A threat model of which pixels change (L0, patches): its budget is a whole number,
    and it has no dual norm, steepest direction or hyperplane step: attacks search it
    (``sparse-rs``), and no bound propagation covers it."""

    certifiable = False
    unit = "pixels"

    def budget(self, eps):
        if math.isfinite(eps) and eps != int(eps):
            raise InputError(f"eps must be a whole number of {self.unit} in {self.label}, got {eps!r}")
        return eps

    def dual_size(self, w):
        raise InputError(f"{self.label} has no dual norm: no bound over its ball is computed (use an attack)")

    def linear_minimum(self, A, x, eps):
        raise InputError(f"{self.label} has no dual norm: no bound over its ball is computed (use an attack)")

    def direction(self, grad):
        raise InputError(f"{self.label} has no steepest-ascent direction: use an attack that searches it "
                         f"(sparse-rs)")

    def to_hyperplane(self, w, c, lower, upper):
        raise InputError(f"{self.label} has no closest point on a hyperplane here: use an attack that searches "
                         f"it (sparse-rs)")


class L0(Searched):
    name, label = "0", "L0"

    def diameter(self, shape, bounds):
        """Every pixel of an image of ``shape`` (channels first): a count that never binds."""
        return float(math.prod(shape[1:]) if len(shape) > 1 else math.prod(shape))

    def size(self, delta):
        """The number of pixels (positions, over all their channels) where ``delta`` is not 0."""
        return _changed(delta).sum(1).to(delta.dtype)

    def random_start(self, x, eps, generator):
        """``eps`` pixels chosen uniformly, each channel moved by a uniform draw in [-1, 1]
        (the attack clips the result to its box)."""
        n, positions = len(x), pixel_count(x)
        scores = rng.rand((n, positions), generator, device=x.device, dtype=x.dtype)
        chosen = top_pixels(-scores, _radius(eps, x))
        moves = 2 * rng.rand(x.shape, generator, device=x.device, dtype=x.dtype) - 1
        return x + moves * spread_pixels(chosen, x)

    def project(self, x_adv, x, eps, bounds=None):
        """The nearest point (in L2) of the box with at most ``eps`` pixels changed: the box
        is applied per coordinate first, then the ``eps`` pixels that bring the point nearest
        are kept (ties: the first in raster order) and the others reset to ``x``. A kept pixel
        saves ``|x - x_adv|^2 - |clip(x_adv) - x_adv|^2``: inside the box, the square of its change
        (the largest changes are kept); outside, a pixel that the box clips less may save more."""
        moved = x_adv if bounds is None else x_adv.clamp(*bounds)
        delta = moved - x
        saved = delta * (2 * x_adv - x - moved)  # that difference of squares, factored (no overflow)
        energy = saved.flatten(2).sum(1) if delta.dim() > 2 else saved
        # Changed: ``delta != 0``, ranked before every unchanged pixel (a change whose square
        # underflows to 0 still counts); the kept pixels take ``moved`` itself, bit for bit
        # (``x + delta`` may round off it), so a point already in the ball comes back unchanged.
        changed = _changed(delta)
        keep = top_pixels(torch.where(changed, energy, -1.0), _radius(eps, x)) & changed
        return torch.where(spread_pixels(keep, x).bool(), moved, x)


def pixel_count(x: torch.Tensor) -> int:
    """Pixels per image of a batch ``x`` [N, C, ...] (or [N, D]: each coordinate a pixel)."""
    return math.prod(x.shape[2:]) if x.dim() > 2 else x.shape[1]


def _changed(delta: torch.Tensor) -> torch.Tensor:
    """[N, P] bool: the pixels where some channel of ``delta`` is not 0."""
    return (delta != 0).flatten(2).any(1) if delta.dim() > 2 else delta != 0


def top_pixels(score: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """[N, P] bool: per row the ``k[n]`` largest of ``score`` (ties: the first positions)."""
    order = score.sort(dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(score.shape[1], device=score.device).expand_as(order))
    k = k.clamp(max=score.shape[1])  # an infinite (or huge) budget keeps every position
    return rank < k.floor().to(rank.dtype).unsqueeze(1)


def spread_pixels(mask: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A [N, P] mask of pixels as a 0/1 tensor shaped for ``x``'s channels."""
    if x.dim() <= 2:
        return mask.to(x.dtype)
    return mask.view(len(x), 1, *x.shape[2:]).to(x.dtype)
