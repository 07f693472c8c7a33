"""Square Attack: score-based black-box Linf, L2 and L1 attack by random square updates.

Andriushchenko, Croce, Flammarion & Hein (2020), "Square Attack: a query-efficient
black-box adversarial attack via random search" (ECCV). It never looks at a
gradient: it reads the model's logits (under ``torch.no_grad``) and keeps a random
change only if it lowers the margin loss.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from advx import rng
from advx.attacks.base import Attack
from advx.attacks.budget import near_boundary, rerun_near
from advx.attacks.results import Run
from advx.attacks.search import TIE, Draws, search_options
from advx.norms import L1, Linf, Norm, per_sample
from advx.validate import check_number

# Iterations (out of 10,000, rescaled to the budget) after which the square's area
# fraction p is halved: the schedule of the paper for Linf.
_HALVE_AFTER = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, iteration: int, iterations: int | None) -> float:
    """Fraction p of the image area the square covers at ``iteration`` (0-based): the
    schedule stretched to ``iterations``, or as it stands (``None``: AutoAttack's L2 way)."""
    at = iteration if iterations is None else int(iteration / iterations * 10000)
    return p_init / 2 ** sum(at > t for t in _HALVE_AFTER)


class Square(Attack):
    """Square Attack, Linf, L2 or L1, untargeted or targeted; uses model outputs only.

    Linf: start from vertical stripes of +-eps; then, at each iteration, redraw a random
    square window of the perturbation to +-eps (one sign per channel) and keep the
    change if the margin loss goes down. L2: start from a grid of tiles, each a pair of
    opposite bumps (peaks falling off ring by ring) with a random sign, scaled to eps; then,
    at each iteration, take two random windows, empty the second, and put its L2 mass (with
    whatever of the budget is unused) into the first as the old contents of that window
    plus a new random pair of bumps, keeping the change if the margin goes down. L1 (as in
    the reference AutoAttack): the same, with bumps falling off faster (ring r adds
    1/(r+1)^4), masses measured in L1, and the projection onto the L1 ball and the box in
    place of the scaling to the sphere. The
    margin is ``z_y - max_{j!=y} z_j`` (untargeted) or ``max_{j!=t} z_j - z_t``
    (targeted); a sample stops as soon as it reaches the goal.

    ``steps`` in the result is the exact number of model evaluations ("queries")
    spent on each sample, the initial one included.

    Args:
        eps: budget in the norm, pixel units. queries: most queries per sample and
            restart (the initial one included). p_init: initial fraction of the
            image area changed per query (halved on the paper's schedule).
        restarts: independent runs, each only on samples not broken yet.
        near_restarts, near: more runs for a sample left near the boundary (``advx.attacks.budget``).
        screen: after this many queries, only the samples near the boundary (``near``) go
            on to ``queries``; the others stop there (``None``: all go on).
        norm: ``"inf"``, ``"2"`` or ``"1"``. targeted: ``y`` holds target labels.

    Example:
        >>> atk = Square(model, eps=0.3, queries=1000)
        >>> result = atk.run(x, y)       # result.steps: queries per sample
    """

    norms = ("inf", "2", "1")
    black_box = True
    low_precision = False  # measured: a bf16 search is faster but breaks fewer images (bench_precision.py --square)

    def __init__(self, model: nn.Module, *, eps: float = 0.3, queries: int = 1000,
                 p_init: float = 0.8, restarts: int = 1, near_restarts: int = 0, near: float = 0.25,
                 screen: int | None = None,
                 norm: str | Norm = "inf",
                 bounds: tuple[float, float] = (0.0, 1.0), targeted: bool = False,
                 seed: int | None = 0, generator: torch.Generator | None = None,
                 precision: str = "fp32") -> None:
        super().__init__(model, eps=eps, norm=norm, bounds=bounds, targeted=targeted,
                         seed=seed, generator=generator, precision=precision)
        self.queries, self.p_init, self.restarts = search_options(queries, p_init, restarts)
        self.near_restarts = check_number("near_restarts", near_restarts, minimum=0, integer=True)
        self.near = check_number("near", near, minimum=0)
        self.screen = None if screen is None else check_number("screen", screen, minimum=1, integer=True)

    @torch.no_grad()
    def _run(self, x, y, generator):
        def restart_on(x, y):
            def restart(idx, gen):
                x_new, margin, reached, queries = self._run_once(x[idx], y[idx], gen)
                return Run(x_new, reached, -margin, queries)  # the lower the margin, the better
            return restart

        x_best, steps = self.best_of_runs(x, generator, [restart_on(x, y)] * self.restarts)

        def again(idx):  # near the boundary: more runs
            return [restart_on(x[idx], y[idx])] * self.near_restarts
        return rerun_near(self, x, y, generator, x_best, steps, again, self.near, self.near_restarts)

    def _run_once(self, x, y, generator):
        """One random search; returns ``(x_best, margin, reached, queries)`` per sample."""
        n, channels, height, width = x.shape
        bumps = not isinstance(self.norm, Linf)  # L2 and L1: tiles and pairs of bumps
        if bumps:
            x_best = self._inside(x, self._tiles(x, generator), x)
        else:
            stripes = self._random_signs((n, channels, 1, width), x, generator)
            x_best = self.clip(x + self.eps * stripes)
        logits = self.search_logits(x_best)
        queries = torch.ones(n, dtype=torch.long, device=x.device)
        margin = self.margin(logits, y)
        reached = self.confirm(x_best, logits, y)
        active = (~reached).nonzero().squeeze(1)
        iterations = self.queries - 1
        draws = Draws(generator, n, iterations, 2 + channels + 3 * bumps, device=x.device, dtype=x.dtype)
        for i in range(iterations):
            if self.screen is not None and i == self.screen - 1 and len(active):
                # After ``screen`` queries only the samples near the boundary go on (a
                # sample's own margin decides, so the gate is batch-independent).
                active = active[near_boundary(self, self.search_logits(x_best[active]), y[active], self.near)]
            if len(active) == 0:
                break
            u = draws.at(i, active)  # [A, 2 + C (+ 3 in L2 and L1)]
            p = square_fraction(self.p_init, i, None if bumps else iterations)
            side = min(max(round(math.sqrt(p * height * width)), 1), height - 1, width - 1)
            if bumps:  # an odd side of at least 3, room for the two bumps
                side = min(max(side + 1 - side % 2, 3), height - 1, width - 1)
            x0, current = x[active], x_best[active]
            window = self._window(u[:, 0], u[:, 1], side, height, width)
            signs = torch.where(u[:, 2:2 + channels] < 0.5, -1.0, 1.0).to(x.dtype).view(-1, channels, 1, 1)
            if bumps:
                candidate = self._moved(x0, current, window, side, signs, u[:, 2 + channels:])
            else:
                candidate = torch.where(window, self.clip(x0 + self.eps * signs), current)
                # A draw that changes nothing would waste a query: take the other sign.
                same = per_sample((candidate == current).flatten(1).all(1), candidate)
                candidate = torch.where(window & same, self.clip(x0 - self.eps * signs), candidate)

            logits = self.search_logits(candidate)
            queries[active] += 1
            new_margin = self.margin(logits, y[active])
            # Keep a change only if it lowers the margin by more than float rounding: a
            # change that leaves the logits as they were must not count as progress in one
            # batch and not in another (the last bits of a batched forward depend on it).
            improved = new_margin < margin[active] - TIE * margin[active].abs().clamp_min(1)
            x_best[active[improved]] = candidate[improved]
            margin[active[improved]] = new_margin[improved]
            now_reached = improved.clone()
            now_reached[improved] = self.confirm(candidate[improved], logits[improved], y[active[improved]])
            reached[active[now_reached]] = True
            active = active[~now_reached]
        return x_best, margin, reached, queries

    def _inside(self, x0, delta, like):
        """``x0 + delta`` scaled to the L2 sphere of radius eps, then into the ball and the box;
        in L1 projected onto the ball and the box (the reference's way: no scaling)."""
        if isinstance(self.norm, L1):
            return self.norm.project(x0 + delta, x0, self.eps, self.bounds)
        size = per_sample(delta.flatten(1).norm(dim=1).clamp_min(1e-12), like)
        return self.norm.project(x0 + delta * (self.eps / size), x0, self.eps, self.bounds)

    def _tiles(self, x, generator):
        """The L2 start: a pair of opposite bumps in each tile of side H/5 (the tiles centred),
        one random sign per channel and tile."""
        n, channels, height, width = x.shape
        side = max(height // 5, 1)
        rows, cols = height // side, width // side
        signs = self._random_signs((n, channels, rows, cols), x, generator)
        tiles = _bumps(side, x.dtype, x.device, self._p)[0].repeat(rows, cols) * \
            signs.repeat_interleave(side, 2).repeat_interleave(side, 3)
        top, left = (height - rows * side) // 2, (width - cols * side) // 2  # the tiles centred
        return torch.nn.functional.pad(tiles, (left, width - cols * side - left, top, height - rows * side - top))

    @property
    def _p(self):
        """The exponent of the bumps' norm: 1 in L1, 2 in L2."""
        return 1 if isinstance(self.norm, L1) else 2

    def _moved(self, x0, current, window, side, signs, u):
        """The L2 (L1) step: a second window (corner from ``u[:, 0:2]``) emptied, its mass and
        the unused budget put into ``window`` as its old contents plus a new pair of bumps
        (side by side or one above the other, from ``u[:, 2]``)."""
        n, channels, height, width = x0.shape
        p = self._p
        other = self._window(u[:, 0], u[:, 1], side, height, width)
        delta = current - x0
        both = window | other
        in_window = _root(_power(delta * window, p).flatten(2).sum(2), p)          # [A, C]
        in_both = _root(_power(delta * both, p).flatten(2).sum(2), p)              # [A, C]
        spare = (self.eps ** p - _power(delta, p).flatten(1).sum(1)).clamp_min(0)  # [A]
        bump = _bumps(side, x0.dtype, x0.device, p)[(u[:, 2] * 2).long().clamp_max(1)]  # [A, s, s]
        placed = torch.zeros_like(delta)
        placed[window.expand_as(delta)] = (bump.unsqueeze(1) * signs).flatten()
        new = placed + delta * window / in_window.clamp_min(1e-12)[..., None, None]
        scale = _root(spare[:, None] / channels + _power(in_both, p), p)          # [A, C]
        new = new / _root(_power(new, p).flatten(2).sum(2), p).clamp_min(1e-12)[..., None, None] * scale[..., None, None]
        return self._inside(x0, torch.where(window, new, torch.where(other, 0.0, delta)), x0)

    @staticmethod
    def _random_signs(shape, like, generator):
        bits = rng.randint(2, shape, generator, device=like.device)
        return (2 * bits - 1).to(like.dtype)

    @staticmethod
    def _window(u_top, u_left, side, height, width):
        """[n, 1, H, W] bool masks of a ``side`` x ``side`` square whose corner is placed
        by the uniforms ``u_top``, ``u_left`` [n] in [0, 1)."""
        top = (u_top * (height - side + 1)).long().clamp_max(height - side)[:, None]
        left = (u_left * (width - side + 1)).long().clamp_max(width - side)[:, None]
        rows = torch.arange(height, device=u_top.device)
        cols = torch.arange(width, device=u_top.device)
        in_rows = (rows >= top) & (rows < top + side)      # [n, H]
        in_cols = (cols >= left) & (cols < left + side)    # [n, W]
        return (in_rows[:, :, None] & in_cols[:, None, :]).unsqueeze(1)


def _power(t: torch.Tensor, p: int) -> torch.Tensor:
    """|t|^p for p = 2 or 1: the summands of the p-norm."""
    return t.pow(2) if p == 2 else t.abs()


def _root(mass: torch.Tensor, p: int) -> torch.Tensor:
    """The p-th root of a sum of |t|^p, for p = 2 or 1."""
    return mass.sqrt() if p == 2 else mass


def _bump(rows: int, cols: int, dtype, device, p: int = 2) -> torch.Tensor:
    """[rows, cols]: highest at the middle, each ring outwards lower (ring r adds 1/(r+1)^2,
    in L1 1/(r+1)^4, to itself and every ring inside it), unit Lp norm (p = 2 or 1)."""
    i = (torch.arange(rows, device=device) - rows // 2).abs()
    j = (torch.arange(cols, device=device) - cols // 2).abs()
    ring = torch.maximum(i[:, None], j[None, :])
    weights = 1.0 / (torch.arange(max(rows, cols), device=device, dtype=dtype) + 1) ** (2 if p == 2 else 4)
    values = weights.flip(0).cumsum(0).flip(0)[ring]  # the sum of the weights of rings >= r
    return values / values.norm(p)


@functools.lru_cache(maxsize=32)  # one per side the schedule reaches: built once, not per query
def _bumps(side: int, dtype, device, p: int = 2) -> torch.Tensor:
    """[2, side, side], unit Lp norm (p = 2 or 1): two bumps of opposite signs, one above the
    other, and the same side by side (the L2 and L1 search's changes; a single bump for a
    side of 1)."""
    if side < 2:
        return torch.ones(2, 1, 1, dtype=dtype, device=device)
    half = side // 2
    pair = torch.cat([_bump(half, side, dtype, device, p), -_bump(side - half, side, dtype, device, p)])
    pair = pair / pair.norm(p)
    return torch.stack([pair, pair.T])
