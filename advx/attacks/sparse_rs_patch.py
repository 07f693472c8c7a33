"""Sparse-RS for patches (``advx.attacks.sparse_rs.SparseRS`` with ``norm="patch"``): a random
search over one square sticker of side s per image, its contents and its place.

Croce, Andriushchenko, Singh, Flammarion & Hein (2022), "Sparse-RS" (AAAI), image- and
location-specific patches. The state of a sample is the patch's contents (C x s x s values,
each at a corner of the box) and its top-left corner; the image is the clean one with the
patch pasted there. A query either moves the patch (``location_period``, ``shift_range``) or
paints a random square inside it in one random colour (``patch_fraction``); the change is
kept if it lowers the margin by more than float rounding.
"""

from __future__ import annotations

import math

import torch

from advx import rng
from advx.attacks.search import Draws, Progress
from advx.validate import InputError

# (last iteration, divisor of p_init): the paper's schedule for patches over 10,000
# iterations (rescaled to the budget); beyond the last, p_init / 128.
_SCHEDULE = ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (4000, 32), (8000, 64))


def _at(query: int, queries: int) -> int:
    """``query`` out of ``queries`` as an iteration of a 10,000-iteration run."""
    return int(query / queries * 10000)


def patch_fraction(p_init: float, query: int, queries: int) -> float:
    """The share p of the patch's area repainted at ``query`` (1 for the first query after
    the start) out of ``queries``: the schedule stretched from 10,000 to ``queries``."""
    at = _at(query, queries)
    return p_init / next((d for last, d in _SCHEDULE if at <= last), 128)


def location_period(query: int, queries: int) -> int:
    """Every how many queries the patch moves: 5, then 10 from iteration 1,000 (of 10,000), 15
    from 2,000, ..."""
    return 5 * (1 + _at(query, queries) // 1000)


def shift_range(query: int, queries: int, length: int) -> int:
    """How far (in pixels, each way) the patch may move along an image side of ``length`` at
    ``query``: 3/4 of the side at the start, shrinking linearly to 0 at the last query."""
    return int(max((queries - query) / queries * 0.75 * length, 0))


def search_patch(attack, x, y, side, generator):
    """One random search of ``attack`` (a ``SparseRS``) with a patch of side ``side`` (at most
    the image's longer side; on a side of the image shorter than it the patch covers that side
    whole); returns ``(x_best, margin, reached, queries)`` per sample."""
    if x.dim() != 4:
        raise InputError(f"a patch needs images [N, C, H, W], got a tensor of shape {tuple(x.shape)}")
    n, channels, height, width = x.shape
    rows, cols = min(side, height), min(side, width)  # the patch: rows x cols (a square inside)
    low, high = (torch.tensor(b, dtype=x.dtype, device=x.device) for b in attack.bounds)
    # Start: the corner uniform over the places where the patch fits; the contents random
    # vertical stripes, one corner of the box per channel and column (Square's Linf start).
    u = rng.rand((n, 2), generator, device=x.device, dtype=torch.float64)
    top = _uniform_int(u[:, 0], height - rows + 1)
    left = _uniform_int(u[:, 1], width - cols + 1)
    bits = rng.randint(2, (n, channels, 1, cols), generator, device=x.device)
    contents = torch.where(bits == 1, high, low).expand(n, channels, rows, cols).clone()
    x_best = _paste(x, contents, top, left)

    state = Progress(attack, x_best, y)
    total = attack.queries
    movable = rows < height or cols < width  # else every move would leave the patch in place
    draws = Draws(generator, n, total - 1, 2 + channels, device=x.device, dtype=torch.float64)
    for i in range(total - 1):
        if len(state.active) == 0:
            break
        active = state.active
        u = draws.at(i, active)  # [A, 2 + C]
        t = i + 1  # the query's number after the start, as in L0's schedule
        shifts = shift_range(t, total, height), shift_range(t, total, width)
        new_top, new_left, new_contents = top[active], left[active], contents[active]
        if movable and max(shifts) > 0 and t % location_period(t, total) == 0:  # move the patch
            new_top = (new_top + _uniform_int(u[:, 0], 2 * shifts[0] + 1) - shifts[0]).clamp(0, height - rows)
            new_left = (new_left + _uniform_int(u[:, 1], 2 * shifts[1] + 1) - shifts[1]).clamp(0, width - cols)
        else:
            new_contents = paint_square(new_contents, u, patch_fraction(attack.p_init, t, total), low, high)
        candidate = _paste(x[active], new_contents, new_top, new_left)
        improved, kept = state.step(candidate)
        x_best[kept] = candidate[improved]
        top[kept], left[kept], contents[kept] = new_top[improved], new_left[improved], new_contents[improved]
    return x_best, state.margin, state.reached, state.queries


def paint_square(contents, u, fraction: float, low, high) -> torch.Tensor:
    """``contents`` [A, C, rows, cols] (a patch of side s = max(rows, cols)) with a square of
    area about ``fraction`` * s^2 painted in one corner colour per channel, placed and coloured
    by the uniforms ``u`` [A, 2 + C]; a colour that the square already has everywhere would
    waste a query, so there it takes the other corner."""
    rows, cols = contents.shape[-2:]
    small = max(int(math.sqrt(fraction) * max(rows, cols)), 1)
    s_rows, s_cols = min(small, rows), min(small, cols)
    inside = _mask(_uniform_int(u[:, 0], rows - s_rows + 1), _uniform_int(u[:, 1], cols - s_cols + 1),
                   s_rows, s_cols, rows, cols)[:, None]  # [A, 1, rows, cols]
    colour = torch.where(u[:, 2:] < 0.5, low, high)[:, :, None, None]  # [A, C, 1, 1]
    differs = ((contents != colour) & inside).flatten(1).any(1)
    colour = torch.where(differs[:, None, None, None], colour, torch.where(colour == low, high, low))
    return torch.where(inside, colour, contents)


def _uniform_int(u: torch.Tensor, count: int) -> torch.Tensor:
    """Integers uniform in ``0..count-1`` from uniforms ``u`` in [0, 1)."""
    return (u * count).long().clamp(0, count - 1)


def _mask(top, left, rows: int, cols: int, height: int, width: int) -> torch.Tensor:
    """[N, height, width] bool: the ``rows`` x ``cols`` rectangle with its corner at (``top``, ``left``)."""
    down = torch.arange(height, device=top.device) - top[:, None]
    across = torch.arange(width, device=top.device) - left[:, None]
    in_rows, in_cols = (down >= 0) & (down < rows), (across >= 0) & (across < cols)
    return in_rows[:, :, None] & in_cols[:, None, :]


def _paste(x: torch.Tensor, contents: torch.Tensor, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """The images ``x`` [N, C, H, W] with the patches ``contents`` [N, C, r, c] pasted with
    their corners at (``top``, ``left``) [N]."""
    n, channels, height, width = x.shape
    rows, cols = contents.shape[-2:]
    at_rows = (torch.arange(height, device=x.device) - top[:, None]).clamp(0, rows - 1)  # [N, H]
    at_cols = (torch.arange(width, device=x.device) - left[:, None]).clamp(0, cols - 1)  # [N, W]
    placed = contents.gather(2, at_rows[:, None, :, None].expand(n, channels, height, cols))
    placed = placed.gather(3, at_cols[:, None, None, :].expand(n, channels, height, width))
    return torch.where(_mask(top, left, rows, cols, height, width)[:, None], placed, x)
