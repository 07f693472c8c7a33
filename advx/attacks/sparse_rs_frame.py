"""Sparse-RS for frames (``advx.attacks.sparse_rs.SparseRS`` with ``norm="frame"``): a random
search over the contents of a border of width w around each image.

Croce, Andriushchenko, Singh, Flammarion & Hein (2022), "Sparse-RS" (AAAI), adversarial
frames. The state of a sample is the colour of each frame pixel, every channel at a corner of
the box; the image is the clean one with the frame painted over it. A query repaints a share
p of the frame (the patch schedule, ``sparse_rs_patch.patch_fraction``): p times the frame's
pixel count of its pixels, drawn with replacement, each the corner of a w x w square (all
squares of a query grow the same way from their corners: down or up, right or left) painted
in one random colour, clipped to the frame. The change is kept if it lowers the margin by
more than float rounding.
"""

from __future__ import annotations

import torch

from advx import rng
from advx.attacks.search import Draws, Progress
from advx.attacks.sparse_rs_patch import patch_fraction
from advx.norms.frame import depth
from advx.validate import InputError


class Border:
    """The frame ``width`` pixels wide of ``height`` x ``across`` images: its pixels
    (``where``, raster positions), and the repainting step of the search."""

    def __init__(self, height: int, across: int, width: int, device=None) -> None:
        self.height, self.across, self.width = height, across, width
        self.where = (depth(height, across, device=device) <= width).flatten().nonzero().squeeze(1)
        self.count = len(self.where)
        self.slots = torch.full((height * across,), -1, dtype=torch.long, device=device)
        self.slots[self.where] = torch.arange(self.count, device=device)  # -1: not in the frame

    def draws(self, p_init: float) -> int:
        """Uniforms per query: 2 directions, then per square its corner and its colour."""
        return 2 + 2 * self.most(p_init)

    def most(self, p_init: float) -> int:
        return max(int(p_init * self.count), 1)

    def repaint(self, colours, u, fraction: float, p_init: float, low, high) -> torch.Tensor:
        """``colours`` [A, C, F] with max(int(``fraction`` * F), 1) squares of side w
        repainted, from the uniforms ``u`` [A, ``draws(p_init)``]."""
        channels, most = colours.shape[1], self.most(p_init)
        squares = min(max(int(fraction * self.count), 1), most)
        corner = self.where[(u[:, 2:2 + squares] * self.count).long().clamp(max=self.count - 1)]  # [A, S]
        code = (u[:, 2 + most:2 + most + squares] * 2 ** channels).long()  # [A, S]: a bit per channel
        paint = (code[:, None] >> torch.arange(channels, device=u.device)[None, :, None]) & 1  # [A, C, S]
        down = torch.where(u[:, :1] < 0.5, 1, -1)[:, :, None, None]  # [A, 1, 1, 1]
        right = torch.where(u[:, 1:2] < 0.5, 1, -1)[:, :, None, None]
        # The w x w square of each corner: [A, S, w, w] pixel positions, clipped to the image.
        offsets = torch.arange(self.width, device=u.device)
        r = ((corner // self.across)[:, :, None, None] + down * offsets[:, None]).clamp(0, self.height - 1)
        c = ((corner % self.across)[:, :, None, None] + right * offsets).clamp(0, self.across - 1)
        slot = self.slots[(r * self.across + c).flatten(1)]  # [A, S * w * w]: frame index, or -1
        fill = torch.where(paint.repeat_interleave(self.width ** 2, dim=2) == 1, high, low)  # [A, C, S * w * w]
        # Where squares overlap, the later one's colour (an explicit rule: scatter's own choice
        # among duplicates is not fixed on every device); a pixel outside the frame is dropped.
        index = torch.where(slot >= 0, slot, self.count)  # column ``count``: a spare, then cut off
        order = torch.arange(slot.shape[1], device=u.device).expand_as(slot)
        last = torch.full((len(u), self.count + 1), -1, dtype=torch.long, device=u.device)
        last = last.scatter_reduce(1, index, order, reduce="amax")[:, :self.count]  # [A, F]
        painted = fill.gather(2, last.clamp(min=0)[:, None].expand(-1, channels, -1))
        return torch.where((last >= 0)[:, None], painted, colours)

    def paint(self, x: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
        """The images ``x`` [N, C, H, W] with the frame painted ``colours`` [N, C, F]."""
        flat = x.flatten(2).clone()
        flat[:, :, self.where] = colours
        return flat.view_as(x)


def search_frame(attack, x, y, width, generator):
    """One random search of ``attack`` (a ``SparseRS``) with a frame ``width`` pixels wide;
    returns ``(x_best, margin, reached, queries)`` per sample."""
    if x.dim() != 4:
        raise InputError(f"a frame needs images [N, C, H, W], got a tensor of shape {tuple(x.shape)}")
    n, channels = x.shape[:2]
    border = Border(*x.shape[2:], width, device=x.device)
    low, high = (torch.tensor(b, dtype=x.dtype, device=x.device) for b in attack.bounds)
    # Start: every frame pixel and channel at a random corner of the box.
    bits = rng.randint(2, (n, channels, border.count), generator, device=x.device)
    colours = torch.where(bits == 1, high, low)  # [n, C, F]
    x_best = border.paint(x, colours)

    state = Progress(attack, x_best, y)
    total = attack.queries
    draws = Draws(generator, n, total - 1, border.draws(attack.p_init), device=x.device, dtype=torch.float32)
    for i in range(total - 1):
        if len(state.active) == 0 or border.count == 0:  # a frame of width 0: nothing to search
            break
        active = state.active
        new = border.repaint(colours[active], draws.at(i, active), patch_fraction(attack.p_init, i + 1, total),
                             attack.p_init, low, high)
        candidate = border.paint(x[active], new)
        improved, kept = state.step(candidate)
        x_best[kept], colours[kept] = candidate[improved], new[improved]
    return x_best, state.margin, state.reached, state.queries
